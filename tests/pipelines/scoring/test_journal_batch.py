"""Batched bookkeeping of scoring: one journal write per batch (Journal.append_many) and the loader's chunks."""

from __future__ import annotations

import os

from cadpipe.pipelines.scoring.results import Journal
from cadpipe.pipelines.scoring.score import _Chunks


def test_append_many_is_whole_lines_after_a_kill_at_any_byte(tmp_path):
    """A kill during the one write of a batch leaves whole lines (complete units) and a torn last line that
    reopening cuts off: for every cut point, the journal reads back as a prefix of the batch's rows."""
    out = str(tmp_path / "o")
    j = Journal(out)
    j.append({"unit_id": "u0", "status": "ok"})
    rows = [{"unit_id": f"u{i}", "status": "ok", "prob_x": i / 7} for i in range(1, 6)]
    j.append_many(rows)
    j.close()
    data = open(j.path, "rb").read()
    first_line = data.index(b"\n") + 1
    for cut in range(first_line, len(data) + 1):
        with open(j.path, "wb") as f:
            f.write(data[:cut])
        got = Journal(out).rows()  # reopening repairs the torn line
        ids = list(got)
        assert ids == ["u0"] + [r["unit_id"] for r in rows][: len(ids) - 1]
        for r in rows[: len(ids) - 1]:
            assert got[r["unit_id"]] == r
        assert open(j.path, "rb").read().endswith(b"\n")
    j2 = Journal(out)
    j2.append_many([])  # nothing to write
    j2.close()


def test_append_many_same_lines_as_append(tmp_path):
    rows = [{"unit_id": f"u{i}", "b": [1, 2], "a": "x"} for i in range(3)]
    a, b = Journal(str(tmp_path / "a")), Journal(str(tmp_path / "b"))
    for r in rows:
        a.append(r)
    b.append_many(rows)
    a.close()
    b.close()
    assert open(a.path, "rb").read() == open(b.path, "rb").read()


def test_chunks_first_small_then_full():
    assert list(_Chunks(20, 8, 3)) == [[0, 1, 2], list(range(3, 11)), list(range(11, 19)), [19]]
    assert len(_Chunks(20, 8, 3)) == 4
    assert list(_Chunks(2, 8, 3)) == [[0, 1, 2][:2]] and len(_Chunks(2, 8, 3)) == 1
    assert list(_Chunks(0, 8, 3)) == [] and len(_Chunks(0, 8, 3)) == 0
    assert sum(len(c) for c in _Chunks(1000, 32, 8)) == 1000 and len(_Chunks(1000, 32, 8)) == 1 + 31
    assert list(_Chunks(5, 1, 8)) == [[i] for i in range(5)]
