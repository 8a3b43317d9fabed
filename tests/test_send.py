"""`sender send` against DELIVERY.md ("Modes", "Delivery rules"): the real CLI in subprocesses, a real
PostgreSQL, the real firebase-admin SDK and the project's FCM emulator (no mocks); harness in sending.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from psycopg import sql

from sender import dispatch, ledger, send
from sender.fcm_emulator import serve
from tests.conftest import AUDIENCE_SCHEMA, SOURCE_SCHEMA
from tests.sending import (
    ALL_TEST_TOKENS,
    JORDAN,
    L2,
    L3,
    TABLES,
    TEST_TOKENS,
    assert_ok,
    audience,
    check_ledger_against_emulator,
    closed_port,
    delivered_tokens,
    expected_copy,
    one_step,
    summary_row,
    tokens_of,
    unknown_lines,
)

# --- modes ----------------------------------------------------------------------------------------------


def test_test_dry_run_validates_for_test_users_only(sender, db):
    result = sender.run(L3, "--mode", "test-dry-run", "--step", "closet-adders", "--run-key", "tdr")
    assert_ok(result)

    messages = sender.emulator.messages()
    assert messages and all(m["validate_only"] and m["status"] == 200 for m in messages)
    preflight = [m for m in messages if m["token"] == dispatch.PREFLIGHT_TOKEN]
    assert len(preflight) == 1, "one validate-only request proves the credentials before anything is claimed"
    messages = [m for m in messages if m not in preflight]
    assert sorted(m["token"] for m in messages) == sorted(ALL_TEST_TOKENS), "one validation per test-user token"
    assert sender.emulator.delivered() == []

    rows = sender.deliveries("tdr")
    assert {(r["user_id"], r["token"], r["status"]) for r in rows} == {
        *((user, token, "validated") for user, tokens in TEST_TOKENS.items() for token in tokens),
        (JORDAN, "", "no_token"),
    }
    assert not any(r["status"] == "sent" for r in sender.query("select status from {deliveries}"))
    first = audience(db, "closet-adders")[0]  # the test rows copy the first production row's fields
    title, body, data = expected_copy("closet-adders", first)
    for message in messages:
        assert message["notification"] == {"title": title, "body": body} and message["data"] == data
    assert [(r["mode"], r["status"]) for r in sender.runs()] == [("test-dry-run", "succeeded")]


def test_test_live_sends_once_per_test_token_and_step(sender, db):
    result = sender.run(L3, "--mode", "test-live", "--run-key", "tl")
    assert_ok(result)

    steps = ("offer-creators", "closet-adders", "wishlist-adders")
    assert set(delivered_tokens(sender.emulator)) <= ALL_TEST_TOKENS, "a test send reached a real user"
    assert delivered_tokens(sender.emulator) == {token: len(steps) for token in ALL_TEST_TOKENS}
    rows, received = check_ledger_against_emulator(sender, "tl")
    assert set(rows) == {(step, token) for step in steps for token in ALL_TEST_TOKENS}
    assert all(r["status"] == "sent" for r in rows.values()) and set(received) == set(rows)
    for step in steps:
        title, body, _ = expected_copy(step, audience(db, step)[0])
        assert {(r["title"], r["body"]) for (s, _), r in rows.items() if s == step} == {(title, body)}
        assert summary_row(result.stderr, step)["sent"] == str(len(ALL_TEST_TOKENS))
    no_token = [r for r in sender.deliveries("tl") if r["status"] == "no_token"]
    assert sorted((r["step"], r["user_id"]) for r in no_token) == [(step, JORDAN) for step in sorted(steps)]


def test_live_dry_run_counts_renders_and_sends_nothing(sender, db):
    step = "closet-adders"
    result = sender.run(L3, "--mode", "live-dry-run", "--step", step, "--run-key", "ldr")
    assert_ok(result)

    assert sender.emulator.messages() == [], "a dry run must not call FCM"
    rows = sender.deliveries("ldr")
    users = tokens_of(db, [r["user_id"] for r in audience(db, step)])
    expected = {(u, t, "dry_run") for u, ts in users.items() for t in ts}
    expected |= {(u, "", "no_token") for u, ts in users.items() if not ts}
    assert {(r["user_id"], r["token"], r["status"]) for r in rows} == expected
    assert any(not ts for ts in users.values()), "the sample should have audience users without a token"

    cells = summary_row(result.stderr, step)
    assert cells["audience"] == str(len(users))
    assert cells["no token"] == str(sum(1 for ts in users.values() if not ts))
    assert (cells["failed"], cells["invalid tokens"], cells["not rendered"], cells["unknown"]) == ("0", "0", "0", "0")
    # a sample of the rendered messages
    example = re.search(rf"{step} dry_run e\.g\. user ([0-9a-f-]+): '(.*)' / '(.*)'", result.stderr)
    assert example, result.stderr
    row = next(r for r in audience(db, step) if r["user_id"] == example[1])
    assert example.groups()[1:] == expected_copy(step, row)[:2]


def test_live_sends_rendered_copy_once_per_token_and_a_rerun_sends_nothing(sender, db):
    step = "closet-adders"
    rows_by_user = {r["user_id"]: r for r in audience(db, step)}
    users = tokens_of(db, rows_by_user)
    # Tokens already known invalid: one of a user with several, and the only one of another user.
    several = next(u for u, ts in sorted(users.items()) if len(ts) >= 2)
    single = next(u for u, ts in sorted(users.items()) if len(ts) == 1)
    invalid = {sorted(users[several])[0], next(iter(users[single]))}
    sender.query(
        "insert into {invalid_tokens} (token, reason) select unnest(%s::text[]), 'UNREGISTERED'", list(invalid)
    )

    args = (L3, "--mode", "live", "--step", step, "--run-key", "live-1")
    result = sender.run(*args)
    assert_ok(result)

    expected = {t for ts in users.values() for t in ts} - invalid
    assert delivered_tokens(sender.emulator) == dict.fromkeys(expected, 1)
    owner = {t: u for u, ts in users.items() for t in ts}
    for message in sender.emulator.delivered():
        title, body, data = expected_copy(step, rows_by_user[owner[message["token"]]])
        assert message["notification"] == {"title": title, "body": body} and message["data"] == data
        assert not message["validate_only"]
    rows, _ = check_ledger_against_emulator(sender, "live-1")
    assert {(r["user_id"], r["token"]) for r in rows.values()} == {(owner[t], t) for t in expected}
    assert all(r["status"] == "sent" for r in rows.values())
    no_token = {r["user_id"] for r in sender.deliveries("live-1") if r["status"] == "no_token"}
    assert no_token == {u for u, ts in users.items() if not ts - invalid} and single in no_token
    cells = summary_row(result.stderr, step)
    assert (cells["audience"], cells["no token"], cells["sent"]) == (
        str(len(users)),
        str(len(no_token)),
        str(len(expected)),
    )

    received = len(sender.emulator.messages())
    again = sender.run(*args)
    assert_ok(again)
    assert "already completed" in again.stderr
    assert len(sender.emulator.messages()) == received, "a completed run called FCM again"
    assert [(r["mode"], r["run_key"], r["status"]) for r in sender.runs()] == [("live", "live-1", "succeeded")]


def test_each_step_of_a_run_key_is_sent_once_whatever_the_step_selection(sender, db):
    """Steps sent one by one under one run key, then the whole campaign: each step exactly once."""
    key = ("--run-key", "day")
    assert_ok(sender.run(L3, "--mode", "live", "--step", "closet-adders", *key))
    assert_ok(sender.run(L3, "--mode", "live", "--step", "wishlist-adders", *key))
    assert_ok(sender.run(L3, "--mode", "live", *key))  # only offer-creators is left
    again = sender.run(L3, "--mode", "live", *key)
    assert_ok(again)
    assert "already completed" in again.stderr

    expected = set()
    for step in ("offer-creators", "closet-adders", "wishlist-adders"):
        users = tokens_of(db, [r["user_id"] for r in audience(db, step)])
        expected |= {(step, t) for ts in users.values() for t in ts}
    rows, received = check_ledger_against_emulator(sender, "day")
    assert set(rows) == expected and all(r["status"] == "sent" for r in rows.values())
    assert received == dict.fromkeys(expected, 1)
    assert len(sender.runs()) == 1


# --- kill -9 and resume ---------------------------------------------------------------------------------

# name -> (sender arguments, emulator latency in ms, kill points). A kill point is "planned:STEP" (as
# soon as the ledger holds the step's rows), N (once the emulator received N more messages since this
# sender started) or "sent+N" (once N more ledger rows are settled 'sent'). Each kill but the first
# lands in a run resumed after the previous kill; each chain is a fresh run key. 22 kills in all.
KILL_CHAINS = {
    "top2-10-batch10-5ms": (["--step", "top2-10", "--batch-size", "10"], 5, ["planned:top2-10", 1, 45, 90, 30, 120]),
    "top2-10-batch20-20ms": (["--step", "top2-10", "--batch-size", "20"], 20, [7, 25, 60, 90, 40]),
    "top2-10-ledger-3-workers": (
        ["--step", "top2-10", "--batch-size", "10", "--workers", "3"],
        10,
        ["sent+20", "sent+60", "sent+5", "sent+100", "sent+40"],
    ),
    "whole-campaign": (["--batch-size", "20"], 10, ["planned:top1", 60, "planned:top2-10", 30, 120, 60]),
}


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies waiting to be reaped do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            return True
    return False


def wait_for_lock_release(db, campaign: str, timeout: float = 10) -> None:
    """The killed sender's database session ends (and frees the campaign's lock) a moment after it."""
    deadline = time.monotonic() + timeout
    while not ledger.try_lock_campaign(db, campaign):
        assert time.monotonic() < deadline, f"the campaign lock of {campaign} was never released"
        time.sleep(0.01)
    ledger.unlock_campaign(db, campaign)


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 60) -> bool:
    """SIGKILL the sender's process group once ready(); False if the sender finished first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            while group_alive(proc.pid):  # the workers die with the sender
                assert time.monotonic() < deadline, "worker processes survived the kill"
                time.sleep(0.01)
            return True
        assert time.monotonic() < deadline, "kill point not reached in time"
        time.sleep(0.0005)
    return False


