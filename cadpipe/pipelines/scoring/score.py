"""Batch scoring of a folder of studies with one bundle (``cadpipe score``).

Pipeline: discovery (:mod:`cadpipe.pipelines.scoring.discovery`) → a DataLoader whose workers run the bundle's
preprocessing in parallel with inference → batches of same-shape items across studies → :class:`BundleRunner`
predict under ``torch.inference_mode()`` → per-unit outputs written atomically → one journal line per unit
(:mod:`cadpipe.pipelines.scoring.results`) → ``results.csv`` / ``.parquet`` and per-study reports rebuilt from the journal.

A unit that cannot be loaded or scored becomes an ``error`` row (path + reason) and the run goes on. A killed run
is resumed by running the same command again; ``force=True`` rescores everything.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.scoring.discovery import Unit, discover, read_manifest, safe_name
from cadpipe.pipelines.scoring.item_transport import pack_item, unpack_item
from cadpipe.pipelines.outputs.files import atomic_write_text, file_sha256
from cadpipe.pipelines.scoring.results import Journal, outputs_present, write_results_table
from cadpipe.pipelines.scoring.preflight import preflight
from cadpipe.pipelines.scoring.worker_lifetime import die_with_parent
from cadpipe.pipelines.scoring.exit_status import EXIT_NOTHING_FOUND, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE

__all__ = ["ScoreConfig", "score", "build_runner", "check_runner", "process_units", "EXIT_OK", "EXIT_SOME_FAILED",
           "EXIT_USAGE", "EXIT_NOTHING_FOUND"]

log = logging.getLogger("cadpipe.score")


@dataclass
class ScoreConfig:
    bundle: str
    input: str | None
    output: str
    manifest: str | None = None
    device: str | None = None
    batch_size: int = 4
    workers: int = 2
    limit: int | None = None
    force: bool = False
    quiet: bool = False
    ray: str | None = None  # None: local; "" / "local": a local Ray; else the cluster address
    ray_actors: int | None = None
    # --ray-shared-fs: Ray workers read the inputs by path and write the outputs in place (else both through the driver)
    ray_shared_fs: bool = False
    follow_links: bool = False  # follow symbolic links that leave the input folder (default: error rows)
    overrides: dict[str, Any] = field(default_factory=dict)
    reports: bool = True
    heatmaps: bool = True  # GradCAM overlays for classification bundles (off: plain image PNGs)
    # torch threads for the forward (None: torch's default, one per CPU). On an idle 2-core machine 2 threads were
    # fastest; with other busy processes 1 thread was several times faster (benchmarks/score.py docstring)
    threads: int | None = None
    # concurrent forward streams (Python threads sharing the model, each with threads // streams torch threads).
    # None: 2 on a CPU with >= 2 threads when the bundle allows it (no detector), else 1. On the 2-core machine two
    # 1-thread streams forward ~1.5x the images of one 2-thread stream (benchmarks/score.py)
    streams: int | None = None
    # preprocessing: "auto" (batched on the model's device where the bundle's chain allows it, else per item),
    # "per-item" (the bundle's MONAI chain in the DataLoader workers) or "batched" (per item, with a logged reason,
    # when the bundle has no batched plan); see cadpipe.pipelines.inference.batched_preprocess
    preprocess: str = "auto"
    precision: str | None = None  # fp32 | bf16 | fp16; None: the bundle's inference.json ("precision", fp32)
    channels_last: bool | None = None  # None: the bundle's inference.json ("channels_last", false)
    writer_threads: int | None = None  # threads writing outputs + journal lines; None: default_writer_threads()
    # DICOM SR + Secondary Capture per unit of DICOM input (outputs/dicom_results.py); off: --no-dicom-results
    dicom_results: bool = True
    # a line every report prints under its header (the demo: the images and the model's training data are synthetic)
    report_notice: str = ""
    # called with the BundleRunner once built, before scoring (benchmarks: replace the network by a null one)
    runner_hook: Callable[[Any], None] | None = None


def _bundle_info(bundle_root: str) -> dict:
    path = os.path.join(bundle_root, "configs", "metadata.json")
    if not os.path.isfile(path):
        raise CadpipeInputError(path, "bundle config file is missing")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    return meta.get("cadpipe", {}) | {"version": str(meta.get("version", "")),
                                       "name": meta.get("name") or os.path.basename(os.path.abspath(bundle_root))}


# -- loading in workers -----------------------------------------------------------------------------------------
class _UnitDataset(torch.utils.data.Dataset):
    """Preprocesses one unit per item; failures come back as values (a worker must not die on a bad file).

    ``pack``: items leave as :func:`~cadpipe.pipelines.scoring.item_transport.pack_item` records (set when workers send
    them to the scoring process; :func:`_loaded` unpacks them there)."""

    def __init__(self, units: list[Unit], preprocess: Callable[[dict], dict], pack: bool = False):
        self.units, self.preprocess, self.pack = units, preprocess, pack

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, i: int):
        t0 = time.perf_counter()
        if self.units[i].error:  # refused by discovery (a link leaving the input, not DICOM...): nothing is loaded
            return i, None, str(CadpipeInputError(self.units[i].image, self.units[i].error)), 0.0
        try:
            item = self.preprocess({"image": self.units[i].image})
            if self.pack:
                item = pack_item(item)
            return i, item, None, time.perf_counter() - t0
        except Exception as err:  # noqa: BLE001 - becomes an error row
            return i, None, _reason(self.units[i], err), time.perf_counter() - t0


def _as_list(batch: list) -> list:
    return batch


def _loaded(loader, packed: bool):
    """``(index, item, error, load_s)`` per unit from a loader of lists, items unpacked when ``packed``."""
    for chunk in loader:
        for i, item, err, load_s in chunk:
            yield i, (unpack_item(item) if packed and item is not None else item), err, load_s


def _reason(unit: Unit, err: BaseException) -> str:
    if isinstance(err, CadpipeInputError):
        return str(err)
    if isinstance(err, OSError):  # "permission denied", "symbolic link loop"... (cadpipe.transforms.readers.file_checks)
        from cadpipe.transforms.readers.file_checks import os_error_reason

        return str(CadpipeInputError(getattr(err, "filename", None) or unit.image, os_error_reason(err)))
    return str(CadpipeInputError(unit.image, f"{type(err).__name__}: {str(err).strip()[:300]}"))


# -- one unit's outputs -----------------------------------------------------------------------------------------
def _base_row(unit: Unit, runner_info: dict) -> dict:
    return {
        "study_id": unit.study_id, "series_id": unit.series_id, "unit_id": unit.unit_id,
        "input_paths": ";".join(unit.paths), "bundle": runner_info["name"], "bundle_version": runner_info["version"],
        "model_sha256": runner_info.get("model_sha256", ""),
    }


def _error_row(unit: Unit, info: dict, reason: str, elapsed: float) -> dict:
    return _base_row(unit, info) | {"status": "error", "error": reason, "elapsed_s": round(elapsed, 4)}


def _finish_unit(runner, unit: Unit, pre_item: dict, out: dict, out_dir: str, info: dict) -> dict:
    """Write the unit's files (atomically) and return its ok row (task columns + ``_findings``/``_outputs``): the
    bundle's kind writes what depends on the task (:meth:`~cadpipe.pipelines.kinds.base.TaskKind.write_unit`),
    then the result keys of the bundle's transforms and the DICOM results."""
    from cadpipe.pipelines.kinds import UnitOutputs

    row = runner.summarise(out)
    if not unit.out_prefix:  # units not from discover()/read_manifest(): unique names for this one
        from cadpipe.pipelines.outputs.output_names import assign_output_names

        assign_output_names([unit])
    u = UnitOutputs(runner, unit, pre_item, out, row, os.path.join(out_dir, unit.out_study, unit.out_series),
                    unit.out_prefix, out_dir, info)
    runner.kind.write_unit(u)
    _write_result_keys(u)
    if unit.kind == "dicom" and unit.dicom_files and info.get("dicom_results", True):  # SR + SC beside the SEG
        _write_dicom_results(u)
    return _base_row(unit, info) | {"status": "ok", "error": ""} | row | {
        "_findings": u.findings, "_outputs": u.outputs, "_captions": u.captions} | u.extra


