"""`sender explain`: where a user stands in each campaign and why, against what really happened.

Every user of the sample data is explained (in process: one query per campaign and side) and checked
against the exported files (who is in which step), the ledger and the FCM emulator (what was sent), and
an independent reading of the source rows (why Layer 5 left a user out). Then the real CLI's words for
each kind of answer: sent, dropped by the demand filter, capped by a rule, no token, not a candidate.
"""

from __future__ import annotations

import csv
import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from sender import campaigns, explain
from sender.ledger import Ledger
from tests.conftest import AS_OF, AUDIENCE_SCHEMA, SOURCE_SCHEMA, run_cli
from tests.sending import L2, L3, assert_ok, audience, tokens_of

L5 = "layer5-waterfall"
CAMPAIGNS = (L5, L3, L2)
L3_RULE, WEEKLY_RULE = "layer3_once_per_72h", "layers_2_3_twice_per_week"  # seeds/cadence_rules.csv


def explain_cli(sender, user_id: str, *args: str):
    return run_cli(sender.env, "sender", "explain", user_id, *args)


def exported(sender, out) -> dict[str, dict[str, str]]:
    """campaign -> {user_id: step} from the production files of `sender export --all`."""
    assert_ok(run_cli(sender.env, "sender", "export", "--all", "--out", str(out)))
    declared = campaigns.load_campaigns(sender.config)
    found: dict[str, dict[str, str]] = {name: {} for name in CAMPAIGNS}
    for campaign in declared.values():
        for step in campaign.steps:
            pattern = re.escape(campaign.file_name.format(prefix=step.file_prefix, ts="TS")).replace(
                "TS", r"\d{8}T\d{6}"
            )
            for path in out.iterdir():
                if re.fullmatch(pattern, path.name):
                    with path.open(newline="") as handle:
                        for row in csv.DictReader(handle):
                            assert row["user_id"] not in found[campaign.name], "a user in two files of a campaign"
                            found[campaign.name][row["user_id"]] = step.name
    return found


def live_run(sender, campaign: str, run_key: str, *args: str) -> int:
    assert_ok(sender.run(campaign, "--mode", "live", "--run-key", run_key, "--allow-large", *args))
    return sender.query("select run_id from {runs} where run_key = %s and campaign = %s", run_key, campaign)[0][
        "run_id"
    ]


def explained(sender, db, user_ids: list[str], run_id: int | None = None) -> dict[str, dict]:
    declared = [campaigns.find_campaign(sender.config, name) for name in CAMPAIGNS]
    return explain.explain(db, sender.config, declared, user_ids, run_id)


def by_campaign(explanation: dict) -> dict[str, dict]:
    return {item["campaign"]: item for item in explanation["campaigns"]}


def users_with_one_token(db, step: str) -> list[str]:
    return sorted(u for u, ts in tokens_of(db, [r["user_id"] for r in audience(db, step)]).items() if len(ts) == 1)


# --- every user of the sample data ----------------------------------------------------------------------