@pytest.mark.parametrize("chain", sorted(KILL_CHAINS))
def test_kill_9_then_resume_never_sends_twice(sender, chain):
    args, latency, points = KILL_CHAINS[chain]
    run_key = f"kill-{chain}"
    command = (L2, "--mode", "live", "--run-key", run_key, *args)
    option = dict(zip(args[::2], args[1::2], strict=True))
    bound = int(option.get("--workers", 2)) * int(option["--batch-size"])  # README: the most a kill leaves pending
    pending = 0
    sender.emulator.configure({"latency_ms": latency})

    def count_sent() -> int:
        rows = sender.query(
            "select count(*) as n from {deliveries} d join {runs} r using (run_id)"
            " where r.run_key = %s and d.status = 'sent'",
            run_key,
        )
        return rows[0]["n"]

    for point in points:
        if isinstance(point, int):
            start = len(sender.emulator.delivered())

            def ready(start=start, point=point):
                return len(sender.emulator.delivered()) >= start + point

        elif point.startswith("sent+"):
            start = count_sent()

            def ready(start=start, point=point):
                return count_sent() >= start + int(point[5:])

        else:
            step = point.split(":")[1]

            def ready(step=step):
                query = "select 1 from {deliveries} d join {runs} r using (run_id) where r.run_key = %s and d.step = %s"
                return bool(sender.query(query + " limit 1", run_key, step))

        proc = sender.start(*command)
        assert kill_when(proc, ready), f"the sender finished before kill point {point}"
        time.sleep(0.1)  # let requests already on the wire reach the emulator
        wait_for_lock_release(sender.db, L2)
        arrived = len(sender.emulator.messages())
        rows, _ = check_ledger_against_emulator(sender, run_key)
        pending, before = sum(1 for r in rows.values() if r["status"] == "pending"), pending
        assert pending - before <= bound, f"a kill left {pending - before} pending, over workers x batch = {bound}"
        time.sleep(0.2)
        assert len(sender.emulator.messages()) == arrived, f"messages arrived after the kill at {point}"

    # Resume without flags: sends what is still queued, lists the pending ones, exits 6.
    rows_before = {key: row["status"] for key, row in check_ledger_against_emulator(sender, run_key)[0].items()}
    pending_after_kills = {key for key, status in rows_before.items() if status == "pending"}
    rerun = sender.run(*command)
    rows, received = check_ledger_against_emulator(sender, run_key)
    pending = {(step, r["user_id"], token) for (step, token), r in rows.items() if r["status"] == "pending"}
    assert {(step, token) for step, _, token in pending} == pending_after_kills, "the re-run touched pending rows"
    assert all(r["status"] in ("sent", "pending") for r in rows.values())
    assert unknown_lines(rerun.stdout) == pending, "the re-run must list exactly the pending messages"
    assert_ok(rerun, 6 if pending else 0)
    never_received = {key for key in rows if received[key] == 0}
    assert never_received <= pending_after_kills, "a message that was not delivered is not pending"
    assert pending, "the kills should have left some messages pending"

    # The operator resends them: every message that had not arrived now arrives, once.
    resend = sender.run(*command, "--resend-unknown")
    assert_ok(resend)
    rows, received = check_ledger_against_emulator(sender, run_key, resent=True)
    assert all(r["status"] == "sent" for r in rows.values())
    assert {key for key in never_received if received[key] != 1} == set()
    assert {key for key, status in rows_before.items() if status == "sent" and received[key] != 1} == set()


