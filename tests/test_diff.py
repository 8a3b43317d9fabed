"""`sender diff` through the real CLI, checked against an independent count made here in Python.

Two real builds (dbt into a second schema with another var) and hand-edited copies of a build.
The oracle reads both builds' rows and compares them as Python dicts and sets.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter

import psycopg
import pytest
from psycopg import sql

from tests.conftest import AS_OF, AUDIENCE_SCHEMA, SOURCE_SCHEMA, run_cli

STEPS = {  # campaign -> [(step, table)], in the exposures' order
    "layer5-waterfall": [("no-shoes", "layer5_no_shoes"), ("no-bio", "layer5_no_bio"),
                         ("no-offers", "layer5_no_offers"), ("no-wishlist", "layer5_no_wishlist"),
                         ("new-stars", "layer5_new_stars")],
    "layer3-behavior": [("offer-creators", "layer3_offer_creators"), ("closet-adders", "layer3_closet_adders"),
                        ("wishlist-adders", "layer3_wishlist_adders")],
    "layer2-trending": [("top1", "layer2_trending_top1"), ("top2-10", "layer2_trending_top2_10")],
}  # fmt: skip
TABLES = [table for steps in STEPS.values() for _, table in steps]
SAMPLE = 3


def build(env: dict[str, str], schema: str, **extra_vars) -> None:
    """dbt run of the working tree into `schema`, with its own target folder."""
    env = {**env, "DBT_SCHEMA": schema, "DBT_TARGET_PATH": f"{env['DBT_TARGET_PATH']}-{schema}"}
    dbt_vars = {"source_schema": SOURCE_SCHEMA, "as_of": AS_OF, **extra_vars}
    run_cli(env, "dbt", "run", "--quiet", "--vars", json.dumps(dbt_vars), check=True)


def copy_build(db, source: str, target: str) -> None:
    db.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(target)))
    db.execute(sql.SQL("create schema {}").format(sql.Identifier(target)))
    for table in TABLES:
        db.execute(sql.SQL("create table {} as table {}").format(
            sql.Identifier(target, table), sql.Identifier(source, table)))  # fmt: skip


def drop_schema(db, schema: str) -> None:
    db.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))


def diff(env, base: str, schema: str, *args: str, fmt: str = "json"):
    return run_cli(env, "sender", "diff", "--base-schema", base, "--schema", schema, "--format", fmt, *args)


def diff_json(env, base: str, schema: str, *args: str) -> dict:
    result = diff(env, base, schema, "--sample", str(SAMPLE), *args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def read_build(db, schema: str) -> dict[str, dict[str, dict[str, str | None]] | None]:
    """table -> user_id -> {column: value as the file shows it}; None for a missing table."""
    tables = {}
    for table in TABLES:
        columns = [r[0] for r in db.execute(
            "select column_name from information_schema.columns where table_schema = %s and table_name = %s"
            " and column_name <> 'export_order' order by ordinal_position", (schema, table))]  # fmt: skip
        if not columns:
            tables[table] = None
            continue
        query = sql.SQL("select {} from {}").format(
            sql.SQL(", ").join(sql.SQL("cast({} as text)").format(sql.Identifier(c)) for c in columns),
            sql.Identifier(schema, table),
        )
        rows = db.execute(query).fetchall()
        tables[table] = {row[0]: {c: (v or None) for c, v in zip(columns, row, strict=True)} for row in rows}
        assert len(tables[table]) == len(rows), f"{schema}.{table}: one row per user expected"
    return tables


def oracle(db, base_schema: str, schema: str) -> dict[str, dict]:
    """The expected diff, campaign by campaign, computed in Python from both builds' rows."""
    base, new = read_build(db, base_schema), read_build(db, schema)
    expected = {}
    for campaign, steps in STEPS.items():
        step_results = {}
        for step, table in steps:
            before, after = base[table] or {}, new[table] or {}
            common = set(next(iter(before.values()), {})) & set(next(iter(after.values()), {})) - {"user_id"}
            both = before.keys() & after.keys()
            changed = {u for u in both if any(before[u][c] != after[u][c] for c in common)}
            per_column = Counter(c for u in changed for c in common if before[u][c] != after[u][c])
            step_results[step] = {
                "rows_before": None if base[table] is None else len(before),
                "rows_after": None if new[table] is None else len(after),
                "added": len(after.keys() - before.keys()),
                "removed": len(before.keys() - after.keys()),
                "changed": len(changed),
                "unchanged": len(both) - len(changed),
                "columns_changed": dict(per_column),
                "samples": {
                    "added": sorted(after.keys() - before.keys())[:SAMPLE],
                    "removed": sorted(before.keys() - after.keys())[:SAMPLE],
                    "changed": sorted(changed)[:SAMPLE],
                },
            }

        def states(build, steps=steps):
            held: dict[str, list[str]] = {}
            for step, table in steps:
                for user in build[table] or {}:
                    held.setdefault(user, []).append(step)
            return {user: "+".join(s) for user, s in held.items()}

        before_states, after_states = states(base), states(new)
        moves: dict[tuple, list[str]] = {}
        for user in before_states.keys() | after_states.keys():
            moves.setdefault((before_states.get(user), after_states.get(user)), []).append(user)
        transitions = {
            key: {"users": len(users), "samples": sorted(users)[:SAMPLE] if key[0] != key[1] else []}
            for key, users in moves.items()
        }
        expected[campaign] = {"steps": step_results, "transitions": transitions}
    return expected


