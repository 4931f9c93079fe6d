"""Ingest, part one: read an incoming object once and derive everything the index needs.

:func:`prepare` runs in a worker thread (it reads the file): SHA-256 and size of the bytes as
received, the header parsed once by pydicom with large values deferred, the fatal checks of
:mod:`conformance.validation`, frame spans, the precomputed DICOM JSON metadata (serialized
here, off the index transaction) and each level's matching values; then it fsyncs the file's
data, so committing it later only renames it into the hot tier. It raises
:class:`~storage.errors.IngestRejected` for objects that must not be stored;
:mod:`storage.ingest_commit` then places the blobs and runs one index transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from conformance.attributes import IMAGE, PATIENT, SERIES, STUDY
from conformance.statuses import StowFailure
from conformance.transfer_syntaxes import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    lookup,
)
from conformance.validation import (
    ANY_IDENTITY,
    RequestedIdentity,
    check_identity,
    native_pixel_length,
    uid_text,
)
from storage.errors import IngestRejected, StoreUnavailable
from storage.frames import (
    PixelDataTruncated,
    encapsulated_spans,
    native_spans,
    read_encapsulated_items,
    spans_to_json,
)
from storage.hot import start_writeback, translate_os_error
from storage.metadata import (
    JsonDict,
    dumps,
    instance_json,
    prefix_bulkdata,
    render_unprefixed,
    split_levels,
)
from storage.model import FrameSpan

PIXEL_DATA = 0x7FE0_0010
EXTENDED_OFFSET_TABLE = 0x7FE0_0001
_PIXEL_KEYWORDS = {
    "Rows": 0x0028_0010,
    "Columns": 0x0028_0011,
    "BitsAllocated": 0x0028_0100,
    "BitsStored": 0x0028_0101,
    "HighBit": 0x0028_0102,
    "PixelRepresentation": 0x0028_0103,
    "SamplesPerPixel": 0x0028_0002,
    "PhotometricInterpretation": 0x0028_0004,
    "PlanarConfiguration": 0x0028_0006,
}


@dataclass
class Analysis:
    """Everything ingest learned from one object, ready for the index transaction."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size: int
    sha256: str
    number_of_frames: int
    frames: tuple[FrameSpan, ...] | None
    pixel_attributes: dict[str, int | str]
    metadata_json: str
    """The instance's DICOM JSON (PS3.18 §F.2), BulkDataURIs relative to the base."""
    level_json: dict[str, str]
    """Each level's attributes as DICOM JSON (PATIENT, STUDY, SERIES, IMAGE)."""
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Matching column values per level (PATIENT, STUDY, SERIES, IMAGE)."""
    requests: list[dict[str, str | None]] = field(default_factory=list)
    """RequestAttributesSequence items (series_requests rows)."""
    path: Path | None = None
    """The incoming file (fsync'd by :func:`prepare`), until it is placed or discarded."""

    @property
    def blob_key(self) -> str:
        return f"{self.study_uid}/{self.series_uid}/{self.sop_uid}-{self.sha256[:16]}.dcm"

    @property
    def frames_json(self) -> str | None:
        return None if self.frames is None else json.dumps(spans_to_json(self.frames))

    @property
    def pixel_json(self) -> str:
        return json.dumps(self.pixel_attributes)


def _reject(failure: StowFailure, message: str) -> IngestRejected:
    return IngestRejected(failure, message)


PARSE_IN_MEMORY = 16 * 1024 * 1024
"""Objects up to this size are read once into memory, hashed and parsed from there. pydicom
reading from a file makes hundreds of small seek/read calls per header, and each one lets
another thread take the GIL: with several parts preparing at once the threads spent more
time handing the GIL over than parsing. Larger objects (multi-frame, WSI) are hashed in
chunks and parsed from the file with their large values deferred, as before."""


def _read_for_parsing(path: Path) -> tuple[int, str, Path | io.BytesIO]:
    """Size, SHA-256 and what to parse: the bytes themselves when the object is small."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size <= PARSE_IN_MEMORY:
            # read() sizes its one buffer from the file's size (read(N) would allocate N).
            data = fh.read()
            digest.update(data)
            return len(data), digest.hexdigest(), io.BytesIO(data)
        size = 0
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest(), path


def prepare(
    path: Path,
    *,
    bulkdata_threshold: int,
    bulkdata_base: str,
    requested: RequestedIdentity = ANY_IDENTITY,
) -> Analysis:
    """:func:`analyze` the file, then make its bytes durable where they are (fsync), so the
    commit that follows only renames it. The file stays in place on failure.

    The disk starts writing the file before the analysis (:func:`~storage.hot.start_writeback`)
    and the fsync after it mostly waits for what is left (STOW-RS of 512×512 CT: +2.6% and
    +7% in two interleaved comparisons; identical checkouts differ by up to 8% here)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise StoreUnavailable(f"cannot read the incoming object: {exc}") from exc
    try:
        start_writeback(fd)
        analysis = analyze(
            path,
            bulkdata_threshold=bulkdata_threshold,
            bulkdata_base=bulkdata_base,
            requested=requested,
        )
        try:
            os.fsync(fd)
        except OSError as exc:
            raise translate_os_error(exc, "making the incoming object durable") from exc
    finally:
        os.close(fd)
    analysis.path = path
    return analysis


def analyze(
    path: Path,
    *,
    bulkdata_threshold: int,
    bulkdata_base: str,
    requested: RequestedIdentity = ANY_IDENTITY,
) -> Analysis:
    """Read ``path`` once; raise IngestRejected for objects that must not be stored
    (``requested``: see :func:`conformance.validation.check_identity`)."""
    try:
        size, sha256, source = _read_for_parsing(path)
    except OSError as exc:
        # The spooled file is ours: failing to read it is the archive's problem, not the
        # sender's.
        raise StoreUnavailable(f"cannot read the incoming object: {exc}") from exc
    try:
        # force: a bare data set (no preamble/File Meta, e.g. a C-STORE payload) is accepted.
        ds = dcmread(source, defer_size=max(bulkdata_threshold, 256), force=True)
    except (InvalidDicomError, EOFError, ValueError, struct.error, OSError, KeyError) as exc:
        raise _reject(StowFailure.CANNOT_UNDERSTAND, f"not a DICOM object: {exc}") from exc
    except Exception as exc:  # pydicom raises many types on garbage; all mean "cannot parse"
        raise _reject(StowFailure.CANNOT_UNDERSTAND, f"not a DICOM object: {exc}") from exc
    try:
        return _analyze_dataset(
            path,
            ds,
            size,
            sha256,
            bulkdata_threshold,
            bulkdata_base,
            requested,
        )
    except IngestRejected:
        raise
    except PixelDataTruncated as exc:
        raise _reject(StowFailure.CANNOT_UNDERSTAND, f"truncated: {exc}") from exc
    except Exception as exc:
        raise _reject(StowFailure.CANNOT_UNDERSTAND, f"cannot read the data set: {exc}") from exc


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid:
        return str(uid)
    # A bare data set: pydicom tells how it decoded it.
    if ds.original_encoding[0] is False:
        return (
            EXPLICIT_VR_BIG_ENDIAN if ds.original_encoding[1] is False else ("1.2.840.10008.1.2.1")
        )
    return IMPLICIT_VR_LITTLE_ENDIAN


def _analyze_dataset(
    path: Path,
    ds: Dataset,
    size: int,
    sha256: str,
    threshold: int,
    base: str,
    requested: RequestedIdentity,
) -> Analysis:
    if len(ds) == 0:
        raise _reject(
            StowFailure.CANNOT_UNDERSTAND,
            "not a DICOM object: no data element could be read (not DICOM, or truncated)",
        )
    # The metadata is rendered first, while every element is still raw: the checks below
    # convert what they read, and a converted element renders through pydicom, a raw one
    # from its bytes (storage.json_fast). Should rendering fail, it is done again after the
    # checks, as before, so that the same problem is reported.
    # Pixel Data as read (rendering may convert it; its file position is what _frames needs).
    pixel_data = ds.get_item(PIXEL_DATA, keep_deferred=True)
    rendered: tuple[JsonDict, list[JsonDict]] | None
    try:
        rendered = render_unprefixed(ds, threshold=threshold)
    except Exception:
        rendered = None
    problem = check_identity(ds, requested)
    if problem is not None:
        raise _reject(problem.failure, problem.message)
    # Valid UIDs all four, check_identity says.
    study, series, sop, sop_class = (
        uid_text(ds, tag) or "" for tag in (0x0020_000D, 0x0020_000E, 0x0008_0018, 0x0008_0016)
    )
    ts_uid = _transfer_syntax(ds)
    rendered_meta = None if rendered is None else rendered[0]
    pixel = _pixel_attributes(ds, rendered_meta)
    number_of_frames, frames = _frames(path, ds, ts_uid, size, pixel_data, rendered_meta, pixel)
    if rendered is None:
        metadata = instance_json(
            ds, threshold=threshold, base=base, study=study, series=series, sop=sop
        )
    else:
        metadata, bulk = rendered
        prefix_bulkdata(bulk, base=base, study=study, series=series, sop=sop)
    levels = split_levels(metadata)
    analysis = Analysis(
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        sop_class_uid=sop_class,
        transfer_syntax_uid=ts_uid,
        size=size,
        sha256=sha256,
        number_of_frames=number_of_frames,
        frames=frames,
        pixel_attributes=pixel,
        metadata_json=dumps(metadata),
        level_json={level: dumps(attributes) for level, attributes in levels.items()},
    )
    analysis.columns = _columns(ds, metadata)
    analysis.requests = _requests(ds)
    return analysis


def _frames(
    path: Path,
    ds: Dataset,
    ts_uid: str,
    file_size: int,
    raw: DataElement | RawDataElement | None,
    meta: Rendered | None,
    pixel: dict[str, int | str],
) -> tuple[int, tuple[FrameSpan, ...] | None]:
    """Number of frames and their spans in the file; ``raw``: Pixel Data as read, ``meta``:
    the rendered metadata, ``pixel``: the image pixel attributes read from it."""
    if raw is None:
        return 0, ()
    number_of_frames = max(_int(ds, 0x0028_0008, meta) or 1, 1)
    expected = _expected_native_length(pixel, number_of_frames)
    syntax = lookup(ts_uid)
    encapsulated = syntax.encapsulated if syntax else False
    deflated = ts_uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    if deflated or not isinstance(raw, RawDataElement):
        # Offsets into a deflated stream say nothing about the stored bytes; a converted
        # element has lost its file position. Check the length we can see.
        value = ds.PixelData
        if not encapsulated and expected is not None and len(value) < expected:
            raise PixelDataTruncated(f"Pixel Data holds {len(value)} bytes, needs {expected}")
        return number_of_frames, None
    value_offset = int(raw.value_tell)
    if encapsulated or raw.length == 0xFFFF_FFFF:
        with open(path, "rb") as fp:
            bot, fragments = read_encapsulated_items(fp, value_offset)
        extended = None
        if EXTENDED_OFFSET_TABLE in ds:
            eot = ds[EXTENDED_OFFSET_TABLE].value
            extended = list(struct.unpack(f"<{len(eot) // 8}Q", eot))
        return number_of_frames, encapsulated_spans(bot, fragments, number_of_frames, extended)
    length = int(raw.length)
    if value_offset + length > file_size:
        raise PixelDataTruncated(
            f"Pixel Data claims {length} bytes, the file ends {file_size - value_offset} "
            "bytes after its start"
        )
    if expected is not None and length < expected:
        raise PixelDataTruncated(f"Pixel Data holds {length} bytes, needs {expected}")
    if expected is None or ts_uid == EXPLICIT_VR_BIG_ENDIAN or pixel.get("BitsAllocated") == 1:
        return number_of_frames, None
    return number_of_frames, native_spans(
        value_offset, length, expected // number_of_frames, number_of_frames
    )


def _expected_native_length(pixel: dict[str, int | str], frames: int) -> int | None:
    """:func:`~conformance.validation.native_pixel_length` of the pixel attributes; None
    when Rows, Columns or BitsAllocated is missing."""
    rows, columns, bits = (pixel.get(k) for k in ("Rows", "Columns", "BitsAllocated"))
    samples = pixel.get("SamplesPerPixel", 1)
    if not (
        isinstance(rows, int)
        and isinstance(columns, int)
        and isinstance(bits, int)
        and isinstance(samples, int)
    ):
        return None
    photometric = pixel.get("PhotometricInterpretation", "")
    return native_pixel_length(rows, columns, samples, bits, frames, photometric)


def normalize_pn(value: str | None) -> str | None:
    """Case-folded, accent-free person name for case-insensitive and fuzzy matching.

    Trailing empty components are dropped (``Doe^John^^^`` equals ``Doe^John``, PS3.5 §6.2).
    """
    if value is None:
        return None
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    groups = [group.rstrip("^ ").strip() for group in stripped.upper().split("=")]
    return "=".join(groups).rstrip("=")


_PLAIN_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
_RENDERED_VRS = _PLAIN_TEXT_VRS | {"IS"}
_UNDECIDED = object()
Rendered = dict[str, JsonDict]
"""The instance's rendered DICOM JSON (storage.metadata), by 8-digit hex tag."""


def _rendered_value(meta: Rendered | None, tag: int, kinds: tuple[type, ...]) -> Any:
    """The one value of a plain element as its DICOM JSON holds it (None for an empty or
    absent element), or _UNDECIDED when only pydicom can say exactly what :func:`_text` /
    :func:`_int` would: several values (or person names with several component groups),
    other VRs. The JSON was rendered from
    the same converted element (often memoized), so reading it costs no second conversion."""
    if meta is None:
        return _UNDECIDED
    item = meta.get(f"{tag:08X}")
    if item is None:
        return _UNDECIDED
    vr = item.get("vr")
    values = item.get("Value")
    if vr == "PN" and kinds == (str,):
        # One name of one component group: str(PersonName) is that group ("=" joins them).
        if values is None:
            return None
        if len(values) != 1 or not isinstance(values[0], dict):
            return _UNDECIDED
        groups = values[0]
        alphabetic = groups.get("Alphabetic")
        return alphabetic if len(groups) == 1 and type(alphabetic) is str else _UNDECIDED
    if vr not in _RENDERED_VRS:
        return _UNDECIDED
    if values is None:
        return None if "BulkDataURI" not in item and "InlineBinary" not in item else _UNDECIDED
    if len(values) == 1 and type(values[0]) in kinds:
        return values[0]
    return _UNDECIDED


def _pixel_attributes(ds: Dataset, meta: Rendered | None) -> dict[str, int | str]:
    """The image pixel attributes the object has (for the index and the frame spans), read
    from the rendered metadata where it holds them plainly."""
    pixel: dict[str, int | str] = {}
    for keyword, tag in _PIXEL_KEYWORDS.items():
        value: Any = _UNDECIDED if meta is None else _pixel_value(meta, tag)
        if value is _UNDECIDED:
            value = ds.get(keyword)
        if value is not None and value != "":
            pixel[keyword] = value if isinstance(value, str) else int(value)
    return pixel


def _pixel_value(meta: Rendered, tag: int) -> Any:
    """What ``ds.get(keyword)`` gives for an image pixel attribute (None when absent), read
    from the rendered metadata when it holds one int (US, SS) or one string (CS), else
    _UNDECIDED."""
    item = meta.get(f"{tag:08X}")
    if item is None:
        return None
    values = item.get("Value")
    if values is None or len(values) != 1:
        return _UNDECIDED
    value = values[0]
    if (item["vr"] in ("US", "SS") and type(value) is int) or (
        item["vr"] == "CS" and type(value) is str
    ):
        return value
    return _UNDECIDED


def _text(ds: Dataset, tag: int, meta: Rendered | None = None) -> str | None:
    known = _rendered_value(meta, tag, (str,))
    if known is not _UNDECIDED:
        return None if known is None else str(known).strip()
    elem = ds.get(tag)
    if elem is None or elem.value is None or elem.value == "":
        return None
    value = elem.value
    if elem.VM > 1:
        value = "\\".join(str(v) for v in value)
    return str(value).strip()


_INT32 = 2**31 - 1


def _int(ds: Dataset, tag: int, meta: Rendered | None = None) -> int | None:
    """An IS value as an int for the index; None when absent, malformed or out of range."""
    known = _rendered_value(meta, tag, (int,))
    if known is None or (isinstance(known, int) and not isinstance(known, bool)):
        return known if known is None or -_INT32 <= known <= _INT32 else None
    elem = ds.get(tag)
    try:
        value = int(elem.value) if elem is not None and elem.value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and -_INT32 <= value <= _INT32 else None


def _date(ds: Dataset, tag: int, meta: Rendered | None = None) -> str | None:
    """DA as YYYYMMDD; the ACR-NEMA form YYYY.MM.DD is accepted (PS3.5 §6.2 note)."""
    value = _text(ds, tag, meta)
    if not value:
        return None
    digits = value.replace(".", "")
    return digits if len(digits) == 8 and digits.isdigit() else None


def normalize_time(value: str, *, upper: bool = False) -> str:
    """TM as 12 digits HHMMSSFFFFFF for lexicographic range matching on any collation.

    Missing trailing parts are filled with zeros, or for the upper bound of a range with
    nines, so ``-12`` includes 12:59 (PS3.4 C.2.2.2.5: a range includes the partial value).
    """
    core = value.strip().replace(":", "")
    whole, _, fraction = core.partition(".")
    fill = "9" if upper else "0"
    whole = whole[:6].ljust(6, fill)
    fraction = fraction[:6].ljust(6, fill)
    return whole + fraction


def normalize_datetime(value: str, *, upper: bool = False) -> str:
    """DT as 20 digits YYYYMMDDHHMMSSFFFFFF; the UTC offset is ignored (stored as sent)."""
    core = value.strip()
    for sign in ("+", "-"):
        if sign in core[4:]:
            core = core[: 4 + core[4:].index(sign)]
    whole, _, fraction = core.partition(".")
    fill = "9" if upper else "0"
    date_fill = {4: "1231" if upper else "0101", 6: "31" if upper else "01"}
    whole = whole + date_fill.get(len(whole), "")
    return whole[:14].ljust(14, fill) + fraction[:6].ljust(6, fill)


def _time(ds: Dataset, tag: int, meta: Rendered | None = None) -> str | None:
    value = _text(ds, tag, meta)
    if not value:
        return None
    normalized = normalize_time(value)
    return normalized if normalized.isdigit() else None


def _datetime(ds: Dataset, tag: int, meta: Rendered | None = None) -> str | None:
    value = _text(ds, tag, meta)
    if not value:
        return None
    normalized = normalize_datetime(value)
    return normalized if normalized.isdigit() else None


def _columns(ds: Dataset, meta: Rendered | None = None) -> dict[str, dict[str, Any]]:
    patient_name = _text(ds, 0x0010_0010, meta)
    referring = _text(ds, 0x0008_0090, meta)
    return {
        PATIENT: {
            "patient_id": _text(ds, 0x0010_0020, meta) or "",
            "issuer_of_patient_id": _text(ds, 0x0010_0021, meta) or "",
            "patient_name": patient_name,
            "patient_name_norm": normalize_pn(patient_name),
            "patient_birth_date": _date(ds, 0x0010_0030, meta),
            "patient_sex": _text(ds, 0x0010_0040, meta),
        },
        STUDY: {
            "patient_id": _text(ds, 0x0010_0020, meta),
            "patient_name": patient_name,
            "patient_name_norm": normalize_pn(patient_name),
            "patient_birth_date": _date(ds, 0x0010_0030, meta),
            "patient_sex": _text(ds, 0x0010_0040, meta),
            "study_date": _date(ds, 0x0008_0020, meta),
            "study_time": _time(ds, 0x0008_0030, meta),
            "accession_number": _text(ds, 0x0008_0050, meta),
            "study_id": _text(ds, 0x0020_0010, meta),
            "referring_physician_name": referring,
            "referring_physician_name_norm": normalize_pn(referring),
            "study_description": _text(ds, 0x0008_1030, meta),
        },
        SERIES: {
            "modality": _text(ds, 0x0008_0060, meta),
            "series_number": _int(ds, 0x0020_0011, meta),
            "series_description": _text(ds, 0x0008_103E, meta),
            "series_date": _date(ds, 0x0008_0021, meta),
            "series_time": _time(ds, 0x0008_0031, meta),
            "body_part_examined": _text(ds, 0x0018_0015, meta),
            "pps_start_date": _date(ds, 0x0040_0244, meta),
            "pps_start_time": _time(ds, 0x0040_0245, meta),
        },
        IMAGE: {
            "instance_number": _int(ds, 0x0020_0013, meta),
            "content_date": _date(ds, 0x0008_0023, meta),
            "content_time": _time(ds, 0x0008_0033, meta),
            "acquisition_datetime": _datetime(ds, 0x0008_002A, meta),
        },
    }


def _requests(ds: Dataset) -> list[dict[str, str | None]]:
    elem = ds.get(0x0040_0275)
    if elem is None or elem.VR != "SQ" or not elem.value:
        return []
    return [
        {
            "requested_procedure_id": _text(item, 0x0040_1001),
            "scheduled_procedure_step_id": _text(item, 0x0040_0009),
            "accession_number": _text(item, 0x0008_0050),
        }
        for item in elem.value
    ]


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
