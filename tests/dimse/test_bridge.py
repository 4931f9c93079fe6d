"""dimse.bridge: the one door from pynetdicom's threads into the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from dimse.bridge import BridgeTimeout, LoopBridge


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_result_and_exception_cross_the_bridge(loop: asyncio.AbstractEventLoop) -> None:
    bridge = LoopBridge(loop, default_timeout=5)

    async def answer() -> int:
        return 42

    async def fail() -> None:
        raise KeyError("boom")

    assert bridge.run(answer()) == 42
    with pytest.raises(KeyError, match="boom"):
        bridge.run(fail())


def test_a_slow_coroutine_times_out_and_is_cancelled(loop: asyncio.AbstractEventLoop) -> None:
    bridge = LoopBridge(loop, default_timeout=5)
    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    started = time.monotonic()
    with pytest.raises(BridgeTimeout):
        bridge.run(slow(), timeout=0.2)
    assert time.monotonic() - started < 2
    assert cancelled.wait(5), "the timed-out coroutine was left running on the loop"


async def test_calling_from_the_loop_thread_is_refused() -> None:
    bridge = LoopBridge(asyncio.get_running_loop(), default_timeout=1)

    async def anything() -> None:
        return None

    with pytest.raises(RuntimeError, match="event loop's thread"):
        bridge.run(anything())
