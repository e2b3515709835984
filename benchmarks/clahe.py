"""Benchmark: cadpipe CLAHE (``clahe_batch``) vs skimage.exposure.equalize_adapthist vs OpenCV createCLAHE.

Two workloads, every contender timed in the same run: one large 12-bit image (``--size``, default 4000x3000
uint16, mammogram-like) and a batch of ``--batch`` 512x512 12-bit images (default 32; 0 skips it).

    python benchmarks/clahe.py [--device cpu|cuda] [--batch 32] [--rounds 5] [--size 4000 3000] [--threads 0]

Needs only torch, numpy, scikit-image and opencv-python (cv2), plus ``cadpipe`` on the import path
(``PYTHONPATH=.`` from the repository root): it imports ``cadpipe.transforms.clahe_batched``, which does not
import MONAI. kornia (``kornia.enhance.equalize_clahe``, batched, other semantics) and cuCIM
(``cucim.skimage.exposure.equalize_adapthist``, skimage semantics on the GPU) are timed on the GPU when
importable, as optional comparisons only.

cadpipe runs on ``--device`` (the uint16 tensor already there; output float32 [0, 1] on the device).
skimage and OpenCV run on the CPU on the numpy arrays, one image after another for the batch. On CUDA the
times are from CUDA events around each call (after ``torch.cuda.synchronize()``; cuCIM, on its own stream,
by wall clock around device-wide synchronisation), after warm-up calls, best of ``--rounds``; on the CPU the
median of ``--rounds`` interleaved rounds (so load from other processes hits all alike). The script prints
each output's mean absolute difference to skimage's (the correctness check, on the device used), and on
CUDA the peak device memory the cadpipe call allocated beyond its input, relative to the input in float32.

Parameters: skimage and cadpipe use their defaults (kernel_size = 1/8 of each side -> 8x8 tiles,
clip_limit=0.01, nbins=256). OpenCV's semantics differ; comparable settings are:
- ``tileGridSize=(8, 8)``: the same 8x8 tiles as the default kernel_size (OpenCV pads the image to a
  multiple of the grid, skimage reflect-pads; both interpolate bilinearly between tile mappings);
- ``clipLimit``: OpenCV clips each of its 65536 16-bit bins at ``clipLimit * tile_pixels / 65536``;
  skimage clips each of its ``nbins`` bins, which here cover ``4096 / nbins = 16`` 12-bit grey values
  each, at ``clip_limit * tile_pixels``. The same clip per grey value needs
  ``clipLimit = clip_limit * 65536 / 16 = 40.96``. OpenCV's run time does not depend on clipLimit.
kornia gets the images as float in [0, 1] (the conversion is timed with it), ``clip_limit=40.0`` and
``grid_size=(8, 8)``. OpenCV runs with its default thread count (printed) and, for the large image, again
with ``cv2.setNumThreads(1)``. On the CPU, cadpipe runs with ``--threads`` threads (0: all) for the large
image, like OpenCV's default.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch


def mammogram_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A 12-bit image with a dark background, a bright breast-shaped region, dense tissue and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt(((yy - h / 2) / (0.48 * h)) ** 2 + (xx / (0.85 * w)) ** 2)
    breast = r < 1
    img = 300.0 + breast * (1800.0 * np.clip(1 - r**2, 0, None) ** 0.3)
    img += breast * 700.0 * np.sin(xx / 97.0) * np.cos(yy / 131.0) ** 2
    img += rng.normal(0, 60, (h, w)).astype(np.float32)
    return np.clip(img, 0, 4095).astype(np.uint16)


def optional_contenders(device: torch.device) -> dict:
    """kornia's and cuCIM's CLAHE where importable (GPU only): name -> fn(numpy batch, torch batch)."""
    found = {}
    if device.type != "cuda":
        return found
    try:
        from kornia.enhance import equalize_clahe

        found["kornia"] = lambda imgs, x: equalize_clahe(x.float() / 4095.0, clip_limit=40.0, grid_size=(8, 8))
    except Exception as e:  # not installed or broken: only an optional comparison
        print(f"(kornia not timed: {type(e).__name__}: {e})")
    try:
        import cupy
        from cucim.skimage.exposure import equalize_adapthist as cu_clahe

        def cucim_run(imgs, x):
            return [cu_clahe(cupy.asarray(x[i, 0])) for i in range(x.shape[0])]

        found["cucim"] = cucim_run
    except Exception as e:
        print(f"(cuCIM not timed: {type(e).__name__}: {e})")
    return found


def as_numpy(out) -> np.ndarray:
    """An output (torch, numpy, cupy, or a list of those) as a float64 numpy (N, H, W) array."""
    if isinstance(out, list):
        return np.stack([as_numpy(o).reshape(o.shape[-2:]) for o in out])
    if isinstance(out, torch.Tensor):
        return out.detach().cpu().double().numpy().reshape(-1, *out.shape[-2:])
    if hasattr(out, "get"):  # cupy
        out = out.get()
    return np.asarray(out, np.float64).reshape(-1, *out.shape[-2:])


def time_cuda(fn, rounds: int, events: bool = True) -> list[float]:
    """Seconds per call of ``fn()`` on the GPU: warm-up calls first, then ``rounds`` timed calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        if events:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return times


