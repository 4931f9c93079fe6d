"""What every WADO-RS handler needs: the addressed resource from the path, the transcoder's
abilities, and turning a stored instance into a transcoder source."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request

from dicomweb.errors import check_uid
from storage.archive import ArchiveService
from storage.model import InstanceLocation
from transcoding.service import Source, TranscoderService


@dataclass(frozen=True)
class ResourcePath:
    """Study / series / instance UIDs of a request path (validated: 400 when malformed)."""

    study: str
    series: str | None = None
    instance: str | None = None

    @classmethod
    def of(cls, request: Request) -> ResourcePath:
        p = request.path_params
        series, instance = p.get("series"), p.get("instance")
        return cls(
            check_uid(p["study"], "StudyInstanceUID"),
            check_uid(series, "SeriesInstanceUID") if series is not None else None,
            check_uid(instance, "SOPInstanceUID") if instance is not None else None,
        )


def encoder_check(transcoder: TranscoderService | None) -> Callable[[str], bool]:
    """``can_encode`` of the transcoder, or always False when there is none."""
    if transcoder is None:
        return lambda _uid: False
    return transcoder.can_encode


async def source_of(archive: ArchiveService, location: InstanceLocation) -> Source:
    """The instance as the transcoder takes it: the hot-tier path (no copy) or its bytes."""
    reader = await archive.open_blob(location)
    try:
        if reader.local_path is not None:
            return reader.local_path
        return await reader.read_all()
    finally:
        await reader.close()
