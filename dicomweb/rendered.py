"""WADO-RS rendered and thumbnail resources (PS3.18 §10.4.1.1.3, §10.4.1.1.6, §8.3.5.1).

Rendered images are consumer formats (image/jpeg default, image/png, image/gif). At the study
and series level arca renders one representative instance (the middle one of the first
series with pixel data) instead of every instance: viewers ask those levels only for
previews. Thumbnails are the same rendering fitted into THUMBNAIL_SIZE (or the viewport
the client names).

Every rendering is cached in the transcoder's rendition cache under a key made of the
instance's SHA-256 and everything that changes the output (media type, quality, viewport,
window, frame, pipeline version: ``transcoding.service.render_cache_key``), so an identical
request is answered without decoding or encoding. Instance- and frame-level renderings carry
a strong ETag from the same key and answer ``If-None-Match`` with 304
(:mod:`dicomweb.http_caching`); study and series renderings do not, since a new instance may
change which one represents them.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from dicomweb.errors import HttpError
from dicomweb.frames import parse_frame_list
from dicomweb.http_caching import caching_headers, etag_for, not_modified
from dicomweb.media import NotAcceptable, negotiate_rendered, parse_accept
from dicomweb.resources import ResourcePath, source_of
from storage.archive import ArchiveService
from storage.model import InstanceLocation
from transcoding.service import RenderParams, TranscoderService, render_cache_key

THUMBNAIL_SIZE = (128, 128)
_WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def parse_render_params(query: dict[str, str], media_type: str) -> RenderParams:
    """PS3.18 §8.3.5.1: ``window=center,width,function``, ``viewport=vw,vh[,...]``,
    ``quality=1..100``; malformed values answer 400 saying which."""
    window = None
    if "window" in query:
        parts = [p.strip() for p in query["window"].split(",")]
        try:
            if len(parts) not in (2, 3):
                raise ValueError
            center, width = float(parts[0]), float(parts[1])
        except ValueError:
            raise HttpError(400, "window must be center,width[,function]") from None
        function = parts[2].upper() if len(parts) == 3 else "LINEAR"
        if function not in _WINDOW_FUNCTIONS or width <= 0:
            raise HttpError(
                400, f"window function must be one of {', '.join(_WINDOW_FUNCTIONS)} and width > 0"
            )
        window = (center, width, function)
    viewport = None
    if "viewport" in query:
        parts = [p.strip() for p in query["viewport"].split(",")]
        try:
            vw, vh = int(parts[0]), int(parts[1])
        except (ValueError, IndexError):
            raise HttpError(400, "viewport must be vw,vh (positive integers)") from None
        if not (0 < vw <= 8192 and 0 < vh <= 8192):
            raise HttpError(400, "viewport must be vw,vh between 1 and 8192")
        viewport = (vw, vh)
    quality = None
    if "quality" in query:
        try:
            quality = int(query["quality"])
        except ValueError:
            raise HttpError(400, "quality must be an integer 1..100") from None
        if not 1 <= quality <= 100:
            raise HttpError(400, "quality must be an integer 1..100")
    return RenderParams(media_type=media_type, quality=quality, viewport=viewport, window=window)


def _representative(locations: list[InstanceLocation]) -> InstanceLocation:
    with_pixels = [loc for loc in locations if loc.number_of_frames > 0]
    if not with_pixels:
        raise NotAcceptable("nothing here has pixel data to render")
    first_series = [loc for loc in with_pixels if loc.series_uid == with_pixels[0].series_uid]
    return first_series[len(first_series) // 2]


class RenderedService:
    """Rendered and thumbnail endpoints (need the transcoder)."""

    def __init__(self, archive: ArchiveService, transcoder: TranscoderService | None) -> None:
        self.archive = archive
        self.transcoder = transcoder

    async def rendered(self, request: Request) -> Response:
        return await self._render(request, thumbnail=False)

    async def thumbnail(self, request: Request) -> Response:
        return await self._render(request, thumbnail=True)

    async def _render(self, request: Request, *, thumbnail: bool) -> Response:
        path = ResourcePath.of(request)
        query = dict(request.query_params)
        # PS3.18 §8.3.3.1: an ``accept`` query parameter overrides the Accept header.
        accept = query.pop("accept", None) or request.headers.get("accept")
        media_type = negotiate_rendered(parse_accept(accept))
        params = parse_render_params(query, media_type)
        if thumbnail:
            viewport = params.viewport or THUMBNAIL_SIZE
            params = RenderParams(media_type, params.quality, viewport, params.window)
        locations = await self.archive.locate(path.study, path.series, path.instance)
        loc = _representative(locations)
        frame: int | None = None
        if "frames" in request.path_params:
            numbers = parse_frame_list(request.path_params["frames"], loc.number_of_frames)
            if len(numbers) != 1:
                raise HttpError(400, "a rendered frame resource names exactly one frame")
            frame = numbers[0]
        elif thumbnail and loc.number_of_frames > 1:
            frame = (loc.number_of_frames + 1) // 2
        if self.transcoder is None:
            raise NotAcceptable("rendering needs the transcoder, which is not configured")
        key = render_cache_key(loc.sha256, frame, params)
        headers: dict[str, str] = {}
        if path.instance is not None:
            headers = caching_headers(etag_for("rendered", key))
            unchanged = not_modified(request, headers["ETag"])
            if unchanged is not None:
                return unchanged
        image = await self.transcoder.cached(key, media_type)
        if image is None:
            source = await source_of(self.archive, loc)
            image = await self.transcoder.render(source, frame, params, cache_key=key)
        return Response(image, media_type=media_type, headers=headers)
