"""Which Application Entities may associate with arca and what each may ask for.

Decided once per association request (PS3.8 §9.3.4 A-ASSOCIATE-RJ) and once per DIMSE
request (status 0x0124 "Refused: not authorized", PS3.7 C.4.19):

- The called AE title must be arca's own; otherwise the association is rejected
  (rejected-permanent, service-user, "called AE title not recognized").
- A calling AE title listed in ``settings.dimse.remote_aes`` is accepted from any address;
  its ``may_store`` / ``may_query`` / ``may_retrieve`` flags then gate C-STORE, C-FIND
  (Q/R and worklist) and C-MOVE / C-GET. A known AE that lacks a permission keeps its
  association (it may be allowed other services on it) and gets 0x0124 for that request.
- Any other calling AE title is accepted according to ``accept_unknown_calling_aes``:
  ``always``; ``never``; ``loopback`` (default) = only peers connecting from 127.0.0.0/8
  or ::1. Otherwise: rejected-permanent, service-user, "calling AE title not recognized".
  Accepted unknown AEs may store, query and retrieve, but can never be a C-MOVE destination
  (arca only sends to addresses it was configured with).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from config.settings import DimseSettings, RemoteAE


class Operation(enum.Enum):
    STORE = "store"
    QUERY = "query"
    RETRIEVE = "retrieve"


# PS3.8 Table 9-21: A-ASSOCIATE-RJ result / source / reason.
RESULT_REJECTED_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
REASON_CALLING_AE_NOT_RECOGNIZED = 0x03
REASON_CALLED_AE_NOT_RECOGNIZED = 0x07


@dataclass(frozen=True)
class Rejection:
    """Why an association request is refused, as A-ASSOCIATE-RJ parameters."""

    result: int
    source: int
    reason: int
    explanation: str


class AePolicy:
    """The access decisions for one configured DIMSE listener."""

    def __init__(self, settings: DimseSettings) -> None:
        mode = settings.accept_unknown_calling_aes
        if mode not in ("always", "never", "loopback"):
            raise ValueError(
                f"accept_unknown_calling_aes must be always, never or loopback, not {mode!r}"
            )
        self._mode = mode
        self._ae_title = settings.ae_title.strip()
        self._known = {ae.ae_title.strip(): ae for ae in settings.remote_aes}

    def check_association(
        self, calling_ae: str, called_ae: str, peer_host: str | None
    ) -> Rejection | None:
        """None when the association may proceed, else the A-ASSOCIATE-RJ to send."""
        if called_ae.strip() != self._ae_title:
            return Rejection(
                RESULT_REJECTED_PERMANENT,
                SOURCE_SERVICE_USER,
                REASON_CALLED_AE_NOT_RECOGNIZED,
                f"called AE title {called_ae.strip()!r} not recognised",
            )
        if calling_ae.strip() in self._known or self._unknown_allowed(peer_host):
            return None
        return Rejection(
            RESULT_REJECTED_PERMANENT,
            SOURCE_SERVICE_USER,
            REASON_CALLING_AE_NOT_RECOGNIZED,
            f"calling AE title {calling_ae.strip()!r} not recognised",
        )

    def may(self, calling_ae: str, operation: Operation) -> bool:
        """Whether an (already accepted) peer may request ``operation``."""
        known = self._known.get(calling_ae.strip())
        if known is None:
            return True
        if operation is Operation.STORE:
            return known.may_store
        if operation is Operation.QUERY:
            return known.may_query
        return known.may_retrieve

    def move_destination(self, ae_title: str) -> RemoteAE | None:
        """The configured AE a C-MOVE may send to under this title, if any (PS3.4 C.4.2.1.2)."""
        known = self._known.get(ae_title.strip())
        return known if known is not None and known.move_destination else None

    def _unknown_allowed(self, peer_host: str | None) -> bool:
        if self._mode == "always":
            return True
        if self._mode == "never" or not peer_host:
            return False
        try:
            address = ipaddress.ip_address(peer_host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback
