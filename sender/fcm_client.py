"""A firebase-admin App for sending, pointed at Google or at a local FCM emulator (FCM_EMULATOR_HOST).

What firebase-admin 7.x gives us, and what this module changes (read off its source):

- URL: ``messaging._MessagingService`` formats ``FCM_URL`` into the instance attribute ``_fcm_url`` when
  the App's messaging service is first created; ``send``, ``send_each`` and ``send_each_async`` all
  post to ``_fcm_url``. We set that attribute on this App's service only (no class-wide patch).
- Retries: the requests session mounts ``_http_client.DEFAULT_RETRY_CONFIG`` (urllib3 ``Retry``:
  connect=1, read=1 for any method, 5 attempts on 500/503 with 0/1/2/4 s backoff, and -- because
  ``respect_retry_after_header`` is on -- also 429 when a ``Retry-After`` header is present, sleeping
  that long). The retried POSTs are invisible to the caller and can duplicate a push. The sender
  retries itself, so by default we mount ``NO_RETRY``: a refused connection is retried once (nothing
  was sent), nothing else is.
- Pool: ``send_each`` runs one thread per message (up to 500) and the SDK mounts a 100-connection
  adapter for ``https://fcm.googleapis.com`` only; everything else falls back to a 10-connection pool.
  We mount our adapter (pool of ``pool_size``, blocking when exhausted so connections are reused, not
  opened and thrown away) on the URL actually used.
- Environment: requests looks up proxy variables in ``os.environ`` on every request; we take them once
  and turn ``trust_env`` off on this session (about a quarter less client CPU per push).
- ``send_each_async`` uses a separate httpx client with its own retry transport; not configured here.

``Transport`` is what the sender posts with: the same requests as ``messaging.send`` (the SDK's message
encoder, URL, headers, the App's credential and its refresh on 401, the same timeout, ``NO_RETRY``, the
proxy and CA bundle taken from the environment once) over one urllib3 connection pool, without
``requests``: ``send_each`` took 0.74 ms of client CPU per push here, this 0.33-0.37 ms from 16-100 threads
(bench/README.md). Answers and failures come back as the exceptions firebase-admin raises for
them: an error response through the SDK's own FCM error handler; a connection failure mapped to the
``requests`` exception that ``requests`` would have raised for the same urllib3 error (so
``dispatch.classify`` and ``dispatch.describe`` read both paths alike).
"""

from __future__ import annotations

import json
import os
import threading
from urllib.parse import urlsplit

import certifi
import firebase_admin
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.requests
import requests
import requests.adapters
import urllib3
from firebase_admin import _http_client, credentials, exceptions, messaging
from urllib3 import exceptions as u3
from urllib3.util.retry import Retry

FCM_BASE_URL = "https://fcm.googleapis.com"
EMULATOR_TOKEN = "emulator-token"

# Retry only failures to connect (the request never left); never a POST that may have reached FCM.
NO_RETRY = Retry(
    total=None,
    connect=1,
    read=False,
    redirect=False,
    status=0,
    other=0,
    status_forcelist=(),
    respect_retry_after_header=False,
    raise_on_status=False,
)


class EmulatorCredentials(google.auth.credentials.Credentials):
    """A fixed bearer token that never expires: what the emulator accepts."""

    def __init__(self, token: str = EMULATOR_TOKEN) -> None:
        super().__init__()
        self.token = token

    def refresh(self, request: object) -> None:
        pass


