"""The operator's commands around scheduled runs: pause / resume (the kill switch), cancel, and reading runs.

They only read and steer what `sender run` records in the ledger (DELIVERY.md, "Timeline of a scheduled
run"): a pause and a cancel request are rows the running process checks before every batch and phase.
A run is alive while some process holds its campaign's advisory lock; `cancel` takes that lock itself
before marking a run whose process is gone `cancelled`, so it never races the run's own process.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import psycopg
from rich.table import Table

from sender.campaigns import Campaign
from sender.database import relation_exists
from sender.errors import UserError
from sender.ledger import Ledger, try_lock_campaign, unlock_campaign

UNFINISHED = ("running", "interrupted")
BEFORE_LIVE = ("starting", "build", "export", "test", "window")
COUNTS = ("audience", "sent", "failed", "cadence_skipped", "no_token", "invalid_tokens", "render_errors", "unknown",
          "queued")  # fmt: skip
MAX_REASON = 500


def _when(ts: datetime | None, zone: ZoneInfo) -> str:
    return ts.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z") if ts else "-"


def _short(ts: datetime | None, zone: ZoneInfo) -> str:
    return ts.astimezone(zone).strftime("%m-%d %H:%M:%S") if ts else "-"


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _has_runs(ledger: Ledger) -> bool:
    return relation_exists(ledger.conn, ledger.schema, "scheduled_runs")


# --- the kill switch ----------------------------------------------------------------------------------------


def pause(conn: psycopg.Connection, schema: str, campaign: Campaign, reason: str | None) -> str:
    if reason is not None and (len(reason) > MAX_REASON or not reason.isprintable()):
        raise UserError(f"--reason must be at most {MAX_REASON} printable characters")
    ledger = Ledger(conn, schema)
    ledger.migrate()
    before = ledger.paused(campaign.name)
    if before:
        message = f"campaign {campaign.name} was already paused since {_when(before['paused_at'], campaign.zone)}"
        if reason:  # a new reason replaces the old one; without one, nothing changes
            ledger.pause(campaign.name, reason)
            message += f"; still paused, reason now: {reason}"
        else:
            message += f"; still paused (reason: {before['reason']})" if before["reason"] else "; still paused"
    else:
        ledger.pause(campaign.name, reason or None)
        now = ledger.paused(campaign.name)["paused_at"]
        message = f"campaign {campaign.name} paused since {_when(now, campaign.zone)}"
        message += f" (reason: {reason})" if reason else ""
    message += f": no run starts, a running run stops before its next batch; `sender resume {campaign.name}` ends it"
    run = ledger.find_scheduled_run(campaign=campaign.name)
    if run:
        send_at = _when(run["send_at"], campaign.zone)
        message += f"\nrun {run['id']} (send at {send_at}, phase {run['phase']}) is unfinished: it sends nothing more"
        message += " while the campaign is paused"
    return message


def resume(conn: psycopg.Connection, schema: str, campaign: Campaign) -> str:
    ledger = Ledger(conn, schema)
    ledger.migrate()
    before = ledger.paused(campaign.name) or {"paused_at": None, "reason": None}
    if not ledger.resume(campaign.name):
        return f"campaign {campaign.name} was not paused: nothing changed"
    why = f", reason: {before['reason']}" if before["reason"] else ""
    return (
        f"campaign {campaign.name} resumed (was paused since {_when(before['paused_at'], campaign.zone)}{why}): "
        "its scheduled runs start again"
    )


# --- cancel -------------------------------------------------------------------------------------------------


def cancel(conn: psycopg.Connection, schema: str, target: str, find_campaign, zones: dict[str, ZoneInfo]) -> str:
    """Cancel scheduled run `target` (an id), or a campaign's latest unfinished one (`find_campaign(name)`)."""
    ledger = Ledger(conn, schema)
    if target.isdigit():
        run = ledger.find_scheduled_run(run_id=int(target)) if _has_runs(ledger) else None
        if run is None:
            raise UserError(f"no scheduled run {target} in the ledger {schema}")
    else:
        name = find_campaign(target).name
        run = ledger.find_scheduled_run(campaign=name) if _has_runs(ledger) else None
        if run is None:
            raise UserError(f"nothing to cancel: campaign {name} has no running or interrupted scheduled run")
    zone = zones.get(run["campaign"], UTC)
    what = f"{'rehearsal' if run['rehearsal'] else 'run'} {run['id']} ({run['campaign']}, send at "
    what += f"{_when(run['send_at'], zone)})"
    if run["status"] not in UNFINISHED:
        reason = f": {run['reason']}" if run["reason"] else ""
        return f"{what} already finished {run['status']}{reason}; nothing to cancel"

    earlier = run["cancel_requested_at"]
    run = ledger.request_cancel(run["id"])
    if try_lock_campaign(conn, run["campaign"]):  # no process runs the campaign: nobody else will end this run
        try:
            run = ledger.find_scheduled_run(run_id=run["id"])
            if run["status"] not in UNFINISHED:  # its process finished it just before we took the lock
                return f"{what} finished {run['status']} meanwhile; nothing to cancel"
            ledger.finish_scheduled_run(
                run["id"], "cancelled", f"cancelled by `sender cancel` in phase {run['phase']}, its process gone"
            )
        finally:
            unlock_campaign(conn, run["campaign"])
        beat = f"last heartbeat {_when(run['heartbeat_at'], zone)}, " if run["heartbeat_at"] else ""
        return (
            f"{what} has no process left ({beat}phase {run['phase']}): marked cancelled now, a restart will not "
            "resume it" + ("; `sender runs` shows what its live phase sent" if run["phase"] not in BEFORE_LIVE else "")
        )
    again = f" (first requested {_when(earlier, zone)})" if earlier else ""
    if run["phase"] in BEFORE_LIVE:
        effect = f"nothing live will be sent: it ends cancelled at its next check (phase {run['phase']})"
    elif run["phase"] == "live":
        effect = "the live send stops at the next batch boundary; `sender runs` shows what went out"
    else:
        effect = f"its live send is already over (phase {run['phase']}): nothing more will be sent anyway"
    return f"cancel requested for {what}{again}: {effect}"


