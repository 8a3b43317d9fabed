"""The schedule (DELIVERY.md, "Timeline of a scheduled run"): send times across daylight-saving changes with
pinned clocks, run keys, `sender schedule` through the real CLI, and the schedule fields' validation.
"""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from sender import campaigns, schedule
from sender.campaigns import Campaign
from sender.config import Config, resolve
from sender.errors import ExitCode, UserError
from tests.conftest import BIN, PROJECT_DIR, TARGET_PATH, run_cli
from tests.test_campaigns import LAYER3, WHERE, copy_project, edit, load_error

CHICAGO = Campaign(
    name="chicago", exposure="chicago", aliases=(), layer=3, active=True, send_time="13:05",
    timezone="America/Chicago", lead_minutes=30, file_name="{prefix}_{ts}.csv", test_file_name="{prefix}_T_{ts}.csv",
    write_empty_files=True, steps=(), test_users=("s", "test_users"), device_tokens=("s", "tokens"),
    path="models/chicago.yml",
)  # fmt: skip


def at(text: str) -> datetime:
    """A pinned clock: an ISO time with its offset."""
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is not None
    return moment


def campaign(send_time: str = "13:05", timezone: str = "America/Chicago", **changes) -> Campaign:
    return dataclasses.replace(CHICAGO, send_time=send_time, timezone=timezone, **changes)


# --- daylight saving in America/Chicago: 2026-03-08 02:00 CST -> 03:00 CDT, 2026-11-01 02:00 CDT -> 01:00 CST ---


def test_a_normal_send_time_keeps_its_wall_time_across_both_changes() -> None:
    daily = campaign("13:05")
    keys = [schedule.run_key(daily, schedule.occurrence(daily, date(2026, month, day)))
            for month, day in [(3, 7), (3, 8), (10, 31), (11, 1)]]  # fmt: skip
    assert keys == ["2026-03-07T13:05-06:00", "2026-03-08T13:05-05:00", "2026-10-31T13:05-05:00",
                    "2026-11-01T13:05-06:00"]  # fmt: skip
    before, after = (schedule.occurrence(daily, date(2026, 3, day)) for day in (7, 8))
    assert after - before == timedelta(hours=23)  # the short day
    before, after = (schedule.occurrence(daily, date(2026, month, day)) for month, day in [(10, 31), (11, 1)])
    assert after - before == timedelta(hours=25)  # the long day
    # pinned clocks: the scheduler fires at 12:35 local on both sides of each change
    for start, send_at in [("2026-03-07T12:35-06:00", "2026-03-07T13:05-06:00"),
                           ("2026-03-08T12:35-05:00", "2026-03-08T13:05-05:00"),
                           ("2026-11-01T12:35-06:00", "2026-11-01T13:05-06:00")]:  # fmt: skip
        found = schedule.next_send_at(daily, at(start))
        assert found == at(send_at) and found.utcoffset() == at(send_at).utcoffset()
        assert schedule.start_time(daily, found).isoformat() == datetime.fromisoformat(start).isoformat()


def test_a_send_time_the_spring_forward_skips_moves_forward_by_the_gap() -> None:
    skipped = campaign("02:30")
    days = [schedule.occurrence(skipped, date(2026, 3, day)) for day in (7, 8, 9)]
    assert [schedule.run_key(skipped, d) for d in days] == [
        "2026-03-07T02:30-06:00", "2026-03-08T03:30-05:00", "2026-03-09T02:30-05:00",
    ]  # fmt: skip
    assert days[1] == at("2026-03-08T08:30+00:00")  # the instant 02:30 CST would have been
    # pinned clocks around it: fired at 01:00 CST, 29 and 31 minutes after 03:30 CDT
    assert schedule.next_send_at(skipped, at("2026-03-08T01:00-06:00")) == days[1]
    assert schedule.next_send_at(skipped, at("2026-03-08T03:59-05:00")) == days[1]
    assert schedule.next_send_at(skipped, at("2026-03-08T04:01-05:00")) == days[2]
    # times are computed on instants: 30 min before 03:30 CDT is 03:00 CDT; before 03:15 CDT, 01:45 CST
    assert schedule.start_time(skipped, days[1]).isoformat() == "2026-03-08T03:00:00-05:00"
    quarter = campaign("03:15")
    assert schedule.start_time(quarter, schedule.occurrence(quarter, date(2026, 3, 8))).isoformat() == (
        "2026-03-08T01:45:00-06:00"
    )


