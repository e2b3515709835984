"""HTTP requests a server cannot stretch: an overall deadline per request (and per caller-given span, e.g. one
study), a cap on the bytes of a body, bodies streamed in chunks.

``requests``' own ``timeout`` bounds each socket read, not a request: a server sending one byte per second keeps a
request alive for ever, and a body that never ends grows memory without bound. Here

- every request runs under a :class:`Deadline`; when it passes, a watchdog thread shuts down the session's sockets
  (``shutdown(SHUT_RDWR)`` wakes a blocked read whatever the server does, headers phase included) and the request
  fails with :class:`RequestBounded` saying which limit was reached;
- a body is read in chunks of at most :data:`CHUNK` bytes; :meth:`BoundedSession.get_bytes` stops at ``max_bytes``;
  :meth:`BoundedSession.stream` hands the chunks to the caller (who writes them to disk) while the deadline holds;
- redirects are followed at most :data:`MAX_REDIRECTS` times; ``requests`` drops the credentials when a redirect
  leaves the host, port or scheme.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import weakref
from typing import Iterator

__all__ = ["BoundedSession", "Deadline", "RequestBounded", "CHUNK", "MAX_REDIRECTS"]

CHUNK = 1 << 16
MAX_REDIRECTS = 5


class RequestBounded(Exception):
    """A request stopped by a limit: ``reason`` says which (no header or body content in it)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Deadline:
    """A point in time ``seconds`` from now, named by ``what`` ("the request", "the study") in messages."""

    def __init__(self, seconds: float, what: str):
        self.seconds, self.what = float(seconds), what
        self.end = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def reason(self) -> str:
        return f"{self.what} did not finish within its deadline of {self.seconds:g} s"


def _tracked_pool_classes(registry: weakref.WeakSet) -> dict:
    """urllib3 connection pool classes whose connections add their socket to ``registry`` when they connect."""
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    def tracked(pool_cls, conn_cls):
        def connect(self):
            conn_cls.connect(self)
            registry.add(self.sock)

        conn = type(f"Tracked{conn_cls.__name__}", (conn_cls,), {"connect": connect})
        return type(f"Tracked{pool_cls.__name__}", (pool_cls,), {"ConnectionCls": conn})

    return {"http": tracked(HTTPConnectionPool, HTTPConnection), "https": tracked(HTTPSConnectionPool, HTTPSConnection)}


def _adapter(registry: weakref.WeakSet):
    from requests.adapters import HTTPAdapter

    class TrackingAdapter(HTTPAdapter):
        """An adapter whose connections register their sockets (the watchdog shuts them down)."""

        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = _tracked_pool_classes(registry)

        def proxy_manager_for(self, proxy, **kwargs):
            manager = super().proxy_manager_for(proxy, **kwargs)
            manager.pool_classes_by_scheme = _tracked_pool_classes(registry)
            return manager

    return TrackingAdapter(max_retries=0)


class BoundedSession:
    """A ``requests`` session whose requests end by a deadline (module docstring).

    ``connect_timeout`` / ``read_timeout`` (seconds) bound one connection attempt and one silent read;
    ``request_timeout`` bounds a whole request, body included (a tighter deadline given to a call wins).
    """

    def __init__(self, headers: dict | None = None, auth: tuple[str, str] | None = None,
                 connect_timeout: float = 10.0, read_timeout: float = 30.0, request_timeout: float = 120.0):
        import requests

        self._sockets: weakref.WeakSet = weakref.WeakSet()
        self.session = requests.Session()
        self.session.max_redirects = MAX_REDIRECTS
        adapter = _adapter(self._sockets)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(headers or {})
        if auth is not None:
            self.session.auth = auth
        self.connect_timeout, self.read_timeout, self.request_timeout = connect_timeout, read_timeout, request_timeout

    def _shutdown_sockets(self) -> None:
        for sock in list(self._sockets):
            with contextlib.suppress(OSError, ValueError, TypeError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: also under TLS

    @contextlib.contextmanager
    def _watch(self, deadline: Deadline | None):
        """Run the block under the tighter of ``deadline`` and this request's own; raise :class:`RequestBounded`
        when it passed (whatever the block raised or returned meanwhile)."""
        own = Deadline(self.request_timeout, "the request")
        limit = own if deadline is None or own.remaining() <= deadline.remaining() else deadline
        if limit.remaining() <= 0:
            raise RequestBounded(limit.reason())
        fired = threading.Event()

        def fire():
            fired.set()
            self._shutdown_sockets()

        timer = threading.Timer(limit.remaining(), fire)
        timer.daemon = True
        timer.start()
        try:
            yield lambda: fired.is_set()
        except RequestBounded:
            raise
        except Exception:
            if fired.is_set():
                raise RequestBounded(limit.reason()) from None
            raise
        finally:
            timer.cancel()
        if fired.is_set():
            raise RequestBounded(limit.reason())

    def _timeout(self, deadline: Deadline | None) -> tuple[float, float]:
        left = self.request_timeout if deadline is None else max(0.001, min(self.request_timeout,
                                                                            deadline.remaining()))
        return min(self.connect_timeout, left), min(self.read_timeout, left)

    @contextlib.contextmanager
    def stream(self, method: str, url: str, deadline: Deadline | None = None, **kwargs) -> Iterator:
        """``(response, chunks)``: the response (HTTP errors raised as ``requests.HTTPError``) and an iterator over
        its body in chunks of at most :data:`CHUNK` bytes, all within the deadline (:class:`RequestBounded`
        when it passes)."""
        with self._watch(deadline) as fired:
            response = self.session.request(method, url, stream=True, timeout=self._timeout(deadline), **kwargs)
            try:
                response.raise_for_status()

                def chunks():
                    for chunk in response.iter_content(CHUNK):
                        if fired():
                            break
                        yield chunk

                yield response, chunks()
            finally:
                response.close()

    def get_bytes(self, url: str, max_bytes: int, what: str = "the answer", deadline: Deadline | None = None,
                  **kwargs) -> tuple[int, bytes]:
        """``(status, body)`` of a GET, the body at most ``max_bytes`` (:class:`RequestBounded` beyond)."""
        return self.request_bytes("GET", url, max_bytes, what, deadline, **kwargs)

    def request_bytes(self, method: str, url: str, max_bytes: int, what: str = "the answer",
                      deadline: Deadline | None = None, **kwargs) -> tuple[int, bytes]:
        """``(status, body)`` of any request (see :meth:`get_bytes`)."""
        body = bytearray()
        with self.stream(method, url, deadline, **kwargs) as (response, chunks):
            for chunk in chunks:
                body += chunk
                if len(body) > max_bytes:
                    raise RequestBounded(f"{what} is larger than the limit of {_size(max_bytes)}")
            return response.status_code, bytes(body)

    def close(self) -> None:
        self.session.close()


def _size(n: int) -> str:
    return f"{n / (1 << 20):g} MiB" if n >= 1 << 20 else f"{n} bytes"
