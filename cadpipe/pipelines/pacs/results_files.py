"""The DICOM result files (SEG, SR, Secondary Capture) of a scored output folder, read from its journal."""

from __future__ import annotations

import json
import os

from cadpipe.pipelines.outputs.dicom_results import RESULT_KEYS

__all__ = ["dicom_result_files"]


def dicom_result_files(out_dir: str, study_ids: set[str] | None = None) -> list[str]:
    """Absolute paths of the DICOM result files of every ``ok`` unit in ``out_dir`` (last journal line per unit),
    only those of ``study_ids`` when given; in journal order, each once."""
    path = os.path.join(out_dir, ".cadpipe", "journal.jsonl")
    rows: dict[str, dict] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a torn last line (killed mid-write)
                    continue
                if isinstance(row, dict) and "unit_id" in row:
                    rows[row["unit_id"]] = row
    files: list[str] = []
    for row in rows.values():
        if row.get("status") != "ok" or (study_ids is not None and row.get("study_id") not in study_ids):
            continue
        outputs = row.get("_outputs") or {}
        files += [os.path.join(out_dir, outputs[k]) for k in RESULT_KEYS if isinstance(outputs.get(k), str)]
    return list(dict.fromkeys(f for f in files if os.path.isfile(f)))