def make_app(
    emulator_host: str | None,
    project_id: str | None,
    *,
    name: str = firebase_admin._DEFAULT_APP_NAME,
    retries: Retry | int | None = NO_RETRY,
    pool_size: int = 100,
    timeout: float = 30,
    credential: credentials.Base | google.auth.credentials.Credentials | None = None,
    credentials_file: str | None = None,
) -> firebase_admin.App:
    """Initialise a firebase-admin App whose messaging goes to ``emulator_host`` ("host:port") or Google.

    Without an emulator the credential is the service-account file ``credentials_file``, else
    Application Default Credentials; ``project_id`` may then be None (taken from the file).
    ``retries``: urllib3 retry policy for FCM calls; ``NO_RETRY`` by default, ``None`` keeps the SDK's.
    ``credential`` overrides that choice (e.g. a service account whose token_uri is the emulator's).
    """
    options = {"httpTimeout": timeout}
    if project_id:
        options["projectId"] = project_id
    if emulator_host:
        if not project_id:
            raise ValueError("project_id is required with an FCM emulator")
        credential = credential or EmulatorCredentials()
        base_url = f"http://{emulator_host}"
    else:
        credential = credential or (
            credentials.Certificate(credentials_file) if credentials_file else credentials.ApplicationDefault()
        )
        base_url = FCM_BASE_URL
    app = firebase_admin.initialize_app(credential, options, name=name)
    try:
        service = messaging._get_messaging_service(app)
        if not hasattr(service, "_fcm_url") or not hasattr(service, "_client"):
            raise RuntimeError(f"firebase-admin {firebase_admin.__version__}: messaging internals changed")
        service._fcm_url = f"{base_url}/v1/projects/{app.project_id}/messages:send"
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=1,
            pool_maxsize=pool_size,
            pool_block=True,
            max_retries=_http_client.DEFAULT_RETRY_CONFIG if retries is None else retries,
        )
        session = service._client.session
        session.mount(base_url, adapter)
        # requests re-reads proxy settings from os.environ on every request (a quarter of the client's
        # CPU per push here); read them once instead.
        session.proxies = requests.utils.get_environ_proxies(base_url)
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        session.trust_env = False
    except BaseException:
        firebase_admin.delete_app(app)
        raise
    return app


class Transport:
    """Post FCM v1 messages for `app` through a urllib3 pool of `pool_size` connections (thread-safe).

    `post(body)` returns (message name, None) or (None, the FirebaseError the SDK would have raised).
    Like google-auth's AuthorizedSession, it applies the App's credential before each request
    (refreshing it when it expires) and, on a 401, refreshes it and posts again, at most twice: FCM
    refused those requests, so nothing is sent twice.
    """

    MAX_REFRESHES = 2

    def __init__(self, app: firebase_admin.App, pool_size: int = 100, retries: Retry = NO_RETRY) -> None:
        service = messaging._get_messaging_service(app)
        self.service = service
        self.url = service._fcm_url
        timeout = app.options.get("httpTimeout", _http_client.DEFAULT_TIMEOUT_SECONDS)
        self._timeout = urllib3.Timeout(connect=timeout, read=timeout)
        self._retries = retries
        self._credential = service._credential
        self._auth_request = google.auth.transport.requests.Request()
        self._lock = threading.Lock()
        self._base_headers = {
            **service._fcm_headers,
            **_http_client.METRICS_HEADERS,
            "Content-Type": "application/json",
            "User-Agent": requests.utils.default_user_agent(),
        }
        proxy = requests.utils.select_proxy(self.url, requests.utils.get_environ_proxies(self.url))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
        tls = {"cert_reqs": "CERT_REQUIRED", "ca_cert_dir" if os.path.isdir(bundle) else "ca_certs": bundle}
        options = {"num_pools": 1, "maxsize": pool_size, "block": True, "retries": retries, **tls}
        if proxy:  # through the proxy, as requests would: the manager sends absolute URLs or tunnels
            self._pool = urllib3.ProxyManager(proxy, **options)
            self._target = self.url
        else:  # one host: its connection pool, without the manager's URL parsing per request
            self._pool = urllib3.PoolManager(**options).connection_from_url(self.url)
            parts = urlsplit(self.url)
            self._target = parts.path + (f"?{parts.query}" if parts.query else "")

    def close(self) -> None:
        self._pool.close()

    @staticmethod
    def body(message: messaging.Message, dry_run: bool) -> bytes:
        """The request body of `message`, as the SDK encodes it; ValueError/TypeError if it cannot."""
        data = {"message": messaging._MessagingService.encode_message(message)}
        if dry_run:
            data["validate_only"] = True
        return json.dumps(data, allow_nan=False).encode()

    def _headers(self) -> tuple[dict[str, str], str | None]:
        headers = dict(self._base_headers)
        with self._lock:  # one thread refreshes an expired token, the others wait for it
            self._credential.before_request(self._auth_request, "POST", self.url, headers)
            return headers, self._credential.token

    def post(self, body: bytes) -> tuple[str | None, exceptions.FirebaseError | None]:
        refreshes = 0
        while True:
            try:
                headers, token = self._headers()
            except google.auth.exceptions.GoogleAuthError as exc:  # before the request: nothing sent
                return None, exceptions.UnknownError(f"Unknown error while making remote service calls: {exc}", exc)
            try:
                response = self._pool.urlopen(
                    "POST",
                    self._target,
                    body=body,
                    headers=headers,
                    retries=self._retries,
                    timeout=self._timeout,
                    redirect=False,
                    assert_same_host=False,
                )
            except (u3.HTTPError, OSError) as exc:
                return None, self.service._handle_fcm_error(requests_error(exc))
            if response.status == 401 and refreshes < self.MAX_REFRESHES:
                refreshes += 1
                try:
                    with self._lock:
                        if self._credential.token == token:  # not refreshed by another thread meanwhile
                            self._credential.refresh(self._auth_request)
                except google.auth.exceptions.GoogleAuthError as exc:
                    return None, exceptions.UnknownError(f"Unknown error while making remote service calls: {exc}", exc)
                continue
            if 200 <= response.status < 300:
                try:
                    return json.loads(response.data)["name"], None
                except (ValueError, KeyError, TypeError) as exc:
                    return None, exceptions.UnknownError(f"Unexpected response from FCM: {exc}", exc)
            return None, self.service._handle_fcm_error(http_error(self.url, response))


