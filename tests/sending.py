"""The harness of the sending tests (test_send.py, test_faults.py): the real CLI in a process group of
its own, a real PostgreSQL, the real firebase-admin SDK and the project's FCM emulator (no mocks).

Every test has a ledger schema of its own (SENDER_SCHEMA) and an emulator of its own, and checks both
sides: what the emulator received and what the ledger recorded. Registered as a pytest plugin in conftest.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import socket
import subprocess
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from sender import campaigns, config, send
from sender.fcm_emulator import EmulatorServer, serve
from sender.ledger import Ledger
from tests.conftest import AUDIENCE_SCHEMA, BIN, PROJECT_DIR, SOURCE_SCHEMA, TARGET_PATH, run_cli

L3, L2 = "layer3-behavior", "layer2-trending"
TABLES = {
    "offer-creators": "layer3_offer_creators",
    "closet-adders": "layer3_closet_adders",
    "wishlist-adders": "layer3_wishlist_adders",
    "top1": "layer2_trending_top1",
    "top2-10": "layer2_trending_top2_10",
}
# The push copy of each step, as written in models/marts/*/_layer*__models.yml.
COPY = {
    "offer-creators": (
        "Your offer is out there",
        "{inventory_count} traders have the {product_name} in size {relevant_variant_size}. "
        "Make more offers to land it.",
    ),
    "closet-adders": (
        "Your {product_name} is in demand",
        "{wishlist_count} traders want it in size {relevant_variant_size}. Open it for offers.",
    ),
    "wishlist-adders": (
        "{product_name} is up for trade",
        "{inventory_count} traders have it in size {relevant_variant_size}. Make an offer.",
    ),
    "top1": (
        "You own this week's #1 sneaker",
        "The {product_name} is the most traded shoe this week, and {wishlist_count} traders want your size "
        "{relevant_variant_size}.",
    ),
    "top2-10": (
        "Your {product_name} is trending",
        "It is {trending_rank} this week, and {wishlist_count} traders want it in size {relevant_variant_size}.",
    ),
}
ALEX, SAM, JORDAN = (  # seeds/test_users.csv
    "0b9d6c2e-1f4a-4c1e-9a57-6d0f2a8e3b01",
    "5c2e8f14-7a3b-4d6e-8b21-3e9a1c7d5f02",
    "9e4a1b37-2c5d-4f8a-a6e3-7b2d9f0c4e03",
)
TEST_TOKENS = {ALEX: ("qa-alex-phone", "qa-alex-tablet"), SAM: ("qa-sam-phone",)}  # Jordan has no token
ALL_TEST_TOKENS = {t for tokens in TEST_TOKENS.values() for t in tokens}
SUMMARY_COLUMNS = ("step", "audience", "cadence-skipped", "no token", "sent", "failed", "invalid tokens",
                   "not rendered", "unknown")  # fmt: skip
UNKNOWN_LINE = re.compile(r"unknown\t(\d+)\t([^\t]+)\t([^\t]+)\t([^\t]*)")
_schemas = itertools.count()


# --- fixtures and helpers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_tokens(built):
    """Device tokens for two of the three test users (the sample data has none for them)."""
    tokens = sorted(ALL_TEST_TOKENS)
    table = sql.Identifier(SOURCE_SCHEMA, "device_tokens")
    with psycopg.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("delete from {} where token = any(%s)").format(table), (tokens,))
        for user_id, user_tokens in TEST_TOKENS.items():
            for token in user_tokens:
                conn.execute(
                    sql.SQL(
                        "insert into {} (id, user_id, token, platform, created_at, updated_at)"
                        " values (%s, %s, %s, 'ios', now(), now())"
                    ).format(table),
                    (uuid.uuid4(), user_id, token),
                )
        yield TEST_TOKENS
        conn.execute(sql.SQL("delete from {} where token = any(%s)").format(table), (tokens,))


@pytest.fixture
def emulator(tmp_path):
    with serve(port=0, record_path=str(tmp_path / "fcm.jsonl")) as server:
        yield server


@dataclasses.dataclass
class Sender:
    """The CLI with this test's environment, and the ledger it writes."""

    env: dict[str, str]
    schema: str
    emulator: EmulatorServer
    db: psycopg.Connection
    config: config.Config

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return run_cli({**self.env, **env}, "sender", "send", *args)

    def start(self, *args: str, capture: bool = False, **env: str) -> subprocess.Popen:
        """A sender in a process group of its own (its workers too), so os.killpg reaches them all."""
        output = subprocess.PIPE if capture else subprocess.DEVNULL
        return subprocess.Popen([str(BIN / "sender"), "send", *args], env={**self.env, **env}, cwd=PROJECT_DIR,
                                stdout=output, stderr=output, text=True, start_new_session=True)  # fmt: skip

    def query(self, query: str, *params) -> list[dict]:
        text = sql.SQL(query).format(
            runs=sql.Identifier(self.schema, "runs"),
            deliveries=sql.Identifier(self.schema, "deliveries"),
            invalid_tokens=sql.Identifier(self.schema, "invalid_tokens"),
            history=sql.Identifier(self.schema, "history"),
            notifications=sql.Identifier(self.schema, "notifications"),
            scheduled_runs=sql.Identifier(self.schema, "scheduled_runs"),
        )
        with self.db.cursor(row_factory=dict_row) as cur:
            cur.execute(text, params)
            return cur.fetchall() if cur.description else []

    def deliveries(self, run_key: str) -> list[dict]:
        return self.query(
            "select r.run_id, r.campaign, d.step, d.user_id::text as user_id, d.token, d.status, d.title, d.body,"
            " d.data, d.fcm_message_id, d.error, d.cadence_rules, d.cadence_winner"
            " from {deliveries} d join {runs} r using (run_id) where r.run_key = %s"
            " order by d.step, d.user_id, d.token",
            run_key,
        )

    def runs(self) -> list[dict]:
        return self.query("select * from {runs} order by run_id")


