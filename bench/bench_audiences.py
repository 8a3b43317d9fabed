"""Time the audience models at production scale: sample data, dbt build, dbt run, sizes, export.

    .venv/bin/python bench/bench_audiences.py                 # 1,000,000 users into database bench_1m
    .venv/bin/python bench/bench_audiences.py --reuse         # keep the source data already loaded
    .venv/bin/python bench/bench_audiences.py --users 100000 --lock /tmp/bench.lock

1. Loads sample data (`sender sample-data`, with the test users) into --source-schema, unless
   --reuse is given and the schema already has the source tables. Then VACUUM ANALYZE of the source
   tables (untimed), as autovacuum keeps a production database: index-only scans need it, and an
   autovacuum of the fresh tables would otherwise run during the timed phases.
2. `dbt parse` (untimed: dbt's partial parsing, as in production, where the project does not change
   between runs), then `dbt build --full-refresh` (models, seeds and every test) into --dbt-schema,
   artifacts in --target-path; then `dbt run --full-refresh` (models only). For each: wall time,
   per-node execution times from run_results.json (the slowest --top), and the statuses.
3. Audience sizes: rows, users and device tokens of every mart model.
4. `sender export --all`: wall time, files, rows and sizes.
5. Every model slower than --explain-over seconds in the `dbt run`: EXPLAIN (ANALYZE, BUFFERS) of
   its compiled SQL, saved under --results, with the plan nodes that took the most time.

Each timed phase records the load averages (os.getloadavg) before and after, and the CPU seconds
of the command (its process tree) and of the PostgreSQL processes serving the database (backends
and their parallel workers; 0 when the server is not on this machine): on a shared machine the wall
time varies with the others' load, the CPU seconds much less. With --lock FILE each timed phase
holds an exclusive lock on FILE (flock), so that benchmarks sharing a machine never overlap.
A JSON file with every figure goes to --results. Exit status 1 when dbt, the export or a check fails.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from psycopg import sql

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from sender.database import connect, ensure_environment, relation_exists  # noqa: E402

BIN = PROJECT / ".venv" / "bin"


def load() -> str:
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


class PostgresCpu(threading.Thread):
    """Samples (every 20 ms) the CPU seconds of the PostgreSQL processes serving `database` on this machine."""

    def __init__(self, database: str) -> None:
        super().__init__(daemon=True)
        self.prefix = f"postgres: {os.environ.get('PGUSER', 'postgres')} {database} "
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.done = threading.Event()
        self.sampling = False  # the first sample: processes already running count from their current CPU

    @staticmethod
    def cpu_and_command(pid: str) -> tuple[float, str] | None:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
        return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK"), command

    def sample(self) -> None:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            found = self.cpu_and_command(pid)
            if found is None:
                continue
            cpu, command = found
            leader = re.match(r"postgres: parallel worker for PID (\d+)", command)
            if command.startswith(self.prefix) or (leader and int(leader.group(1)) in self.first):
                self.first.setdefault(int(pid), 0.0 if self.sampling else cpu)  # a new process: all its CPU
                self.last[int(pid)] = cpu
        self.sampling = True

    def run(self) -> None:
        while not self.done.is_set():
            self.sample()
            time.sleep(0.02)

    def stop(self) -> float:
        self.done.set()
        self.join()
        self.sample()
        return round(sum(self.last[pid] - self.first[pid] for pid in self.last), 2)


class Phase:
    """Times a phase (holding --lock, if given) with the load averages and the CPU seconds around it."""

    def __init__(self, results: dict, name: str) -> None:
        self.results, self.name = results, name
        self.lock_path = results["args"].get("lock")

    def __enter__(self) -> dict:
        if self.lock_path:
            self.lock = open(self.lock_path, "a")  # noqa: SIM115 (closed in __exit__)
            fcntl.flock(self.lock, fcntl.LOCK_EX)
        print(f"\n== {self.name} (load {load()})", flush=True)
        self.entry = {"load_before": load()}
        self.postgres_cpu = PostgresCpu(self.results["database"])
        self.postgres_cpu.start()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.command_cpu = usage.ru_utime + usage.ru_stime
        self.start = time.perf_counter()
        return self.entry

    def __exit__(self, *exc: object) -> None:
        self.entry["seconds"] = round(time.perf_counter() - self.start, 2)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.entry["cpu_command_s"] = round(usage.ru_utime + usage.ru_stime - self.command_cpu, 2)
        self.entry["cpu_postgres_s"] = self.postgres_cpu.stop()
        self.entry["load_after"] = load()
        if self.lock_path:
            self.lock.close()
        self.results["phases"][self.name] = self.entry
        print(
            f"   {self.name}: {self.entry['seconds']:.1f} s (CPU: command {self.entry['cpu_command_s']} s, "
            f"PostgreSQL {self.entry['cpu_postgres_s']} s; load after {self.entry['load_after']})",
            flush=True,
        )


def run_command(command: list[str], env: dict[str, str], log: Path) -> int:
    """Run a command from the project folder, its output to `log`; returns the exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("   $ " + " ".join(command), flush=True)
    with log.open("w") as out:
        code = subprocess.run(command, cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if code:
        print(f"   exit code {code}; last lines of {log}:", file=sys.stderr)
        print("".join(log.read_text().splitlines(keepends=True)[-20:]), file=sys.stderr)
    return code


def node_times(target: Path) -> list[dict]:
    """Per-node results of the last dbt invocation, slowest first (none if dbt wrote no results)."""
    path = target / "run_results.json"
    if not path.exists():
        return []
    results = json.loads(path.read_text())["results"]
    nodes = [
        {
            "node": r["unique_id"].split(".")[2],
            "type": r["unique_id"].split(".")[0],
            "unique_id": r["unique_id"],
            "status": r["status"],
            "seconds": round(r["execution_time"], 2),
        }
        for r in results
    ]
    return sorted(nodes, key=lambda n: -n["seconds"])


def statuses(nodes: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node["status"]] = counts.get(node["status"], 0) + 1
    return counts


def print_nodes(nodes: list[dict], top: int) -> None:
    for node in nodes[:top]:
        print(f"   {node['seconds']:8.2f} s  {node['type']:<8} {node['status']:<7} {node['node']}")


def dbt(args: argparse.Namespace, env: dict[str, str], results: dict, command: str) -> bool:
    """dbt build or dbt run; records wall time and node times; True when every node passed."""
    target = PROJECT / args.target_path
    variables = f'{{source_schema: {args.source_schema}, as_of: "{args.as_of}"}}'
    invocation = [str(BIN / "dbt"), command, "--target-path", args.target_path, "--log-path"]
    invocation += [f"{args.target_path}/logs", "--full-refresh", "--vars", variables]
    (target / "run_results.json").unlink(missing_ok=True)  # never read a previous invocation's results
    with Phase(results, f"dbt {command}") as entry:
        entry["command"] = f"DBT_SCHEMA={args.dbt_schema} dbt {command} --target-path {args.target_path} " + (
            f"--full-refresh --vars '{variables}'"
        )
        entry["exit_code"] = run_command(invocation, env, args.results / f"dbt-{command}.log")
    nodes = node_times(target)
    if nodes:
        shutil.copy(target / "run_results.json", args.results / f"run_results-{command}.json")
    entry["statuses"] = statuses(nodes)
    entry["sum_of_node_seconds"] = round(sum(n["seconds"] for n in nodes), 1)
    entry["slowest"] = nodes[: args.top]
    entry["nodes"] = nodes
    print(f"   nodes: {entry['statuses']}, sum of node times {entry['sum_of_node_seconds']} s; slowest:")
    print_nodes(nodes, args.top)
    passed = set(entry["statuses"]) <= {"success", "pass", "no-op"}  # no-op: the exposures
    return entry["exit_code"] == 0 and bool(nodes) and passed


def mart_models(target: Path) -> list[tuple[str, str, str]]:
    """(name, schema, table) of the audience models (materialized as tables under models/marts)."""
    manifest = json.loads((target / "manifest.json").read_text())
    return sorted(
        (node["name"], node["schema"], node["alias"])
        for node in manifest["nodes"].values()
        if node["resource_type"] == "model" and node["original_file_path"].startswith("models/marts/")
    )


def audience_sizes(conn, target: Path, dbt_schema: str) -> list[dict]:
    sizes = []
    tokens_view = sql.Identifier(dbt_schema, "stg_tradeblock__device_tokens")
    for name, schema, table in mart_models(target):
        query = sql.SQL(
            """
            select
                (select count(*) from {audience}),
                (select count(distinct user_id) from {audience}),
                (select count(*) from (
                    select distinct audience.user_id, tokens.token
                    from {audience} as audience
                    inner join {tokens} as tokens on tokens.user_id = audience.user_id
                ) as pairs)
            """
        ).format(audience=sql.Identifier(schema, table), tokens=tokens_view)
        rows, users, tokens = conn.execute(query).fetchone()
        sizes.append({"model": name, "rows": rows, "users": users, "tokens": tokens})
        print(f"   {name:<28} {rows:>10,} rows {users:>10,} users {tokens:>10,} tokens")
    return sizes


def export(args: argparse.Namespace, env: dict[str, str], results: dict) -> bool:
    out = args.results / "exports"
    shutil.rmtree(out, ignore_errors=True)
    with Phase(results, "sender export --all") as entry:
        entry["command"] = f"DBT_TARGET_PATH={args.target_path} sender export --all --out {out}"
        command = [str(BIN / "sender"), "export", "--all", "--out", str(out)]
        entry["exit_code"] = run_command(command, env, args.results / "export.log")
    files = []
    for line in (args.results / "export.log").read_text().splitlines():
        path, _, rows = line.partition("\t")
        if rows.isdigit() and Path(path).exists():
            files.append({"file": Path(path).name, "rows": int(rows), "bytes": Path(path).stat().st_size})
    entry["files"] = files
    entry["total_bytes"] = sum(f["bytes"] for f in files)
    for f in files:
        print(f"   {f['file']:<48} {f['rows']:>10,} rows {f['bytes'] / 1e6:>8.2f} MB")
    print(f"   {len(files)} files, {entry['total_bytes'] / 1e6:.1f} MB")
    return entry["exit_code"] == 0 and bool(files)


PLAN_DETAILS = (
    "Join Type",
    "Hash Cond",
    "Merge Cond",
    "Join Filter",
    "Index Cond",
    "Filter",
    "Rows Removed by Filter",
    "Sort Key",
    "Sort Method",
    "Sort Space Used",
    "Group Key",
    "Hash Batches",
    "Peak Memory Usage",
    "Workers Launched",
)


def plan_nodes(plan: dict, depth: int = 0) -> list[dict]:
    """Flatten an EXPLAIN JSON plan; each node with its inclusive and exclusive time (ms, all loops)."""
    children = plan.get("Plans", [])
    total = plan.get("Actual Total Time", 0.0) * plan.get("Actual Loops", 1)
    child_total = sum(c.get("Actual Total Time", 0.0) * c.get("Actual Loops", 1) for c in children)
    label = plan["Node Type"]
    for key in ("Relation Name", "Index Name", "CTE Name"):
        if key in plan:
            label += f" {key.split()[0].lower()}={plan[key]}"
    node = {
        "depth": depth,
        "label": label,
        "rows": plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1),
        "loops": plan.get("Actual Loops", 1),
        "total_ms": round(total, 1),
        "self_ms": round(max(total - child_total, 0.0), 1),
        "read_blocks": plan.get("Shared Read Blocks", 0),
        "temp_written_blocks": plan.get("Temp Written Blocks", 0),
        "detail": {k: plan[k] for k in PLAN_DETAILS if k in plan},
    }
    return [node] + [n for c in children for n in plan_nodes(c, depth + 1)]


