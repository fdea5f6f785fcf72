"""The in-memory twin of the S3 object store, with faults to inject, for tests under virtual time.

Same semantics as :class:`~edge_recorder.sink.s3.AsyncObjectStore` over S3
for what the recorder uses (one contract suite,
``tests/unit/sink/test_store_contract.py``, runs against both it and
moto_server): chunk objects and their tags, server-side compose and roll-ups,
multipart uploads (create, parts, ListParts, an exclusive Complete with
``If-None-Match: *``, abort), HEAD, GET, presigned URLs, and the
:class:`~edge_recorder.errors.StorageError` codes and ``destination`` flags
the S3 adapter produces (:func:`~edge_recorder.sink.s3.classify_s3_error`).

Faults, for retry and outage rules (``autojump_clock`` drives the time):

* :meth:`MemoryObjectStore.down` / :meth:`~MemoryObjectStore.up` /
  :meth:`~MemoryObjectStore.down_for`: every call fails as an unreachable
  store does (transient);
* :meth:`MemoryObjectStore.refuse`: the next N calls (of some operations)
  fail with a given S3 code, e.g. ``PreconditionFailed`` (412) on Complete;
* :meth:`MemoryObjectStore.lose_answers`: the next N calls take effect, then
  fail as if the answer was lost on the way back;
* :attr:`MemoryObjectStore.latency_s`: every call takes that long (slow store).

Every call is a Trio checkpoint; nothing blocks and nothing sleeps unless
:attr:`~MemoryObjectStore.latency_s` asks.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import trio

from edge_recorder.errors import StorageError
from edge_recorder.sink import plan
from edge_recorder.sink.plan import (
    COMPOSITE_ASSET,
    MAX_COMPOSE_SOURCES,
    S3_MIN_PART_BYTES,
    Chunk,
    asset_content_type,
    is_session_upload_key,
    parse_chunk_key,
)
from edge_recorder.sink.s3 import classify_s3_error
from edge_recorder.sink.store import OBJECT_KIND_TAG, UPLOAD_TOKEN_HEADER, ObjectInfo, RecordingStore, StoredPart

__all__ = ["MemoryObjectStore"]

log = logging.getLogger(__name__)

# S3 multipart rule: part numbers 1 to 10 000.
_MAX_PART_NUMBER = 10_000
# Presigned URLs live 1 s to 7 days (SigV4).
_MAX_PRESIGN_S = 7 * 24 * 3600


@dataclass
class _Object:
    data: bytes
    etag: str
    headers: dict[str, str]
    tags: dict[str, str]
    last_modified: dt.datetime


@dataclass
class _Upload:
    key: str
    headers: dict[str, str]
    tags: dict[str, str]
    parts: dict[int, tuple[bytes, str]] = field(default_factory=dict)


@dataclass
class _Fault:
    """The next ``count`` calls of ``ops`` (all when empty) fail with ``code``/``status``."""

    count: int
    code: str
    status: int
    ops: frozenset[str]
    lose_answer: bool = False


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _multipart_etag(part_etags: Sequence[str]) -> str:
    """S3's ETag of a completed multipart upload: MD5 of the parts' binary MD5s, ``-<count>``."""
    joined = b"".join(bytes.fromhex(e) if len(e) == 32 else hashlib.md5(e.encode()).digest() for e in part_etags)
    return f"{_md5(joined)}-{len(part_etags)}"


class MemoryObjectStore:
    """A :class:`~edge_recorder.sink.store.RecordingStore` in this process's memory.

    Args:
        bucket: the bucket's name.
        prefix: ``RECORDING_S3_PREFIX`` (empty or ending with ``/``).
        sse_mode: ``RECORDING_S3_SSE``; with ``aws:kms`` or ``SSE-C`` part
            ETags are not MD5s (as in S3), and HEAD reports the SSE header.
        min_part_bytes: the size every part but the last must reach (S3: 5 MiB).
        wall_clock: ``last_modified`` of new objects (UTC now by default).

    Attributes:
        latency_s: how long every call takes (0: a checkpoint only).
        calls: how many times each operation was called (faulted ones too).
    """

    def __init__(
        self,
        bucket: str = "edge-recorder-test",
        *,
        prefix: str = "recordings/",
        sse_mode: str = "none",
        min_part_bytes: int = S3_MIN_PART_BYTES,
        wall_clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        plan.composite_key(prefix, "probe")  # refuses a bad prefix, as ObjectStore does
        self._bucket = bucket
        self.prefix = prefix
        self.sse_mode = sse_mode
        self._min_part_bytes = min_part_bytes
        self._wall_clock = wall_clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self._objects: dict[str, _Object] = {}
        self._uploads: dict[str, _Upload] = {}
        self._down_until = float("-inf")
        self._faults: list[_Fault] = []
        self.latency_s = 0.0
        self.calls: Counter[str] = Counter()

    # -- faults ---------------------------------------------------------------

    def down(self) -> None:
        """Every call fails as an unreachable store does, until :meth:`up`."""
        self._down_until = float("inf")

    def down_for(self, seconds: float) -> None:
        """Every call fails for ``seconds`` of Trio time from now."""
        self._down_until = trio.current_time() + seconds

    def up(self) -> None:
        """The store answers again."""
        self._down_until = float("-inf")

    @property
    def is_down(self) -> bool:
        """Whether calls fail as unreachable now."""
        return trio.current_time() < self._down_until

    def refuse(self, count: int, *, code: str = "InternalError", status: int = 500, ops: Collection[str] = ()) -> None:
        """The next ``count`` calls of ``ops`` (method names; every call when empty) fail with ``code``.

        ``status`` decides, with the code, whether it is the destination's
        fault (:func:`~edge_recorder.sink.s3.classify_s3_error`): e.g.
        ``refuse(1, code="PreconditionFailed", status=412, ops={"complete_multipart_upload"})``.
        """
        self._faults.append(_Fault(count, code, status, frozenset(ops)))

    def lose_answers(self, count: int, *, ops: Collection[str] = ()) -> None:
        """The next ``count`` calls of ``ops`` take effect, then fail as a lost answer (transient)."""
        self._faults.append(_Fault(count, "RequestTimeout", 0, frozenset(ops), lose_answer=True))

    def _take_fault(self, op: str) -> _Fault | None:
        for fault in self._faults:
            if fault.count > 0 and (not fault.ops or op in fault.ops):
                fault.count -= 1
                return fault
        return None

    async def _enter(self, op: str, what: str) -> _Fault | None:
        """The checkpoint every call makes: latency, the outage, a refusal. Returns a lost-answer fault."""
        self.calls[op] += 1
        if self.latency_s > 0:
            await trio.sleep(self.latency_s)
        else:
            await trio.lowlevel.checkpoint()
        if self.is_down:
            raise StorageError(f"{what}: cannot reach the store: connection refused (memory store down)", destination=False)
        fault = self._take_fault(op)
        if fault is None:
            return None
        if fault.lose_answer:
            return fault
        raise self._error(what, fault.code, fault.status, "injected")

    @staticmethod
    def _lost(what: str) -> StorageError:
        return StorageError(f"{what}: cannot reach the store: read timed out (the answer was lost)", destination=False)

    @staticmethod
    def _error(what: str, code: str, status: int, message: str) -> StorageError:
        """The StorageError the S3 adapter makes of an S3 error response."""
        return StorageError(f"{what}: {code}: {message}", destination=classify_s3_error(code, status), code=code)

    # -- keys -----------------------------------------------------------------

    @property
    def bucket(self) -> str:
        """The bucket."""
        return self._bucket

    @property
    def part_etag_is_md5(self) -> bool:
        """Whether a part's ETag is its MD5 (not with SSE-KMS or SSE-C)."""
        return self.sse_mode in ("none", "AES256")

    def asset_key(self, session_id: str, asset: str = COMPOSITE_ASSET) -> str:
        """``<prefix><sessionId>/<asset>``."""
        return plan.asset_key(self.prefix, session_id, asset)

    def composite_key(self, session_id: str) -> str:
        """``<prefix><sessionId>/composite.mp4``."""
        return self.asset_key(session_id)

    def chunk_key(self, session_id: str, chunk: Chunk, *, asset: str = COMPOSITE_ASSET) -> str:
        """``<prefix><sessionId>/chunks/<start:012d>-<end:012d>`` (``chunks~<asset>/`` for another asset)."""
        return plan.chunk_key(self.prefix, session_id, chunk, asset)

    # -- inspection (tests) ---------------------------------------------------

    def keys(self) -> list[str]:
        """Every object key, sorted."""
        return sorted(self._objects)

    def in_progress(self) -> list[tuple[str, str]]:
        """Every in-progress multipart upload: ``(key, upload id)``, sorted."""
        return sorted((u.key, upload_id) for upload_id, u in self._uploads.items())

    # -- objects --------------------------------------------------------------

    def _headers(self, content_type: str, token: str | None = None) -> dict[str, str]:
        headers = {"content-type": content_type}
        if self.sse_mode in ("AES256", "aws:kms"):
            headers["x-amz-server-side-encryption"] = self.sse_mode
        elif self.sse_mode == "SSE-C":
            headers["x-amz-server-side-encryption-customer-algorithm"] = "AES256"
        if token is not None:
            headers[UPLOAD_TOKEN_HEADER] = token
        return headers

    def _store(self, key: str, data: bytes, etag: str, headers: dict[str, str], kind: str) -> ObjectInfo:
        self._objects[key] = _Object(data, etag, dict(headers), {OBJECT_KIND_TAG: kind}, self._wall_clock())
        return self._info(key)

    def _info(self, key: str) -> ObjectInfo:
        obj = self._objects[key]
        headers = {**obj.headers, "content-length": str(len(obj.data)), "etag": f'"{obj.etag}"'}
        return ObjectInfo(self._bucket, key, len(obj.data), obj.etag, headers, obj.last_modified)

    def _get(self, key: str, what: str) -> _Object:
        obj = self._objects.get(key)
        if obj is None:
            raise self._error(what, "NoSuchKey", 404, "Object does not exist")
        return obj

    async def ensure_bucket(self) -> None:
        """The bucket always exists."""
        await self._enter("ensure_bucket", "creating the bucket")

    async def put_chunk(self, key: str, data: bytes) -> str:
        """One PUT of a chunk object (tagged ``chunk``); its ETag (the MD5 unless SSE-KMS/SSE-C)."""
        lost = await self._enter("put_chunk", "uploading a chunk")
        etag = _md5(data) if self.part_etag_is_md5 else uuid.uuid4().hex
        self._store(key, bytes(data), etag, self._headers("application/octet-stream"), "chunk")
        if lost:
            raise self._lost("uploading a chunk")
        return etag

    async def list_chunks(self, session_id: str, *, asset: str = COMPOSITE_ASSET) -> list[Chunk]:
        """The asset's chunk objects, sorted by start (other keys under the prefix skipped)."""
        under = plan.chunks_prefix(self.prefix, session_id, asset)
        await self._enter("list_chunks", "listing chunks")
        chunks: list[Chunk] = []
        for name in self._objects:
            if name.startswith(under):
                try:
                    chunks.append(parse_chunk_key(name))
                except ValueError:
                    log.warning("ignoring %r under the chunk prefix: not a chunk key", name)
        return sorted(chunks)

    async def compose(self, session_id: str, chunks: Sequence[Chunk], *, asset: str = COMPOSITE_ASSET) -> ObjectInfo:
        """Join the asset's chunk objects into its key (tagged ``recording``), never over an object."""
        if not chunks:
            raise ValueError("nothing to compose")
        key = self.asset_key(session_id, asset)
        lost = await self._enter("compose", "composing the recording")
        info = self._join(
            "composing the recording", key, session_id, asset, chunks, asset_content_type(asset), "recording", True
        )
        if lost:
            raise self._lost("composing the recording")
        return info

    async def roll_up(self, session_id: str, chunks: Sequence[Chunk], *, asset: str = COMPOSITE_ASSET) -> ObjectInfo:
        """Join consecutive chunk objects of the asset into the chunk object spanning them (sources kept)."""
        if len(chunks) < 2 or any(a[1] != b[0] for a, b in zip(chunks, chunks[1:])):
            raise ValueError("a roll-up joins two or more consecutive chunks")
        key = self.chunk_key(session_id, (chunks[0][0], chunks[-1][1]), asset=asset)
        lost = await self._enter("roll_up", "rolling chunks up")
        info = self._join("rolling chunks up", key, session_id, asset, chunks, "application/octet-stream", "chunk", False)
        if lost:
            raise self._lost("rolling chunks up")
        return info

    def _join(
        self,
        what: str,
        key: str,
        session_id: str,
        asset: str,
        chunks: Sequence[Chunk],
        content_type: str,
        kind: str,
        exclusive: bool,
    ) -> ObjectInfo:
        """What S3 does for the adapter's compose: UploadPartCopy per source, then a Complete."""
        if len(chunks) > MAX_COMPOSE_SOURCES:
            raise StorageError(
                f"{len(chunks)} parts exceed the {MAX_COMPOSE_SOURCES} S3 allows; raise RECORDING_S3_PART_SIZE_MIB",
                destination=False,
            )
        pieces: list[bytes] = []
        for chunk in chunks:
            source = self._get(self.chunk_key(session_id, chunk, asset=asset), what)
            if len(source.data) < chunk[1] - chunk[0]:
                raise self._error(what, "InvalidRange", 416, "The requested range is not satisfiable")
            pieces.append(source.data[: chunk[1] - chunk[0]])
        if any(len(p) < self._min_part_bytes for p in pieces[:-1]):
            raise self._error(what, "EntityTooSmall", 400, "Your proposed upload is smaller than the minimum allowed size")
        if exclusive and key in self._objects:
            raise self._error(what, "PreconditionFailed", 412, "At least one of the pre-conditions you specified did not hold")
        etag = _multipart_etag([_md5(p) for p in pieces])
        return self._store(key, b"".join(pieces), etag, self._headers(content_type), kind)

    async def abort_incomplete_uploads(self, session_id: str, *, asset: str | None = None) -> int:
        """Abort in-progress uploads under ``<prefix><sessionId>/`` (of ``asset`` and its chunks only, if given); how many."""
        plan.session_prefix(self.prefix, session_id)  # refuses a bad session id, as ObjectStore does
        await self._enter("abort_incomplete_uploads", "aborting incomplete multipart uploads")
        doomed = [
            upload_id
            for upload_id, upload in self._uploads.items()
            if is_session_upload_key(self.prefix, session_id, upload.key, asset)
        ]
        for upload_id in doomed:
            log.warning("aborted an incomplete multipart upload of %s (upload id %s)", self._uploads[upload_id].key, upload_id)
            del self._uploads[upload_id]
        return len(doomed)

    async def delete_chunks(self, session_id: str, chunks: Sequence[Chunk], *, asset: str = COMPOSITE_ASSET) -> None:
        """Delete the asset's chunk objects (missing ones are no error)."""
        keys = {self.chunk_key(session_id, c, asset=asset) for c in chunks}
        if not keys:
            return
        lost = await self._enter("delete_chunks", "deleting chunks")
        for key in keys:
            self._objects.pop(key, None)
        if lost:
            raise self._lost("deleting chunks")

    async def tags(self, key: str) -> dict[str, str]:
        """The object's tags."""
        await self._enter("tags", "reading object tags")
        return dict(self._get(key, "reading object tags").tags)

    async def stat(self, key: str) -> ObjectInfo:
        """HEAD one object (``code="NoSuchKey"`` when there is none)."""
        await self._enter("stat", "reading object metadata")
        self._get(key, "reading object metadata")
        return self._info(key)

    async def head(self, key: str) -> ObjectInfo | None:
        """:meth:`stat`, or None when there is no object."""
        await self._enter("head", "reading object metadata")
        return self._info(key) if key in self._objects else None

    async def sha256(self, key: str) -> str:
        """SHA-256 of the object's bytes."""
        await self._enter("sha256", "reading an object")
        return hashlib.sha256(self._get(key, "reading an object").data).hexdigest()

    async def get_bytes(self, key: str) -> bytes:
        """The whole object."""
        await self._enter("get_bytes", "downloading an object")
        return self._get(key, "downloading an object").data

    async def download(self, key: str, write: Callable[[bytes], None], *, max_bytes: int) -> int:
        """The object into ``write``, in 1 MiB pieces."""
        await self._enter("download", "downloading an object")
        data = self._get(key, "downloading an object").data
        if len(data) > max_bytes:
            raise StorageError(
                f"downloading {key}: {len(data)} bytes, more than the {max_bytes} expected", destination=False, code="EntityTooLarge"
            )
        for start in range(0, len(data), 1 << 20):
            write(data[start : start + (1 << 20)])
        return len(data)

    async def presign(self, key: str, expiry_s: int) -> str:
        """A URL naming the object and its lifetime (no signature: nothing serves it).

        Raises:
            ValueError: ``expiry_s`` is not 1 s to 7 days (as minio refuses it).
        """
        if not 1 <= expiry_s <= _MAX_PRESIGN_S:
            raise ValueError("expires must be between 1 second to 7 days")
        await self._enter("presign", "presigning a URL")
        content_type = urllib.parse.quote(asset_content_type(key), safe="")
        return f"memory://{self._bucket}/{key}?X-Amz-Expires={expiry_s}&response-content-type={content_type}"

    # -- multipart ------------------------------------------------------------

    def _upload(self, upload_id: str, what: str) -> _Upload:
        upload = self._uploads.get(upload_id)
        if upload is None:
            raise self._error(what, "NoSuchUpload", 404, "The specified multipart upload does not exist")
        return upload

    async def create_multipart_upload(self, key: str, *, content_type: str, kind: str, token: str | None = None) -> str:
        """CreateMultipartUpload; the upload id."""
        await self._enter("create_multipart_upload", "starting a multipart upload")
        upload_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self._uploads[upload_id] = _Upload(key, self._headers(content_type, token), {OBJECT_KIND_TAG: kind})
        return upload_id

    async def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> str:
        """UploadPart (a number sent again replaces the part); its ETag."""
        lost = await self._enter("upload_part", "uploading a part")
        upload = self._upload(upload_id, "uploading a part")
        if not 1 <= part_number <= _MAX_PART_NUMBER:
            raise self._error("uploading a part", "InvalidArgument", 400, "Part number must be an integer between 1 and 10000")
        etag = _md5(data) if self.part_etag_is_md5 else uuid.uuid4().hex
        upload.parts[part_number] = (bytes(data), etag)
        if lost:
            raise self._lost("uploading a part")
        return etag

    async def list_parts(self, key: str, upload_id: str) -> list[StoredPart]:
        """ListParts, sorted by number."""
        await self._enter("list_parts", "listing uploaded parts")
        upload = self._upload(upload_id, "listing uploaded parts")
        return [StoredPart(n, len(data), etag) for n, (data, etag) in sorted(upload.parts.items())]

    async def complete_multipart_upload(self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> str:
        """CompleteMultipartUpload with ``If-None-Match: *``; the object's ETag."""
        what = "completing a multipart upload"
        lost = await self._enter("complete_multipart_upload", what)
        upload = self._upload(upload_id, what)
        numbers = [n for n, _ in parts]
        if not parts or numbers != sorted(set(numbers)):
            raise self._error(what, "InvalidPartOrder", 400, "The list of parts was not in ascending order")
        pieces: list[bytes] = []
        for number, etag in parts:
            stored = upload.parts.get(number)
            if stored is None or stored[1] != etag.strip('"'):
                raise self._error(what, "InvalidPart", 400, "One or more of the specified parts could not be found")
            pieces.append(stored[0])
        if any(len(p) < self._min_part_bytes for p in pieces[:-1]):
            raise self._error(what, "EntityTooSmall", 400, "Your proposed upload is smaller than the minimum allowed size")
        if key in self._objects:
            raise self._error(what, "PreconditionFailed", 412, "At least one of the pre-conditions you specified did not hold")
        etag = _multipart_etag([e for _, e in parts])
        self._objects[key] = _Object(b"".join(pieces), etag, dict(upload.headers), dict(upload.tags), self._wall_clock())
        del self._uploads[upload_id]
        if lost:
            raise self._lost(what)
        return etag

    async def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload (``code="NoSuchUpload"`` for an unknown id)."""
        await self._enter("abort_multipart_upload", "aborting a multipart upload")
        self._upload(upload_id, "aborting a multipart upload")
        del self._uploads[upload_id]


def _is_a_recording_store(store: MemoryObjectStore) -> RecordingStore:
    return store  # mypy proves the twin has the Protocol's shape
