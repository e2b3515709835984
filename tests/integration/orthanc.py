"""A real Orthanc server for the PACS integration tests (Debian's ``orthanc`` + ``orthanc-dicomweb``).

:func:`orthanc_server` starts one on free loopback ports with a generated configuration and a temporary storage
folder, in its own process group, waits for ``/system`` and stops it (the whole group) afterwards. Tests skip with
the reason when the server or its DICOMweb plugin is not installed (``make test`` installs both as root:
``scripts/pacs_deps.sh``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
import requests

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plugin() -> str | None:
    for d in PLUGIN_DIRS:
        if os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                if name.startswith("libOrthancDicomWeb.so"):
                    return os.path.join(d, name)
    return None


def require_orthanc() -> tuple[str, str]:
    """(Orthanc executable, DICOMweb plugin) or skip with the reason."""
    exe = shutil.which("Orthanc") or (os.path.exists("/usr/sbin/Orthanc") and "/usr/sbin/Orthanc") or None
    plugin = _plugin()
    if not exe or not plugin:
        pytest.skip("Orthanc with its DICOMweb plugin is not installed (Debian packages orthanc, orthanc-dicomweb; "
                    "`make test` installs them as root with scripts/pacs_deps.sh)")
    return exe, plugin


class Orthanc:
    """One running Orthanc: ``url`` (REST), ``dicomweb`` (DICOMweb root), ``dicom_port``, ``aet``."""

    def __init__(self, folder: str, users: dict[str, str] | None = None, modalities: dict | None = None,
                 aet: str = "ORTHANC"):
        self.exe, self.plugin = require_orthanc()
        self.folder, self.users, self.aet = folder, users, aet
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.auth = next(iter(users.items())) if users else None
        self.modalities = modalities or {}
        self.proc: subprocess.Popen | None = None

    def config(self) -> dict:
        storage = os.path.join(self.folder, "storage")
        return {
            "Name": "cadpipe-test", "DicomAet": self.aet, "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "StorageDirectory": storage, "IndexDirectory": storage, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users), "RegisteredUsers": self.users or {},
            "Plugins": [self.plugin], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": self.modalities, "DicomAlwaysAllowStore": True, "DicomCheckModalityHost": False,
            "HttpTimeout": 30, "DicomScuTimeout": 30, "StableAge": 1, "LogExportedResources": False,
            "SaveJobs": False,
        }

    def start(self, timeout: float = 60.0) -> "Orthanc":
        os.makedirs(self.folder, exist_ok=True)
        cfg = os.path.join(self.folder, "orthanc.json")
        with open(cfg, "w", encoding="utf-8") as f:
            json.dump(self.config(), f, indent=1)
        log = open(os.path.join(self.folder, "orthanc.log"), "ab")
        self.proc = subprocess.Popen([self.exe, cfg], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}; see {self.folder}/orthanc.log")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/system", auth=self.auth, timeout=2).ok:
                    return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer /system within {timeout} s; see {self.folder}/orthanc.log")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    # -- REST helpers ------------------------------------------------------------------------------------------
    def upload(self, path: str) -> dict:
        with open(path, "rb") as f:
            r = requests.post(f"{self.url}/instances", data=f.read(), auth=self.auth, timeout=30)
        r.raise_for_status()
        return r.json()

    def get(self, route: str):
        r = requests.get(f"{self.url}{route}", auth=self.auth, timeout=30)
        r.raise_for_status()
        return r.json()

    def post(self, route: str, body):
        r = requests.post(f"{self.url}{route}", json=body, auth=self.auth, timeout=120)
        r.raise_for_status()
        return r.json()

    def download(self, instance_id: str) -> bytes:
        """The DICOM file of one instance (by its Orthanc id), as Orthanc stores it."""
        r = requests.get(f"{self.url}/instances/{instance_id}/file", auth=self.auth, timeout=30)
        r.raise_for_status()
        return r.content

    def series_files(self, study_uid: str, modalities: tuple[str, ...]) -> list[bytes]:
        """The files of every instance of the study's series whose Modality is one of ``modalities``."""
        study = self.study_orthanc_id(study_uid)
        return [self.download(i) for s in self.get(f"/studies/{study}/series")
                if s["MainDicomTags"].get("Modality", "") in modalities for i in s["Instances"]]

    def study_orthanc_id(self, study_uid: str) -> str:
        r = requests.post(f"{self.url}/tools/lookup", data=study_uid, auth=self.auth, timeout=30)
        r.raise_for_status()
        return next(i["ID"] for i in r.json() if i["Type"] == "Study")


@contextlib.contextmanager
def orthanc_server(folder: str, **kwargs):
    server = Orthanc(folder, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()
