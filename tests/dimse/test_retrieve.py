"""C-MOVE and C-GET with real peers: DCMTK movescu -> arca -> DCMTK storescp, getscu, and
pynetdicom SCUs where a test needs the exact status and counts."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt

from tests.data import Series, ct_series, multipart_related, small_ct, stow_content_type, uids_of
from tests.dimse.conftest import Peers
from tests.dimse.dicom_tools import dataset_part, dcmtk, storescp, wado_instance
from tests.dimse.harness import Node

STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"


@pytest.fixture(scope="module")
def series(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Series:
    stored = ct_series(4, tmp_path_factory.mktemp("retrieve"), patient_id="RPAT1")
    done = dcmtk(
        "storescu", "-aec", "ARCA", "127.0.0.1", str(node.dimse_port), *map(str, stored.paths)
    )
    assert done.returncode == 0, done.stderr
    return stored


def _series_keys(series: Series) -> list[str]:
    return [
        "-k",
        "QueryRetrieveLevel=SERIES",
        "-k",
        f"StudyInstanceUID={series.study_uid}",
        "-k",
        f"SeriesInstanceUID={series.series_uid}",
    ]


def _received(out_dir: Path) -> dict[str, bytes]:
    """SOPInstanceUID -> bytes of every file a DCMTK receiver wrote."""
    found: dict[str, bytes] = {}
    for path in out_dir.iterdir():
        if path.is_file():
            data = path.read_bytes()
            found[uids_of(data)[2]] = data
    return found


def test_movescu_to_storescp_arrives_byte_for_byte(
    node: Node, peers: Peers, series: Series, tmp_path: Path
) -> None:
    out_dir = tmp_path / "dest"
    with storescp(peers.dest_port, out_dir):
        done = dcmtk(
            "movescu",
            "-S",
            "-aet",
            "MOVESCU",
            "-aec",
            "ARCA",
            "-aem",
            "DEST",
            *_series_keys(series),
            "127.0.0.1",
            str(node.dimse_port),
        )
    assert done.returncode == 0, done.stderr
    received = _received(out_dir)
    assert sorted(received) == sorted(series.sop_instance_uids)
    for sop in series.sop_instance_uids:
        stored = wado_instance(node.dicomweb, series.study_uid, series.series_uid, sop)
        # storescp +B writes the data set exactly as it came off the wire: the archive's
        # bytes, not a re-encoding.
        assert dataset_part(received[sop]) == dataset_part(stored)


def test_getscu_receives_the_series(node: Node, series: Series, tmp_path: Path) -> None:
    out_dir = tmp_path / "get"
    out_dir.mkdir()
    done = dcmtk(
        "getscu",
        "-S",
        "-aet",
        "GETSCU",
        "-aec",
        "ARCA",
        *_series_keys(series),
        "-od",
        str(out_dir),
        "127.0.0.1",
        str(node.dimse_port),
    )
    assert done.returncode == 0, done.stderr
    received = _received(out_dir)
    assert sorted(received) == sorted(series.sop_instance_uids)
    for path in series.paths:
        original = pydicom.dcmread(path)
        got = pydicom.dcmread(__import__("io").BytesIO(received[str(original.SOPInstanceUID)]))
        assert got.PixelData == original.PixelData


def _move(node: Node, destination: str, ident: Dataset, *, aet: str = "MOVESCU") -> list[Dataset]:
    ae = AE(ae_title=aet)
    ae.add_requested_context(STUDY_ROOT_MOVE)
    assoc = ae.associate("127.0.0.1", node.dimse_port, ae_title="ARCA")
    assert assoc.is_established
    statuses = [status for status, _ in assoc.send_c_move(ident, destination, STUDY_ROOT_MOVE)]
    # The association survives the request, however long it took: released, not aborted.
    assoc.release()
    assert assoc.is_released and not assoc.is_aborted
    return statuses


def _series_identifier(series: Series) -> Dataset:
    ident = Dataset()
    ident.QueryRetrieveLevel = "SERIES"
    ident.StudyInstanceUID = series.study_uid
    ident.SeriesInstanceUID = series.series_uid
    return ident


@pytest.mark.parametrize("destination", ["NOWHERE", "NOTDEST"])
def test_unknown_move_destination(node: Node, series: Series, destination: str) -> None:
    """Not configured, or configured but not a move destination: 0xA801 (PS3.4 C.4.2.1.5)."""
    statuses = _move(node, destination, _series_identifier(series))
    assert [int(s.Status) for s in statuses] == [0xA801]


@pytest.mark.parametrize("destination", ["SILENT", "DEAD"])
def test_unreachable_destination_fails_with_counts(
    node: Node, series: Series, destination: str
) -> None:
    started = time.monotonic()
    statuses = _move(node, destination, _series_identifier(series))
    elapsed = time.monotonic() - started
    [final] = statuses
    assert int(final.Status) == 0xA702
    assert final.NumberOfFailedSuboperations == len(series)
    assert final.NumberOfCompletedSuboperations == 0
    assert final.NumberOfWarningSuboperations == 0
    # The node's network timeout is 3 s; the silent peer must not hold the request longer.
    assert elapsed < 3.0 * 3


def test_not_authorised_to_retrieve(node: Node, series: Series) -> None:
    statuses = _move(node, "DEST", _series_identifier(series), aet="VIEWONLY")
    assert [int(s.Status) for s in statuses] == [0x0124]


def test_cancel_stops_before_the_next_sub_operation(
    node: Node, peers: Peers, series: Series
) -> None:
    """C-CANCEL-MOVE (PS3.7 §9.3.2.3): the destination holds the second sub-operation until
    the cancel has been sent, so arca must see it before the third."""
    gate = threading.Event()
    received: list[str] = []

    def handle_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        if len(received) > 1:
            gate.wait(10)
        return 0x0000

    dest = AE(ae_title="GATED")
    dest.supported_contexts = StoragePresentationContexts
    server = dest.start_server(
        ("127.0.0.1", peers.gated_port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)]
    )
    try:
        ae = AE(ae_title="MOVESCU")
        ae.add_requested_context(STUDY_ROOT_MOVE)
        assoc = ae.associate("127.0.0.1", node.dimse_port, ae_title="ARCA")
        assert assoc.is_established
        responses = assoc.send_c_move(
            _series_identifier(series), "GATED", STUDY_ROOT_MOVE, msg_id=9
        )
        first, _ = next(responses)
        assert int(first.Status) == 0xFF00
        cx_id = assoc.accepted_contexts[0].context_id
        assoc.send_c_cancel(9, cx_id)
        gate.set()
        rest = [status for status, _ in responses]
        assoc.release()
    finally:
        gate.set()
        server.shutdown()
    final = rest[-1]
    assert int(final.Status) == 0xFE00
    assert final.NumberOfCompletedSuboperations == 2
    assert final.NumberOfRemainingSuboperations == len(series) - 2
    assert len(received) == 2


def test_stowed_instance_is_moved(node: Node, peers: Peers, tmp_path: Path) -> None:
    data = small_ct(patient_id="STOWMOVE")
    study, series_uid, sop = uids_of(data)
    rsp = httpx.post(
        f"{node.dicomweb}/studies",
        content=multipart_related([data]),
        headers={"Content-Type": stow_content_type(), "Accept": "application/dicom+json"},
        timeout=30,
    )
    assert rsp.status_code == 200, rsp.text
    out_dir = tmp_path / "dest"
    with storescp(peers.dest_port, out_dir):
        done = dcmtk(
            "movescu",
            "-S",
            "-aet",
            "MOVESCU",
            "-aec",
            "ARCA",
            "-aem",
            "DEST",
            "-k",
            "QueryRetrieveLevel=IMAGE",
            "-k",
            f"StudyInstanceUID={study}",
            "-k",
            f"SeriesInstanceUID={series_uid}",
            "-k",
            f"SOPInstanceUID={sop}",
            "127.0.0.1",
            str(node.dimse_port),
        )
    assert done.returncode == 0, done.stderr
    received = _received(out_dir)
    assert list(received) == [sop]
    assert dataset_part(received[sop]) == dataset_part(data)


def test_move_transcodes_when_the_destination_refuses_the_stored_syntax(
    node: Node, peers: Peers, tmp_path: Path
) -> None:
    """A J2K-stored instance to a destination that accepts only native syntaxes: sent
    decompressed, pixel-identical (PS3.4 C.4.2.3.1 leaves the syntax to the negotiation)."""
    source = pydicom.dcmread(ct_series(1, tmp_path / "src").paths[0])
    source.compress("1.2.840.10008.1.2.4.90", generate_instance_uid=False)
    path = tmp_path / "j2k.dcm"
    source.save_as(path, enforce_file_format=True)
    done = dcmtk("storescu", "-xv", "-aec", "ARCA", "127.0.0.1", str(node.dimse_port), str(path))
    assert done.returncode == 0, done.stderr
    out_dir = tmp_path / "dest"
    out_dir.mkdir()
    # storescp without +xa accepts uncompressed syntaxes only.
    proc = __import__("subprocess").Popen(
        ["/usr/bin/storescp", "-aet", "DEST", "-od", str(out_dir), str(peers.dest_port)]
    )
    try:
        from tests.dimse.dicom_tools import wait_listening

        wait_listening(peers.dest_port)
        ident = Dataset()
        ident.QueryRetrieveLevel = "IMAGE"
        ident.StudyInstanceUID = source.StudyInstanceUID
        ident.SeriesInstanceUID = source.SeriesInstanceUID
        ident.SOPInstanceUID = source.SOPInstanceUID
        statuses = _move(node, "DEST", ident)
    finally:
        proc.terminate()
        proc.wait(10)
    assert int(statuses[-1].Status) == 0x0000, statuses[-1]
    received = _received(out_dir)
    got = pydicom.dcmread(__import__("io").BytesIO(received[str(source.SOPInstanceUID)]))
    assert not got.file_meta.TransferSyntaxUID.is_compressed
    assert (got.pixel_array == source.pixel_array).all()


def test_get_at_patient_level_through_patient_root(
    node: Node, series: Series, tmp_path: Path
) -> None:
    out_dir = tmp_path / "get"
    out_dir.mkdir()
    done = dcmtk(
        "getscu",
        "-P",
        "-aet",
        "GETSCU",
        "-aec",
        "ARCA",
        "-k",
        "QueryRetrieveLevel=PATIENT",
        "-k",
        f"PatientID={series.patient_id}",
        "-od",
        str(out_dir),
        "127.0.0.1",
        str(node.dimse_port),
    )
    assert done.returncode == 0, done.stderr
    assert sorted(_received(out_dir)) == sorted(series.sop_instance_uids)


def test_get_cancel_stops_before_the_next_sub_operation(node: Node, series: Series) -> None:
    """The requestor cancels while answering the second C-STORE sub-operation; the C-CANCEL
    reaches arca before that answer, so no third sub-operation starts (PS3.4 C.4.3.3)."""
    from pynetdicom import build_role

    received: list[str] = []
    holder: dict[str, object] = {}

    def handle_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        if len(received) == 2:
            assoc = holder["assoc"]
            assoc.send_c_cancel(11, holder["cx_id"])  # type: ignore[attr-defined]
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.2.2.3")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")
    role = build_role("1.2.840.10008.5.1.4.1.1.2", scp_role=True)
    assoc = ae.associate(
        "127.0.0.1",
        node.dimse_port,
        ae_title="ARCA",
        ext_neg=[role],
        evt_handlers=[(evt.EVT_C_STORE, handle_store)],
    )
    assert assoc.is_established
    holder["assoc"] = assoc
    holder["cx_id"] = next(
        cx.context_id
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == "1.2.840.10008.5.1.4.1.2.2.3"
    )
    ident = _series_identifier(series)
    statuses = [s for s, _ in assoc.send_c_get(ident, "1.2.840.10008.5.1.4.1.2.2.3", msg_id=11)]
    assoc.release()
    final = statuses[-1]
    assert int(final.Status) == 0xFE00
    assert final.NumberOfCompletedSuboperations == 2
    assert final.NumberOfRemainingSuboperations == len(series) - 2
    assert len(received) == 2


def test_get_without_role_selection_fails_each_sub_operation(node: Node, series: Series) -> None:
    """No SCP/SCU Role Selection for the storage class: arca cannot send the instances back
    on this association, so every sub-operation fails and says which (PS3.4 C.4.3.1.4)."""
    ae = AE(ae_title="GETSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.2.2.3")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")
    assoc = ae.associate("127.0.0.1", node.dimse_port, ae_title="ARCA")
    assert assoc.is_established
    responses = list(assoc.send_c_get(_series_identifier(series), "1.2.840.10008.5.1.4.1.2.2.3"))
    assoc.release()
    final, identifier = responses[-1]
    assert int(final.Status) == 0xA702
    assert final.NumberOfFailedSuboperations == len(series)
    assert final.NumberOfCompletedSuboperations == 0
    assert sorted(identifier.FailedSOPInstanceUIDList) == sorted(series.sop_instance_uids)
