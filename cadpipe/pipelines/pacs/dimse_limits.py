"""What one peer can cost ``cadpipe listen``: connection, association, time and size limits of the DIMSE SCP.

- :class:`DimseLimits`: the limits and their defaults (the ``cadpipe listen`` options, docs/security.md).
- :func:`guarded_classes`: a pynetdicom AE whose association limit counts *established*
  associations only (plus the one being negotiated), so TCP connections that never send an A-ASSOCIATE-RQ do not
  take a slot (they are dropped after ``acse_timeout``); and a server that refuses a connection from an address
  outside ``allow_ip`` before a thread is started for it, and at ``max_connections`` open connections closes the
  oldest one without an association (or refuses the new one when all have one).
- :class:`SizeGuard`: counts the data-set bytes of each C-STORE as its fragments arrive; past the per-instance limit
  the rest is dropped (not written, not held) and the C-STORE handler answers with a failure status.
- :func:`escape_controls` / :class:`EscapingFormatter`: control characters (a newline in an AE title or a UID) are
  written escaped, so a peer cannot forge a log line.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from dataclasses import dataclass, field

__all__ = ["DimseLimits", "guarded_classes", "SizeGuard", "address_allowed", "escape_controls",
           "EscapingFormatter", "parse_networks"]

log = logging.getLogger("cadpipe.listen")

MB = 1024 * 1024


@dataclass
class DimseLimits:
    max_associations: int = 16  # established associations at once (a C-ECHO or C-STORE session each)
    max_connections: int = 64  # open TCP connections at once, associated or not; more are closed at accept
    acse_timeout: float = 5.0  # seconds from connect to A-ASSOCIATE-RQ (and for release/abort replies)
    idle_timeout: float = 15.0  # seconds without any PDU on an association: aborted (pynetdicom network_timeout)
    dimse_timeout: float = 15.0  # seconds to wait for a DIMSE message that is due
    max_instance_mb: float = 2048.0  # one C-STORE data set (a breast tomosynthesis or enhanced CT/MR object fits)
    max_study_mb: float = 16384.0  # everything received for one study not yet scored
    allow_ip: list = field(default_factory=list)  # ip_network objects; empty: any address

    def check(self) -> None:
        if self.max_associations < 1 or self.max_connections < self.max_associations:
            raise ValueError("--max-associations >= 1 and --max-connections >= --max-associations")
        if min(self.acse_timeout, self.idle_timeout, self.dimse_timeout) <= 0:
            raise ValueError("--acse-timeout, --idle-timeout and --dimse-timeout must be > 0")
        if self.max_instance_mb <= 0 or self.max_study_mb < self.max_instance_mb:
            raise ValueError("--max-instance-mb > 0 and --max-study-mb >= --max-instance-mb")


def parse_networks(values: list[str]) -> list:
    """``["10.0.0.0/8", "192.168.1.7"]`` -> ip_network objects; ValueError names a bad entry."""
    nets = []
    for v in values:
        try:
            nets.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError:
            raise ValueError(f"--allow-ip: {escape_controls(v)!r} is not an address or network") from None
    return nets


def address_allowed(host: str, networks: list) -> bool:
    if not networks:
        return True
    try:
        addr = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in networks)


def escape_controls(text: object) -> str:
    """``text`` with every non-printable character written as a Python escape (``\\n``, ``\\x1b``, ``\\u2028``)."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)


class EscapingFormatter(logging.Formatter):
    """A formatter whose every record is one line: control characters in the message (and traceback) escaped."""

    def format(self, record: logging.LogRecord) -> str:
        return escape_controls(super().format(record))


def _pynetdicom():
    from pynetdicom import AE
    from pynetdicom.transport import ThreadedAssociationServer

    return AE, ThreadedAssociationServer


