"""An output folder belongs to the bundle that first scored into it: a second bundle is refused (exit 2, nothing
written, the first bundle's results.csv untouched) unless ``--force``, which starts the folder afresh for it."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from cadpipe.cli import main
from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.scoring.output_owner import check_output_owner, output_owner
from tests.pipelines.scoring.score_helpers import make_bundle, write_png


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("b"))
    return make_bundle("tiny_classification_bundle", dest), make_bundle("tiny_segmentation_2d_bundle", dest)


def _score(bundle, inp, out, *extra):
    return main(["score", "--bundle", bundle, "--input", inp, "--output", out, "--quiet", "--workers", "0",
                 "--no-reports", "--no-heatmaps", "--no-dicom-results", *extra])


def test_second_bundle_is_refused_then_force_replaces(bundles, tmp_path, capsys):
    cls, seg = bundles
    write_png(str(tmp_path / "in" / "a.png"))
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    assert _score(cls, inp, out) == 0
    assert output_owner(out) == "tiny_classification_bundle"
    table = os.path.join(out, "results.csv")
    before = open(table, "rb").read()
    listing = sorted(os.listdir(out))
    capsys.readouterr()

    assert _score(seg, inp, out) == 2
    err = capsys.readouterr().err
    assert out in err and "tiny_classification_bundle" in err and "tiny_segmentation_2d_bundle" in err
    assert "--force" in err and f"--output (e.g. {tmp_path / os.path.basename(seg)})" in err
    assert open(table, "rb").read() == before  # nothing replaced
    assert sorted(os.listdir(out)) == listing  # nothing written

    assert _score(cls, inp, out) == 0  # the owner itself may come back (resume)
    assert _score(seg, inp, out, "--force") == 0
    assert set(pd.read_csv(table)["bundle"]) == {"tiny_segmentation_2d_bundle"}
    assert output_owner(out) == "tiny_segmentation_2d_bundle"


def test_owner_check_on_a_new_or_unreadable_folder(bundles, tmp_path):
    cls, _ = bundles
    check_output_owner(str(tmp_path / "new"), cls, force=False)  # no folder yet: nobody owns it
    journal = tmp_path / "torn" / ".cadpipe" / "journal.jsonl"
    journal.parent.mkdir(parents=True)
    journal.write_text('{"bundle": "other", "unit_id"')  # torn first line: no complete row, no owner
    check_output_owner(str(tmp_path / "torn"), cls, force=False)
    journal.write_text('{"bundle": "other", "unit_id": "u"}\n')
    with pytest.raises(CadpipeInputError, match="holds the results of bundle 'other'"):
        check_output_owner(str(tmp_path / "torn"), cls, force=False)
    check_output_owner(str(tmp_path / "torn"), cls, force=True)
