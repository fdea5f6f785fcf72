"""The default target: the spool as ONE S3 multipart upload of an asset (``composite.mp4`` unless named).

``RECORDING_S3_UPLOAD_MODE=multipart`` (the default). :class:`MultipartTarget`
is the :class:`~edge_recorder.sink.streamer.UploadTarget` the spool streamer
drives (:func:`multipart_uploader` builds the pair):

* at the first complete part, CreateMultipartUpload (the asset's content
  type, ``video/mp4`` for ``composite.mp4``; the SSE headers, the
  ``recording`` tag, a random upload token as metadata
  :data:`~edge_recorder.sink.store.UPLOAD_TOKEN_HEADER`), and the upload id is
  written atomically to a sidecar next to the spool (:func:`sidecar_path`:
  upload id, bucket, key, part size, token) before any part is sent;
* while recording, each :class:`~edge_recorder.sink.plan.ChunkPlan` range
  (≥ part size, ending on a fragment boundary; no roll-ups) is sent as
  UploadPart number ``index + 1``;
* at stop the rest (the tail) goes as the last part(s), then
  CompleteMultipartUpload with ``If-None-Match: *``: no server-side copy, so
  stop costs one part upload and one request. A HEAD checks the size, the
  spool is hashed and the sidecar deleted.
* a resume (crash recovery, ``retry-upload``, a failed finish) reads the
  sidecar, lists the parts the store holds (ListParts), keeps the leading ones
  whose size and (when it is an MD5) ETag match the spool's bytes, and the
  streamer sends the rest and completes. No usable sidecar, or an upload id
  the store no longer knows (``NoSuchUpload``): every incomplete upload of the
  asset is aborted (never another asset's) and a fresh upload starts from byte 0.

Parts a crash leaves are invisible in object listings and billed until
completed or aborted, so the bucket's AbortIncompleteMultipartUpload rule is
the backstop for a spool nobody resumes (docs/storage.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Unpack

import trio

from edge_recorder.errors import StorageError
from edge_recorder.sink.plan import COMPOSITE_ASSET, S3_MIN_PART_BYTES, Chunk, ChunkPlan, asset_content_type
from edge_recorder.sink.store import ObjectInfo, RecordingStore, StoredPart
from edge_recorder.sink.streamer import BucketTarget, Retry, RetryPolicy, SpoolStreamer, StreamerOptions, spool_error, md5_range
from edge_recorder.spool import write_atomically

__all__ = ["MAX_PARTS", "MultipartTarget", "Sidecar", "multipart_uploader", "sidecar_path"]

log = logging.getLogger(__name__)


# S3 multipart rule: part numbers 1 to 10 000.
MAX_PARTS = 10_000
_SIDECAR_VERSION = 1
_MD5_RE = re.compile(r"[0-9a-f]{32}")


def sidecar_path(spool_path: Path, session_id: str, asset: str = COMPOSITE_ASSET) -> Path:
    """Where a multipart upload keeps its id: next to the spool, one per asset.

    ``<dir of the spool>/<sessionId>.upload.json`` for ``composite.mp4`` (as
    housekeeping and older sidecars have it), ``<spool name>.upload.json``
    for any other asset: assets uploading at once never share a sidecar (each
    has its own spool).
    """
    if asset == COMPOSITE_ASSET:
        return spool_path.with_name(f"{session_id}.upload.json")
    return spool_path.with_name(f"{spool_path.name}.upload.json")


@dataclass(frozen=True)
class Sidecar:
    """What must survive a crash to continue a multipart upload.

    ``token`` is the upload's :data:`~edge_recorder.sink.s3.UPLOAD_TOKEN_HEADER`
    (None in sidecars written before it existed).
    """

    upload_id: str
    bucket: str
    key: str
    part_size_bytes: int
    token: str | None = None

    def dumps(self) -> str:
        data: dict[str, object] = {
            "version": _SIDECAR_VERSION,
            "upload_id": self.upload_id,
            "bucket": self.bucket,
            "key": self.key,
            "part_size_bytes": self.part_size_bytes,
        }
        if self.token is not None:
            data["token"] = self.token
        return json.dumps(data, sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> Sidecar:
        """Parse a sidecar; ValueError when it is not a valid one."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != _SIDECAR_VERSION:
            raise ValueError("not a version-1 upload sidecar")
        upload_id, bucket, key, part_size = (data.get(k) for k in ("upload_id", "bucket", "key", "part_size_bytes"))
        if not (isinstance(upload_id, str) and upload_id and isinstance(bucket, str) and isinstance(key, str)):
            raise ValueError("sidecar without upload id, bucket or key")
        if not isinstance(part_size, int) or isinstance(part_size, bool) or part_size < 1:
            raise ValueError("sidecar with a bad part size")
        token = data.get("token")
        if token is not None and not (isinstance(token, str) and token):
            raise ValueError("sidecar with a bad upload token")
        return cls(upload_id, bucket, key, part_size, token)


