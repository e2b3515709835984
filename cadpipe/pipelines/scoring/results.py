"""Crash-safe result journal and the results table built from it.

The journal ``<out>/.cadpipe/journal.jsonl`` is append-only: one JSON line per finished unit, written and
flushed to the OS *after* the unit's output files were renamed into place (scoring writes the lines of a batch's
units in one write, :meth:`Journal.append_many`, once all of their files are in place). A run killed at any moment (SIGKILL
included: flushed data is in the kernel's page cache and survives the process) therefore leaves every journalled
unit complete; a unit in flight simply has no line and is redone. A torn last line (killed mid-write) is cut off
when the journal is reopened. ``results.csv`` (and ``results.parquet``) are rebuilt from the journal, last line per
unit wins, one row per unit.

Durability against a machine crash / power loss (not just a killed process) is bounded, not per unit: the journal
is ``fsync``-ed at most once per ``sync_interval`` seconds (default 1 s) and on close, and per-unit output files
are renamed into place without their own ``fsync`` (``atomic_write_bytes(..., durable=False)``), because one
``fsync`` per file and per journal line cost more than the rest of the per-unit work on the benchmark machine.
After a power loss the journal may therefore lack the last second of units (they are redone), and a journalled
unit's output file may be missing or empty: scoring checks the outputs of ``ok`` rows on resume and rescores
units whose files are gone (:func:`outputs_present`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Iterable

from cadpipe.pipelines.outputs.files import atomic_write_text, atomic_writer_path
from cadpipe.pipelines.outputs.spreadsheet import spreadsheet_safe

__all__ = ["Journal", "write_results_table", "outputs_present", "BASE_COLUMNS"]

BASE_COLUMNS = [
    "study_id", "series_id", "unit_id", "input_paths", "bundle", "bundle_version", "model_sha256", "status",
    "error", "elapsed_s",
]


def outputs_present(row: dict, out_dir: str) -> bool:
    """True when every output file a journal row lists (``_outputs``, paths relative to ``out_dir``) exists
    and is not empty (a unit journalled just before a power loss may have lost its files; see module doc)."""
    paths: list[str] = []
    for value in (row.get("_outputs") or {}).values():
        paths += [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)]
    for rel in paths:
        p = os.path.join(out_dir, rel)
        try:
            if os.path.getsize(p) == 0:
                return False
        except OSError:
            return False
    return True


class Journal:
    """Append-only JSONL journal of finished units (see module docstring)."""

    def __init__(self, out_dir: str, force: bool = False, sync_interval: float = 1.0):
        self.sync_interval = sync_interval
        self._last_sync = time.monotonic()
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
        """One line, flushed to the OS (survives a killed process); ``fsync`` at most every ``sync_interval`` s."""
        self._f.write(json.dumps(row, sort_keys=True, default=str) + "\n")
        self._f.flush()
        if time.monotonic() - self._last_sync >= self.sync_interval:
            self.sync()

    def append_many(self, rows: list[dict]) -> None:
        """The lines of ``rows`` in one write, flushed to the OS; same guarantees as :meth:`append` for each line:
        a kill during the write leaves whole lines (complete units) and at most one torn last line, which
        :meth:`_repair` cuts off when the journal is reopened."""
        if not rows:
            return
        self._f.write("".join([json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows]))
        self._f.flush()
        if time.monotonic() - self._last_sync >= self.sync_interval:
            self.sync()

    def sync(self) -> None:
        os.fsync(self._f.fileno())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            self.sync()
            self._f.close()


def write_results_table(rows: Iterable[dict], out_dir: str, order: list[str] | None = None) -> str:
    """Write ``results.csv`` (and ``results.parquet`` when pyarrow is installed) atomically; returns the CSV path.

    In the CSV, text cells a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, tab or
    carriage return, e.g. a file named ``=HYPERLINK(...).png``) get a leading ``'``
    (:func:`cadpipe.pipelines.outputs.spreadsheet.neutralise_formula`); the Parquet file keeps the raw values.

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
    atomic_write_text(csv_path, spreadsheet_safe(df).to_csv(index=False))  # formulas neutralised; Parquet: raw
    try:
        import pyarrow  # noqa: F401

        tmp = atomic_writer_path(os.path.join(out_dir, "results.parquet"))
        df.astype({c: "string" for c in df.columns if df[c].dtype == object}).to_parquet(tmp, index=False)
        os.replace(tmp, os.path.join(out_dir, "results.parquet"))
    except ImportError:
        pass
    return csv_path
