"""``cadpipe listen``: a DICOM C-STORE SCP that scores each study once it is complete and sends the results on.

Instances arrive over DIMSE (``pynetdicom``) and are written, as received, to
``<output>/dimse_incoming/<study>/<series>/<SOP Instance UID>.dcm`` (temp file + rename) before the C-STORE is
answered. A study counts as complete once no instance of it has arrived for ``--study-timeout`` seconds: its
folder moves to ``<output>/dimse_studies/`` and the studies there are scored like a folder with
:func:`cadpipe.pipelines.scoring.score.score` (one ``results.csv`` for everything received; units already scored
are skipped). The model is loaded once, on the first study, and kept for the next ones (``score(cfg, runner=)``);
it is loaded again when the bundle's ``models/model.pt`` changes. With ``--send-to AET@host:port`` the study's DICOM
results (SEG, SR, Secondary Capture) are then C-STOREd there; what was sent is remembered in
``.cadpipe/dimse_sent.txt`` and what could not be sent is retried after the next study and on restart.

Who may send: calling AE titles in ``--allow-aet``; without it, any calling AE when bound to a loopback address,
and binding elsewhere without ``--allow-aet`` is refused. Accepted: the image storage SOP classes the bundle reads
(:data:`STORAGE_2D` / :data:`STORAGE_3D`) in any transfer syntax pydicom decodes, and C-ECHO.

SIGTERM / SIGINT stop accepting associations; a study being scored finishes first. Everything received is on
disk, so a restart scores what was received and not yet scored (incoming studies after ``--study-timeout``).
"""

from __future__ import annotations

import argparse
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
from typing import TYPE_CHECKING, Callable

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.outputs.private_files import make_private_dirs, open_private
from cadpipe.pipelines.pacs.send import Peer, SendError, parse_peer, send_files
from cadpipe.pipelines.scoring.cli import parse_overrides
from cadpipe.pipelines.scoring.exit_status import EXIT_USAGE

if TYPE_CHECKING:  # the scoring core (torch, MONAI) is imported where the work starts: `--help` stays instant
    from cadpipe.pipelines.scoring.score import ScoreConfig

__all__ = ["ListenConfig", "StudyListener", "STORAGE_2D", "STORAGE_3D", "add_arguments", "run"]

log = logging.getLogger("cadpipe.listen")

_CT, _MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
# radiographs (CR, DX for presentation/processing, MG for presentation/processing), secondary capture, CT and MR
# slices: what a 2D bundle scores one instance at a time
STORAGE_2D = ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1",
              "1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.1.2.1", "1.2.840.10008.5.1.4.1.1.7", _CT, _MR)
STORAGE_3D = (_CT, _MR)  # series scored as volumes
VERIFICATION = "1.2.840.10008.1.1"
INCOMING, STUDIES = "dimse_incoming", "dimse_studies"
SENT = os.path.join(".cadpipe", "dimse_sent.txt")


