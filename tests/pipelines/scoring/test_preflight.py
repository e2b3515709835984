"""``cadpipe score`` checks what it can before discovery and before it creates the output folder; a folder with
nothing to score is a warning and exit status 4; a missing optional extra is one line and exit status 2; an
optional output that cannot be made (DICOM SEG) is a warning column, not an error row."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from cadpipe.cli import main
from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.scoring.score import EXIT_NOTHING_FOUND, EXIT_OK, EXIT_USAGE, ScoreConfig, score
from tests.pipelines.scoring.score_helpers import FIXTURES, make_bundle, write_png


@pytest.fixture(scope="module")
def cls_bundle(tmp_path_factory):
    return make_bundle("tiny_classification_bundle", str(tmp_path_factory.mktemp("b")))


@pytest.fixture(scope="module")
def seg_bundle(tmp_path_factory):
    return make_bundle("tiny_segmentation_bundle", str(tmp_path_factory.mktemp("b")))


@pytest.fixture
def inputs(tmp_path):
    write_png(str(tmp_path / "in" / "a.png"))
    return str(tmp_path / "in")


def _score(bundle, inp, out, *extra):
    return main(["score", "--bundle", bundle, "--input", inp, "--output", out, "--quiet", "--workers", "0", *extra])


@pytest.mark.parametrize("case,message", [
    ("missing input", "input does not exist"),
    ("missing bundle", "bundle folder does not exist"),
    ("no weights", "no trained weights"),
    ("bad device", "is not a device name"),
    ("batch size", "out of range: --batch-size 0"),
    ("ray actors", "out of range: --ray-actors 0"),
])
def test_usage_errors_name_the_problem_and_create_nothing(case, message, cls_bundle, inputs, tmp_path, capsys):
    bundle, inp, extra = cls_bundle, inputs, []
    if case == "missing input":
        inp = str(tmp_path / "no_such_folder")
    elif case == "missing bundle":
        bundle = str(tmp_path / "no_such_bundle")
    elif case == "no weights":
        bundle = os.path.join(FIXTURES, "tiny_classification_bundle")  # as shipped: no models/model.pt
    elif case == "bad device":
        extra = ["--device", "gpu7"]
    elif case == "batch size":
        extra = ["--batch-size", "0"]
    elif case == "ray actors":
        extra = ["--ray-actors", "0"]
    out = tmp_path / "out"
    assert _score(bundle, inp, str(out), *extra) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("cadpipe score: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_missing_weights_message_says_where_trained_bundles_come_from(tmp_path):
    with pytest.raises(CadpipeInputError) as e:
        score(ScoreConfig(bundle=os.path.join(FIXTURES, "tiny_classification_bundle"), input=str(tmp_path),
                          output=str(tmp_path / "out")))
    assert e.value.path.endswith(os.path.join("models", "model.pt"))
    assert "demo_out/bundles/tiny_classification_bundle" in e.value.reason and "make demo" in e.value.reason


def test_cuda_device_without_cuda_is_a_usage_error(cls_bundle, inputs, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _score(cls_bundle, inputs, str(tmp_path / "out"), "--device", "cuda") == EXIT_USAGE
    assert "no CUDA device is available here" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_ray_without_ray_installed_is_one_line_naming_the_extra(cls_bundle, inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    assert _score(cls_bundle, inputs, str(tmp_path / "out"), "--ray") == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.strip() == ("cadpipe score: cadpipe score --ray needs the 'ray' extra (ray not installed): "
                           "pip install 'cadpipe[ray]'")
    assert not (tmp_path / "out").exists()


def test_a_command_whose_module_needs_a_missing_extra_names_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "cadpipe.pipelines.portal.serve", raising=False)
    monkeypatch.setitem(__import__("cadpipe.cli").cli.COMMANDS, "needs-serve",
                        ("tests.pipelines.scoring.fixtures_import_fastapi", "a command importing fastapi"))
    assert main(["needs-serve"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "pip install 'cadpipe[serve]'" in err and len(err.strip().splitlines()) == 1


def test_folder_with_nothing_to_score_warns_and_exits_4(cls_bundle, tmp_path, capsys):
    inp = tmp_path / "in"
    (inp / "notes").mkdir(parents=True)
    (inp / "notes" / "readme.txt").write_text("no images here")
    (inp / "case1_mask.png").write_bytes(b"")  # ground truth is not scored
    assert _score(cls_bundle, str(inp), str(tmp_path / "out")) == EXIT_NOTHING_FOUND
    err = capsys.readouterr().err
    assert f"no scoreable unit in {inp}" in err and "warning" in err


def test_help_lists_exit_codes_and_describes_every_option():
    r = subprocess.run([sys.executable, "-m", "cadpipe", "score", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for line in ("0  every unit scored ok", "2  usage error", "3  some units failed", "4  the input holds no"):
        assert line in r.stdout
    import argparse
    import importlib

    from cadpipe.cli import COMMANDS

    for name, (module, _) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ImportError:  # an optional extra not installed here: its own test covers the message
            continue
        parser = argparse.ArgumentParser()
        mod.add_arguments(parser)
        assert not [a.option_strings for a in parser._actions if not a.help], name


def test_dicom_series_without_frame_of_reference_keeps_mask_and_numbers(seg_bundle, tmp_path):
    """highdicom cannot make a DICOM SEG without a Frame of Reference UID: the row stays ok, with its mask and
    numbers, and says why the SEG is missing."""
    import pydicom

    from cadpipe.data.synthetic.dicom import write_ct_series

    no_for = write_ct_series(tmp_path / "in" / "nofor", n_slices=6, rows=12, cols=12, frame_of_reference=False)
    with_for = write_ct_series(tmp_path / "in" / "withfor", n_slices=6, rows=12, cols=12, seed=1)
    assert "FrameOfReferenceUID" not in pydicom.dcmread(no_for["paths"][0], stop_before_pixels=True)
    assert pydicom.dcmread(with_for["paths"][0]).FrameOfReferenceUID == with_for["frame_of_reference_uid"]
    out = tmp_path / "out"
    summary = score(ScoreConfig(bundle=seg_bundle, input=str(tmp_path / "in"), output=str(out), workers=0,
                                quiet=True))
    assert summary["exit_code"] == EXIT_OK and summary["units"] == 2
    df = pd.read_csv(out / "results.csv", keep_default_na=False).set_index("series_id")
    bad, good = df.loc[no_for["series_uid"]], df.loc[with_for["series_uid"]]
    assert bad.status == "ok" and bad.error == "" and bad.lesion_voxels >= 0
    assert "no DICOM SEG written" in bad.warnings and "Frame Of Reference" in bad.warnings
    folder = out / no_for["study_uid"] / no_for["series_uid"]
    assert (folder / f"{no_for['series_uid']}_mask.nii.gz").is_file()
    assert not (folder / f"{no_for['series_uid']}_seg.dcm").exists()
    # ... but its SR (the finding and its volume, without a segment reference) and overlay SC are (issue 25)
    for kind in ("sr", "sc"):
        assert (folder / f"{no_for['series_uid']}_{kind}.dcm").is_file()
    assert "SR" not in bad.warnings and "Secondary Capture" not in bad.warnings
    # the package's own synthetic series has a Frame of Reference, so its SEG is written
    assert good.warnings == ""
    assert (out / with_for["study_uid"] / with_for["series_uid"] / f"{with_for['series_uid']}_seg.dcm").is_file()
    # a re-run keeps the ok rows (no SEG is not a missing output)
    again = score(ScoreConfig(bundle=seg_bundle, input=str(tmp_path / "in"), output=str(out), workers=0, quiet=True))
    assert again["skipped_already_done"] == 2