def http_error(url: str, response: urllib3.BaseHTTPResponse) -> requests.exceptions.HTTPError:
    """The HTTPError that requests' raise_for_status would raise for this answer."""
    answer = requests.Response()
    answer.status_code = response.status
    answer.headers = requests.structures.CaseInsensitiveDict(response.headers)
    answer._content = response.data
    answer.reason = response.reason
    answer.url = url
    answer.encoding = requests.utils.get_encoding_from_headers(answer.headers)
    kind = "Client" if response.status < 500 else "Server"
    return requests.exceptions.HTTPError(
        f"{response.status} {kind} Error: {response.reason} for url: {url}", response=answer
    )


def requests_error(exc: Exception) -> requests.exceptions.RequestException:
    """The exception requests' HTTPAdapter.send raises for this urllib3 error (requests 2.3x)."""
    if isinstance(exc, u3.MaxRetryError):
        reason = exc.reason
        if isinstance(reason, u3.ConnectTimeoutError) and not isinstance(reason, u3.NewConnectionError):
            return requests.exceptions.ConnectTimeout(exc)
        if isinstance(reason, u3.ResponseError):
            return requests.exceptions.RetryError(exc)
        if isinstance(reason, u3.ProxyError):
            return requests.exceptions.ProxyError(exc)
        if isinstance(reason, u3.SSLError):
            return requests.exceptions.SSLError(exc)
        return requests.exceptions.ConnectionError(exc)
    if isinstance(exc, (u3.ProtocolError, OSError, u3.ClosedPoolError)):
        return requests.exceptions.ConnectionError(exc)
    if isinstance(exc, u3.ProxyError):
        return requests.exceptions.ProxyError(exc)
    if isinstance(exc, u3.SSLError):
        return requests.exceptions.SSLError(exc)
    if isinstance(exc, u3.ReadTimeoutError):
        return requests.exceptions.ReadTimeout(exc)
    if isinstance(exc, u3.InvalidHeader):
        return requests.exceptions.InvalidHeader(exc)
    return requests.exceptions.RequestException(exc)  # requests would let it through: unknown
