"""DICOMweb: find studies (QIDO-RS), retrieve them into a cache folder (WADO-RS), store results (STOW-RS).

Everything a server sends is bounded (:class:`DicomwebLimits`, :mod:`.bounded_http`):

- every QIDO-RS or STOW-RS request has an overall deadline (``request_timeout_s``), and a study's whole retrieval
  (its searches and every series) another one (``study_timeout_s``); a silent socket fails after ``read_timeout_s``;
- a QIDO-RS answer is at most ``max_json_mb`` and must be a JSON list of objects each holding a usable UID (text
  without control characters, at most :data:`MAX_UID` characters; else the error names the server and what was
  wrong); a study search stops at ``max_studies`` matches, a series or
  instance listing at :data:`MAX_LISTED` (paging loops end: a page without a new UID ends a search);
- WADO-RS answers are streamed: each instance (one part of the multipart answer) is written to a hidden temp file
  in ``<cache>/<study>/<series>/`` as it arrives (never a whole part in memory), then renamed to
  ``<SOP Instance UID>.dcm`` (read from its header); an instance over ``max_instance_mb`` or a study over
  ``max_study_mb`` stops that study's retrieval.

Over any limit, the study is not (fully) retrieved: :class:`DicomwebError` with the reason, the instances already
in the cache stay (a rerun fetches only what is missing: an instance in the cache is not written again, a series
whose instances are all cached is not requested).

Credentials (:func:`read_auth`) come from the environment variable ``CADPIPE_DICOMWEB_AUTH`` or from a file,
never from the command line; the file must not be readable by other users; they are not logged and never appear in
error messages. The text is one line, ``bearer <token>`` or ``basic <user>:<password>``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import quote, urlsplit, urlunsplit

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.outputs.dicom_results import is_cadpipe_result
from cadpipe.pipelines.outputs.private_files import make_private_dirs, private_file_mode
from cadpipe.pipelines.pacs.bounded_http import BoundedSession, Deadline, RequestBounded
from cadpipe.pipelines.pacs.multipart import MultipartError, MultipartSplitter, boundary_of
from cadpipe.pipelines.pacs.secret_file import read_secret_file

__all__ = ["AUTH_ENV", "read_auth", "connect", "find_studies", "retrieve_study", "store_files", "DicomwebError",
           "DicomwebLimits", "DicomwebClient", "RetrieveResult", "MAX_LISTED"]

log = logging.getLogger("cadpipe.dicomweb")

AUTH_ENV = "CADPIPE_DICOMWEB_AUTH"
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
MODALITY, SERIES_DESCRIPTION = "00080060", "0008103E"
_UID_NAMES = {STUDY_UID: "Study Instance UID", SERIES_UID: "Series Instance UID", SOP_UID: "SOP Instance UID"}
PAGE = 500
MAX_LISTED = 100_000  # series of a study, instances of a series
MAX_UID = 4096  # DICOM allows 64 characters; longer ones are used as found (output names hash them)
RETRY_STATUSES = (429, 503, 504)


@dataclass
class DicomwebLimits:
    """What one server may cost a run (docs/security.md lists the defaults)."""

    request_timeout_s: float = 120.0  # one QIDO-RS / STOW-RS request, answer included
    study_timeout_s: float = 3600.0  # one study: its searches and all of its series
    read_timeout_s: float = 30.0  # one silent read
    connect_timeout_s: float = 10.0
    max_instance_mb: float = 2048.0  # one instance (a large tomosynthesis or whole-slide object is ~1-2 GB)
    max_study_mb: float = 16384.0
    max_studies: int = 1000  # matches of a study search (--query)
    max_json_mb: float = 64.0  # one QIDO-RS answer

    def check(self) -> None:
        """Raise ``ValueError`` naming the first limit that is not positive."""
        for name, value in self.__dict__.items():
            if not value or value <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be > 0 (got {value})")


class DicomwebError(Exception):
    """The DICOMweb server could not be used: ``url`` and a reason that never holds credentials."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url, self.reason = url, reason


