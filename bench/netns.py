"""The remote-site link: a client network namespace behind 200 Mbit/s with 30 ms round trip.

Made and torn down by the benchmark itself (needs root): namespace ``arcabench<pid>`` and a
point-to-point link with 10.200.0.1/24 on the host side and 10.200.0.2/24 inside. The link is
a pair of TUN devices joined by :mod:`bench.delayline`, which holds every packet 15 ms in each
direction (this kernel has no ``netem`` qdisc, so a veth pair with ``tc … netem delay`` cannot
be made here); a ``tbf rate 200mbit`` qdisc on each device shapes each direction. A round
trip costs 30 ms and TCP sees it (windows, slow start, ACK clocking). The link MTU is 9000
(jumbo frames) so the Python delay line handles a few thousand packets per second at most.
Both archives stay bound to loopback: a ``socat`` relay per server listens on 10.200.0.1 (our
own link address, inside this sandbox)
and forwards to the server's 127.0.0.1 port, so the namespace's client reaches both the same
way and no server listens on anything but loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

HOST_ADDR = "10.200.0.1"
NS_ADDR = "10.200.0.2"
RATE = "200mbit"
ONE_WAY_DELAY_MS = 15
MTU = 9000
LINK_BITS_PER_SECOND = 200e6


class NetnsError(Exception):
    """The namespace could not be made (no root, no ``ip``/``tc``, kernel without netem)."""


def _ip(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(args)}: {done.stderr.strip()}")


def _shape(prefix: list[str], dev: str) -> None:
    # Queue room for one bandwidth-delay product plus slack (200 Mbit/s x 30 ms = 750 KB).
    _ip(
        *prefix,
        "tc",
        "qdisc",
        "add",
        "dev",
        dev,
        "root",
        "tbf",
        "rate",
        RATE,
        "burst",
        "64kb",
        "latency",
        "60ms",
    )


@dataclass
class RemoteSite:
    """A made namespace; ``relay(port)`` exposes a loopback port on the host-side address."""

    name: str
    host_dev: str
    relays: list[subprocess.Popen[bytes]]
    delayline: subprocess.Popen[str] | None = None

    def relay(self, port: int) -> int:
        """Forward a new port on HOST_ADDR to 127.0.0.1:``port``; returns the new port."""
        target = port
        with socket.socket() as s:
            s.bind((HOST_ADDR, 0))
            port = int(s.getsockname()[1])
        proc = subprocess.Popen(
            [
                "socat",
                f"TCP-LISTEN:{port},bind={HOST_ADDR},fork,reuseaddr",
                f"TCP:127.0.0.1:{target},nodelay",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.relays.append(proc)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((HOST_ADDR, port), 0.5):
                return port
            time.sleep(0.05)
        raise NetnsError(f"socat relay on {HOST_ADDR}:{port} did not start")

    def fetch(self, url: str, accept: str, timeout: float = 900) -> dict[str, object]:
        """Run one retrieve with bench.client inside the namespace; its JSON result."""
        env = dict(os.environ, PYTHONPATH=os.getcwd())
        done = subprocess.run(
            ["ip", "netns", "exec", self.name, sys.executable, "-m", "bench.client", url, accept],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        if done.returncode != 0 or not done.stdout.strip():
            return {"ok": False, "error": done.stderr.strip()[-300:]}
        result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    def rtt_ms(self, port: int) -> float:
        """Measured round trip: median TCP connect time (SYN → SYN-ACK) from the namespace."""
        probe = (
            "import socket,statistics,time\n"
            "t=[]\n"
            "for _ in range(5):\n"
            "    s=time.perf_counter()\n"
            f"    c=socket.create_connection(('{HOST_ADDR}',{port}),5)\n"
            "    t.append(time.perf_counter()-s); c.close()\n"
            "print(statistics.median(t)*1000)\n"
        )
        done = subprocess.run(
            ["ip", "netns", "exec", self.name, sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            return float(done.stdout.strip())
        except ValueError:
            return float("nan")


def available() -> str | None:
    """None when a remote site can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    for tool in ("ip", "tc", "socat"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


@contextlib.contextmanager
def remote_site() -> Iterator[RemoteSite]:
    """Make the namespace and link; always tear them down."""
    why = available()
    if why:
        raise NetnsError(why)
    tag = f"{os.getpid() % 100000}"
    ns, host_dev, ns_dev = f"arcabench{tag}", f"abh{tag}", f"abn{tag}"
    site = RemoteSite(ns, host_dev, [])
    try:
        _ip("ip", "netns", "add", ns)
        site.delayline = subprocess.Popen(
            [sys.executable, "-m", "bench.delayline", host_dev, ns_dev, str(ONE_WAY_DELAY_MS)],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=os.getcwd()),
        )
        if site.delayline.stdout is None or site.delayline.stdout.readline().strip() != "ready":
            raise NetnsError("the delay line did not start")
        _ip("ip", "link", "set", ns_dev, "netns", ns)
        _ip("ip", "addr", "add", f"{HOST_ADDR}/24", "dev", host_dev)
        _ip("ip", "link", "set", host_dev, "mtu", str(MTU), "up")
        inside = ["ip", "netns", "exec", ns]
        _ip(*inside, "ip", "addr", "add", f"{NS_ADDR}/24", "dev", ns_dev)
        _ip(*inside, "ip", "link", "set", ns_dev, "mtu", str(MTU), "up")
        _ip(*inside, "ip", "link", "set", "lo", "up")
        _shape([], host_dev)
        _shape(inside, ns_dev)
        yield site
    finally:
        procs: list[subprocess.Popen[bytes] | subprocess.Popen[str]] = list(site.relays)
        if site.delayline is not None:
            procs.append(site.delayline)
        for proc in procs:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        subprocess.run(["ip", "link", "del", host_dev], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
