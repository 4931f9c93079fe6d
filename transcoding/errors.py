"""The transcoding layer's one exception tree.

::

    TranscodingError
    ├── NoCodec            no installed codec can encode/decode this syntax (HTTP 406)
    ├── CorruptPixelData   the stored stream does not decode / headers lie (per-instance failure)
    ├── WorkerCrashed      a codec worker process died; the pool was rebuilt (HTTP 503 / retry)
    │   └── JobTimedOut    a job ran past job_timeout; the pool's workers were killed (HTTP 503)
    ├── FrameNotFound      a requested frame number is not in 1..NumberOfFrames (HTTP 404)
    └── BadRenderParams    a rendering parameter (window, viewport) is invalid (HTTP 400)
"""

from __future__ import annotations


class TranscodingError(Exception):
    """Base of every error the transcoding layer raises."""


class NoCodec(TranscodingError):
    """No codec can produce (or read) the requested transfer syntax / media type."""


class CorruptPixelData(TranscodingError):
    """The pixel data cannot be decoded as its header describes."""


class WorkerCrashed(TranscodingError):
    """A worker process died (e.g. a codec segfault) while handling this request."""


class JobTimedOut(WorkerCrashed):
    """A job ran longer than ``TranscodingSettings.job_timeout`` (a hung or runaway codec);
    its worker was killed. A WorkerCrashed, so it answers 503 with Retry-After like one."""


class FrameNotFound(TranscodingError, IndexError):
    """A requested frame number is outside 1..NumberOfFrames (HTTP 404 / 400)."""


class BadRenderParams(TranscodingError, ValueError):
    """A rendering request parameter is invalid, e.g. a window width below 1 (PS3.18 §8.3.5.1)."""
