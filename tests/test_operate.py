"""The operator's commands around scheduled runs (DELIVERY.md, "Timeline of a scheduled run"): pause / resume,
cancel, runs, and export --json. The real CLI in subprocesses against a real PostgreSQL; the scheduled runs
it reads are set up in process through the Ledger, each test on a ledger schema of its own.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg import sql

from sender.ledger import Ledger, try_lock_campaign
from tests.conftest import run_cli

L3, L5 = "layer3-behavior", "layer5-waterfall"
L3_ALIAS = "generate_layer_3_push_csvs"
CHICAGO = ZoneInfo("America/Chicago")
SEND_AT = datetime(2026, 11, 20, 19, 5, tzinfo=UTC)  # 13:05 in Chicago
_schemas = itertools.count()


@dataclasses.dataclass
class Ops:
    env: dict[str, str]
    schema: str
    ledger: Ledger

    def cli(self, *args: str, **env: str):
        return run_cli({**self.env, **env}, "sender", *args)

    def row(self, run_id: int) -> dict:
        return self.ledger.find_scheduled_run(run_id=run_id)


@pytest.fixture(scope="module")
def parsed(env):
    """The campaigns' manifest parsed once, so that commands print nothing but their own lines."""
    run_cli(env, "sender", "runs", "--last", "1", check=True)
    return env


@pytest.fixture
def ops(parsed, db):
    schema = f"pytest_operate_{os.getpid()}_{next(_schemas)}"
    db.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))
    ledger = Ledger(db, schema)
    ledger.migrate()
    yield Ops({**parsed, "SENDER_SCHEMA": schema}, schema, ledger)
    db.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))


@pytest.fixture
def holder():
    """Another session, standing for a live `sender run` process: it holds campaigns' advisory locks."""
    with psycopg.connect(autocommit=True) as conn:

        def hold(campaign: str) -> None:
            assert try_lock_campaign(conn, campaign), f"someone else holds {campaign}"

        yield hold


def ok(result, code: int = 0) -> str:
    assert result.returncode == code, f"exit {result.returncode}, expected {code}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def one_line_error(result, code: int = 2) -> str:
    assert result.returncode == code, f"exit {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def scheduled(ops: Ops, campaign: str = L3, send_at: datetime = SEND_AT, phase: str | None = None, **kw) -> int:
    run = ops.ledger.start_scheduled_run(campaign, send_at, kw.get("rehearsal", False))
    if phase:
        ops.ledger.record_phase(run["id"], phase, "started")
    return run["id"]


# --- pause / resume -----------------------------------------------------------------------------------------


def test_pause_resume_round_trip(ops):
    run_id = scheduled(ops, phase="window")
    assert ops.ledger.paused(L3) is None and not ops.ledger.heartbeat(run_id)["paused"]

    out = ok(ops.cli("pause", L3, "--reason", "wrong copy"))
    assert f"campaign {L3} paused since" in out and "wrong copy" in out
    assert f"run {run_id}" in out, "the unfinished run is named"
    assert ops.ledger.paused(L3)["reason"] == "wrong copy"
    beat = ops.ledger.heartbeat(run_id)  # what the running process sees before its next batch
    assert beat["paused"] and beat["paused_reason"] == "wrong copy"
    assert ops.ledger.paused(L5) is None, "only that campaign"

    out = ok(ops.cli("pause", L3_ALIAS))  # by old script id, again
    assert "already paused since" in out and ops.ledger.paused(L3) is not None

    out = ok(ops.cli("resume", L3))
    assert f"campaign {L3} resumed" in out and "wrong copy" in out
    assert ops.ledger.paused(L3) is None and not ops.ledger.heartbeat(run_id)["paused"]
    assert "was not paused" in ok(ops.cli("resume", L3_ALIAS))


def test_pause_on_a_new_ledger_creates_it(parsed, db):
    schema = f"pytest_operate_{os.getpid()}_new"
    db.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))
    try:
        ok(run_cli({**parsed, "SENDER_SCHEMA": schema}, "sender", "pause", L5))
        assert Ledger(db, schema).paused(L5) is not None
    finally:
        db.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))


@pytest.mark.parametrize(
    "args",
    [
        ("pause", "no-such-campaign"),
        ("resume", "no-such-campaign"),
        ("cancel", "no-such-campaign"),
        ("runs", "--campaign", "no-such-campaign"),
    ],  # fmt: skip
)
def test_unknown_campaign_is_one_line_exit_2(ops, args):
    assert "unknown campaign 'no-such-campaign'" in one_line_error(ops.cli(*args))


# --- cancel -------------------------------------------------------------------------------------------------


