"""The Spark half of `make test-spark`, in one process, so that one Spark session (one JVM, warmed up once)
serves every step: dbt-spark's session method reuses the session of its process.

    python tests/spark/run.py --source-schema spark_source --schema spark_audiences \
        --as-of "2026-11-20 18:00:00+00" --second-as-of "2026-11-19 06:00:00+00"

Expects the source data in PostgreSQL schema --source-schema and the models built there into --schema at
--as-of (dbt build, default target). Then: the source tables copied into Spark (sender spark load's
function), `dbt build --target spark` (models, seeds, data and unit tests), every mart compared row for row
(sender spark compare's function); then `dbt run` on PostgreSQL and on Spark at --second-as-of and compared
again. Exit status 1 if a step fails or a mart differs. Reads the PG* variables and DBT_PROFILES_DIR as dbt does.
Not a pytest file (pytest collects test_*.py only).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))

from psycopg import sql  # noqa: E402

from sender import spark  # noqa: E402
from sender.database import connect  # noqa: E402

STARTED = time.monotonic()


def phase(title: str) -> None:
    print(f"== {title} ({time.monotonic() - STARTED:.0f} s)", flush=True)


def dbt(*args: str) -> None:
    from dbt.cli.main import dbtRunner

    result = dbtRunner().invoke(["--quiet", *args])
    if not result.success:
        sys.exit(f"dbt {' '.join(args)} failed{f': {result.exception}' if result.exception else ''}")
    done = Counter(
        ("unit test" if r.node.resource_type == "unit_test" else r.node.resource_type, str(r.status))
        for r in result.result
    )
    print(f"dbt {args[0]}: " + ", ".join(f"{n} {kind} {status}" for (kind, status), n in sorted(done.items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-schema", required=True, help="PostgreSQL schema of the source tables")
    parser.add_argument("--schema", required=True, help="DBT_SCHEMA: the models' schema, on both")
    parser.add_argument("--as-of", required=True)
    parser.add_argument("--second-as-of", required=True)
    parser.add_argument("--target", default="spark", help="the Spark target of the dbt profile")
    args = parser.parse_args()
    os.chdir(PROJECT)
    os.environ["DBT_SCHEMA"] = args.schema
    profiles_dir = Path(os.environ["DBT_PROFILES_DIR"]) if os.environ.get("DBT_PROFILES_DIR") else None
    session = spark.session(spark.spark_parameters(PROJECT, profiles_dir, args.target))
    models = spark.mart_models(PROJECT)

    def dbt_vars(as_of: str) -> str:
        return f'{{source_schema: {args.source_schema}, as_of: "{as_of}"}}'

    def compare(as_of: str) -> bool:
        phase(f"Spark vs PostgreSQL at {as_of}")
        with connect(autocommit=True) as conn:
            lines, same = spark.compare(conn, session, args.schema, args.schema, models)
        print("\n".join(lines), flush=True)
        return same

    phase(f"the source tables of {args.source_schema} into Spark")
    with connect(autocommit=True) as conn:
        spark.load(conn, session, args.source_schema, args.source_schema, spark.source_tables(PROJECT), print)
    phase("dbt build --target spark")
    dbt("build", "--target", args.target, "--target-path", "target-spark", "--vars", dbt_vars(args.as_of))
    same = compare(args.as_of)
    phase(f"dbt run on PostgreSQL and on Spark at {args.second_as_of}")
    dbt("run", "--target-path", "target-spark-pg", "--vars", dbt_vars(args.second_as_of))
    dbt("run", "--target", args.target, "--target-path", "target-spark", "--vars", dbt_vars(args.second_as_of))
    same = compare(args.second_as_of) and same
    # the check can fail: one PostgreSQL row changed (the next make test-spark rebuilds the schema)
    phase("one username changed on PostgreSQL: the comparison must see it")
    with connect(autocommit=True) as conn:
        mart = sql.Identifier(args.schema, "layer2_trending_top1")
        conn.execute(sql.SQL("update {} set username = username || '!' where export_order = 1").format(mart))
        lines, caught = spark.compare(conn, session, args.schema, args.schema, ["layer2_trending_top1"])
    print("\n".join(lines), flush=True)
    if caught:
        same = False
        print("the comparison did not see the changed row", flush=True)
    phase("done" if same else "the models differ between Spark and PostgreSQL (above)")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