def _read_sidecar(path: Path) -> Sidecar | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read the upload sidecar %s: %s; starting a fresh upload", path, exc)
        return None
    try:
        return Sidecar.loads(text)
    except ValueError as exc:
        log.warning("ignoring the upload sidecar %s: %s; starting a fresh upload", path, exc)
        return None


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _part_count(etag: str) -> int:
    """Parts of a multipart ETag (``<md5>-<n>``); 1 for a plain one."""
    _md5, dash, count = etag.rpartition("-")
    return int(count) if dash and count.isdigit() else 1


class MultipartTarget(BucketTarget):
    """One multipart upload of ``<prefix><sessionId>/<asset>``, its id kept in a sidecar.

    Args:
        store: the object store.
        spool_path: the spool; the sidecar goes next to it.
        session_id: names the object.
        part_size_bytes: recorded in the sidecar.
        min_part_bytes: S3's 5 MiB floor for every part but the last.
        asset: which of the session's objects (``composite.mp4`` by default).

    Attributes:
        sidecar_path: :func:`sidecar_path` (``<dir of the spool>/<sessionId>.upload.json`` for the composite).
        parts_uploaded: every UploadPart that succeeded (also re-uploads).
    """

    rollup_fanout = 0
    idle_work = None
    refusal_codes = frozenset({"PreconditionFailed", "NoSuchUpload"})
    final_write = "completed"

    def __init__(
        self,
        store: RecordingStore,
        spool_path: Path,
        session_id: str,
        part_size_bytes: int,
        *,
        min_part_bytes: int = S3_MIN_PART_BYTES,
        asset: str = COMPOSITE_ASSET,
    ) -> None:
        super().__init__(store, spool_path, session_id, min_part_bytes, asset)
        self._part_size = part_size_bytes
        self.sidecar_path = sidecar_path(spool_path, session_id, self.asset)
        self._upload_id: str | None = None
        # This upload's token on the object (UPLOAD_TOKEN_HEADER): set at
        # create, or read from the sidecar on resume.
        self._token: str | None = None
        self._sidecar: Sidecar | None = None  # read by prepare_resume
        self._etags: list[str] = []  # ETag of part i + 1, one per committed range
        self.parts_uploaded = 0

    @property
    def token(self) -> str | None:
        """This upload's token."""
        return self._token

    @property
    def upload_id(self) -> str | None:
        """The multipart upload's id once created."""
        return self._upload_id

    # -- while recording ------------------------------------------------------

    async def put(self, chunk: Chunk, read: Callable[[], Awaitable[bytes]]) -> None:
        """Send ``chunk`` as the next part (creating the upload and its sidecar at the first)."""
        start, end = chunk
        number = len(self._etags) + 1
        if number > MAX_PARTS:
            raise spool_error(
                f"the recording needs more than {MAX_PARTS} parts; raise RECORDING_S3_PART_SIZE_MIB", self._spool_path
            )
        upload_id = await self._ensure_upload()
        data = await read()
        etag = await self._store.upload_part(self.key, upload_id, number, data)
        del data
        self._etags.append(etag)
        self.parts_uploaded += 1
        log.debug("session %s: stored part %d [%d, %d)", self._session_id, number, start, end)

    async def _ensure_upload(self) -> str:
        """The upload id, creating the upload (and its sidecar) at the first part."""
        if self._upload_id is not None:
            return self._upload_id
        token = uuid.uuid4().hex
        upload_id = await self._store.create_multipart_upload(
            self.key, content_type=asset_content_type(self.asset), kind="recording", token=token
        )
        sidecar = Sidecar(upload_id, self._store.bucket, self.key, self._part_size, token)
        try:
            await trio.to_thread.run_sync(write_atomically, self.sidecar_path, sidecar.dumps())
        except OSError as exc:
            raise spool_error(
                f"cannot write the upload sidecar {self.sidecar_path}: {exc}", self._spool_path
            ) from exc
        self._upload_id = upload_id
        self._token = token
        log.debug("session %s: multipart upload %s of %s started", self._session_id, upload_id, self.key)
        return upload_id

    # -- at stop --------------------------------------------------------------

    def check_pieces(self, chunks: list[Chunk], total_bytes: int) -> None:
        if self._upload_id is None or not self._etags:
            raise spool_error("the spool file is empty", self._spool_path)

    async def complete(self, chunks: list[Chunk], total_bytes: int) -> ObjectInfo:
        """CompleteMultipartUpload (``If-None-Match: *``), then a HEAD for the size."""
        assert self._upload_id is not None  # check_pieces
        parts = [(i, etag) for i, etag in enumerate(self._etags, start=1)]
        etag = await self._store.complete_multipart_upload(self.key, self._upload_id, parts)  # If-None-Match: *
        info = await self._store.stat(self.key)
        return dataclasses.replace(info, etag=etag or info.etag)

    async def discard(self) -> None:
        if self._upload_id is not None:
            await self._abort_quietly(self._upload_id)

    async def finished(self, info: ObjectInfo, used: list[Chunk], *, found: bool, policy: RetryPolicy) -> int:
        """Delete the sidecar; the part count (from the ETag when the object was found)."""
        try:
            await trio.to_thread.run_sync(_remove, self.sidecar_path)
        except OSError as exc:  # harmless: a stale sidecar only makes a resume check the object first
            log.warning("session %s: cannot delete the upload sidecar: %s", self._session_id, exc)
        return _part_count(info.etag) if found else len(self._etags)

    # -- resume ---------------------------------------------------------------

    async def prepare_resume(self) -> None:
        """Read the sidecar (the token decides whether the object at the key is ours)."""
        sidecar = await trio.to_thread.run_sync(_read_sidecar, self.sidecar_path)
        if sidecar is not None and (sidecar.bucket, sidecar.key) != (self._store.bucket, self.key):
            log.warning(
                "session %s: the upload sidecar names s3://%s/%s, not s3://%s/%s; starting a fresh upload",
                self._session_id, sidecar.bucket, sidecar.key, self._store.bucket, self.key,
            )
            sidecar = None
        self._sidecar = sidecar
        self._token = sidecar.token if sidecar is not None else None

    async def on_existing(self, retry: Retry) -> list[Chunk]:
        if self._sidecar is not None:
            await self._abort_quietly(self._sidecar.upload_id)
        return []

    async def resume(self, plan: ChunkPlan, total_bytes: int, retry: Retry, policy: RetryPolicy) -> list[Chunk]:
        """Keep the sidecar's upload and its leading parts that match the spool, or abort and start afresh."""
        self._etags = []
        self._upload_id = None
        if self._sidecar is not None:
            upload_id = self._sidecar.upload_id
            parts = await retry(lambda: self._list_parts_or_none(upload_id))
            if parts is None:
                log.warning("session %s: the store no longer knows upload %s; starting again", self._session_id, upload_id)
            else:
                self._upload_id = upload_id
                await self._keep_matching(plan, parts, total_bytes)
        if self._upload_id is None:
            aborted = await retry(lambda: self._store.abort_incomplete_uploads(self._session_id, asset=self.asset))
            if aborted:
                log.info("session %s: aborted %d incomplete multipart upload(s)", self._session_id, aborted)
            await trio.to_thread.run_sync(_remove, self.sidecar_path)
        log.info(
            "session %s: resuming the multipart upload after %d stored parts (%d of %d bytes)",
            self._session_id, len(self._etags), plan.committed_bytes, total_bytes,
        )
        return plan.committed

    async def _list_parts_or_none(self, upload_id: str) -> list[StoredPart] | None:
        try:
            return await self._store.list_parts(self.key, upload_id)
        except StorageError as exc:
            if exc.code == "NoSuchUpload":
                return None
            raise

    async def _keep_matching(self, plan: ChunkPlan, parts: list[StoredPart], total: int) -> None:
        """Commit the leading stored parts that are the spool's bytes; the rest is sent again."""
        offset = 0
        for expected, part in enumerate(parts, start=1):
            end = offset + part.size
            ok = part.number == expected and part.size > 0 and end <= total
            # Every part but the last must be at least the S3 minimum.
            ok = ok and (part.size >= self._min_part_bytes or end == total)
            if ok and self._store.part_etag_is_md5 and _MD5_RE.fullmatch(part.etag):
                try:
                    md5 = await trio.to_thread.run_sync(md5_range, self._spool_path, offset, end)
                except OSError as exc:
                    raise spool_error(
                        f"cannot read bytes [{offset}, {end}) of the spool file: {exc}", self._spool_path
                    ) from exc
                ok = md5 == part.etag
            if not ok:
                log.warning(
                    "session %s: stored part %d (%d bytes) does not match the spool at %d; sending from there again",
                    self._session_id, part.number, part.size, offset,
                )
                break
            plan.commit((offset, end))
            self._etags.append(part.etag)
            offset = end

    async def _abort_quietly(self, upload_id: str) -> None:
        """Abort an upload that is no longer needed (best effort: the lifecycle rule is the backstop)."""
        try:
            await self._store.abort_multipart_upload(self.key, upload_id)
        except StorageError as exc:
            if exc.code != "NoSuchUpload":
                log.warning("session %s: cannot abort upload %s: %s", self._session_id, upload_id, exc)


def multipart_uploader(
    store: RecordingStore,
    spool_path: str | os.PathLike[str],
    session_id: str,
    part_size_bytes: int,
    *,
    retry_s: float,
    asset: str = COMPOSITE_ASSET,
    **options: Unpack[StreamerOptions],
) -> SpoolStreamer[MultipartTarget]:
    """The spool streamer driving a :class:`MultipartTarget` of ``asset`` (other arguments as
    :class:`~edge_recorder.sink.streamer.SpoolStreamer`; ValueError for a name that is not an asset's)."""
    floor = options.get("min_part_bytes", S3_MIN_PART_BYTES)
    target = MultipartTarget(store, Path(spool_path), session_id, part_size_bytes, min_part_bytes=floor, asset=asset)
    return SpoolStreamer(target, spool_path, session_id, part_size_bytes, retry_s=retry_s, **options)
