"""`make demo`'s closing lines: the virtual environment is activated first, and every command writes under the
demo's own (ignored) output folder, not into the repository root."""

from __future__ import annotations

import os

from cadpipe.pipelines.demo import next_steps


def test_next_steps_activate_first_and_write_under_the_demo_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = [line.strip() for line in next_steps(os.path.join(str(tmp_path), "demo_out"), "cxr_pneumonia_classification")
             if line.strip()]
    commands = [line for line in lines if not line.endswith(":")]
    assert commands[0] == ". .venv/bin/activate"
    score, serve = commands[1].split(), commands[2].split()
    assert score[:2] == ["cadpipe", "score"] and serve[:2] == ["cadpipe", "serve"]
    assert score[score.index("--output") + 1] == os.path.join("demo_out", "scored", "cxr_pneumonia_classification")
    assert serve[serve.index("--data-dir") + 1] == os.path.join("demo_out", "portal_data")
    assert score[score.index("--bundle") + 1] == os.path.join("demo_out", "bundles", "cxr_pneumonia_classification")
