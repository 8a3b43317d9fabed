"""Adding a campaign (issue 11, README "Adding a campaign"): nothing in the sender is written for the three
campaigns by name.

A fourth campaign, layer4-wishlist-nudge, is added from tests/fixtures/new_campaign/ (its audience model, the
model's YAML with the contract and the campaign's exposure, a singular dbt test) to a copy of the dbt project,
built there with the real dbt into a schema of its own, and taken through the real CLI, as an analyst would:
export, validate, diff, explain, schedule, a rehearsal while inactive, then test and live sends to the FCM
emulator once switched on.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.conftest import AS_OF, PROJECT_DIR, SOURCE_SCHEMA, run_cli
from tests.sending import ALEX, ALL_TEST_TOKENS, JORDAN, SAM, TEST_TOKENS, assert_ok, tokens_of
from tests.test_campaigns import copy_project as copy_dbt_files

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "new_campaign"
CAMPAIGN, STEP = "layer4-wishlist-nudge", "wishlist-in-stock"
EXPOSURE = MODEL = "layer4_wishlist_nudge"
YAML = "models/marts/layer4/_layer4__models.yml"
SINGULAR_TEST = "assert_layer4_wishlist_nudge_wishes_are_live"
SCHEMA = "pytest_new_campaign"  # where the copy's models are built
# The model's contract: the file's columns, then export_order.
COLUMNS = ["user_id", "username", "firstName", "usersize", "product_name", "variantID", "relevant_variant_size",
           "inventory_count", "lastActive"]  # fmt: skip
DBT_VARS = f'{{source_schema: {SOURCE_SCHEMA}, as_of: "{AS_OF}"}}'
FRESH = f'{{source_schema: {SOURCE_SCHEMA}, as_of: "{AS_OF}", source_max_age_hours: 1000000}}'
OTHER_CAMPAIGNS = re.compile(r"model\.push_audiences\.(int_)?layer[235]_")


def copy_project(target: Path) -> None:
    """The dbt files of the project, then the fixture: the model and its YAML in models/marts/layer4/, the
    singular test in tests/dbt/ (dbt_project.yml's test-paths)."""
    copy_dbt_files(PROJECT_DIR, target)
    (target / "models/marts/layer4").mkdir()
    (target / "tests/dbt").mkdir(parents=True, exist_ok=True)
    for name in (f"{MODEL}.sql", "_layer4__models.yml"):
        shutil.copy(FIXTURE / name, target / "models/marts/layer4" / name)
    shutil.copy(FIXTURE / f"{SINGULAR_TEST}.sql", target / "tests/dbt" / f"{SINGULAR_TEST}.sql")


def project_env(env: dict[str, str], project: Path) -> dict[str, str]:
    """The environment for the copy: its own schema, target folder and profile."""
    return {**env, "DBT_SCHEMA": SCHEMA, "DBT_TARGET_PATH": str(project / "target"), "DBT_PROFILES_DIR": str(project)}


@pytest.fixture(scope="module")
def project(built, tmp_path_factory) -> Path:
    """A copy of the project with the fourth campaign, built with `dbt build --select +exposure:...`."""
    path = tmp_path_factory.mktemp("new_campaign") / "project"
    copy_project(path)
    env = project_env(built, path)
    drop = sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(SCHEMA))
    with psycopg.connect(autocommit=True) as conn:
        conn.execute(drop)
    build = run_cli(env, "dbt", "build", "--project-dir", str(path), "--select", f"+exposure:{EXPOSURE}",
                    "--vars", DBT_VARS)  # fmt: skip
    assert build.returncode == 0, f"dbt build failed:\n{build.stdout[-5000:]}\n{build.stderr}"
    yield path
    with psycopg.connect(autocommit=True) as conn:
        conn.execute(drop)


def sender_cli(env: dict[str, str], project: Path, *args: str):
    return run_cli(project_env(env, project), "sender", "--project-dir", str(project), *args)


def audience_rows(db) -> list[dict[str, str | None]]:
    """The audience as its file shows it: text values ('' as None), in export order."""
    query = sql.SQL("select {} from {} order by export_order").format(
        sql.SQL(", ").join(sql.SQL("nullif(cast({} as text), '')").format(sql.Identifier(c)) for c in COLUMNS),
        sql.Identifier(SCHEMA, MODEL),
    )
    return [dict(zip(COLUMNS, row, strict=True)) for row in db.execute(query)]


