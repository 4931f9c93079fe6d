"""Verification SOP Class SCP: C-ECHO (PS3.4 Annex A, PS3.7 §9.1.5)."""

from __future__ import annotations

from pynetdicom.events import Event

from dimse.status import SUCCESS


def handle_echo(event: Event) -> int:
    """C-ECHO always succeeds on an accepted association (PS3.4 A.4: status 0x0000)."""
    return SUCCESS
