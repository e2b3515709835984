"""``cadpipe listen``: a DICOM C-STORE SCP that scores each study once it is complete and sends the results on.

Instances arrive over DIMSE (``pynetdicom``) and are streamed to a temporary file as their fragments arrive
(pynetdicom's ``STORE_RECV_CHUNKED_DATASET`` mode: an instance is never held in memory), then moved, before the
C-STORE is answered, to ``<output>/dimse_incoming/<study>/<series>/<SOP Instance UID>.dcm`` (a UID that is not a
valid UID gets a hash suffix, so ``7.7.7`` and ``7.7.7.`` stay two files). A study counts as complete once no
instance of it has arrived for ``--study-timeout`` seconds: its folder moves to ``<output>/dimse_studies/`` and the
studies there are scored like a folder with :func:`cadpipe.pipelines.scoring.score.score` (one ``results.csv`` for
everything received; units already scored are skipped). The model is loaded once, on the first study, and kept for
the next ones (``score(cfg, runner=)``); it is loaded again when the bundle's ``models/model.pt`` changes. With
``--send-to AET@host:port`` the study's DICOM results (SEG, SR, Secondary Capture) are then C-STOREd there; what
was sent is remembered in ``.cadpipe/dimse_sent.txt`` and what could not be sent is retried after the next study
and on restart.

Result objects that come with a study are stored, not scored, in ``<output>/dimse_stored/`` (so a PACS can send a
whole study): SR, SEG, Key Object Selection, Presentation States, dose SR and encapsulated PDF
(:data:`RESULT_STORAGE`), Secondary Captures for a 3D bundle, and any object cadpipe made (Manufacturer
``cadpipe``, or a cadpipe result series description).

A study whose scoring raises (whatever the exception) is that study's failure, not the listener's: the files whose
header alone makes discovery raise are moved to ``<output>/dimse_failed/<study>/`` (same relative paths, with
``cadpipe_error.txt``: the exception's type and message) and the rest of the study is scored; when no single file
explains it, the whole study is moved there. Either is logged without header values and not retried; the listener
goes on. A study being scored when the process died twice in a row
is moved there too on the next start.

Who may send and what one peer can cost (:mod:`cadpipe.pipelines.pacs.dimse_limits`, docs/security.md): calling AE
titles in ``--allow-aet`` (without it, any calling AE when bound to a loopback address; binding elsewhere without
``--allow-aet`` is refused), peer addresses in ``--allow-ip`` (refused at accept, before a thread or a slot), the
called AE title must be ``--ae-title``; ``--max-associations`` established associations and ``--max-connections``
open connections at once (at the limit, the oldest connection without an association is closed for the new one);
a connection that sends no association request within ``--acse-timeout`` seconds, and an association idle for
``--idle-timeout`` seconds, is dropped; an instance over ``--max-instance-mb`` or a study over ``--max-study-mb`` is
refused with the DIMSE status 0xA700 (out of resources), its bytes past the limit neither
written nor held. Rejected associations and refused connections are logged with the peer's address and calling AE
title only. Accepted: the image storage SOP classes the bundle reads (:data:`STORAGE_2D` / :data:`STORAGE_3D`) in
any transfer syntax pydicom decodes, the classes stored above, and C-ECHO.

SIGTERM / SIGINT: no new association is accepted, open associations are aborted (A-ABORT) and the process exits
within :data:`SHUTDOWN_S` seconds of the study being scored finishing (a study being scored finishes first).
Everything received is on disk, so a restart scores what was received and not yet scored (incoming studies after
``--study-timeout``).
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Callable

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.outputs.output_names import safe_name
from cadpipe.pipelines.outputs.private_files import make_private_dirs, restrict_file
from cadpipe.pipelines.pacs.dimse_limits import (MB, OPENED, DimseLimits, EscapingFormatter, SizeGuard,
                                                 close_connection, escape_controls, guarded_classes,
                                                 parse_networks)
from cadpipe.pipelines.pacs.send import Peer, SendError, parse_peer, send_files
from cadpipe.pipelines.scoring.cli import parse_overrides
from cadpipe.pipelines.scoring.exit_status import EXIT_USAGE

if TYPE_CHECKING:  # the scoring core (torch, MONAI) is imported where the work starts: `--help` stays instant
    from cadpipe.pipelines.scoring.score import ScoreConfig

__all__ = ["ListenConfig", "StudyListener", "STORAGE_2D", "STORAGE_3D", "RESULT_STORAGE", "SECONDARY_CAPTURE",
           "SHUTDOWN_S", "received_name", "add_arguments", "run"]

log = logging.getLogger("cadpipe.listen")

_CT, _MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
# radiographs (CR, DX for presentation/processing, MG for presentation/processing), secondary capture, CT and MR
# slices: what a 2D bundle scores one instance at a time
STORAGE_2D = ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1",
              "1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.1.2.1", "1.2.840.10008.5.1.4.1.1.7", _CT, _MR)
STORAGE_3D = (_CT, _MR)  # series scored as volumes
# stored, never scored: SR (basic text, enhanced, comprehensive, comprehensive 3D, extensible), Key Object
# Selection, Segmentation, presentation states (grayscale, color, pseudo-color, blending), X-ray radiation dose SR,
# encapsulated PDF: what a PACS sends with a study
RESULT_STORAGE = ("1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33",
                  "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.35", "1.2.840.10008.5.1.4.1.1.88.59",
                  "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.11.2",
                  "1.2.840.10008.5.1.4.1.1.11.3", "1.2.840.10008.5.1.4.1.1.11.4",
                  "1.2.840.10008.5.1.4.1.1.88.67", "1.2.840.10008.5.1.4.1.1.104.1")  # + dose SR, encapsulated PDF
# Secondary Capture (single frame, and the multi-frame ones): scored by 2D bundles, stored by 3D bundles
SECONDARY_CAPTURE = ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
                     "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4")
VERIFICATION = "1.2.840.10008.1.1"
INCOMING, STUDIES, STORED, FAILED = "dimse_incoming", "dimse_studies", "dimse_stored", "dimse_failed"
SENT = os.path.join(".cadpipe", "dimse_sent.txt")
SCORING = os.path.join(".cadpipe", "dimse_scoring.json")  # the study being scored (a crash loop is quarantined)
ERROR_FILE = "cadpipe_error.txt"
_REFUSED_LOG_S = 10.0
SHUTDOWN_S = 10.0  # SIGTERM: open associations aborted and the network side closed within this many seconds
_HEADER_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Manufacturer", "Modality",
                "SeriesDescription")
_STATUS_OUT_OF_RESOURCES, _STATUS_MISMATCH, _STATUS_CANNOT_UNDERSTAND = 0xA700, 0xA900, 0xC000


@dataclass
class ListenConfig:
    score: ScoreConfig  # its ``input`` is set by the listener
    ae_title: str = "CADPIPE"
    port: int = 11112
    bind: str = "127.0.0.1"
    allow_aet: list[str] = field(default_factory=list)
    send_to: Peer | None = None
    study_timeout: float = 10.0
    limits: DimseLimits = field(default_factory=DimseLimits)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _is_uid(text: str) -> bool:
    parts = text.split(".")
    return 0 < len(text) <= 64 and all(p.isdigit() and p.isascii() and (p == "0" or not p.startswith("0"))
                                        for p in parts)


def received_name(uid: str) -> str:
    """The file/folder name of a received UID: the UID itself when it is a valid UID, else its safe form with a
    hash of the exact value (``7.7.7.`` and ``7.7.7`` are two names; path characters never leave the folder)."""
    if _is_uid(uid):
        return uid
    digest = hashlib.sha1(uid.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{safe_name(uid, max_len=70)}_{digest}"


def _merge_tree(src: str, dest: str) -> None:
    """Move every file of ``src`` into ``dest`` (same relative paths; a file there is replaced), then remove src.
    Folders made are private (patient data: docs/security.md)."""
    for dirpath, _, files in os.walk(src):
        target = os.path.join(dest, os.path.relpath(dirpath, src))
        make_private_dirs(target, under=os.path.dirname(dest))
        for f in files:
            if not f.startswith(".tmp_"):
                os.replace(os.path.join(dirpath, f), os.path.join(target, f))
    shutil.rmtree(src, ignore_errors=True)


def _folder_bytes(folder: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total


class StudyListener:
    """The SCP, the per-study completion timer and the scoring loop (see the module docstring).

    ``on_scored(study_uid, summary, sent)`` is called after each study is scored (and its results sent);
    ``summary`` is None for a study that failed (moved to ``dimse_failed/``).
    """

    def __init__(self, cfg: ListenConfig, on_scored: Callable[[str, dict | None, int], None] | None = None):
        if not cfg.allow_aet and not _is_loopback(cfg.bind):
            raise CadpipeInputError(cfg.bind, "listening on a non-loopback address needs --allow-aet (the calling "
                                              "AE titles allowed to send)")
        try:
            cfg.limits.check()
        except ValueError as err:
            raise CadpipeInputError("cadpipe listen", str(err)) from None
        self.cfg, self.on_scored = cfg, on_scored
        self.out = cfg.score.output
        self.incoming, self.studies = os.path.join(self.out, INCOMING), os.path.join(self.out, STUDIES)
        self.stored, self.failed = os.path.join(self.out, STORED), os.path.join(self.out, FAILED)
        for folder in (self.incoming, self.studies):
            make_private_dirs(folder)  # received instances are patient data: 0700 folders, 0600 files
        os.makedirs(os.path.join(self.out, ".cadpipe"), exist_ok=True)
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}  # incoming study folder -> monotonic time of its last instance
        self._first: dict[str, float] = {}  # ... and of its first (for latency figures)
        self._bytes: dict = {}  # incoming study folder (or (STORED, folder)) -> bytes received (--max-study-mb)
        self._refused: dict[tuple, tuple[float, int]] = {}  # (peer, reason) -> (last logged, count since)
        self._stop = threading.Event()
        self._server = None
        self._closer: threading.Thread | None = None
        self.stop_requested_at: float | None = None
        self._quarantine_crash_loop()
        now = time.monotonic()
        for name in os.listdir(self.incoming):  # received before a restart: complete after the timeout
            self._last[name] = self._first[name] = now
            self._bytes[name] = _folder_bytes(os.path.join(self.incoming, name))
        for name in os.listdir(self.stored) if os.path.isdir(self.stored) else ():
            self._bytes[(STORED, name)] = _folder_bytes(os.path.join(self.stored, name))
        self._pending_score = any(os.scandir(self.studies))  # moved but maybe not scored before a restart
        self._scored: tuple[str, ...] = ()  # the SOP classes the bundle scores (set by start)
        self._runner = None  # the bundle's model, loaded on the first study and reused (_runner_for)
        self._runner_stamp: tuple | None = None

    # -- receiving -----------------------------------------------------------------------------------------------
    def _accepted(self) -> tuple[str, ...]:
        return STORAGE_3D if int(self.cfg.score.__dict__.get("spatial_dims", 0) or self._spatial_dims()) == 3 \
            else STORAGE_2D

    def _spatial_dims(self) -> int:
        with open(os.path.join(self.cfg.score.bundle, "configs", "metadata.json"), encoding="utf-8") as f:
            return int(json.load(f).get("cadpipe", {}).get("spatial_dims", 2))

    @staticmethod
    def _peer(assoc) -> tuple[str, str]:
        req = assoc.requestor
        return escape_controls(getattr(req, "address", "?")), escape_controls(str(getattr(req, "ae_title", "")).strip())

    def _on_conn_open(self, event) -> None:
        setattr(event.assoc, OPENED, time.monotonic())
        SizeGuard(event.assoc, int(self.cfg.limits.max_instance_mb * MB))

    def _on_rejected(self, event) -> None:
        address, aet = self._peer(event.assoc)
        self._warn_limited((address, aet), "association rejected: peer %s, calling AE %r", address, aet)

    def _on_refused(self, host: str, why: str) -> None:
        host = escape_controls(host)
        self._warn_limited((host, why), "connection refused (%s): peer %s", why, host)

    def _warn_limited(self, key: tuple, fmt: str, *args) -> None:
        """One log line per key (peer and reason) per ``_REFUSED_LOG_S`` seconds, with the count since: a flood
        of connections cannot flood the log."""
        now = time.monotonic()
        with self._lock:
            last, count = self._refused.get(key, (-1e9, 0))
            if now - last < _REFUSED_LOG_S:
                self._refused[key] = (last, count + 1)
                return
            self._refused[key] = (now, 0)
            if len(self._refused) > 1024:
                self._refused = {k: v for k, v in self._refused.items() if now - v[0] < _REFUSED_LOG_S}
        log.warning(fmt + (" (and %d more since)" if count else ""), *args, *((count,) if count else ()))

    def _read_header(self, path: str) -> dict[str, str]:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS), defer_size=4096)
        return {k: str(ds.get(k, "") or "") for k in _HEADER_TAGS}

    def _is_result(self, sop_class: str, head: dict[str, str]) -> bool:
        """Stored, not scored: a class the bundle does not score, or an object cadpipe made."""
        from cadpipe.pipelines.outputs.dicom_results import is_cadpipe_result

        return (sop_class not in self._scored or head["Manufacturer"].strip() == "cadpipe"
                or is_cadpipe_result(head["Modality"].strip(), head["SeriesDescription"].strip()))

    def _on_store(self, event) -> int:
        guard = SizeGuard.of(event.assoc)
        cut, sent_bytes = guard.take() if guard is not None else (False, 0)
        address, aet = self._peer(event.assoc)
        if cut:
            log.warning("refused an instance over --max-instance-mb %g (%d MB sent): peer %s, calling AE %r",
                        self.cfg.limits.max_instance_mb, sent_bytes // MB, address, aet)
            return _STATUS_OUT_OF_RESOURCES
        src = str(event.dataset_path)
        try:
            head = self._read_header(src)
        except Exception as err:  # noqa: BLE001 - any unreadable header is that instance's refusal
            log.warning("refused an instance whose header cannot be read (%s): peer %s", type(err).__name__, address)
            return _STATUS_CANNOT_UNDERSTAND
        study, series, sop = head["StudyInstanceUID"], head["SeriesInstanceUID"], head["SOPInstanceUID"]
        if not (study and series and sop):
            log.warning("refused an instance without Study/Series/SOP Instance UID: peer %s", address)
            return _STATUS_MISMATCH
        sop_class = str(event.request.AffectedSOPClassUID or "")
        name = received_name(study)
        size = os.path.getsize(src)
        result = self._is_result(sop_class, head)
        budget = (STORED, name) if result else name  # stored objects: their own budget per study, never freed
        with self._lock:
            if self._bytes.get(budget, 0) + size > self.cfg.limits.max_study_mb * MB:
                log.warning("refused an instance: its study is over --max-study-mb %g: peer %s",
                            self.cfg.limits.max_study_mb, address)
                return _STATUS_OUT_OF_RESOURCES
            self._bytes[budget] = self._bytes.get(budget, 0) + size
        root = self.stored if result else self.incoming
        folder = os.path.join(root, name, received_name(series))
        path = os.path.join(folder, f"{received_name(sop)}.dcm")
        tmp = os.path.join(folder, f".tmp_{threading.get_ident()}_{received_name(sop)}.dcm")
        try:
            make_private_dirs(folder, under=root)
            try:
                os.replace(src, tmp)  # same file system as the temporary folder: no copy
            except OSError:
                shutil.copyfile(src, tmp)  # another file system: streamed copy
            restrict_file(tmp)  # 0600 (pynetdicom's temporary file is already)
            os.replace(tmp, path)
        except OSError as err:
            log.error("cannot write a received instance: %s", escape_controls(err.strerror))
            with self._lock:
                self._bytes[budget] = max(0, self._bytes.get(budget, 0) - size)
            return _STATUS_OUT_OF_RESOURCES
        if not result:
            with self._lock:
                now = time.monotonic()
                self._last[name] = now
                self._first.setdefault(name, now)
        return 0x0000

    def start(self) -> None:
        """Start the SCP (non-blocking)."""
        from pynetdicom import ALL_TRANSFER_SYNTAXES, _config, evt

        _config.STORE_RECV_CHUNKED_DATASET = True  # data sets streamed to a file as they arrive, never in memory
        limits = self.cfg.limits
        ae_class, server_class = guarded_classes()
        ae = ae_class(ae_title=self.cfg.ae_title)
        self._scored = self._accepted()
        for uid in dict.fromkeys(self._scored + SECONDARY_CAPTURE + RESULT_STORAGE):
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(VERIFICATION)
        if self.cfg.allow_aet:
            ae.require_calling_aet = list(self.cfg.allow_aet)
        ae.require_called_aet = True
        ae.maximum_associations = limits.max_associations
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = (limits.acse_timeout, limits.dimse_timeout,
                                                                 limits.idle_timeout)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, self._on_conn_open),
                    (evt.EVT_REJECTED, self._on_rejected)]
        server = ae.make_server((self.cfg.bind, self.cfg.port), evt_handlers=handlers, server_class=server_class)
        server.limits, server.on_refused = limits, self._on_refused
        thread = threading.Thread(target=server.serve_forever, name="cadpipe-listen-accept", daemon=True)
        thread.start()
        ae._servers.append(server)
        self._server = server
        log.info("listening as %s on %s:%d", self.cfg.ae_title, self.cfg.bind, self.cfg.port)

    def request_stop(self) -> None:
        """Stop accepting and abort open associations, in the background (safe in a signal handler)."""
        if not self._stop.is_set():
            self.stop_requested_at = time.monotonic()
        self._stop.set()
        if self._closer is None:
            self._closer = threading.Thread(target=self._close_network, name="cadpipe-listen-stop", daemon=True)
            self._closer.start()

    def _close_network(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # no new connection (the accept loop ends within its 0.5 s poll), socket closed
        open_assocs = list(server.active_associations)
        # established: A-ABORT; not yet associated (waiting for a request): the connection is closed
        closers = [threading.Thread(target=a.abort if a.is_established else partial(close_connection, a),
                                    daemon=True) for a in open_assocs]
        for t in closers:
            t.start()
        deadline = time.monotonic() + SHUTDOWN_S - 2.0
        for t in closers:
            t.join(max(0.0, deadline - time.monotonic()))
        for a in open_assocs:  # a peer that does not let the abort through: its connection is closed
            if a.is_alive():
                close_connection(a)

    def stop(self) -> None:
        self.request_stop()
        if self._closer is not None:
            self._closer.join(SHUTDOWN_S)

    # -- scoring -------------------------------------------------------------------------------------------------
    def _complete(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            done = [s for s, t in self._last.items() if now - t >= self.cfg.study_timeout]
            for s in done:
                del self._last[s]
                self._bytes.pop(s, None)
            return done

    def _move(self, name: str) -> None:
        """incoming/<study> -> studies/<study>, merging instance by instance when the study was seen before."""
        _merge_tree(os.path.join(self.incoming, name), os.path.join(self.studies, name))

    def _score_cfg(self) -> ScoreConfig:
        from cadpipe.pipelines.scoring.score import ScoreConfig

        return ScoreConfig(**{**self.cfg.score.__dict__, "input": self.studies, "manifest": None})

    def _runner_for(self, cfg: ScoreConfig):
        """The model, built on the first study and kept for the next ones; built again when the bundle's
        ``models/model.pt`` changed (size or modification time) since: new weights are used from the next study,
        as ``cadpipe score`` would (score() checks the runner's sha256 against the file in any case)."""
        from cadpipe.pipelines.scoring.preflight import WEIGHTS, preflight
        from cadpipe.pipelines.scoring.score import build_runner

        weights = os.path.join(cfg.bundle, WEIGHTS)
        try:
            st = os.stat(weights)
            stamp = (st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None  # preflight (in score) names the problem
        if self._runner is None or stamp != self._runner_stamp:
            preflight(cfg)  # the same usage errors as before a model is loaded by score()
            self._runner, self._runner_stamp = None, None  # the old model is freed before the new one loads
            self._runner = build_runner(cfg)
            self._runner_stamp = stamp
            log.info("model loaded (%s)", self._runner.name)
        return self._runner

    # a study that raises is quarantined (module docstring) -------------------------------------------------------
    def _marker(self) -> dict:
        try:
            with open(os.path.join(self.out, SCORING), encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _set_marker(self, name: str | None) -> None:
        path = os.path.join(self.out, SCORING)
        if name is None:
            try:
                os.remove(path)
            except OSError:
                pass
            return
        prev = self._marker()
        attempts = prev.get("attempts", 0) + 1 if prev.get("study") == name else 1
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"study": name, "attempts": attempts}, f)

    def _quarantine_crash_loop(self) -> None:
        """A study that was being scored when the process died twice is moved aside (a process-killing input)."""
        mark = self._marker()
        name = mark.get("study")
        if not name or os.sep in name or name in (".", ".."):
            return
        if mark.get("attempts", 0) >= 2:
            self._quarantine(name, "the process ended twice while this study was being scored")
            self._set_marker(None)
        elif os.path.isdir(os.path.join(self.studies, name)):  # scored alone again (requeued), attempts kept
            _merge_tree(os.path.join(self.studies, name), os.path.join(self.incoming, name))

    def _quarantine(self, name: str, reason: str) -> None:
        dest = os.path.join(self.failed, name)
        for root in (self.studies, self.incoming):
            if os.path.isdir(os.path.join(root, name)):
                _merge_tree(os.path.join(root, name), dest)
        make_private_dirs(dest, under=self.failed)
        with open(os.path.join(dest, ERROR_FILE), "w", encoding="utf-8") as f:
            f.write(escape_controls(reason) + "\n")
        with self._lock:
            self._first.pop(name, None)
        log.error("a study could not be scored and was moved to %s/ (not retried): %s", FAILED,
                  reason.split(":", 1)[0])

    def _poison_files(self, name: str) -> tuple[list[str], int]:
        """The files of studies/<name> whose discovery alone raises, and how many files the study holds."""
        from cadpipe.pipelines.scoring.discovery import discover

        series_dir = os.path.join(self.out, ".cadpipe", "series")
        bad, total = [], 0
        for dirpath, _, files in os.walk(os.path.join(self.studies, name)):
            for f in files:
                total += 1
                try:
                    discover(os.path.join(dirpath, f), 2, series_dir)
                except Exception:  # noqa: BLE001 - what we are looking for
                    bad.append(os.path.join(dirpath, f))
        return bad, total

    def _set_aside(self, name: str, files: list[str], reason: str) -> None:
        """Move some files of studies/<name> to failed/<name>/ (same relative paths) with the reason."""
        src_root, dest_root = os.path.join(self.studies, name), os.path.join(self.failed, name)
        for path in files:
            target = os.path.join(dest_root, os.path.relpath(path, src_root))
            make_private_dirs(os.path.dirname(target), under=self.failed)
            os.replace(path, target)
        with open(os.path.join(dest_root, ERROR_FILE), "a", encoding="utf-8") as f:
            f.write(escape_controls(reason) + "\n")
        log.error("%d received file(s) could not be read and were moved to %s/ (not retried): %s", len(files),
                  FAILED, reason.split(":", 1)[0])

    def _score_study(self, name: str | None) -> dict | None:
        """Score what is in studies/ (``name``: the study just moved there). Usage errors (the bundle, weights,
        device) propagate; any other exception is the study's: the files that cause it (when discovery of each
        alone raises) are moved aside and the study scored again, else the whole study is moved aside; None is
        returned for a study moved aside."""
        from cadpipe.pipelines.scoring.score import score

        cfg = self._score_cfg()
        runner = self._runner_for(cfg)  # CadpipeInputError: a usage error, the listener stops
        self._set_marker(name)
        try:
            try:
                return score(cfg, runner=runner)
            except Exception as err:  # noqa: BLE001 - one study never ends the listener
                if name is None:
                    raise
                reason = f"{type(err).__name__}: {err}"
            bad, total = self._poison_files(name)
            if bad and len(bad) < total:
                self._set_aside(name, bad, reason)
                try:
                    return score(cfg, runner=runner)
                except Exception as err:  # noqa: BLE001
                    reason = f"{type(err).__name__}: {err}"
            self._quarantine(name, reason)
            return None
        finally:
            self._set_marker(None)

    def _requeue_all(self) -> None:
        """Backlog scoring raised: every study goes back to incoming/ and is scored alone (one may be poison)."""
        now = time.monotonic() - self.cfg.study_timeout
        for name in os.listdir(self.studies):
            _merge_tree(os.path.join(self.studies, name), os.path.join(self.incoming, name))
            with self._lock:
                self._last[name] = now
                self._first.setdefault(name, now)

    def _send(self) -> int:
        """C-STORE result files not sent yet; a failure is logged and retried next time."""
        from cadpipe.pipelines.pacs.results_files import dicom_result_files

        if self.cfg.send_to is None:
            return 0
        log_path = os.path.join(self.out, SENT)
        done = set()
        if os.path.exists(log_path):
            with open(log_path, encoding="utf-8") as f:
                done = {line.strip() for line in f if line.strip()}
        todo = [p for p in dicom_result_files(self.out) if os.path.relpath(p, self.out) not in done]
        try:
            n = send_files(todo, self.cfg.send_to, calling_aet=self.cfg.ae_title)
        except SendError as err:
            log.error("results not sent (retried after the next study): %s", escape_controls(err))
            return 0
        with open(log_path, "a", encoding="utf-8") as f:
            f.writelines(os.path.relpath(p, self.out) + "\n" for p in todo)
        return n

    def step(self) -> list[str]:
        """Score the studies complete now (and anything left from before a restart), one study at a time;
        returns their folder names (failed ones included). After a stop request, the study being scored
        finishes and the others stay on disk for the next start."""
        if self._pending_score:
            self._pending_score = False
            try:
                self._score_study(None)
            except CadpipeInputError:
                raise
            except Exception as err:  # noqa: BLE001
                log.error("scoring the studies left from before a restart failed (%s): each is scored alone",
                          type(err).__name__)
                self._requeue_all()
        ready = self._complete()
        done = []
        for name in ready:
            if self._stop.is_set():  # the rest stays in incoming/: scored after the next start
                break
            self._move(name)
            summary = self._score_study(name)
            sent = self._send() if summary is not None else 0
            done.append(name)
            if self.on_scored is not None:
                self.on_scored(name, summary, sent)
            with self._lock:
                self._first.pop(name, None)
            if summary is not None:
                log.info("a study was scored: %d ok, %d error in total; %d result instance(s) sent",
                         summary["ok"], summary["error"], sent)
        return done

    def serve_forever(self, poll: float = 0.2) -> None:
        self.start()
        try:
            while not self._stop.is_set():
                self.step()
                self._stop.wait(poll)
        finally:
            self.stop()


# -- CLI ------------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/cxr_pneumonia_classification")
    parser.add_argument("--output", required=True, help="output folder (received studies, results.csv, outputs)")
    parser.add_argument("--ae-title", default="CADPIPE", help="this SCP's AE title (default CADPIPE)")
    parser.add_argument("--port", type=int, default=11112, help="DICOM port (default 11112)")
    parser.add_argument("--bind", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; another address needs --allow-aet)")
    parser.add_argument("--allow-aet", action="append", default=[], metavar="AET",
                        help="calling AE title allowed to send (repeatable; default: any on loopback)")
    parser.add_argument("--send-to", metavar="AET@HOST:PORT", help="C-STORE the DICOM results (SEG, SR, SC) there")
    parser.add_argument("--study-timeout", type=float, default=10.0,
                        help="seconds without a new instance after which a study is scored (default 10)")
    lim = DimseLimits()
    parser.add_argument("--allow-ip", action="append", default=[], metavar="ADDRESS[/BITS]",
                        help="peer address or network allowed to connect (repeatable; default: any); others are "
                             "closed at accept")
    parser.add_argument("--max-associations", type=int, default=lim.max_associations,
                        help=f"established associations at once (default {lim.max_associations})")
    parser.add_argument("--max-connections", type=int, default=lim.max_connections,
                        help=f"open TCP connections at once, associated or not (default {lim.max_connections})")
    parser.add_argument("--acse-timeout", type=float, default=lim.acse_timeout,
                        help=f"seconds a new connection has to request an association (default {lim.acse_timeout:g})")
    parser.add_argument("--idle-timeout", type=float, default=lim.idle_timeout,
                        help=f"seconds an association may stay silent before it is aborted "
                             f"(default {lim.idle_timeout:g})")
    parser.add_argument("--dimse-timeout", type=float, default=lim.dimse_timeout,
                        help=f"seconds to wait for a DIMSE message that is due (default {lim.dimse_timeout:g})")
    parser.add_argument("--max-instance-mb", type=float, default=lim.max_instance_mb,
                        help=f"refuse an instance larger than this (DIMSE status A700; default "
                             f"{lim.max_instance_mb:g})")
    parser.add_argument("--max-study-mb", type=float, default=lim.max_study_mb,
                        help=f"refuse instances once a study not yet scored holds this much (default "
                             f"{lim.max_study_mb:g})")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=4, help="units per forward pass (default 4)")
    parser.add_argument("--workers", type=int, default=0,
                        help="DataLoader worker processes decoding/preprocessing each study (default 0: in the "
                             "listener's process, which suits studies of a few images)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the forward pass")
    parser.add_argument("--override", action="append", default=[], metavar="ID=VALUE",
                        help="bundle config override, VALUE parsed as JSON when it can be")
    parser.add_argument("--no-reports", action="store_true", help="skip report.html/pdf")
    parser.add_argument("--no-heatmaps", action="store_true", help="skip GradCAM heatmaps (classification)")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")