def expected_copy(row: dict) -> tuple[str, str, dict[str, str]]:
    """The push copy of the fixture's exposure, rendered from a row (a missing value renders empty)."""
    value = {k: v or "" for k, v in row.items()}
    title = f"{value['firstName'] or 'Hey'}, your wishlist is in stock"
    body = (f"{value['inventory_count']} traders have the {value['product_name']} in size "
            f"{value['relevant_variant_size']}. Make an offer before it is gone.")  # fmt: skip
    return title, body, {"deep_link": f"tradeblock://variants/{value['variantID']}"}


def received(emulator) -> Counter:
    """(token, title, body, data) of every message the emulator delivered."""
    return Counter(
        (m["token"], m["notification"]["title"], m["notification"]["body"], json.dumps(m["data"], sort_keys=True))
        for m in emulator.delivered()
    )


def expected_messages(rows: list[dict], tokens: dict[str, set[str]]) -> Counter:
    found = Counter()
    for row in rows:
        title, body, data = expected_copy(row)
        for token in tokens[row["user_id"]]:
            found[(token, title, body, json.dumps(data, sort_keys=True))] += 1
    return found


def rows_of_test_users(db) -> list[dict]:
    """The test audience: one row per test user, the seed's own fields, the rest from the first production row."""
    first = audience_rows(db)[0]
    seed = {ALEX: ("qa_alex", "Alex", "10.5"), SAM: ("qa_sam", "Sam", "9"), JORDAN: ("qa_jordan", "Jordan", None)}
    return [
        {**first, "user_id": user, "username": name, "firstName": first_name, "usersize": size, "lastActive": None}
        for user, (name, first_name, size) in sorted(seed.items())
    ]


# --- dbt ---------------------------------------------------------------------------------------------------


def test_the_exposure_builds_exactly_the_campaign_with_its_tests(project, db):
    results = json.loads((project / "target" / "run_results.json").read_text())["results"]
    ran = {r["unique_id"]: r["status"] for r in results}
    assert ran[f"model.push_audiences.{MODEL}"] == "success"
    assert ran[f"test.push_audiences.{SINGULAR_TEST}"] == "pass"
    column_tests = [uid for uid in ran if uid.startswith("test.") and MODEL in uid and SINGULAR_TEST not in uid]
    assert len(column_tests) == 8, column_tests  # unique and not_null key, relationships, at_least, ...
    assert ran.pop(f"exposure.push_audiences.{EXPOSURE}") == "no-op"
    assert {uid: status for uid, status in ran.items() if status not in ("success", "pass")} == {}
    assert {"seed.push_audiences.test_users", "seed.push_audiences.cadence_rules"} <= ran.keys()
    assert not [uid for uid in ran if OTHER_CAMPAIGNS.match(uid)], "the exposure selected another campaign's models"
    names = [r[0] for r in db.execute("select column_name from information_schema.columns where table_schema = %s"
                                      " and table_name = %s order by ordinal_position", (SCHEMA, MODEL))]  # fmt: skip
    assert names == [*COLUMNS, "export_order"]
    rows = audience_rows(db)
    assert len(rows) > 10 and len({r["user_id"] for r in rows}) == len(rows)


# --- sender ------------------------------------------------------------------------------------------------


def test_export_writes_the_declared_files_with_the_contract_columns(project, built, db, tmp_path):
    out = tmp_path / "out"
    result = sender_cli(built, project, "export", CAMPAIGN, "--out", str(out))
    assert_ok(result)
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 2 and re.fullmatch(r"wishlist-in-stock-(\d{8}T\d{6})\.csv", files[0]), files
    ts = re.fullmatch(r"wishlist-in-stock-(\d{8}T\d{6})\.csv", files[0]).group(1)
    assert files[1] == f"wishlist-in-stock-test-{ts}.csv"

    def read(name: str) -> list[list[str]]:
        with open(out / name, newline="", encoding="utf-8") as handle:
            return list(csv.reader(handle))

    production, test = read(files[0]), read(files[1])
    assert production[0] == COLUMNS and test[0] == COLUMNS
    assert production[1:] == [[v or "" for v in row.values()] for row in audience_rows(db)]
    assert test[1:] == [[v or "" for v in row.values()] for row in rows_of_test_users(db)]


