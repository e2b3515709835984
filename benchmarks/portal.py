"""Portal latency: upload → report ready, N sequential and N concurrent uploads, p50/p95, against the scoring floor.

Starts ``cadpipe serve`` as a subprocess on a free loopback port with copies of the CXR pneumonia and the breast
histology bundles given seeded *untrained* weights (latency does not depend on the weight values; the bundles run
with their own default configs: CXR 224x224 + CLAHE + GradCAM, histology 256-pixel patches + whole-image CAM).
Uploads synthetic images (CXR: grey PNG, default 1024x1024; histology: RGB PNG, default 512x384 — a full BACH
2048x1536 photo takes minutes on 2 CPU cores, see the histology bundle README; ``--histo-size 2048x1536`` to
measure it).

Baseline measured in the same run, before the server starts: the same image scored in process by
``cadpipe.pipelines.portal.engine.score_job`` (the ``cadpipe score`` pipeline + report, no HTTP, no queue). The
ratio portal p50 / baseline p50 is the service's overhead (upload, queue, polling).

    python benchmarks/portal.py                 # N=8 each, CXR + histology
    python benchmarks/portal.py --n 4 --no-histology --device cpu
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from cadpipe.pipelines.portal.server_process import stop_process_group  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def write_inputs(work: str, cxr_size: int, histo_size: tuple[int, int]) -> dict[str, str]:
    from PIL import Image

    from cadpipe.data.synthetic.cxr import synthetic_cxr
    from cadpipe.data.synthetic.histology import synthetic_tissue

    os.makedirs(os.path.join(work, "inputs"), exist_ok=True)
    cxr, _ = synthetic_cxr(cxr_size, pneumonia=True, rng=1)
    cxr_path = os.path.join(work, "inputs", "synthetic_cxr.png")
    Image.fromarray((cxr * 255).astype(np.uint8), mode="L").save(cxr_path)
    tissue, _ = synthetic_tissue(3, size=histo_size, rng=2)
    histo_path = os.path.join(work, "inputs", "synthetic_histology.png")
    Image.fromarray(tissue).save(histo_path)
    return {"cxr_pneumonia_classification": cxr_path, "breast_histology_classification": histo_path}


def baseline(bundle: str, image: str, n: int, device: str, no_heatmaps: bool = False) -> list[float]:
    """In-process scoring of ``image`` (score_job: preprocess, forward, CAM, overlay, report) in a worker thread,
    n runs after a warm-up."""
    from cadpipe.pipelines.scoring.discovery import discover
    from cadpipe.pipelines.portal.engine import load_runner, score_job

    runner = load_runner(bundle, device)
    if no_heatmaps:
        runner.cam_layers = None
    times: list[float] = []
    errors: list[str] = []

    def work(tmp: str) -> None:  # in a thread, as in the service's worker (see docs/portal.md on OpenMP threads)
        units = discover(image, runner.spatial_dims)
        for i in range(n + 1):
            t0 = time.perf_counter()
            result = score_job(runner, units, os.path.join(tmp, str(i)))
            if result["rows"][0]["status"] != "ok":
                errors.append(result["rows"][0].get("error"))
            if i:
                times.append(time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        th = threading.Thread(target=work, args=(tmp,))
        th.start()
        th.join()
    if errors:
        raise RuntimeError(f"baseline scoring failed: {errors[0]}")
    return times


class Client:
    def __init__(self, url: str):
        import httpx

        self.url = url
        self.httpx = httpx
        self.steps: list[dict] = []

    def one(self, task: str, path: str, out: list, server_s: list) -> None:
        """Upload, poll until done; appends the latency (upload start → report ready) to ``out``."""
        with self.httpx.Client(base_url=self.url, timeout=600) as c:
            data = open(path, "rb").read()
            t0 = time.perf_counter()
            r = c.post("/api/studies", files=[("files", (os.path.basename(path), data, "image/png"))],
                       data={"task": task})
            if r.status_code != 202:
                raise RuntimeError(f"upload failed: {r.status_code} {r.text[:300]}")
            job_id = r.json()["id"]
            while True:  # long poll: the server answers when the step changes (no polling load on the server)
                job = c.get(f"/api/studies/{job_id}", params={"wait": 30}).json()
                if job["status"] in ("done", "error"):
                    break
            t1 = time.perf_counter()
            if job["status"] != "done":
                raise RuntimeError(f"job failed: {job['error']}")
            out.append(t1 - t0)
            server_s.append(job["elapsed_s"])
            self.steps.append(job.get("step_times", {}))


def run_mode(client: Client, task: str, path: str, n: int, concurrent: bool) -> tuple[list[float], list[float], float]:
    lat, server_s = [], []
    t0 = time.perf_counter()
    if concurrent:
        threads = [threading.Thread(target=client.one, args=(task, path, lat, server_s)) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if len(lat) != n:
            raise RuntimeError(f"{n - len(lat)} concurrent uploads failed")
    else:
        for _ in range(n):
            client.one(task, path, lat, server_s)
    return lat, server_s, time.perf_counter() - t0


def _breakdown(steps: list[dict]) -> dict[str, float]:
    """Median seconds spent reaching each step from the previous one (server-side step_times)."""
    names = ["uploaded", "loaded", "preprocessed", "inferred", "report ready"]
    labels = ["wait for worker", "load", "preprocess", "forward", "CAM + overlay + report"]
    out = {}
    for prev, cur, label in zip(names, names[1:], labels[1:]):
        gaps = [s[cur] - s[prev] for s in steps if cur in s and prev in s]
        out[label] = statistics.median(gaps) if gaps else float("nan")
    out = {labels[0]: statistics.median([s.get("uploaded", 0.0) for s in steps]) if steps else float("nan"), **out}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="uploads per mode and task (default 8)")
    ap.add_argument("--cxr-size", type=int, default=1024)
    ap.add_argument("--histo-size", default="512x384", help="COLSxROWS of the histology image (default 512x384)")
    ap.add_argument("--no-histology", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-heatmaps", action="store_true", help="serve with --no-heatmaps (no GradCAM)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (server log, data folder)")
    args = ap.parse_args()

    from cadpipe.data.synthetic.weights import copy_bundle_untrained

    work = tempfile.mkdtemp(prefix="cadpipe_portal_bench_")
    cols, rows = (int(v) for v in args.histo_size.lower().split("x"))
    inputs = write_inputs(work, args.cxr_size, (cols, rows))
    tasks = ["cxr_pneumonia_classification"] + ([] if args.no_histology else ["breast_histology_classification"])
    bundles = {t: copy_bundle_untrained(os.path.join(REPO, "bundles", t), os.path.join(work, t)) for t in tasks}
    load = os.getloadavg()[0]
    print(f"cadpipe portal benchmark: {os.cpu_count()} CPUs, load average {load:.1f} at start, device {args.device}, "
          f"N={args.n}; CXR {args.cxr_size}x{args.cxr_size} PNG, histology {cols}x{rows} PNG; untrained weights")

    base = {}
    for t in tasks:
        base[t] = baseline(bundles[t], inputs[t], max(2, args.n // 2), args.device, args.no_heatmaps)
        print(f"  baseline in-process score_job {t}: p50 {statistics.median(base[t]):.2f} s")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = os.path.join(work, "server.log")
    cmd = [sys.executable, "-m", "cadpipe", "serve", "--port", str(port), "--device", args.device,
           "--bundles", ",".join(bundles[t] for t in tasks), "--data-dir", os.path.join(work, "data"),
           "--log-level", "warning", "--queue-size", str(max(16, 2 * args.n))] + (["--no-heatmaps"] if args.no_heatmaps else [])
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        t_start = time.perf_counter()
        while True:
            if proc.poll() is not None:
                print(open(log_path).read()[-3000:])
                raise RuntimeError("server exited")
            try:
                if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        print(f"  server ready in {time.perf_counter() - t_start:.1f} s (bundles loaded once)")
        client = Client(url)
        print(f"{'task':34s} {'mode':11s} {'n':>3s} {'p50 s':>7s} {'p95 s':>7s} {'max s':>7s} {'srv p50':>8s} "
              f"{'wall s':>7s} {'p50/base':>8s}")
        breakdown = {}
        for t in tasks:
            client.one(t, inputs[t], [], [])  # warm-up
            for concurrent in (False, True):
                client.steps = []
                lat, srv, wall = run_mode(client, t, inputs[t], args.n, concurrent)
                if not concurrent:
                    breakdown[t] = _breakdown(client.steps)
                ratio = statistics.median(lat) / statistics.median(base[t])
                print(f"{t:34s} {'concurrent' if concurrent else 'sequential':11s} {args.n:3d} "
                      f"{pct(lat, 50):7.2f} {pct(lat, 95):7.2f} {max(lat):7.2f} {pct(srv, 50):8.2f} {wall:7.1f} "
                      f"{ratio:8.2f}")
        for t, parts in breakdown.items():
            print(f"  {t} sequential, server-side median seconds per step: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
        print(f"load average at end {os.getloadavg()[0]:.1f}. 'srv p50': upload received → report ready on the "
              "server (queue wait included); 'p50/base': portal latency over in-process scoring of the same image.")
    finally:
        stop_process_group(proc)
        if args.keep:
            print(f"work folder: {work}")
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
