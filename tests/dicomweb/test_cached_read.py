"""Reads on the loop only from the page cache (dicomweb.cached_read): a file the kernel has
dropped from its cache is reported, not waited for, and retrieves then read it in a thread
with the same bytes."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pydicom

from dicomweb.cached_read import pread_cached
from tests.dicomweb.conftest import DicomwebServer, make_instance, unique_patient
from tests.dicomweb.test_stow import body_of, post


def _drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # only clean pages can be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_a_dropped_file_is_reported_and_a_cached_one_read(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = os.urandom(300_000)
    path.write_bytes(data)
    _drop_from_page_cache(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert pread_cached(fd, len(data), 0) is None
        assert os.pread(fd, len(data), 0) == data  # a blocking read brings it in
        assert pread_cached(fd, len(data), 0) == data
        assert pread_cached(fd, 1000, 5000) == data[5000:6000]
        assert pread_cached(fd, 1000, len(data) - 10) is None  # past the end: not whole
    finally:
        os.close(fd)


def test_retrieves_of_files_out_of_the_page_cache_are_whole(dw: DicomwebServer) -> None:
    pid = unique_patient()
    first = make_instance("CT_small.dcm", patient_id=pid)
    others = [
        make_instance("CT_small.dcm", patient_id=pid, study=first.study, series=first.series)
        for _ in range(2)
    ]
    instances = [first, *others]
    assert post(dw, body_of(*(i.data for i in instances))).status_code == 200
    hot = dw.spool.parent / "data" / "hot" / first.study
    files = [p for p in hot.rglob("*.dcm")]
    assert len(files) == 3
    for path in files:
        _drop_from_page_cache(path)
    with dw.http() as http:
        one = http.get(
            f"/studies/{first.study}/series/{first.series}/instances/{first.sop}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
        assert one.status_code == 200 and first.data in one.content
        for path in files:
            _drop_from_page_cache(path)
        series = http.get(
            f"/studies/{first.study}/series/{first.series}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
        assert series.status_code == 200
        assert all(i.data in series.content for i in instances)
        for path in files:
            _drop_from_page_cache(path)
        frame = http.get(
            f"/studies/{first.study}/series/{first.series}/instances/{first.sop}/frames/1",
            headers={"Accept": 'multipart/related; type="application/octet-stream"'},
        )
        assert frame.status_code == 200
        assert pydicom.dcmread(io.BytesIO(first.data)).PixelData in frame.content
