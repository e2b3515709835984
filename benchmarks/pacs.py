"""Scoring through a PACS against scoring the same studies from a folder, in the same run.

- DICOMweb: ``cadpipe score --dicomweb`` (QIDO-RS search + WADO-RS retrieval from a local Orthanc into the cache,
  then scoring) against ``cadpipe score --input`` on a folder holding the same files: studies/s end to end (each
  from a fresh output folder, same bundle, same options) and their ratio (goal: >= 0.8x for 512x400 CXRs);
- DIMSE: ``cadpipe listen`` receiving one study at a time (C-STORE from this process) and the time from the end of
  the C-STORE to the study's row in results.csv, p50/p95 over ``--dimse-studies``, with and without the
  ``--study-timeout`` wait (the listener scores a study only after that many seconds without a new instance).

Needs Debian's ``orthanc`` and ``orthanc-dicomweb`` (``scripts/pacs_deps.sh``). Synthetic DICOM CXRs (512x400,
one image per study), the pneumonia bundle as shipped with untrained weights (speed does not depend on training),
no heatmaps and no reports for both sides. Timings on a shared machine are noisy; compare the ratios of one run.

    python benchmarks/pacs.py --studies 64 --dimse-studies 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _score(args: list[str]) -> float:
    from cadpipe.cli import main

    t0 = time.perf_counter()
    code = main(["score", "--quiet", "--no-heatmaps", "--no-reports", *args])
    if code != 0:
        raise SystemExit(f"cadpipe score {' '.join(args)} exited with {code}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=64)
    ap.add_argument("--dimse-studies", type=int, default=8)
    ap.add_argument("--study-timeout", type=float, default=0.5)
    ap.add_argument("--bundle", default=os.path.join(REPO, "bundles", "cxr_pneumonia_classification"))
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    from cadpipe.data.synthetic.dicom import write_cxr_dicom
    from cadpipe.data.synthetic.weights import copy_bundle_untrained
    from cadpipe.pipelines.pacs.send import Peer, send_files
    from tests.integration.orthanc import free_port, orthanc_server

    work = tempfile.mkdtemp(prefix="cadpipe_bench_pacs_")
    try:
        bundle = copy_bundle_untrained(args.bundle, os.path.join(work, "bundle"))
        folder = os.path.join(work, "studies")
        os.makedirs(folder)
        files = [write_cxr_dicom(os.path.join(folder, f"synthetic_{i:04d}.dcm"), rows=512, cols=400, seed=i)["path"]
                 for i in range(args.studies)]
        common = ["--bundle", bundle, "--workers", str(args.workers)]
        with orthanc_server(os.path.join(work, "orthanc")) as pacs:
            for f in files:
                pacs.upload(f)
            t_folder = _score([*common, "--input", folder, "--output", os.path.join(work, "out_folder")])
            t_web = _score([*common, "--dicomweb", pacs.dicomweb, "--query", "ModalitiesInStudy=DX",
                            "--output", os.path.join(work, "out_web")])
            t_folder2 = _score([*common, "--input", folder, "--output", os.path.join(work, "out_folder2")])
        folder_rate = args.studies / ((t_folder + t_folder2) / 2)
        web_rate = args.studies / t_web
        print(f"folder:   {folder_rate:6.2f} studies/s (mean of the runs before and after: {t_folder:.1f} s, "
              f"{t_folder2:.1f} s for {args.studies})")
        print(f"DICOMweb: {web_rate:6.2f} studies/s ({t_web:.1f} s, retrieval included) = "
              f"{web_rate / folder_rate:.2f}x folder scoring")

        # DIMSE: receive-to-result latency per study
        port = free_port()
        out = os.path.join(work, "out_listen")
        log = open(os.path.join(work, "listen.log"), "ab")
        proc = subprocess.Popen([sys.executable, "-m", "cadpipe", "listen", "--bundle", bundle, "--output", out,
                                 "--port", str(port), "--study-timeout", str(args.study_timeout), "--no-reports",
                                 "--no-heatmaps", "--quiet"], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONPATH": REPO})
        try:
            peer = Peer("CADPIPE", "127.0.0.1", port)
            import logging

            logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # "connection refused" until it is up
            deadline = time.monotonic() + 120
            while True:  # the listener is up when a C-STORE goes through (the first study is a warm-up)
                try:
                    send_files([files[0]], peer, calling_aet="BENCH")
                    break
                except Exception:  # noqa: BLE001
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit("cadpipe listen did not start; see listen.log")
                    time.sleep(0.5)
            _wait_rows(out, 1)
            latencies = []
            for k, f in enumerate(files[1: 1 + args.dimse_studies], start=2):
                send_files([f], peer, calling_aet="BENCH")
                t0 = time.perf_counter()
                _wait_rows(out, k)
                latencies.append(time.perf_counter() - t0)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
            log.close()
        lat = np.asarray(latencies)
        p50, p95 = np.percentile(lat, 50), np.percentile(lat, 95)
        print(f"DIMSE receive-to-result over {len(lat)} studies: p50 {p50:.2f} s, p95 {p95:.2f} s "
              f"(including the --study-timeout wait of {args.study_timeout} s: without it p50 "
              f"{p50 - args.study_timeout:.2f} s, p95 {p95 - args.study_timeout:.2f} s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _wait_rows(out: str, n: int, timeout: float = 300.0) -> None:
    path = os.path.join(out, "results.csv")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                if sum(1 for _ in f) - 1 >= n:
                    return
        time.sleep(0.05)
    raise SystemExit(f"no result for study {n} within {timeout} s")


if __name__ == "__main__":
    main()