def _setup_logging(quiet: bool) -> None:
    """Log privacy from the first line: pydicom/highdicom quieted (they quote header values), pynetdicom at errors
    only and without tracebacks (its warnings quote received UIDs), every line one line with control characters
    escaped."""
    from cadpipe.pipelines.scoring.log_privacy import quiet_identifying_logs

    quiet_identifying_logs()
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    netlog = logging.getLogger("pynetdicom")  # its warnings quote received values (a non-conformant UID)
    netlog.setLevel(logging.ERROR)
    netlog.addFilter(_no_traceback)
    threading.excepthook = _log_thread_error


def _no_traceback(record: logging.LogRecord) -> bool:
    """pynetdicom logs handler exceptions with their traceback (which may quote values): the type name only."""
    if record.exc_info:
        record.msg = f"{record.getMessage()} ({record.exc_info[0].__name__})"
        record.args, record.exc_info, record.exc_text = (), None, None
    return True


def run(args: argparse.Namespace) -> int:
    _setup_logging(args.quiet)
    from cadpipe.pipelines.scoring.score import ScoreConfig

    if args.batch_size < 1 or args.workers < 0 or args.study_timeout < 0 or not 0 < args.port < 65536:
        print("cadpipe listen: --batch-size >= 1, --workers >= 0, --study-timeout >= 0, 0 < --port < 65536",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        overrides = parse_overrides(args.override)
    except ValueError as err:
        print(f"cadpipe listen: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        peer = parse_peer(args.send_to) if args.send_to else None
    except ValueError as err:
        print(f"cadpipe listen: --send-to: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        limits = DimseLimits(max_associations=args.max_associations, max_connections=args.max_connections,
                             acse_timeout=args.acse_timeout, idle_timeout=args.idle_timeout,
                             dimse_timeout=args.dimse_timeout, max_instance_mb=args.max_instance_mb,
                             max_study_mb=args.max_study_mb, allow_ip=parse_networks(args.allow_ip))
        limits.check()
    except ValueError as err:
        print(f"cadpipe listen: {err}", file=sys.stderr)
        return EXIT_USAGE
    if not os.path.isfile(os.path.join(args.bundle, "configs", "metadata.json")):
        print(f"cadpipe listen: {args.bundle}: not a bundle (configs/metadata.json is missing)", file=sys.stderr)
        return EXIT_USAGE
    sc = ScoreConfig(bundle=args.bundle, input=None, output=args.output, device=args.device,
                     batch_size=args.batch_size, workers=args.workers, threads=args.threads, overrides=overrides,
                     reports=not args.no_reports, heatmaps=not args.no_heatmaps, quiet=True)
    cfg = ListenConfig(score=sc, ae_title=args.ae_title, port=args.port, bind=args.bind, allow_aet=args.allow_aet,
                       send_to=peer, study_timeout=args.study_timeout, limits=limits)
    try:
        listener = StudyListener(cfg)
    except CadpipeInputError as err:
        print(f"cadpipe listen: {err}", file=sys.stderr)
        return EXIT_USAGE

    def _term(signum, frame):  # noqa: ARG001
        log.info("signal %d: stopping (received instances are on disk)", signum)
        listener.request_stop()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    try:
        listener.serve_forever()
    except OSError as err:
        print(f"cadpipe listen: cannot listen on {args.bind}:{args.port} ({err.strerror})", file=sys.stderr)
        return EXIT_USAGE
    except CadpipeInputError as err:
        print(f"cadpipe listen: {escape_controls(err)}", file=sys.stderr)
        return EXIT_USAGE
    _exit_when_threads_linger(max(time.monotonic(), (listener.stop_requested_at or 0.0) + SHUTDOWN_S))
    return 0


def _log_thread_error(args) -> None:
    """An exception in one of pynetdicom's threads: one escaped log line (type only), not a raw traceback."""
    log.error("an association thread failed (%s)", args.exc_type.__name__)


def _exit_when_threads_linger(deadline: float) -> None:
    """pynetdicom's association threads are not daemons: one still there at ``deadline`` (SHUTDOWN_S after the
    stop request, or now when a study was being scored longer) must not keep the process alive."""
    others: list = []
    while True:
        others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
        if not others:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    log.warning("%d connection thread(s) still open after %g s: exiting anyway", len(others), SHUTDOWN_S)
    logging.shutdown()
    os._exit(0)
