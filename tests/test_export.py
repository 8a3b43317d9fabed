"""`sender export` against the contract (AUDIENCES.md, "Files in general"), through the real CLI."""

from __future__ import annotations

import csv
import io
import re
import resource
import signal
import subprocess
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.conftest import AUDIENCE_SCHEMA, BIN, PROJECT_DIR, SOURCE_SCHEMA, run_cli
from tests.contract import L2, L3, L5_LONG, L5_SHORT

# campaign -> [(audience table, file prefix, separator, test marker, header)]
FILES = {
    "layer5-waterfall": [
        ("layer5_no_shoes", "no-shoes-new-user", "-", "test", L5_SHORT),
        ("layer5_no_bio", "no-bio-new-user", "-", "test", L5_SHORT),
        ("layer5_no_offers", "no-offers-new-user", "-", "test", L5_LONG),
        ("layer5_no_wishlist", "no-wishlist-new-user", "-", "test", L5_LONG),
        ("layer5_new_stars", "new-stars-new-user", "-", "test", L5_LONG),
    ],
    "layer3-behavior": [
        ("layer3_offer_creators", "recent-offer-creators", "_", "TEST", L3 + ["inventory_count"]),
        ("layer3_closet_adders", "recent-closet-adders", "_", "TEST", L3 + ["wishlist_count"]),
        ("layer3_wishlist_adders", "recent-wishlist-adders", "_", "TEST", L3 + ["inventory_count"]),
    ],
    "layer2-trending": [
        ("layer2_trending_top1", "trending-closet-top1", "_", "TEST", L2),
        ("layer2_trending_top2_10", "trending-closet-top2-10", "_", "TEST", L2),
    ],
}
TS = r"\d{8}T\d{6}"


def read_csv(path: Path) -> list[list[str]]:
    raw = path.read_bytes()
    assert b"\r" not in raw, f"{path.name}: line ends must be \\n"
    return list(csv.reader(io.StringIO(raw.decode("utf-8"), newline="")))


def export(env, out: Path, *args: str):
    return run_cli(env, "sender", "export", *args, "--out", str(out))


def one_file(out: Path, prefix: str, sep: str, marker: str | None = None) -> Path:
    middle = f"{sep}{marker}{sep}" if marker else sep
    matches = [p for p in out.iterdir() if re.fullmatch(re.escape(prefix + middle) + TS + r"\.csv", p.name)]
    assert len(matches) == 1, f"expected one {prefix}{middle}<ts>.csv in {sorted(p.name for p in out.iterdir())}"
    return matches[0]


def table_rows(db, table: str) -> list[tuple]:
    """The audience table's rows as CSV text, in file order."""
    columns = [
        r[0]
        for r in db.execute(
            "select column_name from information_schema.columns where table_schema = %s and table_name = %s"
            " and column_name <> 'export_order' order by ordinal_position",
            (AUDIENCE_SCHEMA, table),
        )
    ]
    query = sql.SQL("select {} from {} order by export_order").format(
        sql.SQL(", ").join(sql.SQL("coalesce({}::text, '')").format(sql.Identifier(c)) for c in columns),
        sql.Identifier(AUDIENCE_SCHEMA, table),
    )
    return [list(r) for r in db.execute(query)]


@contextmanager
def emptied(db, table: str):
    """Temporarily empty an audience table (restored afterwards)."""
    backup = sql.Identifier(AUDIENCE_SCHEMA, f"{table}_backup")
    target = sql.Identifier(AUDIENCE_SCHEMA, table)
    db.execute(sql.SQL("create table {} as select * from {}").format(backup, target))
    db.execute(sql.SQL("delete from {}").format(target))
    try:
        yield
    finally:
        db.execute(sql.SQL("insert into {} select * from {}").format(target, backup))
        db.execute(sql.SQL("drop table {}").format(backup))


