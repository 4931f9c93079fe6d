"""Fixtures for the transcoding tests: one warm worker pool shared by the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from config.settings import TranscodingSettings
from transcoding.pool import Transcoder


@pytest.fixture(scope="session")
def transcoder() -> Iterator[Transcoder]:
    t = Transcoder(TranscodingSettings(workers=2))
    yield t
    t.close()
