"""DELIVERY.md, "Failures and recovery": every fault is classified, recorded, and the recovery is the
same command again. Each test breaks a dependency on purpose (FCM's answers, credentials, tokens,
signals, the ledger's schema), then checks what was sent, what was recorded, and that the same
command recovers. The real CLI, a real PostgreSQL, the real firebase-admin and the FCM emulator.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
from psycopg import sql

from sender import send
from tests.conftest import AUDIENCE_SCHEMA, SOURCE_SCHEMA, run_cli
from tests.sending import (
    ALL_TEST_TOKENS,
    L2,
    L3,
    TABLES,
    assert_ok,
    audience,
    check_ledger_against_emulator,
    delivered_tokens,
    one_step,
    summary_row,
    tokens_of,
)


def statuses(sender, run_key: str) -> dict[str, int]:
    rows = sender.query(
        "select d.status, count(*) as n from {deliveries} d join {runs} r using (run_id)"
        " where r.run_key = %s group by d.status",
        run_key,
    )
    return {r["status"]: r["n"] for r in rows}


def run_record(sender, run_key: str) -> dict:
    return next(r for r in sender.runs() if r["run_key"] == run_key)


def step_tokens(db, step: str) -> set[str]:
    return {t for ts in tokens_of(db, [r["user_id"] for r in audience(db, step)]).values() for t in ts}


# --- systemic: the sender itself is refused ---------------------------------------------------------------


@pytest.mark.parametrize(
    "code", ["SENDER_ID_MISMATCH", "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", "PERMISSION_DENIED"]
)
def test_a_refused_sender_blacklists_nothing_and_the_same_command_finishes(sender, code):
    """Finding 1: a wrong project answered 403 to everything; every token was marked invalid."""
    sender.emulator.configure({"rates": {code: 1.0}})
    args = (L3, "--mode", "test-dry-run", "--run-key", "wrong-project")
    refused = sender.run(*args)
    assert_ok(refused, 7)
    assert code in refused.stderr and "Traceback" not in refused.stderr
    assert refused.stderr.count("error:") == 1
    assert sender.query("select * from {invalid_tokens}") == [], "a systemic refusal marked tokens invalid"
    assert sender.emulator.delivered() == []
    assert run_record(sender, "wrong-project")["status"] == "failed"
    assert code in run_record(sender, "wrong-project")["error"]
    assert set(statuses(sender, "wrong-project")) <= {"queued", "no_token"}, "nothing that never left is pending"

    sender.emulator.configure({"rates": {}})  # the configuration is fixed
    fixed = sender.run(*args)
    assert_ok(fixed)
    validated = [m["token"] for m in sender.emulator.messages() if m["status"] == 200 and m["token"] in ALL_TEST_TOKENS]
    assert sorted(validated) == sorted(list(ALL_TEST_TOKENS) * 3), "every test token validated once per step"
    assert statuses(sender, "wrong-project") == {"validated": 3 * len(ALL_TEST_TOKENS), "no_token": 3}
    assert run_record(sender, "wrong-project")["status"] == "succeeded"


def test_refusals_mid_send_stop_after_the_batches_in_flight_and_return_to_the_queue(sender, db):
    """The preflight passes, then FCM refuses some messages with SENDER_ID_MISMATCH: those and everything
    not yet handed over go back to `queued`; what was sent stays sent; no token is touched."""
    step = "closet-adders"
    tokens = sorted(step_tokens(db, step))
    refused = tokens[len(tokens) // 2]
    sender.emulator.configure({"tokens": {refused: "SENDER_ID_MISMATCH"}})
    args = (L3, "--mode", "live", "--step", step, "--run-key", "mid", "--batch-size", "5", "--workers", "2")
    stopped = sender.run(*args)
    assert_ok(stopped, 7)
    assert "SENDER_ID_MISMATCH" in stopped.stderr
    counts = statuses(sender, "mid")
    assert counts.get("queued", 0) >= 1 and "pending" not in counts and "failed" not in counts, counts
    assert counts.get("sent", 0) <= len(tokens) - 1
    assert sender.query("select * from {invalid_tokens}") == []
    rows, _ = check_ledger_against_emulator(sender, "mid")
    assert rows[(step, refused)]["status"] == "queued"

    sender.emulator.configure({"tokens": {}})
    assert_ok(sender.run(*args))
    rows, received = check_ledger_against_emulator(sender, "mid")
    assert all(r["status"] == "sent" for r in rows.values())
    assert received == dict.fromkeys(((step, t) for t in tokens), 1), "each message exactly once"


def test_unusable_credentials_are_systemic_and_nothing_is_left_unknown(sender, db):
    """Finding 3: GOOGLE_APPLICATION_CREDENTIALS=/nonexistent crashed the worker pool, leaving batches pending."""
    step = "wishlist-adders"
    args = (L3, "--mode", "live", "--step", step, "--run-key", "creds")
    broken = sender.run(*args, FCM_EMULATOR_HOST="", GOOGLE_APPLICATION_CREDENTIALS="/nonexistent/key.json")
    assert_ok(broken, 7)
    assert "cannot set up the FCM client" in broken.stderr and "/nonexistent/key.json" in broken.stderr
    assert "Traceback" not in broken.stderr and broken.stderr.count("error:") == 1
    assert "pending" not in statuses(sender, "creds") and statuses(sender, "creds").get("queued")
    assert "unknown" not in broken.stdout

    fixed = sender.run(*args)
    assert_ok(fixed)
    assert "may or may not" not in fixed.stderr and "unknown\t" not in fixed.stdout
    _, received = check_ledger_against_emulator(sender, "creds")
    assert received == dict.fromkeys(((step, t) for t in step_tokens(db, step)), 1)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1:notaport", "127.0.0.1:70000", "http://127.0.0.1:8085"])
def test_a_malformed_emulator_host_is_bad_input_before_anything_happens(sender, host):
    result = sender.run(L3, "--mode", "live", "--run-key", "host", FCM_EMULATOR_HOST=host)
    assert_ok(result, 2)
    assert "FCM_EMULATOR_HOST" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sender.runs() == []


# --- token and message errors ---------------------------------------------------------------------------


@pytest.fixture
def malformed_tokens(sender, db):
    """Malformed tokens in the app's table for four users of the closet-adders audience."""
    users = [r["user_id"] for r in audience(db, "closet-adders")][:4]
    tokens = ["", "   ", "tok\x07bell", "x" * 5000]
    table = sql.Identifier(SOURCE_SCHEMA, "device_tokens")
    for user_id, token in zip(users, tokens, strict=True):
        db.execute(
            sql.SQL(
                "insert into {} (id, user_id, token, platform, created_at, updated_at)"
                " values (%s, %s, %s, 'ios', now(), now())"
            ).format(table),
            (uuid.uuid4(), user_id, token),
        )
    yield dict(zip(tokens, users, strict=True))
    db.execute(sql.SQL("delete from {} where token = any(%s)").format(table), (tokens,))


