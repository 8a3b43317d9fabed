"""Hand messages to FCM through firebase-admin, from worker processes, with the retry policy.

The SDK is CPU-bound (about 800 messages/s per process here), so batches go to a pool of worker
processes, each with its own firebase-admin App. A worker sends one batch with `send_each`,
retries UNAVAILABLE / INTERNAL / QUOTA_EXCEEDED with exponential backoff that honours
Retry-After (a bounded number of times), and returns one Outcome per message. The SDK's own
retries are off (fcm_client.NO_RETRY), so a push is never re-posted behind our back; and only
answers from FCM are retried: a connection that breaks after the request left may have delivered
the push, so that message is left `pending` (unknown outcome) rather than sent again.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import time
import warnings
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Message:
    user_id: str
    token: str
    title: str
    body: str
    data: dict[str, str]


@dataclass(frozen=True)
class Outcome:
    # sent, validated, failed, invalid_token; queued: FCM unreachable, nothing sent;
    # pending: the connection broke after the request left, so FCM may or may not have it
    status: str
    message_id: str | None = None
    error: str | None = None


_app = None


def init_worker(emulator_host: str | None, project_id: str | None) -> None:
    """Process-pool initializer: one firebase-admin App per worker; die with the parent."""
    global _app
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    try:  # Linux: SIGKILL this worker when the parent dies, so nothing sends after a kill -9
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    _app = fcm_client.make_app(emulator_host, project_id, name=f"sender-{os.getpid()}")


def send_batch(batch: list[Message], dry_run: bool) -> list[Outcome]:
    """Send one batch (≤ 500) and return an Outcome per message, in order."""
    fcm_messages = [
        messaging.Message(
            token=m.token,
            notification=messaging.Notification(title=m.title, body=m.body),
            data=m.data or None,
        )
        for m in batch
    ]
    outcomes: list[Outcome | None] = [None] * len(batch)
    todo = list(range(len(batch)))
    for attempt in range(MAX_RETRIES + 1):
        try:
            response = messaging.send_each([fcm_messages[i] for i in todo], dry_run=dry_run, app=_app)
            results = [(i, r.success, r.message_id, r.exception) for i, r in zip(todo, response.responses, strict=True)]
        except exceptions.FirebaseError as exc:  # the whole call failed
            results = [(i, False, None, exc) for i in todo]
        retry, wait = [], 0.0
        for i, success, message_id, exc in results:
            if success:
                outcomes[i] = Outcome("validated" if dry_run else "sent", message_id)
            elif is_token_error(exc):
                outcomes[i] = Outcome("invalid_token", error=describe(exc))
            elif getattr(exc, "http_response", None) is None:  # no answer from FCM
                # refused before anything was sent: back to the queue; otherwise FCM may have the push
                outcomes[i] = Outcome("queued" if not_sent(exc) else "pending", error=describe(exc))
            elif isinstance(exc, RETRYABLE) and attempt < MAX_RETRIES and (retry_after(exc) or 0) <= MAX_WAIT:
                retry.append(i)
                wait = max(wait, retry_after(exc) or 0.0)
            else:
                outcomes[i] = Outcome("failed", error=describe(exc))
        if not retry:
            break
        time.sleep(max(BACKOFF_BASE * 2**attempt * random.uniform(1.0, 1.5), wait))
        todo = retry
    return outcomes  # type: ignore[return-value]


def is_token_error(exc: Exception) -> bool:
    """UNREGISTERED, a token from another sender, or INVALID_ARGUMENT about the token."""
    if isinstance(exc, (messaging.UnregisteredError, messaging.SenderIdMismatchError)):
        return True
    return isinstance(exc, exceptions.InvalidArgumentError) and "registration token" in str(exc).lower()


def not_sent(exc: Exception) -> bool:
    """The connection was never made (refused, no route, DNS): FCM cannot have received the push."""
    cause = getattr(exc, "cause", None)
    while cause is not None:
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
    code = getattr(exc, "code", None) or type(exc).__name__
    fcm_code = type(exc).__name__ if isinstance(exc, messaging.UnregisteredError) else None
    return f"{fcm_code or code}: {str(exc)[:300]}"