# --- one sender per campaign ----------------------------------------------------------------------------


def test_concurrent_senders_only_one_sends(sender, db):
    sender.emulator.configure({"latency_ms": 150})  # the winner is still sending when the others try
    command = (L2, "--mode", "live", "--step", "top1", "--run-key", "race", "--batch-size", "10")
    procs = [sender.start(*command, capture=True) for _ in range(3)]
    finished: dict[int, float] = {}
    deadline = time.monotonic() + 120
    while len(finished) < len(procs):
        assert time.monotonic() < deadline, "the senders did not finish"
        finished.update(
            {i: time.monotonic() for i, p in enumerate(procs) if i not in finished and p.poll() is not None}
        )
        time.sleep(0.005)
    outputs = [proc.communicate() for proc in procs]
    codes = [proc.returncode for proc in procs]
    assert sorted(codes) == [0, 5, 5], f"exit codes {codes}: {outputs}"
    winner = codes.index(0)
    for i, (_, stderr) in enumerate(outputs):
        if i != winner:
            assert "another sender is already sending campaign layer2-trending" in stderr
            assert len(stderr.strip().splitlines()) == 1, stderr
            assert finished[i] < finished[winner], "a second sender waited instead of exiting at once"
    users = tokens_of(db, [r["user_id"] for r in audience(db, "top1")])
    assert delivered_tokens(sender.emulator) == {t: 1 for ts in users.values() for t in ts}
    rows, _ = check_ledger_against_emulator(sender, "race")
    assert all(r["status"] == "sent" for r in rows.values())
    assert summary_row(outputs[winner][1], "top1")["sent"] == str(sum(map(len, users.values())))
    assert [(r["run_key"], r["status"]) for r in sender.runs()] == [("race", "succeeded")]


