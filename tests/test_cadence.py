"""DELIVERY.md, "Cadence": frequency caps applied while a live step is planned, against the ledger's
history, atomically per user, with priority between campaigns. The real CLI (and send_campaign in
process for rule tables of a test's own), a real PostgreSQL, firebase-admin and the FCM emulator.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from datetime import timedelta

import psycopg
import pytest
from psycopg import sql

from sender.ledger import Caps, Ledger
from tests.conftest import AUDIENCE_SCHEMA
from tests.sending import L2, L3, assert_ok, audience, closed_port, one_step, summary_row, tokens_of

L3_RULE, WEEKLY_RULE = "layer3_once_per_72h", "layers_2_3_twice_per_week"  # seeds/cadence_rules.csv
RULES = sql.Identifier(AUDIENCE_SCHEMA, "cadence_rules")
L3_STEPS = ("offer-creators", "closet-adders", "wishlist-adders")
L2_STEPS = ("top1", "top2-10")


def add_history(sender, user_id: str, layer: int, age: timedelta, campaign: str = "") -> None:
    sender.query(
        "insert into {history} (user_id, layer, campaign, sent_at) values (%s, %s, %s, now() - %s)",
        user_id, layer, campaign, age,
    )  # fmt: skip


def users_with_tokens(db, step: str) -> list[str]:
    return sorted(u for u, ts in tokens_of(db, [r["user_id"] for r in audience(db, step)]).items() if ts)


@pytest.fixture
def rules(db):
    """The seed table's rules, replaced by a test and restored afterwards."""
    saved = db.execute(sql.SQL("select * from {}").format(RULES)).fetchall()

    def replace(*rows: tuple[str, str, str, int, int, bool]) -> None:
        db.execute(sql.SQL("delete from {}").format(RULES))
        for row in rows:
            db.execute(sql.SQL("insert into {} values (%s, %s, %s, %s, %s, %s)").format(RULES), row)

    yield replace
    replace(*saved)


# --- the rules and their windows ------------------------------------------------------------------------


@pytest.mark.parametrize(("minutes_ago", "blocked"), [(72 * 60 - 1, True), (72 * 60 + 1, False)])
def test_the_72_hour_window_edge(sender, db, minutes_ago, blocked):
    """A Layer 3 push 71 h 59 min ago blocks another; 72 h 1 min ago it no longer counts."""
    step = "closet-adders"
    user = users_with_tokens(db, step)[0]
    add_history(sender, user, 3, timedelta(minutes=minutes_ago))
    result = sender.run(L3, "--mode", "live", "--step", step, "--run-key", "edge")
    assert_ok(result)
    mine = [r for r in sender.deliveries("edge") if r["user_id"] == user]
    if blocked:
        assert [(r["status"], r["token"], r["cadence_rules"]) for r in mine] == [("cadence_skipped", "", [L3_RULE])]
        assert summary_row(result.stderr, step)["cadence-skipped"] == "1"
        assert not set(tokens_of(db, [user])[user]) & {m["token"] for m in sender.emulator.delivered()}
    else:
        assert {r["status"] for r in mine} == {"sent"}
        assert summary_row(result.stderr, step)["cadence-skipped"] == "0"


def test_the_combined_rule_counts_layer_2_for_a_layer_3_push(sender, db):
    step = "offer-creators"
    twice, once = users_with_tokens(db, step)[:2]
    for age in (timedelta(days=1), timedelta(days=6)):
        add_history(sender, twice, 2, age)
    add_history(sender, once, 2, timedelta(days=2))
    add_history(sender, once, 2, timedelta(days=8))  # outside the week
    assert_ok(sender.run(L3, "--mode", "live", "--step", step, "--run-key", "combined"))
    by_user = {r["user_id"]: r for r in sender.deliveries("combined")}
    assert by_user[twice]["status"] == "cadence_skipped" and by_user[twice]["cadence_rules"] == [WEEKLY_RULE]
    assert by_user[once]["status"] == "sent"


def test_every_rule_that_blocks_is_recorded_and_inactive_rules_are_ignored(sender, db, rules):
    step = "wishlist-adders"
    user = users_with_tokens(db, step)[0]
    rules(
        ("l3_daily", "3", "3", 24, 1, True),
        ("l2_l3_weekly", "2 3", "2 3", 168, 1, True),
        ("l5_counts_too", "3", "5 3", 48, 1, False),  # inactive
    )
    add_history(sender, user, 3, timedelta(hours=2))
    assert_ok(sender.run(L3, "--mode", "live", "--step", step, "--run-key", "both"))
    row = next(r for r in sender.deliveries("both") if r["user_id"] == user)
    assert (row["status"], row["cadence_rules"]) == ("cadence_skipped", ["l2_l3_weekly", "l3_daily"])

    rules(("l5_counts_too", "3", "5", 48, 1, False))  # the only rule is inactive: no caps, and a warning
    add_history(sender, user, 5, timedelta(hours=2))
    result = sender.run(L3, "--mode", "live", "--step", step, "--run-key", "inactive")
    assert_ok(result)
    assert "NO FREQUENCY CAPS" in result.stderr
    assert {r["status"] for r in sender.deliveries("inactive") if r["user_id"] == user} == {"sent"}


