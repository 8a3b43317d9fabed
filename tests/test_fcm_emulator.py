"""The FCM emulator, driven by the real firebase-admin SDK over loopback (no mocks)."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter

import firebase_admin
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from firebase_admin import credentials, exceptions, messaging
from urllib3.util.retry import Retry

from sender import dispatch
from sender.fcm_client import make_app
from sender.fcm_emulator import EmulatorServer, is_loopback, serve

pytestmark = pytest.mark.filterwarnings("ignore:Message.token is deprecated:DeprecationWarning")

PROJECT = "demo-project"


@pytest.fixture(scope="module")
def emulator():
    with serve() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh(emulator):
    emulator.configure({"tokens": {}, "rates": {}, "retry_after": 1, "seed": 0, "latency_ms": 0})
    emulator.clear()


@pytest.fixture(scope="module")
def app(emulator):
    app = make_app(emulator.emulator_host, PROJECT, name=f"test-{uuid.uuid4()}")
    yield app
    firebase_admin.delete_app(app)


def push(token: str, **data: str) -> messaging.Message:
    return messaging.Message(
        token=token,
        notification=messaging.Notification(title="Hi Alex", body="Your grail is back"),
        data=data,
    )


def call(emulator: EmulatorServer, method: str, path: str, body: object = None) -> tuple[int, object]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(emulator.base_url + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_send_and_dry_run_are_recorded(emulator, app):
    name = messaging.send(push("tok-a", link="app://shoe/1"), app=app)
    assert name.startswith(f"projects/{PROJECT}/messages/")
    dry = messaging.send(push("tok-a"), dry_run=True, app=app)
    assert dry == f"projects/{PROJECT}/messages/fake_message_id"
    fid_name = messaging.send(messaging.Message(fid="fid-b", data={"k": "v"}), app=app)

    sent, validated, by_fid = emulator.messages()
    assert sent["name"] == name and sent["delivered"] and not sent["validate_only"]
    assert sent["notification"] == {"title": "Hi Alex", "body": "Your grail is back"}
    assert sent["data"] == {"link": "app://shoe/1"} and sent["project"] == PROJECT
    assert validated["validate_only"] and not validated["delivered"] and validated["status"] == 200
    assert by_fid["fid"] == "fid-b" and by_fid["name"] == fid_name
    assert [m["name"] for m in emulator.delivered()] == [name, fid_name]

    assert call(emulator, "GET", "/emulator/messages?token=tok-a")[1] == [sent, validated]
    health = call(emulator, "GET", "/emulator/health")[1]
    assert health["received"] == 3 and health["delivered"] == 2
    assert call(emulator, "DELETE", "/emulator/messages") == (200, {})
    assert emulator.messages() == []


def test_send_each_batch_of_500(emulator, app):
    emulator.configure({"tokens": {"tok-7": "UNREGISTERED"}})
    batch = messaging.send_each([push(f"tok-{i}") for i in range(500)], app=app)
    assert (batch.success_count, batch.failure_count) == (499, 1)
    assert isinstance(batch.responses[7].exception, messaging.UnregisteredError)
    names = {r.message_id for r in batch.responses if r.success}
    assert len(names) == 499
    assert len(emulator.messages()) == 500 and len(emulator.delivered()) == 499

    dry = messaging.send_each([push(f"tok-{i}") for i in range(5)], dry_run=True, app=app)
    assert dry.success_count == 5
    assert len(emulator.delivered()) == 499


# DELIVERY.md, "Failures and recovery": the class of each FCM answer.
CLASSES = {
    "UNREGISTERED": "token",
    "INVALID_ARGUMENT": "token",
    "INVALID_PAYLOAD": "message",
    "QUOTA_EXCEEDED": "transient",
    "RESOURCE_EXHAUSTED": "transient",
    "SENDER_ID_MISMATCH": "systemic",
    "PERMISSION_DENIED": "systemic",
    "UNAUTHENTICATED": "systemic",
    "THIRD_PARTY_AUTH_ERROR": "systemic",
    "UNAVAILABLE": "transient",
    "INTERNAL": "transient",
}


@pytest.mark.parametrize(
    ("code", "status", "error_class"),
    [
        ("UNREGISTERED", 404, messaging.UnregisteredError),
        ("INVALID_ARGUMENT", 400, exceptions.InvalidArgumentError),
        ("QUOTA_EXCEEDED", 429, messaging.QuotaExceededError),
        ("RESOURCE_EXHAUSTED", 429, exceptions.ResourceExhaustedError),
        ("INVALID_PAYLOAD", 400, exceptions.InvalidArgumentError),
        ("SENDER_ID_MISMATCH", 403, messaging.SenderIdMismatchError),
        ("PERMISSION_DENIED", 403, exceptions.PermissionDeniedError),
        ("UNAUTHENTICATED", 401, exceptions.UnauthenticatedError),
        ("THIRD_PARTY_AUTH_ERROR", 401, messaging.ThirdPartyAuthError),
        ("UNAVAILABLE", 503, exceptions.UnavailableError),
        ("INTERNAL", 500, exceptions.InternalError),
    ],
)
def test_programmed_errors_surface_as_sdk_exceptions(emulator, app, code, status, error_class):
    emulator.configure({"tokens": {"doomed": code}, "retry_after": 2})
    for _ in range(2):  # a token rule is permanent
        with pytest.raises(error_class) as caught:
            messaging.send(push("doomed"), app=app)
        response = caught.value.http_response
        assert response.status_code == status
        error = response.json()["error"]
        assert error["code"] == status
        fcm_codes = [d["errorCode"] for d in error["details"] if d["@type"].endswith("FcmError")]
        generic = code in ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "UNAUTHENTICATED")  # no FcmError detail
        assert fcm_codes == ([] if generic else ["INVALID_ARGUMENT" if code == "INVALID_PAYLOAD" else code])
        assert response.headers.get("Retry-After") == ("2" if status == 429 else None)
    if code == "RESOURCE_EXHAUSTED":  # project quota, no FcmError detail: not the per-device error
        assert not isinstance(caught.value, messaging.QuotaExceededError)
    fields = [v["field"] for d in error["details"] for v in d.get("fieldViolations", [])]
    if code == "INVALID_ARGUMENT":  # FCM blames the token...
        assert str(caught.value) == "The registration token is not a valid FCM registration token"
        assert fields == ["message.token"]
    if code == "INVALID_PAYLOAD":  # ...or a field of the payload
        assert fields == ["message.data[0].value"]
    # make_app turns the SDK's own retries off: each call reached the emulator exactly once; except a 401,
    # which google-auth answers by refreshing the access token and trying twice more (FCM refused it: no copy).
    assert [m["error"] for m in emulator.messages()] == [code] * (6 if status == 401 else 2)
    assert dispatch.classify(caught.value) == CLASSES[code]
    assert messaging.send(push("fine"), app=app)


def test_retries_are_a_make_app_option(emulator):
    emulator.configure({"tokens": {"flaky": "UNAVAILABLE"}})
    retry = Retry(total=2, status_forcelist=[503], allowed_methods=None, backoff_factor=0, raise_on_status=False)
    app = make_app(emulator.emulator_host, PROJECT, name=f"retry-{uuid.uuid4()}", retries=retry)
    try:
        with pytest.raises(exceptions.UnavailableError):
            messaging.send(push("flaky"), app=app)
    finally:
        firebase_admin.delete_app(app)
    assert len(emulator.messages("flaky")) == 3


def test_validation_like_fcm(emulator, app):
    too_big = {"blob": "x" * 4100}
    with pytest.raises(exceptions.InvalidArgumentError):
        messaging.send(messaging.Message(token="tok", data=too_big), app=app)

    send_path = f"/v1/projects/{PROJECT}/messages:send"
    status, body = call(emulator, "POST", send_path, {"message": {"notification": {"title": "t"}}})
    assert status == 400 and body["error"]["message"] == "Recipient of the message is not set."
    status, body = call(emulator, "POST", send_path, {"message": {"token": "t", "topic": "news"}})
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
    status, body = call(emulator, "POST", send_path, {"message": {"token": "t", "data": {"n": 12}}})
    assert status == 400 and "message.data[0].value" in body["error"]["message"]
    status, body = call(emulator, "POST", send_path, {"message": {"token": "t", "notification": {"title": 1}}})
    assert status == 400
    assert call(emulator, "POST", send_path, b"{not json")[0] == 400
    assert [m["status"] for m in emulator.messages()] == [400] * 5
    assert emulator.delivered() == []


def outcomes(app, tokens: list[str]) -> list[str]:
    batch = messaging.send_each([push(t) for t in tokens], app=app)
    return [type(r.exception).__name__ if r.exception else "ok" for r in batch.responses]


def test_rates_are_deterministic_for_a_seed(emulator, app):
    tokens = [f"user-{i}" for i in range(400)]
    emulator.configure({"rates": {"UNAVAILABLE": 0.2, "QUOTA_EXCEEDED": 0.1}, "seed": 7})
    first = outcomes(app, tokens)
    counts = Counter(first)
    assert 40 <= counts["UnavailableError"] <= 120 and 15 <= counts["QuotaExceededError"] <= 70
    assert counts["ok"] == 400 - counts["UnavailableError"] - counts["QuotaExceededError"]

    emulator.configure({"seed": 7})  # restarts the draws: same outcomes, whatever the thread order
    assert outcomes(app, tokens) == first
    emulator.clear()
    assert outcomes(app, tokens) == first
    second_attempt = outcomes(app, tokens)  # a retry gets a fresh draw
    assert second_attempt != first
    emulator.configure({"seed": 8})
    assert outcomes(app, tokens) != first


def test_config_over_http(emulator, app):
    status, config = call(emulator, "POST", "/emulator/config", {"tokens": {"x": "UNREGISTERED"}, "latency_ms": 50})
    assert status == 200 and config["tokens"] == {"x": "UNREGISTERED"} and config["latency_ms"] == 50
    assert call(emulator, "GET", "/emulator/config")[1] == config
    started = time.perf_counter()
    with pytest.raises(messaging.UnregisteredError):
        messaging.send(push("x"), app=app)
    assert time.perf_counter() - started >= 0.05

    for bad in ({"tokens": {"x": "NOPE"}}, {"rates": {"INTERNAL": 0.7, "UNAVAILABLE": 0.7}}, {"colour": 1}):
        status, body = call(emulator, "POST", "/emulator/config", bad)
        assert status == 400 and body["error"]
    assert call(emulator, "GET", "/emulator/config")[1] == config


def test_keep_alive_and_connection_close(emulator):
    connection = http.client.HTTPConnection(emulator.host, emulator.port)
    body = json.dumps({"message": {"token": "k"}})
    for _ in range(3):  # one connection, three requests
        connection.request("POST", f"/v1/projects/{PROJECT}/messages:send", body)
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["name"]
        assert response.getheader("Content-Length")
    connection.request("GET", "/emulator/health", headers={"Connection": "close"})
    response = connection.getresponse()
    assert json.loads(response.read())["received"] == 3 and response.getheader("Connection") == "close"
    connection.close()


def test_non_loopback_bind_is_refused():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("8.8.8.8") and not is_loopback("")
    with pytest.raises(ValueError, match="non-loopback"):
        serve(host="0.0.0.0")


def test_record_file_gets_one_json_line_per_message(tmp_path):
    record = tmp_path / "fcm.jsonl"
    with serve(record_path=str(record), config={"tokens": {"gone": "UNREGISTERED"}}) as server:
        app = make_app(server.emulator_host, PROJECT, name=f"record-{uuid.uuid4()}")
        try:
            messaging.send_each([push("a"), push("gone"), push("b")], app=app)
            messaging.send(push("c"), dry_run=True, app=app)
        finally:
            firebase_admin.delete_app(app)
        expected = server.messages()
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert sorted(lines, key=lambda m: m["time"]) == sorted(expected, key=lambda m: m["time"])
    assert [(m["token"], m["error"], m["validate_only"]) for m in lines if m["token"] in ("gone", "c")] == [
        ("gone", "UNREGISTERED", False),
        ("c", None, True),
    ]


def test_service_account_token_uri_pointing_at_the_emulator(emulator, tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    account = {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "emulator",
        "private_key": pem.decode(),
        "client_email": f"sender@{PROJECT}.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": f"{emulator.base_url}/token",
    }
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps(account))
    before = call(emulator, "GET", "/emulator/health")[1]["token_requests"]
    app = make_app(
        emulator.emulator_host,
        PROJECT,
        name=f"sa-{uuid.uuid4()}",
        credential=credentials.Certificate(str(path)),
    )
    try:
        assert messaging.send(push("via-service-account"), app=app)
    finally:
        firebase_admin.delete_app(app)
    assert call(emulator, "GET", "/emulator/health")[1]["token_requests"] == before + 1
