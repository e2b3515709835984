"""cadpipe score with batched preprocessing: same rows, errors, files and resume behaviour as per item."""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import pandas as pd
import pytest

from cadpipe.cli import main
from cadpipe.pipelines.scoring.score import EXIT_SOME_FAILED, EXIT_USAGE, ScoreConfig, score
from cadpipe.pipelines.scoring.writers import WriterPool
from tests.pipelines.scoring.score_helpers import make_bundle, mixed_2d_folder

PREPROCESSING = {"_target_": "Compose", "transforms": [
    {"_target_": "cadpipe.transforms.LoadStudyImaged", "keys": "image", "mode": "gray"},
    {"_target_": "cadpipe.transforms.Windowd", "keys": "image"},
    {"_target_": "Resized", "keys": "image", "spatial_size": [32, 32], "mode": "area"},
    {"_target_": "NormalizeIntensityd", "keys": "image"},
    {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"}]}


@pytest.fixture(scope="module")
def cxr_bundle(tmp_path_factory):
    """The tiny classification fixture with the CXR bundles' chain (window, resize, normalise): batchable."""
    root = make_bundle("tiny_classification_bundle", str(tmp_path_factory.mktemp("b")))
    path = os.path.join(root, "configs", "inference.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["preprocessing"] = PREPROCESSING
    with open(path, "w") as f:
        json.dump(cfg, f)
    return root


def _rows(out):
    df = pd.read_csv(os.path.join(out, "results.csv")).sort_values("unit_id").reset_index(drop=True)
    return df.drop(columns=["elapsed_s"])


@pytest.mark.parametrize("workers", [0, 1])
def test_batched_rows_equal_per_item(cxr_bundle, tmp_path, workers):
    src = str(tmp_path / "in")
    expect = mixed_2d_folder(src)
    outs = {}
    for mode in ("per-item", "batched"):
        out = str(tmp_path / mode)
        s = score(ScoreConfig(bundle=cxr_bundle, input=src, output=out, device="cpu", batch_size=3,
                              workers=workers, quiet=True, preprocess=mode, writer_threads=2))
        assert s["preprocess"] == mode and s["exit_code"] == EXIT_SOME_FAILED
        assert s["first_result_s"] is not None and s["first_result_s"] <= s["seconds"]
        outs[mode] = out
    a, b = _rows(outs["per-item"]), _rows(outs["batched"])
    assert list(a.unit_id) == list(b.unit_id) and list(a.status) == list(b.status)
    assert (b.status == "error").sum() == len(expect["bad"])
    for p in expect["bad"]:  # error rows name the file
        assert b[b.input_paths == p].error.iloc[0].startswith(p)
    ok = a.status == "ok"
    assert (a[ok].prob_abnormal - b[ok].prob_abnormal).abs().max() <= 1e-3
    assert list(a[ok].predicted) == list(b[ok].predicted)
    for rel in pd.read_json(os.path.join(outs["batched"], ".cadpipe", "journal.jsonl"), lines=True)["_outputs"]:
        for f in (rel if isinstance(rel, dict) else {}).get("overlays", []):
            assert os.path.getsize(os.path.join(outs["batched"], f)) > 0
    # resume: nothing to redo but the error rows
    s = score(ScoreConfig(bundle=cxr_bundle, input=src, output=outs["batched"], device="cpu", quiet=True,
                          preprocess="batched"))
    assert s["skipped_already_done"] == int(ok.sum()) and s["scored_this_run"] == len(expect["bad"])


def test_fallback_to_per_item_is_logged(tmp_path, caplog):
    root = make_bundle("tiny_classification_bundle", str(tmp_path / "b"))  # ScaleIntensityd: no batched plan
    src = str(tmp_path / "in")
    mixed_2d_folder(src)
    with caplog.at_level(logging.DEBUG, logger="cadpipe.score"):
        s = score(ScoreConfig(bundle=root, input=src, output=str(tmp_path / "o"), device="cpu", quiet=True,
                              preprocess="batched", reports=False))
    assert s["preprocess"] == "per-item"
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    # the user who asked for batched is told in plain words; the transform's name is a debug detail
    assert any("cannot run batched" in m and "one at a time" in m for m in warned), warned
    assert not any("ScaleIntensityd" in m for m in warned)
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("ScaleIntensityd has no batched equivalent" in m for m in debug)


def test_auto_fallback_says_nothing_at_info(tmp_path, caplog):
    root = make_bundle("tiny_classification_bundle", str(tmp_path / "b"))
    src = str(tmp_path / "in")
    mixed_2d_folder(src)
    with caplog.at_level(logging.INFO, logger="cadpipe.score"):
        score(ScoreConfig(bundle=root, input=src, output=str(tmp_path / "o"), device="cpu", quiet=True,
                          preprocess="auto", reports=False))
    assert "batched equivalent" not in caplog.text and "LoadStudyImaged" not in caplog.text


def test_cli_options(cxr_bundle, tmp_path):
    src = str(tmp_path / "in")
    mixed_2d_folder(src)
    common = ["score", "--bundle", cxr_bundle, "--input", src, "--quiet", "--device", "cpu", "--no-reports"]
    assert main(common + ["--output", str(tmp_path / "a"), "--precision", "fp16"]) == EXIT_USAGE
    assert main(common + ["--output", str(tmp_path / "b"), "--writer-threads", "-1"]) == EXIT_USAGE
    code = main(common + ["--output", str(tmp_path / "c"), "--preprocess", "batched", "--precision", "bf16",
                          "--channels-last", "--writer-threads", "0"])
    assert code == EXIT_SOME_FAILED  # the fixture folder's corrupt files
    summary = json.load(open(tmp_path / "c" / "run_summary.json"))
    assert summary["preprocess"] == "batched" and summary["ok"] > 0


def test_writer_pool_bounds_pending_and_reraises():
    gate = threading.Event()
    running = []
    pool = WriterPool(2, max_pending=3)
    for _ in range(3):
        pool.submit(lambda: (running.append(1), gate.wait(5)))
    t = threading.Thread(target=pool.submit, args=(lambda: running.append(2),))
    t.start()
    time.sleep(0.2)
    assert t.is_alive()  # the fourth task waits for a slot
    gate.set()
    t.join(5)
    pool.close()
    assert sorted(running) == [1, 1, 1, 2]
    pool = WriterPool(1)
    pool.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        pool.close()
    inline = WriterPool(0)
    got = []
    inline.submit(got.append, 5)
    assert got == [5]


def test_workers_start_before_the_model(cxr_bundle, tmp_path, monkeypatch):
    """Batched + workers: the decoding workers are started before the runner is built (decoding while the model
    loads) and stopped when the build fails; rows as with workers started after the model."""
    import multiprocessing

    from cadpipe.pipelines.scoring import score as score_mod
    from cadpipe.pipelines.scoring.discovery import discover

    src = str(tmp_path / "in")
    mixed_2d_folder(src)
    units = discover(src)
    cfg = ScoreConfig(bundle=cxr_bundle, input=src, output=str(tmp_path / "x"), device="cpu", workers=1,
                      batch_size=3, quiet=True)
    early = score_mod._start_loading(cfg, units, "classification")
    assert early is not None and early[0] is not None
    score_mod._stop_loading(early)
    for kw in ({"workers": 0}, {"preprocess": "per-item"}):
        c = ScoreConfig(**(cfg.__dict__ | kw))
        assert score_mod._start_loading(c, units, "classification") is None
    assert score_mod._start_loading(cfg, units, "segmentation") is None

    started = []
    real = score_mod._start_loading
    monkeypatch.setattr(score_mod, "_start_loading", lambda *a: started.append(real(*a)) or started[-1])
    s = score(ScoreConfig(bundle=cxr_bundle, input=src, output=str(tmp_path / "a"), device="cpu", batch_size=3,
                          workers=1, quiet=True, preprocess="batched", reports=False))
    assert started and started[0] is not None and s["preprocess"] == "batched"
    ref = score(ScoreConfig(bundle=cxr_bundle, input=src, output=str(tmp_path / "b"), device="cpu", batch_size=3,
                            workers=0, quiet=True, preprocess="batched", reports=False))
    pd.testing.assert_frame_equal(_rows(str(tmp_path / "a")), _rows(str(tmp_path / "b")))
    assert s["exit_code"] == ref["exit_code"]

    import cadpipe.pipelines.inference.bundle_runner as br

    def broken(*a, **k):
        raise RuntimeError("model load failed")

    monkeypatch.setattr(br, "BundleRunner", broken)
    with pytest.raises(RuntimeError, match="model load failed"):
        score(ScoreConfig(bundle=cxr_bundle, input=src, output=str(tmp_path / "c"), device="cpu", batch_size=3,
                          workers=2, quiet=True, preprocess="batched", reports=False))
    assert started[-1] is not None
    deadline = time.monotonic() + 30
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not multiprocessing.active_children()