def check_against_oracle(report: dict, expected: dict) -> None:
    assert [c["campaign"] for c in report["campaigns"]] == list(STEPS)
    for campaign in report["campaigns"]:
        wanted = expected[campaign["campaign"]]
        assert [s["step"] for s in campaign["steps"]] == list(wanted["steps"])
        for step in campaign["steps"]:
            got = {key: step[key] for key in wanted["steps"][step["step"]]}
            assert got == wanted["steps"][step["step"]], f"{campaign['campaign']} {step['step']}"
        got = {(t["from"], t["to"]): {"users": t["users"], "samples": t["samples"]} for t in campaign["transitions"]}
        assert got == wanted["transitions"], campaign["campaign"]


@pytest.fixture(scope="module")
def builds(built, db):
    """Three more builds: the same project again, one with min_inventory_count 5, and an editable copy."""
    build(built, "pytest_diff_same")
    build(built, "pytest_diff_minv5", min_inventory_count=5)
    yield built
    for schema in ("pytest_diff_same", "pytest_diff_minv5", "pytest_diff_base", "pytest_diff_edit"):
        drop_schema(db, schema)


@pytest.fixture(scope="module")
def db(env):  # module scope: the builds fixture uses it
    with psycopg.connect(autocommit=True) as conn:
        yield conn


def test_identical_builds_show_no_change(builds, db):
    report = diff_json(builds, AUDIENCE_SCHEMA, "pytest_diff_same")
    assert report["differs"] is False and report["max_change_pct"] == 0
    check_against_oracle(report, oracle(db, AUDIENCE_SCHEMA, "pytest_diff_same"))
    assert sum(s["unchanged"] for c in report["campaigns"] for s in c["steps"]) > 100  # the builds are not empty
    for gate in ("--fail-if-changed", "--max-change-pct=0"):
        result = diff(builds, AUDIENCE_SCHEMA, "pytest_diff_same", gate, fmt="text")
        assert result.returncode == 0, result.stderr
        assert "no change in 10 steps" in result.stdout