def _write_result_keys(u) -> None:
    """Result keys set by the bundle's transforms (see bundle_runner): report notes + a details file."""
    from cadpipe.pipelines.inference.bundle_runner import RESULT_NOTES_KEY, result_columns

    u.findings += [{"type": "note", "text": str(t)} for t in (u.out.get(RESULT_NOTES_KEY) or [])]
    extra = result_columns(u.out)
    if extra:
        js = u.path("details.json")
        atomic_write_text(js, json.dumps(extra, indent=1, default=str), durable=False)
        u.outputs["details"] = u.rel(js)


def _write_dicom_results(u) -> None:
    """The unit's DICOM SR (what the kind reports) and Secondary Capture; optional outputs, like the SEG: without
    them the unit keeps its row and files, and the row says why."""
    from cadpipe.pipelines.outputs.dicom_results import write_dicom_results

    notes: list[str] = []  # each object missing is named in the row's warnings
    try:
        content = u.runner.kind.sr_content(u.row | u.extra, u.outputs, u.out_dir, u.info)
        u.outputs.update(write_dicom_results(u.outputs, u.out_dir, u.unit.dicom_files, u.folder, u.prefix, u.info,
                                             content, warnings=notes))
    except Exception as err:  # noqa: BLE001 - e.g. unreadable headers: neither object
        notes.append(f"no DICOM SR or Secondary Capture written: {type(err).__name__}: {str(err).strip()[:300]}")
    if notes:
        u.row["warnings"] = "; ".join(([u.row["warnings"]] if u.row.get("warnings") else []) + notes)