def explain(conn, args: argparse.Namespace, model: str, path: Path, pre_hooks: list[str]) -> dict:
    """EXPLAIN ANALYZE of a compiled model, in a transaction that first runs its pre-hooks (`set local ...`)."""
    compiled = path.read_text()
    print(f"   EXPLAIN (ANALYZE, BUFFERS) {model} ({path.relative_to(PROJECT)})", flush=True)
    start = time.perf_counter()
    with conn.transaction():
        for hook in pre_hooks:
            conn.execute(sql.SQL(hook))
        plan = conn.execute(sql.SQL("explain (analyze, buffers, format json) ") + sql.SQL(compiled)).fetchone()[0][0]
    seconds = time.perf_counter() - start
    (args.results / f"explain-{model}.json").write_text(json.dumps(plan, indent=1))
    nodes = plan_nodes(plan["Plan"])
    lines = [f"{model}: execution {plan['Execution Time']:.0f} ms, planning {plan['Planning Time']:.0f} ms"]
    for n in nodes:
        lines.append(
            f"{'  ' * n['depth']}-> {n['label']}  (rows={n['rows']:,} loops={n['loops']:,}"
            f" total={n['total_ms']:,.0f} ms self={n['self_ms']:,.0f} ms read={n['read_blocks']:,}"
            f" temp_written={n['temp_written_blocks']:,})"
        )
        lines += [f"{'  ' * n['depth']}     {key}: {value}" for key, value in n["detail"].items()]
    (args.results / f"explain-{model}.txt").write_text("\n".join(lines) + "\n")
    hot = sorted(nodes, key=lambda n: -n["self_ms"])[:5]
    print(f"   execution {plan['Execution Time'] / 1000:.1f} s; hottest plan nodes (exclusive time):")
    for n in hot:
        print(
            f"   {n['self_ms'] / 1000:8.2f} s  {n['label']} rows={n['rows']:,} loops={n['loops']:,} "
            f"read={n['read_blocks']:,} temp_written={n['temp_written_blocks']:,} {str(n['detail'] or '')[:200]}"
        )
    return {
        "model": model,
        "execution_seconds": round(plan["Execution Time"] / 1000, 2),
        "explain_wall_seconds": round(seconds, 1),
        "hot_nodes": hot,
        "plan_file": str(args.results / f"explain-{model}.txt"),
    }