def test_explain_agrees_with_the_files_the_ledger_and_the_source_for_every_user(sender, db, tmp_path):
    files = exported(sender, tmp_path)
    runs = {name: live_run(sender, name, "explain-all") for name in CAMPAIGNS}
    users = [
        row[0] for row in db.execute(sql.SQL("select id::text from {}").format(sql.Identifier(SOURCE_SCHEMA, "users")))
    ]
    stranger = str(uuid.uuid4())
    result = explained(sender, db, [*users, stranger])

    ledger_rows: dict[tuple[str, str], set] = {}
    for row in sender.query(
        "select r.campaign, d.user_id::text as user_id, d.step, d.token, d.status, d.fcm_message_id"
        " from {deliveries} d join {runs} r using (run_id) where r.mode = 'live'"
    ):
        key = (row["campaign"], row["user_id"])
        ledger_rows.setdefault(key, set()).add(
            (row["step"], row["token"] or None, row["status"], row["fcm_message_id"])
        )
    received = {(m["token"], m["name"]) for m in sender.emulator.delivered()}
    source = {
        str(row[0]): row[1:]
        for row in db.execute(
            sql.SQL("select id, deleted_at, first_name, created_at from {}").format(
                sql.Identifier(SOURCE_SCHEMA, "users")
            )
        )
    }
    as_of = datetime.fromisoformat(AS_OF)

    counts = {"included": 0, "excluded": 0, "sent": 0}
    for user in users:
        for name, item in by_campaign(result[user]).items():
            side, delivery = item["audience"], item["delivery"]
            step = files[name].get(user)
            if step:  # in the file: included in the same step, and explained as such
                assert (side["outcome"], side["step"]) == ("included", step), f"{name} {user}: {side}"
            else:
                assert side["outcome"] == "excluded" and side["step"] is None, f"{name} {user}: {side}"
            counts[side["outcome"]] += 1
            assert side["reason"] and side["reason_code"]
            assert delivery["run"]["run_id"] == runs[name]
            shown = {(m["step"], m["token"], m["status"], m["fcm_message_id"]) for m in delivery["messages"]}
            assert shown == ledger_rows.get((name, user), set()), f"{name} {user}: explain differs from the ledger"
            assert {m["step"] for m in delivery["messages"]} == ({step} if step else set())
            for message in delivery["messages"]:
                if message["status"] == "sent":
                    assert (message["token"], message["fcm_message_id"]) in received, "not what FCM answered"
                    assert message["fcm_message_id"] in message["text"]
                    counts["sent"] += 1
            if not step:
                assert delivery["summary"] == "no message: not in the audience"
        # Layer 5's reasons, read again from the source rows
        side = by_campaign(result[user])[L5]["audience"]
        deleted_at, first_name, created_at = source[user]
        if side["outcome"] == "excluded":
            expected = (
                "deleted"
                if deleted_at != 0
                else "no_first_name"
                if first_name is None
                else "signed_up_too_recently"
                if created_at > as_of - timedelta(hours=12)
                else "signed_up_too_long_ago"
            )
            assert side["reason_code"] == expected, f"{user}: {side}"
            if expected == "signed_up_too_long_ago":
                days = (as_of - created_at) / timedelta(days=1)
                shown = re.match(r"signed up ([0-9.]+) days ago, outside the sign-up window", side["reason"])
                assert shown and abs(float(shown[1]) - days) <= 0.051, side["reason"]
                assert created_at < as_of - timedelta(days=14)
    for name in (L3, L2):  # the demand filter's numbers agree with its threshold
        for user in users:
            side = by_campaign(result[user])[name]["audience"]
            details = side["details"]
            if side["reason_code"] == "below_demand_threshold":
                count = details["demand_count"] if name == L3 else details["wishlist_count"]
                assert count < details["demand_threshold"]
                assert f"that variant: {count} " in side["reason"]
                assert f"at least {details['demand_threshold']} needed" in side["reason"]
            elif side["outcome"] == "included":
                count = details["demand_count"] if name == L3 else details["wishlist_count"]
                assert count >= details["demand_threshold"]
    assert by_campaign(result[stranger])[L3]["audience"]["outcome"] == "not a candidate"
    assert counts["included"] == sum(len(f) for f in files.values()) and counts["excluded"] and counts["sent"]


# --- the CLI's words ------------------------------------------------------------------------------------------


