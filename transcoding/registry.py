"""The codec registry: which installed backend decodes / encodes each transfer syntax UID.

Backends are listed in preference order; a backend whose library is not installed is skipped.
glymur is deliberately absent: it wraps the same OpenJPEG (the system's 2.5.0), encodes no
faster than pylibjpeg-openjpeg and adds no syntax (no HTJ2K encoder either) — FIELD-NOTES.
"""

from __future__ import annotations

from functools import cache

from conformance.transfer_syntaxes import TRANSFER_SYNTAXES
from transcoding.backends import Backend
from transcoding.backends.charls import CHARLS
from transcoding.backends.libjpeg import LIBJPEG
from transcoding.backends.openjpeg import OPENJPEG
from transcoding.backends.pillow import PILLOW
from transcoding.backends.pydicom_native import NATIVE, NATIVE_DECODES, NATIVE_ENCODES
from transcoding.errors import NoCodec

BACKENDS: tuple[Backend, ...] = (NATIVE, OPENJPEG, CHARLS, LIBJPEG, PILLOW)


@cache
def _available() -> tuple[Backend, ...]:
    return tuple(b for b in BACKENDS if b.available())


def decoder_for(transfer_syntax_uid: str) -> Backend:
    """The preferred installed backend that decodes ``transfer_syntax_uid``."""
    for backend in _available():
        if transfer_syntax_uid in backend.decodes:
            return backend
    raise NoCodec(f"no installed codec decodes {_name(transfer_syntax_uid)}")


def encoder_for(transfer_syntax_uid: str) -> Backend:
    """The preferred installed backend that encodes ``transfer_syntax_uid``."""
    for backend in _available():
        if transfer_syntax_uid in backend.encodes:
            return backend
    reasons = [
        b.cannot_encode[transfer_syntax_uid]
        for b in BACKENDS
        if transfer_syntax_uid in b.cannot_encode
    ]
    reason = f": {reasons[0]}" if reasons else ""
    raise NoCodec(f"no installed codec encodes {_name(transfer_syntax_uid)}{reason}")


def can_decode(transfer_syntax_uid: str) -> bool:
    return any(transfer_syntax_uid in b.decodes for b in _available())


def can_encode(transfer_syntax_uid: str) -> bool:
    return any(transfer_syntax_uid in b.encodes for b in _available())


def is_native(transfer_syntax_uid: str) -> bool:
    """Native (not encapsulated) pixel data: the frame layout is PS3.5 8.1 / A.1-A.3."""
    return transfer_syntax_uid in NATIVE_DECODES


def is_native_target(transfer_syntax_uid: str) -> bool:
    return transfer_syntax_uid in NATIVE_ENCODES


def _name(transfer_syntax_uid: str) -> str:
    ts = TRANSFER_SYNTAXES.get(transfer_syntax_uid)
    return f"{ts.name} ({ts.uid})" if ts else transfer_syntax_uid
