"""Hand messages to FCM from worker processes, and classify every answer.

Posting is CPU-bound, so batches go to a pool of worker processes, each with its own firebase-admin
App (credentials, message encoding) and an `fcm_client.Transport` (urllib3, CONCURRENCY connections
and as many threads: FCM's latency, not our CPU, sets how many requests must be in flight). A worker
sends one batch, one request per message as `send_each` would (same requests, same answers, same
exceptions, for 40 % of its CPU: bench/README.md), and returns one Outcome per message. Every failure falls
in one class (DELIVERY.md, "Failures and recovery"; `classify`):

- token      UNREGISTERED; INVALID_ARGUMENT that FCM attributes to the token -> invalid_token
- message    any other definite refusal (INVALID_ARGUMENT about the payload...) -> failed, token untouched
- transient  UNAVAILABLE, INTERNAL, QUOTA_EXCEEDED/RESOURCE_EXHAUSTED -> retried with exponential backoff
             honouring Retry-After, a bounded number of times, then failed
- systemic   401, 403 (SENDER_ID_MISMATCH, THIRD_PARTY_AUTH_ERROR...), unusable credentials, FCM
             unreachable -> back to queued, and the run stops (the cause is the Outcome's error)
- unknown    the connection broke after the request left: FCM may have the push -> left pending

No transport retries (fcm_client.NO_RETRY: only a connection that was never made is tried again), so
a push is never re-posted behind our back.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import firebase_admin
import google.auth.exceptions
import requests
from firebase_admin import exceptions, messaging

from sender import fcm_client

# The app stores FCM registration tokens, which FCM still accepts in Message.token; firebase-admin
# 7.7 nevertheless warns on every message that `fid` is the new field.
warnings.filterwarnings("ignore", "Message.token is deprecated", DeprecationWarning)

RETRYABLE = (exceptions.UnavailableError, exceptions.InternalError, exceptions.ResourceExhaustedError)
MAX_RETRIES = 4  # so at most 5 attempts per message
BACKOFF_BASE = 0.5  # seconds, doubled per retry, with jitter
MAX_WAIT = 60.0  # a Retry-After longer than this fails that message instead of holding the batch
CONCURRENCY = 100  # requests in flight per worker (send_each's pool held 100 connections too)


@dataclass(frozen=True)
class Outcome:
    # sent, validated, failed, invalid_token; queued: refused for a systemic cause (the error), not sent;
    # pending: the connection broke after the request left, so FCM may or may not have it
    status: str
    message_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class FcmSettings:
    """Where and as whom to send (from the command's Config)."""

    emulator_host: str | None
    project_id: str | None
    credentials_file: str | None


PREFLIGHT_TOKEN = "sender-preflight-check"
_transport: fcm_client.Transport | None = None
_threads: ThreadPoolExecutor | None = None
_init_error: str | None = None  # why this worker has no App: its batches go back to the queue


def make_app(settings: FcmSettings, name: str):
    return fcm_client.make_app(
        settings.emulator_host, settings.project_id, name=name, credentials_file=settings.credentials_file
    )


def init_worker(settings: FcmSettings) -> None:
    """Process-pool initializer: one firebase-admin App per worker; die with the parent.

    Signals go to the parent, which settles what the workers are sending before it stops. A worker
    whose App cannot be made does not die: it answers every batch `queued` with the cause.
    """
    global _transport, _threads, _init_error
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:  # Linux: SIGKILL this worker when the parent dies, so nothing sends after a kill -9
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    try:
        _transport = fcm_client.Transport(make_app(settings, name=f"sender-{os.getpid()}"), pool_size=CONCURRENCY)
        _threads = ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="fcm")
    except Exception as exc:  # noqa: BLE001 - any failure to make the App is systemic
        _init_error = f"cannot set up the FCM client: {describe(exc)}"


def preflight(settings: FcmSettings) -> str | None:
    """Prove, before anything is claimed, that the credentials and the project work: one validate-only
    request (to a token that cannot exist). Returns the systemic cause, or None when FCM accepts us."""
    try:
        app = make_app(settings, name=f"sender-preflight-{os.getpid()}")
    except Exception as exc:  # noqa: BLE001
        return f"cannot set up the FCM client: {describe(exc)}"
    transport = None
    try:
        transport = fcm_client.Transport(app, pool_size=1)
        message = messaging.Message(token=PREFLIGHT_TOKEN, notification=messaging.Notification("preflight", "-"))
        _, exc = transport.post(transport.body(message, dry_run=True))
        if exc is None:
            return None
        if isinstance(exc.cause, google.auth.exceptions.GoogleAuthError):  # no access token: nothing was posted
            return f"cannot use the FCM credentials: {describe(exc.cause)}"
        return describe(exc) if classify(exc) == "systemic" else None
    except (ValueError, google.auth.exceptions.GoogleAuthError) as exc:
        return f"cannot use the FCM credentials: {describe(exc)}"
    finally:
        if transport is not None:
            transport.close()
        firebase_admin.delete_app(app)