@pytest.mark.parametrize("campaign", sorted(FILES))
def test_files_match_tables_and_contract(built, db, tmp_path, campaign):
    result = export(built, tmp_path, campaign)
    assert result.returncode == 0, result.stderr
    test_users = db.execute(
        sql.SQL(
            "select user_id::text, username, \"firstName\", coalesce(usersize, '') from {} order by user_id"
        ).format(sql.Identifier(AUDIENCE_SCHEMA, "test_users"))
    ).fetchall()
    for table, prefix, sep, marker, header in FILES[campaign]:
        expected = table_rows(db, table)
        assert expected, f"sample data should make {table} non-empty"
        production = read_csv(one_file(tmp_path, prefix, sep))
        assert production[0] == header
        assert production[1:] == expected, f"{table}: file rows differ from the table, in order"
        test = read_csv(one_file(tmp_path, prefix, sep, marker))
        assert test[0] == header
        assert [tuple(r[:3]) for r in test[1:]] == [u[:3] for u in test_users]
        copied = [i for i, c in enumerate(header) if c not in ("user_id", "username", "firstName", "usersize",
                                                                "lastActive")]  # fmt: skip
        for row in test[1:]:
            assert [row[i] for i in copied] == [expected[0][i] for i in copied]
            if "usersize" in header:
                assert row[header.index("usersize")] in {u[3] for u in test_users}
        # the CLI prints each path with its row count
        assert f"{one_file(tmp_path, prefix, sep)}\t{len(expected)}" in result.stdout


def test_layer5_rows_newest_signup_first(built, db, tmp_path):
    assert export(built, tmp_path, "layer5-waterfall").returncode == 0
    rows = read_csv(one_file(tmp_path, "no-shoes-new-user", "-"))[1:]
    signups = dict(
        db.execute(
            sql.SQL("select id::text, created_at from {} where id = any(%s::uuid[])").format(
                sql.Identifier(SOURCE_SCHEMA, "users")
            ),
            ([r[0] for r in rows],),
        ).fetchall()
    )
    times = [signups[r[0]] for r in rows]
    assert times == sorted(times, reverse=True)


def test_empty_layer5_level_writes_no_file_but_layer3_writes_header_and_placeholders(built, db, tmp_path):
    with emptied(db, "layer5_no_bio"), emptied(db, "layer3_closet_adders"):
        assert export(built, tmp_path / "l5", "generate_new_user_waterfall").returncode == 0
        assert export(built, tmp_path / "l3", "layer3-behavior").returncode == 0
    assert not [p for p in (tmp_path / "l5").iterdir() if p.name.startswith("no-bio")]
    assert len(list((tmp_path / "l5").iterdir())) == 8  # four other levels, each with its test twin
    assert read_csv(one_file(tmp_path / "l3", "recent-closet-adders", "_")) == [L3 + ["wishlist_count"]]
    test = read_csv(one_file(tmp_path / "l3", "recent-closet-adders", "_", "TEST"))
    header = test[0]
    for row in test[1:]:
        assert row[header.index("product_name")] == "Test Product"
        assert row[header.index("variantID")] == "test-variant-id"
        assert row[header.index("relevant_variant_size")] == "13"


def test_all_exports_every_campaign_with_one_timestamp(built, tmp_path):
    result = export(built, tmp_path, "--all")
    assert result.returncode == 0, result.stderr
    names = [p.name for p in tmp_path.iterdir()]
    assert len(names) == 2 * sum(len(files) for files in FILES.values())
    assert len({re.search(TS, n).group() for n in names}) == 1
    assert not [n for n in names if n.startswith(".")]