# -- the scoring loop -------------------------------------------------------------------------------------------
def _loader(ds, collate, workers: int, chunk: int, first: int):
    return torch.utils.data.DataLoader(ds, batch_sampler=_Chunks(len(ds), chunk, min(first, chunk)),
                                       num_workers=workers, collate_fn=collate,
                                       prefetch_factor=2 if workers else None, persistent_workers=False,
                                       worker_init_fn=die_with_parent(os.getpid()) if workers else None)


def _start_loading(cfg: "ScoreConfig", units: list[Unit], task: str, spatial_dims: int = 2) -> tuple | None:
    """Start the decoding workers before the runner is built: ``(plan, loader iterator)``, or None (no workers,
    per-item preprocessing, a chain without a batched plan, any problem: scoring then starts its loader after
    the model as usual, and reports problems there).

    The workers are forked while the scoring process is still small (no weights, no CUDA context) and decode the
    first chunks while the model loads, in other processes: no fight over the GIL. The plan comes from the same
    config the runner reads (:func:`~cadpipe.pipelines.inference.bundle_runner.bundle_config`), decided as the runner
    decides (:func:`~cadpipe.pipelines.inference.bundle_runner.plan_batched_scoring`)."""
    if not units or cfg.workers <= 0 or cfg.preprocess == "per-item":
        return None
    try:
        from cadpipe.pipelines.inference.bundle_runner import bundle_config, plan_batched_scoring
        from cadpipe.pipelines.kinds import kind_of

        kind = kind_of(task)
        if kind.batched_unsupported(spatial_dims):
            return None
        from cadpipe.pipelines.scoring import batched as batched_scoring

        parser, _ = bundle_config(cfg.bundle, cfg.device, cfg.overrides)
        plan, _, _ = plan_batched_scoring(kind, spatial_dims, parser.get_parsed_content("preprocessing"),
                                          parser.get_parsed_content("postprocessing"))
        if plan is None:
            return None
        ds = batched_scoring.RawUnitDataset(units, plan.decode, _reason)
        first = max(1, min(cfg.batch_size, 8))
        return plan, iter(_loader(ds, batched_scoring.collate_raw, cfg.workers, max(1, cfg.batch_size), first))
    except Exception as err:  # noqa: BLE001 - the runner's build reports what is wrong with the bundle
        log.debug("workers not started early: %s: %s", type(err).__name__, err)
        return None


def _stop_loading(early: tuple | None) -> None:
    stop = getattr(early[1], "_shutdown_workers", None) if early is not None else None
    if stop is not None:
        stop()