def test_a_send_time_the_fall_back_repeats_is_the_first_one() -> None:
    repeated = campaign("01:30")
    first = schedule.occurrence(repeated, date(2026, 11, 1))
    assert schedule.run_key(repeated, first) == "2026-11-01T01:30-05:00"
    assert first == at("2026-11-01T06:30+00:00")
    assert schedule.start_time(repeated, first).isoformat() == "2026-11-01T01:00:00-05:00"
    # fired at the first 01:15, and 15 minutes late: the first 01:30
    assert schedule.next_send_at(repeated, at("2026-11-01T01:15-05:00")) == first
    assert schedule.next_send_at(repeated, at("2026-11-01T01:45-05:00")) == first
    # at the second 01:10 (CST), the first 01:30 is 40 min past its lateness: the next day's, never a second run
    assert schedule.run_key(repeated, schedule.next_send_at(repeated, at("2026-11-01T01:10-06:00"))) == (
        "2026-11-02T01:30-06:00"
    )
    # an hour's lead from 02:00 CST starts at the second 01:00 (wall-clock arithmetic would give the first)
    two = campaign("02:00", lead_minutes=60)
    assert schedule.start_time(two, schedule.occurrence(two, date(2026, 11, 1))).isoformat() == (
        "2026-11-01T01:00:00-06:00"
    )


def test_the_two_01_30_of_the_fall_back_night_are_different_run_keys() -> None:
    repeated = campaign("01:30")
    first, second = at("2026-11-01T06:30+00:00"), at("2026-11-01T07:30+00:00")
    assert schedule.run_key(repeated, first) != schedule.run_key(repeated, second) == "2026-11-01T01:30-06:00"


# --- lead time, lateness, zones --------------------------------------------------------------------------------


def test_a_lead_time_crossing_midnight_starts_the_day_before() -> None:
    late = campaign("00:10", lead_minutes=30)
    send_at = schedule.occurrence(late, date(2026, 11, 30))
    assert schedule.start_time(late, send_at).isoformat() == "2026-11-29T23:40:00-06:00"
    # fired at 23:40: the send time is the next day's 00:10, not the one 23.5 hours ago
    assert schedule.next_send_at(late, at("2026-11-29T23:40-06:00")) == send_at
    assert schedule.run_key(late, send_at) == "2026-11-30T00:10-06:00"


def test_the_next_send_time_is_the_first_not_past_the_allowed_lateness() -> None:
    daily = campaign("13:05", allowed_lateness_minutes=10)
    today, tomorrow = at("2026-11-30T13:05-06:00"), at("2026-12-01T13:05-06:00")
    assert schedule.next_send_at(daily, at("2026-11-30T00:00-06:00")) == today
    assert schedule.next_send_at(daily, at("2026-11-30T13:15-06:00")) == today  # exactly at the lateness
    assert schedule.next_send_at(daily, at("2026-11-30T13:16-06:00")) == tomorrow
    assert schedule.next_send_at(daily, at("2026-11-30T19:10+00:00")) == today  # any zone for now
    assert schedule.test_push_at(daily, today).isoformat() == "2026-11-30T12:40:00-06:00"
    assert schedule.live_deadline(daily, today).isoformat() == "2026-11-30T13:15:00-06:00"


