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
    f.chmod(0o600)  # a credentials file readable by others is refused (tests/pipelines/pacs/test_dicomweb_hostile.py)
    assert read_auth(str(f)) == ("basic", "u:p")
    f.write_text("token-without-kind")
    with pytest.raises(CadpipeInputError) as err:
        read_auth(str(f))
    assert str(f) in str(err.value) and "token-without-kind" not in str(err.value)
    with pytest.raises(CadpipeInputError, match="cannot be read"):
        read_auth(str(tmp_path / "missing"))


def test_studies_one_after_the_other_are_scored_with_one_model_load(listener, tmp_path, monkeypatch):
    """The listener builds the bundle's runner on the first study and reuses it: one build for two studies, and
    the second study's results are those a fresh `cadpipe score` gives; new weights are loaded at the next study."""
    import shutil

    import pandas as pd

    from cadpipe.data.synthetic.dicom import write_cxr_dicom
    from cadpipe.pipelines.inference import bundle_runner
    from cadpipe.pipelines.outputs.dicom_sr import read_report
    from cadpipe.pipelines.scoring.score import score
    from tests.pipelines.outputs.dicom_checks import journal_outputs

    builds = []
    real_init = bundle_runner.BundleRunner.__init__

    def counting_init(self, *args, **kwargs):
        builds.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(bundle_runner.BundleRunner, "__init__", counting_init)
    lis, peer = listener
    paths = [write_cxr_dicom(str(tmp_path / f"synthetic_{s}.dcm"), rows=32, cols=32, seed=s)["path"] for s in (1, 2, 3)]
    sops = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
    for path in paths[:2]:
        assert send_files([path], peer, calling_aet="GOODSCU") == 1
        assert lis.step()
    assert len(builds) == 1 and lis._runner is builds[0]
    rows = pd.read_csv(os.path.join(lis.out, "results.csv")).set_index("unit_id")
    assert sorted(rows.index) == sorted(sops[:2]) and (rows.status == "ok").all()
    assert set(rows.model_sha256) == {builds[0].model_sha256}

    # the second study scored by the reused runner = the same file scored by a fresh `cadpipe score`
    (tmp_path / "alone").mkdir()
    shutil.copy(paths[1], tmp_path / "alone" / "synthetic_2.dcm")
    cfg = lis.cfg.score
    fresh = ScoreConfig(**{**cfg.__dict__, "input": str(tmp_path / "alone"), "output": str(tmp_path / "fresh")})
    score(fresh)
    assert len(builds) == 2  # that one built its own
    alone = pd.read_csv(tmp_path / "fresh" / "results.csv").set_index("unit_id").loc[sops[1]]
    second = rows.loc[sops[1]]
    assert second.predicted == alone.predicted and second.model_sha256 == alone.model_sha256
    for col in ("prob_normal", "prob_abnormal"):
        assert second[col] == pytest.approx(alone[col], abs=1e-6)
    report = read_report(os.path.join(lis.out, journal_outputs(lis.out)[sops[1]]["dicom_sr"]))
    assert report["probabilities"] == pytest.approx({"normal": second.prob_normal, "abnormal": second.prob_abnormal},
                                                    rel=1e-6)
    assert report["algorithm"]["parameters"] == [f"model_sha256={builds[0].model_sha256}"]

    # "retrained" weights: loaded at the next study; every unit is rescored and journalled with the new sha256
    other = make_bundle("tiny_classification_bundle", str(tmp_path / "b2"), seed=1)
    shutil.copy(os.path.join(other, "models", "model.pt"), os.path.join(cfg.bundle, "models", "model.pt"))
    assert send_files([paths[2]], peer, calling_aet="GOODSCU") == 1
    assert lis.step()
    assert len(builds) == 3 and lis._runner is builds[2]
    assert builds[2].model_sha256 != builds[0].model_sha256
    rows = pd.read_csv(os.path.join(lis.out, "results.csv"))
    assert sorted(rows.unit_id) == sorted(sops) and (rows.status == "ok").all()
    assert set(rows.model_sha256) == {builds[2].model_sha256}


def test_score_refuses_a_runner_not_built_for_its_config(tmp_path):
    """score(cfg, runner=): a runner of other overrides, or whose weights were replaced since, is refused before
    anything is scored (the journal's model_sha256 must be that of the weights used)."""
    import shutil

    from cadpipe.data.synthetic.dicom import write_cxr_dicom
    from cadpipe.pipelines.scoring.score import build_runner, score

    bundle = make_bundle("tiny_classification_bundle", str(tmp_path / "b"))
    (tmp_path / "in").mkdir()
    write_cxr_dicom(str(tmp_path / "in" / "synthetic_IM1"), rows=32, cols=32, seed=1)
    cfg = ScoreConfig(bundle=bundle, input=str(tmp_path / "in"), output=str(tmp_path / "out"), workers=0,
                      quiet=True, reports=False, device="cpu")
    runner = build_runner(cfg)
    assert score(cfg, runner=runner)["ok"] == 1
    other_overrides = ScoreConfig(**{**cfg.__dict__, "overrides": {"preprocessing#transforms#2#spatial_size": [24, 24]}})
    with pytest.raises(ValueError, match="other overrides"):
        score(other_overrides, runner=runner)
    with pytest.raises(ValueError, match="cannot be combined with a backend"):
        score(cfg, backend=lambda *a: None, runner=runner)
    other = make_bundle("tiny_classification_bundle", str(tmp_path / "b2"), seed=1)
    shutil.copy(os.path.join(other, "models", "model.pt"), os.path.join(bundle, "models", "model.pt"))
    with pytest.raises(ValueError, match="weights are not the bundle's"):
        score(cfg, runner=runner)