class _Chunks(torch.utils.data.Sampler):
    """DataLoader batch sampler: indices ``0..n-1`` in order, a first chunk of ``first`` then chunks of ``size``
    (with workers, each chunk is one worker's task and one message back)."""

    def __init__(self, n: int, size: int, first: int):
        self.n, self.size, self.first = n, max(1, size), max(1, min(first, size))

    def __iter__(self):
        start, step = 0, self.first
        while start < self.n:
            yield list(range(start, min(self.n, start + step)))
            start, step = start + step, self.size

    def __len__(self) -> int:
        rest = max(0, self.n - self.first)
        return (1 if self.n else 0) + -(-rest // self.size)


def _makes_heatmaps(runner) -> bool:
    """Whether scoring computes GradCAM maps with this runner (classification bundles with ``cam_layers``)."""
    return bool(runner.cam_layers) and runner.kind.heatmaps


def streams_allowed(runner) -> bool:
    """Whether batches may be forwarded by several threads at once with this runner: not with a detector (it
    caches anchors). Grad-CAM may (``compute_cam``'s hook acts only on its own thread's forward)."""
    return getattr(runner, "detector", None) is None


def batched_plan(runner, preprocess: str):
    """The batched preprocessing plan scoring uses with ``preprocess`` (``"auto"``, ``"batched"``,
    ``"per-item"``), or None for the per-item chain; a bundle without a batched plan is logged with the reason."""
    if preprocess == "per-item":
        return None
    if preprocess not in ("auto", "batched"):
        raise ValueError(f"preprocess must be 'auto', 'per-item' or 'batched', got {preprocess!r}")
    get = getattr(runner, "batched_preprocessing", None)
    plan, why = get() if get is not None else (None, "the runner has no batched preprocessing")
    if plan is None:  # the reason names transforms: a maintainer's detail (debug); a user asking for it is told
        log.debug("preprocessing per item: the bundle's chain has no batched equivalent (%s)", why)
        if preprocess == "batched":
            log.warning("--preprocess batched: this bundle's preprocessing cannot run batched; images are prepared "
                        "one at a time instead (same results)")
    return plan


def process_units(runner, units: list[Unit], out_dir: str, emit: Callable[[dict], None], batch_size: int = 4,
                  workers: int = 0, progress=None, plain_images: bool = True, streams: int = 1,
                  preprocess: str = "per-item", writer_threads: int = 0, dicom_results: bool = True,
                  emit_many: Callable[[list[dict]], None] | None = None, first_batch: int | None = None,
                  early: tuple | None = None) -> None:
    """Score ``units`` with ``runner``; call ``emit(row)`` once per unit (ok or error), in completion order.

    ``plain_images=False``: classification units without a heatmap get no ``<unit>_image.png`` (that picture
    only illustrates the report; ``cadpipe score --no-heatmaps --no-reports`` skips it).
    ``dicom_results=False``: no DICOM SR / Secondary Capture for DICOM units (``--no-dicom-results``).
    ``emit_many(rows)``: when given, called instead of ``emit`` with the rows of a whole batch at once (one journal
    write per batch), after all of their files are in place; progress advances once per call.
    ``first_batch``: size of the first batch (default ``min(batch_size, 8)``): the first rows come out after a few
    units are loaded instead of a whole batch.
    ``early``: ``(plan, loader iterator)`` from :func:`_start_loading` (workers started before the runner was
    built, decoding while the model loads); used instead of a new loader.
    ``streams > 1``: up to that many batches are forwarded at once on threads sharing the runner; only when
    :func:`streams_allowed`, else one. ``emit`` is called under a lock.
    ``preprocess``: ``"per-item"`` (the bundle's MONAI chain in the workers), ``"batched"`` / ``"auto"`` (workers
    decode, the rest runs batched on the runner's device: :mod:`cadpipe.pipelines.scoring.batched`; per item when
    the bundle has no batched plan). ``writer_threads > 0``: output files and rows are written by that many
    threads (:class:`~cadpipe.pipelines.scoring.writers.WriterPool`) while the next batches are forwarded.
    """
    info = {"name": runner.name, "version": runner.version, "model_sha256": runner.model_sha256,
            "plain_images": plain_images, "dicom_results": dicom_results,
            "class_names": list(getattr(runner, "class_names", []) or []),  # the DICOM results' codes and series:
            "dicom": dict((getattr(runner, "metadata", None) or {}).get("cadpipe", {}).get("dicom") or {})}
    plan = early[0] if early is not None else batched_plan(runner, preprocess)
    first = max(1, min(batch_size, 8 if first_batch is None else first_batch))
    loaded, key_of = _unit_loader(runner, units, plan, workers, batch_size, first, early)
    scorer = _BatchScorer(runner, units, out_dir, info, plan, emit, emit_many, progress, streams, writer_threads)
    scorer.run(loaded, key_of, first, batch_size)


def _unit_loader(runner, units: list[Unit], plan, workers: int, batch_size: int, first: int, early: tuple | None):
    """``(loaded, key_of)``: the iterator of ``(index, item, error, load_s)`` a DataLoader (``early``'s when given)
    gives, and the key that groups items into batches (their shape)."""
    chunk = max(1, batch_size) if workers else 1
    if plan is None:
        # workers send whole batches of packed items (one queue message per batch_size units, no shared-memory
        # segment per small tensor); in-process loading needs neither
        ds, collate = _UnitDataset(units, runner.preprocess, pack=workers > 0), _as_list
    else:
        from cadpipe.pipelines.scoring import batched as batched_scoring

        ds = batched_scoring.RawUnitDataset(units, plan.decode, _reason)
        collate = batched_scoring.collate_raw if workers else _as_list
    loader = early[1] if early is not None else _loader(ds, collate, workers, chunk, first)
    if plan is None:
        return _loaded(loader, packed=workers > 0), lambda item: tuple(torch.as_tensor(item["image"]).shape)
    return batched_scoring.iter_raw(loader, collated=workers > 0), plan.batch_key


class _BatchScorer:
    """The forward and finish of :func:`process_units`: loaded items grouped by shape into batches, each batch
    forwarded (on ``streams`` threads when allowed), its units' files written (on the writer threads), then their
    rows emitted under a lock, files first."""

    def __init__(self, runner, units: list[Unit], out_dir: str, info: dict, plan, emit, emit_many, progress,
                 streams: int, writer_threads: int):
        from cadpipe.pipelines.scoring.writers import WriterPool

        self.runner, self.units, self.out_dir, self.info, self.plan = runner, units, out_dir, info, plan
        self.emit, self.emit_many, self.progress = emit, emit_many, progress
        self.streams = streams
        self.emit_lock = threading.Lock()
        self.writers = WriterPool(writer_threads)
        self.pool = ThreadPoolExecutor(streams, thread_name_prefix="cadpipe-forward") \
            if streams > 1 and streams_allowed(runner) else None
        self.in_flight: set = set()
        self.groups: dict[tuple, list[tuple[int, Any, float]]] = {}

    def done(self, row: dict) -> None:
        self.done_many([row])

    def done_many(self, rows: list[dict]) -> None:
        if not rows:
            return
        with self.emit_lock:
            if self.emit_many is not None:
                self.emit_many(rows)
            else:
                for row in rows:
                    self.emit(row)
            if self.progress is not None:
                self.progress.update(len(rows))

    def run_items(self, pending: list[tuple[int, Any, float]]) -> list[tuple[dict, dict]]:
        """``[(pre_item, out)]`` for one batch; raises on failure."""
        runner = self.runner
        if self.plan is not None:
            from cadpipe.pipelines.scoring import batched as batched_scoring

            need_images = self.info["plain_images"] or bool(runner.cam_layers)
            return batched_scoring.forward_raw(runner, self.plan, [p[1] for p in pending], need_images,
                                               _makes_heatmaps(runner))
        items = [p[1] for p in pending]
        outs = runner.predict(items)
        if _makes_heatmaps(runner):
            try:  # one batched GradCAM pass instead of one per unit
                for item, m in zip(items, runner.heatmaps(items, runner.cam_class()) or []):
                    item["_heatmap"] = m
            except Exception:  # noqa: BLE001 - fall back to per-unit heatmaps in _finish_unit
                pass
        return list(zip(items, outs))

    def finish_batch(self, results: list) -> None:
        """Write the files of a batch's units, then journal their rows in one write (files first)."""
        rows = []
        for (i, _, load_s), pre, out, infer_s in results:
            t2 = time.perf_counter()
            try:
                row = _finish_unit(self.runner, self.units[i], pre, out, self.out_dir, self.info)
            except Exception as err:  # noqa: BLE001
                rows.append(_error_row(self.units[i], self.info, _reason(self.units[i], err), load_s + infer_s))
                continue
            row["elapsed_s"] = round(load_s + infer_s + time.perf_counter() - t2, 4)
            rows.append(row)
        self.done_many(rows)

    def score_batch(self, pending: list[tuple[int, Any, float]]) -> None:
        t0 = time.perf_counter()
        try:
            got = self.run_items(pending)
            per = (time.perf_counter() - t0) / len(pending)
            results = [(p, pre, out, per) for p, (pre, out) in zip(pending, got)]
        except Exception:  # noqa: BLE001 - e.g. OOM on a batch: retry one by one so only the culprit fails
            results = []
            for p in pending:
                t1 = time.perf_counter()
                try:
                    (pre, out), = self.run_items([p])
                    results.append((p, pre, out, time.perf_counter() - t1))
                except Exception as err:  # noqa: BLE001
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    unit = self.units[p[0]]
                    self.done(_error_row(unit, self.info, _reason(unit, err), p[2] + time.perf_counter() - t1))
        if results:
            self.writers.submit(self.finish_batch, results)

    def flush(self, key: tuple) -> None:
        pending = self.groups.pop(key, [])
        if not pending:
            return
        if self.pool is None:
            self.score_batch(pending)
            return
        while len(self.in_flight) >= self.streams:  # bounded: at most one batch per stream in flight
            finished, _ = wait(self.in_flight, return_when=FIRST_COMPLETED)
            for f in finished:
                self.in_flight.discard(f)
                f.result()
        self.in_flight.add(self.pool.submit(self.score_batch, pending))

    def run(self, loaded, key_of, first: int, batch_size: int) -> None:
        limit = first  # the first batch is small: the first rows come early; then batch_size
        try:
            for i, item, err, load_s in loaded:
                if err is not None:
                    self.done(_error_row(self.units[i], self.info, err, load_s))
                    continue
                key = key_of(item)
                self.groups.setdefault(key, []).append((i, item, load_s))
                if len(self.groups[key]) >= limit:
                    self.flush(key)
                    limit = batch_size
            for key in list(self.groups):
                self.flush(key)
            for f in list(self.in_flight):
                f.result()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)
            self.writers.close()