def test_cancel_by_id_in_the_window(ops, holder):
    run_id = scheduled(ops, phase="window")
    other = scheduled(ops, campaign=L5, phase="window")
    holder(L3)

    out = ok(ops.cli("cancel", str(run_id)))
    assert f"cancel requested for run {run_id} ({L3}, send at 2026-11-20 13:05:00 CST)" in out
    assert "nothing live will be sent" in out
    row = ops.row(run_id)
    assert row["cancel_requested_at"] is not None and row["status"] == "running", "its process ends it"
    assert ops.ledger.heartbeat(run_id)["cancel_requested_at"] is not None
    assert ops.row(other)["cancel_requested_at"] is None

    again = ok(ops.cli("cancel", str(run_id)))
    assert "first requested" in again and ops.row(run_id)["cancel_requested_at"] == row["cancel_requested_at"]


def test_cancel_by_campaign_during_the_live_send(ops, holder):
    done = scheduled(ops, send_at=SEND_AT - timedelta(days=1))
    ops.ledger.finish_scheduled_run(done, "succeeded")
    run_id = scheduled(ops, phase="live")
    holder(L3)

    out = ok(ops.cli("cancel", L3_ALIAS))
    assert f"run {run_id}" in out and "stops at the next batch boundary" in out
    assert ops.row(run_id)["cancel_requested_at"] is not None and ops.row(run_id)["status"] == "running"
    assert ops.row(done)["cancel_requested_at"] is None


def test_cancel_a_finished_run_says_so(ops):
    run_id = scheduled(ops, phase="done")
    ops.ledger.finish_scheduled_run(run_id, "blocked", "the test phase reached no test user")

    out = ok(ops.cli("cancel", str(run_id)))
    assert f"run {run_id} ({L3}" in out and "already finished blocked: the test phase reached no test user" in out
    assert ops.row(run_id)["cancel_requested_at"] is None and ops.row(run_id)["status"] == "blocked"
    # by campaign, a finished run is not a candidate
    assert "nothing to cancel" in one_line_error(ops.cli("cancel", L3))


def test_cancel_a_dead_run_marks_it_cancelled(ops):
    run_id = scheduled(ops, phase="window")  # status running, but no process holds the campaign's lock

    out = ok(ops.cli("cancel", L3))
    assert f"run {run_id}" in out and "no process left" in out and "marked cancelled" in out
    row = ops.row(run_id)
    assert row["status"] == "cancelled" and row["finished_at"] is not None and "phase window" in row["reason"]
    # a restart of the same run takes it over but does not resume it
    assert ops.ledger.start_scheduled_run(L3, SEND_AT, False)["status"] == "cancelled"
    assert "already finished cancelled" in ok(ops.cli("cancel", str(run_id)))


def test_cancel_an_interrupted_run_by_campaign(ops):
    run_id = scheduled(ops, phase="live")
    ops.ledger.finish_scheduled_run(run_id, "interrupted", "killed")
    out = ok(ops.cli("cancel", L3))
    assert "marked cancelled" in out and "what its live phase sent" in out
    assert ops.row(run_id)["status"] == "cancelled"


def test_nothing_to_cancel_is_one_line_exit_2(ops, parsed):
    assert "nothing to cancel" in one_line_error(ops.cli("cancel", L3))
    assert "no scheduled run 424242" in one_line_error(ops.cli("cancel", "424242"))
    # a ledger that was never created: the same, not a database error
    fresh = run_cli({**parsed, "SENDER_SCHEMA": f"pytest_operate_{os.getpid()}_absent"}, "sender", "cancel", "1")
    assert "no scheduled run 1" in one_line_error(fresh)


# --- runs ---------------------------------------------------------------------------------------------------


def table_rows(stderr: str) -> list[dict[str, str]]:
    """The rows of the table `sender runs` prints, each cell's wrapped lines joined with a space."""
    header, rows = None, []
    for line in stderr.splitlines():
        if not line.startswith(("┃", "│")):
            continue
        cells = [cell.strip() for cell in line.strip()[1:-1].split(line[0])]
        if line.startswith("┃"):
            header = [f"{a} {c}".strip() for a, c in zip(header, cells, strict=True)] if header else cells
        elif cells[0]:
            rows.append(dict(zip(header, cells, strict=True)))
        else:
            rows[-1] = {key: f"{rows[-1][key]} {cell}".strip() for key, cell in zip(header, cells, strict=True)}
    return rows


def runs_json(ops: Ops, *args: str) -> dict:
    result = ops.cli("runs", "--json", *args)
    return json.loads(ok(result))


def test_runs_shows_interrupted_when_nobody_holds_the_lock_and_running_while_held(ops, holder):
    run_id = scheduled(ops, campaign=L5, phase="test")

    [run] = runs_json(ops)["runs"]
    assert (run["id"], run["status"], run["recorded_status"]) == (run_id, "interrupted", "running")
    assert run["heartbeat_age_seconds"] is None
    table = ops.cli("runs")
    assert ok(table) == "", "the table goes to stderr"
    assert [(row["id"], row["status"]) for row in table_rows(table.stderr)] == [(str(run_id), "interrupted")]

    holder(L5)
    [run] = runs_json(ops, "--campaign", L5)["runs"]
    assert run["status"] == "running" and 0 <= run["heartbeat_age_seconds"] < 60
    [row] = table_rows(ops.cli("runs").stderr)
    assert row["status"] == "running" and row["finished"].startswith("beat ") and row["finished"].endswith(" ago")


