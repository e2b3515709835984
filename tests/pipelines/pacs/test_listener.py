"""The DIMSE listener in-process (no external server): AE title allow-list, SOP classes it accepts, instances on
disk as received, scoring once a study is complete, and the credentials/peer parsing helpers."""

from __future__ import annotations

import os

import pydicom
import pytest

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.pacs.dicomweb import read_auth
from cadpipe.pipelines.pacs.listener import ListenConfig, StudyListener
from cadpipe.pipelines.pacs.send import Peer, SendError, parse_peer, send_files
from cadpipe.pipelines.scoring.score import ScoreConfig
from tests.integration.orthanc import free_port
from tests.pipelines.scoring.score_helpers import make_bundle


@pytest.fixture
def listener(tmp_path):
    bundle = make_bundle("tiny_classification_bundle", str(tmp_path / "b"))
    port = free_port()
    cfg = ListenConfig(score=ScoreConfig(bundle=bundle, input=None, output=str(tmp_path / "out"), workers=0,
                                         quiet=True, reports=False),
                       port=port, allow_aet=["GOODSCU"], study_timeout=0.0)
    lis = StudyListener(cfg)
    lis.start()
    yield lis, Peer("CADPIPE", "127.0.0.1", port)
    lis.stop()


def test_only_allowed_calling_aets_may_send_and_a_complete_study_is_scored(listener, tmp_path):
    from cadpipe.data.synthetic.dicom import write_cxr_dicom

    lis, peer = listener
    path = write_cxr_dicom(str(tmp_path / "synthetic_a.dcm"), rows=32, cols=32, seed=1)["path"]
    with pytest.raises(SendError, match="no association"):
        send_files([path], peer, calling_aet="STRANGER")
    assert send_files([path], peer, calling_aet="GOODSCU") == 1
    sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    received = [f for _, _, fs in os.walk(lis.incoming) for f in fs]
    assert received == [f"{sop}.dcm"]  # on disk before the C-STORE was answered
    assert lis.step()  # --study-timeout 0: complete now
    rows = open(os.path.join(lis.out, "results.csv")).read()
    assert sop in rows and ",ok," in rows


def test_a_sop_class_the_bundle_cannot_read_is_refused(listener, tmp_path):
    from pydicom.data import get_testdata_file

    lis, peer = listener
    sc = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")  # a JPEG secondary capture: accepted, as stored
    assert send_files([sc], peer, calling_aet="GOODSCU") == 1
    rt = get_testdata_file("rtplan.dcm")  # an RT plan holds no image: refused at negotiation
    with pytest.raises(SendError):
        send_files([rt], peer, calling_aet="GOODSCU")


def test_non_loopback_bind_needs_an_allow_list(tmp_path):
    bundle = make_bundle("tiny_classification_bundle", str(tmp_path / "b"))
    cfg = ListenConfig(score=ScoreConfig(bundle=bundle, input=None, output=str(tmp_path / "o")), bind="0.0.0.0")
    with pytest.raises(CadpipeInputError, match="--allow-aet"):
        StudyListener(cfg)


def test_peer_and_credentials_parsing(tmp_path):
    assert parse_peer("ORTHANC@127.0.0.1:4242") == Peer("ORTHANC", "127.0.0.1", 4242)
    for bad in ("ORTHANC@host", "@h:1", "A@h:70000", "WAY_TOO_LONG_AE_TITLE@h:1"):
        with pytest.raises(ValueError):
            parse_peer(bad)
    assert read_auth(None, environ={}) is None
    assert read_auth(None, environ={"CADPIPE_DICOMWEB_AUTH": "Bearer abc"}) == ("bearer", "abc")
    f = tmp_path / "auth"
    f.write_text("basic u:p\n")
    assert read_auth(str(f)) == ("basic", "u:p")
    f.write_text("token-without-kind")
    with pytest.raises(CadpipeInputError) as err:
        read_auth(str(f))
    assert str(f) in str(err.value) and "token-without-kind" not in str(err.value)
    with pytest.raises(CadpipeInputError, match="cannot be read"):
        read_auth(str(tmp_path / "missing"))
