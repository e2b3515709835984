"""DICOMweb: find studies (QIDO-RS), retrieve them into a cache folder (WADO-RS), store results (STOW-RS).

Built on ``dicomweb-client``. Retrieval streams: each instance of a series is written to
``<cache>/<study>/<series>/<SOP Instance UID>.dcm`` (temp file + rename) as it arrives, one at a time; an
instance already in the cache is not written again, and a series whose instances are all cached is not requested,
so a rerun after an interruption fetches only what is missing.

Credentials (:func:`read_auth`) come from the environment variable ``CADPIPE_DICOMWEB_AUTH`` or from a file,
never from the command line; they are not logged and never appear in error messages. The text is
``bearer <token>`` or ``basic <user>:<password>``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.outputs.dicom_results import is_cadpipe_result
from cadpipe.pipelines.outputs.files import atomic_save_dicom
from cadpipe.pipelines.outputs.private_files import make_private_dirs, private_file_mode

__all__ = ["AUTH_ENV", "read_auth", "connect", "find_studies", "retrieve_study", "store_files", "DicomwebError",
           "RetrieveResult"]

log = logging.getLogger("cadpipe.dicomweb")

AUTH_ENV = "CADPIPE_DICOMWEB_AUTH"
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
MODALITY, SERIES_DESCRIPTION = "00080060", "0008103E"


def _text(match: dict, tag: str) -> str:
    value = match.get(tag, {}).get("Value") or [""]
    return str(value[0])


class DicomwebError(Exception):
    """The DICOMweb server could not be used: ``url`` and a reason that never holds credentials."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url, self.reason = url, reason


def read_auth(auth_file: str | None = None, environ=os.environ) -> tuple[str, str] | None:
    """``("bearer", token)``, ``("basic", "user:password")`` or None (no credentials).

    ``auth_file`` wins over the environment variable ``CADPIPE_DICOMWEB_AUTH``.

    Raises:
        CadpipeInputError: the file cannot be read or its text is not ``bearer <token>`` /
            ``basic <user>:<password>`` (the message names the file or variable, never its content).
    """
    where = auth_file or AUTH_ENV
    if auth_file:
        try:
            with open(auth_file, encoding="utf-8") as f:
                text = f.read()
        except OSError as err:
            raise CadpipeInputError(auth_file, f"credentials file cannot be read ({err.strerror})") from None
    else:
        text = environ.get(AUTH_ENV, "")
        if not text.strip():
            return None
    kind, _, secret = text.strip().partition(" ")
    kind, secret = kind.lower(), secret.strip()
    if kind not in ("bearer", "basic") or not secret or (kind == "basic" and ":" not in secret):
        raise CadpipeInputError(where, "credentials must read 'bearer <token>' or 'basic <user>:<password>'")
    return kind, secret


