"""A scheduled run of a campaign (DELIVERY.md, "Timeline of a scheduled run").

build (dbt, through its API) -> freshness gate -> export -> test phase (test-live) -> cancellation
window (until the send time) -> lateness gate -> live phase (step by step, with each step's delay)
-> cleanup (test files older than the retention). A run is identified by (campaign, scheduled send
time, rehearsal or not) and its state lives in the ledger (`scheduled_runs`): a second process for the
same campaign exits at once (the campaign's lock), a finished run only reports, and a run whose
process died is resumed from its recorded phase by the next process, whatever the date. The send
phases are send runs keyed by the send time, so a resumed phase never sends a message twice.

Gates: an inactive or paused campaign starts no run (a rehearsal may try an inactive one); a test
phase that reached no test user, stale sources, or a live phase that would start later than the
campaign's allowed lateness end the run `blocked` before anything live is sent. A cancel request
(`sender cancel`) or a pause stops the run at its next check: in the window, before the live phase;
during it, at the next batch boundary.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from sender import export, schedule, send
from sender.campaigns import Campaign
from sender.config import Config
from sender.errors import ExitCode, UserError
from sender.interrupts import Interrupted, Stop
from sender.ledger import Ledger, try_lock_campaign

FINISHED = ("succeeded", "failed", "cancelled", "blocked")
EARLY = timedelta(minutes=10)  # a run fired this much before its start time (send time - lead) does not wait


class Blocked(Exception):
    """A gate closed: the run ends `blocked`, nothing (more) live is sent."""


class Failed(Exception):
    """A phase ended badly (e.g. messages failed): the run ends `failed`, exit 6."""


class BuildFailed(UserError):
    pass


@dataclass
class RunOptions:
    send_at: str | None = None  # HH:MM or ISO; default: the campaign's next send time
    rehearse: bool = False
    build: bool = True  # run `dbt build --select +exposure:<campaign>` first
    dbt_vars: str | None = None  # passed to dbt build and dbt source freshness
    out: Path = Path("exports")
    max_audience: int = 10_000
    allow_large: bool = False
    workers: int = 2
    batch_size: int = 250
    rehearsal_window: float = 10.0  # seconds between a rehearsal's test and live phases


@dataclass
class Clock:
    """Wall time, shifted by `offset` (a run started with --now pretends it is that time)."""

    offset: timedelta = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


@dataclass
class Outcome:
    id: int | None
    campaign: str
    send_at: datetime | None
    rehearsal: bool
    status: str  # succeeded, failed, cancelled, blocked, interrupted, or 'not started'
    reason: str | None = None
    phases: list[dict] = field(default_factory=list)
    test: send.RunResult | None = None
    live: send.RunResult | None = None
    files: list[str] = field(default_factory=list)
    already_finished: bool = False

    @property
    def exit_code(self) -> int:
        if self.status == "blocked":
            return ExitCode.SAFEGUARD
        if self.status == "failed":
            return ExitCode.PARTIAL
        return ExitCode.OK

    def as_json(self) -> dict:
        return {
            "id": self.id, "campaign": self.campaign, "send_at": self.send_at.isoformat() if self.send_at else None,
            "rehearsal": self.rehearsal, "status": self.status, "reason": self.reason, "phases": self.phases,
            "test": self.test and self.test.as_json(), "live": self.live and self.live.as_json(),
            "files": self.files, "already_finished": self.already_finished,
        }  # fmt: skip


@dataclass
class _Run:
    """What the phases of one invocation share."""

    conn: psycopg.Connection
    lock_conn: psycopg.Connection
    config: Config
    campaign: Campaign
    options: RunOptions
    clock: Clock
    log: Callable[[str], None]
    stop: Stop
    ledger: Ledger
    outcome: Outcome
    row: dict

    @property
    def id(self) -> int:
        return self.row["id"]

    def done(self, phase: str) -> bool:
        return any(p["phase"] == phase and p["outcome"] in ("done", "skipped") for p in self.row["phases"])

    def record(self, phase: str, outcome: str, **detail) -> None:
        self.ledger.record_phase(self.id, phase, outcome, detail)
        self.outcome.phases.append({"phase": phase, "outcome": outcome, **detail})
        self.log(f"scheduled run {self.id}: {phase}: {outcome}{_details(detail)}")

    def halt(self) -> send.Halted | None:
        """A cancel request or a pause, noticed at a batch boundary or a check of the window."""
        beat = self.ledger.heartbeat(self.id)
        if beat["cancel_requested_at"]:
            return send.Halted(
                f"cancelled by `sender cancel` at {beat['cancel_requested_at']:%H:%M:%S %Z}", "cancelled"
            )
        if beat["paused"]:
            why = f": {beat['paused_reason']}" if beat["paused_reason"] else ""
            return send.Halted(f"campaign {self.campaign.name} was paused{why}", "cancelled")
        return None


def _details(detail: dict) -> str:
    return "".join(f", {k} {v}" for k, v in detail.items()) if detail else ""


def run_campaign(
    conn: psycopg.Connection,
    lock_conn: psycopg.Connection,
    config: Config,
    campaign: Campaign,
    options: RunOptions,
    clock: Clock,
    log: Callable[[str], None] = print,
    stop: Stop | None = None,
    progress: Callable[[str, int], Callable[[int], None]] = lambda step, total: lambda n: None,
) -> Outcome:
    """Run, resume or report the scheduled run of `campaign` (conn and lock_conn: autocommit)."""
    ledger = Ledger(conn, config.sender_schema)
    ledger.migrate()
    if not try_lock_campaign(lock_conn, campaign.name):
        raise send.Locked(f"another sender is already running campaign {campaign.name}; not starting a second one")
    now = clock.now()
    paused = ledger.paused(campaign.name)
    if paused or not (campaign.active or options.rehearse):
        why = f"campaign {campaign.name} is " + ("paused" if paused else "inactive (active: false)")
        why += f" ({paused['reason']})" if paused and paused["reason"] else ""
        return Outcome(None, campaign.name, None, options.rehearse, "not started", why + ": no run started")
    send_at = _send_at(ledger, campaign, options, now)
    if options.send_at is None and not options.rehearse and now < schedule.start_time(campaign, send_at) - EARLY:
        start = schedule.start_time(campaign, send_at).astimezone(campaign.zone)
        return Outcome(None, campaign.name, send_at, False, "not started",
                       f"too early: the next run of {campaign.name} starts at {start:%Y-%m-%d %H:%M %Z}")  # fmt: skip
    row = ledger.scheduled_run(campaign.name, send_at, options.rehearse)
    if row and row["status"] in FINISHED:
        return _report(campaign, row)
    row = ledger.start_scheduled_run(campaign.name, send_at, options.rehearse)
    outcome = Outcome(row["id"], campaign.name, send_at, options.rehearse, "running", phases=list(row["phases"]))
    run = _Run(conn, lock_conn, config, campaign, options, clock, log, stop or Stop(), ledger, outcome, row)
    kind = "rehearsal" if options.rehearse else "run"
    local = send_at.astimezone(campaign.zone)
    resumed = " (resumed)" if row["phases"] else ""
    log(f"scheduled run {run.id}: {kind} of {campaign.name} for {local:%Y-%m-%d %H:%M:%S %Z}{resumed}")
    try:
        _timeline(run, progress)
        _finish(run, "succeeded")
    except Blocked as exc:
        _finish(run, "blocked", str(exc))
    except Failed as exc:
        _finish(run, "failed", str(exc))
    except send.Halted as exc:
        _finish(run, exc.status, str(exc))
    except Interrupted as exc:
        _finish(run, "interrupted", f"stopped by {exc}")
        raise
    except BaseException as exc:
        _finish(run, "failed", str(exc) or type(exc).__name__)
        raise
    return outcome


def _send_at(ledger: Ledger, campaign: Campaign, options: RunOptions, now: datetime) -> datetime:
    if options.send_at:
        return schedule.parse_send_at(campaign, options.send_at, now)
    if options.rehearse:
        return (now + timedelta(seconds=options.rehearsal_window)).replace(microsecond=0)
    unfinished = ledger.unfinished_scheduled_run(campaign.name)  # a run whose process died: resume it
    return unfinished["send_at"] if unfinished else schedule.next_send_at(campaign, now)


def _report(campaign: Campaign, row: dict) -> Outcome:
    return Outcome(row["id"], campaign.name, row["send_at"], row["rehearsal"], row["status"], row["reason"],
                   list(row["phases"]), already_finished=True)  # fmt: skip


def _finish(run: _Run, status: str, reason: str | None = None) -> None:
    run.outcome.status, run.outcome.reason = status, reason
    try:
        run.ledger.finish_scheduled_run(run.id, status, reason and reason[:1000])
    except psycopg.Error:  # the database is gone: the next process finds the run unfinished and resumes it
        pass
    run.log(f"scheduled run {run.id}: {status}{': ' + reason if reason else ''}")


def _timeline(run: _Run, progress) -> None:
    campaign, options = run.campaign, run.options
    if options.build and not run.done("build"):
        _build(run)
    if not run.done("freshness"):
        _freshness(run)
    if not run.done("export"):
        files = export.export_campaigns(run.conn, [campaign], options.out)
        run.outcome.files = [str(f.path) for f in files]
        run.record("export", "done", files=len(files), folder=str(options.out))
    if not options.rehearse:  # the test pushes go out when the cancellation window opens
        _wait_until(run, schedule.test_push_at(campaign, run.outcome.send_at), "test send")
    _check(run)
    key = schedule.run_key(campaign, run.outcome.send_at)
    if options.rehearse:  # rehearsals are seconds apart: their send runs are keyed to the second
        key = f"rehearsal {run.outcome.send_at.astimezone(campaign.zone).isoformat()}"
    run.outcome.test = _send(run, "test", "test-live", f"{key} test" if options.rehearse else key, progress)
    if not run.done("test"):
        reached = sum(s.sent for s in run.outcome.test.steps)
        if not reached:
            run.record("test", "blocked")
            raise Blocked("the test phase reached no test user (no token, or every message failed): nothing live sent")
        run.record("test", "done", sent=reached)
    if not run.done("window"):
        run.record("window", "started", until=run.outcome.send_at.astimezone(campaign.zone).isoformat())
        _wait_until(run, run.outcome.send_at, "cancellation window: live send")
        run.record("window", "done")
    live_started = any(p["phase"] == "live" for p in run.row["phases"] + run.outcome.phases)
    late = run.clock.now() - run.outcome.send_at
    if not live_started and late > timedelta(minutes=campaign.allowed_lateness_minutes):
        raise Blocked(
            f"the live phase would start {late.total_seconds() / 60:.0f} min after the send time, over the allowed "
            f"lateness of {campaign.allowed_lateness_minutes} min: nothing live sent"
        )
    mode, live_key = ("test-live", f"{key} live") if options.rehearse else ("live", key)
    run.outcome.live = _send(run, "live", mode, live_key, progress)
    if run.outcome.live.status != "succeeded":
        raise Failed(f"the live phase ended {run.outcome.live.status} (send run {run.outcome.live.run_id})")
    if not run.done("live"):
        run.record("live", "done", sent=sum(s.sent for s in run.outcome.live.steps))
    if not run.done("cleanup"):
        run.record("cleanup", "done", removed=_cleanup(run))


def _check(run: _Run) -> None:
    halted = run.halt()
    if halted:
        raise halted


def _send(run: _Run, phase: str, mode: str, key: str, progress) -> send.RunResult:
    """A send phase: one send run (resumed or reported if it exists) of the campaign."""
    if not any(p["phase"] == phase for p in run.row["phases"] + run.outcome.phases):
        run.record(phase, "started", mode=mode, key=key)
    options = send.Options(mode, run_key=key, max_audience=run.options.max_audience,
                           allow_large=run.options.allow_large, workers=run.options.workers,
                           batch_size=run.options.batch_size, skip_delays=run.options.rehearse,
                           rehearsal=run.options.rehearse)  # fmt: skip
    result = send.send_campaign(run.conn, run.lock_conn, run.config, run.campaign, options, run.clock.now(),
                                progress, run.log, run.stop, run.halt)  # fmt: skip
    run.ledger.link_send_run(run.id, f"{phase}_run_id", result.run_id)
    return result


def _wait_until(run: _Run, moment: datetime, what: str) -> None:
    """Wait until `moment`, checking for cancel and pause; a countdown line now and then."""
    every = 5.0 if run.options.rehearse else 300.0
    poll = 0.5 if run.options.rehearse else 5.0
    last_line = -every
    while (left := (moment - run.clock.now()).total_seconds()) > 0:
        _check(run)
        if time.monotonic() - last_line >= every:
            run.log(f"scheduled run {run.id}: {what} in {_duration(left)} (`sender cancel {run.id}` stops it)")
            last_line = time.monotonic()
        run.clock.sleep(min(left, poll))
    _check(run)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{seconds:02d}s"


def _cleanup(run: _Run) -> int:
    """Remove this campaign's test files older than its retention from the export folder."""
    cutoff = time.time() - run.campaign.test_file_retention_days * 86400
    removed = 0
    for step in run.campaign.steps:
        pattern = run.campaign.test_file_name.format(prefix=step.file_prefix, ts="*")
        for path in run.options.out.glob(pattern):
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def _dbt(run: _Run, *args: str):
    from dbt.cli.main import dbtRunner  # a second to import: only for the phases that need dbt

    config = run.config
    common = ["--project-dir", str(config.project_dir), "--target-path", str(config.target_path), "--quiet"]
    common += ["--profiles-dir", str(config.profiles_dir)] if config.profiles_dir else []
    common += ["--vars", run.options.dbt_vars] if run.options.dbt_vars else []
    return dbtRunner().invoke([*args, *common])