def test_csv_quoting_and_missing_values(built, db, tmp_path):
    """RFC 4180 quoting, UTF-8, and missing values as empty fields (never "")."""
    table = sql.Identifier(AUDIENCE_SCHEMA, "layer3_offer_creators")
    first = db.execute(sql.SQL("select user_id from {} order by export_order limit 1").format(table)).fetchone()[0]
    tricky = 'Zoë "Z", the\nsecond line'
    db.execute(sql.SQL("update {} set username = %s, usersize = '' where user_id = %s").format(table), (tricky, first))
    try:
        assert export(built, tmp_path, "layer3-behavior").returncode == 0
    finally:
        run_cli(built, "dbt", "run", "--quiet", "--select", "layer3_offer_creators", "--vars",
                f'{{source_schema: {SOURCE_SCHEMA}, as_of: "2026-11-20 18:00:00+00"}}', check=True)  # fmt: skip
    path = one_file(tmp_path, "recent-offer-creators", "_")
    rows = read_csv(path)
    assert rows[1][1] == tricky
    assert rows[1][3] == ""
    assert ',"",' not in path.read_text(encoding="utf-8")  # an empty value is an empty field


def test_failure_leaves_no_files(built, db, tmp_path):
    """A missing audience table (the last step) fails the export after other files were written."""
    table = sql.Identifier(AUDIENCE_SCHEMA, "layer5_new_stars")
    db.execute(sql.SQL("alter table {} rename to layer5_new_stars_away").format(table))
    try:
        result = export(built, tmp_path, "layer5-waterfall")
    finally:
        db.execute(
            sql.SQL("alter table {} rename to layer5_new_stars").format(
                sql.Identifier(AUDIENCE_SCHEMA, "layer5_new_stars_away")
            )
        )
    assert result.returncode == 2
    assert "layer5_new_stars" in result.stderr and "dbt build" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_unknown_campaign(built, tmp_path):
    result = export(built, tmp_path, "layer9-nothing")
    assert result.returncode == 2
    assert "unknown campaign 'layer9-nothing'" in result.stderr
    assert "layer5-waterfall" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unwritable_output_folder(built, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = export(built, blocker / "out", "layer5-waterfall")
    assert result.returncode == 2
    assert "cannot create the output folder" in result.stderr


def test_unreachable_database(built, tmp_path):
    env = {**built, "PGHOST": "127.0.0.1", "PGPORT": "1"}
    result = export(env, tmp_path / "out", "layer5-waterfall")
    assert result.returncode == 2
    assert "cannot connect to PostgreSQL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_models_not_built(built, tmp_path):
    """A manifest whose schema holds no tables yet: the error says which table and what to run."""
    env = {**built, "DBT_SCHEMA": "pytest_never_built", "DBT_TARGET_PATH": str(tmp_path / "target")}
    run_cli(env, "dbt", "parse", "--quiet", check=True)
    result = export(env, tmp_path / "out", "layer2-trending")
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "dbt" in result.stderr


def test_no_manifest_is_parsed_first(built, tmp_path):
    """No manifest yet: the sender parses the project (it never acts on declarations older than the files)."""
    target = tmp_path / "nothing-here"
    result = export({**built, "DBT_TARGET_PATH": str(target)}, tmp_path / "out", "layer2-trending")
    assert result.returncode == 0, result.stderr
    assert (target / "manifest.json").exists() and "parsed" in result.stderr
    assert len(list((tmp_path / "out").glob("*.csv"))) == 4


# --- temporary files, concurrent exports, signals, full disks -----------------------------------------

L5_TABLE = "layer5_new_stars"  # the last step of layer5-waterfall


def timestamps(seconds: range) -> list[str]:
    now = datetime.now(UTC)
    return [(now + timedelta(seconds=s)).strftime("%Y%m%dT%H%M%S") for s in seconds]


def export_process(env, out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "sender"), "export", *args, "--out", str(out)], env=env, cwd=PROJECT_DIR,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


@contextmanager
def blocked_export(env, db, out: Path):
    """An export of layer5-waterfall stopped at its last step (its table locked), after 8 files were written."""
    with db.transaction():
        db.execute(sql.SQL("lock table {} in access exclusive mode").format(sql.Identifier(AUDIENCE_SCHEMA, L5_TABLE)))
        process = export_process(env, out, "layer5-waterfall")
        try:
            with psycopg.connect(autocommit=True) as watcher:
                for _ in range(300):
                    waiting = watcher.execute(
                        "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
                        " and datname = current_database() and query like %s",
                        (f"%{L5_TABLE}%",),
                    ).fetchone()[0]
                    if waiting or process.poll() is not None:
                        break
                    time.sleep(0.1)
            assert waiting, process.communicate()
            assert len([p for p in out.iterdir() if p.name.endswith(".partial")]) == 8
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.communicate()


