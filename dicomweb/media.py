"""HTTP media types for DICOMweb: tolerant Accept / Content-Type parsing and negotiation.

Real clients differ in how they spell the same request (PS3.18 §8.7):

- dicomweb-client: ``multipart/related; type="application/dicom"; transfer-syntax=1.2.840...``
  and, for frames, ``multipart/related; type="*/*"``;
- OHIF: ``multipart/related; type=application/octet-stream; transfer-syntax=*`` (unquoted);
- curl / browsers: ``*/*`` or no Accept at all.

Everything here is pure (no I/O) so it is unit-tested with those header strings verbatim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from conformance.transfer_syntaxes import (
    DEFAULT_SYNTAX_FOR_MEDIA_TYPE,
    EXPLICIT_VR_LITTLE_ENDIAN,
    TRANSFER_SYNTAXES,
    is_native,
)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
MULTIPART_RELATED = "multipart/related"
RENDERED_TYPES = ("image/jpeg", "image/png", "image/gif")
ANY_SYNTAX = "*"


class NotAcceptable(Exception):
    """No representation the client accepts can be produced (HTTP 406); says why."""


class UnsupportedMediaType(Exception):
    """A request body of a media type the resource does not take (HTTP 415)."""


class MalformedContentType(ValueError):
    """A Content-Type of the right type whose parameters are unusable (HTTP 400)."""


@dataclass(frozen=True)
class MediaRange:
    """One comma-separated element of an Accept header (RFC 9110 §12.5.1)."""

    type: str
    """``type/subtype`` in lower case; ``*/*`` and ``type/*`` allowed."""
    params: tuple[tuple[str, str], ...] = ()
    """Parameters other than q, names lower-cased, values unquoted."""
    q: float = 1.0

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None

    @property
    def is_multipart(self) -> bool:
        return self.type in (MULTIPART_RELATED, "multipart/*")

    @property
    def part_type(self) -> str | None:
        """The ``type`` parameter of a multipart range (lower case), None when absent."""
        value = self.param("type")
        return value.lower() if value is not None else None

    @property
    def transfer_syntaxes(self) -> tuple[str, ...]:
        """``transfer-syntax`` values; some clients send a comma list inside quotes."""
        value = self.param("transfer-syntax")
        if value is None:
            return ()
        return tuple(v.strip() for v in value.split(",") if v.strip())


def split_outside_quotes(text: str, sep: str) -> list[str]:
    pieces: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            current.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            current.append(ch)
        elif ch == sep and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(ch)
    pieces.append("".join(current))
    return pieces


def unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def parse_media_type(text: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; a=b; c="d"`` → (lower-cased type, {name: unquoted value})."""
    pieces = split_outside_quotes(text, ";")
    media_type = pieces[0].strip().lower()
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        name, eq, value = piece.partition("=")
        if not eq or not name.strip():
            continue
        params[name.strip().lower()] = unquote(value)
    return media_type, params


def parse_accept(header: str | None) -> list[MediaRange]:
    """Parse an Accept header into media ranges, best first (q descending, stable).

    An absent or empty header means ``*/*`` (RFC 9110 §12.5.1). Ranges with q=0 are dropped;
    unparseable q-values count as 1 rather than failing the request.
    """
    if header is None or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[MediaRange] = []
    # A range's parameters follow ';' and ranges are separated by ','; a quoted
    # transfer-syntax list may itself contain commas, hence the quote-aware split.
    for element in split_outside_quotes(header, ","):
        if not element.strip():
            continue
        media_type, params = parse_media_type(element)
        if "/" not in media_type:
            media_type = "*/*" if media_type == "*" else media_type
            if "/" not in media_type:
                continue
        q = 1.0
        if "q" in params:
            try:
                q = max(0.0, min(1.0, float(params.pop("q"))))
            except ValueError:
                q = 1.0
        if q == 0.0:
            continue
        ranges.append(MediaRange(media_type, tuple(params.items()), q))
    ranges.sort(key=lambda r: -r.q)
    return ranges


def type_matches(pattern: str, media_type: str) -> bool:
    """Does a media range (``*/*``, ``image/*``, exact) cover ``media_type``?"""
    if pattern in ("*/*", "*"):
        return True
    if pattern.endswith("/*"):
        return media_type.startswith(pattern[:-1])
    return pattern == media_type


# --------------------------------------------------------------------------------------------
# Instances (application/dicom)


@dataclass(frozen=True)
class DicomAcceptance:
    """What a retrieve of instances may answer with (PS3.18 §8.7.3.5 / §10.4.1.1)."""

    multipart: bool
    any_syntax: bool
    syntaxes: tuple[str, ...] = ()
    """Acceptable transfer syntaxes, client's preference first (meaningless if any_syntax)."""

    def accepts(self, transfer_syntax: str) -> bool:
        return self.any_syntax or transfer_syntax in self.syntaxes

    def target_for(self, stored: str, can_encode: Callable[[str], bool]) -> str | None:
        """The syntax to send an instance stored in ``stored`` in: the stored one when it is
        acceptable (no work, bytes unchanged), else the first acceptable one a codec can
        produce, else None (406 / skip)."""
        if self.accepts(stored):
            return stored
        for uid in self.syntaxes:
            if uid in TRANSFER_SYNTAXES and can_encode(uid):
                return uid
        return None


def negotiate_dicom(ranges: Iterable[MediaRange], *, single_part_ok: bool) -> DicomAcceptance:
    """Choose how to send instances.

    Transfer syntax policy (decided here, once):

    - ``transfer-syntax=*`` accepts any syntax: the stored bytes are sent unchanged
      (PS3.18 §8.7.5 lets the client leave the choice to the origin server).
    - No ``transfer-syntax`` parameter: PS3.18 §8.7.3.5.2 names Explicit VR Little Endian as
      the default of application/dicom. arca still sends the stored bytes unchanged: every
      client in the field (dicomweb-client, OHIF, DCMTK-based tools) omits the parameter and
      expects the archived object, a silent decompression would multiply bytes on the wire
      and CPU per request, and a lossy object cannot become lossless anyway. A client that
      needs Explicit VR Little Endian says so and gets it transcoded.
    - An explicit list: the stored syntax when it is in the list, otherwise a transcode to
      the first listed syntax a codec can produce.
    """
    any_syntax = False
    syntaxes: list[str] = []
    multipart = False
    matched = False
    for r in ranges:
        if r.is_multipart:
            part = r.part_type or DICOM  # PS3.18 §8.7.4: application/dicom is the default
            if not type_matches(part, DICOM):
                continue
            multipart = True
        elif r.type == DICOM:
            if not single_part_ok:
                continue
        elif r.type in ("*/*", "application/*"):
            multipart = True
        else:
            continue
        matched = True
        listed = r.transfer_syntaxes
        if not listed or ANY_SYNTAX in listed:
            any_syntax = True
        syntaxes.extend(uid for uid in listed if uid != ANY_SYNTAX and uid not in syntaxes)
    if not matched:
        raise NotAcceptable(
            'this resource is sent as multipart/related; type="application/dicom"'
            + (" or application/dicom" if single_part_ok else "")
            + "; the Accept header allows neither"
        )
    return DicomAcceptance(multipart=multipart, any_syntax=any_syntax, syntaxes=tuple(syntaxes))


# --------------------------------------------------------------------------------------------
# Frames and bulk data (PS3.18 §8.7.3.3, Table 8.7.3-5)


@dataclass(frozen=True)
class FrameTarget:
    """How frames of one instance are sent."""

    media_type: str
    """Part media type: application/octet-stream, image/jp2, image/jls, ..."""
    transfer_syntax: str
    """Syntax of the bytes; for native octet-stream Explicit VR Little Endian (or the stored
    native syntax)."""
    transcode: bool
    """False: the stored fragments / bytes are sent as they are."""
    multipart: bool
    multipart_ok: bool = True
    """A multipart body is acceptable too (wildcard ranges such as ``*/*`` allow both)."""


@dataclass(frozen=True)
class _FrameOption:
    media_type: str
    syntax: str | None
    """An explicit transfer-syntax UID; None when absent or '*'."""
    star: bool
    """``transfer-syntax=*`` was given."""
    multipart: bool


def _frame_options(ranges: Iterable[MediaRange]) -> list[_FrameOption]:
    options: list[_FrameOption] = []
    for r in ranges:
        if r.is_multipart:
            media_type, multipart = r.part_type or OCTET_STREAM, True
        else:
            media_type, multipart = r.type, False
        for uid in r.transfer_syntaxes or ("",):
            star = uid == ANY_SYNTAX
            syntax = None if star or not uid else uid
            options.append(_FrameOption(media_type, syntax, star, multipart))
    return options


def _multipart_ok(opt: _FrameOption) -> bool:
    return opt.multipart or opt.media_type in ("*/*", "*")


def _stored_fits(opt: _FrameOption, stored_syntax: str, stored_media: str) -> bool:
    """May frames stored in ``stored_syntax`` be sent unchanged for this option?"""
    native = is_native(stored_syntax)
    # Frames of any native little endian syntax are the same bytes: pixel data is little
    # endian in both implicit and explicit VR.
    same_frames = native and opt.syntax == EXPLICIT_VR_LITTLE_ENDIAN
    if opt.syntax is not None and opt.syntax != stored_syntax and not same_frames:
        return False
    if type_matches(opt.media_type, stored_media):
        return True
    # application/octet-stream carries native pixels; OHIF asks for compressed frames with
    # ``type=application/octet-stream; transfer-syntax=*`` and gets the stored bitstream.
    return opt.media_type == OCTET_STREAM and (opt.star or opt.syntax == stored_syntax)


def negotiate_frames(
    ranges: Iterable[MediaRange],
    stored_syntax: str,
    can_encode: Callable[[str], bool] | None,
) -> FrameTarget:
    """Choose the media type and syntax of frames of an instance stored in ``stored_syntax``.

    Stored bytes unchanged win whenever some range allows them (PS3.18 §8.7.3.5 Table
    8.7.3-5): the stored syntax's own media type (image/jp2 for JPEG 2000, ...),
    ``application/octet-stream`` with ``transfer-syntax=*`` (OHIF) or the stored syntax named,
    and wildcard types (``*/*``, ``type="*/*"`` from dicomweb-client). A concrete media type
    without a transfer-syntax parameter accepts the stored syntax of that media type.
    Otherwise the first range a codec can produce, native pixels (octet-stream, Explicit VR
    Little Endian) included. ``can_encode`` None means there is no transcoder.
    """
    options = _frame_options(ranges)
    stored = TRANSFER_SYNTAXES.get(stored_syntax)
    stored_media = stored.frame_media_type if stored else OCTET_STREAM
    native = is_native(stored_syntax)
    for opt in options:
        if _stored_fits(opt, stored_syntax, stored_media):
            media_type = OCTET_STREAM if opt.media_type == OCTET_STREAM else stored_media
            syntax = EXPLICIT_VR_LITTLE_ENDIAN if native else stored_syntax
            return FrameTarget(media_type, syntax, False, opt.multipart, _multipart_ok(opt))
    reason = f"frames are stored as {stored_media} (transfer syntax {stored_syntax})"
    if can_encode is None:
        raise NotAcceptable(reason + " and no transcoder is configured to convert them")
    for opt in options:
        media_type = opt.media_type
        if "*" in media_type:
            media_type = OCTET_STREAM if media_type in ("*/*", "application/*") else media_type
        if media_type == OCTET_STREAM and opt.syntax in (None, EXPLICIT_VR_LITTLE_ENDIAN):
            return FrameTarget(
                OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, True, opt.multipart, _multipart_ok(opt)
            )
        wanted = opt.syntax or DEFAULT_SYNTAX_FOR_MEDIA_TYPE.get(media_type, "")
        ts = TRANSFER_SYNTAXES.get(wanted)
        if ts is None or ts.frame_media_type != media_type or not can_encode(ts.uid):
            continue
        return FrameTarget(media_type, ts.uid, True, opt.multipart, _multipart_ok(opt))
    raise NotAcceptable(reason + "; no acceptable media type can be produced from them")


def accepts_octet_stream(ranges: Iterable[MediaRange]) -> bool:
    """Bulk data (PS3.18 §8.7.3.3): application/octet-stream, single or multipart."""
    return any(
        type_matches((r.part_type or OCTET_STREAM) if r.is_multipart else r.type, OCTET_STREAM)
        for r in ranges
    )


# --------------------------------------------------------------------------------------------
# Metadata, search results, rendered


@dataclass(frozen=True)
class MetadataChoice:
    media_type: str
    """application/dicom+json (also answered for application/json) or application/dicom+xml."""
    multipart: bool = False


def negotiate_metadata(ranges: Iterable[MediaRange], *, xml_ok: bool = True) -> MetadataChoice:
    """DICOM JSON by default; Native DICOM Model XML as multipart/related (PS3.18 §8.7.4)."""
    for r in ranges:
        if r.is_multipart:
            if xml_ok and type_matches(r.part_type or "", DICOM_XML):
                return MetadataChoice(DICOM_XML, multipart=True)
            continue
        if r.type in (DICOM_JSON, JSON) or type_matches(r.type, DICOM_JSON):
            return MetadataChoice(DICOM_JSON)
        if xml_ok and r.type == DICOM_XML:
            # Not in PS3.18 for QIDO/metadata (XML comes multipart), but unambiguous.
            return MetadataChoice(DICOM_XML, multipart=False)
    raise NotAcceptable(
        "this resource is available as application/dicom+json (or application/json)"
        + (' and multipart/related; type="application/dicom+xml"' if xml_ok else "")
        + "; the Accept header allows neither"
    )


def negotiate_rendered(ranges: Iterable[MediaRange]) -> str:
    """PS3.18 §8.7.4 Table 8.7.4-1: rendered images as image/jpeg (default), png or gif."""
    for r in ranges:
        if r.is_multipart:
            continue
        for media_type in RENDERED_TYPES:
            if type_matches(r.type, media_type):
                return media_type
    raise NotAcceptable("rendered resources are image/jpeg, image/png or image/gif")


@dataclass(frozen=True)
class StowContentType:
    """A STOW-RS request body's Content-Type (PS3.18 §10.5.1.1)."""

    boundary: str
    part_type: str
    params: dict[str, str] = field(default_factory=dict)


def parse_stow_content_type(header: str | None) -> StowContentType:
    """Accept ``multipart/related; type="application/dicom"; boundary=...`` in any spelling.

    PS3.18 §10.5.1.1: STOW-RS takes multipart/related of application/dicom (the metadata +
    bulk data form is not supported here). A missing ``type`` is read as application/dicom.
    """
    if not header:
        raise UnsupportedMediaType(
            'no Content-Type: expected multipart/related; type="application/dicom"'
        )
    media_type, params = parse_media_type(header)
    if media_type != MULTIPART_RELATED:
        raise UnsupportedMediaType(
            f"Content-Type {media_type} is not supported: send multipart/related; "
            'type="application/dicom"'
        )
    part_type = (params.get("type") or DICOM).lower()
    if part_type != DICOM:
        raise UnsupportedMediaType(
            f'multipart/related; type="{part_type}" is not supported: only '
            'type="application/dicom" parts are accepted'
        )
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise MalformedContentType("multipart/related without a usable boundary parameter")
    return StowContentType(boundary=boundary, part_type=part_type, params=params)
