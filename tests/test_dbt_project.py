"""The dbt project as analysts use it: one campaign selected, vars changed, odd names, through real dbt and the CLI.

Every test builds into schemas of its own (dropped before and after) with its own dbt target folder, so
the session's build (pytest_audiences, target-<database>) is left as the other test files expect it.
"""

from __future__ import annotations

import json
import re

import pytest
from psycopg import sql

from tests.conftest import AS_OF, AUDIENCE_SCHEMA, SOURCE_SCHEMA, run_cli


def dbt_vars(**extra) -> str:
    """--vars for the session's sample data (YAML accepts JSON)."""
    return json.dumps({"source_schema": SOURCE_SCHEMA, "as_of": AS_OF, **extra})


@pytest.fixture
def fresh(built, db, tmp_path):
    """fresh(schema) -> env building into that new, empty schema with its own target folder and ledger."""
    created: list[str] = []

    def make(schema: str, sender_schema: str = "pytest_dbt_sender") -> dict[str, str]:
        for name in (schema, sender_schema):
            db.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(name)))
            created.append(name)
        return {
            **built,
            "DBT_SCHEMA": schema,
            "DBT_TARGET_PATH": str(tmp_path / f"target-{len(created)}"),
            "SENDER_SCHEMA": sender_schema,
        }

    yield make
    for name in created:
        db.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(name)))


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