# --- reading runs -------------------------------------------------------------------------------------------


def _phase_counts(ledger: Ledger, send_run_id: int | None) -> dict | None:
    """A send run's totals, from its summary when finished, else counted in the ledger so far."""
    if send_run_id is None:
        return None
    send_run = ledger.find_run(send_run_id)
    steps = send_run["summary"]
    if steps is None:
        steps = [{"step": step, **ledger.counts(send_run_id, step).__dict__} for step in
                 sorted(ledger.planned_steps(send_run_id))]  # fmt: skip
    totals = {key: sum(int(step.get(key) or 0) for step in steps) for key in COUNTS}
    return {"run_id": send_run_id, "mode": send_run["mode"], "status": send_run["status"], "counts": totals,
            "steps": steps}  # fmt: skip


def runs(conn: psycopg.Connection, schema: str, campaign: str | None, last: int, zones: dict[str, ZoneInfo]) -> dict:
    """The latest scheduled runs, newest first, as one JSON-ready document."""
    ledger = Ledger(conn, schema)
    now = conn.execute("select now()").fetchone()[0]
    found = ledger.scheduled_runs(campaign, last) if _has_runs(ledger) else []
    result = []
    for run in found:
        zone = zones.get(run["campaign"], UTC)
        running = run["shown_status"] == "running"
        result.append(
            {
                "id": run["id"],
                "campaign": run["campaign"],
                "send_at": run["send_at"].astimezone(zone).isoformat(),
                "timezone": str(zone),
                "rehearsal": run["rehearsal"],
                "phase": run["phase"],
                "status": run["shown_status"],
                "recorded_status": run["status"],
                "reason": run["reason"],
                "cancel_requested_at": run["cancel_requested_at"],
                "test": _phase_counts(ledger, run["test_run_id"]),
                "live": _phase_counts(ledger, run["live_run_id"]),
                "started_at": run["started_at"],
                "finished_at": run["finished_at"],
                "heartbeat_at": run["heartbeat_at"],
                "heartbeat_age_seconds": (now - run["heartbeat_at"]).total_seconds()
                if running and run["heartbeat_at"]
                else None,
                "host": run["host"],
                "pid": run["pid"],
                "phases": run["phases"],
            }
        )
    return {"schema": schema, "now": now, "runs": result}


def zones(declared) -> dict[str, ZoneInfo]:
    """Campaign name -> its time zone, from `declared()` (the campaigns); {} (times in UTC) when they cannot be
    loaded, so that reading and cancelling runs never depend on the dbt project parsing."""
    try:
        return {campaign.name: campaign.zone for campaign in declared().values()}
    except UserError:
        return {}


def to_json(document: dict) -> str:
    return json.dumps(document, default=lambda value: value.isoformat() if isinstance(value, datetime) else str(value))


def _counts_cell(phase: dict | None) -> str:
    if phase is None:
        return "-"
    counts = phase["counts"]
    cell = [f"sent {counts['sent']:,}"]
    labels = {"failed": "failed", "cadence_skipped": "cadence-skipped", "no_token": "no token",
              "invalid_tokens": "invalid", "render_errors": "not rendered", "unknown": "unknown",
              "queued": "queued"}  # fmt: skip
    cell += [f"{label} {counts[key]:,}" for key, label in labels.items() if counts[key]]
    return ", ".join(cell) + ("" if phase["status"] == "succeeded" else f" ({phase['status']})")


def runs_table(document: dict, zones: dict[str, ZoneInfo]) -> Table:
    """Times in each campaign's zone: the send time in full, the others as month-day time."""
    table = Table(title=f"scheduled runs (ledger {document['schema']}), newest first")
    for column in ("id", "campaign", "send at", "phase", "status", "test", "live", "started", "finished", "reason"):
        table.add_column(column, justify="right" if column == "id" else "left", no_wrap=column in ("id", "campaign"))
    for run in document["runs"]:
        zone = zones.get(run["campaign"], UTC)
        end = _short(run["finished_at"], zone)
        if run["heartbeat_age_seconds"] is not None:
            end = f"beat {_ago(run['heartbeat_age_seconds'])} ago"
        reason = run["reason"] or ""
        if run["cancel_requested_at"] and run["status"] in UNFINISHED:
            reason = f"cancel requested {_short(run['cancel_requested_at'], zone)}" + (f"; {reason}" if reason else "")
        send_at = datetime.fromisoformat(run["send_at"]).astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")
        table.add_row(
            str(run["id"]), run["campaign"] + ("\n(rehearsal)" if run["rehearsal"] else ""), send_at, run["phase"],
            run["status"], _counts_cell(run["test"]), _counts_cell(run["live"]), _short(run["started_at"], zone), end,
            reason,
        )  # fmt: skip
    return table