def vacuum_source(schema: str) -> None:
    """VACUUM ANALYZE every table of the source schema (untimed), as autovacuum keeps production tables."""
    start = time.perf_counter()
    with connect(autocommit=True) as conn:
        tables = conn.execute(
            "select tablename from pg_tables where schemaname = %s order by tablename", (schema,)
        ).fetchall()
        for (table,) in tables:
            conn.execute(sql.SQL("vacuum analyze {}").format(sql.Identifier(schema, table)))
    print(f"   vacuum analyze of {len(tables)} source tables: {time.perf_counter() - start:.1f} s (untimed)")


def source_loaded(conn, schema: str) -> bool:
    return all(relation_exists(conn, schema, t) for t in ("users", "device_tokens", "offers", "inventory_items"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--users", type=int, default=1_000_000, help="sample users to load (default 1,000,000)")
    parser.add_argument("--database", default="bench_1m", help="embedded database (ignored with PGHOST)")
    parser.add_argument("--source-schema", default="bench_source")
    parser.add_argument("--dbt-schema", default="bench_audiences", help="DBT_SCHEMA for the models")
    parser.add_argument("--target-path", default="target-bench", help="dbt --target-path (relative to the project)")
    parser.add_argument("--as-of", default="2026-11-20 18:00:00+00")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--reuse", action="store_true", help="do not reload the source data if it exists")
    parser.add_argument("--skip-build", action="store_true", help="skip `dbt build` (only `dbt run`)")
    parser.add_argument("--top", type=int, default=10, help="how many of the slowest nodes to show")
    parser.add_argument(
        "--explain-over", type=float, default=20.0, help="EXPLAIN ANALYZE models slower than this (s); 0: none"
    )
    parser.add_argument("--lock", help="hold an exclusive flock on this file during each timed phase")
    parser.add_argument("--results", type=Path, default=PROJECT / "bench" / "results" / "audiences")
    args = parser.parse_args()
    args.results = args.results.resolve()
    args.results.mkdir(parents=True, exist_ok=True)

    ensure_environment(args.database)
    env = {**os.environ, "DBT_SCHEMA": args.dbt_schema, "DBT_TARGET_PATH": args.target_path}
    started = datetime.now(UTC)
    results: dict = {
        "started": started.isoformat(timespec="seconds"),
        "args": vars(args) | {"results": str(args.results)},
    }
    results["phases"] = {}
    results["cpus"] = os.cpu_count()
    results["database"] = os.environ.get("PGDATABASE", "")
    with connect(autocommit=True) as conn:
        results["postgres_version"] = conn.execute("show server_version").fetchone()[0]
    ok = True
    print(
        f"database {results['database']} (PostgreSQL {results['postgres_version']}), source {args.source_schema}, "
        f"models {args.dbt_schema}"
    )

    with connect(autocommit=True) as conn:
        loaded = source_loaded(conn, args.source_schema)
    if args.reuse and loaded:
        print(f"\n== sample data: reusing schema {args.source_schema} (--reuse)")
    else:
        with Phase(results, "sample data") as entry:
            command = [str(BIN / "sender"), "sample-data", "--users", str(args.users), "--schema", args.source_schema]
            command += ["--replace", "--cascade", "--as-of", args.as_of, "--seed", str(args.seed), "--test-users"]
            command += ["seeds/test_users.csv"]
            entry["command"] = " ".join(command[1:])
            entry["exit_code"] = run_command(command, env, args.results / "sample-data.log")
        if entry["exit_code"]:
            sys.exit(1)
    with connect(autocommit=True) as conn:
        results["source_users"] = conn.execute(
            sql.SQL("select count(*) from {}").format(sql.Identifier(args.source_schema, "users"))
        ).fetchone()[0]
    print(f"   {results['source_users']:,} users in {args.source_schema}")
    vacuum_source(args.source_schema)
    print("\n== dbt parse (untimed)", flush=True)
    if run_command([str(BIN / "dbt"), "parse", "--target-path", args.target_path], env, args.results / "dbt-parse.log"):
        sys.exit(1)

    if not args.skip_build:
        ok &= dbt(args, env, results, "build")
    ok &= dbt(args, env, results, "run")
    target = PROJECT / args.target_path
    if not results["phases"]["dbt run"]["nodes"] or results["phases"]["dbt run"]["exit_code"]:
        print(f"FAILED: dbt run did not build the models; see {args.results / 'dbt-run.log'}")
        sys.exit(1)

    print("\n== audience sizes")
    with connect(autocommit=True) as conn:
        results["audiences"] = audience_sizes(conn, target, args.dbt_schema)
    ok &= export(args, env, results)

    slow = [n for n in results["phases"]["dbt run"]["nodes"] if args.explain_over and n["seconds"] > args.explain_over]
    results["explain"] = []
    if slow:
        print(f"\n== EXPLAIN of the models over {args.explain_over:g} s (load {load()})")
        manifest = json.loads((target / "manifest.json").read_text())
        with connect(autocommit=True) as conn:
            for node in slow:
                model = manifest["nodes"][node["unique_id"]]
                path = target / "compiled" / model["package_name"] / model["original_file_path"]
                hooks = [h["sql"] for h in model["config"].get("pre-hook", []) if "{" not in h["sql"]]
                results["explain"].append(explain(conn, args, model["name"], path, hooks))

    results["ok"] = bool(ok)
    results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    out = args.results / f"audiences-{started:%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(results, indent=1))

    print(
        f"\n== summary ({results['source_users']:,} source users, {os.cpu_count()} CPUs, started {results['started']})"
    )
    for name, phase in results["phases"].items():
        extra = f", nodes {phase['statuses']}" if "statuses" in phase else ""
        print(
            f"   {name:<22} {phase['seconds']:>8.1f} s  CPU {phase['cpu_command_s']} + {phase['cpu_postgres_s']} s"
            f"  load {phase['load_before']} -> {phase['load_after']}  exit {phase.get('exit_code')}{extra}"
        )
    export_phase = results["phases"]["sender export --all"]
    print(f"   export: {len(export_phase['files'])} files, {export_phase['total_bytes'] / 1e6:.1f} MB")
    for e in results["explain"]:
        print(f"   slow model {e['model']}: {e['execution_seconds']} s, hottest node {e['hot_nodes'][0]['label']}")
    print(f"   figures: {out}")
    print("OK" if ok else "FAILED: see the logs in " + str(args.results))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
