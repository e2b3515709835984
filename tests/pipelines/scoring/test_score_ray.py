"""--ray on a local Ray gives the same results.csv as the local path."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from cadpipe.pipelines.scoring.score import ScoreConfig, score
from tests.pipelines.scoring.score_helpers import make_bundle, mixed_2d_folder

pytest.importorskip("ray")

from cadpipe.pipelines.scoring.ray_backend import score_with_ray  # noqa: E402


@pytest.mark.slow
def test_ray_matches_local(tmp_path):
    bundle = make_bundle("tiny_classification_bundle", str(tmp_path))
    src = str(tmp_path / "in")
    mixed_2d_folder(src)
    local = score(ScoreConfig(bundle=bundle, input=src, output=str(tmp_path / "local"), workers=0, quiet=True))
    on_ray = score(ScoreConfig(bundle=bundle, input=src, output=str(tmp_path / "ray"), workers=0, quiet=True,
                               ray="", ray_actors=2, batch_size=2), backend=score_with_ray)
    assert on_ray["exit_code"] == local["exit_code"] and on_ray["ok"] == local["ok"] == 8
    a = pd.read_csv(str(tmp_path / "local" / "results.csv")).drop(columns=["elapsed_s"])
    b = pd.read_csv(str(tmp_path / "ray" / "results.csv")).drop(columns=["elapsed_s"])
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5)
    listing = lambda root: sorted(os.path.relpath(os.path.join(d, f), root)  # noqa: E731
                                  for d, _, fs in os.walk(root) for f in fs if ".cadpipe" not in d)
    assert listing(str(tmp_path / "local")) == listing(str(tmp_path / "ray"))


def _pngs(root):
    return sorted(f for _, _, fs in os.walk(root) for f in fs if f.endswith(".png"))


def _score_batch(actor, units):
    """Rows from the actor class called in-process with a batch of undecoded units (the per-item path: the tiny
    bundle's chain has no batched plan) as Ray Data would call it; output files come back as bytes."""
    import json
    import pickle

    import numpy as np

    got = actor({"unit": np.asarray([json.dumps(u.to_dict()) for u in units], dtype=object)})
    results = [pickle.loads(r) for r in got["result"]]
    return [r["row"] for r in results], {k: v for r in results for k, v in r["files"].items()}


def test_actor_gets_the_run_options(tmp_path):
    """The actor class (run in-process here) applies --no-heatmaps / --no-reports like the local path."""
    from cadpipe.pipelines.scoring.discovery import discover
    from cadpipe.pipelines.scoring.ray_backend import run_options
    from cadpipe.pipelines.scoring.ray_stages import UnitScorer as _Scorer

    bundle = make_bundle("tiny_classification_bundle", str(tmp_path))
    src = str(tmp_path / "in")
    mixed_2d_folder(src)
    cfg = ScoreConfig(bundle=bundle, input=src, output=str(tmp_path / "o"), heatmaps=False, reports=False)
    actor = _Scorer(bundle, "cpu", {}, run_options(cfg))  # no ledger, no Ray: called in-process
    assert actor.runner.cam_layers is None
    rows, files = _score_batch(actor, discover(src))
    assert sum(r["status"] == "ok" for r in rows) == 8 and not [f for f in files if f.endswith(".png")]
    assert not os.path.exists(str(tmp_path / "o"))  # outputs travel back as bytes
    with_heat = _Scorer(bundle, "cpu", {}, run_options(ScoreConfig(bundle=bundle, input=src, output="x")))
    assert with_heat.runner.cam_layers


def test_actor_gets_precision_and_pixel_limits(tmp_path, monkeypatch):
    """--precision and --max-pixels reach an actor through its options, not through the driver's environment
    (which an actor on another machine does not have): a limit below the images' size makes error rows there."""
    from cadpipe.pipelines.scoring.discovery import discover
    from cadpipe.pipelines.scoring.ray_backend import run_options
    from cadpipe.pipelines.scoring.ray_stages import UnitScorer as _Scorer
    from cadpipe.transforms.readers.limits import ENV_MAX_PIXELS, PixelLimits

    bundle = make_bundle("tiny_classification_bundle", str(tmp_path))
    src = str(tmp_path / "in")
    expected = mixed_2d_folder(src)
    monkeypatch.setenv(ENV_MAX_PIXELS, "100")
    options = run_options(ScoreConfig(bundle=bundle, input=src, output="x", precision="bf16", reports=False,
                                      heatmaps=False))
    assert options["max_pixels"] == 100 and options["precision"] == "bf16"
    monkeypatch.delenv(ENV_MAX_PIXELS)  # the actor's process: no limit in its environment
    actor = _Scorer(bundle, "cpu", {}, options)
    assert actor.runner.precision == "bf16" and PixelLimits.current().max_pixels == 100
    rows, _ = _score_batch(actor, discover(src))
    readable = [r for r in rows if r["input_paths"].split(";")[0] in expected["ok"]]
    assert len(readable) == 8 and all(r["status"] == "error" and "limit" in r["error"] for r in readable), rows


@pytest.mark.slow
def test_ray_no_heatmaps_matches_local(tmp_path):
    bundle = make_bundle("tiny_classification_bundle", str(tmp_path))
    src = str(tmp_path / "in")
    mixed_2d_folder(src)
    kw = dict(bundle=bundle, input=src, workers=0, quiet=True, heatmaps=False, reports=False)
    local = score(ScoreConfig(output=str(tmp_path / "local"), **kw))
    on_ray = score(ScoreConfig(output=str(tmp_path / "ray"), ray="", ray_actors=2, batch_size=2, **kw), backend=score_with_ray)
    assert on_ray["ok"] == local["ok"] == 8
    assert _pngs(str(tmp_path / "ray")) == _pngs(str(tmp_path / "local")) == []  # no heatmaps, no plain images
    a = pd.read_csv(str(tmp_path / "local" / "results.csv")).drop(columns=["elapsed_s"])
    b = pd.read_csv(str(tmp_path / "ray" / "results.csv")).drop(columns=["elapsed_s"])
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5)


def test_shared_fs_needs_ray(tmp_path, capsys):
    from cadpipe.cli import main

    bundle = make_bundle("tiny_classification_bundle", str(tmp_path))
    src = str(tmp_path / "in")
    mixed_2d_folder(src)
    code = main(["score", "--bundle", bundle, "--input", src, "--output", str(tmp_path / "o"), "--ray-shared-fs"])
    assert code == 2 and "--ray-shared-fs needs --ray" in capsys.readouterr().err
    assert not os.path.exists(str(tmp_path / "o"))