def test_malformed_source_tokens_are_invalid_never_sent_never_a_crash(sender, db, malformed_tokens):
    """Finding 2: an empty token made firebase-admin raise in a worker, wedging the run."""
    step = "closet-adders"
    args = (L3, "--mode", "live", "--step", step, "--run-key", "bad-tokens")
    result = sender.run(*args)
    assert_ok(result)
    assert "Traceback" not in result.stderr
    rows = {(r["user_id"], r["token"]): r for r in sender.deliveries("bad-tokens")}
    for token, user_id in malformed_tokens.items():
        assert rows[(user_id, token)]["status"] == "invalid_token"
        assert rows[(user_id, token)]["error"].startswith("malformed token")
    sent_tokens = {m["token"] for m in sender.emulator.delivered()}
    assert not sent_tokens & set(malformed_tokens)
    assert sent_tokens == step_tokens(db, step) - set(malformed_tokens)
    marked = {r["token"] for r in sender.query("select token from {invalid_tokens}")}
    assert marked == set(malformed_tokens)
    assert summary_row(result.stderr, step)["invalid tokens"] == "4"
    assert run_record(sender, "bad-tokens")["status"] == "succeeded"


def test_a_payload_error_fails_the_message_and_leaves_the_token_alone(sender, db):
    step = "offer-creators"
    tokens = sorted(step_tokens(db, step))
    payload, token_error = tokens[0], tokens[1]
    sender.emulator.configure({"tokens": {payload: "INVALID_PAYLOAD", token_error: "INVALID_ARGUMENT"}})
    result = sender.run(L3, "--mode", "live", "--step", step, "--run-key", "payload")
    assert_ok(result, 6)
    rows = {r["token"]: r for r in sender.deliveries("payload")}
    assert rows[payload]["status"] == "failed" and "INVALID_ARGUMENT" in rows[payload]["error"]
    assert rows[token_error]["status"] == "invalid_token"
    assert {r["token"] for r in sender.query("select token from {invalid_tokens}")} == {token_error}
    assert len(sender.emulator.messages(payload)) == 1, "a definite refusal is not retried"


