"""Patient data as received (portal uploads and job database, the DICOMweb cache, the listener's instances) is
created 0700 / 0600 whatever the umask; CADPIPE_DATA_UMASK asks otherwise; shared outputs keep the umask."""

from __future__ import annotations

import io
import os
import stat
import types

import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.outputs.files import atomic_write_text
from cadpipe.pipelines.outputs.private_files import DATA_UMASK_ENV, make_private_dirs, open_private


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(autouse=True)
def permissive_umask(monkeypatch):
    """The usual umask 022 (files 0644 for everyone to read) unless the code asks for less."""
    monkeypatch.delenv(DATA_UMASK_ENV, raising=False)
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_private_dirs_and_files(tmp_path):
    made = make_private_dirs(str(tmp_path / "a" / "b"), under=str(tmp_path / "a"))
    assert _mode(tmp_path / "a") == 0o700 and _mode(made) == 0o700
    cache = make_private_dirs(str(tmp_path / "out" / "cache"))  # a private folder in a shared one
    assert _mode(tmp_path / "out") == 0o755 and _mode(cache) == 0o700
    with open_private(os.path.join(made, "x.dcm")) as f:
        f.write(b"data")
    assert _mode(os.path.join(made, "x.dcm")) == 0o600
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    make_private_dirs(str(shared))  # the user's own folder keeps its mode
    assert _mode(shared) == 0o755
    atomic_write_text(str(shared / "results.csv"), "a\n")  # outputs meant to be shared keep the umask
    assert _mode(shared / "results.csv") == 0o644


def test_the_user_may_ask_otherwise(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_UMASK_ENV, "027")
    make_private_dirs(str(tmp_path / "g"))
    with open_private(str(tmp_path / "g" / "f")) as f:
        f.write(b"x")
    assert _mode(tmp_path / "g") == 0o750 and _mode(tmp_path / "g" / "f") == 0o640
    monkeypatch.setenv(DATA_UMASK_ENV, "rw-r")
    with pytest.raises(CadpipeInputError, match=f"{DATA_UMASK_ENV}='rw-r' is not an octal umask"):
        make_private_dirs(str(tmp_path / "h"))


def test_portal_job_database_and_uploads(tmp_path):
    from cadpipe.pipelines.portal.jobs import JobStore
    from cadpipe.pipelines.portal.uploads import UploadLimits, store_upload

    data = tmp_path / "portal_data"
    store = JobStore(str(data))
    store.create("0" * 32, "cxr", [])
    assert _mode(data) == 0o700 and _mode(data / "jobs") == 0o700
    for name in os.listdir(data):
        if name.startswith("jobs.sqlite3"):  # the database and its -wal/-shm files
            assert _mode(data / name) == 0o600, name
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
    stored = store_upload("scan.png", io.BytesIO(png), os.path.join(store.job_dir("0" * 32), "input"), 0,
                          UploadLimits(), 0)
    assert _mode(stored.stored) == 0o600 and _mode(os.path.dirname(stored.stored)) == 0o700


def _instance(study, series):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "OT"
    return ds


def test_dicomweb_cache(tmp_path):
    """`cadpipe score --dicomweb` against a loopback DICOMweb server: the cache is private, the output around it and
    the results are shared."""
    from cadpipe.cli import main
    from tests.pipelines.pacs.dicomweb_server import FakePacs
    from tests.pipelines.scoring.score_helpers import make_bundle, write_dicom_2d

    bundle = make_bundle("tiny_classification_bundle", str(tmp_path / "b"))
    (tmp_path / "src").mkdir()
    src = write_dicom_2d(str(tmp_path / "src" / "a.dcm"), "1.2.826.0.1.9", "1.2.826.0.1.9.1")
    out = tmp_path / "out"
    with FakePacs() as pacs:
        study = pacs.add(src)
        code = main(["score", "--workers", "0", "--no-reports", "--quiet", "--bundle", bundle, "--dicomweb",
                     pacs.url, "--study", study, "--output", str(out)])
    assert code == 0
    cache = out / "dicomweb_cache"
    files = 0
    for dirpath, dirs, names in os.walk(cache):
        assert _mode(dirpath) == 0o700, dirpath
        for f in names:
            files += 1
            assert _mode(os.path.join(dirpath, f)) == 0o600, f
    assert files == 1
    assert _mode(out) == 0o755 and _mode(out / "results.csv") == 0o644  # shared outputs keep the umask


def test_listener_received_instances(tmp_path):
    from cadpipe.pipelines.pacs.listener import ListenConfig, StudyListener
    from cadpipe.pipelines.scoring.score import ScoreConfig
    from tests.pipelines.scoring.score_helpers import make_bundle

    bundle = make_bundle("tiny_classification_bundle", str(tmp_path / "b"))
    out = tmp_path / "out"  # created by the listener
    lis = StudyListener(ListenConfig(score=ScoreConfig(bundle=bundle, input=None, output=str(out))))
    ds = _instance(generate_uid(), generate_uid())
    received = tmp_path / "received.dcm"  # where pynetdicom's chunked receive leaves an instance
    pydicom.dcmwrite(str(received), ds, enforce_file_format=True)
    event = types.SimpleNamespace(
        dataset_path=received, assoc=types.SimpleNamespace(requestor=types.SimpleNamespace(address="127.0.0.1",
                                                                                            ae_title="MODALITY")),
        request=types.SimpleNamespace(AffectedSOPClassUID=ds.SOPClassUID))
    assert lis._on_store(event) == 0  # noqa: SLF001 - the C-STORE handler, without a network
    assert _mode(out) == 0o755  # the shared output folder keeps the umask
    for dirpath, dirs, files in os.walk(out / "dimse_incoming"):
        assert _mode(dirpath) == 0o700, dirpath
        for f in files:
            assert _mode(os.path.join(dirpath, f)) == 0o600, f
    assert _mode(out / "dimse_studies") == 0o700
