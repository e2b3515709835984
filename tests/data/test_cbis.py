import numpy as np
import pytest

from cadpipe.data.cbis import cbis_datalist
from cadpipe.data.synthetic.ddsm import write_cbis_dataset
from cadpipe.errors import CadpipeInputError


def test_cbis_matches_by_uid_and_reports_unmatched(tmp_path):
    s = write_cbis_dataset(tmp_path, n_patients=2, seed=5, unmatched=1)
    items, unmatched = cbis_datalist(s["csv"], s["root"])
    assert len(items) == 4
    for it in items:
        t = s["truth"][it["image"]]
        np.testing.assert_array_equal(it["box"], t["boxes"])
        np.testing.assert_array_equal(it["label"], t["labels"])
        assert it["patient_id"].startswith("P_") and it["view"] in ("LEFT_CC", "RIGHT_MLO")
    assert [u["path"] for u in unmatched] == s["unmatched_rows"]
    assert unmatched[0]["reason"] == "image not found" and unmatched[0]["line"] > 1


def test_cbis_bad_csv(tmp_path):
    s = write_cbis_dataset(tmp_path, n_patients=1, seed=1)
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,pathology\nP_1,BENIGN\n")
    with pytest.raises(CadpipeInputError, match=r"bad.csv: missing columns"):
        cbis_datalist(bad, s["root"])
