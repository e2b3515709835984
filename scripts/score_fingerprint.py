"""Fingerprints of ``cadpipe score`` outputs, to check that a refactoring leaves them unchanged.

Scores a few synthetic studies with each bundle kind (classification, multi-label, segmentation 2D and 3D,
detection; DICOM input included, so the SR / SEG / Secondary Capture paths run), with seeded untrained weights
(``cadpipe.data.synthetic.weights``: plumbing, not accuracy), on the CPU, and writes one JSON file: per case, per
output file, the sha256 of its content with what legitimately changes from run to run taken out:

- ``results.csv`` / ``.parquet``, the journal: ``elapsed_s`` dropped; ``run_summary.json``: timings dropped;
- DICOM files: UIDs (VR UI), dates and times (DA/TM/DT) blanked, then every element compared (pixel data
  included);
- ``.nii.gz``: the image data, affine and header (not the gzip stream, whose header has a time);
- ``report.pdf``: creation/modification date and document ID dropped; HTML reports: UIDs blanked.

Usage (from the repository root)::

    python scripts/score_fingerprint.py write before.json     # on the old code
    python scripts/score_fingerprint.py write after.json      # on the new code
    python scripts/score_fingerprint.py compare before.json after.json

``compare`` prints each case and file that differs and exits 1 when any does (0 when all are identical).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

_UID = re.compile(r"\b\d+(?:\.\d+){4,}\b")  # a DICOM UID written out in text


def _cxr_dicoms(d):
    from cadpipe.data.synthetic.dicom import write_cxr_dicom

    os.makedirs(os.path.join(d, "p1", "x"))
    write_cxr_dicom(os.path.join(d, "p1", "x", "synthetic_IM1"), rows=80, cols=64, seed=1)
    write_cxr_dicom(os.path.join(d, "p1", "synthetic_IM2"), rows=80, cols=64, seed=2, photometric="MONOCHROME1")


def _cxr_mixed(d):
    """Two DICOM radiographs and a PNG one."""
    import numpy as np
    from PIL import Image

    _cxr_dicoms(d)
    os.makedirs(os.path.join(d, "p2"))
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (48, 56), dtype=np.uint8)).save(os.path.join(d, "p2", "synthetic_cxr.png"))


def _brain_slices(d):
    from cadpipe.data.synthetic.brain import write_lgg_synthetic

    write_lgg_synthetic(d, n_patients=1, n_slices=2, size=32)


def _brain_volume(d):
    from cadpipe.data.synthetic.brain import write_msd_synthetic

    write_msd_synthetic(d, n_train=0, n_test=1, modalities=("T1", "FLAIR", "T1c"), write_dataset_json=False)


def _mammo(d):
    from cadpipe.data.synthetic.ddsm import write_ddsm_dataset

    write_ddsm_dataset(d, n_cases=1)
    _cxr_dicoms(os.path.join(d, "dicom"))


def _histo(d):
    from cadpipe.data.synthetic.histology import write_synthetic_bach

    write_synthetic_bach(d, n_per_class=1, size=(96, 96))


# (case name, bundle, study writer, bundle overrides, extra ScoreConfig fields)
CASES = [
    ("classification", "cxr_pneumonia_classification", _cxr_mixed, {"use_clahe": False, "image_size": 64}, {}),
    ("classification-per-item", "cxr_pneumonia_classification", _cxr_mixed, {"use_clahe": False, "image_size": 64},
     {"preprocess": "per-item"}),
    ("classification-no-heatmaps", "cxr_pneumonia_classification", _cxr_dicoms,
     {"use_clahe": False, "image_size": 64}, {"heatmaps": False}),
    ("multilabel", "cxr_chestxray14_classification", _cxr_mixed,
     {"use_clahe": False, "image_size": 64, "cam_threshold": 0.0}, {}),
    ("multiclass-histology", "breast_histology_classification", _histo, {"patch_size": 64}, {}),
    ("segmentation-2d", "cxr_lung_segmentation", _cxr_mixed, {"use_clahe": False, "image_size": 64}, {}),
    ("segmentation-2d-per-item", "cxr_lung_segmentation", _cxr_mixed, {"use_clahe": False, "image_size": 64},
     {"preprocess": "per-item"}),
    ("segmentation-slices", "brain_mri_tumor_segmentation", _brain_slices, {}, {}),
    ("segmentation-volume", "brain_mri_tumor_segmentation", _brain_volume, {}, {}),
    ("detection", "mammo_mass_detection", _mammo, {"image_long_side": 128}, {}),
]


def _dicom_digest(path: str) -> str:
    import pydicom

    ds = pydicom.dcmread(path)
    h = hashlib.sha256()
    for elem in [*ds.file_meta.iterall(), *ds.iterall()]:
        if elem.VR in ("UI", "DA", "TM", "DT"):
            value = ""
        elif elem.VR == "SQ":
            value = f"{len(elem.value)} items"
        elif isinstance(elem.value, bytes):
            value = hashlib.sha256(elem.value).hexdigest()
        else:
            value = repr(elem.value)
        h.update(f"{elem.tag} {elem.VR} {value}\n".encode())
    return h.hexdigest()


def _table_digest(path: str, root: str) -> str:
    import pandas as pd

    df = pd.read_csv(path) if path.endswith(".csv") else pd.read_parquet(path)
    df = df.drop(columns=[c for c in ("elapsed_s",) if c in df.columns])
    text = df.to_csv(index=False).replace(root, "<case>")
    return hashlib.sha256(text.encode()).hexdigest() + f" columns={list(df.columns)}"


def _journal_digest(path: str, root: str) -> str:
    lines = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            row.pop("elapsed_s", None)
            lines.append(json.dumps(row, sort_keys=True).replace(root, "<case>"))
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def _nifti_digest(path: str) -> str:
    import nibabel as nib
    import numpy as np

    img = nib.load(path)
    h = hashlib.sha256(np.ascontiguousarray(img.get_fdata()).tobytes())
    h.update(np.asarray(img.affine).tobytes())
    h.update(img.header.binaryblock)
    return h.hexdigest()


def _digest(path: str, root: str) -> str:
    """sha256 of the file at ``path`` with run-to-run changes taken out (``root``: the case's temporary folder)."""
    name = os.path.basename(path)
    if name.endswith(".dcm"):
        return _dicom_digest(path)
    if name in ("results.csv", "results.parquet"):
        return _table_digest(path, root)
    if name == "journal.jsonl":
        return _journal_digest(path, root)
    if name.endswith(".nii.gz"):
        return _nifti_digest(path)
    with open(path, "rb") as f:
        data = f.read()
    if name == "run_summary.json":
        doc = json.loads(data)
        keep = ("units", "ok", "error", "scored_this_run", "skipped_already_done", "errors_retried", "preprocess",
                "studies", "reports", "exit_code")
        return json.dumps({k: doc.get(k) for k in keep}, sort_keys=True)
    if name.endswith(".pdf"):
        data = re.sub(rb"/(CreationDate|ModDate) \([^)]*\)", b"", data)
        data = re.sub(rb"/ID\s*\[[^\]]*\]", b"", data)
        data = re.sub(rb"%% [^\n]*", b"", data)
    if name.endswith(".html"):
        data = _UID.sub("UID", data.decode("utf-8")).encode("utf-8")
    data = data.replace(root.encode(), b"<case>")
    return hashlib.sha256(data).hexdigest()


def run_case(name: str, bundle: str, writer, overrides: dict, extra: dict, work: str) -> dict:
    import logging

    from cadpipe.data.synthetic.weights import copy_bundle_untrained
    from cadpipe.pipelines.scoring.score import ScoreConfig, score

    logging.disable(logging.WARNING)
    root = os.path.join(work, name)
    studies, out = os.path.join(root, "studies"), os.path.join(root, "out")
    writer(studies)
    b = copy_bundle_untrained(os.path.join(REPO, "bundles", bundle), os.path.join(root, "bundle"), overrides)
    cfg = ScoreConfig(bundle=b, input=studies, output=out, device="cpu", workers=0, batch_size=2, quiet=True,
                      overrides=overrides, streams=1, writer_threads=0, **extra)
    summary = score(cfg)
    files = {}
    for folder, _, names in os.walk(out):
        for n in names:
            p = os.path.join(folder, n)
            files[os.path.relpath(p, out)] = _digest(p, root)
    return {"exit_code": summary["exit_code"], "ok": summary["ok"], "error": summary["error"], "files": files}


def write(path: str, only: list[str] | None) -> int:
    import torch

    torch.manual_seed(0)
    doc = {}
    with tempfile.TemporaryDirectory() as work:
        for name, bundle, writer, overrides, extra in CASES:
            if only and name not in only:
                continue
            doc[name] = run_case(name, bundle, writer, overrides, extra, work)
            print(f"{name}: {doc[name]['ok']} ok, {doc[name]['error']} errors, {len(doc[name]['files'])} files",
                  flush=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    return 0


def compare(a_path: str, b_path: str) -> int:
    with open(a_path, encoding="utf-8") as f:
        a = json.load(f)
    with open(b_path, encoding="utf-8") as f:
        b = json.load(f)
    differ = 0
    for case in sorted(set(a) | set(b)):
        if case not in a or case not in b:
            print(f"{case}: only in {'the first' if case in a else 'the second'}")
            differ += 1
            continue
        fa, fb = a[case]["files"], b[case]["files"]
        bad = [f for f in sorted(set(fa) | set(fb)) if fa.get(f) != fb.get(f)]
        for f in bad:
            print(f"{case}: {f}: {'missing' if f not in fa or f not in fb else 'differs'}")
        print(f"{case}: {len(fa)} files, {'identical' if not bad else f'{len(bad)} differ'}")
        differ += bool(bad)
    print(f"{len(set(a) | set(b)) - differ} of {len(set(a) | set(b))} cases identical")
    return 1 if differ else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="score the cases and write their fingerprints")
    w.add_argument("path")
    w.add_argument("--only", nargs="*", help="case names (default: all)")
    c = sub.add_parser("compare", help="compare two fingerprint files")
    c.add_argument("a")
    c.add_argument("b")
    args = p.parse_args(argv)
    return write(args.path, args.only) if args.cmd == "write" else compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
