"""A packet delay line between two TUN devices: the 15 ms each way of the remote-site link.

This machine's kernel has no ``netem`` qdisc (only tbf/htb/pfifo), so the propagation delay
is added here, per IP packet, in user space: every packet read from one TUN device is written
to the other one ``delay`` seconds later, in order. TCP therefore sees a real round trip (its
window, slow start and acknowledgements all cross the delay), while the kernel's ``tbf`` on
each TUN device shapes the rate. Run by :mod:`bench.netns` as
``python -m bench.delayline DEV_A DEV_B DELAY_MS``; it creates both devices, prints ``ready``
and forwards until it is terminated.
"""

from __future__ import annotations

import collections
import fcntl
import os
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name: str) -> int:
    """Create TUN device ``name`` (no packet-info header) and return its file descriptor."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def forward(fd_a: int, fd_b: int, delay: float) -> None:
    """Move packets a→b and b→a, each ``delay`` seconds after it was read."""
    queues: dict[int, collections.deque[tuple[float, bytes]]] = {
        fd_b: collections.deque(),
        fd_a: collections.deque(),
    }
    peer = {fd_a: fd_b, fd_b: fd_a}
    while True:
        now = time.monotonic()
        for out, q in queues.items():
            while q and q[0][0] <= now:
                try:
                    os.write(out, q.popleft()[1])
                except BlockingIOError:
                    break
                except OSError:
                    # The device is not up yet (EIO): drop the packet, as a real link would.
                    continue
        due = [q[0][0] for q in queues.values() if q]
        timeout = max(0.0, min(due) - time.monotonic()) if due else 1.0
        readable, _, _ = select.select([fd_a, fd_b], [], [], timeout)
        stamp = time.monotonic() + delay
        for fd in readable:
            q = queues[peer[fd]]
            for _ in range(256):
                try:
                    q.append((stamp, os.read(fd, 65536)))
                except BlockingIOError:
                    break


def main(argv: list[str]) -> int:
    dev_a, dev_b, delay_ms = argv[0], argv[1], float(argv[2])
    fd_a, fd_b = open_tun(dev_a), open_tun(dev_b)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    forward(fd_a, fd_b, delay_ms / 1000.0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