# --- FCM errors -----------------------------------------------------------------------------------------


def test_error_storm_is_retried_until_everything_is_delivered(sender, db):
    sender.emulator.configure({"rates": {"UNAVAILABLE": 0.15, "QUOTA_EXCEEDED": 0.1}, "retry_after": 1, "seed": 7})
    step = "closet-adders"
    result = sender.run(L3, "--mode", "live", "--step", step, "--run-key", "storm", "--batch-size", "20")
    assert_ok(result)

    users = tokens_of(db, [r["user_id"] for r in audience(db, step)])
    expected = {t for ts in users.values() for t in ts}
    assert delivered_tokens(sender.emulator) == dict.fromkeys(expected, 1)
    statuses = Counter(m["status"] for m in sender.emulator.messages())
    assert statuses[429] and statuses[503], f"the storm did not happen: {statuses}"
    rows, _ = check_ledger_against_emulator(sender, "storm")
    assert set(rows) == {(step, t) for t in expected} and all(r["status"] == "sent" for r in rows.values())
    by_token = defaultdict(list)
    for message in sender.emulator.messages():
        by_token[message["token"]].append(message)
    for token, attempts in by_token.items():
        assert len(attempts) <= 5, f"{token}: {len(attempts)} attempts, at most 5 allowed"
        for failed, retried in itertools.pairwise(attempts):
            gap = retried["time"] - failed["time"]
            if failed["status"] == 429:
                assert gap >= 0.95, f"{token}: retried {gap:.2f}s after a 429 with Retry-After 1"
            else:
                assert gap >= 0.45, f"{token}: retried {gap:.2f}s after a 503, without backing off"


