"""A unit discovery refused (a link leaving the input, a file that is not DICOM, an unexpected exception) is never
loaded, by the per-item loader or the batched one: its row carries discovery's reason."""

from __future__ import annotations

from cadpipe.pipelines.scoring.batched import RawUnitDataset
from cadpipe.pipelines.scoring.discovery import Unit
from cadpipe.pipelines.scoring.score import _reason, _UnitDataset


def _never(_):
    raise AssertionError("an error unit was loaded")


def test_error_units_are_not_loaded_by_either_loader():
    unit = Unit("x.dcm", "s", "x", "error", "/in/x.dcm", ["/in/x.dcm"], error="could not be read (RuntimeError: boom)")
    for ds in (RawUnitDataset([unit], _never, _reason), _UnitDataset([unit], _never)):
        i, item, err, _ = ds[0]
        assert (i, item) == (0, None) and err == "/in/x.dcm: could not be read (RuntimeError: boom)"
