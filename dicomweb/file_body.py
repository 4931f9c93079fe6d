"""A streamed response body made of bytes and open files, the files sent by ASGI's zero-copy
send extension ("http.response.zerocopysend", asgi.readthedocs.io, Extensions).

The server (server.zero_copy under uvicorn) then moves each file from the page cache to the
socket by sendfile(2); the application never reads it. :func:`offers_zero_copy` tells
whether a request's server does; only then may a body iterator yield :class:`OpenFile`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Scope, Send

ZERO_COPY_SEND = "http.response.zerocopysend"


def offers_zero_copy(scope: Scope) -> bool:
    return ZERO_COPY_SEND in (scope.get("extensions") or {})


class OpenFile:
    """``size`` bytes of an open file from offset 0; the response closes the descriptor."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def fileno(self) -> int:
        return self.fd


class FileStreamingResponse(StreamingResponse):
    """StreamingResponse whose iterator may also yield :class:`OpenFile` (see the module)."""

    def __init__(self, content: AsyncIterator[bytes | OpenFile], **kwargs: Any) -> None:
        # stream_response (below) is the only reader of the iterator and takes OpenFile too.
        super().__init__(content, **kwargs)  # type: ignore[arg-type]

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for item in self.body_iterator:
            if isinstance(item, OpenFile):
                try:
                    await send(
                        {
                            "type": ZERO_COPY_SEND,
                            "file": item,
                            "offset": 0,
                            "count": item.size,
                            "more_body": True,
                        }
                    )
                finally:
                    os.close(item.fd)
                continue
            await send({"type": "http.response.body", "body": item, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