# --- a finished run never sends again; failed messages can be retried once -----------------------------


@pytest.fixture
def copied_audience(sender, db):
    """An empty copy of the closet-adders audience table in a schema of the test's own."""
    schema = f"{sender.schema}_audience"
    table = sql.Identifier(schema, TABLES["closet-adders"])
    db.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
    source = sql.Identifier(AUDIENCE_SCHEMA, TABLES["closet-adders"])
    db.execute(sql.SQL("create table {} as select * from {} with no data").format(table, source))
    yield schema, table, source
    db.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(schema)))


def test_a_succeeded_run_whose_step_was_empty_never_sends_it_later(sender, in_process, db, copied_audience):
    """Finding 4: an empty step had no ledger rows, so re-running the succeeded run sent it later."""
    schema, table, source = copied_audience
    campaign = one_step(L3, "closet-adders", schema=schema)
    first = in_process(campaign, "live", "was-empty")
    assert first.status == "succeeded" and first.steps[0].audience == 0
    db.execute(sql.SQL("insert into {} select * from {}").format(table, source))  # the audience fills up later
    again = in_process(campaign, "live", "was-empty")
    assert again.already_done and again.status == "succeeded" and again.steps[0].audience == 0
    assert sender.emulator.messages() == [], "a succeeded run sent again"
    assert sender.query("select * from {deliveries}") == []


def test_retry_failed_sends_the_failed_messages_once(sender, db):
    """Finding 5: `failed` was final; the only way out was a new run key, a second copy for everyone."""
    step = "wishlist-adders"
    tokens = sorted(step_tokens(db, step))
    storm = tokens[:3]
    sender.emulator.configure({"tokens": dict.fromkeys(storm, "UNAVAILABLE")})
    args = (L3, "--mode", "live", "--step", step, "--run-key", "storm")
    first = sender.run(*args)
    assert_ok(first, 6)
    assert statuses(sender, "storm") == {"failed": 3, "sent": len(tokens) - 3, **_no_token(sender, "storm")}

    again = sender.run(*args)  # without the flag: failed messages stay failed, nothing is re-sent
    assert_ok(again, 6)
    assert "--retry-failed" in again.stderr
    assert len(sender.emulator.delivered()) == len(tokens) - 3

    sender.emulator.configure({"tokens": {}})
    retried = sender.run(*args, "--retry-failed")
    assert_ok(retried)
    rows, received = check_ledger_against_emulator(sender, "storm")
    assert all(r["status"] == "sent" for r in rows.values())
    assert received == dict.fromkeys(((step, t) for t in tokens), 1), "no message was delivered twice"
    assert_ok(sender.run(*args, "--retry-failed"))
    assert len(sender.emulator.delivered()) == len(tokens), "a second --retry-failed has nothing to send"


def _no_token(sender, run_key: str) -> dict[str, int]:
    n = statuses(sender, run_key).get("no_token")
    return {"no_token": n} if n else {}


# --- push copy is sandboxed -----------------------------------------------------------------------------


def test_push_copy_cannot_run_code(sender, in_process, db, tmp_path):
    """Finding 6: a body reaching Python's globals ran a shell command, even from `sender validate`."""
    marker = tmp_path / "pwned"
    body = f"{{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}}"
    campaign = one_step(L3, "closet-adders", body=body)
    checks = send.validate_campaign(db, campaign)
    assert all(check.problems for check in checks) and "unsafe" in checks[0].problems[0]
    with pytest.raises(send.ValidationFailed, match="unsafe"):
        in_process(campaign, "test-live", "sandbox")
    sneaky = one_step(L3, "closet-adders", body="{{ '{0.__class__.__mro__}'.format(product_name) }}")
    result = in_process(sneaky, "live", "sneaky")
    assert result.steps[0].render_errors == result.steps[0].audience and "SecurityError" in str(
        result.steps[0].examples
    )
    assert not marker.exists()
    assert sender.emulator.delivered() == []


# --- one sender per campaign, whatever the ledger ------------------------------------------------------