def _build(run: _Run) -> None:
    started = time.monotonic()
    result = _dbt(run, "build", "--select", f"+exposure:{run.campaign.exposure}")
    failures = [r for r in (result.result or []) if str(r.status) in ("error", "fail", "runtime error")]
    if not result.success or failures:
        first = failures[0].node.name if failures else str(result.exception or "dbt could not run")
        run.record("build", "failed", errors=len(failures) or 1)
        raise BuildFailed(f"dbt build --select +exposure:{run.campaign.exposure} failed ({first}): nothing sent")
    run.record("build", "done", nodes=len(result.result), seconds=round(time.monotonic() - started, 1))


def _freshness(run: _Run) -> None:
    """The sources' freshness (loaded_at_field, error_after): stale data blocks the run."""
    result = _dbt(run, "source", "freshness", "--select", f"+exposure:{run.campaign.exposure}")
    stale = [r for r in (result.result or []) if str(r.status) in ("error", "runtime error")]
    if stale or (not result.success and result.result is None):
        names = ", ".join(_stale(r) for r in stale) or str(result.exception)
        run.record("freshness", "blocked", stale=len(stale))
        raise Blocked(f"source data is stale ({names}): nothing sent")
    run.record("freshness", "done", sources=len(result.result or []))


def _stale(result) -> str:
    age = getattr(result, "age", None)
    return f"{result.node.name} {age / 3600:.1f} h old" if isinstance(age, int | float) else result.node.name


def as_json(outcome: Outcome) -> str:
    return json.dumps(outcome.as_json(), default=str)
