"""A DICOMweb server of our own that misbehaves on purpose, for the tests of ``cadpipe score --dicomweb``.

:class:`FakePacs` serves QIDO-RS (studies, series, instances as DICOM JSON), WADO-RS (a series as
``multipart/related``) and STOW-RS (accepts everything) for the DICOM files given to :meth:`FakePacs.add`, on a
free port of 127.0.0.1 only. Per study, WADO-RS may misbehave (``behaviour``):

- ``endless``: one part that never ends (bytes for as long as the client reads);
- ``huge``: one complete part of ``huge_bytes``;
- ``slow``: the series sent one byte every 0.1 s;
- ``redirect``: ``302`` to the same path on ``redirect_to`` (another FakePacs); ``redirect_loop``: ``302`` to itself;

and the study search (``qido``): ``malformed`` (a list holding ``"x"`` and ``5``), ``not_json``, ``paging_loop``
(every page ``limit`` new UIDs, the real studies first), ``slow`` (one byte every 0.1 s).

Bounded by design: the server binds 127.0.0.1, every answer stops after :data:`MAX_ANSWER_S` seconds or when the
client goes away (writes time out after 5 s), and :meth:`FakePacs.stop` shuts it down. ``requests`` lists
``(method, path, Authorization header or None)`` of every request it received.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_ANSWER_S = 30.0
ROOT = "/dicom-web"


def _json_uid(tag: str, uid: str) -> dict:
    return {tag: {"vr": "UI", "Value": [uid]}}


class FakePacs:
    def __init__(self):
        self.studies: dict[str, dict[str, list[tuple[str, bytes]]]] = {}
        self.modality: dict[str, str] = {}
        self.behaviour: dict[str, str] = {}
        self.qido = "ok"
        self.huge_bytes = 3 << 20
        self.redirect_to: "FakePacs | None" = None
        self.requests: list[tuple[str, str, str | None]] = []
        self.bytes_sent = 0
        self.server: ThreadingHTTPServer | None = None

    def add(self, path: str, behaviour: str = "ok") -> str:
        """Serve the DICOM file ``path``; returns its Study Instance UID."""
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        with open(path, "rb") as f:
            self.studies.setdefault(study, {}).setdefault(series, []).append((sop, f.read()))
        self.modality[series] = str(ds.get("Modality", "OT"))
        if behaviour != "ok":
            self.behaviour[study] = behaviour
        return study

    @property
    def url(self) -> str:
        """The DICOMweb root (also after :meth:`stop`)."""
        return self._url

    def start(self) -> "FakePacs":
        pacs = self

        class Handler(_Handler):
            server_pacs = pacs

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._url = f"http://127.0.0.1:{self.server.server_address[1]}{ROOT}"
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self) -> "FakePacs":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    server_pacs: FakePacs
    protocol_version = "HTTP/1.0"  # one request per connection; a body ends when the connection closes

    def log_message(self, *args) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(5)  # a client that stops reading cannot hold a thread for ever
        self.t0 = time.monotonic()

    # -- plumbing -------------------------------------------------------------------------------------------------
    def _send(self, data: bytes) -> bool:
        """Write; False when the client is gone or the answer has run out of time."""
        if time.monotonic() - self.t0 > MAX_ANSWER_S:
            return False
        try:
            self.wfile.write(data)
            self.server_pacs.bytes_sent += len(data)
            return True
        except OSError:
            return False

    def _drip(self, data: bytes) -> None:
        for i in range(len(data)):
            if not self._send(data[i: i + 1]):
                return
            time.sleep(0.1)

    def _answer(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self._send(body)

    def _json(self, data) -> None:
        self._answer(200, json.dumps(data).encode(), "application/dicom+json")

    # -- routes ---------------------------------------------------------------------------------------------------
    def do_POST(self) -> None:  # STOW-RS: read the body, accept it
        pacs = self.server_pacs
        pacs.requests.append(("POST", self.path, self.headers.get("Authorization")))
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        self._json({})

    def do_GET(self) -> None:
        pacs = self.server_pacs
        pacs.requests.append(("GET", self.path, self.headers.get("Authorization")))
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = url.path[len(ROOT):].strip("/").split("/") if url.path.startswith(ROOT) else []
        if parts == ["studies"]:
            return self._studies(query)
        if len(parts) >= 2 and parts[0] == "studies" and parts[1] not in pacs.studies:
            return self._answer(404, b"", "text/plain")
        if len(parts) == 3 and parts[2] == "series":
            return self._json([_json_uid("0020000E", s) | {"00080060": {"vr": "CS", "Value": [pacs.modality[s]]}}
                               for s in pacs.studies[parts[1]]])
        if len(parts) == 5 and parts[4] == "instances":
            return self._json([_json_uid("00080018", sop) for sop, _ in pacs.studies[parts[1]].get(parts[3], [])])
        if len(parts) == 4 and parts[2] == "series":
            return self._series(parts[1], parts[3])
        self._answer(404, b"", "text/plain")

    def _studies(self, query: dict) -> None:
        pacs = self.server_pacs
        real = [_json_uid("0020000D", s) for s in pacs.studies]
        if pacs.qido == "malformed":
            return self._json(["x", 5])
        if pacs.qido == "not_json":
            return self._answer(200, b"[{\"0020000D\": ", "application/dicom+json")
        if pacs.qido == "slow":
            body = json.dumps(real).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.end_headers()
            return self._drip(body)
        if pacs.qido == "paging_loop":  # every page full of new UIDs, whatever the offset
            limit = int(query.get("limit", 100))
            offset = int(query.get("offset", 0))
            page = real if offset == 0 else []
            page += [_json_uid("0020000D", f"2.25.{uuid.uuid4().int}") for _ in range(limit - len(page))]
            return self._json(page)
        self._json(real)

    def _series(self, study: str, series: str) -> None:
        pacs = self.server_pacs
        behaviour = pacs.behaviour.get(study, "ok")
        if behaviour in ("redirect", "redirect_loop"):
            target = pacs.redirect_to.url if behaviour == "redirect" else pacs.url
            self.send_response(302)
            self.send_header("Location", target + self.path[len(ROOT):])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        boundary = "fakepacs-boundary"
        self.send_response(200)
        self.send_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={boundary}')
        self.end_headers()
        head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        instances = pacs.studies[study].get(series, [])
        if behaviour == "endless":
            if not self._send(head + instances[0][1]):
                return
            block = b"\0" * (1 << 16)
            while self._send(block):
                pass
            return
        if behaviour == "huge":
            self._send(head + instances[0][1])
            block = b"\0" * (1 << 16)
            for _ in range(pacs.huge_bytes // len(block)):
                if not self._send(block):
                    return
            self._send(f"\r\n--{boundary}--\r\n".encode())
            return
        body = b"".join(head + data + b"\r\n" for _, data in instances) + f"--{boundary}--\r\n".encode()
        if behaviour == "slow":
            return self._drip(body)
        self._send(body)