@pytest.mark.parametrize(
    ("timezone", "day", "key", "start"),
    [
        ("America/Chicago", date(2026, 11, 30), "2026-11-30T13:05-06:00", "2026-11-30T12:20:00-06:00"),
        ("Europe/Berlin", date(2026, 11, 30), "2026-11-30T13:05+01:00", "2026-11-30T12:20:00+01:00"),
        ("Europe/Berlin", date(2026, 3, 29), "2026-03-29T13:05+02:00", "2026-03-29T12:20:00+02:00"),
        ("Europe/Berlin", date(2026, 10, 25), "2026-10-25T13:05+01:00", "2026-10-25T12:20:00+01:00"),
        ("Asia/Kolkata", date(2026, 11, 30), "2026-11-30T13:05+05:30", "2026-11-30T12:20:00+05:30"),
        ("UTC", date(2026, 11, 30), "2026-11-30T13:05+00:00", "2026-11-30T12:20:00+00:00"),
    ],
)
def test_send_times_in_several_zones(timezone: str, day: date, key: str, start: str) -> None:
    zoned = campaign("13:05", timezone, lead_minutes=45)
    send_at = schedule.occurrence(zoned, day)
    assert schedule.run_key(zoned, send_at) == key
    assert schedule.start_time(zoned, send_at).isoformat() == start
    # the scheduler fires at the start, as seen from UTC: the same send time
    assert schedule.next_send_at(zoned, at(start).astimezone(UTC)) == send_at
    assert schedule.run_key(zoned, send_at.astimezone(UTC)) == key  # the key does not depend on the zone given


# --- --send-at -----------------------------------------------------------------------------------------------


def test_send_at_hh_mm_is_the_next_occurrence_not_past_the_lateness() -> None:
    daily = campaign("13:05")
    assert schedule.parse_send_at(daily, "13:05", at("2026-11-30T13:20-06:00")) == at("2026-11-30T13:05-06:00")
    assert schedule.parse_send_at(daily, "13:05", at("2026-11-30T13:40-06:00")) == at("2026-12-01T13:05-06:00")
    assert schedule.parse_send_at(daily, "09:00", at("2026-11-30T13:40-06:00")) == at("2026-12-01T09:00-06:00")
    assert schedule.parse_send_at(daily, "02:30", at("2026-03-08T00:00-06:00")) == at("2026-03-08T03:30-05:00")


def test_send_at_iso_with_an_offset_is_that_instant_without_one_the_campaigns_zone() -> None:
    daily = campaign("13:05")
    now = at("2026-11-30T12:00-06:00")
    for value in ("2026-11-30T19:05+00:00", "2026-11-30T13:05", "2026-11-30 13:05:00", "2026-11-30T13:05-06:00"):
        assert schedule.run_key(daily, schedule.parse_send_at(daily, value, now)) == "2026-11-30T13:05-06:00", value
    assert schedule.run_key(daily, schedule.parse_send_at(daily, "2026-03-08T02:30", now)) == "2026-03-08T03:30-05:00"
    assert schedule.run_key(daily, schedule.parse_send_at(daily, "2026-11-01T01:30", now)) == "2026-11-01T01:30-05:00"


@pytest.mark.parametrize(
    "value", ["25:00", "1305", "13:5", "tomorrow", "2026-11-30", "2026-11-30T13:05:30", "2026-13-01T13:05", ""]
)
def test_a_bad_send_at_is_a_one_line_user_error(value: str) -> None:
    with pytest.raises(UserError) as caught:
        schedule.parse_send_at(campaign(), value, at("2026-11-30T12:00-06:00"))
    assert caught.value.exit_code == ExitCode.BAD_INPUT
    assert "\n" not in str(caught.value) and repr(value) in str(caught.value)


# --- rendering ---------------------------------------------------------------------------------------------------


