"""`sender cadence import` and `sender cadence check` (DELIVERY.md, "Cadence"): the real CLI in subprocesses,
a real PostgreSQL, the rules seed built by dbt into pytest_audiences, and a ledger schema of each test's own.

Window rule (as at send time): a notification counts while `at > now - window_hours`; one exactly
window_hours old no longer does. Default rules: layer3_once_per_72h, layers_2_3_twice_per_week (2 in 168 h).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from sender import cadence, campaigns
from sender.ledger import Ledger
from tests import sending
from tests.conftest import AUDIENCE_SCHEMA, run_cli

L3_RULE, COMBINED = "layer3_once_per_72h", "layers_2_3_twice_per_week"
_schemas = itertools.count()


@dataclasses.dataclass
class Cadence:
    env: dict[str, str]
    schema: str
    db: psycopg.Connection
    folder: Path

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return run_cli(self.env, "sender", "cadence", *args)

    def csv(self, text: str, name: str = "history.csv") -> str:
        path = self.folder / name
        path.write_text(text)
        return str(path)

    def history(self) -> set[tuple[str, int, str, datetime]]:
        query = sql.SQL("select user_id::text, layer, campaign, sent_at from {}").format(
            sql.Identifier(self.schema, "history")
        )
        return {tuple(row) for row in self.db.execute(query)}

    def check(self, user_id: str, *args: str) -> dict:
        result = self.run("check", user_id, "--json", *args)
        assert_ok(result)
        return json.loads(result.stdout)


@pytest.fixture
def cad(built, db, tmp_path):
    schema = f"pytest_cadence_{os.getpid()}_{next(_schemas)}"
    db.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))
    Ledger(db, schema).migrate()
    yield Cadence({**built, "SENDER_SCHEMA": schema}, schema, db, tmp_path)
    db.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))


def assert_ok(result: subprocess.CompletedProcess, code: int = 0) -> None:
    assert result.returncode == code, f"exit {result.returncode}, expected {code}:\n{result.stdout}\n{result.stderr}"


def user() -> str:
    return str(uuid.uuid4())


def ago(**delta) -> datetime:
    return datetime.now(UTC) - timedelta(**delta)


def rule(report: dict, name: str) -> dict:
    return next(r for r in report["rules"] if r["name"] == name)


def verdict(report: dict, layer: int) -> dict:
    return next(v for v in report["layers"] if v["layer"] == layer)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- import ---------------------------------------------------------------------------------------------


def test_import_is_idempotent_and_reports_what_it_added(cad):
    a, b = user(), user()
    t1, t2 = ago(hours=5, microseconds=123), ago(days=3)
    path = cad.csv(f"user_id,sent_at,layer\n{a},{t1.isoformat()},3\n{b},{t2.isoformat()},\n\n{a},{t2.isoformat()},5\n")
    result = cad.run("import", path, "--layer", "2")
    assert_ok(result)
    assert result.stdout.strip() == f"{path}: 3 rows read, 3 imported, 0 already present"
    expected = {(a, 3, "", t1), (b, 2, "", t2), (a, 5, "", t2)}  # an empty layer cell takes --layer
    assert cad.history() == expected

    again = cad.run("import", path, "--layer", "2")
    assert_ok(again)
    assert again.stdout.strip() == f"{path}: 3 rows read, 0 imported, 3 already present"
    assert cad.history() == expected

    # the same instant written in another zone is the same notification; a new one is added
    c = user()
    other = cad.csv(
        f"sent_at,user_id\n{t1.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%f')}-00:00,{a}\n"
        f"{(t2 + timedelta(hours=1)).isoformat().replace('+00:00', 'Z')},{c}\n",
        "other.csv",
    )
    result = cad.run("import", other, "--layer", "3")
    assert_ok(result)
    assert "2 rows read, 1 imported, 1 already present" in result.stdout
    assert cad.history() == expected | {(c, 3, "", t2 + timedelta(hours=1))}


def test_import_with_a_campaign_records_its_name_and_layer(cad):
    a = user()
    path = cad.csv(f"user_id,sent_at\n{a},{ago(hours=1).isoformat()}\n")
    assert_ok(cad.run("import", path, "--campaign", "generate_layer_3_push_csvs"))  # an old script id
    assert [(row[1], row[2]) for row in cad.history()] == [(3, "layer3-behavior")]

    wrong_layer = cad.csv(f"user_id,sent_at,layer\n{a},{ago(hours=2).isoformat()},2\n")
    result = cad.run("import", wrong_layer, "--campaign", "layer3-behavior")
    assert_ok(result, 2)
    assert "line 2: layer 2 is not the layer of campaign layer3-behavior (3)" in result.stderr

    for args, message in [
        (("--campaign", "no-such-campaign"), "unknown campaign 'no-such-campaign'"),
        (("--campaign", "layer3-behavior", "--layer", "2"), "--layer 2 is not the layer of campaign layer3-behavior"),
        (("--layer", "4"), "--layer 4 is not the layer of any campaign (layers: 2, 3, 5)"),
    ]:
        result = cad.run("import", path, *args)
        assert_ok(result, 2)
        assert message in result.stderr and "Traceback" not in result.stderr
    assert len(cad.history()) == 1


def test_bad_rows_are_listed_with_line_numbers_and_nothing_is_imported(cad):
    good, future = user(), datetime.now(UTC) + timedelta(hours=1)
    lines = [
        "user_id,sent_at,layer",
        f"{good},{ago(hours=1).isoformat()},3",  # 2: fine
        f"not-a-uuid,{ago(hours=1).isoformat()},3",  # 3
        f",{ago(hours=1).isoformat()},3",  # 4
        f"{good},yesterday,3",  # 5
        f"{good},2026-11-20 18:00:00,3",  # 6: no zone
        f"{good},{future.isoformat()},3",  # 7
        f"{good},{ago(hours=1).isoformat()},4",  # 8: a layer of no campaign
        f"{good},{ago(hours=1).isoformat()},three",  # 9
        f"{good},{ago(hours=1).isoformat()}",  # 10: a field missing
        f"{good[:-1]},2026-02-30T00:00:00Z,7",  # 11: several problems in one row
        f"{user()},{ago(hours=2).isoformat()},2",  # 12: fine
    ]
    result = cad.run("import", cad.csv("\n".join(lines) + "\n"))
    assert_ok(result, 2)
    err = result.stderr
    assert "9 of 11 rows are bad, nothing imported" in err
    assert "line 2:" not in err and "line 12:" not in err
    assert "line 3: user_id 'not-a-uuid' is not a UUID" in err
    assert "line 4: user_id is empty" in err
    assert "line 5: sent_at 'yesterday' is not an ISO 8601 time" in err
    assert "line 6: sent_at '2026-11-20 18:00:00' has no time zone" in err
    assert f"line 7: sent_at '{future.isoformat()}' is in the future" in err
    assert "line 8: layer 4 is not the layer of any campaign (layers: 2, 3, 5)" in err
    assert "line 9: layer 'three' is not a number" in err
    assert "line 10: 2 fields, the header has 3" in err
    assert f"line 11: user_id '{good[:-1]}' is not a UUID; sent_at '2026-02-30T00:00:00Z' is not an ISO 8601" in err
    assert "layer 7 is not the layer of any campaign" in err
    assert "Traceback" not in err
    assert cad.history() == set()


def test_many_bad_rows_show_the_first_ten(cad):
    rows = [f"{user()},{ago(hours=1).isoformat()}" for _ in range(5)]
    rows += [f"bad-{n},{ago(hours=1).isoformat()}" for n in range(25)]
    result = cad.run("import", cad.csv("user_id,sent_at\n" + "\n".join(rows) + "\n"), "--layer", "3")
    assert_ok(result, 2)
    listed = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("line ")]
    assert [line.split(":")[0] for line in listed] == [f"line {n}" for n in range(7, 17)]
    assert "25 of 30 rows are bad" in result.stderr and "and 15 more" in result.stderr
    assert cad.history() == set()


def test_files_without_the_columns_or_rows_are_refused(cad):
    a, when = user(), ago(hours=1).isoformat()
    for text, args, message in [
        ("", (), "is empty"),
        ("\n\n", ("--layer", "3"), "is empty"),
        ("user_id,sent_at,layer\n", (), "has a header but no rows"),
        (f"user_id,layer\n{a},3\n", (), "missing column sent_at"),
        (f"id,sent_at,layer\n{a},{when},3\n", (), "missing column user_id"),
        (f"user_id,sent_at\n{a},{when}\n", (), "missing column layer (or give --layer)"),
        (f"user_id,sent_at,user_id\n{a},{when},{a}\n", ("--layer", "3"), "column user_id appears more than once"),
    ]:
        result = cad.run("import", cad.csv(text), *args)
        assert_ok(result, 2)
        assert message in result.stderr, (text, result.stderr)
        assert "Traceback" not in result.stderr
    missing = cad.run("import", str(cad.folder / "nope.csv"), "--layer", "3")
    assert_ok(missing, 2)
    assert "cannot read" in missing.stderr and "No such file" in missing.stderr
    assert cad.history() == set()


def test_a_large_file_is_streamed_and_all_or_nothing(cad):
    n, base = 300_000, ago(days=1)
    body = "".join(f"{uuid.UUID(int=i + 1)},{(base - timedelta(seconds=i)).isoformat()}\n" for i in range(n))
    path = cad.csv("user_id,sent_at\n" + body)
    result = cad.run("import", path, "--layer", "2")
    assert_ok(result)
    assert f"{n:,} rows read, {n:,} imported, 0 already present" in result.stdout
    count = sql.SQL("select count(*) from {}").format(sql.Identifier(cad.schema, "history"))
    assert cad.db.execute(count).fetchone()[0] == n

    # one bad row at the very end of another big file: none of its rows arrive
    bad = cad.csv("user_id,sent_at\n" + body.replace(str(uuid.UUID(int=1)), str(uuid.UUID(int=n + 1))) + "x,y\n")
    result = cad.run("import", bad, "--layer", "3")
    assert_ok(result, 2)
    assert f"line {n + 2}: user_id 'x' is not a UUID" in result.stderr
    assert cad.db.execute(count).fetchone()[0] == n


# --- check ----------------------------------------------------------------------------------------------


def test_check_refuses_an_id_that_is_not_a_uuid_and_unknown_layers(cad):
    result = cad.run("check", "12345")
    assert_ok(result, 2)
    assert result.stderr.strip().splitlines() == ["error: '12345' is not a user id (a UUID such as "
                                                 "0b9d6c2e-1f4a-4c1e-9a57-6d0f2a8e3b01)"]  # fmt: skip
    result = cad.run("check", user(), "--layer", "4")
    assert_ok(result, 2)
    assert "--layer 4 is not the layer of any campaign" in result.stderr


def test_window_edges_of_the_layer3_rule_and_from_when(cad):
    inside, outside = user(), user()
    t_in, t_out = ago(hours=71, minutes=59), ago(hours=72, minutes=1)
    path = cad.csv(f"user_id,sent_at\n{inside},{t_in.isoformat()}\n{outside},{t_out.isoformat()}\n")
    assert_ok(cad.run("import", path, "--layer", "3"))

    report = cad.check(inside, "--layer", "3")
    assert report["caps"] is True and report["layer"] == 3
    assert {r["name"] for r in report["rules"]} == {L3_RULE, COMBINED}  # both limit layer 3
    layer3 = rule(report, L3_RULE)
    assert (layer3["count"], layer3["max_count"], layer3["blocks"]) == (1, 1, True)
    assert at(layer3["allowed_from"]) == t_in + timedelta(hours=72)  # exactly when it turns 72 h old
    [note] = layer3["notifications"]
    assert (at(note["at"]), note["layer"], note["campaign"], note["step"], note["status"]) == (
        t_in, 3, None, None, "delivered"
    )  # fmt: skip
    assert (rule(report, COMBINED)["count"], rule(report, COMBINED)["blocks"]) == (1, False)
    assert verdict(report, 3) == {
        "layer": 3,
        "may_send": False,
        "allowed_from": layer3["allowed_from"],
        "blocked_by": [L3_RULE],
        "rules": [L3_RULE, COMBINED],
    }
    assert [v["layer"] for v in report["layers"]] == [3]

    report = cad.check(outside, "--layer", "3")
    assert rule(report, L3_RULE)["count"] == 0 and rule(report, L3_RULE)["notifications"] == []
    assert rule(report, COMBINED)["count"] == 1  # still inside 168 h
    assert verdict(report, 3)["may_send"] is True and verdict(report, 3)["allowed_from"] is None

    text = cad.run("check", inside)
    assert_ok(text)
    free = t_in + timedelta(hours=72)
    until = (free + timedelta(microseconds=(1_000_000 - free.microsecond) % 1_000_000)).strftime("%Y-%m-%d %H:%M:%S")
    assert f"layer 3: blocked by {L3_RULE} until {until} UTC" in text.stdout
    assert f"layer 2: may be sent now (within {COMBINED})" in text.stdout
    assert "layer 5: may be sent now (no active rule limits it)" in text.stdout
    assert f"rule {L3_RULE}: layer 3 pushes, at most 1 of layer 3 in 72 h: 1 of 1, blocks until" in text.stdout
    assert f"{t_in.strftime('%Y-%m-%d %H:%M:%S')} UTC  layer 3  imported history  delivered" in text.stdout


def test_the_combined_rule_counts_layers_2_and_3_together(cad):
    two, three = user(), user()
    t_old, t_mid, t_new = ago(hours=100), ago(hours=90), ago(hours=80)
    path = cad.csv(
        f"user_id,sent_at,layer\n{two},{t_old.isoformat()},2\n{two},{t_new.isoformat()},3\n"
        f"{three},{t_old.isoformat()},2\n{three},{t_mid.isoformat()},2\n{three},{t_new.isoformat()},5\n"
        f"{three},{ago(hours=170).isoformat()},3\n"
    )
    assert_ok(cad.run("import", path))

    report = cad.check(two)
    combined = rule(report, COMBINED)
    assert (combined["count"], combined["max_count"], combined["blocks"]) == (2, 2, True)
    assert at(combined["allowed_from"]) == t_old + timedelta(hours=168)
    assert [n["layer"] for n in combined["notifications"]] == [2, 3]  # oldest first
    assert rule(report, L3_RULE)["count"] == 0  # 80 h ago: outside 72 h
    for layer in (2, 3):
        assert verdict(report, layer)["blocked_by"] == [COMBINED]
        assert at(verdict(report, layer)["allowed_from"]) == t_old + timedelta(hours=168)
    assert verdict(report, 5) == {"layer": 5, "may_send": True, "allowed_from": None, "blocked_by": [], "rules": []}

    # the layer 5 push does not count, the layer 3 one 170 h ago is outside the week
    report = cad.check(three, "--layer", "2")
    assert [r["name"] for r in report["rules"]] == [COMBINED]  # the layer 3 rule does not limit layer 2
    assert [at(n["at"]) for n in rule(report, COMBINED)["notifications"]] == [t_old, t_mid]
    assert at(verdict(report, 2)["allowed_from"]) == t_old + timedelta(hours=168)


def test_over_the_maximum_the_count_drops_below_it_when_enough_have_left(cad):
    a = user()
    times = [ago(hours=h) for h in (150, 120, 30)]
    assert_ok(cad.run("import", cad.csv("user_id,sent_at\n" + "".join(f"{a},{t.isoformat()}\n" for t in times)),
                      "--layer", "2"))  # fmt: skip
    report = cad.check(a, "--layer", "2")
    assert rule(report, COMBINED)["count"] == 3
    assert at(verdict(report, 2)["allowed_from"]) == times[1] + timedelta(hours=168)  # 3 - 2 + 1 = 2nd oldest


def test_live_sends_and_reservations_count_test_sends_do_not(cad):
    a = user()
    ledger = Ledger(cad.db, cad.schema)
    live = ledger.start_run("layer3-behavior", 3, "live", "k1", 10).run_id
    later = ledger.start_run("layer2-trending", 2, "live", "k2", 5).run_id
    test = ledger.start_run("layer2-trending", 2, "test-live", "k3").run_id
    sent_at, queued_at = ago(hours=10), ago(hours=1)
    rows = [
        (live, "offer-creators", "tok-1", "sent", sent_at, "projects/p/messages/1"),
        (live, "offer-creators", "tok-2", "failed", sent_at, None),  # one notification per user and step
        (later, "top1", "tok-1", "queued", queued_at, None),
        (test, "top1", "tok-1", "sent", queued_at, "projects/p/messages/2"),
    ]
    deliveries = sql.Identifier(cad.schema, "deliveries")
    for run_id, step, token, status, when, message_id in rows:
        cad.db.execute(
            sql.SQL(
                "insert into {} (run_id, step, user_id, token, status, updated_at, fcm_message_id)"
                " values (%s, %s, %s, %s, %s, %s, %s)"
            ).format(deliveries),
            (run_id, step, a, token, status, when, message_id),
        )
    report = cad.check(a)
    notes = rule(report, COMBINED)["notifications"]
    assert [(n["campaign"], n["step"], n["run_id"], n["status"], n["fcm_message_id"]) for n in notes] == [
        ("layer3-behavior", "offer-creators", live, "delivered", "projects/p/messages/1"),
        ("layer2-trending", "top1", later, "reserved", None),
    ]
    assert at(notes[0]["at"]) == sent_at
    assert verdict(report, 3)["blocked_by"] == [L3_RULE, COMBINED]
    assert at(verdict(report, 3)["allowed_from"]) == sent_at + timedelta(hours=168)
    text = cad.run("check", a, "--layer", "2")
    assert_ok(text)
    assert f"layer3-behavior/offer-creators (run {live})  delivered" in text.stdout
    assert f"layer2-trending/top1 (run {later})  reserved" in text.stdout


def test_inactive_rules_are_ignored_and_no_rules_means_no_caps(cad):
    """On a copy of the built seed in the test's own schema (the CLI reads the project's, shared by every test)."""
    declared = list(campaigns.load_campaigns(sending.test_config()).values())
    assert {c.cadence_rules for c in declared} == {(AUDIENCE_SCHEMA, "cadence_rules")}
    a = user()
    assert_ok(cad.run("import", cad.csv(f"user_id,sent_at\n{a},{ago(hours=2).isoformat()}\n"), "--layer", "3"))
    copy = (cad.schema, "rules_copy")
    cad.db.execute(
        sql.SQL("create table {} as select * from {}").format(
            sql.Identifier(*copy), sql.Identifier(AUDIENCE_SCHEMA, "cadence_rules")
        )
    )
    check = lambda: cadence.check_user(cad.db, cad.schema, declared, a, 3, rules=copy)  # noqa: E731
    assert verdict(check(), 3)["blocked_by"] == [L3_RULE]

    cad.db.execute(sql.SQL("update {} set active = false where name = %s").format(sql.Identifier(*copy)), (L3_RULE,))
    report = check()
    assert [r["name"] for r in report["rules"]] == [COMBINED]
    assert verdict(report, 3) == {"layer": 3, "may_send": True, "allowed_from": None, "blocked_by": [],
                                  "rules": [COMBINED]}  # fmt: skip

    cad.db.execute(sql.SQL("update {} set active = false").format(sql.Identifier(*copy)))
    report = check()
    assert report["caps"] is False and report["reason"] == f"{cad.schema}.rules_copy has no active rule"
    assert "no frequency caps apply" in cadence.render(report)

    cad.db.execute(sql.SQL("drop table {}").format(sql.Identifier(*copy)))
    report = check()
    assert report["caps"] is False and "does not exist (run `dbt seed`)" in report["reason"]
    no_seed = [dataclasses.replace(c, cadence_rules=None) for c in declared]
    report = cadence.check_user(cad.db, cad.schema, no_seed, a)
    assert report == {"user_id": a, "layer": None, "caps": False, "reason": "the dbt project has no cadence_rules seed"}