def test_runs_json_has_the_phases_counts_newest_first(ops, db):
    older = scheduled(ops, send_at=SEND_AT - timedelta(days=1))
    ops.ledger.finish_scheduled_run(older, "cancelled", "cancelled in the window")
    run_id = scheduled(ops, phase="live")
    rehearsal = scheduled(ops, campaign=L5, send_at=SEND_AT - timedelta(days=2), rehearsal=True)
    # the test phase finished: its summary; the live phase is under way: counted in its deliveries so far
    test = ops.ledger.start_run(L3, 3, "test-live", "t1").run_id
    steps = [{"step": "offer-creators", "audience": 3, "sent": 2, "no_token": 1, "failed": 0},
             {"step": "closet-adders", "audience": 3, "sent": 2, "no_token": 1, "failed": 0}]  # fmt: skip
    ops.ledger.finish_run(test, "succeeded", steps)
    live = ops.ledger.start_run(L3, 3, "live", "l1").run_id
    table = sql.Identifier(ops.schema, "deliveries")
    for n, status in enumerate(["sent", "sent", "queued", "failed"]):
        db.execute(
            sql.SQL("insert into {} (run_id, step, user_id, token, status) values (%s, 'offer-creators', %s, %s, %s)")
            .format(table), (live, f"00000000-0000-0000-0000-00000000000{n}", f"token-{n}", status),
        )  # fmt: skip
    db.execute(sql.SQL("insert into {} values (%s, 'offer-creators')").format(sql.Identifier(ops.schema, "run_steps")),
               (live,))  # fmt: skip
    ops.ledger.link_send_run(run_id, "test_run_id", test)
    ops.ledger.link_send_run(run_id, "live_run_id", live)

    document = runs_json(ops)
    assert [r["id"] for r in document["runs"]] == [run_id, older, rehearsal]
    run = document["runs"][0]
    assert run["campaign"] == L3 and run["phase"] == "live" and not run["rehearsal"]
    send_at = datetime.fromisoformat(run["send_at"])
    assert send_at == SEND_AT and send_at.utcoffset() == CHICAGO.utcoffset(datetime(2026, 11, 20))
    assert run["test"]["counts"]["sent"] == 4 and run["test"]["counts"]["no_token"] == 2
    assert run["test"]["status"] == "succeeded" and run["test"]["run_id"] == test
    live_counts = run["live"]["counts"]
    assert (live_counts["sent"], live_counts["queued"], live_counts["failed"]) == (2, 1, 1)
    assert run["live"]["status"] == "running"
    assert [p["phase"] for p in run["phases"]] == ["live"]
    assert document["runs"][1]["status"] == "cancelled" and document["runs"][1]["reason"] == "cancelled in the window"
    assert document["runs"][2]["rehearsal"] and document["runs"][2]["test"] is None

    assert [r["id"] for r in runs_json(ops, "--last", "2")["runs"]] == [run_id, older]
    assert [r["id"] for r in runs_json(ops, "--campaign", L5)["runs"]] == [rehearsal]

    rows = table_rows(ops.cli("runs").stderr)
    assert [row["id"] for row in rows] == [str(run_id), str(older), str(rehearsal)]
    assert rows[0]["send at"] == "2026-11-20 13:05 CST" and rows[0]["phase"] == "live"
    assert rows[0]["test"] == "sent 4, no token 2" and rows[0]["live"] == "sent 2, failed 1, queued 1 (running)"
    assert rows[1]["status"] == "cancelled" and rows[1]["reason"] == "cancelled in the window"
    assert rows[2]["campaign"] == f"{L5} (rehearsal)" and rows[2]["test"] == "-"


def test_runs_on_an_empty_ledger(ops):
    assert runs_json(ops)["runs"] == []
    result = ops.cli("runs")
    assert ok(result) == "" and "no scheduled runs" in result.stderr


# --- export --json ------------------------------------------------------------------------------------------


def test_export_json(built, tmp_path):
    result = run_cli(built, "sender", "export", L3, "--out", str(tmp_path), "--json")
    document = json.loads(ok(result))
    files = document["files"]
    assert {(f["campaign"], f["step"], f["test"]) for f in files} == {
        (L3, step, test) for step in ("offer-creators", "closet-adders", "wishlist-adders") for test in (False, True)
    }
    for f in files:
        lines = Path(f["path"]).read_text().splitlines()
        assert len(lines) == f["rows"] + 1, "header and rows"
    assert document["empty_not_written"] == []
