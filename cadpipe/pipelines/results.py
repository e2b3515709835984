"""Crash-safe result journal and the results table built from it.

The journal ``<out>/.cadpipe/journal.jsonl`` is append-only: one JSON line per finished unit, written with
``flush`` + ``fsync`` *after* the unit's output files were renamed into place. A run killed at any moment (SIGKILL
included) therefore leaves every journalled unit complete; a unit in flight simply has no line and is redone.
A torn last line (killed mid-write) is cut off when the journal is reopened. ``results.csv`` (and
``results.parquet``) are rebuilt from the journal, last line per unit wins, one row per unit.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Iterable

__all__ = ["Journal", "atomic_write_bytes", "atomic_write_text", "write_results_table", "BASE_COLUMNS"]

BASE_COLUMNS = [
    "study_id", "series_id", "unit_id", "input_paths", "bundle", "bundle_version", "model_sha256", "status",
    "error", "elapsed_s",
]


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder + fsync + ``os.replace``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_writer_path(path: str) -> str:
    """A temp path beside ``path`` for libraries that write files themselves; ``os.replace`` it afterwards.

    The temp name keeps the final suffix(es) so writers that pick a format by suffix still work.
    """
    folder, base = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f".tmp_{os.getpid()}_{base}")


class Journal:
    """Append-only JSONL journal of finished units (see module docstring)."""

    def __init__(self, out_dir: str, force: bool = False):
        self.folder = os.path.join(out_dir, ".cadpipe")
        os.makedirs(self.folder, exist_ok=True)
        self.path = os.path.join(self.folder, "journal.jsonl")
        if force and os.path.exists(self.path):
            os.replace(self.path, self.path + ".previous")
        self._repair()
        self._f = open(self.path, "a", encoding="utf-8")

    def _repair(self) -> None:
        """Cut a torn final line left by a kill during a write."""
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
                f.flush()
                os.fsync(f.fileno())

    def rows(self) -> dict[str, dict]:
        """unit_id -> row, last line per unit wins; unparsable lines are ignored."""
        out: dict[str, dict] = {}
        if not os.path.exists(self.path):
            return out
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and "unit_id" in row:
                    out[row["unit_id"]] = row
        return out

    def append(self, row: dict) -> None:
        self._f.write(json.dumps(row, sort_keys=True, default=str) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def write_results_table(rows: Iterable[dict], out_dir: str, order: list[str] | None = None) -> str:
    """Write ``results.csv`` (and ``results.parquet`` when pyarrow is installed) atomically; returns the CSV path.

    Rows are sorted by (study_id, series_id, unit_id) — or by ``order`` (unit ids) when given — so an
    interrupted-and-resumed run gives the same table as an uninterrupted one.
    """
    import pandas as pd

    rows = list(rows)
    if order is not None:
        rank = {u: i for i, u in enumerate(order)}
        rows.sort(key=lambda r: (rank.get(r["unit_id"], len(rank)), r["unit_id"]))
    else:
        rows.sort(key=lambda r: (str(r.get("study_id")), str(r.get("series_id")), str(r.get("unit_id"))))
    extra = sorted({k for r in rows for k in r} - set(BASE_COLUMNS))
    prob = [c for c in extra if c.startswith("prob_")]
    extra = [c for c in extra if c not in prob]
    df = pd.DataFrame(rows, columns=BASE_COLUMNS + prob + extra)
    csv_path = os.path.join(out_dir, "results.csv")
    atomic_write_text(csv_path, df.to_csv(index=False))
    try:
        import pyarrow  # noqa: F401

        tmp = atomic_writer_path(os.path.join(out_dir, "results.parquet"))
        df.astype({c: "string" for c in df.columns if df[c].dtype == object}).to_parquet(tmp, index=False)
        os.replace(tmp, os.path.join(out_dir, "results.parquet"))
    except ImportError:
        pass
    return csv_path