def _make_classes():
    AE, ThreadedAssociationServer = _pynetdicom()

    class _GuardedAE(AE):
        """pynetdicom's association limit (``maximum_associations``) applied to established associations and the
        one being negotiated (pynetdicom counts every accepted TCP connection, so idle sockets lock senders
        out)."""

        @property
        def active_associations(self):
            me = threading.current_thread()
            return [a for a in super().active_associations
                    if not a.is_acceptor or a.is_established or a is me]

    class _GuardedServer(ThreadedAssociationServer):
        """At accept, before a thread is started: refuses a peer address outside ``allow_ip``; at
        ``max_connections`` open connections, closes the oldest one that has no association yet to make room (so
        connections held open without a request cannot lock out a sender), or refuses the new one when every
        connection is associated. ``on_refused(host, why)`` is called for each."""

        limits: DimseLimits = DimseLimits()
        on_refused = None

        def verify_request(self, request, client_address) -> bool:
            host = str(client_address[0])
            why = ""
            if not address_allowed(host, self.limits.allow_ip):
                why = "address not allowed"
            else:
                active = self.active_associations
                if len(active) >= self.limits.max_connections:
                    waiting = [a for a in active if not a.is_established and hasattr(a, OPENED)]
                    if waiting:
                        oldest = min(waiting, key=lambda a: getattr(a, OPENED))
                        close_connection(oldest)
                        if self.on_refused is not None:
                            self.on_refused(str(getattr(oldest.requestor, "address", None) or "?"),
                                            "oldest connection without an association closed: too many open")
                    else:
                        why = "too many open connections"
            if why and self.on_refused is not None:
                self.on_refused(host, why)
            return not why

    return _GuardedAE, _GuardedServer


OPENED = "_cadpipe_opened"  # monotonic time an acceptor's connection was opened (set at EVT_CONN_OPEN)


def close_connection(assoc) -> None:
    """Close an association's socket: the reactor sees the connection end and the association thread exits."""
    sock = getattr(getattr(assoc, "dul", None), "socket", None)
    if sock is not None:
        try:
            sock.close()
        except Exception:  # noqa: BLE001 - already closed
            pass
    setattr(assoc, OPENED, float("inf"))  # never chosen again


_classes: tuple | None = None


def guarded_classes() -> tuple[type, type]:
    """``(GuardedAE, GuardedServer)``, subclasses of pynetdicom's AE and ThreadedAssociationServer (built on first
    use: pynetdicom is imported only when a listener starts)."""
    global _classes
    if _classes is None:
        _classes = _make_classes()
    return _classes


class SizeGuard:
    """Per association: count each C-STORE's data-set bytes as P-DATA fragments arrive and, past ``max_bytes``,
    drop the rest (the fragment's control header is kept so the message still completes). :meth:`take` then says
    whether the message just received was cut (its C-STORE is answered with a failure status)."""

    def __init__(self, assoc, max_bytes: int):
        self.max_bytes = max_bytes
        self._seen = 0
        self._over = False
        self._dimse = assoc.dimse
        self._receive = assoc.dimse.receive_primitive
        assoc.dimse.receive_primitive = self._guarded
        assoc._cadpipe_size_guard = self

    def _guarded(self, primitive) -> None:
        if self._dimse.message is None:  # a new DIMSE message starts with this primitive
            self._seen, self._over = 0, False
        pdvs = getattr(primitive, "presentation_data_value_list", None)
        if pdvs:
            kept = []
            for context_id, data in pdvs:
                if data and not data[0] & 1:  # a data-set fragment (the command set is never cut)
                    self._seen += len(data) - 1
                    if self._seen > self.max_bytes:
                        self._over = True
                        data = data[:1]
                kept.append([context_id, bytes(data)])
            primitive.presentation_data_value_list = kept
        self._receive(primitive)

    def take(self) -> tuple[bool, int]:
        """(cut, bytes the peer sent) for the message just completed; resets the flag."""
        over, seen = self._over, self._seen
        self._over = False
        return over, seen

    @staticmethod
    def of(assoc) -> "SizeGuard | None":
        return getattr(assoc, "_cadpipe_size_guard", None)
