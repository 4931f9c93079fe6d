"""Who may associate and what they may ask (dimse.ae_policy) against real peers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE

from config.settings import DimseSettings, RemoteAE
from dimse.ae_policy import AePolicy, Operation
from tests.data import ct_series
from tests.dimse.dicom_tools import dcmtk, qido
from tests.dimse.harness import Node

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """accept_unknown_calling_aes = never; KNOWN may do everything, VIEWONLY nothing; at most
    two associations at once."""
    remote = (
        RemoteAE("KNOWN", "127.0.0.1", 104),
        RemoteAE(
            "VIEWONLY", "127.0.0.1", 104, may_store=False, may_query=False, may_retrieve=False
        ),
    )
    node = Node(
        tmp_path_factory.mktemp("policy") / "data",
        remote,
        accept_unknown="never",
        max_associations=2,
    ).start()
    yield node
    node.stop()


def test_unknown_calling_ae_is_rejected_when_policy_is_never(strict: Node) -> None:
    done = dcmtk("echoscu", "-aet", "NOBODY", "-aec", "ARCA", "127.0.0.1", str(strict.dimse_port))
    assert done.returncode != 0
    assert "Rejected Permanent" in done.stderr
    assert "Service User" in done.stderr
    assert "Calling AE Title Not Recognized" in done.stderr


def test_known_calling_ae_is_accepted(strict: Node) -> None:
    done = dcmtk("echoscu", "-aet", "KNOWN", "-aec", "ARCA", "127.0.0.1", str(strict.dimse_port))
    assert done.returncode == 0, done.stderr


def test_wrong_called_ae_title_is_rejected(strict: Node) -> None:
    done = dcmtk("echoscu", "-aet", "KNOWN", "-aec", "NOTARCA", "127.0.0.1", str(strict.dimse_port))
    assert done.returncode != 0
    assert "Called AE Title Not Recognized" in done.stderr


def _associate(node: Node, aet: str, *contexts: str) -> AE:
    ae = AE(ae_title=aet)
    for uid in contexts:
        ae.add_requested_context(uid)
    return ae


def test_known_ae_without_permissions_gets_not_authorized(strict: Node, tmp_path: Path) -> None:
    ae = _associate(
        strict, "VIEWONLY", STUDY_ROOT_FIND, WORKLIST_FIND, CT_IMAGE_STORAGE, STUDY_ROOT_GET
    )
    assoc = ae.associate("127.0.0.1", strict.dimse_port, ae_title="ARCA")
    assert assoc.is_established
    try:
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = ""
        find = [int(s.Status) for s, _ in assoc.send_c_find(ident, STUDY_ROOT_FIND)]
        mwl = Dataset()
        mwl.PatientName = ""
        worklist = [int(s.Status) for s, _ in assoc.send_c_find(mwl, WORKLIST_FIND)]
        series = ct_series(1, tmp_path)
        import pydicom

        ds = pydicom.dcmread(series.paths[0])
        store = int(assoc.send_c_store(ds).Status)
        get_ident = Dataset()
        get_ident.QueryRetrieveLevel = "STUDY"
        get_ident.StudyInstanceUID = series.study_uid
        get = [int(s.Status) for s, _ in assoc.send_c_get(get_ident, STUDY_ROOT_GET)]
    finally:
        assoc.release()
    # PS3.7 C.4.19: Refused, not authorized.
    assert find == [0x0124]
    assert worklist == [0x0124]
    assert store == 0x0124
    assert get[-1] == 0x0124
    assert qido(strict.dicomweb, "instances", SOPInstanceUID=series.sop_instance_uids[0]) == []


@pytest.mark.parametrize(
    ("mode", "peer", "accepted"),
    [
        ("loopback", "127.0.0.1", True),
        ("loopback", "127.8.9.10", True),
        ("loopback", "::1", True),
        ("loopback", "::ffff:127.0.0.1", True),
        ("loopback", "10.0.0.5", False),
        ("loopback", "::ffff:10.0.0.5", False),
        ("never", "127.0.0.1", False),
        ("always", "10.0.0.5", True),
    ],
)
def test_unknown_ae_policy_modes(mode: str, peer: str, accepted: bool) -> None:
    policy = AePolicy(DimseSettings(accept_unknown_calling_aes=mode))
    rejection = policy.check_association("SOMEONE", "ARCA", peer)
    assert (rejection is None) is accepted
    if rejection is not None:
        assert (rejection.result, rejection.source, rejection.reason) == (1, 1, 3)


def test_permissions_and_move_destinations() -> None:
    policy = AePolicy(
        DimseSettings(
            remote_aes=(
                RemoteAE("PACS", "10.0.0.9", 104),
                RemoteAE("READER", "10.0.0.8", 104, may_retrieve=False, move_destination=False),
            )
        )
    )
    # A known AE is accepted from anywhere, an unknown one only over loopback.
    assert policy.check_association("PACS", "ARCA", "10.0.0.9") is None
    assert policy.may("READER", Operation.QUERY)
    assert not policy.may("READER", Operation.RETRIEVE)
    assert policy.move_destination("PACS") is not None
    assert policy.move_destination("READER") is None
    assert policy.move_destination("STRANGER") is None
    with pytest.raises(ValueError, match="always, never or loopback"):
        AePolicy(DimseSettings(accept_unknown_calling_aes="sometimes"))


def test_association_limit(strict: Node) -> None:
    """max_associations = 2: a third concurrent association is rejected-transient, local
    limit exceeded (PS3.8 Table 9-21); once one is released, the next is accepted."""
    ae = _associate(strict, "KNOWN", "1.2.840.10008.1.1")
    held = [ae.associate("127.0.0.1", strict.dimse_port, ae_title="ARCA") for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        done = dcmtk(
            "echoscu", "-aet", "KNOWN", "-aec", "ARCA", "127.0.0.1", str(strict.dimse_port)
        )
        assert done.returncode != 0
        assert "Rejected Transient" in done.stderr
        assert "Local Limit Exceeded" in done.stderr
    finally:
        for assoc in held:
            assoc.release()
    assert strict.dimse is not None
    deadline = time.monotonic() + 10
    while strict.dimse.active_associations and time.monotonic() < deadline:
        time.sleep(0.02)
    done = dcmtk("echoscu", "-aet", "KNOWN", "-aec", "ARCA", "127.0.0.1", str(strict.dimse_port))
    assert done.returncode == 0, done.stderr
