"""The object store as the recorder uses it: one Protocol, the records it returns.

:class:`RecordingStore` is the seam between the uploader (:mod:`edge_recorder.sink.streamer`
and its targets), recovery, housekeeping and the store behind them. Two
implementations keep it honest, and one contract suite
(``tests/unit/sink/test_store_contract.py``) runs against both:

* :class:`~edge_recorder.sink.s3.AsyncObjectStore`: S3 or MinIO over HTTP
  (minio, in worker threads).
* :class:`~edge_recorder.sink.memory.MemoryObjectStore`: the in-memory twin,
  with injectable faults, for tests under virtual time.

No I/O and no ``trio`` here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from edge_recorder.sink.plan import COMPOSITE_ASSET, Chunk

__all__ = ["OBJECT_KIND_TAG", "UPLOAD_TOKEN_HEADER", "ObjectInfo", "RecordingStore", "StoredPart"]

# Object tag that tells chunks from recordings: S3 lifecycle filters match key
# prefixes only, and "<prefix>*/chunks/" is not a prefix, so the rule that
# expires stray chunks filters on this tag (docs/storage.md).
OBJECT_KIND_TAG = "edge-recorder-object"

# User metadata naming the upload that wrote a recording (a random token the
# uploader keeps, in the multipart sidecar too): how an uploader tells "my own
# Complete, whose answer was lost" from someone else's object at the same key.
UPLOAD_TOKEN_HEADER = "x-amz-meta-edge-recorder-upload"


@dataclass(frozen=True)
class ObjectInfo:
    """An object in the store.

    Attributes:
        bucket: the bucket.
        key: the object key.
        size: bytes.
        etag: the ETag without quotes (a multipart one ends in ``-<parts>``).
        headers: the response headers of the HEAD request, names lowercased
            (e.g. ``x-amz-server-side-encryption``); empty when not from a stat.
        last_modified: when the store says the object was written (None when unknown).
    """

    bucket: str
    key: str
    size: int
    etag: str
    headers: dict[str, str] = field(default_factory=dict)
    last_modified: datetime | None = None

    @property
    def upload_token(self) -> str | None:
        """The token of the upload that wrote it (:data:`UPLOAD_TOKEN_HEADER`), if any."""
        return self.headers.get(UPLOAD_TOKEN_HEADER) or None

    @property
    def url(self) -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class StoredPart:
    """One part of an in-progress multipart upload, as ListParts reports it.

    Attributes:
        number: the part number (1-based).
        size: bytes.
        etag: the ETag without quotes (the part's MD5 unless SSE-KMS or SSE-C).
    """

    number: int
    size: int
    etag: str


class RecordingStore(Protocol):
    """One bucket and key prefix, async (every call may wait on the network).

    A session's objects are its named assets (:func:`~edge_recorder.sink.plan.check_asset_name`):
    every operation that names a session takes ``asset``, ``composite.mp4``
    (:data:`~edge_recorder.sink.plan.COMPOSITE_ASSET`) by default, and raises
    ValueError for a name that is not an asset's.

    Errors: every failure is a :class:`~edge_recorder.errors.StorageError`
    (``destination=True`` when the user's side refused); an unknown upload id
    is ``code="NoSuchUpload"``, a missing object ``code="NoSuchKey"``, an
    exclusive Complete over an existing object ``code="PreconditionFailed"``.
    On cancellation a request in flight may still take effect; every
    operation is idempotent, so the caller simply asks again.
    """

    @property
    def bucket(self) -> str:
        """The bucket."""

    @property
    def part_etag_is_md5(self) -> bool:
        """Whether a stored part's ETag is the MD5 of its bytes (no SSE-KMS, no SSE-C)."""

    def asset_key(self, session_id: str, asset: str = COMPOSITE_ASSET) -> str:
        """``<prefix><sessionId>/<asset>``."""

    def composite_key(self, session_id: str) -> str:
        """``<prefix><sessionId>/composite.mp4`` (:meth:`asset_key` of the default asset)."""

    def chunk_key(self, session_id: str, chunk: Chunk, *, asset: str = COMPOSITE_ASSET) -> str:
        """``<prefix><sessionId>/chunks/<start:012d>-<end:012d>`` (``chunks~<asset>/`` for another asset)."""

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist."""

    async def put_chunk(self, key: str, data: bytes) -> str:
        """One PUT of a chunk object (tagged ``chunk``); its ETag."""

    async def list_chunks(self, session_id: str, *, asset: str = COMPOSITE_ASSET) -> list[Chunk]:
        """The asset's chunk objects, sorted by start."""

    async def compose(self, session_id: str, chunks: Sequence[Chunk], *, asset: str = COMPOSITE_ASSET) -> ObjectInfo:
        """Join the asset's chunk objects into its key (tagged ``recording``), never over an object."""

    async def roll_up(self, session_id: str, chunks: Sequence[Chunk], *, asset: str = COMPOSITE_ASSET) -> ObjectInfo:
        """Join consecutive chunk objects of the asset into one chunk object spanning them."""

    async def abort_incomplete_uploads(self, session_id: str, *, asset: str | None = None) -> int:
        """Abort in-progress multipart uploads; how many.

        ``asset=None``: every upload under ``<prefix><sessionId>/`` (all the
        session's assets); an asset: only its key's and its chunk keys'.
        """

    async def delete_chunks(self, session_id: str, chunks: Sequence[Chunk], *, asset: str = COMPOSITE_ASSET) -> None:
        """Delete the asset's chunk objects (missing ones are no error)."""

    async def tags(self, key: str) -> dict[str, str]:
        """The object's tags."""

    async def stat(self, key: str) -> ObjectInfo:
        """HEAD one object (``code="NoSuchKey"`` when there is none)."""

    async def head(self, key: str) -> ObjectInfo | None:
        """:meth:`stat`, or None when there is no object."""

    async def sha256(self, key: str) -> str:
        """SHA-256 of the object's bytes."""

    async def get_bytes(self, key: str) -> bytes:
        """The whole object (tests and verification)."""

    async def download(self, key: str, write: Callable[[bytes], None], *, max_bytes: int) -> int:
        """Stream the object into ``write`` in pieces; its size.

        An object bigger than ``max_bytes`` is refused before a byte is
        written (``code="EntityTooLarge"``, not the destination's fault: the
        caller's bound). What ``write`` raises passes through as it is.
        """

    async def presign(self, key: str, expiry_s: int) -> str:
        """A GET URL valid for ``expiry_s`` seconds."""

    async def create_multipart_upload(self, key: str, *, content_type: str, kind: str, token: str | None = None) -> str:
        """CreateMultipartUpload (``token`` as :data:`UPLOAD_TOKEN_HEADER`); the upload id."""

    async def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> str:
        """UploadPart; its ETag."""

    async def list_parts(self, key: str, upload_id: str) -> list[StoredPart]:
        """ListParts, sorted by part number."""

    async def complete_multipart_upload(self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> str:
        """CompleteMultipartUpload with ``If-None-Match: *``; the object's ETag."""

    async def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload."""

