"""Live send throughput and memory: `sender send --mode live` of a large step to the FCM emulator.

    .venv/bin/python bench/bench_send.py                       # workers 1 2 3 x batch sizes 250 500
    .venv/bin/python bench/bench_send.py --workers 2 --batch-sizes 500 --py-spy
    .venv/bin/python bench/bench_send.py --plan-only --history 0 1 2     # planning alone, caps on and off

Needs the models of bench/bench_audiences.py built (database bench_1m, artifacts in target-bench).
For each (workers, batch size):

1. A fresh ledger (schema --sender-schema dropped, unless --keep-ledger) and a fresh emulator
   process (`sender fcm-emulator --record FILE`); waits up to --settle-timeout s for the 1-minute
   load average to fall under --settle-load.
2. Runs `sender send CAMPAIGN --mode live --step STEP --allow-large --skip-delays --run-key bench-...`
   and samples /proc every 100 ms: RSS (and PSS) of the sender and its worker processes, RSS of the
   emulator, CPU time of each, and of the PostgreSQL backends of the database.
3. Phases: startup (command start -> run row), planning (run row -> first message at the emulator),
   delivery (ledger: min..max updated_at of the run's `sent` rows; emulator: first..last message),
   messages per second over the ledger's delivery window and over the whole command.
4. Checks: exit code 0; every row of the step settled `sent` (no queued, pending or failed rows);
   the multiset of tokens the emulator delivered equals the ledger's `sent` tokens (so every token
   received exactly one message); the ledger holds every (user, token) of the audience.

--mode live-dry-run runs the same path without FCM calls (planning, claim and settle only), and
--latency-ms makes the emulator answer each message that much later, like a distant FCM.

--plan-only times the planning of the step alone, in this process (`send._plan`: rendering, COPY, the
token join, the cadence caps, the ledger insert; each statement timed), on a fresh ledger per case:
caps on and off, after 0, 1, ... earlier sends of the step (--history), which the caps then count.

CPU time of other processes during a run (total busy CPU from /proc/stat minus ours) is reported;
a run where they used more than --busy-cores on average is repeated (--retries times).
Exit status 1 when a check fails; the throughput and memory targets are reported, not enforced.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from psycopg import sql

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from sender.database import connect, ensure_environment  # noqa: E402

EMBEDDED_DB_DIR = PROJECT / ".pgdata"

BIN = PROJECT / ".venv" / "bin"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def load() -> str:
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


# --- /proc sampling -----------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(p) for p in handle.read().split()]
    except OSError:
        pass
    return found


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo += children(current)
    return pids


def rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * PAGE
    except (OSError, IndexError):
        return 0


def pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    except (OSError, IndexError):
        return None


def system_busy_seconds() -> float:
    """Busy CPU time of the whole machine (all cores), from /proc/stat."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:8]) - idle) / TICKS