def test_validate_diff_and_explain_handle_the_new_campaign(project, built, db):
    validate = sender_cli(built, project, "validate", CAMPAIGN)
    assert_ok(validate)
    table = [[cell.strip() for cell in line.strip("│ ").split("│")] for line in validate.stderr.splitlines()]
    assert [CAMPAIGN, STEP, "live", str(len(audience_rows(db))), "ok"] in table, validate.stderr
    assert [CAMPAIGN, STEP, "test", "3", "ok"] in table, validate.stderr
    diff = sender_cli(built, project, "diff", "--base-schema", SCHEMA, "--campaign", CAMPAIGN, "--format", "json")
    assert_ok(diff)
    [campaign] = json.loads(diff.stdout)["campaigns"]
    assert (campaign["campaign"], campaign["layer"], campaign["differs"]) == (CAMPAIGN, 4, False)
    assert [(s["step"], s["rows_after"]) for s in campaign["steps"]] == [(STEP, len(audience_rows(db)))]
    # The fixture declares no decisions model: explain says so for it, and still explains the others.
    user = audience_rows(db)[0]["user_id"]
    explain = sender_cli(built, project, "explain", user, "--json")
    assert_ok(explain)
    by_campaign = {c["campaign"]: c["audience"] for c in json.loads(explain.stdout)["campaigns"]}
    assert by_campaign[CAMPAIGN]["outcome"] == "not explained"
    assert "no decisions model" in by_campaign[CAMPAIGN]["reason"]
    # only the new campaign was built in this schema: the others say what to run
    assert "does not exist: run `dbt build" in by_campaign["layer3-behavior"]["reason"]


def test_inactive_it_is_not_scheduled_and_sends_only_rehearsals(project, sender, db, tmp_path):
    schedule = sender_cli(sender.env, project, "schedule")
    assert_ok(schedule)
    assert f"# {CAMPAIGN} ({YAML}): inactive (active: false): not scheduled" in schedule.stdout.splitlines()
    assert f"run {CAMPAIGN}" not in schedule.stdout
    for mode in ("test-live", "live"):
        refused = sender_cli(sender.env, project, "send", CAMPAIGN, "--mode", mode)
        assert_ok(refused, 4)
        assert "inactive (active: false)" in refused.stderr
    assert sender.emulator.messages() == []
    rehearsal = sender_cli(sender.env, project, "run", CAMPAIGN, "--rehearse", "--no-build", "--dbt-vars", FRESH,
                           "--out", str(tmp_path / "out"))  # fmt: skip
    assert_ok(rehearsal)
    expected = expected_messages(rows_of_test_users(db), {u: set(TEST_TOKENS.get(u, ())) for u in (ALEX, SAM, JORDAN)})
    assert received(sender.emulator) == {message: 2 for message in expected}  # the test and the live phase


def test_once_active_it_sends_test_and_live_pushes_and_is_scheduled(project, sender, db, tmp_path):
    active = tmp_path / "project"
    shutil.copytree(project, active, symlinks=True)
    yaml_file = active / YAML
    text = yaml_file.read_text()
    assert text.count("        active: false\n") == 1
    yaml_file.write_text(text.replace("        active: false\n", "        active: true\n"))

    test = sender_cli(sender.env, active, "send", CAMPAIGN, "--mode", "test-live")
    assert_ok(test)
    test_tokens = {u: set(TEST_TOKENS.get(u, ())) for u in (ALEX, SAM, JORDAN)}
    assert received(sender.emulator) == expected_messages(rows_of_test_users(db), test_tokens)
    assert {m["token"] for m in sender.emulator.delivered()} == ALL_TEST_TOKENS

    sender.emulator.clear()
    live = sender_cli(sender.env, active, "send", CAMPAIGN, "--mode", "live")
    assert_ok(live)
    rows = audience_rows(db)
    expected = expected_messages(rows, tokens_of(db, [r["user_id"] for r in rows]))
    assert len(expected) > 10 and set(expected.values()) == {1}
    assert received(sender.emulator) == expected  # exactly one push per token of the audience, its row's copy
    statuses = sender.query("select d.status, count(*) as n from {deliveries} d join {runs} r using (run_id)"
                            " where r.mode = 'live' group by d.status")  # fmt: skip
    assert {s["status"]: s["n"] for s in statuses}.get("sent") == len(expected)

    schedule = sender_cli(sender.env, active, "schedule", "--campaign", CAMPAIGN)
    assert_ok(schedule)
    lines = schedule.stdout.splitlines()
    line = next(i for i, text in enumerate(lines) if text.endswith(f" run {CAMPAIGN}"))
    assert lines[line - 1] == "CRON_TZ=America/New_York"
    assert lines[line].startswith("0 10 * * * "), lines[line]  # send 10:30 - lead 30 min