def test_invalid_tokens_are_recorded_and_never_sent_again(sender, db):
    step = "offer-creators"
    users = tokens_of(db, [r["user_id"] for r in audience(db, step)])
    owner = {t: u for u, ts in users.items() for t in ts}
    tokens = sorted(owner)
    unregistered, bad_argument, flaky = tokens[:2], tokens[2], tokens[3]
    rules = {**dict.fromkeys(unregistered, "UNREGISTERED"), bad_argument: "INVALID_ARGUMENT"}
    sender.emulator.configure({"tokens": {**rules, flaky: "UNAVAILABLE"}})
    app_tokens = db.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(SOURCE_SCHEMA, "device_tokens")))
    app_tokens = app_tokens.fetchone()[0]

    first = sender.run(L3, "--mode", "live", "--step", step, "--run-key", "first")
    assert_ok(first, 6)  # one message failed after its retries
    invalid = {*unregistered, bad_argument}
    check_ledger_against_emulator(sender, "first")
    statuses = {r["token"]: r for r in sender.deliveries("first") if r["token"]}
    assert {t for t, r in statuses.items() if r["status"] == "invalid_token"} == invalid
    assert statuses[flaky]["status"] == "failed" and "UNAVAILABLE" in statuses[flaky]["error"]
    assert len(sender.emulator.messages(flaky)) == 5, "UNAVAILABLE is retried a bounded number of times (4)"
    assert {t for t, r in statuses.items() if r["status"] == "sent"} == set(tokens) - invalid - {flaky}
    assert delivered_tokens(sender.emulator) == dict.fromkeys(set(tokens) - invalid - {flaky}, 1)
    marked = sender.query("select token, reason, run_id from {invalid_tokens} order by token")
    run_id = sender.runs()[0]["run_id"]
    assert [(r["token"], r["run_id"]) for r in marked] == [(t, run_id) for t in sorted(invalid)]
    reasons = {r["token"]: r["reason"] for r in marked}
    assert all("UNREGISTERED" in reasons[t] or "Unregistered" in reasons[t] for t in unregistered), reasons
    assert "INVALID_ARGUMENT" in reasons[bad_argument], reasons
    cells = summary_row(first.stderr, step)
    assert (cells["failed"], cells["invalid tokens"]) == ("1", "3")

    # A later run (new key, a week later: no frequency cap applies): the invalid tokens are not even
    # attempted; the failed one is sent this time.
    sender.query("update {deliveries} set updated_at = updated_at - interval '8 days'")
    sender.emulator.configure({"tokens": rules})
    sender.emulator.clear()
    later = sender.run(L3, "--mode", "live", "--step", step, "--run-key", "later")
    assert_ok(later)
    assert all(sender.emulator.messages(t) == [] for t in invalid)
    assert delivered_tokens(sender.emulator) == dict.fromkeys(set(tokens) - invalid, 1)
    later_rows = sender.deliveries("later")
    assert not {r["token"] for r in later_rows} & invalid
    users_left_without = {u for u, ts in users.items() if ts and ts <= invalid}
    assert users_left_without <= {r["user_id"] for r in later_rows if r["status"] == "no_token"}
    # the app's own token table is never written
    count = db.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(SOURCE_SCHEMA, "device_tokens")))
    assert count.fetchone()[0] == app_tokens


def test_fcm_unreachable_stops_keeps_messages_queued_and_resumes(sender, db):
    step = "wishlist-adders"
    args = (L3, "--mode", "live", "--step", step, "--run-key", "down")
    down = sender.run(*args, FCM_EMULATOR_HOST=f"127.0.0.1:{closed_port()}")
    assert_ok(down, 7)  # systemic: the run stopped, nothing lost
    assert "cannot reach FCM" in down.stderr and "Traceback" not in down.stderr
    assert len(down.stderr.strip().splitlines()) == 2, down.stderr  # the run's name, then one line: the cause
    rows = sender.deliveries("down")
    assert rows and {r["status"] for r in rows if r["token"]} == {"queued"}, "unsent messages must stay queued"

    up = sender.run(*args)
    assert_ok(up)
    users = tokens_of(db, [r["user_id"] for r in audience(db, step)])
    assert delivered_tokens(sender.emulator) == {t: 1 for ts in users.values() for t in ts}
    rows, _ = check_ledger_against_emulator(sender, "down")
    assert all(r["status"] == "sent" for r in rows.values())


