"""``cadpipe score --ray``: the same scoring on a Ray cluster, through Ray Data.

A backend for :func:`cadpipe.pipelines.scoring.score.score` (``score(cfg, backend=score_with_ray)``): this module
depends on the scoring core, never the other way; the CLI picks the backend. Discovery, the journal (resume keys:
the unit ids), the results table and the reports stay with the driver, as in a local run.

The run is one streaming Ray Data pipeline over the units still to score
(:mod:`cadpipe.pipelines.scoring.ray_stages`): files read on the driver's node and shipped as bytes (unless
``--ray-shared-fs``) → decoding on CPU tasks → an actor pool (``ActorPoolStrategy``, one ``BundleRunner`` per
actor, the batched preprocessing on the actor's device) → rows and output files back to the driver, which writes
the files atomically and journals each row as it arrives.

Faults: Ray Data retries a task or an actor call whose worker died (lost node, killed actor, crashed process);
:class:`~cadpipe.pipelines.scoring.ray_attempts.AttemptLedger` bounds it per unit (a unit that crashes its worker
three times becomes an error row). Should the pipeline itself fail, the driver starts it again over the units
without a row (:data:`ROUNDS` times at most), then writes error rows for what is left (a rerun retries them).

Sizing (:func:`actor_plan`): actors are sized from what the live nodes have, never more than can be placed: one
GPU each when the run is on GPUs (``--device cuda``, or no ``--device`` and a cluster with GPUs), at most one
actor per GPU, with a CPU left for decoding; ``--ray-actors`` is the pool's upper bound.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import warnings
from dataclasses import dataclass

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.scoring.discovery import Unit

__all__ = ["score_with_ray", "RayBackend", "actor_plan", "ActorPlan", "run_options", "ROUNDS"]

log = logging.getLogger("cadpipe.score.ray")

ROUNDS = 3  # pipeline starts per run (the first + restarts after a failure of the whole pipeline)
DECODE_CPUS = 0.5  # per decoding task


def run_options(cfg) -> dict:
    """The per-run options an actor needs besides the bundle (the same as the local path applies): outputs, the
    forward's precision and layout, the preprocessing choice, the batch size, the runner hook, and this process's
    pixel limits (an actor on another machine does not inherit the driver's environment, where ``--max-pixels`` /
    ``--max-voxels`` live)."""
    from cadpipe.transforms.readers.limits import PixelLimits

    limits = PixelLimits.current()
    return {"heatmaps": bool(cfg.heatmaps), "plain_images": bool(cfg.reports),
            "dicom_results": bool(getattr(cfg, "dicom_results", True)),
            "precision": getattr(cfg, "precision", None), "channels_last": getattr(cfg, "channels_last", None),
            "preprocess": getattr(cfg, "preprocess", "auto"), "batch_size": int(cfg.batch_size),
            "threads": getattr(cfg, "threads", None), "runner_hook": getattr(cfg, "runner_hook", None),
            "max_pixels": limits.max_pixels, "max_voxels": limits.max_voxels}


@dataclass
class ActorPlan:
    """The actor pool of a run: ``gpus`` / ``cpus`` per actor, at most ``max_actors``, ``note`` when the asked
    number was lowered (logged)."""

    gpus: float
    cpus: float
    max_actors: int
    note: str = ""


def actor_plan(device: str | None, asked: int | None, nodes: list[dict], n_batches: int) -> ActorPlan:
    """Size the pool from the live ``nodes`` (``[{"CPU": n, "GPU": m}]``, the resources each declares).

    GPU actors (``device`` cuda, or None on a cluster with GPUs): one GPU each, so at most one actor per GPU on
    each node, and one CPU each where the cluster keeps a CPU free for decoding besides (else none). CPU actors: one
    CPU each (half a CPU on a one-CPU cluster), one slot left for decoding. Never more than ``n_batches``, nor
    ``asked`` (``--ray-actors``). Raises :class:`CadpipeInputError` for ``--device cuda`` on a cluster without GPUs.
    """
    gpus_total = sum(int(n.get("GPU", 0)) for n in nodes)
    cpus_total = sum(float(n.get("CPU", 0)) for n in nodes)
    on_gpu = (device or "").startswith("cuda") or (device is None and gpus_total > 0)
    if on_gpu and gpus_total == 0:
        raise CadpipeInputError(None, f"--device {device!r}: the Ray cluster has no GPU ({len(nodes)} nodes, "
                                      f"{cpus_total:g} CPUs); use --device cpu")
    if on_gpu:
        cpus = 1.0 if cpus_total >= gpus_total + 1 else 0.0
        slots = sum(min(int(n.get("GPU", 0)), int(float(n.get("CPU", 0)) // cpus) if cpus else int(n.get("GPU", 0)))
                    for n in nodes)
        if slots == 0:  # GPUs only on nodes without a CPU to give: GPU-only actors
            cpus, slots = 0.0, gpus_total
        gpus, what = 1.0, f"{gpus_total} GPU(s)"
    else:
        cpus = 1.0 if cpus_total >= 2 else max(cpus_total / 2, 0.01)
        slots = max(1, sum(int(float(n.get("CPU", 0)) // cpus) for n in nodes) - 1)
        gpus, what = 0.0, f"{cpus_total:g} CPUs (one kept for decoding)"
    n = max(1, min(slots, n_batches, asked or slots))
    note = f"--ray-actors {asked} lowered to {n}: the cluster has {what}" if asked and asked > n else ""
    return ActorPlan(gpus, cpus, n, note)


def _connect(cfg) -> bool:
    """Connect to (or start) Ray unless this process already is; returns whether it was connected here."""
    import ray

    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING, "configure_logging": False,
             "include_dashboard": False}
    if cfg.ray in ("", "local", None):
        # a cluster of its own on this machine: bound to loopback, reachable from nowhere else
        ray.init(num_cpus=cfg.ray_actors + 1 if cfg.ray_actors else None, _node_ip_address="127.0.0.1", **quiet)
    else:
        ray.init(address=cfg.ray, **quiet)
    return True


def _live_nodes() -> list[dict]:
    import ray

    return [dict(n.get("Resources", {})) | {"NodeID": n["NodeID"]} for n in ray.nodes() if n.get("Alive")]


class RayBackend:
    """``backend(cfg, todo, emit, progress)`` for :func:`~cadpipe.pipelines.scoring.score.score`. After a run,
    ``stats`` holds what the ledger counted (actors started and where, crashes, losses) and ``rounds`` the
    pipeline starts; ``ledger`` is the run's :class:`AttemptLedger` actor while it runs."""

    def __init__(self):
        self.ledger = None
        self.stats: dict = {}
        self.actors: list[dict] = []
        self.rounds = 0

    def __call__(self, cfg, todo: list[Unit], emit, progress=None) -> None:
        import ray

        started_here = _connect(cfg)
        try:
            self._run(cfg, todo, emit, progress)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, cfg, todo: list[Unit], emit, progress) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from cadpipe.pipelines.scoring.ray_attempts import AttemptLedger

        nodes = _live_nodes()
        plan = actor_plan(cfg.device, cfg.ray_actors, nodes, math.ceil(len(todo) / max(1, cfg.batch_size)))
        if plan.note:
            log.warning("%s", plan.note)
        shared_fs = bool(getattr(cfg, "ray_shared_fs", False))
        driver_node = ray.get_runtime_context().get_node_id()
        here = NodeAffinitySchedulingStrategy(driver_node, soft=False)
        self.ledger = ray.remote(num_cpus=0, scheduling_strategy=here)(AttemptLedger).remote()
        bundle = os.path.abspath(cfg.bundle)
        ship = None
        if not shared_fs:
            from cadpipe.pipelines.scoring.ray_stages import pack_bundle

            data = pack_bundle(bundle)
            ship = {"bundle_archive": ray.put(data), "bundle_name": os.path.basename(bundle.rstrip("/")),
                    "bundle_key": hashlib.sha256(data).hexdigest()[:16]}
            del data
        log.info("Ray: %d nodes, up to %d actor(s) with %g GPU and %g CPU each, %s", len(nodes), plan.max_actors,
                 plan.gpus, plan.cpus, "shared file system" if shared_fs else "inputs and outputs through the driver")
        decode_plan = _decode_plan(cfg)
        seen: set[str] = set()
        remaining = list(todo)
        error = None
        for self.rounds in range(1, ROUNDS + 1):
            try:
                self._stream(cfg, remaining, plan, decode_plan, shared_fs, ship, here, seen, emit, progress, nodes)
                error = None
                break
            except Exception as err:  # noqa: BLE001 - the pipeline failed: start it again over what is left
                error = err
                remaining = [u for u in remaining if u.unit_id not in seen]
                log.warning("Ray pipeline failed (%s: %s); %d unit(s) left%s", type(err).__name__,
                            str(err).strip().splitlines()[0][:200] if str(err).strip() else "", len(remaining),
                            ", starting it again" if self.rounds < ROUNDS and remaining else "")
                if not remaining:
                    error = None
                    break
        if error is not None:
            self._give_up(cfg, remaining, seen, error, emit, progress)
        self._collect_stats()

    def _stream(self, cfg, units, plan: ActorPlan, decode_plan, shared_fs, ship, here, seen, emit, progress, nodes):
        import ray
        from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy

        from cadpipe.pipelines.outputs.files import atomic_write_bytes
        from cadpipe.pipelines.scoring.ray_stages import UnitScorer, decode_units, fetch_files

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # our progress bar counts the rows
        ctx.print_on_execution_start = False
        ctx.max_consecutive_actor_init_deaths = 5  # an actor lost while loading its model is replaced (bounded)
        ctx.wait_for_min_actors_s = 600  # the first actor must be placeable: bounded, not a hang
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        batch = max(1, int(cfg.batch_size))
        todo = [u for u in units if u.unit_id not in seen]
        ds = ray.data.from_items([{"unit": json.dumps(u.to_dict())} for u in todo],
                                 override_num_blocks=max(1, math.ceil(len(todo) / batch)))
        if not shared_fs:
            with warnings.catch_warnings():  # Ray 2.60 has no named parameter for a node-affinity strategy yet
                warnings.filterwarnings("ignore", message=".*ray_remote_args. is deprecated")
                ds = ds.map_batches(fetch_files, batch_size=batch, num_cpus=0, scheduling_strategy=here,
                                    compute=TaskPoolStrategy(size=2))
        keep = "none" if shared_fs else ("all" if decode_plan is None else "dicom")
        ds = ds.map_batches(decode_units, batch_size=batch, num_cpus=DECODE_CPUS,
                            compute=TaskPoolStrategy(size=_decoders(plan, nodes)),
                            fn_kwargs={"plan": decode_plan, "ledger": self.ledger, "keep_files": keep})
        scorer_kwargs = {"bundle": None if ship else os.path.abspath(cfg.bundle), "device": cfg.device,
                         "overrides": dict(cfg.overrides or {}), "options": run_options(cfg), "ledger": self.ledger,
                         "out_dir": os.path.abspath(cfg.output) if shared_fs else None} | (ship or {})
        ds = ds.map_batches(UnitScorer, batch_size=batch, num_cpus=plan.cpus, num_gpus=plan.gpus or None,
                            compute=ActorPoolStrategy(min_size=1, max_size=plan.max_actors),
                            fn_constructor_kwargs=scorer_kwargs)
        out_root = os.path.realpath(cfg.output)
        for got in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for unit_id, blob in zip(got["unit_id"], got["result"]):
                if unit_id in seen:  # a unit's row is journaled once, whatever was retried
                    continue
                result = pickle.loads(blob)
                for rel, data in result["files"].items():  # files first, then the row that names them
                    path = os.path.realpath(os.path.join(out_root, rel))
                    if not path.startswith(out_root + os.sep):
                        raise RuntimeError(f"a Ray worker sent an output outside the output folder: {rel!r}")
                    atomic_write_bytes(path, data, durable=False)
                seen.add(unit_id)
                emit(result["row"])
                if progress is not None:
                    progress.update(1)

    def _give_up(self, cfg, units, seen, error, emit, progress) -> None:
        """Error rows for the units the pipeline could not score after :data:`ROUNDS` starts (a rerun retries
        them)."""
        from cadpipe.pipelines.scoring.score import _bundle_info, _error_row

        info = _bundle_info(cfg.bundle)
        from cadpipe.pipelines.outputs.files import file_sha256

        weights = os.path.join(cfg.bundle, "models", "model.pt")
        info["model_sha256"] = file_sha256(weights) if os.path.isfile(weights) else ""
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        reason = f"not scored: the Ray pipeline failed {ROUNDS} times ({type(error).__name__}: {first})"
        for u in units:
            if u.unit_id not in seen:
                seen.add(u.unit_id)
                emit(_error_row(u, info, str(CadpipeInputError(u.image, reason)), 0.0))
                if progress is not None:
                    progress.update(1)

    def _collect_stats(self) -> None:
        import ray

        try:
            self.actors = ray.get(self.ledger.actor_list.remote(), timeout=30)
            self.stats = ray.get(self.ledger.summary.remote(), timeout=30) | {"rounds": self.rounds}
        except Exception as err:  # noqa: BLE001 - statistics only
            log.debug("no Ray statistics: %s", err)
        log.info("Ray: %s", json.dumps(self.stats))


