"""The sender's FCM transport (fcm_client.Transport, urllib3) against the SDK's own path (messaging.send,
requests): same requests, same exceptions, same classes; and what happens when the connection fails
before or after the request left. Real sockets on loopback, the project's emulator, no mocks."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ProcessPoolExecutor

import firebase_admin
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from firebase_admin import credentials, exceptions, messaging

from sender import dispatch
from sender.fcm_client import Transport, make_app
from sender.fcm_emulator import serve
from sender.ledger import Claimed
from tests.test_fcm_emulator import CLASSES, PROJECT, push

pytestmark = pytest.mark.filterwarnings("ignore:Message.token is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def emulator():
    with serve() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh(emulator):
    emulator.configure({"tokens": {}, "rates": {}, "retry_after": 1, "seed": 0, "latency_ms": 0})
    emulator.clear()


def app_for(host: str, **options) -> firebase_admin.App:
    return make_app(host, PROJECT, name=f"transport-{uuid.uuid4()}", **options)


@pytest.fixture
def app(emulator):
    app = app_for(emulator.emulator_host)
    yield app
    firebase_admin.delete_app(app)


def both(app: firebase_admin.App, message: messaging.Message, dry_run: bool = False) -> list:
    """(message id, exception) of the SDK's messaging.send and of the Transport, for the same message."""
    try:
        sdk = (messaging.send(message, dry_run=dry_run, app=app), None)
    except exceptions.FirebaseError as exc:
        sdk = (None, exc)
    transport = Transport(app, pool_size=2)
    try:
        return [sdk, transport.post(transport.body(message, dry_run))]
    finally:
        transport.close()


def test_the_same_request_reaches_fcm(emulator, app):
    message = messaging.Message(
        token="tok-a",
        notification=messaging.Notification(title="Hi Alex", body='Ünïcode ✓ "quoted"'),
        data={"link": "app://shoe/1", "empty": ""},
    )
    (sdk_name, _), (name, exc) = both(app, message)
    assert exc is None and name.startswith(f"projects/{PROJECT}/messages/") and name != sdk_name
    sdk_record, record = emulator.messages()
    drop = ("name", "time")
    assert {k: v for k, v in record.items() if k not in drop} == {k: v for k, v in sdk_record.items() if k not in drop}
    assert record["delivered"] and record["notification"]["body"] == 'Ünïcode ✓ "quoted"'

    (_, _), (name, exc) = both(app, message, dry_run=True)
    assert exc is None and name == f"projects/{PROJECT}/messages/fake_message_id"
    assert [m["validate_only"] for m in emulator.messages()[2:]] == [True, True]


@pytest.mark.parametrize("code", sorted(CLASSES))
def test_every_fcm_error_is_the_sdks_exception_and_class(emulator, app, code):
    emulator.configure({"tokens": {"doomed": code}, "retry_after": 3})
    (_, expected), (name, exc) = both(app, push("doomed"))
    assert name is None and type(exc) is type(expected)
    assert exc.http_response.status_code == expected.http_response.status_code
    assert dispatch.classify(exc) == dispatch.classify(expected) == CLASSES[code]
    assert dispatch.describe(exc) == dispatch.describe(expected)
    assert dispatch.retry_after(exc) == dispatch.retry_after(expected)
    # no hidden retry: each path posted as often (a 401 is posted three times: two token refreshes)
    posts = [m["error"] for m in emulator.messages()]
    assert posts == [code] * len(posts) and len(posts) == (
        6 if CLASSES[code] == "systemic" and expected.http_response.status_code == 401 else 2
    )