def connect(url: str, auth: tuple[str, str] | None = None, timeout: float = 30.0):
    """A ``DICOMwebClient`` for ``url`` with the credentials from :func:`read_auth` on its session."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if auth is not None:
        kind, secret = auth
        if kind == "bearer":
            session.headers["Authorization"] = f"Bearer {secret}"
        else:
            user, _, password = secret.partition(":")
            session.auth = (user, password)
    client = DICOMwebClient(url.rstrip("/"), session=session, timeout=timeout)
    # retry 429/503/504 (dicomweb-client's list) a few times, not for half a minute: a failure is reported and the
    # rerun continues where this one stopped
    client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=200)
    return client


def _explain(url: str, err: Exception) -> DicomwebError:
    """A clear reason for a failed request (HTTP status, connection refused, timeout), without headers."""
    import requests

    if isinstance(err, requests.HTTPError) and err.response is not None:
        status = err.response.status_code
        hint = {401: "the server refused the credentials (HTTP 401): check CADPIPE_DICOMWEB_AUTH / "
                     "--dicomweb-auth-file", 403: "access forbidden (HTTP 403)",
                404: "not found (HTTP 404): check the DICOMweb root URL"}.get(status, f"HTTP {status}")
        return DicomwebError(url, hint)
    if isinstance(err, requests.ConnectionError):
        return DicomwebError(url, "cannot connect (server down or unreachable)")
    if isinstance(err, requests.Timeout):
        return DicomwebError(url, "the server did not answer in time")
    return DicomwebError(url, f"{type(err).__name__}: {str(err)[:200]}")


def find_studies(client, query: dict[str, str]) -> list[str]:
    """Study Instance UIDs matching the QIDO-RS ``query`` (e.g. ``{"ModalitiesInStudy": "CR",
    "StudyDate": "20260101-"}``), all pages, in the server's order.

    Raises:
        DicomwebError: the search failed (server down, credentials refused...).
    """
    found = _search_all(client, client.search_for_studies, STUDY_UID, search_filters=dict(query))
    return list(dict.fromkeys(s[STUDY_UID]["Value"][0] for s in found))


PAGE = 500


def _search_all(client, search, key: str, **kwargs) -> list[dict]:
    """Every QIDO-RS match, page by page (``limit``/``offset``), each ``key`` UID once. Not dicomweb-client's
    ``get_remaining``: it loops for ever on servers that ignore ``offset`` (Orthanc's plugin 1.7 does); here a page
    without a new UID ends the search."""
    seen: dict[str, dict] = {}
    offset = 0
    while True:
        try:
            page = search(limit=PAGE, offset=offset, **kwargs)
        except Exception as err:  # noqa: BLE001 - requests / HTTP errors
            raise _explain(client.base_url, err) from None
        new = {m[key]["Value"][0]: m for m in page if m.get(key, {}).get("Value")}
        new = {k: v for k, v in new.items() if k not in seen}
        seen.update(new)
        if len(page) < PAGE or not new:
            return list(seen.values())
        offset += len(page)


@dataclass
class RetrieveResult:
    study_uid: str
    written: int = 0  # instances written to the cache on this call
    cached: int = 0  # instances found in the cache already
    series: list[str] = field(default_factory=list)


def retrieve_study(client, study_uid: str, cache_dir: str,
                   on_instance: Callable[[str], None] | None = None) -> RetrieveResult:
    """Fetch ``study_uid`` into ``cache_dir`` (see module docstring); ``on_instance(path)`` after each write.

    Raises:
        DicomwebError: the study could not be listed or a series could not be (fully) retrieved; instances
            written before the failure stay in the cache.
    """
    from cadpipe.pipelines.scoring.discovery import safe_name

    result = RetrieveResult(study_uid)
    series_found = _search_all(client, client.search_for_series, SERIES_UID, study_instance_uid=study_uid)
    if not series_found:
        raise DicomwebError(client.base_url, f"study {study_uid} not found")
    by_series: dict[str, list[str]] = {}
    for ser in series_found:
        uid = ser[SERIES_UID]["Value"][0]
        if is_cadpipe_result(_text(ser, MODALITY), _text(ser, SERIES_DESCRIPTION)):
            continue  # results (ours or others' SR/SEG) stored with the study are not scored
        instances = _search_all(client, client.search_for_instances, SOP_UID, study_instance_uid=study_uid,
                                series_instance_uid=uid)
        by_series[uid] = [i[SOP_UID]["Value"][0] for i in instances]
    study_dir = os.path.join(cache_dir, safe_name(study_uid))
    for series, sops in by_series.items():
        folder = os.path.join(study_dir, safe_name(series))
        missing = [s for s in sops if not os.path.isfile(os.path.join(folder, f"{safe_name(s)}.dcm"))]
        result.cached += len(sops) - len(missing)
        result.series.append(series)
        if not missing:
            continue
        try:
            for ds in client.iter_series(study_uid, series):  # one instance in memory at a time
                path = os.path.join(folder, f"{safe_name(str(ds.SOPInstanceUID))}.dcm")
                if os.path.isfile(path):
                    continue
                make_private_dirs(folder, under=cache_dir)  # patient data: 0700 folders, 0600 files (docs/security.md)
                atomic_save_dicom(ds, path, mode=private_file_mode())
                result.written += 1
                if on_instance is not None:
                    on_instance(path)
        except DicomwebError:
            raise
        except Exception as err:  # noqa: BLE001
            raise _explain(client.base_url, err) from None
    return result


def store_files(client, paths: list[str], batch: int = 16) -> int:
    """STOW-RS ``paths`` (DICOM files), ``batch`` per request; returns how many were stored.

    Raises:
        DicomwebError: a request failed or the server reported failed instances.
    """
    import pydicom

    stored = 0
    for i in range(0, len(paths), batch):
        datasets = [pydicom.dcmread(p) for p in paths[i: i + batch]]
        try:
            response = client.store_instances(datasets)
        except Exception as err:  # noqa: BLE001
            raise _explain(client.base_url, err) from None
        failed = getattr(response, "FailedSOPSequence", None)
        if failed:
            raise DicomwebError(client.base_url, f"the server refused {len(failed)} result instance(s)")
        stored += len(datasets)
    return stored