def test_config(**changes) -> config.Config:
    """The Config the CLI resolves from the test environment (the pytest build's manifest)."""
    return config.resolve(PROJECT_DIR, TARGET_PATH, **changes)


@pytest.fixture
def sender(built, test_tokens, emulator, db):
    """A fresh ledger schema and the env (and Config, for in-process calls) that point at it."""
    schema = f"pytest_send_{os.getpid()}_{next(_schemas)}"
    db.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))
    Ledger(db, schema).migrate()
    env = {**built, "SENDER_SCHEMA": schema, "FCM_EMULATOR_HOST": emulator.emulator_host}
    env.pop("FIREBASE_PROJECT_ID", None)
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    yield Sender(env, schema, emulator, db, test_config(sender_schema=schema, fcm_emulator_host=emulator.emulator_host))
    db.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))


def audience(db, step: str) -> list[dict]:
    """The step's audience rows (values as JSON: text, numbers), in file order."""
    query = sql.SQL("select to_jsonb(a) - 'export_order' from {} as a order by export_order").format(
        sql.Identifier(AUDIENCE_SCHEMA, TABLES[step])
    )
    return [row[0] for row in db.execute(query)]


def tokens_of(db, user_ids) -> dict[str, set[str]]:
    """user_id -> the device tokens of the app's table (every user listed, with an empty set when none)."""
    rows = db.execute(
        sql.SQL("select user_id::text, token from {} where user_id = any(%s::uuid[])").format(
            sql.Identifier(SOURCE_SCHEMA, "device_tokens")
        ),
        (list(user_ids),),
    ).fetchall()
    tokens = {user_id: set() for user_id in user_ids}
    for user_id, token in rows:
        tokens[user_id].add(token)
    return tokens


