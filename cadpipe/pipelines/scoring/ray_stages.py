"""The three stages ``cadpipe score --ray`` runs on Ray Data, and what travels between them.

Rows of the dataset are units (``unit``: the :class:`~cadpipe.pipelines.scoring.discovery.Unit` as JSON). Then:

1. :func:`fetch_files` (tasks on the driver's node; skipped with a shared file system): the bytes of each unit's
   files (``files``: a pickled ``{path: bytes}``), read where the files are.
2. :func:`decode_units` (CPU tasks, any node): the unit decoded by the bundle's batched plan (``decoded``: a
   pickled ``(RawImage | None, error | None, seconds)``), as the local path's DataLoader workers decode it
   (:class:`~cadpipe.pipelines.scoring.batched.RawUnitDataset`). With no batched plan (per-item bundles) the
   rows pass through and the actor preprocesses each item.
3. :class:`UnitScorer` (actors, one :class:`BundleRunner` each): the batched preprocessing on the actor's device,
   the forward, the per-unit outputs written into a private folder (or the output folder itself with a shared
   file system), then ``unit_id`` and ``result``: a pickled ``{"row": row, "files": {relative path: bytes}}``.

The driver (:mod:`cadpipe.pipelines.scoring.ray_backend`) writes the files atomically and journals the rows.
Without a shared file system a worker writes only into its own temporary folders (the unit's files staged there
under their own names, the outputs before they travel back); paths in rows and error reasons are mapped back to
the driver's. Every stage brackets its work with the :class:`~cadpipe.pipelines.scoring.ray_attempts.AttemptLedger`
(bounded retries of units that crash their worker).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tarfile
import tempfile
from typing import Any

import numpy as np

from cadpipe.pipelines.scoring.ray_attempts import give_up_reason

__all__ = ["unit_files", "stage_unit", "fetch_files", "decode_units", "UnitScorer", "pack_bundle", "unpack_bundle",
           "map_paths"]

STAGE_FETCH, STAGE_DECODE, STAGE_SCORE = "reading", "decoding", "scoring"


# -- files of a unit ----------------------------------------------------------------------------------------------
def unit_files(unit: dict) -> list[str]:
    """The files a unit is made of, each once: its paths, its DICOM files and its image when that is a file (a
    series folder's members are its paths)."""
    out: list[str] = []
    for p in list(unit.get("paths") or []) + list(unit.get("dicom_files") or []) + [unit["image"]]:
        if p and p not in out and not os.path.isdir(p):
            out.append(p)
    return out


def stage_unit(unit: dict, shipped: dict, root: str) -> tuple[dict, dict[str, str]]:
    """Write a unit's shipped files (``shipped["files"]``, from :func:`fetch_files`) into the new folder ``root``
    under their own names (one folder: an LJPEG finds its ``.ics`` beside it; a series folder becomes
    ``root/series``). Returns the unit with its paths pointing there and ``{staged path: original path}`` to map
    rows and error reasons back."""
    series = bool(shipped.get("series"))
    folder = os.path.join(root, "series") if series else root
    os.makedirs(folder)
    where: dict[str, str] = {}
    used: set[str] = set()
    for k, (path, data) in enumerate(shipped["files"].items()):
        name = os.path.basename(path) or f"file{k}"
        if name in used or name.startswith("."):
            name = f"{k:05d}_{name.lstrip('.')}"
        used.add(name)
        staged = os.path.join(folder, name)
        with open(staged, "wb") as f:
            f.write(data)
        where[path] = staged
    staged_unit = dict(unit)
    staged_unit["paths"] = [where.get(p, p) for p in unit.get("paths") or []]
    staged_unit["dicom_files"] = [where.get(p, p) for p in unit.get("dicom_files") or []]
    staged_unit["image"] = folder if series else where.get(unit["image"], unit["image"])
    back = {v: k for k, v in where.items()}
    if series:
        back[folder] = unit["image"]
    return staged_unit, back


def map_paths(value: Any, back: dict[str, str]) -> Any:
    """``value`` (a row: nested dicts/lists of strings and numbers) with every staged path replaced by the
    original one (longest first, so a series folder does not split a member's path)."""
    if not back:
        return value
    if isinstance(value, str):
        for staged in sorted(back, key=len, reverse=True):
            if staged in value:
                value = value.replace(staged, back[staged])
        return value
    if isinstance(value, dict):
        return {k: map_paths(v, back) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(map_paths(v, back) for v in value)
    return value


class _Attempts:
    """A stage's attempt at a batch of units, bracketed in the ledger
    (:class:`~cadpipe.pipelines.scoring.ray_attempts.AttemptLedger`): ``give_up`` maps the units not to try again
    to their error reason; ``one_by_one`` is set when a unit of the batch was begun before (a retry), and then
    :meth:`each` opens and closes an attempt per unit so a crash names its unit. Without a ledger: no-ops."""

    def __init__(self, ledger, stage: str, ids: list[str]):
        self.ledger, self.stage, self.give_up, self.one_by_one = ledger, stage, {}, False
        self.ids = list(ids)
        if ledger is None:
            return
        import ray

        self.node = ray.get_runtime_context().get_node_id()
        prior = ray.get(ledger.begin.remote(stage, self.ids, self.node))
        self.give_up = {u: r for u in self.ids if (r := give_up_reason(*prior[u], stage)) is not None}
        self.one_by_one = any(sum(prior[u]) > 0 for u in self.ids)
        if self.one_by_one:  # close the batch's attempts: each unit gets its own below
            ray.get(ledger.end.remote(stage, self.ids))
        elif self.give_up:
            ray.get(ledger.end.remote(stage, list(self.give_up)))

    def each(self, unit_id: str, work):
        if self.ledger is None or not self.one_by_one:
            return work()
        import ray

        ray.get(self.ledger.begin.remote(self.stage, [unit_id], self.node))
        out = work()
        ray.get(self.ledger.end.remote(self.stage, [unit_id]))
        return out

    def done(self) -> None:
        """The batch's work is over (its results are returned next)."""
        if self.ledger is not None and not self.one_by_one:
            self.ledger.end.remote(self.stage, [u for u in self.ids if u not in self.give_up])


def _column(batch: dict, name: str, n: int) -> list:
    return [pickle.loads(v) if len(v) else None for v in batch[name]] if name in batch else [None] * n


# -- stage 1: read the files where they are -----------------------------------------------------------------------
def fetch_files(batch: dict) -> dict:
    """Add ``files``: a pickled ``{"files": {path: bytes}, "series": image is a folder}``, or ``b""`` for a unit
    refused by discovery or with an unreadable file (decoding the original path then gives the local path's
    error row, naming the file)."""
    out = []
    for text in batch["unit"]:
        u = json.loads(text)
        files: dict[str, bytes] = {}
        if not u.get("error"):
            try:
                for p in unit_files(u):
                    with open(p, "rb") as f:
                        files[p] = f.read()
            except OSError:
                files = {}
        out.append(pickle.dumps({"files": files, "series": os.path.isdir(u["image"])}, protocol=5) if files
                   else b"")
    return {"unit": np.asarray(batch["unit"], dtype=object), "files": np.asarray(out, dtype=object)}


# -- stage 2: decode on CPU tasks ---------------------------------------------------------------------------------
def decode_units(batch: dict, plan=None, ledger=None, keep_files: str = "dicom") -> dict:
    """Add ``decoded`` (a pickled ``(0, RawImage | None, error | None, seconds)`` record of
    :class:`~cadpipe.pipelines.scoring.batched.RawUnitDataset`, or ``b""`` when there is no batched ``plan``).
    ``keep_files``: which units keep their shipped bytes for the actor (``"all"``; ``"dicom"``: DICOM units, whose
    headers the DICOM result objects reference; ``"none"``)."""
    from cadpipe.pipelines.scoring.batched import RawUnitDataset
    from cadpipe.pipelines.scoring.discovery import Unit
    from cadpipe.pipelines.scoring.log_privacy import quiet_identifying_logs
    from cadpipe.pipelines.scoring.score import _reason

    quiet_identifying_logs()  # header values stay out of this worker's log, as in the local path
    units = [json.loads(u) for u in batch["unit"]]
    shipped = _column(batch, "files", len(units))
    attempts = _Attempts(ledger if plan is not None else None, STAGE_DECODE, [u["unit_id"] for u in units])
    decoded, files_out = [], []
    scratch = tempfile.mkdtemp(prefix="cadpipe-ray-decode-") if any(shipped) else None
    try:
        for k, (u, s) in enumerate(zip(units, shipped)):
            late = attempts.give_up.get(u["unit_id"])
            if plan is None:
                decoded.append(b"")
            elif u.get("error") or late:  # refused by discovery (nothing is loaded, as locally), or given up
                decoded.append(pickle.dumps((0, None, str(_input_error(u, u.get("error") or late)), 0.0),
                                            protocol=5))
            else:
                def work(u=u, s=s, k=k):
                    unit, back = (stage_unit(u, s, os.path.join(scratch, str(k))) if s else (u, {}))
                    i, raw, err, secs = RawUnitDataset([Unit(**unit)], plan.decode, _reason)[0]
                    if raw is not None:
                        raw.path = back.get(raw.path, raw.path)
                    return pickle.dumps((i, raw, map_paths(err, back), secs), protocol=5)

                decoded.append(attempts.each(u["unit_id"], work))
            keep = s is not None and (keep_files == "all" or (keep_files == "dicom" and u.get("kind") == "dicom"))
            files_out.append(pickle.dumps(s, protocol=5) if keep else b"")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    attempts.done()
    return {"unit": np.asarray(batch["unit"], dtype=object), "files": np.asarray(files_out, dtype=object),
            "decoded": np.asarray(decoded, dtype=object)}


def _input_error(unit: dict, reason: str):
    from cadpipe.errors import CadpipeInputError

    return CadpipeInputError(unit["image"], reason)


# -- the bundle, shipped to workers without a shared file system -------------------------------------------------
def pack_bundle(bundle: str) -> bytes:
    """The bundle folder as a tar archive (configs, weights, thresholds: what a runner reads)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(os.path.abspath(bundle), arcname=os.path.basename(os.path.abspath(bundle).rstrip("/")))
    return buf.getvalue()


def unpack_bundle(data: bytes, name: str, key: str) -> str:
    """Extract a :func:`pack_bundle` archive under this machine's temp folder (once per ``key``, e.g. the
    archive's sha256); returns the bundle folder (``.../<key>/<name>``, the bundle's own folder name)."""
    root = os.path.join(tempfile.gettempdir(), "cadpipe-ray-bundles", key)
    folder = os.path.join(root, name)
    if os.path.isdir(folder):
        return folder
    tmp = tempfile.mkdtemp(prefix=".unpack_", dir=os.path.dirname(root) if os.path.isdir(os.path.dirname(root))
                           else _mkdirs(os.path.dirname(root)))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(tmp, filter="data")
    try:
        os.rename(tmp, root)
    except OSError:  # another worker on this machine was first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _mkdirs(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


# -- stage 3: the model on an actor pool -------------------------------------------------------------------------
class UnitScorer:
    """One actor of the pool: one :class:`BundleRunner` on the actor's device, built as the local path builds it
    (:func:`~cadpipe.pipelines.scoring.score.build_runner`) from the options that travel with it (:func:`run_options`
    of the backend: outputs, precision, layout, pixel limits, the runner hook). Called with a batch of decoded
    units, it scores them with :func:`~cadpipe.pipelines.scoring.score.process_units` and returns their rows and
    output files."""

    def __init__(self, bundle: str | None, device: str | None, overrides: dict, options: dict, ledger=None,
                 bundle_archive=None, bundle_name: str = "", bundle_key: str = "", out_dir: str | None = None):
        import torch

        torch.set_num_threads(max(1, int(options.get("threads") or 1)))
        from cadpipe.pipelines.scoring.log_privacy import quiet_identifying_logs
        from cadpipe.pipelines.scoring.score import ScoreConfig, batched_plan, build_runner
        from cadpipe.transforms.readers.limits import PixelLimits

        self.options = dict(options or {})
        defaults = PixelLimits()
        PixelLimits(int(self.options.get("max_pixels") or defaults.max_pixels),
                    int(self.options.get("max_voxels") or defaults.max_voxels)).export()
        quiet_identifying_logs()
        if bundle_archive is not None:  # no shared file system: the bundle came through the object store
            import ray

            data = ray.get(bundle_archive) if isinstance(bundle_archive, ray.ObjectRef) else bundle_archive
            bundle = unpack_bundle(data, bundle_name, bundle_key)
        if device is None:  # the actor's own: a GPU when Ray gave it one
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.runner = build_runner(ScoreConfig(
            bundle=bundle, input=None, output="", device=device, overrides=dict(overrides or {}),
            precision=self.options.get("precision"), channels_last=self.options.get("channels_last"),
            heatmaps=self.options.get("heatmaps", True), runner_hook=self.options.get("runner_hook")))
        self.plan = batched_plan(self.runner, self.options.get("preprocess", "auto"))
        self.ledger = ledger
        self.out_dir = out_dir  # set: a shared file system, outputs are written in place
        self.info = {"name": self.runner.name, "version": self.runner.version,
                     "model_sha256": self.runner.model_sha256}
        if ledger is not None:
            import ray

            ctx = ray.get_runtime_context()
            ray.get(ledger.register.remote({
                "node_id": ctx.get_node_id(), "pid": os.getpid(), "device": str(self.runner.device),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "actor": ctx.current_actor}))

    def __call__(self, batch: dict) -> dict:
        from cadpipe.pipelines.scoring.discovery import Unit
        from cadpipe.pipelines.scoring.score import _error_row

        units = [json.loads(u) for u in batch["unit"]]
        files = _column(batch, "files", len(units))
        decoded = _column(batch, "decoded", len(units))
        ids = [u["unit_id"] for u in units]
        attempts = _Attempts(self.ledger, STAGE_SCORE, ids)
        results: dict[str, dict] = {
            u: {"row": _error_row(Unit(**units[ids.index(u)]), self.info, str(_input_error(units[ids.index(u)], r)),
                                  0.0), "files": {}}
            for u, r in attempts.give_up.items()}
        todo = [k for k, u in enumerate(ids) if u not in results]
        if attempts.one_by_one:  # a retry: one unit at a time, so a crash names its unit
            for k in todo:
                results.update(attempts.each(ids[k], lambda k=k: self._score([units[k]], [files[k]], [decoded[k]])))
        elif todo:
            results.update(self._score([units[k] for k in todo], [files[k] for k in todo],
                                       [decoded[k] for k in todo]))
        attempts.done()
        return {"unit_id": np.asarray(ids, dtype=object),
                "result": np.asarray([pickle.dumps(results[u], protocol=5) for u in ids], dtype=object)}

    def _score(self, units: list[dict], files: list, decoded: list) -> dict[str, dict]:
        """``{unit_id: {"row", "files"}}`` for units scored together (outputs in a private folder that is then
        read and removed, or in the shared output folder)."""
        from cadpipe.pipelines.scoring.discovery import Unit
        from cadpipe.pipelines.scoring.score import process_units

        scratch = tempfile.mkdtemp(prefix="cadpipe-ray-score-")
        try:
            staged, backs = [], []
            for k, (u, s) in enumerate(zip(units, files)):
                if s and not u.get("error"):
                    su, back = stage_unit(u, s, os.path.join(scratch, "in", str(k)))
                else:
                    su, back = u, {}
                staged.append(Unit(**su))
                backs.append(back)
            out_dir = self.out_dir or os.path.join(scratch, "out")
            os.makedirs(out_dir, exist_ok=True)
            rows: list[dict] = []
            early = None
            if self.plan is not None and all(d is not None for d in decoded):
                records = [(k, d[1], d[2], d[3]) for k, d in enumerate(decoded)]
                early = (self.plan, iter([records]))
            process_units(self.runner, staged, out_dir, rows.append, self.options.get("batch_size", len(units)),
                          workers=0, plain_images=self.options.get("plain_images", True),
                          dicom_results=self.options.get("dicom_results", True),
                          preprocess="batched" if self.plan is not None else "per-item",
                          streams=1, writer_threads=0, early=early)
            by_id = {u.unit_id: k for k, u in enumerate(staged)}
            out: dict[str, dict] = {}
            claimed: set[str] = set()
            for row in rows:
                k = by_id[row["unit_id"]]
                row = map_paths(row, backs[k])
                row["input_paths"] = ";".join(units[k].get("paths") or [])
                shipped = {}
                if self.out_dir is None:
                    for rel in _output_files(row.get("_outputs")):
                        path = os.path.join(out_dir, rel)
                        if rel not in claimed and os.path.isfile(path):
                            with open(path, "rb") as f:
                                shipped[rel] = f.read()
                            claimed.add(rel)
                out[row["unit_id"]] = {"row": row, "files": shipped}
            if self.out_dir is None and rows:  # anything a row does not name travels with the batch's last row
                last = out[rows[-1]["unit_id"]]["files"]
                for d, _, names in os.walk(out_dir):
                    for n in names:
                        rel = os.path.relpath(os.path.join(d, n), out_dir)
                        if rel not in claimed and not n.startswith(".tmp_"):
                            with open(os.path.join(d, n), "rb") as f:
                                last[rel] = f.read()
            return out
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _output_files(outputs) -> list[str]:
    """Every relative path named in a row's ``_outputs`` (strings at any depth)."""
    if isinstance(outputs, str):
        return [outputs]
    if isinstance(outputs, dict):
        return [p for v in outputs.values() for p in _output_files(v)]
    if isinstance(outputs, (list, tuple)):
        return [p for v in outputs for p in _output_files(v)]
    return []