def public_url(url: str) -> str:
    """``url`` without user:password and query, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# -- credentials ------------------------------------------------------------------------------------------------
_TOKEN = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII (RFC 6750's b64token and more)


def read_auth(auth_file: str | None = None, environ=os.environ) -> tuple[str, str] | None:
    """``("bearer", token)``, ``("basic", "user:password")`` or None (no credentials).

    ``auth_file`` wins over the environment variable ``CADPIPE_DICOMWEB_AUTH``.

    Raises:
        CadpipeInputError: the file cannot be read, is readable by group or others (it must be mode 600 or 400),
            is not UTF-8, or its text is not one line ``bearer <token>`` / ``basic <user>:<password>`` (the
            message names the file or variable and what is wrong, never its content).
    """
    where = auth_file or AUTH_ENV
    if auth_file:
        text = read_secret_file(auth_file)
    else:
        text = environ.get(AUTH_ENV, "")
        if not text.strip():
            return None
    return _parse_auth(text, where)


def _parse_auth(text: str, where: str) -> tuple[str, str]:
    form = "credentials must be one line: 'bearer <token>' or 'basic <user>:<password>'"
    body = text.strip()
    lines = [line for line in body.splitlines() if line.strip()]
    if len(lines) != 1:
        raise CadpipeInputError(where, f"{form} (found {len(lines)} lines)")
    kind, _, secret = body.partition(" ")
    kind, secret = kind.lower(), secret.strip()
    if kind not in ("bearer", "basic") or not secret:
        raise CadpipeInputError(where, form)
    if any(not c.isprintable() for c in secret):
        raise CadpipeInputError(where, f"{form} (it holds a control character)")
    if kind == "bearer" and not _TOKEN.match(secret):
        raise CadpipeInputError(where, f"{form} (a token is visible ASCII characters without spaces)")
    if kind == "basic" and (":" not in secret or not secret.partition(":")[0]):
        raise CadpipeInputError(where, f"{form} (no user name before ':')")
    return kind, secret


def _auth_header(auth: tuple[str, str]) -> dict:
    kind, secret = auth
    if kind == "bearer":
        return {"Authorization": f"Bearer {secret}"}
    return {"Authorization": "Basic " + base64.b64encode(secret.encode("utf-8")).decode("ascii")}


# -- the client ---------------------------------------------------------------------------------------------------
class DicomwebClient:
    """One DICOMweb server (root ``url``) with credentials and :class:`DicomwebLimits`."""

    def __init__(self, url: str, auth: tuple[str, str] | None = None, limits: DicomwebLimits | None = None):
        self.base_url = url.rstrip("/")
        self.url = public_url(self.base_url)
        self.limits = limits or DicomwebLimits()
        lim = self.limits
        self.http = BoundedSession(_auth_header(auth) if auth else None, connect_timeout=lim.connect_timeout_s,
                                   read_timeout=lim.read_timeout_s, request_timeout=lim.request_timeout_s)

    def error(self, err: Exception) -> "DicomwebError":
        """A :class:`DicomwebError` for a failed request (HTTP status, connection refused, a limit...), without
        headers or body content."""
        import requests

        if isinstance(err, DicomwebError):
            return err
        if isinstance(err, (RequestBounded, MultipartError)):
            return DicomwebError(self.url, str(err))
        if isinstance(err, requests.HTTPError) and err.response is not None:
            status = err.response.status_code
            hint = {401: "the server refused the credentials (HTTP 401): check CADPIPE_DICOMWEB_AUTH / "
                         "--dicomweb-auth-file", 403: "access forbidden (HTTP 403)",
                    404: "not found (HTTP 404): check the DICOMweb root URL"}.get(status, f"HTTP {status}")
            return DicomwebError(self.url, hint)
        if isinstance(err, requests.TooManyRedirects):
            return DicomwebError(self.url, "too many redirects")
        if isinstance(err, requests.Timeout):
            return DicomwebError(self.url, "the server did not answer in time")
        if isinstance(err, requests.ConnectionError):
            return DicomwebError(self.url, "cannot connect (server down or unreachable)")
        return DicomwebError(self.url, f"{type(err).__name__}")

    def _retrying(self, call: Callable, deadline: Deadline | None):
        """``call()``, again after 0.2 s and 0.4 s while the server answers 429/503/504 (busy)."""
        import requests

        for attempt in range(3):
            try:
                return call()
            except requests.HTTPError as err:
                busy = err.response is not None and err.response.status_code in RETRY_STATUSES
                wait = 0.2 * 2 ** attempt
                if not busy or attempt == 2 or (deadline is not None and deadline.remaining() < wait):
                    raise
                time.sleep(wait)

    # -- QIDO-RS ------------------------------------------------------------------------------------------------
    def search(self, path: str, filters: dict, key: str, what: str, max_matches: int,
               deadline: Deadline | None = None) -> tuple[list[dict], bool]:
        """Every match of a QIDO-RS search at ``path`` (``studies``, ``studies/<uid>/series``...), page by page
        (``limit``/``offset``), each ``key`` UID once, at most ``max_matches``: ``(matches, capped)``. A page
        without a new UID ends the search (servers that ignore ``offset`` would loop for ever otherwise).

        Raises:
            DicomwebError: the request failed, a limit was reached, or the answer is malformed.
        """
        seen: dict[str, dict] = {}
        offset = 0
        while True:
            params = dict(filters) | {"limit": str(PAGE), "offset": str(offset)}
            page = self._page(path, params, key, what, deadline)
            new = {}
            for m in page:
                uid = m[key]["Value"][0]
                if uid not in seen and uid not in new:
                    new[uid] = m
            for uid, m in new.items():
                if len(seen) >= max_matches:
                    return list(seen.values()), True
                seen[uid] = m
            if len(page) < PAGE or not new:
                return list(seen.values()), False
            offset += len(page)

    def _page(self, path: str, params: dict, key: str, what: str, deadline: Deadline | None) -> list[dict]:
        url = f"{self.base_url}/{path}"
        max_bytes = int(self.limits.max_json_mb * (1 << 20))
        try:
            status, body = self._retrying(lambda: self.http.get_bytes(
                url, max_bytes, f"the QIDO-RS answer to the {what} search", deadline, params=params,
                headers={"Accept": "application/dicom+json"}), deadline)
        except Exception as err:  # noqa: BLE001 - requests / limits: a reason without content
            raise self.error(err) from None
        if status == 204 or not body.strip():
            return []
        return _matches(self.url, body, key, what)

    # -- WADO-RS ------------------------------------------------------------------------------------------------
    def retrieve_series(self, study: str, series: str, folder: str, deadline: Deadline, budget: list[int],
                        on_instance: Callable[[str], None] | None = None) -> tuple[int, int]:
        """Stream the instances of one series into ``folder``: ``(written, already there)``. ``budget[0]``: bytes
        the study may still take (decremented).

        Raises:
            DicomwebError: the request failed or a limit was reached (instances complete so far stay).
        """
        url = f"{self.base_url}/studies/{quote(study, safe='')}/series/{quote(series, safe='')}"
        headers = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
                   "Accept-Encoding": "identity"}
        counts = [0, 0]
        make_private_dirs(folder, under=os.path.dirname(folder))  # patient data: the study's and series' folders
        # 0700, instances 0600 (docs/security.md)
        partial: list[str] = []

        def open_part(_headers):
            fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".part", dir=folder)
            os.fchmod(fd, private_file_mode())
            partial.append(tmp)
            return os.fdopen(fd, "wb")

        def close_part(f, size):
            f.flush()
            os.fsync(f.fileno())
            f.close()
            tmp = partial.pop()
            path = _keep_instance(tmp, folder)
            counts[0 if path else 1] += 1
            if path and on_instance is not None:
                on_instance(path)

        max_part = int(self.limits.max_instance_mb * (1 << 20))
        try:
            def get():
                return self.http.stream("GET", url, deadline, headers=headers)

            with self._retrying(lambda: _entered(get()), deadline) as (response, chunks):
                splitter = MultipartSplitter(boundary_of(response.headers.get("Content-Type", "")), open_part,
                                             close_part, max_part)
                for chunk in chunks:
                    budget[0] -= len(chunk)
                    if budget[0] < 0:
                        raise RequestBounded(f"the study is larger than the limit of "
                                             f"{self.limits.max_study_mb:g} MiB")
                    splitter.feed(chunk)
                splitter.finish()
        except Exception as err:  # noqa: BLE001 - requests / limits / multipart: the study's error
            raise self.error(err) from None
        finally:
            for tmp in partial:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return counts[0], counts[1]

    # -- STOW-RS ------------------------------------------------------------------------------------------------
    def store(self, paths: list[str]) -> None:
        """STOW-RS ``paths`` (DICOM files) in one request.

        Raises:
            DicomwebError: the request failed, or the server reported failed instances.
        """
        boundary = uuid.uuid4().hex
        body = bytearray()
        for p in paths:
            with open(p, "rb") as f:
                body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii") + f.read() + b"\r\n"
        body += f"--{boundary}--\r\n".encode("ascii")
        headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                   "Accept": "application/dicom+json"}
        try:
            _, answer = self.http.request_bytes("POST", f"{self.base_url}/studies",
                                                int(self.limits.max_json_mb * (1 << 20)), "the STOW-RS answer",
                                                data=bytes(body), headers=headers)
        except Exception as err:  # noqa: BLE001
            raise self.error(err) from None
        try:
            reply = json.loads(answer) if answer.strip() else {}
        except ValueError:
            reply = {}  # an XML or empty answer with a success status: nothing failed that we can see
        failed = reply.get("00081198", {}).get("Value") if isinstance(reply, dict) else None
        if isinstance(failed, dict) or failed:
            raise DicomwebError(self.url, f"the server refused {len(failed)} result instance(s)")

    def close(self) -> None:
        self.http.close()


class _entered:
    """``with _entered(cm)``: enter ``cm`` now (so that its errors, e.g. an HTTP status, are raised by the call
    :meth:`DicomwebClient._retrying` repeats) and exit it with the ``with`` block."""

    def __init__(self, cm):
        self.cm = cm
        self.value = cm.__enter__()

    def __enter__(self):
        return self.value

    def __exit__(self, *exc):
        return self.cm.__exit__(*exc)


def _keep_instance(tmp: str, folder: str) -> str | None:
    """Rename a complete instance to ``<SOP Instance UID>.dcm`` (its header's; an unreadable header: a name from
    its content's hash, for scoring to report); None (and the temp file removed) when it is there already."""
    import hashlib

    from cadpipe.pipelines.scoring.discovery import safe_name
    from cadpipe.transforms.readers.dicom_probe import read_dicom_header

    try:
        sop = read_dicom_header(tmp, keywords=("SOPInstanceUID",)).get("SOPInstanceUID")
    except CadpipeInputError:
        sop = ""
    if not sop:
        h = hashlib.sha1()
        with open(tmp, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        sop = f"unidentified_{h.hexdigest()[:16]}"
    path = os.path.join(folder, f"{safe_name(sop)}.dcm")
    if os.path.exists(path):
        os.unlink(tmp)
        return None
    os.replace(tmp, path)
    return path


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


def _matches(url: str, body: bytes, key: str, what: str) -> list[dict]:
    """The matches of a QIDO-RS answer, each with a usable ``key`` UID.

    Raises:
        DicomwebError: naming the server and what is wrong (no content of the answer)."""
    def bad(problem: str) -> DicomwebError:
        return DicomwebError(url, f"malformed QIDO-RS answer to the {what} search: {problem}")

    try:
        data = json.loads(body)
    except ValueError as err:
        raise bad(f"not JSON ({getattr(err, 'msg', 'undecodable')} at byte {getattr(err, 'pos', 0)})") from None
    if not isinstance(data, list):
        raise bad(f"{_kind(data)} instead of a list of matches")
    name = _UID_NAMES.get(key, key)
    for i, m in enumerate(data):
        if not isinstance(m, dict):
            raise bad(f"match {i + 1} of {len(data)} is {_kind(m)}, not an object")
        elem = m.get(key)
        value = elem.get("Value") if isinstance(elem, dict) else None
        uid = value[0] if isinstance(value, list) and value else None
        if not isinstance(uid, str) or not 0 < len(uid) <= MAX_UID or not uid.isprintable():
            raise bad(f"match {i + 1} of {len(data)} has no usable {name} ({key})")
    return data


def _text(match: dict, tag: str) -> str:
    elem = match.get(tag)
    value = elem.get("Value") if isinstance(elem, dict) else None
    return str(value[0]) if isinstance(value, list) and value else ""


def connect(url: str, auth: tuple[str, str] | None = None, limits: DicomwebLimits | None = None) -> DicomwebClient:
    """A :class:`DicomwebClient` for the DICOMweb root ``url`` with the credentials from :func:`read_auth`."""
    return DicomwebClient(url, auth, limits)


def find_studies(client: DicomwebClient, query: dict[str, str]) -> tuple[list[str], bool]:
    """Study Instance UIDs matching the QIDO-RS ``query`` (e.g. ``{"ModalitiesInStudy": "CR",
    "StudyDate": "20260101-"}``), all pages, in the server's order, at most ``limits.max_studies``:
    ``(uids, capped)`` (``capped``: the search matched more).

    Raises:
        DicomwebError: the search failed (server down, credentials refused, a limit, a malformed answer...).
    """
    found, capped = client.search("studies", query, STUDY_UID, "study", client.limits.max_studies)
    return [m[STUDY_UID]["Value"][0] for m in found], capped


@dataclass
class RetrieveResult:
    study_uid: str
    written: int = 0  # instances written to the cache on this call
    cached: int = 0  # instances found in the cache already
    series: list[str] = field(default_factory=list)


def retrieve_study(client: DicomwebClient, study_uid: str, cache_dir: str,
                   on_instance: Callable[[str], None] | None = None) -> RetrieveResult:
    """Fetch ``study_uid`` into ``cache_dir`` (see module docstring); ``on_instance(path)`` after each write.

    Raises:
        DicomwebError: the study could not be listed or a series could not be (fully) retrieved, or a limit was
            reached; instances written before the failure stay in the cache.
    """
    from cadpipe.pipelines.scoring.discovery import safe_name

    lim = client.limits
    deadline = Deadline(lim.study_timeout_s, "the study's retrieval")
    budget = [int(lim.max_study_mb * (1 << 20))]
    result = RetrieveResult(study_uid)
    study_path = f"studies/{quote(study_uid, safe='')}"
    series_found, capped = client.search(f"{study_path}/series", {}, SERIES_UID, "series", MAX_LISTED, deadline)
    if capped:
        raise DicomwebError(client.url, f"the study lists more than {MAX_LISTED} series")
    if not series_found:
        raise DicomwebError(client.url, "study not found")
    by_series: dict[str, list[str]] = {}
    for ser in series_found:
        uid = ser[SERIES_UID]["Value"][0]
        if is_cadpipe_result(_text(ser, MODALITY), _text(ser, SERIES_DESCRIPTION)):
            continue  # results (ours or others' SR/SEG) stored with the study are not scored
        instances, capped = client.search(f"{study_path}/series/{quote(uid, safe='')}/instances", {}, SOP_UID,
                                          "instance", MAX_LISTED, deadline)
        if capped:
            raise DicomwebError(client.url, f"a series lists more than {MAX_LISTED} instances")
        by_series[uid] = [i[SOP_UID]["Value"][0] for i in instances]
    study_dir = os.path.join(cache_dir, safe_name(study_uid))
    for series, sops in by_series.items():
        folder = os.path.join(study_dir, safe_name(series))
        missing = [s for s in sops if not os.path.isfile(os.path.join(folder, f"{safe_name(s)}.dcm"))]
        result.cached += len(sops) - len(missing)
        result.series.append(series)
        if not missing:
            continue
        written, _ = client.retrieve_series(study_uid, series, folder, deadline, budget, on_instance)
        result.written += written
    return result


def store_files(client: DicomwebClient, paths: list[str], batch: int = 16) -> int:
    """STOW-RS ``paths`` (DICOM files), ``batch`` per request; returns how many were stored.

    Raises:
        DicomwebError: a request failed or the server reported failed instances.
    """
    stored = 0
    for i in range(0, len(paths), batch):
        chunk = paths[i: i + batch]
        client.store(chunk)
        stored += len(chunk)
    return stored
