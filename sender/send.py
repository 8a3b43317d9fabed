"""Send a campaign: one code path for the four modes (DELIVERY.md, "Modes", "Delivery rules",
"Failures and recovery").

1. Validate every step's templates against its audience columns (nothing is sent on an error).
2. Safeguards: an inactive campaign never sends live; a live step over --max-audience fails the
   run before anything is sent, unless allowed.
3. Start the run, or resume the unfinished run with the same (campaign, mode, run key).
4. Per step: plan it once (render every row, join the device tokens at send time, write one
   ledger row per (user, token), record the step as planned even when its audience is empty); then
   prove FCM accepts our credentials (preflight), claim batches (`pending`), hand them to the workers
   and settle the outcomes as they come back. At most `workers` batches are with FCM at a time, so a
   kill -9 leaves at most workers x batch-size messages pending.
5. A systemic refusal (credentials, project, FCM unreachable) stops the run after the batches in
   flight; refused and unsent messages stay queued for the same command to send later.

Only the audience (test users or the real audience) and the final call (FCM dry run, FCM send, or
none) differ between modes.
"""

from __future__ import annotations

import ctypes
import gc
import json
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import jinja2.meta
import jinja2.nodes
import psycopg
from psycopg import sql

from sender import audiences, schedule
from sender.campaigns import Campaign, Step, find_step
from sender.config import Config
from sender.errors import ExitCode, UserError
from sender.interrupts import Interrupted, Stop
from sender.ledger import Caps, Counts, Ledger, try_lock_campaign
from sender.render import ENV as RENDER_ENV
from sender.render import Copy, Rendered, TemplateError, compile_copy

if TYPE_CHECKING:
    from sender import dispatch

MODES = ("test-dry-run", "test-live", "live-dry-run", "live")
MAX_RUN_KEY = 200


class ValidationFailed(UserError):
    exit_code = ExitCode.VALIDATION


class SafeguardTripped(UserError):
    exit_code = ExitCode.SAFEGUARD


class Locked(UserError):
    exit_code = ExitCode.LOCKED


class Systemic(UserError):
    """FCM refuses the sender itself: the run stopped, nothing was lost."""

    exit_code = ExitCode.SYSTEMIC


class WorkerDied(UserError):
    exit_code = ExitCode.PARTIAL


class Halted(UserError):
    """Stopped at a batch boundary: the campaign was paused, or its scheduled run cancelled."""

    exit_code = ExitCode.SAFEGUARD

    def __init__(self, message: str, status: str = "interrupted") -> None:
        super().__init__(message)
        self.status = status  # how the send run is recorded: 'interrupted' (paused) or 'cancelled'


@dataclass
class Options:
    mode: str
    step: str | None = None
    run_key: str | None = None
    max_audience: int = 10_000
    allow_large: bool = False
    resend_unknown: bool = False
    retry_failed: bool = False
    workers: int = 2
    batch_size: int = 250
    skip_delays: bool = False
    rehearsal: bool = False  # a rehearsal's test sends go out for an inactive campaign too


@dataclass(frozen=True)
class StepSummary(Counts):
    """A step's ledger counts after this invocation, with what the summary shows of it."""

    step: str = ""
    unknown_messages: list[tuple[str, str]] = field(default_factory=list)  # (user_id, token) left pending
    examples: list[dict] = field(default_factory=list)  # a few rendered messages and errors

    @property
    def finished(self) -> bool:
        return not (self.failed or self.render_errors or self.unknown or self.queued)


@dataclass
class RunResult:
    run_id: int
    campaign: str
    mode: str
    run_key: str
    status: str
    steps: list[StepSummary]
    warnings: list[str]
    resumed: bool = False
    already_done: bool = False

    @property
    def exit_code(self) -> int:
        return ExitCode.OK if self.status == "succeeded" else ExitCode.PARTIAL

    def as_json(self) -> dict:
        steps = [{**_counts(s), "unknown_messages": s.unknown_messages, "examples": s.examples} for s in self.steps]
        return {"run_id": self.run_id, "campaign": self.campaign, "mode": self.mode, "run_key": self.run_key,
                "status": self.status, "already_done": self.already_done, "warnings": self.warnings,
                "steps": steps}  # fmt: skip


def is_test(mode: str) -> bool:
    return mode.startswith("test-")