def test_crontab_for_several_zones_and_leads_and_none_for_inactive_campaigns() -> None:
    chosen = [
        campaign("13:05", name="chicago"),
        campaign("08:00", "Europe/Berlin", name="berlin", lead_minutes=90),
        campaign("09:15", "Asia/Kolkata", name="kolkata"),
        campaign("00:10", "UTC", name="midnight"),
        campaign("13:05", name="switched-off", active=False),
    ]
    text = schedule.render(chosen, "crontab", Path("/srv/my project"), ["/opt/venv/bin/sender"])
    jobs = [line for line in text.splitlines() if line and not line.startswith("#")]
    run = "cd '/srv/my project' && /opt/venv/bin/sender run"
    assert jobs == [
        "CRON_TZ=Europe/Berlin", f"30 6 * * * {run} berlin",
        "CRON_TZ=America/Chicago", f"35 12 * * * {run} chicago",
        "CRON_TZ=Asia/Kolkata", f"45 8 * * * {run} kolkata",
        "CRON_TZ=UTC", f"40 23 * * * {run} midnight",
    ]  # fmt: skip
    assert "# midnight: the lead time crosses midnight: the run starts at 23:40 the day before" in text
    assert "# switched-off (models/chicago.yml): inactive (active: false): not scheduled" in text
    assert "crosses midnight" not in text.replace("# midnight: the lead time crosses midnight", "")


def test_systemd_units_for_active_campaigns_only() -> None:
    chosen = [campaign("00:10", "Asia/Kolkata", name="a"), dataclasses.replace(CHICAGO, name="b", active=False)]
    text = schedule.render(chosen, "systemd", Path("/srv/p"), ["/opt/bin/sender", "--sender-schema", "x y"])
    assert text.count("[Service]") == 1 and text.count("[Timer]") == 1
    assert "OnCalendar=*-*-* 23:40:00 Asia/Kolkata" in text
    assert "ExecStart=/opt/bin/sender --sender-schema 'x y' run a\n" in text and "run b" not in text
    assert "Persistent=true" in text and "lateness gate" in text
    assert "# b (models/chicago.yml): inactive (active: false): not scheduled" in text


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(UserError, match="--format 'cron': use crontab or systemd"):
        schedule.render([CHICAGO], "cron", Path("/srv/p"), ["sender"])


# --- the real CLI ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def declared(env: dict[str, str]) -> dict[str, Campaign]:
    return campaigns.load_campaigns(resolve(PROJECT_DIR, TARGET_PATH, profiles_dir=PROJECT_DIR))


def test_sender_schedule_crontab_runs_the_project_campaigns(env: dict[str, str], declared: dict) -> None:
    result = run_cli(env, "sender", "schedule", check=True)
    sender = [str((BIN / "sender").resolve()), "--target-path", str(TARGET_PATH)]
    expected = []
    for name, found in sorted(declared.items()):
        hour, minute = divmod(int(found.send_time[:2]) * 60 + int(found.send_time[3:]) - found.lead_minutes, 60)
        command = shlex.join([*sender, "run", name])
        expected += [f"CRON_TZ={found.timezone}", f"{minute} {hour % 24} * * * cd {shlex.quote(str(PROJECT_DIR))} && "
                     f"{command}"]  # fmt: skip
    assert [line for line in result.stdout.splitlines() if line and not line.startswith("#")] == expected
    assert len(expected) == 2 * sum(c.active for c in declared.values()) > 0
    # the printed command works as cron would run it (here with `schedule` instead of `run`)
    line = expected[1].split(" * * * ", 1)[1].replace(" run layer", " schedule --campaign layer")
    again = subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "CRON_TZ=" in again.stdout, again.stderr


