"""Two-stage chest X-ray (issue 10): seconds per training epoch of 1,000 images for both bundles, and the per-image
latency of two-stage inference (lung crop + classifier) against the classifier alone.

One command, everything on synthetic radiographs of ``--src_size`` pixels, the bundles' default networks and
preprocessing (CLAHE on, training augmentation on) at ``--image_size``:

1. training: one epoch of each bundle's ``train.json`` on ``--n`` images (``cxr_lung_segmentation``: synthetic
   Montgomery layout; ``cxr_chestxray14_classification``: synthetic NIH layout, ``lung_crop`` off), timed from the
   epoch start to its last iteration (validation is not run), then extrapolated linearly to ``--target`` images:
   every image costs the same load + CLAHE + resize + augmentation + forward/backward;
2. inference, one image at a time on ``--threads`` torch threads (default 2, the issue's "2 cores"), through
   :class:`cadpipe.pipelines.inference.bundle_runner.BundleRunner` (the path ``cadpipe score`` takes), preprocessing from the
   file included, no heatmaps: the classifier alone (baseline) and the two-stage pipeline (``lung_crop: true``: the
   lung bundle's preprocessing + UNet + post-processing, crop, then the classifier). The first image of each is a
   warm-up and not counted. Reported: median and mean seconds per image and the two-stage / classifier ratio;
   also one Grad-CAM heatmap's cost (``cadpipe score`` adds one per pathology above ``cam_threshold``).

Weights are seeded and untrained (speed does not depend on training). On a machine shared with others the numbers
are upper bounds; compare ratios taken in the same run.

    python benchmarks/two_stage_cxr.py [--image_size 224] [--n 32] [--src_size 1024] [--infer_n 9] [--threads 2]
        [--skip_train] [--num_workers 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUNG, CX14 = "cxr_lung_segmentation", "cxr_chestxray14_classification"


def _time_epoch(bundle: str, overrides: dict) -> tuple[int, float, float]:
    """(training images, wall and main-process CPU seconds from epoch start to the last iteration) of one epoch of ``bundle``'s train.json."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    cfg = os.path.join(bundle, "configs")
    wf = ConfigWorkflow(config_file=os.path.join(cfg, "train.json"), meta_file=os.path.join(cfg, "metadata.json"),
                        workflow_type="train", logging_file=False, bundle_root=bundle, epochs=1, val_interval=2,
                        **overrides)
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    t: dict[str, float] = {}
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: t.update(start=time.perf_counter(), cpu0=time.process_time()))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: t.update(last=time.perf_counter(), cpu1=time.process_time()))
    wf.run()
    wf.finalize()
    return len(wf.parser.get_parsed_content("train#dataset")), t["last"] - t["start"], t["cpu1"] - t["cpu0"]


