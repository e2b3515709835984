"""Peak memory of retrieving one large instance with cadpipe's DICOMweb client, against reading the same WADO-RS
answer into memory (what a client that decodes whole multipart answers does), measured in the same run.

A local test server (``tests/pipelines/pacs/dicomweb_server.py``, loopback only) serves one series whose single
instance is a small DICOM file followed by ``--mb`` MiB of zeros. In a fresh process each:

- ``streamed``: :func:`cadpipe.pipelines.pacs.dicomweb.retrieve_study` into a temporary cache (the instance goes
  to disk part by part);
- ``in memory``: ``requests.get(url).content`` of the same series URL, then split at the delimiters (a whole
  answer held, then a copy of its part).

Each figure is the process's peak resident memory (``ru_maxrss``) minus its resident memory after the imports
(those the retrieval does lazily included: discovery's readers bring torch and MONAI, ~500 MB).

    python benchmarks/dicomweb_stream.py [--mb 300]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import json, os, resource, sys, tempfile
mode, url, study, series = sys.argv[1:5]
import requests
from cadpipe.pipelines.pacs import dicomweb
import cadpipe.pipelines.scoring.discovery, cadpipe.transforms.readers.dicom_probe  # imported by the retrieval

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

base = rss_mb()
if mode == "streamed":
    client = dicomweb.connect(url, None, dicomweb.DicomwebLimits(max_instance_mb=1 << 20, max_study_mb=1 << 20))
    with tempfile.TemporaryDirectory() as cache:
        got = dicomweb.retrieve_study(client, study, cache)
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(cache) for f in fs)
else:
    body = requests.get(f"{url}/studies/{study}/series/{series}", timeout=600).content
    part = body.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]
    size = len(part)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"mode": mode, "bytes": size, "peak_growth_mb": round(peak - base, 1)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=300, help="size of the instance in MiB (default 300)")
    args = ap.parse_args()
    sys.path.insert(0, REPO)
    from tests.pipelines.pacs.dicomweb_server import FakePacs
    from tests.pipelines.scoring.score_helpers import write_dicom_2d

    env = dict(os.environ, PYTHONPATH=REPO)
    with tempfile.TemporaryDirectory() as tmp, FakePacs() as pacs:
        path = write_dicom_2d(os.path.join(tmp, "synthetic.dcm"), "1.2.826.0.1.99", "1.2.826.0.1.99.1")
        study = pacs.add(path, "huge")
        pacs.huge_bytes = args.mb << 20
        results = {}
        for mode in ("in memory", "streamed"):
            out = subprocess.run([sys.executable, "-c", _CHILD, mode, pacs.url, study, "1.2.826.0.1.99.1"],
                                 env=env, capture_output=True, text=True, timeout=1200, check=True).stdout
            results[mode] = json.loads(out.strip().splitlines()[-1])
    for r in results.values():
        print(f"{r['mode']:>9}: {r['bytes'] / 2**20:8.1f} MiB retrieved, peak memory +{r['peak_growth_mb']:.1f} MB")
    streamed = results["streamed"]["peak_growth_mb"]
    ratio = results["in memory"]["peak_growth_mb"] / max(streamed, 1.0)
    if streamed < 1.0:
        print(f"in-memory / streamed peak growth: >= {ratio:.0f}x (the streamed growth is under 1 MB, the "
              f"resolution of this measurement)")
    else:
        print(f"in-memory / streamed peak growth: {ratio:.1f}x")


if __name__ == "__main__":
    main()