def test_fcm_lost_mid_batch_never_leads_to_a_second_copy(sender, db, tmp_path):
    """FCM goes away while requests are in flight: those may have arrived, so they must not be re-sent."""
    step = "closet-adders"
    first = sender.emulator
    first.configure({"latency_ms": 400})  # requests arrive, their answers are still on the way
    args = (L3, "--mode", "live", "--step", step, "--run-key", "lost", "--batch-size", "10")
    proc = sender.start(*args, capture=True)
    deadline = time.monotonic() + 60
    while not first.delivered():
        assert proc.poll() is None and time.monotonic() < deadline, "the sender sent nothing"
        time.sleep(0.001)
    time.sleep(0.05)  # the rest of the batches in flight arrive too
    first.stop()  # drops every connection: the requests it received are never answered
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 7, f"{proc.returncode}\n{stdout}\n{stderr}"
    assert "cannot reach FCM" in stderr
    arrived = {m["token"] for m in first.delivered()}
    assert arrived
    statuses = {r["token"]: r["status"] for r in sender.deliveries("lost") if r["token"]}
    requeued = sorted(t for t in arrived if statuses[t] == "queued")
    assert not requeued, f"{len(requeued)} messages FCM had received are 'queued' again, to be sent a second time"

    with serve(port=0, record_path=str(tmp_path / "second.jsonl")) as second:
        resumed = sender.run(*args, FCM_EMULATOR_HOST=second.emulator_host)
        assert resumed.returncode in (0, 6), resumed.stderr
        again = Counter(m["token"] for m in second.delivered())
    assert not arrived & set(again), f"{len(arrived & set(again))} tokens received the same push twice"
    users = tokens_of(db, [r["user_id"] for r in audience(db, step)])
    # A request whose connection broke may or may not have reached FCM: it is listed as unknown and
    # not re-sent (whether or not the first emulator happened to receive it); everything else is sent once.
    unknown = {token for _, _, token in unknown_lines(resumed.stdout)}
    assert {statuses[t] for t in unknown} == {"pending"} or not unknown
    assert again == dict.fromkeys({t for ts in users.values() for t in ts} - arrived - unknown, 1)


# --- bad input and safeguards ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("no-such-campaign", "--mode", "live"), "unknown campaign 'no-such-campaign'"),
        ((L3, "--mode", "live", "--step", "no-such-step"), "has no step 'no-such-step'"),
        ((L3, "--mode", "test-live", "--batch-size", "501"), "500"),
        ((L3, "--mode", "everything"), "everything"),
    ],
)
def test_bad_input_exits_2_and_sends_nothing(sender, args, message):
    result = sender.run(*args, "--run-key", "bad")
    assert_ok(result, 2)
    assert message in result.stderr and "Traceback" not in result.stderr
    assert sender.emulator.messages() == [] and sender.runs() == []


def test_database_unreachable_exits_2_with_one_line(sender):
    result = sender.run(L3, "--mode", "live", "--run-key", "nodb", PGHOST="127.0.0.1", PGPORT="1")
    assert_ok(result, 2)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "cannot connect to PostgreSQL" in result.stderr
    assert sender.emulator.messages() == []


def test_audience_over_the_maximum_sends_nothing(sender):
    result = sender.run(L3, "--mode", "live", "--step", "closet-adders", "--run-key", "big", "--max-audience", "1")
    assert_ok(result, 4)
    assert "over the maximum of 1" in result.stderr
    assert sender.emulator.messages() == []
    assert sender.query("select * from {deliveries}") == [] and sender.runs() == []
    # explicitly allowed: sends
    allowed = sender.run(
        L3, "--mode", "live", "--step", "closet-adders", "--run-key", "big", "--max-audience", "1", "--allow-large"
    )
    assert_ok(allowed)
    assert sender.emulator.delivered()


# --- in process: campaigns the project does not declare ---------------------------------------------


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"body": "{{ no_such_column }} traders want it"}, "undefined variable no_such_column"),
        ({"title": "Your {{ product_name }"}, "title: line 1"),
        # an unknown filter is only found when jinja compiles the template
        ({"data": {"deep_link": "tradeblock://{{ variantID | nope }}"}}, "data.deep_link"),
    ],
)
def test_template_error_fails_validation_before_anything_is_sent(sender, in_process, changes, problem):
    campaign = one_step(L3, "closet-adders", **changes)
    for mode in ("test-live", "live"):
        with pytest.raises(send.ValidationFailed, match=re.escape(problem)) as caught:
            in_process(campaign, mode, f"template-{mode}")
        assert caught.value.exit_code == 3
    assert sender.emulator.messages() == []
    assert sender.runs() == [] and sender.query("select * from {deliveries}") == []