def test_an_included_user_who_was_sent_the_push(sender, db):
    user = users_with_one_token(db, "closet-adders")[0]
    run_id = live_run(sender, L3, "sent", "--step", "closet-adders")
    row = sender.query("select fcm_message_id, updated_at from {deliveries} where user_id = %s", user)[0]

    result = explain_cli(sender, user, "--campaign", L3)
    assert_ok(result)
    assert "layer3-behavior (layer 3)" in result.stdout and "layer2-trending" not in result.stdout
    assert "included in step closet-adders (file recent-closet-adders)" in result.stdout
    assert f"run {run_id} (live, key sent, succeeded" in result.stdout
    sent_at = row["updated_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert f"closet-adders: sent at {sent_at}, FCM message id {row['fcm_message_id']}" in result.stdout

    document = json.loads(explain_cli(sender, user, "--json").stdout)
    items = by_campaign(document)
    assert document["user_id"] == user and set(items) == set(CAMPAIGNS)
    assert items[L3]["delivery"]["messages"][0]["fcm_message_id"] == row["fcm_message_id"]
    assert items[L2]["delivery"] == {"run": None, "messages": [], "summary": "no live run of this campaign yet"}


def test_a_user_dropped_by_the_demand_filter_shows_the_count_and_the_threshold(sender, db):
    found = db.execute(
        sql.SQL(
            "select user_id::text, variant_id, activity_type from {} where reason_code = 'below_demand_threshold'"
            " order by user_id limit 1"
        ).format(sql.Identifier(AUDIENCE_SCHEMA, "layer3_decisions"))
    ).fetchone()
    assert found, "the sample data has users whose kept activity lacks demand"
    user, variant, activity = found
    # the count, independently: open-for-trade items (closet: live wishlist items) of that variant by live users
    table, condition = (
        ("wishlist_items", "i.deleted_at = 0")
        if activity == "closet_add"
        else ("inventory_items", "i.status = 'OPEN_FOR_TRADE'")
    )
    count = db.execute(
        sql.SQL(
            "select count(*) from {} i join {} u on u.id = i.user_id"
            " where i.product_variant_id = %s and u.deleted_at = 0 and "
        ).format(sql.Identifier(SOURCE_SCHEMA, table), sql.Identifier(SOURCE_SCHEMA, "users"))
        + sql.SQL(condition),
        (variant,),
    ).fetchone()[0]
    threshold = 2 if activity == "closet_add" else 3

    result = explain_cli(sender, user, "--campaign", L3)
    assert_ok(result)
    assert count < threshold
    assert "excluded: dropped by the demand filter" in result.stdout
    assert f"that variant: {count} " in result.stdout and f"at least {threshold} needed" in result.stdout


def test_a_user_capped_by_a_rule_shows_the_rule_and_until_when(sender, db):
    user = users_with_one_token(db, "wishlist-adders")[0]
    first = live_run(sender, L3, "first", "--step", "wishlist-adders")
    second = live_run(sender, L3, "second", "--step", "wishlist-adders")  # within 72 hours: capped
    [skipped] = sender.query("select * from {deliveries} where run_id = %s and user_id = %s", second, user)
    assert skipped["status"] == "cadence_skipped" and skipped["cadence_rules"] == [L3_RULE]
    [earlier] = sender.query("select at from {notifications} where user_id = %s and run_id = %s", user, first)
    until = (earlier["at"] + timedelta(hours=72)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    result = explain_cli(sender, user, "--campaign", L3)  # the latest live run: the second
    assert_ok(result)
    assert f"run {second} (live, key second" in result.stdout
    assert f"wishlist-adders: not sent: capped by {L3_RULE} (at most 1 per 72 h, layer 3;" in result.stdout
    assert f"until {until}" in result.stdout
    document = json.loads(explain_cli(sender, user, "--campaign", L3, "--json").stdout)
    [cap] = document["campaigns"][0]["delivery"]["messages"][0]["cadence"]
    assert cap["rule"] == L3_RULE and [e["run_id"] for e in cap["counted"]] == [first]

    earlier_run = explain_cli(sender, user, "--run", str(first))  # --run: that run, its campaign only
    assert_ok(earlier_run)
    assert f"run {first} (live, key first" in earlier_run.stdout and "wishlist-adders: sent at" in earlier_run.stdout
    assert "layer5-waterfall" not in earlier_run.stdout


def test_a_slot_given_up_to_a_higher_priority_campaign_names_it(sender, db):
    user = next(iter(r["user_id"] for r in audience(db, "top2-10")))
    ledger = Ledger(db, sender.schema)
    run = ledger.start_run(L2, 2, "live", "given-up", 20)
    sender.query(
        "insert into {deliveries} (run_id, step, user_id, token, status, cadence_rules, cadence_winner)"
        " values (%s, 'top2-10', %s, '', 'cadence_skipped', %s, %s)",
        run.run_id, user, [WEEKLY_RULE], L3,
    )  # fmt: skip
    result = explain_cli(sender, user, "--campaign", L2)
    assert_ok(result)
    assert f"top2-10: not sent: capped by {WEEKLY_RULE} (at most 2 per 168 h, layer 2 and 3;" in result.stdout
    assert "gave its slot up to the higher-priority campaign layer3-behavior" in result.stdout


def test_no_token_and_invalid_tokens(sender, db):
    step = "top2-10"
    no_token = sorted(u for u, ts in tokens_of(db, [r["user_id"] for r in audience(db, step)]).items() if not ts)
    marked, refused = users_with_one_token(db, step)[:2]
    [marked_token] = tokens_of(db, [marked])[marked]
    [refused_token] = tokens_of(db, [refused])[refused]
    sender.query("insert into {invalid_tokens} (token, reason) values (%s, 'UNREGISTERED')", marked_token)
    sender.emulator.configure({"tokens": {refused_token: "UNREGISTERED"}})
    live_run(sender, L2, "tokens", "--step", step)

    if no_token:
        result = explain_cli(sender, no_token[0], "--campaign", L2)
        assert_ok(result)
        assert "top2-10: not sent: no device token\n" in result.stdout + "\n"
    result = explain_cli(sender, marked, "--campaign", L2)
    assert_ok(result)
    assert f"top2-10: not sent: no device token: token …{marked_token[-6:]} marked invalid at" in result.stdout
    assert "(UNREGISTERED)" in result.stdout
    result = explain_cli(sender, refused, "--campaign", L2)
    assert_ok(result)
    assert f"top2-10: not sent: token …{refused_token[-6:]} is invalid (" in result.stdout


def test_not_a_candidate_outside_the_window_and_bad_input(sender, db):
    stranger = str(uuid.uuid4())
    result = explain_cli(sender, stranger)
    assert_ok(result)
    assert result.stdout.count("not a candidate: no such user in the source data of this build") == 3
    assert result.stdout.count("no live run of this campaign yet") == 3

    old = db.execute(
        sql.SQL(
            "select id::text, created_at from {} where deleted_at = 0 and first_name is not null"
            " and created_at < %s::timestamptz - interval '14 days' order by created_at desc limit 1"
        ).format(sql.Identifier(SOURCE_SCHEMA, "users")),
        (AS_OF,),
    ).fetchone()
    days = (datetime.fromisoformat(AS_OF) - old[1]) / timedelta(days=1)
    result = explain_cli(sender, old[0], "--campaign", L5)
    assert_ok(result)
    shown = re.search(r"excluded: signed up ([0-9.]+) days ago, outside the sign-up window \(12 hours to 14 days ago\)",
                      result.stdout)  # fmt: skip
    assert shown and abs(float(shown[1]) - days) <= 0.051, result.stdout

    for args, message in [
        (("not-a-uuid",), "USER_ID 'not-a-uuid' is not a UUID"),
        ((stranger, "--run", "987654"), "no run 987654 in the ledger"),
        ((stranger, "--campaign", "nope"), "unknown campaign 'nope'"),
    ]:
        result = explain_cli(sender, *args)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.fixture
def no_ledger_env(sender, db):
    """The same environment, with a ledger schema nobody created."""
    schema = f"{sender.schema}_none"
    yield {**sender.env, "SENDER_SCHEMA": schema}
    db.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))


def test_without_a_ledger_the_audience_side_is_still_explained(sender, no_ledger_env, db):
    user = audience(db, "closet-adders")[0]["user_id"]
    result = run_cli(no_ledger_env, "sender", "explain", user, "--campaign", L3)
    assert_ok(result)
    assert "included in step closet-adders" in result.stdout and "no ledger in schema" in result.stdout
    with psycopg.connect(autocommit=True) as conn:
        assert conn.execute("select to_regnamespace(%s)", (no_ledger_env["SENDER_SCHEMA"],)).fetchone()[0] is None
