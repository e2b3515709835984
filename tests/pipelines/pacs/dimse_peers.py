"""Test peers for the DIMSE listener: a C-STORE SCU that reports each status, idle sockets and idle associations,
and instance variants (chosen UIDs, long header values). Everything on 127.0.0.1, every wait bounded."""

from __future__ import annotations

import contextlib
import socket
import time

import pydicom

VERIFICATION = "1.2.840.10008.1.1"


def store(port: int, paths: list[str], calling: str = "GOODSCU", called: str = "CADPIPE",
          timeout: float = 30.0, chunked: bool = False) -> list[int] | None:
    """C-STORE ``paths`` in one association; the status of each, or None when the association is rejected.
    ``chunked``: the SCU streams each file from disk (pynetdicom's STORE_SEND_CHUNKED_DATASET)."""
    from pynetdicom import AE, _config

    heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for cls, ts in dict.fromkeys((str(h.SOPClassUID), str(h.file_meta.TransferSyntaxUID)) for h in heads):
        ae.add_requested_context(cls, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return None
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = chunked
    statuses = []
    try:
        for p, h in zip(paths, heads):
            rsp = assoc.send_c_store(p if chunked else pydicom.dcmread(p))
            statuses.append(int(rsp.Status) if "Status" in rsp else -1)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before
        assoc.release()
    return statuses


def echo_association(port: int, calling: str = "GOODSCU", timeout: float = 30.0):
    """An established association that only offers Verification (the caller keeps it idle or echoes)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(VERIFICATION)
    return ae.associate("127.0.0.1", port, ae_title="CADPIPE")


@contextlib.contextmanager
def raw_sockets(port: int, n: int):
    """``n`` TCP connections that never send a byte."""
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True when the peer closes ``sock`` (or resets it) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def wait_until(predicate, timeout: float, poll: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(poll)
    return predicate()


def variant(src: str, dest: str, **attrs) -> str:
    """A copy of the DICOM file ``src`` with attributes replaced (e.g. SOPInstanceUID, StudyDescription)."""
    ds = pydicom.dcmread(src)
    for k, v in attrs.items():
        setattr(ds, k, v)
    if "SOPInstanceUID" in attrs:
        ds.file_meta.MediaStorageSOPInstanceUID = attrs["SOPInstanceUID"]
    ds.save_as(dest)
    return dest