def default_run_key(campaign: Campaign, mode: str, now: datetime) -> str:
    """Real sends: the key of the campaign's current scheduled send time, the latest one at or before
    now + lead time (so a send resumed after midnight is the same run, and a scheduled run's phases
    and a manual send of the same day share their ledger runs). Dry runs: a fresh run each time."""
    if mode in ("test-live", "live"):
        return schedule.run_key(campaign, _current_send_at(campaign, now))
    return now.isoformat()


def _current_send_at(campaign: Campaign, now: datetime) -> datetime:
    """The campaign's latest scheduled send time at or before now + its lead time."""
    horizon = now + timedelta(minutes=campaign.lead_minutes)
    day = horizon.astimezone(campaign.zone).date()
    return next(at for d in (day, day - timedelta(days=1)) if (at := schedule.occurrence(campaign, d)) <= horizon)


def fcm_settings(config: Config) -> dispatch.FcmSettings:
    from sender import dispatch  # here: firebase-admin takes a third of a second to import

    return dispatch.FcmSettings(config.fcm_emulator_host, config.fcm_project_id, config.credentials_file)


@dataclass
class _Sending:
    """What the steps of one invocation share."""

    ledger: Ledger
    run_id: int
    options: Options
    fcm: dispatch.FcmSettings
    stop: Stop
    progress: Callable[[str, int], Callable[[int], None]]
    log: Callable[[str], None]
    halt: Callable[[], Halted | None]  # asked before every batch: stop here?
    checked_fcm: bool = False
    caps: Caps | None = None


def send_campaign(
    conn: psycopg.Connection,
    lock_conn: psycopg.Connection,
    config: Config,
    campaign: Campaign,
    options: Options,
    now: datetime,
    progress: Callable[[str, int], Callable[[int], None]] = lambda step, total: lambda n: None,
    log: Callable[[str], None] = print,
    stop: Stop | None = None,
    halt: Callable[[], Halted | None] | None = None,
) -> RunResult:
    """Run (or resume) one send of `campaign`; conn and lock_conn are autocommit connections."""
    if options.mode not in MODES:
        raise UserError(f"unknown mode {options.mode!r} (modes: {', '.join(MODES)})")
    if options.run_key is not None and (
        not options.run_key.strip() or len(options.run_key) > MAX_RUN_KEY or not options.run_key.isprintable()
    ):
        raise UserError(f"--run-key must be 1 to {MAX_RUN_KEY} printable characters")
    steps = [find_step(campaign, options.step)] if options.step else list(campaign.steps)
    ledger = Ledger(conn, config.sender_schema)
    ledger.migrate()
    if not try_lock_campaign(lock_conn, campaign.name):
        raise Locked(f"another sender is already sending campaign {campaign.name}; not starting a second one")

    test = is_test(options.mode)
    plans = {step.name: _prepare(conn, campaign, step, test) for step in steps}
    _safeguards(conn, ledger, campaign, steps, options)

    run_key = options.run_key or default_run_key(campaign, options.mode, now)
    run = ledger.start_run(campaign.name, campaign.layer, options.mode, run_key, campaign.priority)
    result = RunResult(run.run_id, campaign.name, options.mode, run_key, run.status, [], [], run.status != "new")
    log(f"run {run.run_id}: {campaign.name} {options.mode} (key {run_key}){' resumed' if result.resumed else ''}")
    halt = halt or (lambda: _paused(ledger, campaign.name))
    sending = _Sending(ledger, run.run_id, options, fcm_settings(config), stop or Stop(), progress, log, halt)
    if not test:
        sending.caps = _caps(ledger, campaign, options.mode == "live", result.warnings)
        if sending.caps is None:
            log(f"WARNING: {result.warnings[-1]}")
    try:
        _send_steps(sending, campaign, steps, plans, result)
    except Interrupted as exc:
        _record_end(ledger, run.run_id, "interrupted", f"stopped by {exc}")
        raise
    except Halted as exc:
        _record_end(ledger, run.run_id, exc.status, str(exc))
        raise
    except BaseException as exc:
        _record_end(ledger, run.run_id, "failed", str(exc) or type(exc).__name__)
        raise
    return result


