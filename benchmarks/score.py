"""Throughput of ``cadpipe score`` vs the model forward alone (ceiling) vs ``monai.bundle run`` per study (naive).

All measurements run in one process on the same synthetic study folder (synthetic DICOM CXRs 512x400, one image
per study) with the same bundle as shipped (override ids with ``--override``) and the same (random, untrained:
speed does not depend on training) weights:

- ``cadpipe score --no-heatmaps --no-reports --no-dicom-results`` end to end (discovery, model load, DataLoader
  workers, outputs, results.csv) on ``--studies``
  studies (1024: a batch job, over which start-up amortises), once per ``--workers`` x ``--threads`` value, and its
  *steady* rate (after the first quarter of the units: no start-up) with the start-up seconds the steady rate does
  not explain (``run_summary.json``: ``startup_s``); then once with every output (Grad-CAM, reports) on the first
  ``--all-outputs-studies``;
- the ceiling: the network through the bundle's inferer on preprocessed plain tensors already in memory
  (``--ceiling-studies`` of them), at one thread, at torch's default thread count and as two 1-thread streams,
  whichever is fastest; measured just before and just after every ``cadpipe score`` run, and each run is compared
  with the mean of its two adjacent ceilings (the load of a shared machine drifts within minutes);
- the CPU cost per study of preprocessing (bundle ``preprocessing``, one thread) and of the forward, and from them
  the best ratio to the ceiling any pipeline can reach on this many cores when preprocessing and forward share
  them (``bound``);
- naive: ``python -m monai.bundle run`` once per study (``--naive-studies`` of them).

Timings on a shared machine are noisy; compare the ratios of one run.

Where the time went and what was done (cProfile / py-spy on the 2-core machine):

- the forward ran on MetaTensors (every op through ``MetaTensor.__torch_function__``: ~30% of the forward) → plain
  tensors, metadata put back for postprocessing; the same for Grad-CAM's input;
- one ``fsync`` per output file and per journal line (~15 ms/study) → journal fsync at most once a second, files
  renamed without fsync (resume rescores units whose files are missing); PNG at zlib level 6 (~7 ms) → level 1;
- one forward stream with torch's 2 threads uses its 2 cores badly (OpenMP threads wait for each other); two
  Python threads each forwarding their own batches with 1 torch thread are 1.2-1.3x faster, so ``cadpipe score``
  does that by default on a CPU (``--streams``), now also with Grad-CAM (its hook acts on its own thread only);
- DataLoader workers sent one MetaTensor per message, each of its tensors (image, affine...) a shared-memory
  segment passed as a file descriptor: ~1 ms of the scoring process's CPU per study and more in the worker →
  batches of packed items (``cadpipe.pipelines.scoring.item_transport``): 0.3 ms;
- preprocessing of a 512x400 DICOM to 128 px, 4.1 → 3.2 ms: each DICOM file parsed once (the format check read
  it a second time), the modality LUT in float32 where exact, in-place windowing, a one-pass NaN check;
  discovery reads each header once (0.55 → 0.36 ms per file);
- Grad-CAM back-propagated through the whole network and computed every parameter's gradient → only d(score)/d(A)
  above the target layer (``benchmarks/gradcam.py``: 2.6x faster than MONAI's ``GradCAM``, 1.1x one forward);
  the all-outputs run went from 3.1 to 8.0 studies/s.

Tried and dropped: the model built on a thread beside discovery (slower: both are Python-heavy and fight over
the GIL, 0.70-0.90 s against 0.53 s one after the other for 1024 studies); two batches queued per stream; 1
instead of 2 workers (no measurable difference).

What is left is the forward: during a 128 px run the two stream threads use 10.3-10.7 ms of CPU per study each
(the ceiling's forward: 10.5), the main thread 0.3 ms, the workers 4.0-4.3 ms (preprocessing 3.2 ms), about 96%
of both cores busy. On 2 cores preprocessing can only take CPU from the forward, hence the bound; on a GPU the two
do not share a resource (no GPU was available to measure it).

Idle machine, 2026-11-23. The bundle as shipped gave 0.83x, 0.82x, 0.80x and 0.80x end to end in four runs
between 20:33 and 21:10 UTC (steady 0.82-0.86x); the second of them in full:

    bundle as shipped (224 px, CLAHE), 1024 studies, --naive-studies 1:
      preprocessing 9.3 ms/study; forward 65.8 ms (1 thread), 39.5 ms (2 threads), 33.1 ms (2 streams)
      bound 0.88x
      score --no-heatmaps --no-reports  24.74 studies/s  0.82x ceiling  159.4x naive  steady 0.86x, start-up 1.6 s
      score, all outputs (64 studies)    8.01 studies/s  0.27x ceiling   51.6x naive  steady 0.46x
      ceiling 30.24 studies/s; naive 0.16 studies/s
    --override image_size=128 --override use_clahe=false (preprocessing weighs most against the forward):
      preprocessing 3.2 ms/study; forward 21.8 / 14.2 / 11.1 ms; bound 0.88x
      score --no-heatmaps --no-reports  66.94 studies/s  0.73x ceiling  steady 0.80x, start-up 1.2 s
      score, all outputs (64 studies)   19.70 studies/s  0.22x ceiling
      ceiling 89.91 studies/s

    python benchmarks/score.py [--bundle bundles/cxr_pneumonia_classification] [--studies 1024]
        [--ceiling-studies 128] [--all-outputs-studies 64] [--override image_size=128] [--naive-studies 2]
        [--workers 2] [--workers 1 ...] [--threads 1 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import torch


def _studies(root: str, n: int, rows: int, cols: int, distinct: int = 8) -> None:
    """``n`` one-image studies: ``distinct`` synthetic CXRs (generating one 2500x2048 image takes seconds), each
    saved again under new UIDs (a new study, series and instance) until there are ``n``."""
    import pydicom
    from pydicom.uid import generate_uid

    from cadpipe.data.synthetic.dicom import write_cxr_dicom

    templates = []
    for i in range(n):
        folder = os.path.join(root, f"study{i:04d}")
        os.makedirs(folder)
        path = os.path.join(folder, "synthetic_IM0001")
        if i < distinct:
            write_cxr_dicom(path, rows=rows, cols=cols, seed=i)
            templates.append(pydicom.dcmread(path))
            continue
        ds = templates[i % distinct]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID = f"SYNTHETIC-{i:04d}"
        ds.save_as(path, enforce_file_format=True)


class NullNetwork(torch.nn.Module):
    """A near-free stand-in for the network (``--null-network``): the output shape of the real one, computed from a
    single element of each image so the batch must still reach the device."""

    def __init__(self, out_shape: tuple[int, ...]):
        super().__init__()
        self.out_shape = tuple(out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probe = x.reshape(x.shape[0], -1)[:, :1]
        return probe.reshape(-1, *([1] * len(self.out_shape))).expand(-1, *self.out_shape) * 0.0


def _plain(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _rate_line(label: str, rate: float, ceiling: float, naive: float | None, extra: str = "") -> str:
    vs_naive = f"{rate / naive:7.1f}x naive" if naive else "      - naive"
    return f"{label:72s} {rate:8.2f} studies/s  {rate / ceiling:5.2f}x ceiling  {vs_naive}{extra}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="bundles/cxr_pneumonia_classification")
    ap.add_argument("--studies", type=int, default=1024,
                    help="studies in the folder cadpipe score runs on (a batch job: start-up amortises)")
    ap.add_argument("--ceiling-studies", type=int, default=128,
                    help="preloaded studies the forward-only ceiling runs over (per-study rate)")
    ap.add_argument("--all-outputs-studies", type=int, default=64,
                    help="studies of the run with every output (GradCAM, reports), slower: a --limit of the folder")
    ap.add_argument("--naive-studies", type=int, default=2)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, action="append", default=None,
                    help="DataLoader workers of cadpipe score; repeat to compare variants back to back (default 2)")
    ap.add_argument("--threads", type=int, action="append", default=None,
                    help="torch threads of cadpipe score (repeat: every workers x threads pair; 0 or none: "
                         "torch's default)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--preset", choices=("small", "real"), default=None,
                    help="image size preset: small = 512x400 (default rows/cols), real = 2500x2048 (a real CXR)")
    ap.add_argument("--preprocess", action="append", choices=("per-item", "batched"), default=None,
                    help="cadpipe score preprocessing; repeat to compare (default: per-item and batched)")
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                    help="forward precision of the ceiling and of cadpipe score (default: the bundle's)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--null-network", action="store_true",
                    help="replace the network by a near-free module of the same output shape: the studies/s the "
                         "rest of the pipeline (decoding workers, preprocessing, host side) can deliver")
    ap.add_argument("--override", action="append", default=[],
                    help="bundle overrides ID=JSON used by all measurements (default: the bundle as shipped); "
                         "e.g. --override image_size=128 --override use_clahe=false, the case where "
                         "preprocessing weighs most against the forward")
    args = ap.parse_args()
    if args.preset == "real":
        args.rows, args.cols = 2500, 2048
    elif args.preset == "small":
        args.rows, args.cols = 512, 400
    workers_list = args.workers or [2]
    preprocess_list = args.preprocess or ["per-item", "batched"]
    threads_list = args.threads or [None]
    overrides = {}
    for text in args.override:
        k, _, v = text.partition("=")
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v

    from cadpipe.data.synthetic.weights import copy_bundle_untrained
    from cadpipe.pipelines.inference.bundle_runner import BundleRunner
    from cadpipe.pipelines.scoring.discovery import discover
    from cadpipe.pipelines.scoring.score import ScoreConfig, score

    work = tempfile.mkdtemp(prefix="cadpipe_bench_")
    try:
        bundle = copy_bundle_untrained(args.bundle, os.path.join(work, "bundle"), overrides)
        src = os.path.join(work, "studies")
        _studies(src, args.studies, args.rows, args.cols)
        n = args.studies
        threads = torch.get_num_threads()
        print(f"bundle {args.bundle} overrides {overrides}; {n} synthetic DICOM studies {args.rows}x{args.cols}; "
              f"batch {args.batch_size}; device {args.device or ('cuda' if torch.cuda.is_available() else 'cpu')}; "
              f"torch threads {threads}; CPUs {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}")

        # preloaded plain tensors for the ceiling; per-study preprocessing cost (1 thread)
        t_first = time.perf_counter()
        runner = BundleRunner(bundle, device=args.device, overrides=overrides)
        runner.configure_inference(args.precision, args.channels_last)
        build_s = time.perf_counter() - t_first
        device = runner.device
        units = discover(src)[: max(args.batch_size, min(n, args.ceiling_studies))]
        nc = len(units)
        torch.set_num_threads(1)
        runner.preprocess({"image": units[0].image})  # one-off costs (CLAHE's TorchScript compile) not counted
        t = time.perf_counter()
        k_pre = 16 if args.rows * args.cols > 1 << 20 else 64  # per-item preprocessing of a real CXR takes ~0.2 s
        items = [runner.preprocess({"image": u.image})["image"] for u in units[:k_pre]]
        pre_ms = 1000 * (time.perf_counter() - t) / len(items)
        plan, why = runner.batched_preprocessing()
        decode_ms = dev_ms = None
        if plan is not None:  # decode cost per study (1 thread), then the batched rest on the device per study
            t = time.perf_counter()
            raws = [plan.decode(u.image) for u in units[:64]]  # decoding is cheap next to preprocessing
            decode_ms = 1000 * (time.perf_counter() - t) / len(raws)
            torch.set_num_threads(threads)
            plan(raws[:args.batch_size], device)  # warm-up (CLAHE compile, CUDA kernels)
            _sync(device)
            t = time.perf_counter()
            done = [plan(raws[i:i + args.batch_size], device) for i in range(0, len(raws), args.batch_size)]
            _sync(device)
            dev_ms = 1000 * (time.perf_counter() - t) / len(raws)
            items = [x for b in done for x in b.cpu()]
        else:
            print(f"no batched preprocessing for this bundle: {why}")
        items = (items * (-(-nc // len(items))))[:nc]
        batches = [torch.stack([_plain(x) for x in items[i:i + args.batch_size]]).to(device)
                   for i in range(0, nc, args.batch_size)]
        torch.set_num_threads(threads)
        runner.forward_only(batches[0])  # warm-up
        _sync(device)
        print(f"runner built in {build_s:.2f} s; preprocessing per item {pre_ms:.1f} ms/study (1 thread)"
              + (f"; batched: decode {decode_ms:.1f} ms/study (1 thread), the rest {dev_ms:.2f} ms/study on "
                 f"{device} (batch {args.batch_size})" if plan is not None else ""))
        out_shape = tuple(runner.forward_only(batches[0][:1]).shape[1:])
        hook = (lambda r: setattr(r, "network", NullNetwork(out_shape).to(r.device))) if args.null_network else None

        def forward_ms(nthreads: int) -> float:
            """ms per study of the network through the bundle's inferer over all preloaded batches."""
            torch.set_num_threads(nthreads)
            try:
                t0 = time.perf_counter()
                for b in batches:
                    runner.forward_only(b)
                _sync(device)
                return 1000 * (time.perf_counter() - t0) / nc
            finally:
                torch.set_num_threads(threads)

        def forward_streams_ms(k: int) -> float:
            """ms per study with ``k`` Python threads forwarding interleaved batches at once, the torch threads
            split between them (what ``cadpipe score --streams k`` does)."""
            torch.set_num_threads(max(1, threads // k))
            try:
                def run(part):
                    for b in part:
                        runner.forward_only(b)

                t0 = time.perf_counter()
                pool = [threading.Thread(target=run, args=(batches[j::k],)) for j in range(k)]
                for th in pool:
                    th.start()
                for th in pool:
                    th.join()
                _sync(device)
                return 1000 * (time.perf_counter() - t0) / nc
            finally:
                torch.set_num_threads(threads)

        ceilings = []  # (1-thread, default-threads, 2 streams) ms per study, measured before/after every run

        def measure_ceiling() -> None:
            ceilings.append((forward_ms(1), forward_ms(threads), forward_streams_ms(2)))

        def best(c) -> float:  # studies/s of the faster forward: one thread can beat several on a busy machine
            return 1000 / min(c)

        runs = []  # (label, end-to-end rate, summary, ceiling adjacent in time)
        tname = lambda t, w: f"{t or threads} threads"  # noqa: E731
        null = " NULL NETWORK" if args.null_network else ""
        common = dict(precision=args.precision, channels_last=args.channels_last, runner_hook=hook)
        variants = [(f"score --no-heatmaps --no-reports --no-dicom-results --preprocess {pp}{null}, {n} studies, {w} workers, "
                     f"{tname(t, w)}", w, dict(heatmaps=False, reports=False, dicom_results=False, threads=t,
                                               preprocess=pp, **common))
                    for pp in preprocess_list for w in workers_list for t in threads_list]
        w0, t0 = workers_list[0], threads_list[0]
        k_all = min(n, args.all_outputs_studies) if not args.null_network else 0
        if k_all:
            for pp in preprocess_list:
                variants.append((f"score, all outputs (GradCAM, reports) --preprocess {pp}, {k_all} studies, "
                                 f"{w0} workers, {tname(t0, w0)}", w0, dict(threads=t0, limit=k_all, preprocess=pp,
                                                                           **common)))
        measure_ceiling()
        for i, (label, w, kw) in enumerate(variants):
            t = time.perf_counter()
            cpu0 = time.process_time()  # this process only (not the workers): the scoring process's CPU
            s = score(ScoreConfig(bundle=bundle, input=src, output=os.path.join(work, f"out{i}"), device=args.device,
                                  batch_size=args.batch_size, workers=w, quiet=True, overrides=overrides, **kw))
            dt = time.perf_counter() - t
            s["process_cpu_ms"] = 1000 * (time.process_time() - cpu0) / max(1, s["ok"])
            assert s["ok"] == s["scored_this_run"] == (kw.get("limit") or n), s
            measure_ceiling()
            # the ceiling for this run: the mean of the ones just before and just after it (load drifts)
            adjacent = (best(ceilings[-2]) + best(ceilings[-1])) / 2
            runs.append((label, s["ok"] / dt, s, adjacent))
        fwd1_ms = sum(c[0] for c in ceilings) / len(ceilings)
        fwdn_ms = sum(c[1] for c in ceilings) / len(ceilings)
        fwds_ms = sum(c[2] for c in ceilings) / len(ceilings)
        ceiling = sum(best(c) for c in ceilings) / len(ceilings)
        cores = os.cpu_count() or 1
        # the fastest forward keeps its threads' cores busy (OpenMP threads spin when they wait), so its CPU per
        # study is busy cores x ms; preprocessing needs CPU on top: the best ratio any pipeline can reach when both
        # share the cores
        best_ms, busy = min((fwd1_ms, 1), (fwdn_ms, threads), (fwds_ms, 2 * max(1, threads // 2)))
        stream_cpu_ms = busy * best_ms
        bound = min(1.0, (1000 / ceiling) / ((stream_cpu_ms + pre_ms) / cores)) if cores > busy else \
            stream_cpu_ms / (stream_cpu_ms + pre_ms)

        # naive: python -m monai.bundle run per study
        k = min(args.naive_studies, n)
        naive = None
        if k:
            ov = [f"--{key} {json.dumps(v) if not isinstance(v, str) else v}" for key, v in overrides.items()]
            t = time.perf_counter()
            for i in range(k):
                cmd = (f"{sys.executable} -m monai.bundle run --config_file {bundle}/configs/inference.json "
                       f"--meta_file {bundle}/configs/metadata.json --bundle_root {bundle} "
                       f"--dataset_dir {src}/study{i:04d} --output_dir {work}/naive{i} " + " ".join(ov))
                if args.device:
                    cmd += f" --device \"\\$torch.device('{args.device}')\""
                r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
                if r.returncode != 0:
                    print("naive run failed:", r.stderr[-2000:])
                    k = 0
                    break
            naive = k / (time.perf_counter() - t) if k else None

        print(f"per study: preprocessing {pre_ms:.1f} ms (1 thread); forward {fwd1_ms:.1f} ms (1 thread), "
              f"{fwdn_ms:.1f} ms ({threads} threads), {fwds_ms:.1f} ms (2 streams x {max(1, threads // 2)} "
              f"thread(s)) (means of {len(ceilings)} ceiling measurements; the ceiling is the fastest of the three)")
        print("ceilings before/after each run, studies/s (1 thread | default | 2 streams): "
              + ", ".join(" | ".join(f"{1000 / x:.1f}" for x in c) for c in ceilings))
        print(f"preprocessing CPU = {pre_ms / stream_cpu_ms:.0%} of the ceiling forward's CPU ({busy} busy "
              f"thread(s) x {best_ms:.1f} ms); bound for any pipeline sharing {cores} cores between that forward "
              f"and preprocessing: {bound:.2f}x ceiling")
        print("each score run is compared with the ceiling measured just before and after it:")
        for label, rate, s, adjacent in runs:
            steady = s.get("steady_units_per_second")
            label = f"{label}, {s.get('streams', 1)} stream(s)"
            extra = (f"   steady {steady:.2f}/s = {steady / adjacent:.2f}x; start-up {s['startup_s']:.1f} s "
                     f"(discovery {s['discovery_s']:.2f} s, model load {s['model_load_s']:.2f} s), first result {s['first_result_s']:.2f} s, "
                     f"tables/reports {s['finish_s']:.1f} s") if steady else ""
            extra += (f"; scoring process CPU {s['process_cpu_ms']:.2f} ms/study "
                      f"(one process could feed {1000 / max(s['process_cpu_ms'], 1e-9):.0f} studies/s)")
            if s.get("steady_cpu_ms_per_unit"):  # without start-up (model load, discovery, worker start)
                extra += (f", steady {s['steady_cpu_ms_per_unit']:.3f} ms/study "
                          f"({1000 / s['steady_cpu_ms_per_unit']:.0f} studies/s)")
            print(_rate_line(label + f" [{s['preprocess']}] (end to end)", rate, adjacent, naive, extra))
        if decode_ms:
            print(f"decoding workers: {1000 / decode_ms:.0f} studies/s per worker (1 thread each); "
                  f"{cores} CPUs could decode {cores * 1000 / decode_ms:.0f} studies/s")
        print(_rate_line(f"ceiling: forward on {nc} preloaded studies (mean)", ceiling, ceiling, naive))
        if naive:
            print(_rate_line(f"naive: monai.bundle run per study ({k} studies)", naive, ceiling, naive))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