def _streams(cfg: ScoreConfig, runner, batched: bool = False) -> int:
    """Forward streams for this run: ``cfg.streams``, or 2 on a CPU with >= 2 torch threads, 2 on a GPU with
    batched preprocessing (one thread prepares and launches a batch while the other waits for its results), else
    1; and 1 whenever the runner does not allow several (:func:`streams_allowed`)."""
    if not streams_allowed(runner):
        return 1
    if cfg.streams:
        return cfg.streams
    cpu = torch.device(runner.device).type == "cpu"
    if not cpu:
        return 2 if batched else 1
    return 2 if torch.get_num_threads() >= 2 else 1


def _find_units(cfg: ScoreConfig, spatial_dims: int) -> list[Unit]:
    series_dir = os.path.join(cfg.output, ".cadpipe", "series")
    if cfg.manifest:
        units = read_manifest(cfg.manifest, spatial_dims, series_dir)
    else:
        units = discover(cfg.input, spatial_dims, series_dir, follow_links=cfg.follow_links)
    return units[: cfg.limit] if cfg.limit else units


def _todo(units: list[Unit], done_rows: dict[str, dict], out_dir: str,
          model_sha256: str | None = None) -> tuple[list[Unit], int, int]:
    """Units to score on this run: no row yet, an ``error`` row (retried: the file may have been fixed), an
    ``ok`` row whose output files are missing/empty (lost in a crash, or deleted), or (given ``model_sha256``) an
    ``ok`` row scored with other weights (the bundle was retrained). Returns
    ``(todo, n_ok_skipped, n_errors_retried)``; the new row replaces the old one (last journal line wins)."""
    todo, skipped, retried = [], 0, 0
    for u in units:
        row = done_rows.get(u.unit_id)
        same_model = model_sha256 is None or row is None or row.get("model_sha256") in (None, "", model_sha256)
        if row is not None and row.get("status") == "ok" and same_model and outputs_present(row, out_dir):
            skipped += 1
            continue
        retried += row is not None and row.get("status") != "ok"
        todo.append(u)
    return todo, skipped, retried


