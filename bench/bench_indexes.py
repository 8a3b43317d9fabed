"""What the indexes of source_schema.sql are worth: each windowed model with and without them.

    .venv/bin/python bench/bench_audiences.py --reuse            # builds target-bench, bench_audiences
    eval "$(.venv/bin/sender db-env --embedded-database bench_1m)"
    .venv/bin/python bench/bench_indexes.py                      # then this, on the same database

For every model given (default: the ones whose plans use those indexes), EXPLAIN ANALYZE of its
compiled SQL with the indexes, then inside a transaction that drops the nine indexes the models use
(rolled back: nothing changes), with a statement timeout. Prints the execution times.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import psycopg
from psycopg import sql

PROJECT = Path(__file__).resolve().parent.parent
USED = [  # the indexes of source_schema.sql that the models' plans use (EXPLAIN at 1M users)
    ("users", "created_at"), ("offers", "created_at"), ("inventory_items", "created_at"),
    ("wishlist_items", "created_at"), ("offers", "creator_user_id"), ("inventory_items", "user_id"),
    ("wishlist_items", "user_id"), ("desired_items", "user_id"), ("offer_items", "offer_id"),
]  # fmt: skip
MODELS = ["int_layer5__new_users", "int_layer5__levels", "int_layer5__target_shoes", "int_layer3__activities",
          "int_layer2__trending_products"]  # fmt: skip


def execution_seconds(conn: psycopg.Connection, query: str) -> float:
    plan = conn.execute("explain (analyze, timing off, format json) " + query).fetchone()[0]
    return plan[0]["Execution Time"] / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=MODELS)
    parser.add_argument("--source-schema", default="bench_source")
    parser.add_argument("--dbt-schema", default="bench_audiences")
    parser.add_argument("--target-path", default="target-bench")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per query without the indexes")
    args = parser.parse_args()
    compiled = PROJECT / args.target_path / "compiled" / "push_audiences" / "models" / "intermediate"
    with psycopg.connect() as conn:
        for model in args.models:
            query = (compiled / f"{model}.sql").read_text()
            conn.execute(sql.SQL("set search_path = {}").format(sql.Identifier(args.dbt_schema)))
            with_indexes = execution_seconds(conn, query)
            conn.execute(sql.SQL("set local statement_timeout = {}").format(sql.Literal(f"{args.timeout}s")))
            for table, column in USED:
                index = sql.Identifier(args.source_schema, f"{table}_{column}_idx")
                conn.execute(sql.SQL("drop index {}").format(index))
            try:
                without = f"{execution_seconds(conn, query):.2f} s"
            except psycopg.errors.QueryCanceled:
                without = f"over {args.timeout} s (cancelled)"
            conn.rollback()
            print(f"{model}: {with_indexes:.2f} s with the indexes, {without} without", flush=True)


if __name__ == "__main__":
    main()