def test_temporary_files_never_follow_a_planted_symlink(built, tmp_path):
    """The old temporary names were predictable (.<file>.partial) and opened without O_EXCL."""
    out, outside = tmp_path / "out", tmp_path / "outside.txt"
    out.mkdir()
    outside.write_text("not yours")
    for ts in timestamps(range(-2, 60)):
        for name in (f"no-shoes-new-user-{ts}.csv", f"no-shoes-new-user-test-{ts}.csv"):
            (out / f".{name}.partial").symlink_to(outside)
    result = export(built, out, "layer5-waterfall")
    assert result.returncode == 0, result.stderr
    assert outside.read_text() == "not yours"
    assert read_csv(one_file(out, "no-shoes-new-user", "-"))[0] == L5_SHORT


def test_existing_files_are_never_replaced(built, tmp_path):
    """Files with the timestamp the export would use already exist: it waits for a free second instead."""
    planted = [tmp_path / f"{prefix}{ts}.csv" for ts in timestamps(range(-1, 3))
               for prefix in ("no-shoes-new-user-", "no-shoes-new-user-test-")]  # fmt: skip
    for path in planted:
        path.write_text("someone else's file")
    result = export(built, tmp_path, "layer5-waterfall")
    assert result.returncode == 0, result.stderr
    assert all(path.read_text() == "someone else's file" for path in planted)
    written = [Path(line.split("\t")[0]) for line in result.stdout.splitlines()]
    assert len(written) == 10 and not set(written) & set(planted)
    assert all(read_csv(path)[0] for path in written)


def test_concurrent_exports_into_one_folder(built, tmp_path):
    """Exports started together into one folder take turns: none crashes, none overwrites another's files."""
    processes = [export_process(built, tmp_path, "--all") for _ in range(3)]
    outputs = [process.communicate() for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    written = [line.split("\t")[0] for stdout, _ in outputs for line in stdout.splitlines()]
    per_export = 2 * sum(len(files) for files in FILES.values())
    assert len(written) == len(set(written)) == 3 * per_export
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(p).name for p in written)
    assert len({re.search(TS, name).group() for name in written}) == 3


def test_sigterm_removes_temporary_files(built, db, tmp_path):
    with blocked_export(built, db, tmp_path) as process:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 143, stderr
    assert "SIGTERM" in stderr and "no file written" in stderr and len(stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_a_killed_export_are_removed_by_the_next(built, db, tmp_path):
    with blocked_export(built, db, tmp_path) as process:
        process.kill()
        process.communicate(timeout=30)
    assert len(list(tmp_path.iterdir())) == 8  # kill -9: its temporary files are left
    result = export(built, tmp_path, "layer5-waterfall")
    assert result.returncode == 0, result.stderr
    names = [p.name for p in tmp_path.iterdir()]
    assert len(names) == 10 and not [n for n in names if n.startswith(".")]


def test_full_disk_is_one_line_error_and_leaves_no_file(built, tmp_path):
    """A file size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes writes fail with EFBIG, as a full disk does."""

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))

    result = subprocess.run([str(BIN / "sender"), "export", "layer5-waterfall", "--out", str(tmp_path)], env=built,
                            cwd=PROJECT_DIR, capture_output=True, text=True, preexec_fn=limit_file_size)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "File too large" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_fcm_emulator_port_out_of_range(env):
    result = subprocess.run([str(BIN / "sender"), "fcm-emulator", "--port", "70000"], env=env, cwd=PROJECT_DIR,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "70000" in result.stderr and len(result.stderr.strip().splitlines()) == 1
