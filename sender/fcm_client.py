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
"""

from __future__ import annotations

import os

import firebase_admin
import google.auth.credentials
import requests
import requests.adapters
from firebase_admin import _http_client, credentials, messaging
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
