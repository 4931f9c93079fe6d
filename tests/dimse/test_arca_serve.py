"""The DIMSE gateway inside a real ``arca serve`` process: one archive behind both DICOMweb
and DIMSE, concurrent associations, and a stalled peer that must not hold up HTTP."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from pathlib import Path

import httpx

from tests.conftest import ArcaProcess, StartArca, free_port
from tests.data import ct_series, multipart_related, small_ct, stow_content_type, uids_of
from tests.dimse.dicom_tools import dataset_part, dcmtk, findscu, storescp, wado_instance


def _received(out_dir: Path) -> dict[str, bytes]:
    return {uids_of(p.read_bytes())[2]: p.read_bytes() for p in out_dir.iterdir() if p.is_file()}


def test_one_archive_behind_dicomweb_and_dimse(start_arca: StartArca, tmp_path: Path) -> None:
    dest_port = free_port()
    arca = start_arca("--remote-ae", f"DEST=127.0.0.1:{dest_port}")
    port = str(arca.dimse_port)
    assert dcmtk("echoscu", "-aec", arca.ae_title, "127.0.0.1", port).returncode == 0

    # C-STORE in -> QIDO-RS and WADO-RS out.
    series = ct_series(3, tmp_path / "src", patient_id="SERVE1")
    done = dcmtk("storescu", "-aec", "ARCA", "127.0.0.1", port, *map(str, series.paths))
    assert done.returncode == 0, done.stderr
    found = httpx.get(
        f"{arca.dicomweb_url}/studies/{series.study_uid}/instances", timeout=30
    ).json()
    assert sorted(x["00080018"]["Value"][0] for x in found) == sorted(series.sop_instance_uids)

    # STOW-RS in -> C-FIND and C-MOVE out, byte for byte.
    data = small_ct(patient_id="SERVE2")
    study, series_uid, sop = uids_of(data)
    rsp = httpx.post(
        f"{arca.dicomweb_url}/studies",
        content=multipart_related([data]),
        headers={"Content-Type": stow_content_type(), "Accept": "application/dicom+json"},
        timeout=30,
    )
    assert rsp.status_code == 200, rsp.text
    [match] = findscu(
        arca.dimse_port,
        "-S",
        ["QueryRetrieveLevel=STUDY", "PatientID=SERVE2", "StudyInstanceUID"],
        tmp_path / "find",
    )
    assert match.StudyInstanceUID == study
    out_dir = tmp_path / "dest"
    with storescp(dest_port, out_dir):
        done = dcmtk(
            "movescu",
            "-S",
            "-aec",
            "ARCA",
            "-aem",
            "DEST",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study}",
            "127.0.0.1",
            port,
        )
    assert done.returncode == 0, done.stderr
    received = _received(out_dir)
    assert list(received) == [sop]
    assert dataset_part(received[sop]) == dataset_part(data)
    assert dataset_part(wado_instance(arca.dicomweb_url, study, series_uid, sop)) == dataset_part(
        data
    )

    # C-GET on the same association.
    get_dir = tmp_path / "get"
    get_dir.mkdir()
    done = dcmtk(
        "getscu",
        "-S",
        "-aec",
        "ARCA",
        "-k",
        "QueryRetrieveLevel=SERIES",
        "-k",
        f"StudyInstanceUID={series.study_uid}",
        "-k",
        f"SeriesInstanceUID={series.series_uid}",
        "-od",
        str(get_dir),
        "127.0.0.1",
        port,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(_received(get_dir)) == sorted(series.sop_instance_uids)


def test_many_associations_and_a_stalled_peer(arca_session: ArcaProcess, tmp_path: Path) -> None:
    arca = arca_session
    port = str(arca.dimse_port)
    # A peer that connects and never speaks holds one association slot until the network
    # timeout; it must not hold up anything else.
    stalled = socket.create_connection(("127.0.0.1", arca.dimse_port))
    try:
        senders = []
        all_series = []
        for i in range(6):
            series = ct_series(2, tmp_path / f"s{i}", patient_id=f"MANY{i}-{uuid.uuid4().hex[:8]}")
            all_series.append(series)
            senders.append(
                subprocess.Popen(
                    [
                        "/usr/bin/storescu",
                        "-aec",
                        "ARCA",
                        "127.0.0.1",
                        port,
                        *map(str, series.paths),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        # HTTP keeps answering while the six associations store (at least one query is made
        # while they run: the loop checks after querying).
        while True:
            running = any(p.poll() is None for p in senders)
            started = time.monotonic()
            rsp = httpx.get(
                f"{arca.dicomweb_url}/studies", params={"PatientID": "MANY*"}, timeout=30
            )
            assert rsp.status_code == 200
            assert time.monotonic() - started < 5.0
            if not running:
                break
        for proc in senders:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        for series in all_series:
            found = httpx.get(
                f"{arca.dicomweb_url}/studies/{series.study_uid}/instances", timeout=30
            ).json()
            assert len(found) == len(series)
    finally:
        stalled.close()
    assert dcmtk("echoscu", "-aec", "ARCA", "127.0.0.1", port).returncode == 0
