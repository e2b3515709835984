"""Benchmark: cadpipe CLAHE (``clahe_batch``) vs skimage.exposure.equalize_adapthist vs OpenCV createCLAHE.

Three workloads, every contender timed in the same run: one large 12-bit image (``--size``, default 4000x3000
uint16, mammogram-like), one square image (``--square``, default 2048x2048; 0 skips it) and a batch of
``--batch`` 512x512 12-bit images (default 32; 0 skips it).

    python benchmarks/clahe.py [--device cpu|cuda] [--batch 32] [--rounds 5] [--size 4000 3000] [--square 2048]
                               [--threads 0] [--cv-threads 16]

Needs only torch, numpy, scikit-image and opencv-python (cv2), plus ``cadpipe`` on the import path
(``PYTHONPATH=.`` from the repository root): it imports ``cadpipe.transforms.clahe.clahe_batched``, which does not
import MONAI (Triton, when installed, for the Triton variants). kornia (``kornia.enhance.equalize_clahe``,
batched, other semantics) and cuCIM (``cucim.skimage.exposure.equalize_adapthist``, skimage semantics on the
GPU) are timed on the GPU when importable, as optional comparisons only.

cadpipe variants (the uint16 tensor already on ``--device``; output float32 [0, 1] on the device):
- on the CPU, ``cadpipe``: ``clahe_batch``'s CPU path (per image);
- on CUDA, ``vectorised``: the torch-ops kernel (``impl="vectorised"``); ``triton``: the Triton kernels
  (``impl="triton"``, eager launches); ``triton+graph``: the same kernels replayed as a cached CUDA graph
  (``graph=True``: input copied into the graph's buffer, output copied out, both timed).
A variant that raises is printed with its exception and the others still run.

skimage and OpenCV run on the CPU on the numpy arrays, one image after another for a batch. On CUDA the
times are from CUDA events around each call (after ``torch.cuda.synchronize()``; cuCIM, on its own stream,
by wall clock around device-wide synchronisation), after warm-up calls (which compile the Triton kernels and
capture the graphs), best of ``--rounds``; skimage there runs once (its output is the reference; seconds for
the large image) and OpenCV uses ``--cv-threads`` threads (default 16). On the CPU the median of ``--rounds``
interleaved rounds (so load from other processes hits all alike). The script prints each output's mean
absolute difference to skimage's (the correctness check), and on CUDA each variant's peak device memory
beyond its input (output included), relative to the input in float32.

Parameters: skimage and cadpipe use their defaults (kernel_size = 1/8 of each side -> 8x8 tiles,
clip_limit=0.01, nbins=256). OpenCV's semantics differ; comparable settings are:
- ``tileGridSize=(8, 8)``: the same 8x8 tiles as the default kernel_size (OpenCV pads the image to a
  multiple of the grid, skimage reflect-pads; both interpolate bilinearly between tile mappings);
- ``clipLimit``: OpenCV clips each of its 65536 16-bit bins at ``clipLimit * tile_pixels / 65536``;
  skimage clips each of its ``nbins`` bins, which here cover ``4096 / nbins = 16`` 12-bit grey values
  each, at ``clip_limit * tile_pixels``. The same clip per grey value needs
  ``clipLimit = clip_limit * 65536 / 16 = 40.96``. OpenCV's run time does not depend on clipLimit.
kornia gets the images as float in [0, 1] (the conversion is timed with it), ``clip_limit=40.0`` and
``grid_size=(8, 8)``. For a single image OpenCV also runs with ``cv2.setNumThreads(1)`` (``opencv1t``). On
the CPU, cadpipe runs with ``--threads`` threads (0: all) per image, like OpenCV's default.
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


def cadpipe_variants(x: torch.Tensor, args, device: torch.device) -> dict:
    """cadpipe's kernels to time on ``device``: name -> fn() (on CUDA every GPU variant, else the CPU path)."""
    from cadpipe.transforms.clahe.clahe_batched import _triton_module, clahe_batch

    if device.type != "cuda":
        threads = args.threads or None
        return {"cadpipe": lambda: clahe_batch(x, num_threads=threads)}
    runs = {"vectorised": lambda: clahe_batch(x, impl="vectorised")}
    try:
        tm = _triton_module()
    except Exception as e:  # pragma: no cover - reported, the other variants still run
        tm = None
        print(f"(triton variants not run: {type(e).__name__}: {e})")
    if tm is None:
        print("(triton variants not run: Triton is not importable here)")
    else:
        runs["triton"] = lambda: clahe_batch(x, impl="triton")
        runs["triton+graph"] = lambda: clahe_batch(x, impl="triton", graph=True)
    return runs


