"""A local endpoint that speaks enough FCM HTTP v1 for firebase-admin, for tests and demos.

Standard library only. Routes:

- ``POST /v1/projects/{project}/messages:send`` -- validates like FCM where cheap, applies the
  programmed failures, answers ``{"name": "projects/{project}/messages/<id>"}``. A ``validate_only``
  request answers FCM's ``.../messages/fake_message_id`` and is never counted as delivered.
- ``POST /token`` -- OAuth2 token endpoint (JWT-bearer grant), so a service-account credential whose
  ``token_uri`` points here works as well.
- ``GET /emulator/health``, ``GET /emulator/messages[?token=T]``, ``DELETE /emulator/messages``,
  ``GET|POST /emulator/config``.

Failures (config ``{"tokens": {token: CODE}, "rates": {CODE: share}, "retry_after": s, "seed": n,
"latency_ms": ms}``) answer with FCM's real error bodies. A token rule is permanent. Rates are drawn
per (seed, target, n-th request for that target), so a given seed yields the same outcome for the
same request whatever the concurrency, and a retried message gets a fresh draw. Each key given
replaces its value; setting ``seed`` (or clearing the messages) restarts the draws. validate_only
requests meet the same failures (FCM validates tokens on a dry run too).

HTTP/1.1 keep-alive on an asyncio loop in one daemon thread: about half the CPU per request of
http.server's thread per connection, and no threads to pile up behind send_each's 100 connections.
JSONL records are buffered and flushed every 0.5 s and on stop.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"

_INVALID_PAYLOAD = "Invalid value at 'message.data[0].value' (TYPE_STRING)"
# The field an INVALID_ARGUMENT blames (google.rpc.BadRequest), as FCM reports it.
_FIELDS = {"INVALID_ARGUMENT": "message.token", "INVALID_PAYLOAD": "message.data[0].value"}
# code -> (HTTP status, google.rpc status, message, FcmError errorCode or None). Bodies as FCM sends them.
FAILURES: dict[str, tuple[int, str, str, str | None]] = {
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"),
    "INVALID_ARGUMENT": (
        400,
        "INVALID_ARGUMENT",
        "The registration token is not a valid FCM registration token",
        "INVALID_ARGUMENT",
    ),
    # A payload FCM refuses (e.g. an invalid field): a message error, not the token's fault.
    "INVALID_PAYLOAD": (400, "INVALID_ARGUMENT", _INVALID_PAYLOAD, "INVALID_ARGUMENT"),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH"),
    "PERMISSION_DENIED": (
        403,
        "PERMISSION_DENIED",
        "Permission 'cloudmessaging.messages.create' denied on resource '//cloudresourcemanager.googleapis.com/"
        "projects/other-project' (or it may not exist).",
        None,
    ),
    "UNAUTHENTICATED": (
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other "
        "valid authentication credential.",
        None,
    ),
    "THIRD_PARTY_AUTH_ERROR": (
        401,
        "UNAUTHENTICATED",
        "Auth error from APNS or Web Push Service",
        "THIRD_PARTY_AUTH_ERROR",
    ),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED", "Device message rate exceeded.", "QUOTA_EXCEEDED"),
    # Project-wide rate limit: Google's generic quota error, without an FcmError detail.
    "RESOURCE_EXHAUSTED": (
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute' "
        "of service 'fcm.googleapis.com' for consumer 'project_number:0'.",
        None,
    ),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE"),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered.", "INTERNAL"),
}
CONFIG_KEYS = ("tokens", "rates", "retry_after", "seed", "latency_ms")
ACCESS_TOKEN = "emulator-token"
_SEND_PATH = re.compile(r"/v1/projects/([^/]+)/messages:send")
_TARGETS = ("token", "fid", "topic", "condition")  # fid: firebase-admin 7.7 deprecates token for it
_INVALID = "Request contains an invalid argument."


def error_body(status: int, rpc_status: str, message: str, details: list[dict] | None = None) -> dict:
    error: dict[str, Any] = {"code": status, "message": message, "status": rpc_status}
    if details:
        error["details"] = details
    return {"error": error}


def _failure(code: str) -> tuple[int, dict]:
    status, rpc_status, message, fcm_code = FAILURES[code]
    if fcm_code:
        details = [{"@type": _FCM_ERROR, "errorCode": fcm_code}]
    elif status == 429:
        details = [{"@type": _ERROR_INFO, "reason": "RATE_LIMIT_EXCEEDED", "domain": "googleapis.com"}]
    else:
        details = [{"@type": _ERROR_INFO, "reason": rpc_status, "domain": "googleapis.com"}]
    if code in _FIELDS:
        details.insert(
            0, {"@type": _BAD_REQUEST, "fieldViolations": [{"field": _FIELDS[code], "description": message}]}
        )
    return status, error_body(status, rpc_status, message, details)


def _bad_request(field: str, description: str, fcm: bool = True) -> tuple[int, dict]:
    details = [{"@type": _BAD_REQUEST, "fieldViolations": [{"field": field, "description": description}]}]
    if fcm:
        details.append({"@type": _FCM_ERROR, "errorCode": "INVALID_ARGUMENT"})
    return 400, error_body(400, "INVALID_ARGUMENT", description, details)


def validate_message(message: Any) -> tuple[int, dict] | None:
    """The (status, body) FCM would answer for an invalid message, or None when it is acceptable."""
    if not isinstance(message, dict):
        return 400, error_body(400, "INVALID_ARGUMENT", _INVALID)
    targets = [t for t in _TARGETS if t in message]
    if not targets:
        return _bad_request("message", "Recipient of the message is not set.")
    if len(targets) > 1:
        text = "Invalid value at 'message' (oneof), oneof field 'target' is already set. "
        text += f"Cannot set '{targets[1]}'"
        return _bad_request("message", text, fcm=False)
    target = message[targets[0]]
    if not isinstance(target, str) or not target:
        return _bad_request(f"message.{targets[0]}", f"Invalid value at 'message.{targets[0]}'")
    size = 0
    notification = message.get("notification", {})
    if not isinstance(notification, dict):
        return _bad_request("message.notification", "Invalid value at 'message.notification'", fcm=False)
    for key in ("title", "body"):
        value = notification.get(key, "")
        if not isinstance(value, str):
            field = f"message.notification.{key}"
            return _bad_request(field, f"Invalid value at '{field}' (TYPE_STRING), {value}", fcm=False)
        size += len(value.encode())
    data = message.get("data", {})
    if not isinstance(data, dict):
        return _bad_request("message.data", "Invalid value at 'message.data'", fcm=False)
    for i, (key, value) in enumerate(data.items()):
        if not isinstance(value, str):
            field = f"message.data[{i}].value"
            return _bad_request(field, f"Invalid value at '{field}' (TYPE_STRING), {value}", fcm=False)
        size += len(key.encode()) + len(value.encode())
    if size > (2048 if "topic" in message else 4096):
        return 400, error_body(400, "INVALID_ARGUMENT", _INVALID)  # what FCM answers for "message too big"
    return None


def normalize_config(config: dict) -> dict:
    """Check a config update; raises ValueError on anything unknown or out of range."""
    if not isinstance(config, dict):
        raise ValueError("config must be a JSON object")
    unknown = set(config) - set(CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}; expected {list(CONFIG_KEYS)}")
    tokens, rates = config.get("tokens", {}), config.get("rates", {})
    if not isinstance(tokens, dict) or not isinstance(rates, dict):
        raise ValueError("tokens and rates must be JSON objects")
    for token, code in tokens.items():
        if code not in FAILURES:
            raise ValueError(f"token {token!r}: unknown failure {code!r}; expected one of {list(FAILURES)}")
    for code, share in rates.items():
        if code not in FAILURES or not isinstance(share, int | float) or not 0 <= share <= 1:
            raise ValueError(f"rates: {code!r}: {share!r} must be a failure code mapped to a share in [0, 1]")
    if sum(rates.values()) > 1:
        raise ValueError("rates: shares add up to more than 1")
    for key in ("retry_after", "latency_ms"):
        value = config.get(key, 0)
        if not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{key} must be a non-negative number")
    if "seed" in config and not isinstance(config["seed"], int | str):
        raise ValueError("seed must be an integer or a string")
    return config


class _State:
    """Config, counters and recorded messages; the lock lets other threads read them."""

    def __init__(self, record_path: str | None) -> None:
        self.lock = threading.Lock()
        self.instance = secrets.token_hex(8)
        self.sequence = 0
        self.token_requests = 0
        self.records: list[dict] = []
        self.draws: dict[str, int] = {}
        self.tokens: dict[str, str] = {}
        self.rates: dict[str, float] = {}
        self.retry_after = 1
        self.seed: int | str = 0
        self.latency_ms = 0.0
        self.record_file = open(record_path, "a", buffering=1 << 16) if record_path else None

    def configure(self, config: dict) -> dict:
        config = normalize_config(config)
        with self.lock:
            self.tokens = dict(config.get("tokens", self.tokens))
            self.rates = config.get("rates", self.rates)
            self.retry_after = config.get("retry_after", self.retry_after)
            self.latency_ms = config.get("latency_ms", self.latency_ms)
            if "seed" in config:
                self.seed = config["seed"]
                self.draws.clear()
            return self.config()

    def config(self) -> dict:
        return {
            "tokens": dict(self.tokens),
            "rates": dict(self.rates),
            "retry_after": self.retry_after,
            "seed": self.seed,
            "latency_ms": self.latency_ms,
        }

    def _pick_failure(self, target: str) -> str | None:
        """Caller holds the lock."""
        code = self.tokens.get(target)
        if code or not self.rates:
            return code
        n = self.draws.get(target, 0)
        self.draws[target] = n + 1
        digest = hashlib.blake2b(f"{self.seed}\0{target}\0{n}".encode(), digest_size=8).digest()
        draw = int.from_bytes(digest) / 2**64
        for code, share in self.rates.items():
            if draw < share:
                return code
            draw -= share
        return None

    def send(self, project: str, request: Any) -> tuple[int, dict, dict]:
        """Handle one messages:send body: (HTTP status, response body, extra headers)."""
        message = request.get("message") if isinstance(request, dict) else None
        validate_only = bool(request.get("validate_only")) if isinstance(request, dict) else False
        invalid = validate_message(message)
        if not isinstance(message, dict):
            message = {}
        headers: dict[str, str] = {}
        with self.lock:
            code = None if invalid else self._pick_failure(next(message[t] for t in _TARGETS if t in message))
            if invalid:
                status, body = invalid
                code = "INVALID_ARGUMENT"
            elif code:
                status, body = _failure(code)
                if status == 429:
                    headers["Retry-After"] = str(self.retry_after)
            else:
                self.sequence += 1
                message_id = "fake_message_id" if validate_only else f"0:{self.sequence}%{self.instance}"
                status, body = 200, {"name": f"projects/{project}/messages/{message_id}"}
            record = {
                "time": time.time(),
                "project": project,
                "name": body.get("name"),
                "token": message.get("token"),
                "fid": message.get("fid"),
                "topic": message.get("topic"),
                "condition": message.get("condition"),
                "notification": message.get("notification"),
                "data": message.get("data"),
                "android": message.get("android"),
                "apns": message.get("apns"),
                "validate_only": validate_only,
                "status": status,
                "error": code,
                "delivered": status == 200 and not validate_only,
            }
            self.records.append(record)
            if self.record_file:
                self.record_file.write(json.dumps(record) + "\n")
        return status, body, headers

    def messages(self, token: str | None = None) -> list[dict]:
        with self.lock:
            return [r for r in self.records if token is None or token in (r["token"], r["fid"])]

    def clear(self) -> None:
        with self.lock:
            self.records.clear()
            self.draws.clear()

    def flush(self) -> None:
        with self.lock:
            if self.record_file:
                self.record_file.flush()

    def close(self) -> None:
        with self.lock:
            if self.record_file:
                self.record_file.close()
                self.record_file = None


def route(state: _State, method: str, target: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
    """One HTTP request -> (status, JSON payload, extra headers)."""
    url = urlsplit(target)
    match = _SEND_PATH.fullmatch(url.path)
    if match and method == "POST":
        try:
            request = json.loads(body or b"null")
        except ValueError:
            return 400, error_body(400, "INVALID_ARGUMENT", "Invalid JSON payload received."), {}
        return state.send(match.group(1), request)
    if (method, url.path) == ("POST", "/token"):
        form = parse_qs(body.decode(errors="replace"))
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            return 400, {"error": "unsupported_grant_type"}, {}
        with state.lock:
            state.token_requests += 1
        return 200, {"access_token": ACCESS_TOKEN, "expires_in": 3600, "token_type": "Bearer"}, {}
    if (method, url.path) == ("GET", "/emulator/messages"):
        return 200, state.messages(parse_qs(url.query).get("token", [None])[0]), {}
    if (method, url.path) == ("DELETE", "/emulator/messages"):
        state.clear()
        return 200, {}, {}
    if (method, url.path) == ("GET", "/emulator/health"):
        records = state.messages()
        delivered = sum(r["delivered"] for r in records)
        health = {"status": "ok", "received": len(records), "delivered": delivered}
        return 200, health | {"token_requests": state.token_requests}, {}
    if url.path == "/emulator/config" and method in ("GET", "POST"):
        try:
            return 200, state.configure(json.loads(body or b"{}") if method == "POST" else {}), {}
        except ValueError as error:
            return 400, {"error": str(error)}, {}
    return 404, error_body(404, "NOT_FOUND", f"No route for {method} {url.path}"), {}


def _response(status: int, payload: Any, headers: dict[str, str], keep_alive: bool) -> bytes:
    body = json.dumps(payload).encode()
    head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json; charset=UTF-8\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head += "" if keep_alive else "Connection: close\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


class _Connection(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and Content-Length bodies (what requests, httpx and curl send)."""

    def __init__(self, server: EmulatorServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.busy = False  # a delayed response is pending: later requests wait, in order
        self.continued = False  # "100 Continue" sent for the request being read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.process()

    def process(self) -> None:
        while not self.busy and not self.transport.is_closing():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > 1 << 16:
                    self.fail(431, "request headers too large")
                return
            try:
                request_line, *lines = self.buffer[:end].decode("latin-1").split("\r\n")
                method, target, version = request_line.split(" ")
                headers = {}
                for line in lines:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", 0))
                if length < 0:
                    raise ValueError(length)
            except ValueError:
                self.fail(400, "malformed request")
                return
            if "transfer-encoding" in headers:
                self.fail(411, "send a Content-Length")
                return
            if len(self.buffer) < end + 4 + length:
                if headers.get("expect", "").lower() == "100-continue" and not self.continued:
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    self.continued = True
                return
            self.continued = False
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            connection = headers.get("connection", "").lower()
            keep_alive = connection == "keep-alive" if version == "HTTP/1.0" else connection != "close"
            status, payload, extra = route(self.server._state, method, target, body)
            response = _response(status, payload, extra, keep_alive)
            delay = self.server._state.latency_ms / 1000 if "/messages:send" in target else 0
            if delay:
                self.busy = True
                asyncio.get_running_loop().call_later(delay, self.respond, response, keep_alive)
            else:
                self.respond(response, keep_alive)

    def respond(self, response: bytes, keep_alive: bool) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(response)
        if not keep_alive:
            self.transport.close()
        if self.busy:
            self.busy = False
            self.process()

    def fail(self, status: int, message: str) -> None:
        self.transport.write(_response(status, {"error": message}, {}, keep_alive=False))
        self.transport.close()


def is_loopback(host: str) -> bool:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


class EmulatorServer:
    """A running emulator (an asyncio loop in a daemon thread). Use ``serve()``; a context manager."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        record_path: str | None = None,
        config: dict | None = None,
        allow_non_loopback: bool = False,
    ) -> None:
        if not allow_non_loopback and not is_loopback(host):
            raise ValueError(f"refusing to bind non-loopback address {host!r} (pass allow_non_loopback)")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, port), family=family, backlog=1024)
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        try:
            self._state = _State(record_path)
            self._state.configure(config or {})
        except BaseException:
            self._socket.close()
            raise
        self._connections: set[_Connection] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fcm-emulator", daemon=True)
        self._started = threading.Event()
        self._server: asyncio.Server | None = None
        self._stopped = False

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            create = self._loop.create_server(lambda: _Connection(self), sock=self._socket)
            self._server = self._loop.run_until_complete(create)
            self._loop.call_later(0.5, self._flush)
        finally:
            self._started.set()
        self._loop.run_forever()

    async def _close_connections(self) -> None:
        assert self._server
        self._server.close()
        for connection in list(self._connections):
            connection.transport.abort()
        await self._server.wait_closed()
        await asyncio.sleep(0)  # let the transports' connection_lost run

    def _flush(self) -> None:
        self._state.flush()
        self._loop.call_later(0.5, self._flush)

    @property
    def emulator_host(self) -> str:
        """The value for FCM_EMULATOR_HOST."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.emulator_host}"

    def start(self) -> EmulatorServer:
        self._thread.start()
        self._started.wait()
        if self._server is None:
            self._thread.join()
            self.stop()
            raise RuntimeError("the FCM emulator failed to start (see the thread's traceback)")
        return self

    def messages(self, token: str | None = None) -> list[dict]:
        """Every messages:send request received (also rejected and validate_only ones), oldest first."""
        return self._state.messages(token)

    def delivered(self, token: str | None = None) -> list[dict]:
        return [r for r in self.messages(token) if r["delivered"]]

    def clear(self) -> None:
        self._state.clear()

    def configure(self, config: dict) -> dict:
        return self._state.configure(config)

    def stop(self) -> None:
        """Close the listener and every connection, flush and close the record file."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close_connections(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()
        self._socket.close()
        self._state.close()

    def __enter__(self) -> EmulatorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    record_path: str | None = None,
    config: dict | None = None,
    allow_non_loopback: bool = False,
) -> EmulatorServer:
    """Start the emulator in a background thread; port 0 picks a free port (see ``.port``)."""
    return EmulatorServer(host, port, record_path, config, allow_non_loopback).start()


def run_forever(
    host: str = "127.0.0.1",
    port: int = 0,
    record_path: str | None = None,
    config: dict | None = None,
    allow_non_loopback: bool = False,
    on_ready: Callable[[EmulatorServer], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (call from the main thread), then flush the record file and return."""
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is not between 0 and 65535")
    server = serve(host, port, record_path, config, allow_non_loopback)
    done = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        if on_ready:
            on_ready(server)
        else:
            print(
                f"FCM emulator on {server.base_url} (FCM_EMULATOR_HOST={server.emulator_host})",
                file=sys.stderr,
            )
        while not done.wait(1):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()
