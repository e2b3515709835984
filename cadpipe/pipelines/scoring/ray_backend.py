"""``cadpipe score --ray``: the same scoring on Ray actors, one model per actor.

A backend for :func:`cadpipe.pipelines.scoring.score.score` (``score(cfg, backend=score_with_ray)``): this module
depends on the scoring core, never the other way; the CLI picks the backend.

The driver discovers units and owns the journal; actors (each with its own :class:`BundleRunner`) score chunks
of units with :func:`cadpipe.pipelines.scoring.score.process_units`, write the per-unit files into the output folder and
return the rows, which the driver journals as chunks finish. Output files are written by the actors, so on a
multi-node cluster the output folder must be on a shared file system (same path on every node).
"""

from __future__ import annotations

import os

from cadpipe.pipelines.scoring.discovery import Unit


def run_options(cfg) -> dict:
    """The per-run options an actor needs besides the bundle (the same as the local path applies): outputs, the
    forward's precision and layout, and this process's pixel limits (an actor on another machine does not inherit
    the driver's environment, where ``--max-pixels`` / ``--max-voxels`` live)."""
    from cadpipe.transforms.readers.limits import PixelLimits

    limits = PixelLimits.current()
    return {"heatmaps": bool(cfg.heatmaps), "plain_images": bool(cfg.reports),
            "dicom_results": bool(getattr(cfg, "dicom_results", True)),
            "precision": getattr(cfg, "precision", None), "channels_last": getattr(cfg, "channels_last", None),
            "max_pixels": limits.max_pixels, "max_voxels": limits.max_voxels}


class _Scorer:
    """One actor: one :class:`BundleRunner`, configured with the run's options (:func:`run_options`); the pixel
    limits are exported to its environment and header values kept out of its logs, as in the local path."""

    def __init__(self, bundle: str, device: str | None, overrides: dict, options: dict | None = None):
        import torch

        torch.set_num_threads(1)
        from cadpipe.pipelines.scoring.log_privacy import quiet_identifying_logs
        from cadpipe.pipelines.scoring.score import ScoreConfig, build_runner
        from cadpipe.transforms.readers.limits import PixelLimits

        self.options = dict(options or {})
        defaults = PixelLimits()
        PixelLimits(int(self.options.get("max_pixels") or defaults.max_pixels),
                    int(self.options.get("max_voxels") or defaults.max_voxels)).export()
        quiet_identifying_logs()
        # built as the local path builds it (build_runner), from the options that travel to the actor
        self.runner = build_runner(ScoreConfig(
            bundle=bundle, input=None, output="", device=device, overrides=dict(overrides or {}),
            precision=self.options.get("precision"), channels_last=self.options.get("channels_last"),
            heatmaps=self.options.get("heatmaps", True)))

    def score(self, units: list[dict], out_dir: str, batch_size: int) -> list[dict]:
        from cadpipe.pipelines.scoring.score import process_units

        rows: list[dict] = []
        process_units(self.runner, [Unit(**u) for u in units], out_dir, rows.append, batch_size, workers=0,
                      plain_images=self.options.get("plain_images", True),
                      dicom_results=self.options.get("dicom_results", True))
        return rows


def score_with_ray(cfg, todo: list[Unit], emit, progress=None) -> None:
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        if cfg.ray in ("", "local", None):
            ray.init(num_cpus=cfg.ray_actors or None, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        else:
            ray.init(address=cfg.ray, log_to_driver=False)
    try:
        n_actors = cfg.ray_actors or max(1, int(ray.available_resources().get("CPU", 1)))
        n_actors = min(n_actors, len(todo))
        gpu = 1 if (cfg.device or "").startswith("cuda") else 0
        actor_cls = ray.remote(num_cpus=1, num_gpus=gpu)(_Scorer)
        bundle = os.path.abspath(cfg.bundle)
        actors = [actor_cls.remote(bundle, cfg.device, cfg.overrides, run_options(cfg)) for _ in range(n_actors)]
        chunk = max(1, cfg.batch_size)
        chunks = [[u.to_dict() for u in todo[i:i + chunk]] for i in range(0, len(todo), chunk)]
        out_dir = os.path.abspath(cfg.output)
        pending = {}
        queue = list(chunks)
        free = list(actors)
        while queue or pending:
            while queue and free:
                actor = free.pop()
                pending[actor.score.remote(queue.pop(0), out_dir, cfg.batch_size)] = actor
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                free.append(pending.pop(ref))
                for row in ray.get(ref):
                    emit(row)
                    if progress is not None:
                        progress.update(1)
        for a in actors:
            ray.kill(a)
    finally:
        if started_here:
            ray.shutdown()
