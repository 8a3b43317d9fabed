"""DELIVERY.md, "Timeline of a scheduled run": `sender run` through the real CLI, against a real
PostgreSQL, firebase-admin and the FCM emulator, with short windows; kills, cancels and pauses.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from sender import runs
from sender.ledger import Ledger
from tests.conftest import AS_OF, BIN, PROJECT_DIR, SOURCE_SCHEMA, run_cli
from tests.sending import ALL_TEST_TOKENS, L3, assert_ok, audience, one_step, tokens_of

FRESH = f'{{source_schema: {SOURCE_SCHEMA}, as_of: "{AS_OF}", source_max_age_hours: 1000000}}'
L3_STEPS = ("offer-creators", "closet-adders", "wishlist-adders")


class Timeline:
    """Send times are whole minutes: a run `seconds` before one is started with a pinned clock (--now)."""

    def __init__(self, seconds: float) -> None:
        self.real_start = time.time()
        now = datetime.fromtimestamp(self.real_start, UTC)
        self.send_at = (now + timedelta(minutes=2)).replace(second=0, microsecond=0)
        self.offset = self.send_at - timedelta(seconds=seconds) - now  # pretended minus real time
        self.real_send = self.real_start + seconds  # the send time, on the real clock (or a bit later)

    def args(self) -> list[str]:
        return ["--send-at", self.send_at.isoformat(), *self.now()]

    def now(self) -> list[str]:
        return ["--now", (datetime.now(UTC) + self.offset).isoformat()]


def at(seconds: float) -> list[str]:
    return Timeline(seconds).args()


def live_tokens(db) -> set[str]:
    return {t for step in L3_STEPS for ts in tokens_of(db, [r["user_id"] for r in audience(db, step)]).values()
            for t in ts}  # fmt: skip


class Runner:
    def __init__(self, sender, out):
        self.sender, self.out = sender, out

    def args(self, *extra: str) -> list[str]:
        return ["run", L3, "--no-build", "--dbt-vars", FRESH, "--out", str(self.out), "--batch-size", "10", *extra]

    def run(self, *extra: str, **env: str) -> subprocess.CompletedProcess:
        return run_cli({**self.sender.env, **env}, "sender", *self.args(*extra))

    def start(self, *extra: str) -> subprocess.Popen:
        return subprocess.Popen([str(BIN / "sender"), *self.args(*extra)], env=self.sender.env, cwd=PROJECT_DIR,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)  # fmt: skip

    def row(self) -> dict | None:
        rows = self.sender.query("select * from {scheduled_runs} order by id desc limit 1")
        return rows[0] if rows else None

    def wait_for(self, ready, proc: subprocess.Popen | None = None, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"the run ended first ({proc.returncode}):\n{proc.communicate()}")
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.02)

    def in_phase(self, phase: str):
        return lambda: (self.row() or {}).get("phase") == phase

    def messages(self) -> tuple[list[dict], list[dict]]:
        """(test pushes, live pushes) the emulator delivered."""
        delivered = self.sender.emulator.delivered()
        return [m for m in delivered if m["token"] in ALL_TEST_TOKENS], [
            m for m in delivered if m["token"] not in ALL_TEST_TOKENS
        ]


@pytest.fixture
def runner(sender, tmp_path):
    return Runner(sender, tmp_path / "exports")


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.3)  # the killed session's advisory lock is released a moment later


# --- the timeline ---------------------------------------------------------------------------------------


def test_a_scheduled_run_end_to_end(runner, db):
    runner.out.mkdir()
    old, recent = runner.out / "recent-offer-creators_TEST_20200101T000000.csv", runner.out / "keep_TEST.csv"
    old.write_text("old")
    os.utime(old, (time.time() - 8 * 86400,) * 2)  # older than the 7-day retention
    recent.write_text("other")
    timeline = Timeline(6)
    result = runner.run(*timeline.args(), "--json")
    assert_ok(result)
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "succeeded"
    assert datetime.fromisoformat(outcome["send_at"]) == timeline.send_at
    phases = [(p["phase"], p["outcome"]) for p in outcome["phases"] if p["outcome"] != "started"]
    assert phases == [("freshness", "done"), ("export", "done"), ("test", "done"), ("window", "done"),
                      ("live", "done"), ("cleanup", "done")]  # fmt: skip
    test, live = runner.messages()
    assert Counter(m["token"] for m in test) == dict.fromkeys(ALL_TEST_TOKENS, 3), "one test push per token and step"
    assert Counter(m["token"] for m in live) == dict.fromkeys(live_tokens(db), 1)
    assert max(m["time"] for m in test) < min(m["time"] for m in live)
    assert min(m["time"] for m in live) >= timeline.real_send, "a live push went out before the send time"
    assert sum(s["sent"] for s in outcome["live"]["steps"]) == len(live)
    assert not old.exists() and recent.exists(), "test files older than the retention are removed, others kept"
    assert len(list(runner.out.glob("*_TEST_*.csv"))) == 3 and len(outcome["files"]) == 6

    again = runner.run(*timeline.args())  # the scheduler fires again: it reports, sends nothing
    assert_ok(again)
    assert "already finished" in again.stderr
    assert len(runner.sender.emulator.delivered()) == len(test) + len(live)


def test_fired_twice_at_once_only_one_runs(runner, db):
    args = at(5)
    procs = [runner.start(*args) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 5], outputs
    test, live = runner.messages()
    assert max(Counter(m["token"] for m in test + live).values()) == 3  # the test tokens, once per step
    assert Counter(m["token"] for m in live) == dict.fromkeys(live_tokens(db), 1)


def test_rehearsal_uses_test_users_in_both_phases_and_is_never_counted(runner):
    result = runner.run("--rehearse")
    assert_ok(result)
    test, live = runner.messages()
    assert live == [] and Counter(m["token"] for m in test) == dict.fromkeys(ALL_TEST_TOKENS, 6)
    assert runner.row()["rehearsal"] and runner.row()["status"] == "succeeded"
    assert runner.sender.query("select * from {notifications}") == [], "a rehearsal is never counted by caps"


# --- gates ----------------------------------------------------------------------------------------------


def test_stale_sources_block_the_run_before_the_test_phase(runner):
    result = runner.run(*at(5), "--dbt-vars", f"{{source_schema: {SOURCE_SCHEMA}}}")
    assert_ok(result, 4)
    assert "stale" in result.stderr
    assert runner.row()["status"] == "blocked" and runner.sender.emulator.messages() == []


def test_a_test_phase_that_reaches_nobody_blocks_the_live_phase(runner):
    runner.sender.emulator.configure({"tokens": dict.fromkeys(ALL_TEST_TOKENS, "UNREGISTERED")})
    result = runner.run(*at(3))
    assert_ok(result, 4)
    assert "reached no test user" in result.stderr
    assert runner.row()["status"] == "blocked" and runner.messages()[1] == []


def test_a_live_phase_that_would_start_too_late_is_blocked(runner):
    result = runner.run(*at(-45 * 60))  # 45 min ago; allowed lateness 30 min
    assert_ok(result, 4)
    assert "allowed lateness" in result.stderr and runner.messages()[1] == []


def test_inactive_or_paused_campaigns_start_no_run(runner, in_process, sender):
    ledger = Ledger(sender.db, sender.schema)
    ledger.pause(L3, "incident 42")
    result = runner.run(*at(3))
    assert_ok(result)
    assert "paused (incident 42): no run started" in result.stderr
    assert sender.emulator.messages() == [] and runner.row() is None
    ledger.resume(L3)
    assert_ok(runner.run(*at(3)))
    assert runner.messages()[1], "resumed: the next run sends"


# --- cancel and pause -----------------------------------------------------------------------------------


def test_cancel_in_the_window_sends_nothing_live(runner):
    proc = runner.start(*at(30))
    runner.wait_for(runner.in_phase("window"), proc)
    Ledger(runner.sender.db, runner.sender.schema).request_cancel(runner.row()["id"])
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert runner.row()["status"] == "cancelled" and runner.messages()[1] == []
    assert len(runner.messages()[0]) == 9


def test_cancel_mid_live_stops_at_a_batch_boundary(runner, db):
    runner.sender.emulator.configure({"latency_ms": 100})
    proc = runner.start(*at(2), "--batch-size", "5", "--workers", "1")
    runner.wait_for(lambda: len(runner.messages()[1]) >= 10, proc)
    Ledger(runner.sender.db, runner.sender.schema).request_cancel(runner.row()["id"])
    proc.communicate(timeout=30)
    assert proc.returncode == 0 and runner.row()["status"] == "cancelled"
    live = runner.messages()[1]
    assert 10 <= len(live) < len(live_tokens(db)), "stopped before the end"
    statuses = runner.sender.query(
        "select d.status, count(*) as n from {deliveries} d join {runs} r using (run_id)"
        " where r.mode = 'live' group by d.status"
    )
    counts = {r["status"]: r["n"] for r in statuses}
    assert "pending" not in counts and counts["sent"] == len(live)


def test_pause_mid_run_stops_it(runner):
    proc = runner.start(*at(30))
    runner.wait_for(runner.in_phase("window"), proc)
    Ledger(runner.sender.db, runner.sender.schema).pause(L3, None)
    proc.communicate(timeout=30)
    assert runner.row()["status"] == "cancelled" and "paused" in runner.row()["reason"]
    assert runner.messages()[1] == []


# --- crashes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["test", "window", "live"])
def test_kill_9_in_each_phase_then_the_same_command_completes_the_run(runner, db, phase):
    runner.sender.emulator.configure({"latency_ms": 60})
    timeline = Timeline(30 if phase == "window" else 8)  # a window long enough to be seen, even under load
    proc = runner.start(*timeline.args(), "--batch-size", "2", "--workers", "1")
    if phase == "test":
        runner.wait_for(lambda: len(runner.messages()[0]) >= 2, proc)
    elif phase == "window":
        runner.wait_for(runner.in_phase("window"), proc)
    else:
        runner.wait_for(lambda: len(runner.messages()[1]) >= 6, proc)
    kill(proc)
    assert runner.row()["status"] == "running"
    # restart without --send-at: the unfinished run is found and resumed
    resumed = runner.run(*timeline.now())
    assert resumed.returncode in (0, 6), resumed.stderr
    assert runner.row()["status"] in ("succeeded", "failed") and runner.row()["id"] == 1
    test, live = runner.messages()
    assert max(Counter(m["token"] for m in test).values()) <= 3, "a test push was sent twice"
    assert max(Counter(m["token"] for m in live).values()) == 1, "a live push was sent twice"
    unknown = runner.sender.query("select count(*) as n from {deliveries} where status = 'pending'")[0]["n"]
    assert len(set(m["token"] for m in live)) + unknown >= len(live_tokens(db)) - 2


def test_a_run_killed_in_its_live_phase_resumes_after_midnight(runner, db):
    """Restarted the next day (a pinned clock, --now), it resumes the same run, not a new one."""
    runner.sender.emulator.configure({"latency_ms": 60})
    timeline = Timeline(2)
    proc = runner.start(*timeline.args(), "--batch-size", "2", "--workers", "1")
    runner.wait_for(lambda: len(runner.messages()[1]) >= 6, proc)
    kill(proc)
    timeline.offset += timedelta(hours=12)  # past midnight in Chicago
    resumed = runner.run(*timeline.now())
    assert resumed.returncode in (0, 6), resumed.stderr
    rows = runner.sender.query("select id, status from {scheduled_runs}")
    assert [r["id"] for r in rows] == [1], "a second run was started"
    live = runner.messages()[1]
    assert max(Counter(m["token"] for m in live).values()) == 1


def test_an_inactive_campaign_starts_no_run_but_can_be_rehearsed(runner, sender):
    campaign = dataclasses.replace(one_step(L3, "closet-adders"), active=False)
    options = runs.RunOptions(send_at=None, build=False, dbt_vars=FRESH, out=runner.out)
    with psycopg.connect(autocommit=True) as conn, psycopg.connect(autocommit=True) as lock_conn:
        outcome = runs.run_campaign(conn, lock_conn, sender.config, campaign, options, runs.Clock())
        assert (outcome.status, outcome.exit_code) == ("not started", 0) and "inactive" in outcome.reason
        assert sender.emulator.messages() == [] and runner.row() is None
        rehearsal = dataclasses.replace(options, rehearse=True, rehearsal_window=1)
        outcome = runs.run_campaign(conn, lock_conn, sender.config, campaign, rehearsal, runs.Clock())
    assert outcome.status == "succeeded" and runner.messages()[1] == []
    assert Counter(m["token"] for m in runner.messages()[0]) == dict.fromkeys(ALL_TEST_TOKENS, 2)


def test_send_json_is_one_document(sender):
    result = sender.run(L3, "--mode", "live-dry-run", "--step", "closet-adders", "--run-key", "j", "--json")
    assert_ok(result)
    document = json.loads(result.stdout)
    assert document["status"] == "succeeded" and document["steps"][0]["step"] == "closet-adders"
