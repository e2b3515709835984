"""C-STORE SCU: send DICOM files (results) to a peer ``AET@host:port`` with ``pynetdicom``."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Peer", "parse_peer", "send_files", "SendError"]


class SendError(Exception):
    """The peer could not be reached, refused the association, or refused an instance."""


@dataclass(frozen=True)
class Peer:
    aet: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


def parse_peer(text: str) -> Peer:
    """``AET@host:port`` -> :class:`Peer`; ValueError with the expected form otherwise."""
    m = re.fullmatch(r"([^@\\\s]{1,16})@([^:\s]+):(\d{1,5})", text.strip())
    if not m or not 0 < int(m.group(3)) < 65536:
        raise ValueError(f"expected AET@host:port (AE title of at most 16 characters), got {text!r}")
    return Peer(m.group(1), m.group(2), int(m.group(3)))


def send_files(paths: list[str], peer: Peer, calling_aet: str = "CADPIPE", timeout: float = 30.0) -> int:
    """C-STORE every file in ``paths`` to ``peer`` over one association; returns how many were stored.

    Raises:
        SendError: no association (peer down, AE title refused) or a non-success status for a file.
    """
    import pydicom
    from pynetdicom import AE
    from pynetdicom.presentation import build_context

    if not paths:
        return 0
    classes = {}
    for p in paths:
        meta = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
        classes.setdefault(str(meta.MediaStorageSOPClassUID), set()).add(str(meta.TransferSyntaxUID))
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    # one context per (SOP class, the files' transfer syntax): the peer accepts one syntax per context, and a
    # compressed file must go in its own syntax (it is sent as stored, not re-encoded)
    ae.requested_contexts = [build_context(c, t) for c, ts in classes.items() for t in sorted(ts)][:128]
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.aet)
    if not assoc.is_established:
        raise SendError(f"{peer}: no association (peer unreachable, or it refused AE title {calling_aet!r})")
    sent = 0
    try:
        for p in paths:
            try:
                status = assoc.send_c_store(p)
            except ValueError as err:  # no accepted presentation context for this file's class / syntax
                raise SendError(f"{peer}: does not accept {p}: {err}") from None
            code = getattr(status, "Status", None)
            if code is None:
                raise SendError(f"{peer}: no answer while storing {p}")
            if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                raise SendError(f"{peer}: refused {p} (status 0x{code:04X})")
            sent += 1
    finally:
        if assoc.is_established:
            assoc.release()
    return sent