def _latency(runner, paths: list[str]) -> tuple[list[float], list[float]]:
    """Wall and CPU (this process, all threads) seconds per image (preprocess from the file + predict +
    postprocess), first image excluded (warm-up). CPU seconds are less distorted by other users' load."""
    wall, cpu = [], []
    for i, p in enumerate(paths):
        t0, c0 = time.perf_counter(), time.process_time()
        item = runner.preprocess({"image": p})
        runner.predict([item])
        if i:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image_size", type=int, default=224)
    ap.add_argument("--src_size", type=int, default=1024, help="synthetic radiographs are src_size x src_size "
                    "(NIH PNGs are 1024 x 1024)")
    ap.add_argument("--n", type=int, default=32, help="training images timed per bundle")
    ap.add_argument("--target", type=int, default=1000, help="epoch size the time is extrapolated to")
    ap.add_argument("--infer_n", type=int, default=9, help="images for the latency (the first is a warm-up)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the latency measurement")
    ap.add_argument("--num_workers", type=int, default=2, help="training DataLoader workers (bundle default 2)")
    ap.add_argument("--skip_train", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    a = ap.parse_args()

    import torch

    from cadpipe.data.synthetic.chestxray14 import write_synthetic_chestxray14
    from cadpipe.data.synthetic.lungs import write_synthetic_montgomery
    from cadpipe.data.synthetic.weights import copy_bundle_untrained

    tmp = tempfile.mkdtemp(prefix="two_stage_bench_")
    print(f"# two-stage CXR benchmark: image_size {a.image_size}, sources {a.src_size}x{a.src_size}, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs visible, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    try:
        write_synthetic_montgomery(os.path.join(tmp, "lung_data"), max(a.n, 2), a.src_size, seed=0)
        write_synthetic_chestxray14(os.path.join(tmp, "nih"), max(a.n, 2) + 1, 1, size=a.src_size,
                                    test_fraction=0.0, p_class=0.2, seed=0)
        bundles = os.path.join(tmp, "bundles")
        size = {"image_size": a.image_size}
        lung = copy_bundle_untrained(os.path.join(REPO, "bundles", LUNG), os.path.join(bundles, LUNG), size)
        cx14 = copy_bundle_untrained(os.path.join(REPO, "bundles", CX14), os.path.join(bundles, CX14), size)
        if not a.skip_train:
            common = dict(image_size=a.image_size, num_workers=a.num_workers, output_dir=os.path.join(tmp, "out"))
            for name, bundle, extra in (
                (LUNG, lung, dict(dataset_dir=os.path.join(tmp, "lung_data"), val_fraction=0.0, test_fraction=0.0)),
                (CX14, cx14, dict(dataset_dir=os.path.join(tmp, "nih"), val_fraction=0.0)),
            ):
                n, secs, cpu = _time_epoch(bundle, {**common, **extra})
                cpu_txt = f"; main-process CPU {cpu / n:.3f} s/image" + ("" if a.num_workers else " (all of it)")
                print(f"train {name:32s} {n:4d} images in {secs:8.1f} s = {secs / n:6.3f} s/image -> "
                      f"{secs / n * a.target:7.0f} s per epoch of {a.target} images "
                      f"(torch threads {torch.get_num_threads()}, {a.num_workers} loader workers{cpu_txt})")
        from cadpipe.pipelines.inference.bundle_runner import BundleRunner

        torch.set_num_threads(a.threads)
        img_dir = os.path.join(tmp, "nih", "images_001", "images")
        paths = sorted(os.path.join(img_dir, f) for f in os.listdir(img_dir))[: max(2, a.infer_n)]
        alone = BundleRunner(cx14, device="cpu", overrides=size)
        two = BundleRunner(cx14, device="cpu", overrides={**size, "lung_crop": True})
        t_alone, c_alone = _latency(alone, paths)
        t_two, c_two = _latency(two, paths)
        item = alone.preprocess({"image": paths[0]})
        alone.heatmap(item, class_index=0)  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        alone.heatmap(item, class_index=1)
        t_cam, c_cam = time.perf_counter() - t0, time.process_time() - c0
        med = statistics.median
        for label, w, c in (("classifier alone (baseline)", t_alone, c_alone),
                            ("two-stage (lung crop + classifier)", t_two, c_two)):
            print(f"infer {label:36s} median {med(w):7.3f} s/image wall ({med(c):7.3f} s CPU), mean {statistics.mean(w):7.3f}"
                  f" s wall ({len(w)} images, {a.threads} threads)")
        print(f"two-stage / classifier alone: {med(t_two) / med(t_alone):.2f}x wall, {med(c_two) / med(c_alone):.2f}x CPU"
              f" (medians); the lung stage adds {med(t_two) - med(t_alone):.3f} s/image wall")
        print(f"one Grad-CAM heatmap (classifier, {a.image_size}px): {t_cam:.3f} s wall ({c_cam:.3f} s CPU); "
              f"cadpipe score makes one per pathology above cam_threshold")
    finally:
        if a.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
