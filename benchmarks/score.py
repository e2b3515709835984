"""Throughput of ``cadpipe score`` vs the model forward alone (ceiling) vs ``monai.bundle run`` per study (naive).

All three are measured in one run on the same synthetic study folder (synthetic DICOM CXRs, one image per
study) with the same bundle and the same (random, untrained: speed does not depend on training) weights.
Prints studies/s for each and the ratios. Timings on a shared machine are noisy; compare ratios from one run.

    python benchmarks/score.py [--bundle bundles/cxr_pneumonia_classification] [--studies 48]
        [--override image_size=128] [--naive-studies 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch


def _studies(root: str, n: int, rows: int, cols: int) -> None:
    from cadpipe.data.synthetic.dicom import write_cxr_dicom

    for i in range(n):
        os.makedirs(os.path.join(root, f"study{i:03d}"))
        write_cxr_dicom(os.path.join(root, f"study{i:03d}", "synthetic_IM0001"), rows=rows, cols=cols, seed=i)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="bundles/cxr_pneumonia_classification")
    ap.add_argument("--studies", type=int, default=48)
    ap.add_argument("--naive-studies", type=int, default=4)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default=None)
    ap.add_argument("--override", action="append", default=["use_clahe=false", "image_size=128"],
                    help="bundle overrides ID=JSON used by all three measurements")
    args = ap.parse_args()
    overrides = {}
    for text in args.override:
        k, _, v = text.partition("=")
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v

    from cadpipe.data.synthetic.weights import copy_bundle_untrained
    from cadpipe.pipelines.bundle_runner import BundleRunner
    from cadpipe.pipelines.score import ScoreConfig, score

    work = tempfile.mkdtemp(prefix="cadpipe_bench_")
    try:
        bundle = copy_bundle_untrained(args.bundle, os.path.join(work, "bundle"), overrides)
        src = os.path.join(work, "studies")
        _studies(src, args.studies, args.rows, args.cols)
        n = args.studies
        print(f"bundle {args.bundle} overrides {overrides}; {n} synthetic DICOM studies {args.rows}x{args.cols}; "
              f"device {args.device or ('cuda' if torch.cuda.is_available() else 'cpu')}; "
              f"torch threads {torch.get_num_threads()}")

        results = {}
        for label, kw in [("cadpipe score (no heatmaps, no reports)", dict(heatmaps=False, reports=False)),
                          ("cadpipe score (all outputs: GradCAM, reports)", dict())]:
            t = time.perf_counter()
            s = score(ScoreConfig(bundle=bundle, input=src, output=os.path.join(work, f"out{len(results)}"),
                                  device=args.device, batch_size=args.batch_size, workers=args.workers, quiet=True,
                                  overrides=overrides, **kw))
            dt = time.perf_counter() - t
            assert s["ok"] == n, s
            results[label] = n / dt

        # ceiling: preprocessed tensors in memory, model forward through the bundle's inferer only
        runner = BundleRunner(bundle, device=args.device, overrides=overrides)
        from cadpipe.pipelines.discovery import discover

        items = [runner.preprocess({"image": u.image})["image"] for u in discover(src)]
        batches = [torch.stack([torch.as_tensor(x) for x in items[i:i + args.batch_size]])
                   for i in range(0, n, args.batch_size)]
        runner.forward_only(batches[0])  # warm-up
        t = time.perf_counter()
        for b in batches:
            runner.forward_only(b)
        results["ceiling: forward on preloaded tensors"] = n / (time.perf_counter() - t)

        # naive: python -m monai.bundle run per study
        k = min(args.naive_studies, n)
        ov = [f"--{key} {json.dumps(v) if not isinstance(v, str) else v}" for key, v in overrides.items()]
        t = time.perf_counter()
        for i in range(k):
            cmd = (f"{sys.executable} -m monai.bundle run --config_file {bundle}/configs/inference.json "
                   f"--meta_file {bundle}/configs/metadata.json --bundle_root {bundle} "
                   f"--dataset_dir {src}/study{i:03d} --output_dir {work}/naive{i} " + " ".join(ov))
            if args.device:
                cmd += f" --device \"\\$torch.device('{args.device}')\""
            r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
            if r.returncode != 0:
                print("naive run failed:", r.stderr[-2000:])
                break
        results[f"naive: monai.bundle run per study ({k} studies)"] = k / (time.perf_counter() - t)

        ceiling = results["ceiling: forward on preloaded tensors"]
        naive = results[f"naive: monai.bundle run per study ({k} studies)"]
        for label, rate in results.items():
            print(f"{label:55s} {rate:8.2f} studies/s   {rate / ceiling:5.2f}x ceiling   {rate / naive:7.1f}x naive")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