def _safeguards(
    conn: psycopg.Connection, ledger: Ledger, campaign: Campaign, steps: list[Step], options: Options
) -> None:
    """A paused or inactive campaign sends nothing; a live step over the maximum sends nothing (SafeguardTripped)."""
    if options.mode in ("test-live", "live"):
        paused = ledger.paused(campaign.name)
        if paused:
            raise SafeguardTripped(
                f"campaign {campaign.name} is paused (since {paused['paused_at']:%Y-%m-%d %H:%M %Z}"
                f"{': ' + paused['reason'] if paused['reason'] else ''}); `sender resume {campaign.name}` first"
            )
        if not campaign.active and not (options.rehearsal and options.mode == "test-live"):
            raise SafeguardTripped(
                f"campaign {campaign.name} is inactive (active: false): it sends nothing, test pushes included "
                "(dry runs and rehearsals still work)"
            )
    if options.mode == "live":
        for step in steps:
            size = _audience_size(conn, step)
            if size > options.max_audience and not options.allow_large:
                raise SafeguardTripped(
                    f"step {step.name} of {campaign.name} has {size:,} users, over the maximum of "
                    f"{options.max_audience:,}: nothing sent (raise --max-audience or pass --allow-large)"
                )


def _send_steps(sending: _Sending, campaign: Campaign, steps: list[Step], plans: dict, result: RunResult) -> None:
    ledger, run_id, options, log = sending.ledger, sending.run_id, sending.options, sending.log
    names = [step.name for step in steps]
    if options.resend_unknown:
        log(f"run {run_id}: {ledger.requeue(run_id, names, 'pending')} messages of unknown outcome queued again")
    if options.retry_failed:
        log(f"run {run_id}: {ledger.requeue(run_id, names, 'failed')} failed messages queued again")
    planned_before = ledger.planned_steps(run_id)
    for index, step in enumerate(steps):
        if step.name not in planned_before:
            if index and step.delay_minutes and not is_test(options.mode) and not options.skip_delays:
                log(f"run {run_id}: waiting {step.delay_minutes:g} min before step {step.name}")
                time.sleep(step.delay_minutes * 60)
            query, copy = plans[step.name]
            invalid = _plan(ledger, run_id, campaign, step, query, copy, sending.caps)
            if invalid:
                result.warnings.append(f"step {step.name}: dropped {invalid} rows whose user_id is not a valid UUID")
        _deliver(sending, step.name)
        result.steps.append(_summarise(ledger, run_id, step.name))
    # every step was complete before this invocation: nothing was sent now
    result.already_done = result.status == "succeeded" and set(names) <= planned_before
    result.status = "succeeded" if all(s.finished for s in result.steps) else "failed"
    ledger.finish_run(run_id, result.status, [_counts(s) for s in result.steps], warnings=result.warnings)


def _caps(ledger: Ledger, campaign: Campaign, reserve: bool, warnings: list[str]) -> Caps | None:
    """The cadence rules to apply; None, with a loud warning, when there are none (fail open)."""
    rules = campaign.cadence_rules
    count = ledger.cadence_rule_count(rules) if rules else None
    if count:
        return Caps(rules, campaign.layer, campaign.priority, campaign.name, reserve)
    why = "the dbt project has no cadence_rules seed" if rules is None else None
    why = why or (
        f"{'.'.join(rules)} does not exist (run `dbt seed`)"
        if count is None
        else f"{'.'.join(rules)} has no active rule"
    )
    warnings.append(f"NO FREQUENCY CAPS: {why}; sending without cadence limits")
    return None


def _paused(ledger: Ledger, campaign: str) -> Halted | None:
    paused = ledger.paused(campaign)
    if paused:
        return Halted(f"campaign {campaign} was paused{': ' + paused['reason'] if paused['reason'] else ''}; "
                      f"stopped at a batch boundary (`sender resume {campaign}`, then the same command)")  # fmt: skip
    return None


def _record_end(ledger: Ledger, run_id: int, status: str, error: str) -> None:
    """Record how the run ended, if the database still answers."""
    try:
        ledger.finish_run(run_id, status, None, error[:1000])
    except psycopg.Error:
        pass


def _counts(summary: StepSummary) -> dict:
    return {k: v for k, v in summary.__dict__.items() if isinstance(v, (int, str))}