def send_batch(batch: list, dry_run: bool) -> list[Outcome]:
    """Send one batch (≤ 500 messages with token, title, body, data) and return an Outcome per message, in order."""
    if _transport is None or _threads is None:
        return [Outcome("queued", error=_init_error)] * len(batch)
    transport = _transport
    outcomes: list[Outcome | None] = [None] * len(batch)
    bodies: dict[int, bytes] = {}
    for i, m in enumerate(batch):
        message = messaging.Message(
            token=m.token, notification=messaging.Notification(title=m.title, body=m.body), data=m.data or None
        )
        try:  # a message the SDK cannot encode is never sent
            bodies[i] = transport.body(message, dry_run)
        except (ValueError, TypeError) as exc:
            outcomes[i] = Outcome("failed", error=f"not sent, the FCM client refused it: {exc}")
    todo = list(bodies)
    for attempt in range(MAX_RETRIES + 1):
        if not todo:
            break
        answers = _threads.map(_post, [bodies[i] for i in todo])
        results = [(i, message_id, exc) for i, (message_id, exc) in zip(todo, answers, strict=True)]
        retry, wait = [], 0.0
        for i, message_id, exc in results:
            kind = "ok" if exc is None else classify(exc)
            if kind == "ok":
                outcomes[i] = Outcome("validated" if dry_run else "sent", message_id)
            elif kind == "token":
                outcomes[i] = Outcome("invalid_token", error=describe(exc))
            elif kind == "systemic":
                outcomes[i] = Outcome("queued", error=describe(exc))
            elif kind == "unknown":
                outcomes[i] = Outcome("pending", error=describe(exc))
            elif kind == "transient" and attempt < MAX_RETRIES and (retry_after(exc) or 0) <= MAX_WAIT:
                retry.append(i)
                wait = max(wait, retry_after(exc) or 0.0)
            else:
                outcomes[i] = Outcome("failed", error=describe(exc))
        if not retry:
            break
        time.sleep(max(BACKOFF_BASE * 2**attempt * random.uniform(1.0, 1.5), wait))
        todo = retry
    return outcomes  # type: ignore[return-value]


def _post(body: bytes) -> tuple[str | None, exceptions.FirebaseError | None]:
    try:
        return _transport.post(body)  # type: ignore[union-attr]
    except Exception as exc:  # noqa: BLE001 - anything else, as send_each reported it: the outcome is unknown
        return None, exceptions.UnknownError(f"Unknown error while making remote service calls: {exc}", exc)


SYSTEMIC = (exceptions.UnauthenticatedError, exceptions.PermissionDeniedError)  # 401, 403 and their FCM codes


def classify(exc: Exception) -> str:
    """token, message, transient, systemic or unknown (DELIVERY.md, "Failures and recovery")."""
    if isinstance(exc, messaging.UnregisteredError):
        return "token"
    if isinstance(exc, SYSTEMIC):
        return "systemic"
    if getattr(exc, "http_response", None) is None:  # no answer from FCM
        return "systemic" if not_sent(exc) else "unknown"
    if isinstance(exc, RETRYABLE):
        return "transient"
    if isinstance(exc, exceptions.InvalidArgumentError) and about_token(exc):
        return "token"
    return "message"


def about_token(exc: Exception) -> bool:
    """Whether an INVALID_ARGUMENT answer blames the registration token (its field, or its words)."""
    try:
        error = exc.http_response.json().get("error", {})
    except (ValueError, AttributeError):
        error = {}
    fields = {
        violation.get("field")
        for detail in error.get("details", []) or []
        for violation in detail.get("fieldViolations", []) or []
    }
    if fields & {"message.token", "message.fid"}:
        return True
    return "registration token" in str(error.get("message") or exc).lower()


def _cause(exc: Exception, kind: type) -> Exception | None:
    """The innermost cause of `exc` of that kind."""
    found, cause = None, getattr(exc, "cause", None) or exc.__cause__
    while cause is not None:
        found = cause if isinstance(cause, kind) else found
        cause = cause.__cause__ or cause.__context__
    return found


def not_sent(exc: Exception) -> bool:
    """The request cannot have reached FCM: the connection was never made (refused, no route, DNS),
    or the credentials could not produce an access token (that happens before the request)."""
    cause = getattr(exc, "cause", None) or exc.__cause__
    while cause is not None:
        if isinstance(cause, google.auth.exceptions.GoogleAuthError):
            return True
        if isinstance(cause, requests.exceptions.ConnectionError):
            text = repr(cause)
            return "NewConnectionError" in text or "NameResolutionError" in text
        cause = cause.__cause__ or cause.__context__
    return False


def retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "http_response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def describe(exc: Exception) -> str:
    """FCM's error code and message, e.g. 'SENDER_ID_MISMATCH: SenderId mismatch'; what kept the request
    from FCM when there is no answer."""
    code = getattr(exc, "code", None) or type(exc).__name__
    response = getattr(exc, "http_response", None)
    if response is None and isinstance(exc, exceptions.FirebaseError) and not_sent(exc):
        auth = _cause(exc, google.auth.exceptions.GoogleAuthError)
        return (
            f"cannot use the credentials: {auth}"[:300] if auth else f"cannot reach FCM: {_cause(exc, Exception)}"[:300]
        )
    if response is not None:
        try:
            details = response.json().get("error", {}).get("details", []) or []
            code = next((d["errorCode"] for d in details if d.get("errorCode")), code)
        except (ValueError, AttributeError, TypeError):
            pass
    text = " ".join(str(exc).split())
    return f"{code}: {text[:300]}"