def run_workload(name: str, imgs: np.ndarray, args, device: torch.device) -> None:
    """Time every contender on ``imgs`` (N, H, W) uint16 and print times, ratios and differences."""
    import cv2
    from skimage import exposure

    from cadpipe.transforms.clahe_batched import clahe_batch

    cpu_x = torch.from_numpy(imgs)[:, None]  # (N, 1, H, W)
    x = cpu_x.to(device)
    threads = args.threads or None
    cv = cv2.createCLAHE(clipLimit=0.01 * 65536 / 16, tileGridSize=(8, 8))
    cv_threads = cv2.getNumThreads()

    def opencv_1thread():
        cv2.setNumThreads(1)
        try:
            return [cv.apply(im) for im in imgs]
        finally:
            cv2.setNumThreads(cv_threads)

    runs = {
        "cadpipe": lambda: clahe_batch(x, num_threads=threads),
        "skimage": lambda: [exposure.equalize_adapthist(im) for im in imgs],
        "opencv": lambda: [cv.apply(im) for im in imgs],
    }
    if len(imgs) == 1:
        runs["opencv1t"] = opencv_1thread
    gpu_runs = {"cadpipe"}
    for k, f in optional_contenders(device).items():
        runs[k] = (lambda f=f: f(imgs, x))
        gpu_runs.add(k)

    outs = {k: f() for k, f in runs.items()}  # warm-up, and the outputs for the difference check
    if device.type == "cuda":
        torch.cuda.synchronize()
    times: dict[str, list[float]] = {k: [] for k in runs}
    if device.type == "cuda":
        for k in gpu_runs:
            times[k] = time_cuda(runs[k], args.rounds, events=(k != "cucim"))
    for _ in range(args.rounds):  # CPU contenders (and cadpipe on the CPU), interleaved
        for k, f in runs.items():
            if device.type == "cuda" and k in gpu_runs:
                continue
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    best = {k: (min(v) if device.type == "cuda" and k in gpu_runs else statistics.median(v)) for k, v in times.items()}

    ref = as_numpy(outs["skimage"])
    h, w = imgs.shape[1:]
    print(f"\n== {name}: {len(imgs)} x {h}x{w} uint16 12-bit; cadpipe on {device}")
    for k in runs:
        how = "best" if device.type == "cuda" and k in gpu_runs else "median"
        runs_ms = " ".join(f"{t * 1e3:.2f}" for t in times[k])
        line = f"  {k:9s} {best[k] * 1e3:9.2f} ms ({how} of {args.rounds}: {runs_ms})"
        if k != "skimage" and not k.startswith("opencv"):
            line += f"   MAE vs skimage {np.abs(as_numpy(outs[k]) - ref).mean():.2e}"
        print(line)
    c = best["cadpipe"]
    print(f"  cadpipe speed-up vs skimage: {best['skimage'] / c:.1f}x")
    print(f"  cadpipe time / OpenCV time ({cv_threads} threads): {c / best['opencv']:.3f}x "
          f"(OpenCV/cadpipe = {best['opencv'] / c:.1f}x)")
    if "opencv1t" in best:
        print(f"  cadpipe time / OpenCV 1-thread time: {c / best['opencv1t']:.3f}x")
    for k in ("kornia", "cucim"):
        if k in best:
            print(f"  cadpipe speed-up vs {k}: {best[k] / c:.2f}x")
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = clahe_batch(x)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated(device) - base
        print(f"  cadpipe peak device memory beyond the input: {extra / 2**20:.1f} MiB = "
              f"{extra / (x.numel() * 4):.2f}x the input in float32 (output included)")
        del out
        cpu_out = clahe_batch(cpu_x, impl="vectorised") if x.numel() <= 1 << 24 else None
        if cpu_out is not None:
            diff = (cpu_out - clahe_batch(x).cpu()).abs()
            print(f"  cadpipe {device} vs the same kernel on the CPU: mean |diff| {float(diff.mean()):.2e}, "
                  f"max {float(diff.max()):.2e}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="device for cadpipe (cpu, cuda, cuda:1, ...)")
    p.add_argument("--batch", type=int, default=32, help="images in the 512x512 batch workload (0: skip it)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--size", type=int, nargs=2, default=(4000, 3000), metavar=("ROWS", "COLS"))
    p.add_argument("--threads", type=int, default=0,
                   help="cadpipe's CPU threads per image (0: torch.get_num_threads()); ignored on a GPU")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    import cv2

    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f"; opencv threads {cv2.getNumThreads()}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    run_workload("large image", mammogram_like(*args.size)[None], args, device)
    if args.batch:
        imgs = np.stack([mammogram_like(512, 512, seed=s) for s in range(args.batch)])
        run_workload("batch", imgs, args, device)
    if device.type == "cuda":
        print("\nissue #17 goals on a GPU: 32x512x512 <= 1.5 ms (kornia 1.7 ms), 4000x3000 <= 1 ms (>= 5x OpenCV at 16 "
              "threads)")


if __name__ == "__main__":
    main()
