"""Socket options for DIMSE associations.

DIMSE is strictly request/response (PS3.7 §9.3): the last, short segment of a message would
wait under Nagle's algorithm for the peer's delayed ACK (~40 ms on Linux), which caps a
C-STORE sub-operation loop at ~20 messages/s. DCMTK disables Nagle on its sockets for the
same reason; pynetdicom does not, so arca does it on every association it opens or accepts.
"""

from __future__ import annotations

import contextlib
import socket


def disable_nagle(sock: socket.socket | None) -> None:
    """Set TCP_NODELAY on ``sock`` (no-op for a missing or already closed socket)."""
    if sock is None or sock.fileno() < 0:
        return
    with contextlib.suppress(OSError):  # the peer went away; the association will notice
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
