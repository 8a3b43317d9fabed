"""All the benchmarks at 10k, 100k and 1M users, collected into one table (bench/results/table.md).

    .venv/bin/python bench/bench_all.py                            # 10,000 100,000 1,000,000 users
    .venv/bin/python bench/bench_all.py --users 10000 100000 --no-send
    make bench                                                     # the same, after `make install`

For each number of users, one after the other, in the same database (the source data is replaced):

1. bench_audiences.py --users N: sample data, dbt build, dbt run, audience sizes, `sender export --all`.
2. bench_send.py (when it exists, unless --no-send): `sender send --mode live` of Layer 2's top2-10 step
   to the FCM emulator, with --send-workers and --send-batch-size.

Then the table: the machine (cores, memory, PostgreSQL and dbt versions) and, per size, the wall
seconds of each phase with the CPU seconds behind them (command + PostgreSQL) and the load average
before it: a figure taken while other work ran on the machine is slower, and says so. The figures
of every run stay in bench/results/all/<users>/ (JSON, logs). With --lock FILE every timed phase
holds an exclusive flock on FILE, so that benchmarks sharing a machine never overlap.
Exit status 1 when a benchmark fails.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
PYTHON = PROJECT / ".venv" / "bin" / "python"


def newest(folder: Path, pattern: str) -> dict | None:
    files = sorted(folder.glob(pattern))
    return json.loads(files[-1].read_text()) if files else None


def run(command: list[str]) -> int:
    print("\n$ " + " ".join(command), flush=True)
    return subprocess.run(command, cwd=PROJECT).returncode


def send(args: argparse.Namespace, folder: Path) -> int:
    command = [str(PYTHON), "bench/bench_send.py", "--database", args.database, "--workers", str(args.send_workers)]
    command += ["--batch-sizes", str(args.send_batch_size), "--retries", "0", "--results", str(folder)]
    if not args.lock:
        return run(command)
    with open(args.lock, "a") as lock:  # bench_send.py times its own phases: hold the lock around it
        fcntl.flock(lock, fcntl.LOCK_EX)
        return run(command)


def phase(figures: dict | None, name: str) -> str:
    """'12.3 (4.1 + 7.9)': wall seconds (CPU seconds of the command + PostgreSQL), or '-'."""
    entry = (figures or {}).get("phases", {}).get(name)
    if not entry or entry.get("exit_code"):
        return "failed" if entry else "-"
    return f"{entry['seconds']:.1f} ({entry['cpu_command_s']:.1f} + {entry['cpu_postgres_s']:.1f})"


def send_cells(figures: dict | None) -> list[str]:
    if not figures or not figures.get("runs"):
        return ["-"] * 4
    result = figures["runs"][0]
    if result.get("problems"):
        return ["failed"] * 4
    return [
        f"{figures['audience']['messages']:,}",
        f"{result.get('phases', {}).get('planning_s', 0):.1f}",
        f"{result.get('msgs_per_s_delivery') or 0:,.0f}",
        f"{result['process']['peak_tree_rss_mb']:.0f}",
    ]


def table(args: argparse.Namespace, rows: list[tuple[int, dict | None, dict | None]]) -> str:
    first = next((a for _, a, _ in rows if a), {})
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    dbt_version = (
        subprocess.run([str(PROJECT / ".venv" / "bin" / "dbt"), "--version"], capture_output=True, text=True)
        .stdout.split("installed:")[-1]
        .split()[0:1]
    )
    lines = [
        f"Machine: {os.cpu_count()} cores, {memory_gb:.0f} GB; PostgreSQL {first.get('postgres_version', '?')}"
        f" ({'PGHOST ' + os.environ['PGHOST'] if os.environ.get('PGHOST') else 'embedded'}); dbt"
        f" {''.join(dbt_version) or '?'}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; `bench/bench_all.py"
        f" --users {' '.join(str(n) for n in args.users)}`.",
        "",
        "Seconds of wall time (CPU seconds: the command's + PostgreSQL's); load: 1-minute load average before"
        " the phase. Send: Layer 2 top2-10 to the FCM emulator,"
        f" {args.send_workers} workers, batches of {args.send_batch_size}.",
        "",
        "| users | sample data | dbt build | dbt run | sender export --all | load | messages | planning s"
        " | msg/s | peak RSS MB |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for users, audiences, sending in rows:
        loads = "/".join(
            (audiences or {}).get("phases", {}).get(name, {}).get("load_before", "-").split("/")[0]
            for name in ("dbt build", "dbt run")
        )
        cells = [f"{users:,}", *(phase(audiences, n) for n in ("sample data", "dbt build", "dbt run"))]
        cells += [phase(audiences, "sender export --all"), loads, *send_cells(sending)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--database", default="bench_1m", help="embedded database (ignored with PGHOST)")
    parser.add_argument("--no-send", action="store_true", help="skip bench_send.py")
    parser.add_argument("--send-workers", type=int, default=2)
    parser.add_argument("--send-batch-size", type=int, default=500)
    parser.add_argument("--lock", help="hold an exclusive flock on this file during each timed phase")
    parser.add_argument("--results", type=Path, default=PROJECT / "bench" / "results")
    args = parser.parse_args()
    args.results = args.results.resolve()
    with_send = not args.no_send and (PROJECT / "bench" / "bench_send.py").exists()

    rows, failed = [], []
    for users in args.users:
        folder = args.results / "all" / str(users)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in [*folder.glob("audiences-*.json"), *folder.glob("send/send-*.json")]:
            stale.unlink()  # the table shows this run's figures only
        command = [str(PYTHON), "bench/bench_audiences.py", "--users", str(users), "--database", args.database]
        command += ["--explain-over", "0", "--results", str(folder)] + (["--lock", args.lock] if args.lock else [])
        if run(command):
            failed.append(f"bench_audiences.py --users {users}")
        if with_send and newest(folder, "audiences-*.json") and send(args, folder / "send"):
            failed.append(f"bench_send.py at {users} users")
        rows.append((users, newest(folder, "audiences-*.json"), newest(folder / "send", "send-*.json")))

    text = table(args, rows)
    out = args.results / "table.md"
    out.write_text(text)
    print("\n" + text + f"\n(written to {out})")
    if failed:
        print("FAILED: " + "; ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
