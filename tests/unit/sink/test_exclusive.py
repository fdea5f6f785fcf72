"""The pure parts of "never over an object": whose object it is, the copy ranges of a compose, the sidecar's token."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from minio.error import S3Error

from edge_recorder.sink.exclusive import OBJECT_EXISTS, is_this_upload, object_exists_error
from edge_recorder.sink.multipart import Sidecar, _part_count
from edge_recorder.sink.s3 import _MAX_PART_BYTES, UPLOAD_TOKEN_HEADER, MultipartApi, ObjectInfo, _copy_ranges

S3_MIN_PART = 5 * 1024 * 1024


def _info(size: int, token: str | None) -> ObjectInfo:
    headers = {} if token is None else {UPLOAD_TOKEN_HEADER: token}
    return ObjectInfo("b", "p/s/composite.mp4", size, "e-2", headers)


def test_only_our_token_and_our_size_make_it_ours() -> None:
    assert is_this_upload(_info(10, "t"), total_bytes=10, token="t")
    assert not is_this_upload(_info(10, "t"), total_bytes=11, token="t")
    assert not is_this_upload(_info(10, "other"), total_bytes=10, token="t")
    assert not is_this_upload(_info(10, None), total_bytes=10, token="t")
    assert not is_this_upload(_info(10, None), total_bytes=10, token=None)  # no token is never a match


def test_the_refusal_names_the_object_and_the_kept_spool() -> None:
    error = object_exists_error(_info(10, None), Path("/spool/n/s.mp4"))
    assert error.code == OBJECT_EXISTS and error.destination
    assert "an object already exists at s3://b/p/s/composite.mp4" in str(error)
    assert str(error).endswith("the recording is kept at /spool/n/s.mp4") and error.spool_path == "/spool/n/s.mp4"


@given(st.lists(st.integers(min_value=1, max_value=3 * _MAX_PART_BYTES + 7), min_size=1, max_size=20))
def test_copy_ranges_cover_each_chunk_in_valid_parts(sizes: list[int]) -> None:
    chunks = []
    start = 0
    for size in sizes:
        chunks.append((start, start + size))
        start += size
    pieces = _copy_ranges(chunks)
    for chunk in chunks:
        mine = [(a, b) for c, a, b in pieces if c == chunk]
        assert mine[0][0] == 0 and mine[-1][1] == chunk[1] - chunk[0]
        assert all(x[1] == y[0] for x, y in zip(mine, mine[1:]))
        assert all(0 < b - a <= _MAX_PART_BYTES for a, b in mine)
        if len(mine) > 1:  # a split source: no piece under the part minimum
            assert all(b - a >= S3_MIN_PART for a, b in mine)
    assert [c for c, _a, _b in pieces] == sorted(c for c, _a, _b in pieces)


def test_part_count_of_an_etag() -> None:
    assert _part_count("0123abcd-7") == 7
    assert _part_count("0123abcd") == 1


def test_the_sidecar_keeps_the_token_and_reads_older_ones() -> None:
    sidecar = Sidecar("u", "b", "k", 5, "tok")
    assert Sidecar.loads(sidecar.dumps()) == sidecar
    older = Sidecar("u", "b", "k", 5)
    assert "token" not in older.dumps() and Sidecar.loads(older.dumps()).token is None
    with pytest.raises(ValueError):
        Sidecar.loads('{"version": 1, "upload_id": "u", "bucket": "b", "key": "k", "part_size_bytes": 5, "token": 3}')


class _Response:
    def __init__(self, status: int, data: bytes) -> None:
        self.status = status
        self.data = data
        self.headers: dict[str, str] = {}


class _Client:
    """Stands in for minio's ``_execute``: answers NotImplemented to a conditional Complete."""

    def __init__(self) -> None:
        self.requests: list[dict[str, object]] = []

    def _execute(self, method: str, bucket: str, key: str, **kwargs: object) -> _Response:
        headers = kwargs["headers"]
        assert isinstance(headers, dict)
        self.requests.append(headers)
        if "If-None-Match" in headers:
            response = _Response(501, b"")
            raise S3Error(response, "NotImplemented", "conditional writes are not implemented", key, "r", "h")  # type: ignore[arg-type]
        body = b"<CompleteMultipartUploadResult><Bucket>b</Bucket><Key>k</Key><ETag>\"e-1\"</ETag></CompleteMultipartUploadResult>"
        return _Response(200, body)


def test_a_store_without_conditional_writes_is_asked_again_without_and_remembered() -> None:
    client = _Client()
    api = MultipartApi(client, "b", sse=None, ssec=None, sse_mode="none")  # type: ignore[arg-type]
    assert api.complete("k", "u", [(1, "x")], exclusive=True) == "e-1"
    assert ["If-None-Match" in r for r in client.requests] == [True, False]
    assert not api.conditional_writes
    assert api.complete("k", "u", [(1, "x")], exclusive=True) == "e-1"
    assert len(client.requests) == 3  # not asked conditionally again