def _steady_rate(times: list[float]) -> float | None:
    """Units/s between the first quarter of the run's results and the last (leaves out start-up and warm-up)."""
    n = len(times)
    k = max(1, n // 4)
    if n < 4 or times[-1] <= times[k - 1]:
        return None
    return (n - k) / (times[-1] - times[k - 1])


def build_runner(cfg: ScoreConfig):
    """The :class:`~cadpipe.pipelines.inference.bundle_runner.BundleRunner` :func:`score` builds for ``cfg``:
    bundle, device and overrides of ``cfg``, its precision and channels_last, no Grad-CAM layers without
    ``cfg.heatmaps``, then ``cfg.runner_hook`` called with it. Build one and pass it as ``score(cfg, runner=...)``
    to score many times with one model load."""
    from cadpipe.pipelines.inference.bundle_runner import BundleRunner

    runner = BundleRunner(cfg.bundle, device=cfg.device, overrides=cfg.overrides)
    runner.configure_inference(cfg.precision, cfg.channels_last)
    if not cfg.heatmaps:
        runner.cam_layers = None
    if cfg.runner_hook is not None:
        cfg.runner_hook(runner)
    return runner


def _device_of(cfg: ScoreConfig) -> torch.device:
    """The device a runner built for ``cfg`` is on (as ``bundle_runner.bundle_config`` resolves it)."""
    return torch.device(cfg.device) if cfg.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_runner(cfg: ScoreConfig, runner, weights_sha256: str | None) -> None:
    """Refuse (``ValueError``) a runner given to :func:`score` that :func:`build_runner` would not have built for
    ``cfg`` now: another bundle, device, overrides, precision or channels_last, Grad-CAM layers without
    ``cfg.heatmaps``, or weights other than the bundle's ``models/model.pt`` (sha256 ``weights_sha256``)."""
    problems = []
    if getattr(runner, "bundle_root", None) != os.path.abspath(cfg.bundle):
        problems.append(f"bundle {getattr(runner, 'bundle_root', None)} is not {os.path.abspath(cfg.bundle)}")
    if getattr(runner, "model_sha256", None) != weights_sha256:
        problems.append("its weights are not the bundle's models/model.pt now (retrained since it was built?)")
    if torch.device(runner.device) != _device_of(cfg):
        problems.append(f"device {runner.device} is not {_device_of(cfg)}")
    if dict(getattr(runner, "overrides", {}) or {}) != dict(cfg.overrides or {}):
        problems.append("other overrides")
    if cfg.precision is not None and runner.precision != str(cfg.precision).lower():
        problems.append(f"precision {runner.precision} is not {cfg.precision}")
    if cfg.channels_last is not None and runner.channels_last != (
            bool(cfg.channels_last) and runner.spatial_dims == 2 and runner.detector is None):
        problems.append("another channels_last")
    if not cfg.heatmaps and runner.cam_layers:
        problems.append("it computes Grad-CAM heat maps and cfg.heatmaps is off")
    if problems:
        raise ValueError("the runner given to score() was not built for this ScoreConfig (build_runner(cfg)): "
                         + "; ".join(problems))


def score(cfg: ScoreConfig, backend: Callable | None = None, *, runner=None) -> dict:
    """Run scoring; returns the run summary (also written to ``<output>/run_summary.json``).

    ``backend``: None scores in this process (:func:`process_units`); otherwise a callable
    ``backend(cfg, todo_units, emit_row, progress)`` that scores the units elsewhere and calls ``emit_row`` once per
    finished unit, e.g. :func:`cadpipe.pipelines.scoring.ray_backend.score_with_ray` (``cfg.ray`` then says where).
    Discovery, the journal, the results table and the reports stay here whatever the backend.

    ``runner``: a :class:`~cadpipe.pipelines.inference.bundle_runner.BundleRunner` already built by
    :func:`build_runner` from this ``cfg`` (same bundle, device, overrides, precision, channels_last, heatmaps and
    runner_hook), used instead of building one: a caller scoring again and again (``cadpipe listen``, one call
    per study) loads the model once. It is not changed by the call and not part of ``cfg`` (nothing of it is sent
    to a backend; with ``backend`` it is refused). :func:`check_runner` refuses a runner built otherwise, and one
    whose weights are no longer ``models/model.pt`` (retrained since: build a new one), so the journal's
    ``model_sha256`` stays that of the weights used. ``model_load_s`` is then 0.

    Resuming: a unit whose last row is ``ok`` (and whose output files are there) is skipped; units without a row
    and units whose row is ``error`` are (re)scored, the new row replacing the old one; ``force`` rescores all.

    The summary's timings: ``seconds`` (start to last row), ``discovery_s``, ``model_load_s`` (bundle runner
    build), ``steady_units_per_second`` (rate after the first quarter of the units), ``startup_s`` (the part of
    ``seconds`` the steady rate does not explain: discovery, model load, worker start, warm-up), ``first_result_s``
    (start to the first unit's row: time to first result), ``steady_cpu_ms_per_unit`` (this process's CPU per unit
after the first quarter of the units: the scoring process's per-unit cost without start-up), ``preprocess`` (``batched`` or ``per-item``, as used) and
    ``finish_s`` (results table + reports).

    ``exit_code`` in the summary: 0 all scored, 3 some units failed, 4 no scoreable unit in the input.

    Raises:
        CadpipeInputError: the bundle, its weights, the device, an option, the input or the manifest cannot be used
            (a usage error; checked by :func:`~cadpipe.pipelines.scoring.preflight.preflight` before anything is
            created).
        MissingExtraError: ``ray`` is asked for and the ``ray`` extra is not installed.
    """
    _check_call(cfg, backend, runner)
    t_start = time.perf_counter()
    preflight(cfg)  # bundle, weights, device, options, input, extras: before anything is created
    info = _bundle_info(cfg.bundle)
    os.makedirs(cfg.output, exist_ok=True)
    units = _find_units(cfg, int(info.get("spatial_dims", 2)))
    journal = Journal(cfg.output, force=cfg.force)
    weights = os.path.join(cfg.bundle, "models", "model.pt")  # BundleRunner's; a rerun after retraining rescores
    weights_sha = file_sha256(weights) if os.path.isfile(weights) else None
    if runner is not None:
        check_runner(cfg, runner, weights_sha)
    todo, n_skipped, n_retried = _todo(units, journal.rows(), cfg.output, weights_sha)
    t_found = time.perf_counter()
    log.info("%d units found, %d already scored, %d to score (%d errors retried)", len(units), n_skipped,
             len(todo), n_retried)
    clock = _RowClock(journal)
    run = _score_todo(cfg, todo, info, runner, backend, clock)
    run.update(start=t_start, found=t_found, scored_s=time.perf_counter() - t_start, skipped=n_skipped,
               retried=n_retried, todo=len(todo))
    t_finish = time.perf_counter()
    rows_by_id = journal.rows()
    rows = [rows_by_id[u.unit_id] for u in units if u.unit_id in rows_by_id]
    csv_path = write_results_table([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], cfg.output)
    reports = _write_reports(cfg, units, rows_by_id, rows, info) if cfg.reports and rows else []
    summary = _summary(units, rows, run, clock, t_finish, {
        "results_csv": os.path.abspath(csv_path), "reports": len(reports), "output": os.path.abspath(cfg.output)})
    atomic_write_text(os.path.join(cfg.output, "run_summary.json"), json.dumps(summary, indent=1))
    return summary


def _check_call(cfg: ScoreConfig, backend, runner) -> None:
    if cfg.ray is not None and backend is None:
        raise ValueError("ScoreConfig.ray is set: pass backend=cadpipe.pipelines.scoring.ray_backend.score_with_ray")
    if runner is not None and backend is not None:
        raise ValueError("runner= scores in this process: it cannot be combined with a backend")


class _RowClock:
    """Journals the rows as they come and notes when (wall clock and this process's CPU time: the summary's
    steady rate and steady CPU per unit)."""

    def __init__(self, journal: Journal):
        self.journal = journal
        self.times: list[float] = []
        self.cpu: list[float] = []

    def emit(self, row: dict) -> None:
        self.journal.append(row)
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def emit_many(self, rows: list[dict]) -> None:
        self.journal.append_many(rows)
        now, cpu = time.perf_counter(), time.process_time()
        self.times.extend([now] * len(rows))
        self.cpu.extend([cpu] * len(rows))


def _score_todo(cfg: ScoreConfig, todo: list[Unit], info: dict, runner, backend, clock: _RowClock) -> dict:
    """Score ``todo`` with ``backend``, else here (workers started before the runner is built, or ``runner``);
    the journal is closed after. Returns ``model_load_s``, ``streams`` and ``preprocess`` (as used)."""
    from tqdm.auto import tqdm

    progress = tqdm(total=len(todo), disable=cfg.quiet, unit="unit", desc="scoring", dynamic_ncols=True,
                    mininterval=0.5)
    run = {"model_load_s": 0.0, "streams": 1, "preprocess": None}
    early = None
    threads_before = torch.get_num_threads()
    if cfg.threads and backend is None:
        torch.set_num_threads(cfg.threads)
    try:
        if todo and backend is not None:
            backend(cfg, todo, clock.emit, progress)
        elif todo:
            # workers forked now, decoding while the model loads (other processes: no GIL shared)
            early = _start_loading(cfg, todo, str(info.get("task", "classification")),
                                   int(info.get("spatial_dims", 2)))
            # (not on a thread beside discovery: both are Python-heavy, and sharing the GIL made the pair slower,
            # 0.70-0.90 s against 0.53 s one after the other for 1024 studies)
            t0 = time.perf_counter()
            if runner is None:
                runner = build_runner(cfg)
                run["model_load_s"] = time.perf_counter() - t0
            run.update(_forward(cfg, runner, todo, early, clock, progress))
    finally:
        _stop_loading(early)
        progress.close()
        clock.journal.close()
        torch.set_num_threads(threads_before)
    return run


def _forward(cfg: ScoreConfig, runner, todo: list[Unit], early, clock: _RowClock, progress) -> dict:
    """:func:`process_units` with the run's options: batched or per-item preprocessing, forward streams (the CPU's
    torch threads split between them), writer threads. Returns ``streams`` and ``preprocess`` as used."""
    from cadpipe.pipelines.scoring.writers import default_writer_threads

    plan = early[0] if early is not None else batched_plan(runner, cfg.preprocess)
    preprocess = "batched" if plan is not None else "per-item"
    streams = _streams(cfg, runner, batched=plan is not None)
    if streams > 1 and torch.device(runner.device).type == "cpu":  # split the forward threads
        torch.set_num_threads(max(1, torch.get_num_threads() // streams))
    writer_threads = default_writer_threads() if cfg.writer_threads is None else cfg.writer_threads
    plain_images = cfg.reports  # without a report a plain (heatmap-less) image PNG illustrates nothing
    process_units(runner, todo, cfg.output, clock.emit, cfg.batch_size, cfg.workers, progress,
                  plain_images=plain_images, streams=streams, preprocess=preprocess, writer_threads=writer_threads,
                  dicom_results=cfg.dicom_results, emit_many=clock.emit_many, early=early)
    return {"streams": streams, "preprocess": preprocess}


def _write_reports(cfg: ScoreConfig, units: list[Unit], rows_by_id: dict, rows: list[dict], info: dict) -> list:
    """One report per study (HTML, and PDF when reportlab is there); a failed report is logged, the scores stay."""
    from cadpipe.pipelines.outputs.report import write_study_report

    by_study: dict[str, list[dict]] = {}
    patients: dict[str, dict] = {}
    folders: dict[str, str] = {}
    for u in units:
        if u.unit_id in rows_by_id:
            by_study.setdefault(u.study_id, []).append(rows_by_id[u.unit_id] | {"_patient": u.patient})
            patients.setdefault(u.study_id, u.patient)
            folders.setdefault(u.study_id, u.out_study or safe_name(u.study_id))
    bundle = {"name": info["name"], "version": info["version"], "model_sha256": rows[0].get("model_sha256", "")}
    reports = []
    for study, srows in by_study.items():
        try:
            reports += write_study_report(os.path.join(cfg.output, folders[study]), study, srows,
                                          patients[study], bundle, cfg.output, notice=cfg.report_notice)
        except Exception as err:  # noqa: BLE001 - a report failure must not lose the scores
            log.warning("report for one study failed: %s", type(err).__name__)
    return reports


def _summary(units: list[Unit], rows: list[dict], run: dict, clock: _RowClock, t_finish: float,
             files: dict) -> dict:
    """The run summary: counts, timings (see :func:`score`), ``files`` (what was written) and the exit code."""
    emitted, emitted_cpu, t_start, scored_s = clock.times, clock.cpu, run["start"], run["scored_s"]
    n_ok = sum(r["status"] == "ok" for r in rows)
    n_err = sum(r["status"] != "ok" for r in rows)
    steady = _steady_rate(emitted)
    k = max(1, len(emitted_cpu) // 4)
    steady_cpu = ((emitted_cpu[-1] - emitted_cpu[k - 1]) / (len(emitted_cpu) - k)
                  if len(emitted_cpu) >= 4 and emitted_cpu[-1] > emitted_cpu[k - 1] else None)
    return {
        "units": len(units), "ok": n_ok, "error": n_err, "scored_this_run": run["todo"],
        "skipped_already_done": run["skipped"], "errors_retried": run["retried"], "seconds": round(scored_s, 3),
        "units_per_second": round(run["todo"] / scored_s, 3) if run["todo"] and scored_s > 0 else None,
        "discovery_s": round(run["found"] - t_start, 3), "model_load_s": round(run["model_load_s"], 3),
        "steady_units_per_second": round(steady, 3) if steady else None,
        "startup_s": round(max(0.0, emitted[-1] - t_start - len(emitted) / steady), 3) if steady else None,
        "finish_s": round(time.perf_counter() - t_finish, 3),
        "first_result_s": round(emitted[0] - t_start, 3) if emitted else None,
        "steady_cpu_ms_per_unit": round(1000 * steady_cpu, 4) if steady_cpu else None,
        "preprocess": run["preprocess"], "streams": run["streams"], "studies": len({u.study_id for u in units}),
        **files,
        "exit_code": EXIT_NOTHING_FOUND if not units else EXIT_OK if n_err == 0 else EXIT_SOME_FAILED,
    }