def expected_copy(step: str, row: dict) -> tuple[str, str, dict[str, str]]:
    values = {key: "" if value is None else str(value) for key, value in row.items()}
    title, body = COPY[step]
    return title.format(**values), body.format(**values), {"deep_link": f"tradeblock://variants/{values['variantID']}"}


def summary_row(stderr: str, step: str) -> dict[str, str]:
    """The step's row of the summary table printed on stderr."""
    for line in stderr.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if len(cells) == len(SUMMARY_COLUMNS) and cells[0] == step:
            return dict(zip(SUMMARY_COLUMNS, cells, strict=True))
    raise AssertionError(f"no summary row for step {step} in:\n{stderr}")


def unknown_lines(stdout: str) -> set[tuple[str, str, str]]:
    """The (step, user_id, token) of the "unknown" lines a run prints for messages left pending."""
    found = set()
    for line in stdout.splitlines():
        if line.startswith("unknown\t"):
            match = UNKNOWN_LINE.fullmatch(line)
            assert match, f"malformed line {line!r}"
            found.add(match.groups()[1:])
    return found


def delivered_tokens(emulator: EmulatorServer) -> Counter:
    return Counter(m["token"] for m in emulator.delivered())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_ok(result: subprocess.CompletedProcess, code: int = 0) -> None:
    assert result.returncode == code, f"exit {result.returncode}, expected {code}:\n{result.stdout}\n{result.stderr}"


def check_ledger_against_emulator(s: Sender, run_key: str, *, resent: bool = False):
    """The exactly-once invariants between the ledger rows of a run and what the emulator received.

    Every received message is one planned ledger row; no row is received twice (unless `resent`:
    --resend-unknown may repeat a pending one that had arrived); a `sent` row arrived with the id the
    ledger recorded; a `queued`, `failed` or `invalid_token` row was never delivered.
    Returns (rows by (step, token), Counter of deliveries by (step, token)).
    """
    rows = {(r["step"], r["token"]): r for r in s.deliveries(run_key) if r["token"]}
    by_copy = {(r["token"], r["title"], r["body"]): key for key, r in rows.items()}
    received, names = Counter(), defaultdict(list)
    for message in s.emulator.delivered():
        notification = message["notification"] or {}
        key = by_copy.get((message["token"], notification.get("title"), notification.get("body")))
        assert key, f"the emulator received a message that no ledger row planned: {message}"
        assert message["data"] == rows[key]["data"], f"{key}: data differs from the ledger's"
        received[key] += 1
        names[key].append(message["name"])
    for key, row in rows.items():
        if row["status"] == "sent":
            assert row["fcm_message_id"] in names[key], f"{key} is settled 'sent' but FCM never returned its id"
            if not resent:
                assert received[key] == 1, f"{key} received {received[key]} times"
        elif row["status"] in ("queued", "failed", "invalid_token"):
            assert received[key] == 0, f"{key} is {row['status']!r} in the ledger, yet FCM delivered it"
        else:
            assert row["status"] == "pending", f"{key}: unexpected status {row['status']}"
        assert received[key] <= (2 if resent else 1), f"{key} received {received[key]} times"
    return rows, received


@pytest.fixture
def in_process(sender):
    """send_campaign in this process, on the same ledger schema and emulator as the CLI would use."""
    log: list[str] = []

    def run(campaign: campaigns.Campaign, mode: str, run_key: str, **options) -> send.RunResult:
        with psycopg.connect(autocommit=True) as conn, psycopg.connect(autocommit=True) as lock_conn:
            return send.send_campaign(
                conn, lock_conn, sender.config, campaign, send.Options(mode, run_key=run_key, **options),
                datetime.now(UTC), log=log.append,
            )  # fmt: skip

    run.log = log
    return run


def one_step(campaign_name: str, step_name: str, **changes) -> campaigns.Campaign:
    campaign = campaigns.find_campaign(test_config(), campaign_name)
    step = campaigns.find_step(campaign, step_name)
    return dataclasses.replace(campaign, steps=(dataclasses.replace(step, **changes),))