def peak_memory(fn, device: torch.device) -> int:
    """Peak bytes allocated during ``fn()`` beyond what was allocated before (its output included)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return peak


def run_workload(name: str, imgs: np.ndarray, args, device: torch.device) -> None:
    """Time every contender on ``imgs`` (N, H, W) uint16 and print times, ratios and differences.

    A contender that raises is reported with its exception and left out; the others still run.
    """
    import cv2
    from skimage import exposure

    cpu_x = torch.from_numpy(imgs)[:, None]  # (N, 1, H, W)
    x = cpu_x.to(device)
    h, w = imgs.shape[1:]
    cuda = device.type == "cuda"
    print(f"\n== {name}: {len(imgs)} x {h}x{w} uint16 12-bit; cadpipe on {device}")
    cv = cv2.createCLAHE(clipLimit=0.01 * 65536 / 16, tileGridSize=(8, 8))
    cv_threads = cv2.getNumThreads()

    def opencv_1thread():
        cv2.setNumThreads(1)
        try:
            return [cv.apply(im) for im in imgs]
        finally:
            cv2.setNumThreads(cv_threads)

    def skimage_run():
        return [exposure.equalize_adapthist(im) for im in imgs]

    gpu_runs = cadpipe_variants(x, args, device) if cuda else {}
    for k, f in optional_contenders(device).items():
        gpu_runs[k] = (lambda f=f: f(imgs, x))
    cpu_runs = {"opencv": lambda: [cv.apply(im) for im in imgs]}
    if len(imgs) == 1:
        cpu_runs["opencv1t"] = opencv_1thread
    if not cuda:
        cpu_runs.update(cadpipe_variants(x, args, device))
        cpu_runs["skimage"] = skimage_run

    # skimage's result is the reference; on CUDA it runs once (seconds for a large image), timed once
    t0 = time.perf_counter()
    ref = as_numpy(skimage_run())
    ref_time = time.perf_counter() - t0

    # GPU variants one at a time, each warmed up (Triton compiles, graphs are captured), timed and measured
    # before the next, so one that fails is reported without holding up the others
    outs, errors, peaks = {}, {}, {}
    times: dict[str, list[float]] = {}
    for k, f in gpu_runs.items():
        try:
            outs[k] = as_numpy(f())
            torch.cuda.synchronize()
            times[k] = time_cuda(f, args.rounds, events=(k != "cucim"))
            if k in ("vectorised", "triton", "triton+graph"):
                peaks[k] = peak_memory(f, device)
        except Exception as e:
            errors[k] = f"{type(e).__name__}: {e}"
            times.pop(k, None)
    for k, f in cpu_runs.items():  # warm-up and outputs of the CPU contenders
        if k == "skimage":
            continue
        try:
            outs[k] = as_numpy(f())
        except Exception as e:
            errors[k] = f"{type(e).__name__}: {e}"
    cpu_timed = {k: f for k, f in cpu_runs.items() if k not in errors}
    for k in cpu_timed:
        times[k] = []
    for _ in range(args.rounds):  # CPU contenders, interleaved (so load from other processes hits all alike)
        for k, f in cpu_timed.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    if cuda:
        times["skimage"] = [ref_time]
    best = {k: (min(v) if k in gpu_runs else statistics.median(v)) for k, v in times.items()}

    for k, msg in errors.items():
        print(f"  {k:13s} FAILED: {msg}")
    for k in times:
        how = "best" if k in gpu_runs else ("one run" if cuda and k == "skimage" else "median")
        runs_ms = " ".join(f"{t * 1e3:.2f}" for t in times[k])
        line = f"  {k:13s} {best[k] * 1e3:9.3f} ms ({how} of {len(times[k])}: {runs_ms})"
        if k in outs and not k.startswith("opencv"):
            line += f"   MAE vs skimage {np.abs(outs[k] - ref).mean():.2e}"
        print(line)
    ours = [k for k in ("cadpipe", "vectorised", "triton", "triton+graph") if k in best]
    for k in ours:
        c = best[k]
        line = f"  {k}: {best['skimage'] / c:.1f}x skimage"
        if "opencv" in best:
            line += (f"; time / OpenCV ({cv_threads} threads) {c / best['opencv']:.3f}x "
                     f"(OpenCV/{k} = {best['opencv'] / c:.1f}x)")
        if "opencv1t" in best:
            line += f"; time / OpenCV 1 thread {c / best['opencv1t']:.3f}x"
        for other in ("kornia", "cucim"):
            if other in best:
                line += f"; {best[other] / c:.2f}x faster than {other}"
        print(line)
    if cuda:
        in_f32 = x.numel() * 4
        for k, peak in peaks.items():
            print(f"  {k}: peak device memory beyond the input {peak / 2**20:.1f} MiB = "
                  f"{peak / in_f32:.2f}x the input in float32 (output included)")
        if "triton+graph" in ours:
            from cadpipe.transforms.clahe.clahe_triton import GRAPHS

            pool = sum(e[1].numel() * e[1].element_size() + e[2].numel() * 4 for e in GRAPHS.graphs.values())
            print(f"  triton+graph: between calls the graph cache (all shapes so far) holds static input/output "
                  f"buffers of {pool / 2**20:.1f} MiB, plus its graphs' work buffers")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="device for cadpipe (cpu, cuda, cuda:1, ...)")
    p.add_argument("--batch", type=int, default=32, help="images in the 512x512 batch workload (0: skip it)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--size", type=int, nargs=2, default=(4000, 3000), metavar=("ROWS", "COLS"))
    p.add_argument("--square", type=int, default=2048, help="side of the square single-image workload (0: skip)")
    p.add_argument("--cv-threads", type=int, default=16, help="OpenCV threads with --device cuda (the comparison)")
    p.add_argument("--threads", type=int, default=0,
                   help="cadpipe's CPU threads per image (0: torch.get_num_threads()); ignored on a GPU")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    import cv2

    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f"; opencv threads {cv2.getNumThreads()}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    if device.type == "cuda":
        cv2.setNumThreads(args.cv_threads)
    run_workload("large image", mammogram_like(*args.size)[None], args, device)
    if args.square:
        run_workload("square image", mammogram_like(args.square, args.square, seed=1)[None], args, device)
    if args.batch:
        imgs = np.stack([mammogram_like(512, 512, seed=s) for s in range(args.batch)])
        run_workload("batch", imgs, args, device)
    if device.type == "cuda":
        print("\nGPU goals: 32x512x512 <= 1.5 ms (kornia 1.7 ms), 4000x3000 <= 1 ms (>= 5x OpenCV at 16 threads); "
              "peak extra device memory <= 4x the input in float32")


if __name__ == "__main__":
    main()
