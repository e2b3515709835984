"""CSV formula neutralisation: results.csv cells never start a spreadsheet formula; Parquet keeps raw values."""

from __future__ import annotations

import os

import pandas as pd

from cadpipe.pipelines.outputs.spreadsheet import neutralise_formula
from cadpipe.pipelines.scoring.results import write_results_table


def test_neutralise_formula():
    for text in ['=HYPERLINK("x")', "+1", "-1", "@SUM(A1)", "\tx", "\rx"]:
        assert neutralise_formula(text) == "'" + text
    for value in ["plain", "/data/a.png", "", -0.5, 3, None]:
        assert neutralise_formula(value) == value


def test_results_csv_is_neutralised_parquet_is_raw(tmp_path):
    row = {"study_id": "=HYPERLINK(\"x\")", "series_id": "@s", "unit_id": "-u", "input_paths": "+p.png",
           "status": "ok", "error": "", "elapsed_s": -0.5, "prob_a": 0.25}
    write_results_table([row], str(tmp_path))
    df = pd.read_csv(os.path.join(tmp_path, "results.csv"))
    assert df.loc[0, "study_id"] == "'=HYPERLINK(\"x\")" and df.loc[0, "series_id"] == "'@s"
    assert df.loc[0, "unit_id"] == "'-u" and df.loc[0, "input_paths"] == "'+p.png"
    assert df.loc[0, "elapsed_s"] == -0.5  # numbers untouched
    if os.path.exists(os.path.join(tmp_path, "results.parquet")):
        raw = pd.read_parquet(os.path.join(tmp_path, "results.parquet"))
        assert raw.loc[0, "study_id"] == "=HYPERLINK(\"x\")" and raw.loc[0, "unit_id"] == "-u"
