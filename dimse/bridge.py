"""The one place where pynetdicom's threads call into arca's asyncio core.

pynetdicom runs every association in its own thread; the archive, the worklist store and the
transcoder are coroutines on the server's event loop. :meth:`LoopBridge.run` hands a coroutine
to that loop (``asyncio.run_coroutine_threadsafe``) and waits for its result with a timeout, so
a slow database or codec turns into a DIMSE failure status for one peer instead of a thread
blocked forever; the loop itself never waits on a DIMSE thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class BridgeTimeout(Exception):
    """The event loop did not finish the coroutine within the bridge's timeout."""


class LoopBridge:
    """Runs coroutines on ``loop`` on behalf of pynetdicom's association threads."""

    def __init__(self, loop: asyncio.AbstractEventLoop, default_timeout: float) -> None:
        self._loop = loop
        self.default_timeout = default_timeout

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and return its result (or raise its exception).

        Raises BridgeTimeout when it takes longer than ``timeout`` seconds (the coroutine is
        cancelled), RuntimeError when called from the loop's own thread (that would deadlock).
        """
        if self._loop_thread_is_current():
            coro.close()
            raise RuntimeError("LoopBridge.run called from the event loop's thread")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        limit = self.default_timeout if timeout is None else timeout
        try:
            return future.result(limit)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BridgeTimeout(f"no result from the archive within {limit:g} s") from None
        except concurrent.futures.CancelledError:
            raise BridgeTimeout("the event loop cancelled the operation") from None

    def _loop_thread_is_current(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False