def _prepare(conn: psycopg.Connection, campaign: Campaign, step: Step, test: bool) -> tuple[sql.Composable, Copy]:
    """The step's audience query and compiled copy; ValidationFailed on a template error."""
    columns = audiences.columns(conn, campaign, step)
    query = (
        audiences.test_query(campaign, step, columns, audiences.test_user_columns(conn, campaign))
        if test
        else audiences.production_query(step, columns)
    )
    try:
        copy = compile_copy(f"campaign {campaign.name} step {step.name}", step.title, step.body, step.data, columns)
    except TemplateError as exc:
        raise ValidationFailed(str(exc)) from None
    return query, copy


MEMO_SIZE = 50_000  # distinct renderings kept by render_chunks (a few hundred bytes each)


def render_chunks(
    conn: psycopg.Connection,
    query: sql.Composable,
    copy: Copy,
    size: int = 5000,
    inputs: tuple[str, ...] | None = None,
) -> Iterator[list[tuple[str | None, dict, Rendered]]]:
    """The audience rendered, streamed in chunks of (user_id or None if not a UUID, row, Rendered).

    `inputs`: the columns the templates read (`template_inputs`). Rows that agree on them render
    alike, so each distinct combination is rendered once (and its Rendered shared): an audience of a
    few products renders a few thousand times, not once per user.
    Must run inside a transaction (server-side cursor); the connection is free between chunks.
    """
    memo: dict[tuple, Rendered] = {}
    with conn.cursor(name=f"audience_{uuid.uuid4().hex}") as cur:
        cur.execute(query)
        names = [d.name for d in cur.description]
        while rows := cur.fetchmany(size):
            chunk = []
            for values in rows:
                row = dict(zip(names, values, strict=True))
                try:
                    user_id = str(uuid.UUID(row.get("user_id") or ""))
                except ValueError:
                    user_id = None
                if inputs is None:
                    rendered = copy.render(row)
                else:
                    key = tuple(row.get(name) for name in inputs)
                    rendered = memo.get(key)
                    if rendered is None:
                        if len(memo) >= MEMO_SIZE:
                            memo.clear()
                        rendered = memo[key] = copy.render(row)
                chunk.append((user_id, row, rendered))
            yield chunk


def template_inputs(step: Step) -> tuple[str, ...] | None:
    """The columns a step's templates read, or None when their output may differ between two rows
    that agree on those columns (a template drawing at `random`)."""
    names: set[str] = set()
    for source in (step.title, step.body, *(str(value) for value in step.data.values())):
        parsed = RENDER_ENV.parse(source)
        if any(node.name == "random" for node in parsed.find_all(jinja2.nodes.Filter)):
            return None
        names |= jinja2.meta.find_undeclared_variables(parsed)
    return tuple(sorted(names))


def _audience_size(conn: psycopg.Connection, step: Step) -> int:
    return conn.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(step.schema, step.table))).fetchone()[
        0
    ]


def _plan(
    ledger: Ledger, run_id: int, campaign: Campaign, step: Step, query: sql.Composable, copy: Copy, caps: Caps | None
) -> int:
    """Write the step's ledger rows; returns how many audience rows had a user_id that is not a UUID."""
    invalid = 0
    data: dict[int, tuple[Rendered, str]] = {}  # id(Rendered) -> (it, its data as JSON): shared renderings

    def as_json(rendered: Rendered) -> str:
        found = data.get(id(rendered))
        if found is None or found[0] is not rendered:
            if len(data) >= MEMO_SIZE:
                data.clear()
            found = data[id(rendered)] = (rendered, json.dumps(rendered.data))
        return found[1]

    def rows():
        nonlocal invalid
        for chunk in render_chunks(ledger.conn, query, copy, size=1000, inputs=template_inputs(step)):
            invalid += sum(1 for user_id, _, _ in chunk if user_id is None)
            yield [(user_id, r.title, r.body, as_json(r), r.error) for user_id, _, r in chunk if user_id is not None]

    ledger.plan_step(run_id, step.name, rows(), campaign.device_tokens, caps)
    return invalid


