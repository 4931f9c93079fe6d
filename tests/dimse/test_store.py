"""C-ECHO and C-STORE against real DCMTK / pynetdicom peers; results checked over WADO-RS."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE

from tests.data import ct_series, testdata, uids_of
from tests.dimse.dicom_tools import (
    dataset_part,
    dciodvfy_errors,
    dcmtk,
    qido,
    transfer_syntax_of,
    wado_instance,
)
from tests.dimse.harness import Node

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def test_echo(node: Node) -> None:
    out = dcmtk("echoscu", "-aec", "ARCA", "127.0.0.1", str(node.dimse_port))
    assert out.returncode == 0, out.stderr


def _explicit_lengths(ds: pydicom.Dataset) -> None:
    """DCMTK's storescu writes sequences and items with explicit lengths on the wire; files
    encoded that way already go out byte for byte as they are on disk."""
    for elem in ds.iterall():
        if elem.VR == "SQ":
            elem.is_undefined_length = False
            for item in elem.value:
                item.is_undefined_length_sequence_item = False


def _encode(path: Path, syntax: str, out: Path) -> Path:
    ds = pydicom.dcmread(path)
    _explicit_lengths(ds)
    if syntax in (JPEG2000Lossless, JPEGLSLossless, RLELossless):
        ds.compress(syntax, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    # dcmwrite (unlike save_as) may change the byte order, as big endian needs.
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out


def _dcmtk_encode(tool: str, option: str, path: Path, out: Path) -> Path:
    done = dcmtk(tool, option, str(path), str(out))
    assert done.returncode == 0, done.stderr
    return out


def _jpeg_baseline(out: Path, study: str, series: str) -> Path:
    """pydicom's DCMTK-made JPEG baseline RGB image under fresh UIDs (baseline is 8-bit)."""
    ds = pydicom.dcmread(testdata("SC_rgb_jpeg_dcmtk.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    _explicit_lengths(ds)
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out


# (storescu option, transfer syntax the files carry). The files are encoded beforehand
# (pydicom, or DCMTK's own dcmcjpeg for JPEG lossless) so storescu sends them as they are and
# arca must keep their bytes; DCMTK 3.6.7 cannot convert J2K, so -xv always sends as is.
AS_IS = [
    ("-xe", ExplicitVRLittleEndian),
    ("-xi", ImplicitVRLittleEndian),
    ("-xb", ExplicitVRBigEndian),
    ("-xd", DeflatedExplicitVRLittleEndian),
    ("-xs", JPEGLosslessSV1),
    ("-xy", JPEGBaseline8Bit),
    ("-xv", JPEG2000Lossless),
    ("-xt", JPEGLSLossless),
    ("-xr", RLELossless),
]


@pytest.mark.parametrize(("option", "syntax"), AS_IS, ids=[o for o, _ in AS_IS])
def test_storescu_bytes_come_back_over_wado(
    node: Node, tmp_path: Path, option: str, syntax: str
) -> None:
    series = ct_series(2, tmp_path / "src")
    if syntax == JPEGBaseline8Bit:
        files = [_jpeg_baseline(tmp_path / "0.dcm", series.study_uid, series.series_uid)]
    elif syntax == JPEGLosslessSV1:
        files = [
            _dcmtk_encode("dcmcjpeg", "+e1", p, tmp_path / f"{i}.dcm")
            for i, p in enumerate(series.paths)
        ]
    else:
        files = [_encode(p, syntax, tmp_path / f"{i}.dcm") for i, p in enumerate(series.paths)]
    port = str(node.dimse_port)
    out = dcmtk("storescu", option, "-aec", "ARCA", "127.0.0.1", port, *map(str, files))
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr and "Error" not in out.stderr, out.stderr
    for path in files:
        sent = path.read_bytes()
        study, series_uid, sop = uids_of(sent)
        got = wado_instance(node.dicomweb, study, series_uid, sop)
        # The File Meta Information is the receiver's own (PS3.10 §7.1: implementation UID,
        # source AE); the transfer syntax and the data set's bytes must be the sender's.
        assert transfer_syntax_of(sent) == syntax
        assert transfer_syntax_of(got) == syntax
        assert dataset_part(got) == dataset_part(sent)
        stored = tmp_path / f"got-{sop}.dcm"
        stored.write_bytes(got)
        assert dciodvfy_errors(stored) <= dciodvfy_errors(path)


def _store_raw(node: Node, dataset_bytes: bytes, sop_class: str, sop_instance: str) -> int:
    """A C-STORE whose data set is exactly ``dataset_bytes`` (Explicit VR LE context)."""
    ae = AE(ae_title="RAWSCU")
    ae.add_requested_context(sop_class, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.dimse_port, ae_title="ARCA")
    assert assoc.is_established
    try:
        req = C_STORE()
        req.MessageID = 7
        req.AffectedSOPClassUID = sop_class
        req.AffectedSOPInstanceUID = sop_instance
        req.Priority = 2
        req.DataSet = io.BytesIO(dataset_bytes)
        cx_id = assoc.accepted_contexts[0].context_id
        # Pause the requestor's reactor as pynetdicom's own send_* methods do, so the
        # response comes to us and not to its dispatcher.
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.001)
        try:
            assoc.dimse.send_msg(req, cx_id)
            _, rsp = assoc.dimse.get_msg(block=True)
        finally:
            assoc._reactor_checkpoint.set()
        assert rsp is not None, "no C-STORE response"
        return int(rsp.Status)
    finally:
        assoc.release()


def _nothing_stored(node: Node, sop: str) -> None:
    assert qido(node.dicomweb, "instances", SOPInstanceUID=sop) == []


def _explicit_dataset_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return dataset_part(buffer.getvalue())


def test_unparseable_dataset_is_cannot_understand(node: Node) -> None:
    sop = generate_uid()
    # An element header promising far more bytes than follow.
    garbage = b"\x08\x00\x16\x00UI\x40\x00" + b"1.2.3" + b"\xff" * 3
    status = _store_raw(node, garbage, CT_IMAGE_STORAGE, sop)
    assert status == 0xC000
    _nothing_stored(node, sop)


def test_dataset_of_another_sop_class_is_refused(node: Node, tmp_path: Path) -> None:
    series = ct_series(1, tmp_path)
    ds = pydicom.dcmread(series.paths[0])
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage in a CT context
    status = _store_raw(
        node, _explicit_dataset_bytes(ds), CT_IMAGE_STORAGE, series.sop_instance_uids[0]
    )
    assert status == 0xA900
    _nothing_stored(node, series.sop_instance_uids[0])


def test_dataset_without_study_uid_cannot_be_understood(node: Node, tmp_path: Path) -> None:
    series = ct_series(1, tmp_path)
    ds = pydicom.dcmread(series.paths[0])
    del ds.StudyInstanceUID
    status = _store_raw(
        node, _explicit_dataset_bytes(ds), CT_IMAGE_STORAGE, series.sop_instance_uids[0]
    )
    assert status == 0xC000
    _nothing_stored(node, series.sop_instance_uids[0])


def test_duplicate_with_other_bytes_is_refused(node: Node, tmp_path: Path) -> None:
    series = ct_series(1, tmp_path)
    out = dcmtk("storescu", "-aec", "ARCA", "127.0.0.1", str(node.dimse_port), str(series.paths[0]))
    assert out.returncode == 0, out.stderr
    ds = pydicom.dcmread(series.paths[0])
    ds.PatientName = "OTHER^BYTES"
    status = _store_raw(
        node, _explicit_dataset_bytes(ds), CT_IMAGE_STORAGE, series.sop_instance_uids[0]
    )
    assert status == 0x0111
    [match] = qido(
        node.dicomweb,
        "instances",
        SOPInstanceUID=series.sop_instance_uids[0],
        includefield="PatientName",
    )
    assert match["00100010"]["Value"][0]["Alphabetic"] == "ARCA^TEST"


def test_unknown_sop_class_is_not_accepted(node: Node, tmp_path: Path) -> None:
    ds = pydicom.dcmread(testdata("CT_small.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.8.498.424242"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / "unknown.dcm"
    ds.save_as(path, enforce_file_format=True)
    out = dcmtk("storescu", "-aec", "ARCA", "127.0.0.1", str(node.dimse_port), str(path))
    # PS3.8 §9.3.3.2: the presentation context is rejected (abstract syntax not supported),
    # so storescu has nothing to send it on.
    assert "no presentation context" in (out.stderr + out.stdout).lower(), out.stderr
    _nothing_stored(node, str(ds.SOPInstanceUID))


def test_peer_aborting_mid_transfer_stores_nothing(node: Node, tmp_path: Path) -> None:
    series = ct_series(1, tmp_path)
    ds = pydicom.dcmread(series.paths[0])
    ae = AE(ae_title="ABORTER")
    ae.add_requested_context(CT_IMAGE_STORAGE, [ExplicitVRLittleEndian])
    ae.maximum_pdu_size = 16384
    assoc = ae.associate("127.0.0.1", node.dimse_port, ae_title="ARCA", max_pdu=16384)
    assert assoc.is_established
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.pdu import P_DATA_TF

    req = C_STORE()
    req.MessageID = 1
    req.AffectedSOPClassUID = CT_IMAGE_STORAGE
    req.AffectedSOPInstanceUID = series.sop_instance_uids[0]
    req.Priority = 2
    req.DataSet = io.BytesIO(_explicit_dataset_bytes(ds))
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    raw = assoc.dul.socket.socket
    assert raw is not None
    # Send the command and the first few data fragments, then vanish without A-ABORT.
    for i, primitive in enumerate(message.encode_msg(assoc.accepted_contexts[0].context_id, 16384)):
        if i > 4:
            break
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        raw.sendall(pdu.encode())
    import socket
    import struct

    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    assert node.dimse is not None
    deadline = time.monotonic() + 10
    while node.dimse.active_associations and time.monotonic() < deadline:
        time.sleep(0.02)
    assert node.dimse.active_associations == 0, "the aborted association is still open"
    # Nothing stored, and the AE serves the next association.
    _nothing_stored(node, series.sop_instance_uids[0])
    out = dcmtk("storescu", "-aec", "ARCA", "127.0.0.1", str(node.dimse_port), str(series.paths[0]))
    assert out.returncode == 0, out.stderr
    assert len(qido(node.dicomweb, "instances", SOPInstanceUID=series.sop_instance_uids[0])) == 1
