"""When a campaign's runs happen (DELIVERY.md, "Timeline of a scheduled run"), and the scheduler lines for them.

A campaign sends daily at `send_time` (HH:MM) in its IANA `timezone`. Its run starts `lead_minutes` earlier
(build, export), sends the test pushes `cancel_window_minutes` before the send time (cancellable until then),
and may start its live phase at most `allowed_lateness_minutes` after the send time.

Daylight-saving changes, decided once here (PEP 495's fold=0, as zoneinfo reads a wall time):
- a send time the clock skips (02:30 on a spring-forward night in America/Chicago) is shifted forward by the
  gap: 03:30 CDT, the instant 02:30 CST would have been;
- a send time the clock shows twice (01:30 on a fall-back night) is the first one: 01:30 CDT (-05:00).
Times are computed on instants (UTC), never on wall clocks: the start of a 03:15 CDT send with a 30 min lead
is 01:45 CST, not the nonexistent 02:45.

A run is named by its send time: `run_key` is the local time with its offset, to the minute
(2026-11-30T13:05-06:00), so the two 01:30s of a fall-back night are two different runs.

The times returned carry the campaign's UTC offset at that instant as a fixed offset (not the ZoneInfo), so
comparing and subtracting them is by instant even across a change: Python compares and subtracts two times of
the same ZoneInfo on their wall clocks (13:05 CDT - 13:05 CST the day before would be 24 hours, not 23).
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path

from sender.campaigns import Campaign
from sender.config import DEFAULT_SENDER_SCHEMA, Config
from sender.errors import UserError

FORMATS = ("crontab", "systemd")
CLOCK = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


def _normal(moment: datetime, campaign: Campaign) -> datetime:
    """The same instant as the campaign's clock shows it, with that instant's offset (a fixed one)."""
    local = moment.astimezone(UTC).astimezone(campaign.zone)
    return local.astimezone(timezone(local.utcoffset() or timedelta(0)))


def _at(campaign: Campaign, day: date, clock: time) -> datetime:
    return _normal(datetime.combine(day, clock, tzinfo=campaign.zone), campaign)  # fold=0: see the module doc


def _clock(value: str) -> time:
    hour, minute = map(int, value.split(":"))
    return time(hour, minute)


def occurrence(campaign: Campaign, day: date) -> datetime:
    """The send time on that local day in the campaign's zone (a skipped time shifted forward, a repeated one first)."""
    return _at(campaign, day, _clock(campaign.send_time))


def _next(campaign: Campaign, clock: time, now: datetime) -> datetime:
    """The first occurrence of `clock` at or after now - allowed lateness."""
    earliest = now.astimezone(UTC) - timedelta(minutes=campaign.allowed_lateness_minutes)
    day = earliest.astimezone(campaign.zone).date()
    candidates = (_at(campaign, day + timedelta(days=offset), clock) for offset in (-1, 0, 1, 2))
    return next(moment for moment in candidates if moment >= earliest)


def next_send_at(campaign: Campaign, now: datetime) -> datetime:
    """The send time of the run to work on now: the first one at or after now - allowed lateness.

    A scheduler firing at send time - lead gets that day's send time; fired late (a catch-up after an outage)
    it still gets it while the live phase may start, then the next day's.
    """
    return _next(campaign, _clock(campaign.send_time), now)


def parse_send_at(campaign: Campaign, value: str, now: datetime) -> datetime:
    """`--send-at`: HH:MM or an ISO timestamp, as an aware time in the campaign's zone.

    HH:MM means what the schedule means: its next occurrence in the campaign's zone not more than the
    allowed lateness in the past (so `--send-at 13:05` at 13:20 is today's, at 14:00 tomorrow's). An ISO
    timestamp with an offset is that instant; without one it is read in the campaign's zone. Whole minutes only.
    """
    text = value.strip()
    if match := CLOCK.fullmatch(text):
        return _next(campaign, time(int(match[1]), int(match[2])), now)
    try:
        parsed = datetime.fromisoformat(text) if re.search(r"\d[T ]\d", text) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise UserError(
            f"--send-at {value!r} is neither HH:MM nor an ISO timestamp such as 2026-11-30T13:05-06:00 "
            f"(without an offset: in the campaign's zone, {campaign.timezone})"
        )
    if parsed.second or parsed.microsecond:
        raise UserError(f"--send-at {value!r}: send times are whole minutes (no seconds)")
    return _normal(parsed if parsed.tzinfo else parsed.replace(tzinfo=campaign.zone), campaign)


def run_key(campaign: Campaign, send_at: datetime) -> str:
    """The run's key: its send time, local with the offset, to the minute (2026-11-30T13:05-06:00)."""
    return _normal(send_at, campaign).isoformat(timespec="minutes")


def start_time(campaign: Campaign, send_at: datetime) -> datetime:
    """When the run starts (build, export): send time - lead."""
    return _normal(send_at.astimezone(UTC) - timedelta(minutes=campaign.lead_minutes), campaign)


def test_push_at(campaign: Campaign, send_at: datetime) -> datetime:
    """When the test pushes go out and the cancellation window opens: send time - window."""
    return _normal(send_at.astimezone(UTC) - timedelta(minutes=campaign.cancel_window_minutes), campaign)


def live_deadline(campaign: Campaign, send_at: datetime) -> datetime:
    """The latest a live phase may start: send time + allowed lateness (later, the run ends blocked)."""
    return _normal(send_at.astimezone(UTC) + timedelta(minutes=campaign.allowed_lateness_minutes), campaign)


# --- scheduler lines ---------------------------------------------------------------------------------------------