def test_the_lock_holds_across_ledger_schemas(sender):
    """Finding 8: the same campaign with another SENDER_SCHEMA sent everything again."""
    sender.emulator.configure({"latency_ms": 200})
    command = (L2, "--mode", "live", "--step", "top1", "--run-key", "lock", "--batch-size", "5")
    first = sender.start(*command, capture=True)
    deadline = time.monotonic() + 60
    while not sender.emulator.messages():
        assert first.poll() is None and time.monotonic() < deadline, "the first sender did not start sending"
        time.sleep(0.01)
    other = f"{sender.schema}_other"
    second = sender.run(*command, SENDER_SCHEMA=other)
    assert_ok(second, 5)
    assert "another sender is already sending campaign layer2-trending" in second.stderr
    first.communicate(timeout=120)
    assert first.returncode == 0
    assert max(delivered_tokens(sender.emulator).values()) == 1
    sender.db.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(other)))


# --- signals --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_settles_what_is_with_fcm_and_the_same_command_resumes(sender, db, signum, code):
    """Finding 12: SIGTERM (a scheduler's timeout) was not handled; it now behaves like Ctrl-C."""
    step = "top2-10"
    sender.emulator.configure({"latency_ms": 30})
    args = (L2, "--mode", "live", "--step", step, "--run-key", "signal", "--batch-size", "10", "--allow-large")
    proc = sender.start(*args, capture=True)
    deadline = time.monotonic() + 60
    while len(sender.emulator.delivered()) < 25:
        assert proc.poll() is None and time.monotonic() < deadline, "the sender finished before the signal"
        time.sleep(0.005)
    os.kill(proc.pid, signum)  # the main process only, as a scheduler or a terminal does
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, f"{proc.returncode}\n{stdout}\n{stderr}"
    assert "Traceback" not in stderr and "run the same command to resume" in stderr
    counts = statuses(sender, "signal")
    assert "pending" not in counts, f"outcomes of batches already with FCM were lost: {counts}"
    assert counts.get("queued"), "the signal should have stopped the run before the end"
    assert run_record(sender, "signal")["status"] == "interrupted"
    check_ledger_against_emulator(sender, "signal")

    assert_ok(sender.run(*args))
    rows, received = check_ledger_against_emulator(sender, "signal")
    assert all(r["status"] == "sent" for r in rows.values())
    assert received == dict.fromkeys(((step, t) for t in step_tokens(db, step)), 1)


# --- bad input: one line, nothing recorded ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "variables", "message"),
    [
        (("--run-key", "k" * 300), {}, "--run-key must be"),
        (("--run-key", "bad\nkey"), {}, "--run-key must be"),
        (("--run-key", "ok"), {"SENDER_SCHEMA": "pg_ledger"}, "sender schema 'pg_ledger' is not usable"),
    ],
)
def test_bad_run_keys_and_schemas_are_one_line_errors(sender, args, variables, message):
    """Finding 11: an over-long run key was reported as "database connection lost"."""
    result = sender.run(L3, "--mode", "live", *args, **variables)
    assert_ok(result, 2)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sender.runs() == [] and sender.emulator.messages() == []


def test_help_shows_the_configuration_and_its_variables(sender):
    result = run_cli(sender.env, "sender", "--help")
    for variable in ("DBT_PROJECT_DIR", "DBT_TARGET_PATH", "SENDER_SCHEMA", "FCM_EMULATOR_HOST",
                     "GOOGLE_APPLICATION_CREDENTIALS"):  # fmt: skip
        assert variable in result.stdout, variable
    assert "--retry-failed" in run_cli(sender.env, "sender", "send", "--help").stdout


def test_a_model_missing_after_a_replace_is_a_one_line_error(sender, db, tmp_path):
    """Finding 11: `sample-data --replace --cascade` drops dbt's views; the sender then says what to run."""
    schema = f"{sender.schema}_models"
    db.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
    try:
        for table in ("layer3_offer_creators", "layer3_closet_adders", "layer3_wishlist_adders", "test_users",
                      "cadence_rules"):  # fmt: skip
            db.execute(
                sql.SQL("create table {} as select * from {}").format(
                    sql.Identifier(schema, table), sql.Identifier(AUDIENCE_SCHEMA, table)
                )
            )  # everything the campaign reads but the device tokens view
        env = {"DBT_SCHEMA": schema, "DBT_TARGET_PATH": str(tmp_path / "target")}
        result = sender.run(L3, "--mode", "live", "--run-key", "gone", **env)
        assert_ok(result, 2)
        assert "stg_tradeblock__device_tokens" in result.stderr and "dbt build" in result.stderr
        assert "Traceback" not in result.stderr and result.stderr.count("error:") == 1
        assert sender.emulator.messages() == []
    finally:
        db.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(schema)))