def test_default_schema_is_the_manifests(builds):
    result = run_cli(builds, "sender", "diff", "--base-schema", "pytest_diff_same", "--format", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["schema"] == AUDIENCE_SCHEMA
    assert report["campaigns"][0]["steps"][0]["new"] == f"{AUDIENCE_SCHEMA}.layer5_no_shoes"


def test_var_change(builds, db):
    report = diff_json(builds, AUDIENCE_SCHEMA, "pytest_diff_minv5")
    check_against_oracle(report, oracle(db, AUDIENCE_SCHEMA, "pytest_diff_minv5"))
    by_campaign = {c["campaign"]: c for c in report["campaigns"]}
    assert by_campaign["layer3-behavior"]["differs"] is True
    assert not by_campaign["layer5-waterfall"]["differs"] and not by_campaign["layer2-trending"]["differs"]
    steps = {s["step"]: s for s in by_campaign["layer3-behavior"]["steps"]}
    assert steps["offer-creators"]["removed"] > 0 and steps["wishlist-adders"]["removed"] > 0
    # the var is the demand filter of offers and wishlist adds: only users below 5 can have left
    low = {
        r[0]
        for table in ("layer3_offer_creators", "layer3_wishlist_adders")
        for r in db.execute(
            sql.SQL("select cast(user_id as text) from {} where inventory_count < 5").format(
                sql.Identifier(AUDIENCE_SCHEMA, table)
            )
        )  # fmt: skip
    }
    assert set(steps["offer-creators"]["samples"]["removed"]) <= low
    assert steps["offer-creators"]["removed"] + steps["wishlist-adders"]["removed"] <= len(low)

    for gate, code in (("--fail-if-changed", 3), (f"--max-change-pct={report['max_change_pct'] - 0.1}", 3),
                       (f"--max-change-pct={report['max_change_pct'] + 0.01}", 0)):  # fmt: skip
        result = diff(builds, AUDIENCE_SCHEMA, "pytest_diff_minv5", gate, fmt="text")
        assert result.returncode == code, (gate, result.stderr)
        if code:
            assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_hand_edits_give_exact_counts_and_moves(builds, db):
    copy_build(db, AUDIENCE_SCHEMA, "pytest_diff_base")
    copy_build(db, AUDIENCE_SCHEMA, "pytest_diff_edit")

    def users(table: str, n: int) -> list[str]:
        query = sql.SQL("select cast(user_id as text) from {} order by export_order limit %s")
        rows = db.execute(query.format(sql.Identifier("pytest_diff_edit", table)), (n,)).fetchall()
        assert len(rows) == n, f"{table}: the sample data has too few rows for this test"
        return [r[0] for r in rows]

    def edit(statement: str, *params, schema: str = "pytest_diff_edit") -> None:
        db.execute(sql.SQL(statement).format(s=sql.Identifier(schema)), params)

    moved = users("layer5_no_shoes", 1)[0]
    renamed, blank, reordered = users("layer5_no_offers", 3)
    left = users("layer3_closet_adders", 1)[0]
    joined = str(uuid.uuid4())
    repriced, doubled = users("layer2_trending_top1", 2)
    # Layer 5: a user moves from level 1 to level 2; a first name changes
    edit("insert into {s}.layer5_no_bio select user_id, username, \"firstName\", 2, 999999"
         " from {s}.layer5_no_shoes where user_id = %s::uuid", moved)  # fmt: skip
    edit("delete from {s}.layer5_no_shoes where user_id = %s::uuid", moved)
    edit("update {s}.layer5_no_offers set \"firstName\" = 'Renamed' where user_id = %s::uuid", renamed)
    # not changes: '' in one build and NULL in the other (both an empty field), and a row's position
    edit("update {s}.layer5_no_offers set username = '' where user_id = %s::uuid", blank, schema="pytest_diff_base")
    edit("update {s}.layer5_no_offers set username = null where user_id = %s::uuid", blank)
    edit("update {s}.layer5_no_offers set export_order = -1 where user_id = %s::uuid", reordered)
    # Layer 3: one user leaves closet-adders, a new one joins wishlist-adders
    edit("delete from {s}.layer3_closet_adders where user_id = %s::uuid", left)
    edit("insert into {s}.layer3_wishlist_adders select %s::uuid, username, \"firstName\", usersize,"
         " relevant_variant_size, product_name, \"variantID\", \"lastActive\", inventory_count, 999999"
         " from {s}.layer3_wishlist_adders limit 1", joined)  # fmt: skip
    # Layer 2: two columns of one row change; a top1 user is also put in top2-10 (held by both steps)
    edit(
        "update {s}.layer2_trending_top1 set product_name = 'Other', trending_rank = 99 where user_id = %s::uuid",
        repriced,
    )
    edit("insert into {s}.layer2_trending_top2_10 select * from {s}.layer2_trending_top1 where user_id = %s::uuid",
         doubled)  # fmt: skip

    report = diff_json(builds, "pytest_diff_base", "pytest_diff_edit")
    check_against_oracle(report, oracle(db, "pytest_diff_base", "pytest_diff_edit"))
    counts = {
        (c["campaign"], s["step"]): (s["added"], s["removed"], s["changed"], s["columns_changed"])
        for c in report["campaigns"]
        for s in c["steps"]
    }
    assert {key: value for key, value in counts.items() if value != (0, 0, 0, {})} == {
        ("layer5-waterfall", "no-shoes"): (0, 1, 0, {}),
        ("layer5-waterfall", "no-bio"): (1, 0, 0, {}),
        ("layer5-waterfall", "no-offers"): (0, 0, 1, {"firstName": 1}),
        ("layer3-behavior", "closet-adders"): (0, 1, 0, {}),
        ("layer3-behavior", "wishlist-adders"): (1, 0, 0, {}),
        ("layer2-trending", "top1"): (0, 0, 1, {"product_name": 1, "trending_rank": 1}),
        ("layer2-trending", "top2-10"): (1, 0, 0, {}),
    }
    moves = {
        (c["campaign"], t["from"], t["to"]): (t["users"], t["samples"])
        for c in report["campaigns"]
        for t in c["transitions"]
        if t["from"] != t["to"]
    }
    assert moves == {
        ("layer5-waterfall", "no-shoes", "no-bio"): (1, [moved]),
        ("layer3-behavior", "closet-adders", None): (1, [left]),
        ("layer3-behavior", None, "wishlist-adders"): (1, [joined]),
        ("layer2-trending", "top1", "top1+top2-10"): (1, [doubled]),
    }

    text = diff(builds, "pytest_diff_base", "pytest_diff_edit", "--campaign", "layer5-waterfall", fmt="text")
    assert text.returncode == 0 and "layer3-behavior" not in text.stdout
    assert "no-offers, changed: " + renamed in text.stdout and "no-shoes -> no-bio: " + moved in text.stdout
    markdown = diff(builds, "pytest_diff_base", "pytest_diff_edit", "--campaign", "generate_layer_2_push_csv",
                    fmt="markdown")  # fmt: skip
    assert markdown.returncode == 0, markdown.stderr
    assert (
        "| top1 | " in markdown.stdout and "| base → new | top1 | top2-10 | top1+top2-10 | (none) |" in markdown.stdout
    )
    assert f"`{doubled}`" in markdown.stdout and "<details>" in markdown.stdout


def test_missing_table_and_columns_are_reported(builds, db):
    copy_build(db, AUDIENCE_SCHEMA, "pytest_diff_edit")
    db.execute("drop table pytest_diff_edit.layer2_trending_top2_10")
    db.execute("alter table pytest_diff_edit.layer3_offer_creators add column extra text default 'x'")
    db.execute("alter table pytest_diff_edit.layer5_no_offers drop column top_target_shoe")
    db.execute("alter table pytest_diff_edit.layer3_closet_adders alter column wishlist_count type text")
    rows = {r[0]: r[1] for r in db.execute(
        "select 'top2-10', count(*) from pytest_audiences.layer2_trending_top2_10"
        " union all select 'no-offers', count(*) from pytest_audiences.layer5_no_offers")}  # fmt: skip

    for base, new, missing in (
        (AUDIENCE_SCHEMA, "pytest_diff_edit", "new"),
        ("pytest_diff_edit", AUDIENCE_SCHEMA, "base"),
    ):
        report = diff_json(builds, base, new)
        assert report["differs"] is True
        steps = {s["step"]: s for c in report["campaigns"] for s in c["steps"]}
        top = steps["top2-10"]
        assert top["missing"] == missing and top["change_pct"] == 100
        assert (top["added"], top["removed"]) == ((0, rows["top2-10"]) if missing == "new" else (rows["top2-10"], 0))
        assert (top["rows_before"] is None) == (missing == "base") and (top["rows_after"] is None) == (missing == "new")
        only_new, only_base = ("columns_only_in_new", "columns_only_in_base")[:: 1 if missing == "new" else -1]
        assert steps["offer-creators"][only_new] == ["extra"] and steps["offer-creators"]["changed"] == 0
        assert steps["no-offers"][only_base] == ["top_target_shoe"]
        assert steps["no-offers"]["unchanged"] == rows["no-offers"]  # compared on the columns both builds have
        assert set(steps["closet-adders"]["types_changed"]["wishlist_count"]) == {"integer", "text"}
        assert steps["closet-adders"]["changed"] == 0  # the same values, as the file shows them
        check_against_oracle(report, oracle(db, base, new))

    for fmt in ("text", "markdown"):
        result = diff(builds, AUDIENCE_SCHEMA, "pytest_diff_edit", fmt=fmt)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert "table missing in the new build" in result.stdout
        assert "columns only in the new build: extra" in result.stdout
    result = diff(builds, AUDIENCE_SCHEMA, "pytest_diff_edit", "--fail-if-changed", fmt="text")
    assert result.returncode == 3 and result.stderr.strip() == "diff gate: the audiences changed (--fail-if-changed)"


@pytest.mark.parametrize(
    "args",
    [
        ["--base-schema", "pytest_no_such_schema"],
        ["--base-schema", AUDIENCE_SCHEMA, "--schema", "pytest_no_such_schema"],
        ["--base-schema", AUDIENCE_SCHEMA, "--format", "yaml"],
        ["--base-schema", AUDIENCE_SCHEMA, "--campaign", "layer3-behavior", "--all"],
        ["--base-schema", AUDIENCE_SCHEMA, "--campaign", "no-such-campaign"],
    ],
)
def test_bad_input_is_one_line_exit_2(built, args):
    result = run_cli(built, "sender", "diff", *args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error:"), result.stderr
    assert result.stdout == ""
    if "pytest_no_such_schema" in args:
        database = built["PGDATABASE"]  # the test database (or yours, with PGHOST set)
        assert f"schema 'pytest_no_such_schema' does not exist in database '{database}'" in result.stderr