def _wall(campaign: Campaign, minutes: int) -> tuple[str, int]:
    """The send time moved by `minutes` on the wall clock (HH:MM), and by how many days (-1: the day before)."""
    hour, minute = map(int, campaign.send_time.split(":"))
    days, moved = divmod(hour * 60 + minute + minutes, 1440)
    return f"{moved // 60:02d}:{moved % 60:02d}", days


def _unit_name(campaign: Campaign) -> str:
    return "sender-" + re.sub(r"[^A-Za-z0-9_.-]", "-", campaign.name)


def _describe(campaign: Campaign) -> list[str]:
    start, day = _wall(campaign, -campaign.lead_minutes)
    lines = [
        f"# {campaign.name} ({campaign.path}): send {campaign.send_time} {campaign.timezone}; start {start} (lead "
        f"{campaign.lead_minutes} min); test pushes {_wall(campaign, -campaign.cancel_window_minutes)[0]}; live no "
        f"later than {_wall(campaign, campaign.allowed_lateness_minutes)[0]}"
    ]
    if day < 0:
        lines.append(
            f"# {campaign.name}: the lead time crosses midnight: the run starts at {start} the day before its send "
            f"time ({campaign.send_time}); fine for a daily job (it takes the next send time)"
        )
    return lines


def sender_command(config: Config) -> list[str]:
    """This sender's executable (absolute) and the settings it runs with that differ from the defaults.

    The scheduled run must use the same manifest, ledger and FCM as the operator who printed the schedule.
    """
    argv0 = Path(sys.argv[0])
    if argv0.name == "sender" and argv0.is_file():
        words = [str(argv0.resolve())]
    else:  # python -m sender.cli, or tests: the venv's sender next to this Python
        venv = Path(sys.executable).absolute().parent / "sender"
        words = [str(venv) if venv.is_file() else "sender"]
    if config.target_path != config.project_dir / "target":
        words += ["--target-path", str(config.target_path)]
    if config.profiles_dir and config.profiles_dir != config.project_dir:
        words += ["--profiles-dir", str(config.profiles_dir)]
    if config.sender_schema != DEFAULT_SENDER_SCHEMA:
        words += ["--sender-schema", config.sender_schema]
    for option, value in [("--fcm-emulator-host", config.fcm_emulator_host),
                          ("--firebase-project", config.firebase_project_id),
                          ("--credentials", config.credentials_file)]:  # fmt: skip
        words += [option, value] if value else []
    return words


def render(chosen: Sequence[Campaign], fmt: str, project_dir: Path, sender: Sequence[str]) -> str:
    """The crontab lines or systemd units that fire `sender run CAMPAIGN` at each active campaign's start time.

    `sender` is the command to run (the executable and its global options), in `project_dir`.
    Inactive campaigns get no line, only a comment saying so.
    """
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: use {' or '.join(FORMATS)}")
    lines = [
        f"# sender schedule ({fmt}): `sender run CAMPAIGN` at send time - lead time, in each campaign's time zone.",
        "# Firing twice is safe: a run is (campaign, send time); a second start of a running run exits locked (5),",
        "# of a finished run reports it and exits 0, of a dead run resumes it; a live phase that would start later",
        "# than the campaign's allowed lateness sends nothing. Daylight saving: a skipped send time moves forward by",
        "# the gap, a repeated one is the first (see `sender run`). The database comes from the PG* variables (or",
        "# the project's embedded server) and FCM from GOOGLE_APPLICATION_CREDENTIALS: set them for the scheduler.",
    ]
    if fmt == "crontab":
        lines += [
            "# CRON_TZ (cronie; check your cron supports it) applies to every line after it: keep these lines last.",
            "# A start time the clock skips runs right after the change, a repeated one once.",
        ]
    command = " ".join(shlex.quote(word) for word in sender)
    for campaign in sorted(chosen, key=lambda c: c.name):
        lines.append("")
        if not campaign.active:
            lines.append(f"# {campaign.name} ({campaign.path}): inactive (active: false): not scheduled")
            continue
        lines += _describe(campaign)
        start = _wall(campaign, -campaign.lead_minutes)[0]
        hour, minute = (int(part) for part in start.split(":"))
        run = f"{command} run {shlex.quote(campaign.name)}"
        if fmt == "crontab":
            lines += [
                f"CRON_TZ={campaign.timezone}",
                f"{minute} {hour} * * * cd {shlex.quote(str(project_dir))} && {run}",
            ]
            continue
        unit = _unit_name(campaign)
        description = f"sender run {campaign.name} (sends at {campaign.send_time} {campaign.timezone})"
        lines += [
            f"# --- {unit}.service",
            "[Unit]",
            f"Description={description}",
            "",
            "[Service]",
            "Type=oneshot",
            f"WorkingDirectory={project_dir}",
            "# EnvironmentFile=/etc/push-sender.env  (PG* variables, GOOGLE_APPLICATION_CREDENTIALS)",
            f"ExecStart={run}",
            "",
            f"# --- {unit}.timer",
            "[Unit]",
            f"Description={description}, daily at {start}",
            "",
            "[Timer]",
            f"OnCalendar=*-*-* {start}:00 {campaign.timezone}",
            "# Persistent=true: a start missed while the machine was off fires at boot. Safe: `sender run`'s",
            "# lateness gate blocks a live send that would start more than allowed_lateness_minutes "
            f"({campaign.allowed_lateness_minutes}) after the send time.",
            "Persistent=true",
            "",
            "[Install]",
            "WantedBy=timers.target",
        ]
    return "\n".join(lines) + "\n"