def test_sender_schedule_systemd_for_one_campaign(env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli(env, "sender", "schedule", "--format", "systemd", "--campaign", "generate_layer_3_push_csvs")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.count("[Service]") == 1 and text.count("[Timer]") == 1, text
    assert "OnCalendar=*-*-* 12:35:00 America/Chicago\n" in text and "Persistent=true\n" in text
    assert f"WorkingDirectory={PROJECT_DIR}\n" in text and "Type=oneshot\n" in text
    assert text.rstrip().endswith("WantedBy=timers.target")
    assert f"ExecStart={(BIN / 'sender').resolve()} --target-path {TARGET_PATH} run layer3-behavior\n" in text
    if not shutil.which("systemd-analyze"):
        return
    units, name = {}, None
    for line in text.splitlines():
        if line.startswith("# --- "):
            name = line.removeprefix("# --- ")
            units[name] = []
        elif name:
            units[name].append(line)
    assert sorted(units) == ["sender-layer3-behavior.service", "sender-layer3-behavior.timer"]
    for unit, lines in units.items():
        (tmp_path / unit).write_text("\n".join(lines) + "\n")
    checked = subprocess.run(
        ["systemd-analyze", "verify", *map(str, tmp_path.iterdir())], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr


def test_sender_schedule_bad_format_is_one_line(env: dict[str, str]) -> None:
    result = run_cli(env, "sender", "schedule", "--format", "cron")
    assert result.returncode == ExitCode.BAD_INPUT
    assert result.stderr.strip().splitlines() == ["error: --format 'cron': use crontab or systemd"]


# --- the schedule fields in the declaration --------------------------------------------------------------------


@pytest.fixture(scope="module")
def parsed_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("schedule") / "project"
    copy_project(PROJECT_DIR, path)
    campaigns.load_campaigns(resolve(path))
    return path


@pytest.fixture
def config(parsed_project: Path, tmp_path: Path) -> Config:
    path = tmp_path / "project"
    shutil.copytree(parsed_project, path)
    return resolve(path)


def test_the_schedule_fields_are_read_with_their_defaults(config: Config) -> None:
    found = campaigns.find_campaign(config, "layer3-behavior")
    assert (found.lead_minutes, found.cancel_window_minutes, found.allowed_lateness_minutes,
            found.test_file_retention_days) == (30, 25, 30, 7)  # fmt: skip
    assert all(step.delay_minutes == 0 for step in found.steps)
    edit(config, LAYER3, "        cancel_window_minutes: 25\n", "        cancel_window_minutes: 10\n")
    edit(config, LAYER3, "        test_file_retention_days: 7\n", "")
    edit(config, LAYER3, "        allowed_lateness_minutes: 30\n", "        allowed_lateness_minutes: 0\n")
    found = campaigns.find_campaign(config, "layer3-behavior")
    assert (found.cancel_window_minutes, found.allowed_lateness_minutes, found.test_file_retention_days) == (10, 0, 7)


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("        cancel_window_minutes: 25\n", "        cancel_window_minutes: 45\n",
         "cancel_window_minutes: must be at most lead_minutes (30), not 45: the test pushes (send time - window) "
         "cannot go out before the run starts (send time - lead)"),
        ("        cancel_window_minutes: 25\n", "        cancel_window_minutes: 2.5\n",
         "cancel_window_minutes: must be a whole number of minutes >= 0, not 2.5"),
        ("        cancel_window_minutes: 25\n", "        cancel_window_minutes: -1\n",
         "cancel_window_minutes: must be a whole number of minutes >= 0, not -1"),
        ("        test_file_retention_days: 7\n", '        test_file_retention_days: "7"\n',
         "test_file_retention_days: must be a whole number of days >= 0, not the string '7'"),
        ("        allowed_lateness_minutes: 30\n", "        allowed_lateness_minutes: 700\n",
         "lead_minutes: lead_minutes + allowed_lateness_minutes must be at most 720 (12 hours), not 730: a run "
         "started at send time - lead would take the previous day's send time"),
        ("        cancel_window_minutes: 25\n", "        cancel_window: 25\n",
         "cancel_window: unknown field (known: active, aliases, allowed_lateness_minutes, campaign, "
         "cancel_window_minutes, file_name, layer, lead_minutes, priority, send_time, steps, test_file_name, "
         "test_file_retention_days, test_placeholders, timezone, write_empty_files)"),
    ],
    ids=["window-over-lead", "window-fraction", "window-negative", "retention-string", "lead-and-lateness",
         "unknown-field"],
)  # fmt: skip
def test_a_bad_schedule_field_is_one_line(config: Config, old: str, new: str, problem: str) -> None:
    edit(config, LAYER3, old, new)
    assert load_error(config) == WHERE + problem


def test_a_window_equal_to_the_lead_is_allowed(config: Config) -> None:
    edit(config, LAYER3, "        cancel_window_minutes: 25\n", "        cancel_window_minutes: 30\n")
    assert campaigns.find_campaign(config, "layer3-behavior").cancel_window_minutes == 30