def test_a_401_refreshes_the_token_twice_like_the_sdk(emulator, tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    account = {"type": "service_account", "project_id": PROJECT, "private_key_id": "k", "private_key": pem.decode(),
               "client_email": f"s@{PROJECT}.iam.gserviceaccount.com", "client_id": "1",
               "token_uri": f"{emulator.base_url}/token"}  # fmt: skip
    path = tmp_path / "account.json"
    path.write_text(json.dumps(account))
    app = app_for(emulator.emulator_host, credential=credentials.Certificate(str(path)))
    transport = Transport(app, pool_size=4)
    try:

        def tokens() -> int:
            return health(emulator)["token_requests"]

        before = tokens()
        assert transport.post(transport.body(push("fine"), False))[1] is None
        assert tokens() == before + 1, "the first request fetched an access token"
        for _ in range(3):
            assert transport.post(transport.body(push("fine"), False))[1] is None
        assert tokens() == before + 1, "the token is reused while it is valid"
        emulator.configure({"tokens": {"refused": "UNAUTHENTICATED"}})
        _, exc = transport.post(transport.body(push("refused"), False))
        assert dispatch.classify(exc) == "systemic" and tokens() == before + 3
        assert len(emulator.messages("refused")) == 3
    finally:
        transport.close()
        firebase_admin.delete_app(app)


def health(emulator) -> dict:
    with urllib.request.urlopen(emulator.base_url + "/emulator/health") as response:
        return json.loads(response.read())


# --- connections that fail -------------------------------------------------------------------------------


class Server:
    """A loopback server that reads each request whole, then (per `mode`) closes the connection (FIN),
    resets it (RST), never answers, or answers 200 once and closes the kept-alive connection."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536) or b"\r\n\r\n"  # a client gone before its request ends
        head, body = data.split(b"\r\n\r\n", 1)
        headers = (line.partition(b":") for line in head.split(b"\r\n"))
        lengths = [int(value) for name, _, value in headers if name.lower() == b"content-length"]
        while len(body) < sum(lengths):
            body += conn.recv(65536) or b"-" * sum(lengths)
        self.requests += 1
        if self.mode == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif self.mode == "silent":
            self.held.append(conn)
            return
        elif self.mode in ("answer-then-close", "answer-then-idle-close"):
            answer = json.dumps({"name": f"projects/{PROJECT}/messages/{self.requests}"}).encode()
            close = b"Connection: close\r\n" if self.mode == "answer-then-close" else b""
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s"
                         % (close, len(answer), answer))  # fmt: skip
            if not close:
                time.sleep(0.1)  # then the idle connection times out
        conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def server(request):
    server = Server(request.param)
    yield server
    server.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("server", ["close", "reset"], indirect=True)
def test_a_connection_that_breaks_after_the_request_left_is_unknown(server):
    app = app_for(server.host)
    try:
        (_, expected), (name, exc) = both(app, push("tok"))
    finally:
        firebase_admin.delete_app(app)
    assert name is None and server.requests == 2, "each path posted once: no hidden retry of a POST that left"
    assert dispatch.classify(exc) == dispatch.classify(expected) == "unknown"
    assert type(exc) is type(expected) and exc.http_response is None


@pytest.mark.parametrize("server", ["silent"], indirect=True)
def test_no_answer_in_time_is_unknown(server):
    app = app_for(server.host, timeout=0.3)
    try:
        (_, expected), (_, exc) = both(app, push("tok"))
    finally:
        firebase_admin.delete_app(app)
    assert isinstance(exc, exceptions.DeadlineExceededError) and type(exc) is type(expected)
    assert dispatch.classify(exc) == dispatch.classify(expected) == "unknown"


def test_a_connection_never_made_is_systemic():
    app = app_for(f"127.0.0.1:{closed_port()}")
    try:
        (_, expected), (_, exc) = both(app, push("tok"))
    finally:
        firebase_admin.delete_app(app)
    assert dispatch.classify(exc) == dispatch.classify(expected) == "systemic"
    assert dispatch.describe(exc).startswith("cannot reach FCM") and type(exc) is type(expected)


@pytest.mark.parametrize("server", ["answer-then-close", "answer-then-idle-close"], indirect=True)
def test_a_connection_the_server_closed_is_not_reused(server):
    """The server closes the connection after each answer (saying so, or later, as an idle timeout): the next
    request opens a new one instead of failing on the dead one (a push of unknown outcome). A close that
    crosses a request on the wire is a real race, the same with requests: that push is pending."""
    app = app_for(server.host)
    transport = Transport(app, pool_size=1)
    try:
        for _ in range(5):
            name, exc = transport.post(transport.body(push("tok"), False))
            assert exc is None and name
            time.sleep(0.3 if server.mode == "answer-then-idle-close" else 0)
    finally:
        transport.close()
        firebase_admin.delete_app(app)
    assert server.requests == 5


# --- the worker: one batch, one Outcome per message ----------------------------------------------------------


def send_in_a_worker(host: str, batch: list[Claimed], dry_run: bool = False) -> list[dispatch.Outcome]:
    settings = dispatch.FcmSettings(host, PROJECT, None)
    with ProcessPoolExecutor(1, initializer=dispatch.init_worker, initargs=(settings,)) as pool:
        return pool.submit(dispatch.send_batch, batch, dry_run).result()


def claimed(*tokens: str, **data: str) -> list[Claimed]:
    return [Claimed(str(uuid.uuid4()), token, "Title", "Body", data) for token in tokens]


def test_a_batch_gets_one_outcome_per_message_by_class(emulator):
    dispatch_tokens = {"gone": "UNREGISTERED", "bad": "INVALID_ARGUMENT", "payload": "INVALID_PAYLOAD"}
    emulator.configure({"tokens": dispatch_tokens})
    batch = claimed(*[f"ok-{i}" for i in range(300)], "gone", "bad", "payload", link="app://x")
    outcomes = send_in_a_worker(emulator.emulator_host, batch)
    statuses = [o.status for o in outcomes]
    assert statuses == ["sent"] * 300 + ["invalid_token", "invalid_token", "failed"]
    assert len({o.message_id for o in outcomes[:300]}) == 300
    delivered = sorted(m["token"] for m in emulator.delivered())
    assert delivered == sorted(f"ok-{i}" for i in range(300)), "each message posted once"
    assert send_in_a_worker(emulator.emulator_host, claimed("dry"), dry_run=True)[0].status == "validated"


def test_transient_errors_are_retried_then_sent(emulator):
    emulator.configure({"rates": {"UNAVAILABLE": 0.3}, "seed": 3, "retry_after": 0})
    outcomes = send_in_a_worker(emulator.emulator_host, claimed(*[f"t-{i}" for i in range(100)]))
    assert {o.status for o in outcomes} == {"sent"}
    assert sorted(m["token"] for m in emulator.delivered()) == sorted(f"t-{i}" for i in range(100))


@pytest.mark.parametrize("server", ["reset"], indirect=True)
def test_a_batch_whose_connections_break_mid_request_is_pending(server):
    outcomes = send_in_a_worker(server.host, claimed("a", "b", "c"))
    assert [o.status for o in outcomes] == ["pending"] * 3 and server.requests == 3


def test_a_batch_that_cannot_connect_is_queued_with_the_cause():
    outcomes = send_in_a_worker(f"127.0.0.1:{closed_port()}", claimed("a", "b"))
    assert [o.status for o in outcomes] == ["queued"] * 2
    assert outcomes[0].error.startswith("cannot reach FCM")


def test_preflight_names_a_systemic_refusal(emulator):
    assert dispatch.preflight(dispatch.FcmSettings(emulator.emulator_host, PROJECT, None)) is None
    emulator.configure({"tokens": {dispatch.PREFLIGHT_TOKEN: "SENDER_ID_MISMATCH"}})
    cause = dispatch.preflight(dispatch.FcmSettings(emulator.emulator_host, PROJECT, None))
    assert cause.startswith("SENDER_ID_MISMATCH")
    unreachable = dispatch.preflight(dispatch.FcmSettings(f"127.0.0.1:{closed_port()}", PROJECT, None))
    assert unreachable.startswith("cannot reach FCM")