def test_inactive_campaign_sends_nothing_not_even_test_pushes(sender, in_process):
    campaign = dataclasses.replace(one_step(L3, "closet-adders"), active=False)
    for mode in ("live", "test-live"):
        with pytest.raises(send.SafeguardTripped, match="inactive") as caught:
            in_process(campaign, mode, f"inactive-{mode}")
        assert caught.value.exit_code == 4
    assert sender.emulator.messages() == []
    assert sender.runs() == [] and sender.query("select * from {deliveries}") == []
    # a dry run still works, and a rehearsal may try an inactive campaign on the test users
    assert in_process(campaign, "live-dry-run", "inactive-dry").exit_code == 0
    result = in_process(campaign, "test-live", "inactive-rehearsal", rehearsal=True)
    assert result.exit_code == 0
    assert delivered_tokens(sender.emulator) == dict.fromkeys(ALL_TEST_TOKENS, 1)


def test_user_ids_that_are_not_uuids_are_dropped_with_a_warning(sender, in_process, db):
    step = "closet-adders"
    schema = f"{sender.schema}_audience"
    table = sql.Identifier(schema, TABLES[step])
    db.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
    db.execute(
        sql.SQL("create table {} as select * from {}").format(table, sql.Identifier(AUDIENCE_SCHEMA, TABLES[step]))
    )
    db.execute(sql.SQL("alter table {} alter column user_id type text").format(table))
    # one row more with a user id that is not a UUID, and one existing row's id emptied
    db.execute(sql.SQL("insert into {} select * from {} order by export_order limit 1").format(table, table))
    db.execute(sql.SQL("update {} set user_id = 'not-a-uuid', export_order = -1"
                       " where ctid = (select ctid from {} order by export_order, ctid desc limit 1)")
               .format(table, table))  # fmt: skip
    db.execute(sql.SQL("update {} set user_id = '' where export_order = (select max(export_order) from {})")
               .format(table, table))  # fmt: skip
    campaign = one_step(L3, step, schema=schema)
    try:
        checks = send.validate_campaign(db, campaign)
        live = next(c for c in checks if c.audience == "live")
        assert any("'not-a-uuid' is not a valid UUID" in p for p in live.problems), live.problems

        result = in_process(campaign, "live", "bad-ids")
        assert result.exit_code == 0
        assert result.warnings == [f"step {step}: dropped 2 rows whose user_id is not a valid UUID"]
        valid_users = [u for (u,) in db.execute(sql.SQL("select user_id from {}").format(table)) if len(u) == 36]
        users = tokens_of(db, valid_users)
        assert delivered_tokens(sender.emulator) == {t: 1 for ts in users.values() for t in ts}
        assert {r["user_id"] for r in sender.deliveries("bad-ids")} == set(valid_users)
    finally:
        db.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(schema)))


def test_rows_whose_copy_renders_empty_are_reported_not_sent(sender, in_process, db):
    step = "closet-adders"
    # an empty title for users whose id starts with 0-7: an error for those rows only
    campaign = one_step(L3, step, title="{% if user_id < '8' %}Hi {{ firstName | default('there') }}{% endif %}")
    result = in_process(campaign, "live", "empty-title")
    assert result.exit_code == 6 and result.status == "failed"
    rows = audience(db, step)
    users = tokens_of(db, [r["user_id"] for r in rows])
    fine = {r["user_id"] for r in rows if r["user_id"] < "8"}
    assert fine and len(fine) < len(rows)
    assert delivered_tokens(sender.emulator) == {t: 1 for u in fine for t in users[u]}
    for message in sender.emulator.delivered():
        owner = next(u for u, ts in users.items() if message["token"] in ts)
        first_name = next(r["firstName"] for r in rows if r["user_id"] == owner) or "there"
        assert message["notification"]["title"] == f"Hi {first_name}"
    ledger_rows = sender.deliveries("empty-title")
    errors = {r["user_id"]: r for r in ledger_rows if r["status"] == "render_error"}
    assert set(errors) == {r["user_id"] for r in rows} - fine
    assert all(r["error"] == "empty title" and r["token"] == "" for r in errors.values())
    assert result.steps[0].render_errors == len(errors)
