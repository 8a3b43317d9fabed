"""Time sender.sample_data.generate into a fresh database.

    .venv/bin/python bench/bench_sample_data.py --users 1000000

Prints the time of each step (from the progress messages), the total seconds and the row counts.
The database (default bench_sample_<pid>) is dropped at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sender import sample_data  # noqa: E402
from sender.database import connect, ensure_environment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--as-of", default="2026-11-20T17:30:00+00:00", type=datetime.fromisoformat)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--database", default=f"bench_sample_{os.getpid()}")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()

    ensure_environment()
    with connect(dbname="postgres", autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(args.database)))
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(args.database)))
    try:
        with connect(dbname=args.database) as conn:
            start = time.perf_counter()
            last = start

            def progress(message: str) -> None:
                nonlocal last
                now = time.perf_counter()
                print(f"{now - start:8.1f}s  (+{now - last:5.1f}s)  {message}", flush=True)
                last = now

            counts = sample_data.generate(conn, users=args.users, as_of=args.as_of, seed=args.seed, progress=progress)
            seconds = time.perf_counter() - start
        print(f"\nusers={args.users:,} seed={args.seed} as_of={args.as_of.isoformat()}: {seconds:.1f} s")
        for table, count in counts.items():
            print(f"  {table:<22} {count:>12,}")
        print(f"  {'total':<22} {sum(counts.values()):>12,}")
    finally:
        if not args.keep:
            with connect(dbname="postgres", autocommit=True) as admin:
                admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(args.database)))


if __name__ == "__main__":
    main()