def postmaster_pid() -> int | None:
    try:
        return int((EMBEDDED_DB_DIR / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


AUX = ("checkpointer", "background writer", "walwriter", "autovacuum launcher", "logical replication launcher")


def postgres_roles(postmaster: int | None, database: str) -> dict[int, str]:
    """PostgreSQL processes working for `database` (backends, its autovacuum) and the shared ones."""
    if postmaster is None:
        return {}
    roles = {}
    for pid in children(postmaster):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                title = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if title.startswith(f"postgres: autovacuum worker {database}") or title.removeprefix("postgres: ") in AUX:
            roles[pid] = "postgres-aux"
        elif f" {database} " in title:
            roles[pid] = "postgres"
    return roles


@dataclass
class Sampler:
    """Samples the sender's process tree (RSS), the emulator and PostgreSQL every `interval` s.

    PSS and the list of PostgreSQL processes are refreshed every fifth sample.
    CPU roles: sender (main process), workers, emulator, postgres (backends of the database),
    postgres-aux (WAL writer, checkpointer, background writer, autovacuum), bench (this process).
    """

    sender: int
    emulator: int
    database: str
    interval: float = 0.1
    samples: int = 0
    peak_tree_rss: int = 0
    peak_tree_pss: int = 0
    peak_main_rss: int = 0
    peak_worker_rss: int = 0
    peak_processes: int = 0
    peak_emulator_rss: int = 0
    cpu: dict[int, tuple[str, float]] = field(default_factory=dict)  # pid -> (role, last CPU seconds)
    cpu_start: dict[int, float] = field(default_factory=dict)  # CPU of pre-existing processes at start

    def start(self) -> Sampler:
        self.postmaster = postmaster_pid()
        self.busy_start = system_busy_seconds()
        self.self_start = resource.getrusage(resource.RUSAGE_SELF)
        for pid in [self.emulator, *postgres_roles(self.postmaster, self.database)]:
            self.cpu_start[pid] = cpu_seconds(pid) or 0.0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _record_cpu(self, pid: int, role: str) -> None:
        value = cpu_seconds(pid)
        if value is not None:
            self.cpu[pid] = (role, value)

    def _run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)

    def sample(self) -> None:
        pids = tree(self.sender)
        sizes = {pid: rss(pid) for pid in pids}
        self.samples += 1
        self.peak_tree_rss = max(self.peak_tree_rss, sum(sizes.values()))
        if self.samples % 5 == 1:  # PSS (smaps_rollup) and the PostgreSQL process list cost more: every 0.5 s
            self.peak_tree_pss = max(self.peak_tree_pss, sum(pss(pid) for pid in pids))
            self.roles = postgres_roles(self.postmaster, self.database)
        self.peak_main_rss = max(self.peak_main_rss, sizes.get(self.sender, 0))
        workers = [size for pid, size in sizes.items() if pid != self.sender]
        self.peak_worker_rss = max([self.peak_worker_rss, *workers])
        self.peak_processes = max(self.peak_processes, len(pids))
        self.peak_emulator_rss = max(self.peak_emulator_rss, rss(self.emulator))
        for pid in pids:
            self._record_cpu(pid, "sender" if pid == self.sender else "workers")
        self._record_cpu(self.emulator, "emulator")
        for pid, role in self.roles.items():
            self._record_cpu(pid, role)

    def stop(self) -> dict:
        self.stop_event.set()
        self.thread.join()
        busy = system_busy_seconds() - self.busy_start
        cpu: dict[str, float] = {}
        for pid, (role, value) in self.cpu.items():
            cpu[role] = cpu.get(role, 0.0) + value - self.cpu_start.get(pid, 0.0)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu["bench"] = usage.ru_utime + usage.ru_stime - self.self_start.ru_utime - self.self_start.ru_stime
        cpu = {role: round(value, 2) for role, value in sorted(cpu.items())}
        mb = 1024 * 1024
        return {
            "samples": self.samples,
            "peak_tree_rss_mb": round(self.peak_tree_rss / mb, 1),
            "peak_tree_pss_mb": round(self.peak_tree_pss / mb, 1),
            "peak_main_rss_mb": round(self.peak_main_rss / mb, 1),
            "peak_worker_rss_mb": round(self.peak_worker_rss / mb, 1),
            "peak_processes": self.peak_processes,
            "peak_emulator_rss_mb": round(self.peak_emulator_rss / mb, 1),
            "cpu_seconds": cpu,
            "machine_busy_seconds": round(busy, 2),
            "other_cpu_seconds": round(max(busy - sum(cpu.values()), 0.0), 2),
        }


# --- emulator -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_emulator(port: int, record: Path, log: Path) -> subprocess.Popen:
    command = [str(BIN / "sender"), "fcm-emulator", "--port", str(port), "--record", str(record)]
    process = subprocess.Popen(command, cwd=PROJECT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the FCM emulator did not start on port {port}; see {log}")


def configure_emulator(port: int, config: dict) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/emulator/config",
        data=json.dumps(config).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def stop_emulator(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # flushes and closes the record file
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def read_record(path: Path) -> dict:
    """What the emulator received: delivered tokens, first and last delivery, errors; validate-only requests
    (the sender's preflight before it claims anything) are counted apart."""
    delivered: Counter[str] = Counter()
    received = errors = validated = 0
    first = last = None
    with path.open() as handle:
        for line in handle:
            record = json.loads(line)
            received += 1
            if record["delivered"]:
                delivered[record["token"]] += 1
                first = record["time"] if first is None else min(first, record["time"])
                last = record["time"] if last is None else max(last, record["time"])
            elif record.get("validate_only") and record.get("status") == 200:
                validated += 1
            else:
                errors += 1
    return {
        "received": received,
        "errors": errors,
        "validated": validated,
        "delivered": delivered,
        "first": first,
        "last": last,
    }


# --- one configuration ----------------------------------------------------------------------------


def expected_pairs(conn, target: Path, campaign: str, step: str) -> tuple[str, int, int]:
    """(audience table, users, (user, token) pairs) of the step, from the manifest and the database."""
    manifest = json.loads((target / "manifest.json").read_text())
    model = None
    for exposure in manifest["exposures"].values():
        meta = exposure.get("config", {}).get("meta") or exposure.get("meta") or {}
        if meta.get("campaign") == campaign:
            model = next((s["model"] for s in meta["steps"] if s["name"] == step), None)
    if model is None:
        raise SystemExit(f"no step {step!r} in campaign {campaign!r} of {target / 'manifest.json'}")
    node = next(n for n in manifest["nodes"].values() if n["resource_type"] == "model" and n["name"] == model)
    tokens = next(
        n
        for n in manifest["nodes"].values()
        if n["resource_type"] == "model" and n["name"] == "stg_tradeblock__device_tokens"
    )
    audience = sql.Identifier(node["schema"], node["alias"])
    users, pairs = conn.execute(
        sql.SQL(
            "select (select count(*) from {a}), (select count(*) from (select distinct a.user_id, t.token"
            " from {a} as a inner join {t} as t on t.user_id = a.user_id) as p)"
        ).format(a=audience, t=sql.Identifier(tokens["schema"], tokens["alias"]))
    ).fetchone()
    return f"{node['schema']}.{node['alias']}", users, pairs


def ledger_figures(conn, schema: str, campaign: str, mode: str, run_key: str, step: str) -> dict:
    """The run's row and its step's deliveries; `sent_tokens` counts the tokens of the rows done by `mode`."""
    done = "sent" if mode == "live" else "dry_run"
    run = conn.execute(
        sql.SQL(
            "select run_id, status, extract(epoch from started_at), extract(epoch from finished_at)"
            " from {} where campaign = %s and mode = %s and run_key = %s"
        ).format(sql.Identifier(schema, "runs")),
        (campaign, mode, run_key),
    ).fetchone()
    if run is None:
        return {"run_id": None, "statuses": {}, "sent_tokens": Counter()}
    run_id, status, started, finished = run
    deliveries = sql.Identifier(schema, "deliveries")
    statuses = dict(
        conn.execute(
            sql.SQL("select status, count(*) from {} where run_id = %s and step = %s group by status").format(
                deliveries
            ),
            (run_id, step),
        ).fetchall()
    )
    first, last = conn.execute(
        sql.SQL(
            "select extract(epoch from min(updated_at)), extract(epoch from max(updated_at)) from {}"
            " where run_id = %s and step = %s and status = %s"
        ).format(deliveries),
        (run_id, step, done),
    ).fetchone()
    tokens = conn.execute(
        sql.SQL("select token from {} where run_id = %s and step = %s and status = %s").format(deliveries),
        (run_id, step, done),
    ).fetchall()
    return {
        "run_id": run_id,
        "status": status,
        "started": float(started),
        "finished": float(finished) if finished is not None else None,
        "statuses": statuses,
        "first_sent": float(first) if first is not None else None,
        "last_sent": float(last) if last is not None else None,
        "sent_tokens": Counter(t for (t,) in tokens),
    }


def settle(args: argparse.Namespace) -> str:
    deadline = time.monotonic() + args.settle_timeout
    while os.getloadavg()[0] > args.settle_load and time.monotonic() < deadline:
        time.sleep(5)
    return load()


def run_one(args: argparse.Namespace, workers: int, batch: int, attempt: int, expected: int) -> dict:
    label = (
        f"w{workers}-b{batch}"
        + ("-dry" if args.mode != "live" else "")
        + (f"-{args.latency_ms:g}ms" if args.latency_ms else "")
    )
    label += f"-retry{attempt}" if attempt else ""
    run_key = f"bench-{datetime.now(UTC):%Y%m%dT%H%M%S}-{label}"
    folder = args.results / run_key
    folder.mkdir(parents=True, exist_ok=True)
    if not args.keep_ledger:
        with connect(autocommit=True) as conn:
            conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(args.sender_schema)))
    port = args.port or free_port()
    record = folder / "fcm-messages.jsonl"
    emulator = start_emulator(port, record, folder / "emulator.log")
    result: dict = {"label": label, "workers": workers, "batch_size": batch, "run_key": run_key}
    try:
        result["load_before"] = settle(args)
        if args.latency_ms:
            configure_emulator(port, {"latency_ms": args.latency_ms})
        command = [
            str(BIN / "sender"),
            "send",
            args.campaign,
            "--mode",
            args.mode,
            "--step",
            args.step,
            "--allow-large",
        ]
        command += ["--skip-delays", "--run-key", run_key, "--workers", str(workers), "--batch-size", str(batch)]
        env = {
            **os.environ,
            "SENDER_SCHEMA": args.sender_schema,
            "FCM_EMULATOR_HOST": f"127.0.0.1:{port}",
            "DBT_TARGET_PATH": args.target_path,
            "DBT_SCHEMA": args.dbt_schema,  # should the sender parse the project again, the same relations
        }
        shown = ["sender", *command[1:]]
        if args.py_spy:  # profiling only: the process tree then includes py-spy itself
            spy = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
            if spy is None:
                raise SystemExit("--py-spy: py-spy is not installed (.venv/bin/pip install py-spy)")
            profile = ["record", "--subprocesses", "--rate", "100", "--format", "raw", "-o", str(folder / "py-spy.txt")]
            command = [spy, *profile, "--", *command]
            shown = ["py-spy", *profile, "--", *shown]
        result["command"] = (
            f"SENDER_SCHEMA={args.sender_schema} FCM_EMULATOR_HOST=127.0.0.1:{port} "
            f"DBT_TARGET_PATH={args.target_path} DBT_SCHEMA={args.dbt_schema} " + " ".join(shown)
        )
        print(f"\n== {label}: {result['command']} (load {result['load_before']})", flush=True)
        with (folder / "sender.log").open("w") as log:
            started = time.time()
            process = subprocess.Popen(command, cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT)
            sampler = Sampler(process.pid, emulator.pid, os.environ["PGDATABASE"]).start()
            result["exit_code"] = process.wait()
            ended = time.time()
            result["process"] = sampler.stop()
        result["load_after"] = load()
    finally:
        stop_emulator(emulator)
    result["wall_seconds"] = round(ended - started, 2)

    with connect(autocommit=True) as conn:
        ledger = ledger_figures(conn, args.sender_schema, args.campaign, args.mode, run_key, args.step)
    emu = read_record(record)
    if not args.keep_records:
        record.unlink()
    sent = sum(ledger["sent_tokens"].values())
    result["ledger_statuses"] = ledger["statuses"]
    result["sent"] = sent
    result["emulator_received"] = emu["received"]
    result["emulator_delivered"] = sum(emu["delivered"].values())
    problems = []
    if result["exit_code"] != 0:
        problems.append(f"sender exit code {result['exit_code']} (see {folder / 'sender.log'})")
    done = "sent" if args.mode == "live" else "dry_run"
    unsettled = {s: n for s, n in ledger["statuses"].items() if s not in (done, "no_token")}
    if unsettled:
        problems.append(f"ledger rows not {done}: {unsettled}")
    if sent != expected:
        problems.append(f"ledger has {sent:,} {done} messages, the audience has {expected:,} (user, token) pairs")
    if args.mode != "live":
        if emu["received"] - emu["validated"]:
            problems.append(f"the emulator received {emu['received']:,} messages in mode {args.mode}")
    elif emu["delivered"] != ledger["sent_tokens"]:
        extra = emu["delivered"] - ledger["sent_tokens"]
        missing = ledger["sent_tokens"] - emu["delivered"]
        problems.append(
            f"emulator vs ledger: {sum(extra.values()):,} messages the ledger does not count as sent "
            f"(e.g. {list(extra)[:3]}), {sum(missing.values()):,} 'sent' messages never received "
            f"(e.g. {list(missing)[:3]})"
        )
    duplicates = sum(n - 1 for n in emu["delivered"].values() if n > 1)
    shared = sum(n - 1 for n in ledger["sent_tokens"].values() if n > 1)
    if duplicates != shared:
        problems.append(f"{duplicates:,} duplicate deliveries at the emulator ({shared:,} tokens shared by users)")
    if emu["errors"]:
        problems.append(f"{emu['errors']:,} requests the emulator answered with an error")
    result["problems"] = problems

    if ledger.get("first_sent"):
        # without emulator records (live-dry-run), the first settle stands for the first message
        first = emu["first"] or ledger["first_sent"]
        delivery = ledger["last_sent"] - ledger["first_sent"]
        result["phases"] = {
            "startup_s": round(ledger["started"] - started, 2),
            "planning_s": round(first - ledger["started"], 2),
            "delivery_ledger_s": round(delivery, 2),
            "delivery_emulator_s": round(emu["last"] - emu["first"], 2) if emu["first"] else None,
            "first_message_to_last_settle_s": round(ledger["last_sent"] - first, 2),
            "after_last_settle_s": round(ended - ledger["last_sent"], 2),
        }
        result["msgs_per_s_delivery"] = round(sent / delivery, 1) if delivery > 0 else None
        result["msgs_per_s_first_to_last"] = round(sent / (ledger["last_sent"] - first), 1)
        result["msgs_per_s_wall"] = round(sent / result["wall_seconds"], 1)
        cpu = result["process"]["cpu_seconds"]
        result["cpu_ms_per_message"] = {role: round(1000 * seconds / sent, 3) for role, seconds in cpu.items()}
        result["other_cpu_cores"] = round(result["process"]["other_cpu_seconds"] / result["wall_seconds"], 2)
    (folder / "result.json").write_text(json.dumps(result, indent=1))
    print_result(result)
    return result


def print_result(r: dict) -> None:
    p = r["process"]
    print(f"   exit {r['exit_code']}, wall {r['wall_seconds']} s, load {r['load_before']} -> {r['load_after']}")
    print(f"   ledger {r['ledger_statuses']}; emulator received {r['emulator_received']:,}")
    if "phases" in r:
        print(f"   phases {r['phases']}")
        print(
            f"   {r['msgs_per_s_delivery']:,} msg/s (ledger delivery window), {r['msgs_per_s_first_to_last']:,} msg/s "
            f"(first message to last settle), {r['msgs_per_s_wall']:,} msg/s (whole command)"
        )
        print(f"   CPU s {p['cpu_seconds']}, CPU ms/message {r['cpu_ms_per_message']}")
        print(f"   other processes used {p['other_cpu_seconds']} CPU s ({r['other_cpu_cores']} cores on average)")
    print(
        f"   memory: sender tree peak RSS {p['peak_tree_rss_mb']} MB (PSS {p['peak_tree_pss_mb']} MB; main "
        f"{p['peak_main_rss_mb']} MB, largest worker {p['peak_worker_rss_mb']} MB, {p['peak_processes']} processes); "
        f"emulator peak RSS {p['peak_emulator_rss_mb']} MB"
    )
    for problem in r["problems"]:
        print(f"   CHECK FAILED: {problem}")


# --- planning alone (--plan-only) -------------------------------------------------------------------


class TimedConnection:
    """A connection whose `execute` calls are timed (the statements of Ledger.plan_step and _apply_caps)."""

    def __init__(self, conn) -> None:
        self._conn = conn
        self.times: list[tuple[float, str]] = []

    def __getattr__(self, name: str):
        return getattr(self._conn, name)

    def execute(self, query, params=None, **options):
        text = query.as_string(self._conn) if hasattr(query, "as_string") else str(query)
        started = time.perf_counter()
        try:
            return self._conn.execute(query, params, **options)
        finally:
            self.times.append((time.perf_counter() - started, " ".join(text.split())))


def add_history(conn, schema: str, audience: str, tokens: str, step: str, campaign, runs: int) -> None:
    """`runs` earlier live runs of this campaign that sent the step's whole audience, 1, 2, ... days ago
    (inside the cadence windows), as the ledger holds them after real sends."""
    from sender.ledger import Ledger

    ledger = Ledger(conn, schema)
    for day in range(1, runs + 1):
        run = ledger.start_run(campaign.name, campaign.layer, "live", f"history-{day}", campaign.priority)
        conn.execute(
            sql.SQL(
                "insert into {d} (run_id, step, user_id, token, status, updated_at, fcm_message_id)"
                " select %s, %s, a.user_id::uuid, t.token, 'sent', now() - make_interval(days => %s), 'm'"
                " from {a} as a inner join {t} as t on t.user_id = a.user_id::uuid"
            ).format(d=sql.Identifier(schema, "deliveries"), a=sql.SQL(audience), t=sql.SQL(tokens)),
            (run.run_id, step, day),
        )
        ledger.finish_run(run.run_id, "succeeded", [])
    conn.execute(sql.SQL("analyze {}").format(sql.Identifier(schema, "deliveries")))


def plan_only(args: argparse.Namespace, audience: str) -> None:
    """Time `send._plan` (render, COPY, the token join, _apply_caps, the ledger insert) in this process, on a
    fresh ledger per case: with the cadence caps and without, after 0, 1, 2 earlier sends of the step."""
    from sender import config as sender_config
    from sender import send
    from sender.campaigns import find_campaign, find_step
    from sender.ledger import Ledger

    config = sender_config.resolve(target_path=PROJECT / args.target_path, sender_schema=args.sender_schema)
    campaign = find_campaign(config, args.campaign)
    step = find_step(campaign, args.step)
    manifest = json.loads((PROJECT / args.target_path / "manifest.json").read_text())
    models = {n["name"]: n for n in manifest["nodes"].values() if n["resource_type"] == "model"}
    tokens = models["stg_tradeblock__device_tokens"]
    tokens_table = f'"{tokens["schema"]}"."{tokens["alias"]}"'
    audience_table = ".".join(f'"{part}"' for part in audience.split("."))
    results = []
    for history in args.history:
        for with_caps in (True, False):
            with connect(autocommit=True) as conn:
                conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(args.sender_schema)))
                Ledger(conn, args.sender_schema).migrate()
                add_history(conn, args.sender_schema, audience_table, tokens_table, step.name, campaign, history)
                ledger = Ledger(conn, args.sender_schema)
                query, copy = send._prepare(conn, campaign, step, False)
                run = ledger.start_run(campaign.name, campaign.layer, "live", f"plan-{history}", campaign.priority)
                caps = send._caps(ledger, campaign, True, []) if with_caps else None
                timed = TimedConnection(conn)
                before = load()
                cpu = resource.getrusage(resource.RUSAGE_SELF)
                started = time.perf_counter()
                send._plan(Ledger(timed, args.sender_schema), run.run_id, campaign, step, query, copy, caps)
                wall = time.perf_counter() - started
                usage = resource.getrusage(resource.RUSAGE_SELF)
                statuses = dict(
                    conn.execute(
                        sql.SQL("select status, count(*) from {} where run_id = %s group by status").format(
                            sql.Identifier(args.sender_schema, "deliveries")
                        ),
                        (run.run_id,),
                    ).fetchall()
                )
            statements = sum(seconds for seconds, _ in timed.times)
            case = {
                "history_runs": history,
                "caps": with_caps,
                "wall_s": round(wall, 2),
                "python_cpu_s": round(usage.ru_utime + usage.ru_stime - cpu.ru_utime - cpu.ru_stime, 2),
                "statements_s": round(statements, 2),
                "render_and_copy_s": round(wall - statements, 2),
                "slow_statements": [(round(sec, 3), text[:90]) for sec, text in timed.times if sec >= 0.01],
                "statuses": statuses,
                "load_before": before,
                "load_after": load(),
            }
            results.append(case)
            print(
                f"\n== history {history} run(s), caps {'on' if with_caps else 'off'}: planning {case['wall_s']} s "
                f"(render + COPY {case['render_and_copy_s']} s, statements {case['statements_s']} s; Python CPU "
                f"{case['python_cpu_s']} s); rows {statuses}; load {before} -> {case['load_after']}"
            )
            for seconds, text in case["slow_statements"]:
                print(f"   {seconds:7.3f} s  {text}")
    out = args.results / f"plan-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps({"audience": audience, "cpus": os.cpu_count(), "cases": results}, indent=1))
    print(f"\nfigures: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--database", default="bench_1m", help="embedded database (ignored with PGHOST)")
    parser.add_argument("--target-path", default="target-bench", help="dbt artifacts of bench_audiences.py")
    parser.add_argument("--sender-schema", default="bench_sender", help="SENDER_SCHEMA: the ledger")
    parser.add_argument("--dbt-schema", default="bench_audiences", help="DBT_SCHEMA of bench_audiences.py's build")
    parser.add_argument("--campaign", default="layer2-trending")
    parser.add_argument("--step", default="top2-10")
    parser.add_argument(
        "--mode",
        choices=("live", "live-dry-run"),
        default="live",
        help="live-dry-run: no FCM call, so it measures planning and the ledger's claim/settle alone",
    )
    parser.add_argument("--latency-ms", type=float, default=0, help="emulator latency per message (as FCM's)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[250, 500])
    parser.add_argument("--port", type=int, default=0, help="emulator port (default: a free one)")
    parser.add_argument("--keep-ledger", action="store_true", help="do not drop the ledger schema before each run")
    parser.add_argument("--keep-records", action="store_true", help="keep the emulator's JSON-lines records")
    parser.add_argument("--settle-load", type=float, default=1.0, help="wait for the 1-min load to fall under this")
    parser.add_argument("--settle-timeout", type=float, default=90.0, help="but no longer than this (s)")
    parser.add_argument("--busy-cores", type=float, default=0.3, help="other processes' CPU that makes a run noisy")
    parser.add_argument("--retries", type=int, default=1, help="repeat a noisy run this many times")
    parser.add_argument("--target-rate", type=float, default=3000.0, help="target msg/s (reported)")
    parser.add_argument("--target-memory", type=float, default=250.0, help="target peak MB (reported)")
    parser.add_argument("--py-spy", action="store_true", help="run the sender under py-spy record --subprocesses")
    parser.add_argument(
        "--plan-only",
        action="store_true",
        help="time the planning of the step in this process (statement by statement), caps on and off",
    )
    parser.add_argument(
        "--history",
        type=int,
        nargs="+",
        default=[0, 1],
        help="--plan-only: earlier sends of the step in the ledger (what the caps count), one case each",
    )
    parser.add_argument("--results", type=Path, default=PROJECT / "bench" / "results" / "send")
    args = parser.parse_args()
    args.results = args.results.resolve()
    args.results.mkdir(parents=True, exist_ok=True)

    ensure_environment(args.database)
    os.environ["DBT_SCHEMA"] = args.dbt_schema  # --plan-only reads the campaigns in this process
    target = PROJECT / args.target_path
    if not (target / "manifest.json").exists():
        raise SystemExit(f"no {target / 'manifest.json'}: run bench/bench_audiences.py first")
    with connect(autocommit=True) as conn:
        table, users, expected = expected_pairs(conn, target, args.campaign, args.step)
    print(f"{args.campaign} step {args.step}: {table}, {users:,} users, {expected:,} (user, token) pairs to send")
    if args.plan_only:
        plan_only(args, table)
        return

    started = datetime.now(UTC)
    runs = []
    for workers in args.workers:
        for batch in args.batch_sizes:
            for attempt in range(args.retries + 1):
                result = run_one(args, workers, batch, attempt, expected)
                runs.append(result)
                if result.get("other_cpu_cores", 0) <= args.busy_cores or result["problems"]:
                    break
                if attempt < args.retries:
                    print(f"   noisy: other processes used {result['other_cpu_cores']} cores; repeating")

    summary = {
        "started": started.isoformat(timespec="seconds"),
        "audience": {"table": table, "users": users, "messages": expected},
        "cpus": os.cpu_count(),
        "runs": runs,
    }
    out = args.results / f"send-{started:%Y%m%dT%H%M%S}.json"

    print(f"\n== summary: {args.campaign}/{args.step}, {users:,} users, {expected:,} messages, {os.cpu_count()} CPUs")
    header = (
        f"{'run':<22}{'exit':>5}{'wall s':>8}{'plan s':>8}{'deliv s':>8}{'msg/s':>8}{'msg/s*':>8}"
        f"{'tree MB':>9}{'PSS MB':>8}{'emu MB':>8}{'other':>7}  load before -> after"
    )
    print(header)
    for r in runs:
        phases = r.get("phases", {})
        print(
            f"{r['label']:<22}{r['exit_code']:>5}{r['wall_seconds']:>8.1f}{phases.get('planning_s', 0):>8.1f}"
            f"{phases.get('delivery_ledger_s', 0):>8.1f}{r.get('msgs_per_s_delivery') or 0:>8.0f}"
            f"{r.get('msgs_per_s_wall') or 0:>8.0f}{r['process']['peak_tree_rss_mb']:>9.0f}"
            f"{r['process']['peak_tree_pss_mb']:>8.0f}{r['process']['peak_emulator_rss_mb']:>8.0f}"
            f"{r.get('other_cpu_cores', 0):>7.2f}  {r['load_before']} -> {r['load_after']}"
        )
    print("msg/s: over the ledger's delivery window; msg/s*: over the whole command; other: other processes' cores")
    for r in runs:
        rate = r.get("msgs_per_s_delivery") or 0
        p = r["process"]
        r["targets"] = {
            "rate": rate >= args.target_rate,
            "rss": p["peak_tree_rss_mb"] <= args.target_memory,
            "pss": p["peak_tree_pss_mb"] <= args.target_memory,
        }
    both = [r["label"] for r in runs if r["targets"]["rate"] and r["targets"]["rss"]]
    both_pss = [r["label"] for r in runs if r["targets"]["rate"] and r["targets"]["pss"]]
    print(
        f"targets >= {args.target_rate:,.0f} msg/s and <= {args.target_memory:.0f} MB: met by "
        f"{', '.join(both) or 'no run'} (peak RSS sum); {', '.join(both_pss) or 'no run'} (peak PSS sum)"
    )
    out.write_text(json.dumps(summary, indent=1))
    failed = [r for r in runs if r["problems"]]
    print(f"figures: {out}")
    if failed:
        print(f"FAILED checks in {', '.join(r['label'] for r in failed)}")
        sys.exit(1)
    print("OK: every message delivered exactly once" if args.mode == "live" else "OK: every message settled once")


if __name__ == "__main__":
    main()