def test_caps_count_one_notification_per_user_and_step_however_many_tokens(sender, db, rules):
    """A user with two devices got one notification, not two: a cap of 2 still lets one more through."""
    rules(("twice", "3", "3", 72, 2, True))
    step = "closet-adders"
    several = next(u for u, ts in sorted(tokens_of(db, users_with_tokens(db, step)).items()) if len(ts) >= 2)
    assert_ok(sender.run(L3, "--mode", "live", "--step", step, "--run-key", "first"))
    assert_ok(sender.run(L3, "--mode", "live", "--step", step, "--run-key", "second"))
    assert {r["status"] for r in sender.deliveries("second") if r["user_id"] == several} == {"sent"}
    third = sender.run(L3, "--mode", "live", "--step", step, "--run-key", "third")
    assert_ok(third)
    audience_size = len(audience(db, step))
    assert summary_row(third.stderr, step)["cadence-skipped"] == str(len(users_with_tokens(db, step)))
    assert summary_row(third.stderr, step)["audience"] == str(audience_size)


def test_test_sends_and_dry_runs_neither_count_nor_are_capped(sender, db):
    step = "closet-adders"
    user = users_with_tokens(db, step)[0]
    add_history(sender, user, 3, timedelta(hours=1))
    assert_ok(sender.run(L3, "--mode", "test-live", "--step", step, "--run-key", "t"))  # bypasses caps
    assert {r["status"] for r in sender.deliveries("t")} <= {"sent", "no_token"}
    dry = sender.run(L3, "--mode", "live-dry-run", "--step", step, "--run-key", "dry")
    assert_ok(dry)
    assert next(r for r in sender.deliveries("dry") if r["user_id"] == user)["status"] == "cadence_skipped"
    assert_ok(sender.run(L3, "--mode", "live-dry-run", "--step", step, "--run-key", "dry-again"))
    others = [r for r in sender.deliveries("dry-again") if r["user_id"] != user and r["token"]]
    assert others and {r["status"] for r in others} == {"dry_run"}, "a dry run must not count as a notification"


def test_missing_or_empty_rules_send_without_caps_and_say_so(sender, in_process, db, rules):
    step = "closet-adders"
    user = users_with_tokens(db, step)[0]
    add_history(sender, user, 3, timedelta(hours=1))
    campaign = dataclasses.replace(one_step(L3, step), cadence_rules=(AUDIENCE_SCHEMA, "no_such_rules"))
    result = in_process(campaign, "live", "missing")
    assert any("NO FREQUENCY CAPS" in w and "does not exist" in w for w in result.warnings), result.warnings
    assert {r["status"] for r in sender.deliveries("missing") if r["user_id"] == user} == {"sent"}
    assert "NO FREQUENCY CAPS" in sender.runs()[-1]["warnings"][0], "the warning is on the run record too"
    rules()  # empty
    result = in_process(one_step(L3, step), "live", "empty")
    assert any("has no active rule" in w for w in result.warnings)


def test_an_unreadable_ledger_history_sends_nothing(sender, db):
    sender.query("alter view {notifications} rename to notifications_gone")
    result = sender.run(L3, "--mode", "live", "--step", "closet-adders", "--run-key", "nohistory")
    assert result.returncode == 2, result.stderr
    assert "notifications" in result.stderr and "Traceback" not in result.stderr
    assert sender.emulator.messages() == []
    assert sender.query("select * from {deliveries}") == []


# --- races and priority ---------------------------------------------------------------------------------


def overlap(db) -> list[str]:
    """Users (with a token) in both a Layer 3 and a Layer 2 audience."""
    l3 = {u for step in L3_STEPS for u in users_with_tokens(db, step)}
    l2 = {u for step in L2_STEPS for u in users_with_tokens(db, step)}
    assert len(l3 & l2) >= 5, "the sample data should have users in both layers"
    return sorted(l3 & l2)


def deliveries_by_campaign(sender, users: list[str]) -> dict[str, Counter]:
    """user -> Counter of campaigns whose pushes the emulator delivered to that user's tokens."""
    owner = {t: u for u, ts in tokens_of(sender.db, users).items() for t in ts}
    rows = sender.query(
        "select r.campaign, d.token from {deliveries} d join {runs} r using (run_id) where d.status = 'sent'"
    )
    campaign_of = {r["token"]: r["campaign"] for r in rows}
    found = {u: Counter() for u in users}
    for message in sender.emulator.delivered():
        if message["token"] in owner:
            found[owner[message["token"]]][campaign_of[message["token"]]] += 1
    return found


def campaigns_reaching(found: dict[str, Counter]) -> dict[str, set[str]]:
    return {u: set(c) for u, c in found.items()}


LIVE = ("--mode", "live", "--run-key", "day", "--allow-large")