def _decoders(plan: ActorPlan, nodes: list[dict]) -> int:
    """Decoding tasks at once: up to two per actor, on the CPUs the actors leave (at least two)."""
    free = sum(float(n.get("CPU", 0)) for n in nodes) - plan.max_actors * plan.cpus
    return max(2, min(int(free / DECODE_CPUS), 2 * plan.max_actors))


def _decode_plan(cfg):
    """The bundle's batched preprocessing plan, decided as the runner decides it (for the decoding tasks), or
    None (per-item preprocessing in the actors: the kind has no batched path, e.g. detection, or the chain none)."""
    if cfg.preprocess == "per-item":
        return None
    from cadpipe.pipelines.inference.bundle_runner import bundle_config, plan_batched_scoring
    from cadpipe.pipelines.scoring.score import _bundle_info

    info = _bundle_info(cfg.bundle)
    task, dims = str(info.get("task", "classification")), int(info.get("spatial_dims", 2))
    parser, _ = bundle_config(cfg.bundle, "cpu", cfg.overrides)
    plan, _, _ = plan_batched_scoring(task, dims, parser.get_parsed_content("preprocessing"),
                                      parser.get_parsed_content("postprocessing"))
    return plan


def score_with_ray(cfg, todo: list[Unit], emit, progress=None) -> None:
    """:class:`RayBackend` for one run (``cfg.ray``: None/"" a local Ray, else the cluster's address)."""
    RayBackend()(cfg, todo, emit, progress)