def _deliver(sending: _Sending, step: str) -> None:
    """Claim, send and settle batches until the step has nothing queued (or a stop is asked for)."""
    ledger, run_id, options, stop = sending.ledger, sending.run_id, sending.options, sending.stop
    queued = ledger.count_queued(run_id, step)
    if not queued:
        return
    advance = sending.progress(step, queued)
    halted = None
    if options.mode == "live-dry-run":  # no FCM call: every message is recorded as a dry run
        with stop.deferred():
            while not (stop.requested or halted) and (batch := ledger.claim(run_id, step, options.batch_size)):
                halted = sending.halt()
                ledger.settle(run_id, step, [(m.user_id, m.token, "dry_run", None, None) for m in batch])
                advance(len(batch))
        stop.check()
        if halted:
            raise halted
        return
    from sender import dispatch

    if not sending.checked_fcm:
        cause = dispatch.preflight(sending.fcm)
        if cause:
            raise Systemic(_systemic_message(sending, cause))
        sending.checked_fcm = True
    cause = died = None
    announced = False
    dry_run = options.mode == "test-dry-run"
    _shrink()  # the workers are forked from this process: each starts with its resident memory
    with (
        stop.deferred(),
        ProcessPoolExecutor(options.workers, initializer=dispatch.init_worker, initargs=(sending.fcm,)) as pool,
    ):
        in_flight: dict[Future, list] = {}
        while True:
            while not (cause or died or halted or stop.requested) and len(in_flight) < options.workers:
                halted = sending.halt()
                if halted:
                    break
                batch = ledger.claim(run_id, step, options.batch_size)
                if not batch:
                    break
                in_flight[pool.submit(dispatch.send_batch, batch, dry_run)] = batch
            if not in_flight:
                break
            done, _ = wait(in_flight, timeout=0.2, return_when=FIRST_COMPLETED)
            if stop.requested and not announced:
                announced = True
                sending.log(f"run {run_id}: stopping; settling the {len(in_flight)} batches already with FCM")
            for future in done:
                batch = in_flight.pop(future)
                try:
                    outcomes = future.result()
                except BrokenProcessPool as exc:  # the batch was with a worker that died: outcome unknown
                    died = died or str(exc) or "a sending process died"
                    continue
                settled = zip(batch, outcomes, strict=True)
                ledger.settle(run_id, step, [(m.user_id, m.token, o.status, o.message_id, o.error) for m, o in settled])
                advance(len(batch))
                cause = cause or next((o.error for o in outcomes if o.status == "queued"), None)
    stop.check()
    if halted:
        raise halted
    if died:
        raise WorkerDied(f"run {run_id}: {died}; its messages stay pending (unknown outcome)")
    if cause:
        raise Systemic(_systemic_message(sending, cause))


def _shrink() -> None:
    """Hand the memory freed by planning back to the system (collect cycles, then glibc's malloc_trim)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _systemic_message(sending: _Sending, cause: str) -> str:
    where = sending.fcm.emulator_host or "fcm.googleapis.com"
    return (
        f"FCM ({where}) refuses this sender: {cause}; run {sending.run_id} stopped, nothing lost: unsent messages "
        "stay queued, no token was marked invalid; fix the cause and run the same command again"
    )


def _summarise(ledger: Ledger, run_id: int, step: str) -> StepSummary:
    return StepSummary(
        **ledger.counts(run_id, step).__dict__,
        step=step,
        unknown_messages=ledger.unknown_messages(run_id, step),
        examples=list(ledger.examples(run_id, step)),
    )


@dataclass
class StepCheck:
    campaign: str
    step: str
    audience: str  # "live" or "test"
    rows: int = 0
    problems: list[str] = field(default_factory=list)


def validate_campaign(conn: psycopg.Connection, campaign: Campaign, max_problems: int = 5) -> list[StepCheck]:
    """Render every row of every step (live and test audiences) without sending anything."""
    checks = []
    for step in campaign.steps:
        for test in (False, True):
            check = StepCheck(campaign.name, step.name, "test" if test else "live")
            checks.append(check)
            try:
                query, copy = _prepare(conn, campaign, step, test)
            except UserError as exc:
                check.problems.append(str(exc))
                continue
            with conn.transaction():
                for user_id, row, rendered in (item for chunk in render_chunks(conn, query, copy) for item in chunk):
                    check.rows += 1
                    problem = None
                    if user_id is None:
                        problem = f"user_id {row.get('user_id')!r} is not a valid UUID"
                    elif rendered.error:
                        problem = f"user {user_id}: {rendered.error}"
                    if problem and len(check.problems) < max_problems:
                        check.problems.append(problem)
                    elif problem:
                        check.problems[-1] = f"... and more ({check.rows} rows read so far)"
    return checks
