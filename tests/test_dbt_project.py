"""The dbt project as analysts use it: one campaign selected, vars changed, odd names, through real dbt and the CLI.

Every test builds into schemas of its own (dropped before and after) with its own dbt target folder, so
the session's build (pytest_audiences, target-<database>) is left as the other test files expect it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from psycopg import sql

from tests.conftest import AS_OF, AUDIENCE_SCHEMA, SOURCE_SCHEMA, run_cli


def dbt_vars(**extra) -> str:
    """--vars for the session's sample data (YAML accepts JSON)."""
    return json.dumps({"source_schema": SOURCE_SCHEMA, "as_of": AS_OF, **extra})


@pytest.fixture
def fresh(built, db, tmp_path):
    """fresh(schema, *others) -> env building into that new, empty schema, with its own target folder and ledger.

    The schema, the ledger's and the others are dropped before and after.
    """
    dropped: list[str] = []

    def drop(names: list[str]) -> None:
        for name in names:
            db.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(name)))

    def make(schema: str, *others: str) -> dict[str, str]:
        names = [schema, "pytest_dbt_sender", *others]
        drop(names)
        dropped.extend(names)
        return {
            **built,
            "DBT_SCHEMA": schema,
            "DBT_TARGET_PATH": str(tmp_path / f"target-{len(dropped)}"),
            "SENDER_SCHEMA": "pytest_dbt_sender",
        }

    yield make
    drop(dropped)


def test_building_one_campaign_leaves_it_exportable_and_sendable(fresh, db, tmp_path):
    env = fresh("pytest_dbt_campaign")
    run_cli(env, "dbt", "build", "--quiet", "--select", "+exposure:layer3_behavior", "--vars", dbt_vars(), check=True)

    out = tmp_path / "out"
    exported = run_cli(env, "sender", "export", "layer3-behavior", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    assert len(list(out.glob("*.csv"))) == 6, sorted(p.name for p in out.iterdir())

    # what `sender send` reads besides the audiences: the test users and the push tokens
    for relation in ("test_users", "stg_tradeblock__device_tokens"):
        rows = db.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(env["DBT_SCHEMA"], relation)))
        assert rows.fetchone()[0] > 0, relation


def test_raising_trending_top_n_keeps_the_build_green(fresh, db):
    env = fresh("pytest_dbt_top_n")
    built = run_cli(env, "dbt", "build", "--select", "+exposure:layer2_trending", "--vars", dbt_vars(trending_top_n=12))
    assert built.returncode == 0, built.stdout[-3000:]
    # the sample data has holders of ranks 11 and 12, so the rank test saw them
    table = sql.Identifier(env["DBT_SCHEMA"], "layer2_trending_top2_10")
    ranks = db.execute(sql.SQL("select distinct trending_rank from {}").format(table))
    assert {"11th", "12th"} <= {r[0] for r in ranks}


# Every var a unit test could depend on, each away from its default (dbt_project.yml).
CHANGED_VARS = {
    "as_of": "2027-03-01 12:00:00+00",
    "new_user_max_age_days": 10,
    "new_user_min_age_hours": 24,
    "lookback_hours": 72,
    "cooling_hours": 6,
    "min_inventory_count": 5,
    "min_wishlist_count": 4,
    "trending_lookback_days": 3,
    "trending_top_n": 5,
    "activity_days": 10,
    "min_demand": 4,
}


def test_unit_tests_pin_the_vars_they_depend_on(built, tmp_path):
    env = {**built, "DBT_SCHEMA": AUDIENCE_SCHEMA, "DBT_TARGET_PATH": str(tmp_path / "target")}
    tested = run_cli(env, "dbt", "test", "--select", "test_type:unit", "--vars", dbt_vars(**CHANGED_VARS))
    assert tested.returncode == 0, tested.stdout[-3000:]
    assert int(re.search(r"PASS=(\d+)", tested.stdout).group(1)) > 0


ODD_SOURCE = "pytest_dbt Odd-Source"
# the device token table and columns of ODD_SOURCE, as the var device_tokens names them
ODD_TOKENS = {"table": "Device Tokens", "user_id": "userId", "token": "Token", "platform": 'plat"form'}


def test_names_from_vars_and_environment_are_quoted(fresh, db, tmp_path):
    env = fresh("pytest_dbt Odd-Schema", ODD_SOURCE)
    source = sql.Identifier(ODD_SOURCE)
    db.execute(sql.SQL("create schema {}").format(source))
    tables = db.execute(
        "select table_name from information_schema.tables where table_schema = %s and table_name <> 'device_tokens'",
        (SOURCE_SCHEMA,),
    ).fetchall()
    for (table,) in tables:
        db.execute(
            sql.SQL("create view {} as select * from {}").format(
                sql.Identifier(ODD_SOURCE, table), sql.Identifier(SOURCE_SCHEMA, table)
            )
        )
    db.execute(
        sql.SQL("create table {} as select user_id as {}, token as {}, platform as {} from {}").format(
            sql.Identifier(ODD_SOURCE, ODD_TOKENS["table"]),
            *(sql.Identifier(ODD_TOKENS[c]) for c in ("user_id", "token", "platform")),
            sql.Identifier(SOURCE_SCHEMA, "device_tokens"),
        )
    )
    odd_vars = dbt_vars(source_schema=ODD_SOURCE, device_tokens=ODD_TOKENS)
    run_cli(env, "dbt", "build", "--quiet", "--select", "+exposure:layer3_behavior", "--vars", odd_vars, check=True)

    exported = run_cli(env, "sender", "export", "layer3-behavior", "--out", str(tmp_path / "out"))
    assert exported.returncode == 0, exported.stderr
    view = sql.Identifier(env["DBT_SCHEMA"], "stg_tradeblock__device_tokens")
    tokens = "select user_id, token, platform from {} order by token, user_id"
    expected = db.execute(sql.SQL(tokens).format(sql.Identifier(SOURCE_SCHEMA, "device_tokens"))).fetchall()
    assert db.execute(sql.SQL(tokens).format(view)).fetchall() == expected
    assert expected