def plan_without_sending(sender, campaign: str, steps: tuple[str, ...]) -> None:
    """Every step of the campaign's run planned (its messages queued), none sent: FCM is down."""
    for step in steps:
        down = sender.run(campaign, *LIVE, "--step", step, FCM_EMULATOR_HOST=f"127.0.0.1:{closed_port()}")
        assert_ok(down, 7)


def test_two_campaigns_racing_for_one_user_never_both_pass_a_cap(sender, db, rules):
    rules(("one_a_week", "2 3", "2 3", 168, 1, True))
    users = overlap(db)
    sender.emulator.configure({"latency_ms": 20})
    procs = [sender.start(campaign, *LIVE, "--batch-size", "5", capture=True) for campaign in (L3, L2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    reached = campaigns_reaching(deliveries_by_campaign(sender, users))
    assert all(len(campaigns) == 1 for campaigns in reached.values()), reached


def test_priority_takes_a_planned_slot_whatever_the_order(sender, db, rules):
    """Layer 3 (priority 30) beats Layer 2 (priority 20). Layer 2 plans first but cannot send (FCM down):
    its reservations of shared users give way to Layer 3, naming the rule and the winner."""
    rules(("one_a_week", "2 3", "2 3", 168, 1, True))
    users = overlap(db)
    plan_without_sending(sender, L2, L2_STEPS)
    assert_ok(sender.run(L3, *LIVE))
    assert_ok(sender.run(L2, *LIVE))
    assert campaigns_reaching(deliveries_by_campaign(sender, users)) == {u: {"layer3-behavior"} for u in users}
    given_up = sender.query(
        "select distinct d.user_id::text as user_id, d.cadence_rules, d.cadence_winner from {deliveries} d"
        " join {runs} r using (run_id) where r.campaign = %s and d.status = 'cadence_skipped'",
        L2,
    )
    assert {r["user_id"] for r in given_up} == set(users)
    assert {(tuple(r["cadence_rules"]), r["cadence_winner"]) for r in given_up} == {(("one_a_week",), L3)}


def test_priority_in_the_other_order_and_a_sent_message_is_never_taken_back(sender, db, rules):
    rules(("one_a_week", "2 3", "2 3", 168, 1, True))
    users = overlap(db)
    # Layer 3 first, planned but not sent: Layer 2 finds its slots taken by a higher priority.
    plan_without_sending(sender, L3, L3_STEPS)
    assert_ok(sender.run(L2, *LIVE))
    assert_ok(sender.run(L3, *LIVE))
    assert campaigns_reaching(deliveries_by_campaign(sender, users)) == {u: {"layer3-behavior"} for u in users}

    # Another day: Layer 2 sends first; Layer 3 (higher) cannot take back what was already sent.
    sender.query("update {deliveries} set updated_at = updated_at - interval '8 days'")
    sender.emulator.clear()
    assert_ok(sender.run(L2, "--mode", "live", "--run-key", "day2", "--allow-large"))
    assert_ok(sender.run(L3, "--mode", "live", "--run-key", "day2", "--allow-large"))
    reached = campaigns_reaching(deliveries_by_campaign(sender, users))
    assert reached == {u: {"layer2-trending"} for u in users}
    l3_rows = sender.query(
        "select d.user_id::text as user_id, d.status from {deliveries} d join {runs} r using (run_id)"
        " where r.campaign = %s and r.run_key = 'day2' and d.user_id = any(%s::uuid[])",
        L3,
        users,
    )
    assert {r["status"] for r in l3_rows} == {"cadence_skipped"}


def test_the_check_and_the_record_are_atomic_per_user(sender, db):
    """Deterministic race: planner A has checked and recorded its users but not committed; planner B,
    checking the same users meanwhile, must wait for A and then see A's reservations (a lost update
    would let both pass the cap)."""
    step = "closet-adders"
    users = users_with_tokens(db, step)[:5]
    tokens = one_step(L3, step).device_tokens
    caps = {name: Caps((AUDIENCE_SCHEMA, "cadence_rules"), 3, 0, name, True) for name in ("race-a", "race-b")}
    rendered = [[(u, "title", "body", "{}", None) for u in users]]
    with psycopg.connect(autocommit=True) as conn_a, psycopg.connect(autocommit=True) as conn_b:
        a, b = Ledger(conn_a, sender.schema), Ledger(conn_b, sender.schema)
        run_a = a.start_run("race-a", 3, "live", "k").run_id
        run_b = b.start_run("race-b", 3, "live", "k").run_id
        with conn_a.transaction():  # A's planning transaction stays open...
            a.plan_step(run_a, step, rendered, tokens, caps["race-a"])
            planner_b = threading.Thread(target=b.plan_step, args=(run_b, step, rendered, tokens, caps["race-b"]))
            planner_b.start()
            planner_b.join(timeout=1.0)
            assert planner_b.is_alive(), "B checked the caps while A's check was not yet recorded"
        planner_b.join(timeout=30)  # ...until A commits
        assert not planner_b.is_alive()
    statuses = sender.query("select run_id, status from {deliveries}")
    assert {r["status"] for r in statuses if r["run_id"] == run_a} == {"queued"}
    assert {r["status"] for r in statuses if r["run_id"] == run_b} == {"cadence_skipped"}
