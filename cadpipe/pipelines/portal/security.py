"""The portal's front door, as one ASGI wrapper around the app (:class:`SecurityGate`), acting before any route
runs and before a request body is read:

- **Host check** (DNS rebinding): the ``Host`` header must name an allowed host (``cadpipe serve`` allows its bound
  address, the loopback names when bound to loopback, and ``--allowed-hosts``); else ``400``.
- **Token** (with ``--token``): every route but ``GET /api/health`` needs it — ``Authorization: Bearer <token>``,
  a ``token`` query parameter, or the session cookie the upload page gets when opened with ``?token=`` (HttpOnly,
  ``SameSite=Strict``, holding an HMAC of the token, not the token). Checked from the headers, so an upload without
  it is refused with ``401`` before a byte of its body is read.
- **Uploads spool into the data folder**: Starlette's form parser keeps each uploaded file in memory up to 1 MiB
  and then in a temporary file in the *system* temp folder; :func:`install_spool_dir` makes it use
  ``<data-dir>/spool`` instead for requests that pass this gate (the size limit itself is
  :class:`~cadpipe.pipelines.portal.app.BodyLimit`, before the parser).
- **Response headers** on every response: ``Content-Security-Policy`` (same-origin scripts only, no plug-ins,
  framing by the portal itself only), ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: SAMEORIGIN``,
  ``Referrer-Policy: no-referrer``, ``Cache-Control: no-store`` on API answers.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import os
from urllib.parse import parse_qs

__all__ = ["SecurityGate", "install_spool_dir", "session_cookie_value", "COOKIE_NAME", "PUBLIC_PATHS"]

COOKIE_NAME = "cadpipe_session"
PUBLIC_PATHS = {"/api/health"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'")
# Swagger UI (/docs) starts itself with an inline script
CSP_DOCS = CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'")
_SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"SAMEORIGIN"),
                     (b"referrer-policy", b"no-referrer")]

_spool_dir: contextvars.ContextVar[str | None] = contextvars.ContextVar("cadpipe_spool_dir", default=None)


def install_spool_dir() -> None:
    """Make Starlette's multipart parser spool uploaded files into the folder set for the current request (the
    gate sets ``<data-dir>/spool``); requests outside the gate keep Starlette's default. Idempotent."""
    import tempfile

    import starlette.formparsers as fp

    if getattr(fp.SpooledTemporaryFile, "_cadpipe", False):
        return

    def spooled(max_size: int = 0, *args, **kwargs):
        folder = _spool_dir.get()
        if folder is not None:
            os.makedirs(folder, exist_ok=True)
            kwargs["dir"] = folder
        return tempfile.SpooledTemporaryFile(max_size, *args, **kwargs)

    spooled._cadpipe = True
    fp.SpooledTemporaryFile = spooled


def session_cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"cadpipe-portal-session", hashlib.sha256).hexdigest()


def _host_of(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class SecurityGate:
    """ASGI wrapper (module docstring). ``allowed_hosts=None``: no Host check (in-process apps, tests)."""

    def __init__(self, app, token: str | None, allowed_hosts: list[str] | None, spool_dir: str):
        self.app, self.token, self.spool_dir = app, token, spool_dir
        self.allowed = None if allowed_hosts is None else {h.strip().lower().strip("[]") for h in allowed_hosts}
        self.cookie = session_cookie_value(token) if token else None

    @staticmethod
    def cookie_ok(cookie_header: str, token: str) -> bool:
        """Whether a ``Cookie`` header carries the session cookie of ``token``."""
        expected = session_cookie_value(token).encode()
        for part in cookie_header.split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE_NAME and hmac.compare_digest(value.encode(), expected):
                return True
        return False

    def _authorised(self, scope) -> tuple[bool, bool]:
        """(authorised, came with a valid ?token= query: set the session cookie)."""
        if not self.token:
            return True, False
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        expected = self.token.encode()
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and hmac.compare_digest(auth[7:].strip().encode(), expected):
            return True, False
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [])
        if any(hmac.compare_digest(q.encode(), expected) for q in query):
            return True, True
        return self.cookie_ok(headers.get("cookie", ""), self.token), False

    async def _refuse(self, send, status: int, message: str, extra: list | None = None) -> None:
        body = json.dumps({"error": message, "file": "", "reason": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close"), (b"content-security-policy", CSP.encode()),
                                *_SECURITY_HEADERS, *(extra or [])]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if self.allowed is not None:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if _host_of(host) not in self.allowed:
                return await self._refuse(send, 400, "this Host is not served here (see --allowed-hosts)")
        ok, with_query_token = self._authorised(scope)
        set_cookie = with_query_token and path == "/"  # the page opened with ?token=: a session for its assets
        if not ok and path not in PUBLIC_PATHS:
            return await self._refuse(send, 401, "a valid access token is required (Authorization: Bearer <token>)",
                                      [(b"www-authenticate", b"Bearer")])
        csp = (CSP_DOCS if path == "/docs" else CSP).encode()

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() not in
                           {b"content-security-policy", b"x-content-type-options", b"x-frame-options",
                            b"referrer-policy"}]
                headers += [(b"content-security-policy", csp), *_SECURITY_HEADERS]
                if path.startswith("/api/") and not any(h[0].lower() == b"cache-control" for h in headers):
                    headers.append((b"cache-control", b"no-store"))
                if set_cookie and self.cookie:
                    headers.append((b"set-cookie", f"{COOKIE_NAME}={self.cookie}; Path=/; HttpOnly; "
                                                   "SameSite=Strict".encode()))
                message = dict(message, headers=headers)
            await send(message)

        reset = _spool_dir.set(os.path.join(self.spool_dir, "spool"))
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            _spool_dir.reset(reset)
