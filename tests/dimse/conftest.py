"""Fixtures for the DIMSE tests: one arca node per module with configured remote AEs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from config.settings import RemoteAE
from tests.conftest import free_port
from tests.dimse.dicom_tools import silent_listener
from tests.dimse.harness import Node


@dataclass(frozen=True)
class Peers:
    dest_port: int
    """storescp may be started here as AE DEST (a configured move destination)."""
    silent_port: int
    """Accepts TCP, never answers (AE SILENT)."""
    dead_port: int
    """Nothing listens (AE DEAD)."""
    gated_port: int
    """A pynetdicom Storage SCP under the test's control may listen here (AE GATED)."""


@pytest.fixture(scope="module")
def peers() -> Iterator[Peers]:
    with silent_listener() as silent:
        yield Peers(
            dest_port=free_port(), silent_port=silent, dead_port=free_port(), gated_port=free_port()
        )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, peers: Peers) -> Iterator[Node]:
    remote = (
        RemoteAE("DEST", "127.0.0.1", peers.dest_port),
        RemoteAE("SILENT", "127.0.0.1", peers.silent_port),
        RemoteAE("DEAD", "127.0.0.1", peers.dead_port),
        RemoteAE("GATED", "127.0.0.1", peers.gated_port),
        RemoteAE("VIEWONLY", "127.0.0.1", 1, may_store=False, may_query=False, may_retrieve=False),
        RemoteAE("NOTDEST", "127.0.0.1", peers.dest_port, move_destination=False),
    )
    node = Node(tmp_path_factory.mktemp("dimse") / "data", remote, network_timeout=3.0).start()
    yield node
    node.stop()