@dataclass
class ListenConfig:
    score: ScoreConfig  # its ``input`` is set by the listener
    ae_title: str = "CADPIPE"
    port: int = 11112
    bind: str = "127.0.0.1"
    allow_aet: list[str] = field(default_factory=list)
    send_to: Peer | None = None
    study_timeout: float = 10.0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class StudyListener:
    """The SCP, the per-study completion timer and the scoring loop (see the module docstring).

    ``on_scored(study_uid, summary, sent)`` is called after each study is scored (and its results sent).
    """

    def __init__(self, cfg: ListenConfig, on_scored: Callable[[str, dict, int], None] | None = None):
        if not cfg.allow_aet and not _is_loopback(cfg.bind):
            raise CadpipeInputError(cfg.bind, "listening on a non-loopback address needs --allow-aet (the calling "
                                              "AE titles allowed to send)")
        self.cfg, self.on_scored = cfg, on_scored
        self.out = cfg.score.output
        self.incoming, self.studies = os.path.join(self.out, INCOMING), os.path.join(self.out, STUDIES)
        make_private_dirs(self.incoming)  # received instances are patient data: 0700 folders, 0600 files
        make_private_dirs(self.studies)
        os.makedirs(os.path.join(self.out, ".cadpipe"), exist_ok=True)
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}  # incoming study folder -> monotonic time of its last instance
        self._first: dict[str, float] = {}  # ... and of its first (for latency figures)
        self._stop = threading.Event()
        self._server = None
        now = time.monotonic()
        for name in os.listdir(self.incoming):  # received before a restart: complete after the timeout
            self._last[name] = self._first[name] = now
        self._pending_score = any(os.scandir(self.studies))  # moved but maybe not scored before a restart
        self._runner = None  # the bundle's model, loaded on the first study and reused (_runner_for)
        self._runner_stamp: tuple | None = None

    # -- receiving -----------------------------------------------------------------------------------------------
    def _accepted(self) -> tuple[str, ...]:
        return STORAGE_3D if int(self.cfg.score.__dict__.get("spatial_dims", 0) or self._spatial_dims()) == 3 \
            else STORAGE_2D

    def _spatial_dims(self) -> int:
        with open(os.path.join(self.cfg.score.bundle, "configs", "metadata.json"), encoding="utf-8") as f:
            return int(json.load(f).get("cadpipe", {}).get("spatial_dims", 2))

    def _on_store(self, event) -> int:
        ds = event.dataset
        study, series, sop = (str(getattr(ds, k, "") or "") for k in
                              ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
        if not (study and series and sop):
            log.warning("refused an instance without Study/Series/SOP Instance UID")
            return 0xA900  # dataset does not match SOP class
        from cadpipe.pipelines.scoring.discovery import safe_name

        name = safe_name(study)
        folder = os.path.join(self.incoming, name, safe_name(series))
        make_private_dirs(folder, under=self.incoming)
        path = os.path.join(folder, f"{safe_name(sop)}.dcm")
        tmp = os.path.join(folder, f".tmp_{threading.get_ident()}_{safe_name(sop)}.dcm")
        try:
            with open_private(tmp) as f:
                f.write(event.encoded_dataset())  # preamble + file meta + dataset as received, not re-encoded
            os.replace(tmp, path)
        except OSError as err:
            log.error("cannot write a received instance: %s", err.strerror)
            return 0xA700  # out of resources
        with self._lock:
            now = time.monotonic()
            self._last[name] = now
            self._first.setdefault(name, now)
        return 0x0000

    def start(self) -> None:
        """Start the SCP (non-blocking)."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt

        ae = AE(ae_title=self.cfg.ae_title)
        for uid in self._accepted():
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(VERIFICATION)
        if self.cfg.allow_aet:
            ae.require_calling_aet = list(self.cfg.allow_aet)
        self._server = ae.start_server((self.cfg.bind, self.cfg.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        log.info("listening as %s on %s:%d", self.cfg.ae_title, self.cfg.bind, self.cfg.port)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # -- scoring -------------------------------------------------------------------------------------------------
    def _complete(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            done = [s for s, t in self._last.items() if now - t >= self.cfg.study_timeout]
            for s in done:
                del self._last[s]
            return done

    def _move(self, name: str) -> None:
        """incoming/<study> -> studies/<study>, merging instance by instance when the study was seen before."""
        src, dest = os.path.join(self.incoming, name), os.path.join(self.studies, name)
        for dirpath, _, files in os.walk(src):
            target = os.path.join(dest, os.path.relpath(dirpath, src))
            make_private_dirs(target, under=self.studies)
            for f in files:
                if not f.startswith(".tmp_"):
                    os.replace(os.path.join(dirpath, f), os.path.join(target, f))
        shutil.rmtree(src, ignore_errors=True)

    def _score_received(self) -> dict:
        from cadpipe.pipelines.scoring.score import ScoreConfig, score

        cfg = ScoreConfig(**{**self.cfg.score.__dict__, "input": self.studies, "manifest": None})
        return score(cfg, runner=self._runner_for(cfg))

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
            log.error("results not sent (retried after the next study): %s", err)
            return 0
        with open(log_path, "a", encoding="utf-8") as f:
            f.writelines(os.path.relpath(p, self.out) + "\n" for p in todo)
        return n

    def step(self) -> list[str]:
        """Score the studies complete now (and anything left from before a restart); returns their UIDs'
        folder names."""
        ready = self._complete()
        if not ready and not self._pending_score:
            return []
        for name in ready:
            self._move(name)
        self._pending_score = False
        summary = self._score_received()
        sent = self._send()
        for name in ready:
            if self.on_scored is not None:
                self.on_scored(name, summary, sent)
            with self._lock:
                self._first.pop(name, None)
        log.info("scored %s: %d ok, %d error in total; %d result instance(s) sent", ", ".join(ready) or "backlog",
                 summary["ok"], summary["error"], sent)
        return ready

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


def run(args: argparse.Namespace) -> int:
    from cadpipe.pipelines.scoring.score import ScoreConfig

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
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
    if not os.path.isfile(os.path.join(args.bundle, "configs", "metadata.json")):
        print(f"cadpipe listen: {args.bundle}: not a bundle (configs/metadata.json is missing)", file=sys.stderr)
        return EXIT_USAGE
    sc = ScoreConfig(bundle=args.bundle, input=None, output=args.output, device=args.device,
                     batch_size=args.batch_size, workers=args.workers, threads=args.threads, overrides=overrides,
                     reports=not args.no_reports, heatmaps=not args.no_heatmaps, quiet=True)
    cfg = ListenConfig(score=sc, ae_title=args.ae_title, port=args.port, bind=args.bind, allow_aet=args.allow_aet,
                       send_to=peer, study_timeout=args.study_timeout)
    try:
        listener = StudyListener(cfg)
    except CadpipeInputError as err:
        print(f"cadpipe listen: {err}", file=sys.stderr)
        return EXIT_USAGE

    def _term(signum, frame):  # noqa: ARG001
        log.info("signal %d: stopping (received instances are on disk)", signum)
        listener.stop()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    try:
        listener.serve_forever()
    except OSError as err:
        print(f"cadpipe listen: cannot listen on {args.bind}:{args.port} ({err.strerror})", file=sys.stderr)
        return EXIT_USAGE
    return 0