INJECTED = "pytest_dbt_injected"
INJECTION = f'x"; create table public.{INJECTED} (); --'


@pytest.mark.parametrize("setting", ["DBT_SCHEMA", "source_schema", "device_tokens.table", "device_tokens.token"])
def test_names_that_could_end_their_quotes_run_nothing(fresh, db, setting):
    env = fresh("pytest_dbt_injection")
    db.execute(sql.SQL("drop table if exists {}").format(sql.Identifier("public", INJECTED)))
    extra: dict = {}
    if setting == "DBT_SCHEMA":
        env["DBT_SCHEMA"] = INJECTION
    elif setting == "source_schema":
        extra["source_schema"] = INJECTION
    else:
        names = {"table": "device_tokens", "user_id": "user_id", "token": "token", "platform": "platform"}
        extra["device_tokens"] = {**names, setting.split(".")[1]: INJECTION}
    built = run_cli(env, "dbt", "build", "--select", "stg_tradeblock__device_tokens", "--vars", dbt_vars(**extra))
    assert built.returncode != 0
    if setting == "device_tokens.token":  # a column: quoted and escaped, so simply not found
        assert "does not exist" in built.stdout, built.stdout[-3000:]
    else:  # a relation name: dbt writes it unescaped, so it is refused before any SQL runs
        assert "is not a usable name" in built.stdout, built.stdout[-3000:]
    assert db.execute("select to_regclass(%s)", (f"public.{INJECTED}",)).fetchone()[0] is None


def test_every_layer_proves_its_guarantees_in_the_same_place(fresh, db, tmp_path):
    env = fresh("pytest_dbt_guarantees")
    run_cli(env, "dbt", "build", "--quiet", "--select", "+exposure:layer2_trending", "--vars", dbt_vars(), check=True)

    manifest = json.loads((Path(env["DBT_TARGET_PATH"]) / "manifest.json").read_text())
    tests = [n for n in manifest["nodes"].values() if n["resource_type"] == "test" and "test_metadata" in n]
    for exposure in manifest["exposures"].values():
        meta = exposure["config"]["meta"]
        audience = f"model.push_audiences.int_layer{meta['layer']}__audience"
        on_user_id = {t["test_metadata"]["name"]: t for t in tests if t["attached_node"] == audience}
        assert {"unique", "not_null", "exactly_one_of"} <= on_user_id.keys(), audience
        steps = {f"model.push_audiences.{step['model']}" for step in meta["steps"]}
        assert set(on_user_id["exactly_one_of"]["depends_on"]["nodes"]) == steps | {audience}

    # a user in two files of the layer fails it
    top1, top2 = (sql.Identifier(env["DBT_SCHEMA"], t) for t in ("layer2_trending_top1", "layer2_trending_top2_10"))
    db.execute(sql.SQL("insert into {} select * from {} limit 1").format(top2, top1))
    selected = "int_layer2__audience,test_name:exactly_one_of"
    tested = run_cli(env, "dbt", "test", "--select", selected, "--vars", dbt_vars())
    assert tested.returncode == 1, tested.stdout[-3000:]
    assert "FAIL 1 exactly_one_of_int_layer2__audience_user_id" in tested.stdout

    # a decision the reasons cannot account for, or without a reason, fails every_decision_explained
    decisions = sql.Identifier(env["DBT_SCHEMA"], "layer2_decisions")
    db.execute(
        sql.SQL("""
        update {} set reason_code = case when outcome = 'included' then 'unexplained' else reason_code end,
                      reason = case when outcome = 'excluded' then null else reason end
        where user_id in ((select user_id from {} where outcome = 'included' limit 1)
                          union all (select user_id from {} where outcome = 'excluded' limit 1))
    """).format(decisions, decisions, decisions)
    )
    tested = run_cli(env, "dbt", "test", "--select", "test_name:every_decision_explained", "--vars", dbt_vars())
    assert tested.returncode == 1, tested.stdout[-3000:]
    assert re.search(r"FAIL 2 every_decision_explained_layer2_decisions", tested.stdout), tested.stdout[-3000:]


@pytest.mark.parametrize(
    "as_of", ["2026-11-20 18:00:00", "2026-13-01 00:00:00+00", f"2026-11-20 18:00:00+00' as timestamptz); {INJECTION}"]
)
def test_an_as_of_without_offset_or_not_iso_runs_nothing(fresh, db, as_of):
    env = fresh("pytest_dbt_as_of")
    db.execute(sql.SQL("drop table if exists {}").format(sql.Identifier("public", INJECTED)))
    built = run_cli(env, "dbt", "build", "--select", "int_layer5__new_users", "--vars", dbt_vars(as_of=as_of))
    assert built.returncode != 0
    assert "is not an ISO timestamp with an offset, e.g. 2026-11-20 18:00:00+00" in built.stdout, built.stdout[-3000:]
    assert db.execute("select to_regclass(%s)", (f"public.{INJECTED}",)).fetchone()[0] is None
