"""Upload the spool file while it is recorded as ONE S3 multipart upload (the Trio shell).

The ``multipart`` upload mode (``RECORDING_S3_UPLOAD_MODE``, the default):
:class:`MultipartSpoolUploader` has the same interface as
:class:`~edge_recorder.sink.uploader.SpoolUploader` but, instead of chunk
objects composed server-side at stop, drives one multipart upload of
``<prefix><sessionId>/composite.mp4`` directly:

* at the first complete part, CreateMultipartUpload (``video/mp4``, the SSE
  headers, the ``recording`` tag, a random upload token as metadata), and the
  upload id is written atomically to a sidecar ``<sessionId>.upload.json`` next
  to the spool (upload id, bucket, key, part size, token) before any part is sent;
* while recording, each :class:`~edge_recorder.sink.plan.ChunkPlan` chunk
  (≥ part size, ending on a fragment boundary; no roll-ups) is sent as
  UploadPart number ``index + 1`` as soon as it is complete; a failing store
  is retried with backoff forever (the spool is the buffer; one part in memory);
* at stop, :meth:`finish` sends the rest (the tail) as the last part(s) and
  CompleteMultipartUpload: no server-side copy, so stop costs one part upload
  and one request. Then a HEAD checks the size, the spool is hashed and the
  sidecar deleted. The Complete never replaces an object (``If-None-Match: *``
  and a HEAD before it, :mod:`edge_recorder.sink.exclusive`): a recording whose
  key is taken fails, keeping the spool.
* :meth:`resume_and_finish` (crash recovery, ``retry-upload``, a failed
  finish) reads the sidecar, lists the parts the store holds (ListParts),
  keeps the leading ones whose size and (when it is an MD5) ETag match the
  spool's bytes, uploads the rest and completes. No usable sidecar, or an
  upload id the store no longer knows (``NoSuchUpload``): every incomplete
  upload of the key is aborted and a fresh upload starts from byte 0. When the
  object is already there and is this recording (a crash after Complete), the
  resume only verifies it; when it is another object, it is refused.

Parts a crash leaves are invisible in object listings and billed until
completed or aborted, so the bucket's AbortIncompleteMultipartUpload rule is
the backstop for a spool nobody resumes (docs/storage.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


import trio

from edge_recorder.errors import StorageError, UploadFailedError
from edge_recorder.sink.exclusive import existing_recording
from edge_recorder.sink.plan import S3_MIN_PART_BYTES, Chunk, ChunkPlan
from edge_recorder.sink.s3 import AsyncObjectStore, ObjectInfo, StoredPart
from edge_recorder.sink.uploader import RetryingUploads, SpoolDigest, UploadResult, backoff_s, read_range

__all__ = ["MAX_PARTS", "MultipartSpoolUploader", "Sidecar", "sidecar_path"]

log = logging.getLogger(__name__)


# S3 multipart rule: part numbers 1 to 10 000.
MAX_PARTS = 10_000
_SIDECAR_VERSION = 1
_MD5_RE = re.compile(r"[0-9a-f]{32}")


def sidecar_path(spool_path: Path, session_id: str) -> Path:
    """``<dir of the spool>/<sessionId>.upload.json``."""
    return spool_path.with_name(f"{session_id}.upload.json")


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


def _write_atomically(path: Path, text: str) -> None:
    """Write ``path`` via a temporary file, fsync, rename, fsync the directory."""
    tmp = path.with_name(path.name + ".tmp")
    # 0600 like the spool it describes; O_NOFOLLOW: a planted link is refused.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _md5_range(path: Path, start: int, end: int) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            block = f.read(min(left, 1 << 20))
            if not block:
                raise OSError(f"{path}: truncated at {end - left}")
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


class MultipartSpoolUploader(RetryingUploads):
    """Streams one session's spool file to the store as one multipart upload; completes it at stop.

    Same constructor and interface as :class:`~edge_recorder.sink.uploader.SpoolUploader`
    (without roll-ups).

    Args:
        store: the object store's Trio door.
        spool_path: ``RECORDING_TMP_DIR/<sessionId>.mp4``; the sidecar goes next to it.
        session_id: names the object.
        part_size_bytes: least part size (``RECORDING_S3_PART_SIZE_MIB`` MiB, at least 5 MiB).
        retry_s: how long :meth:`finish` retries before giving up (``RECORDING_UPLOAD_RETRY_S``).
        clock: Trio time, injectable for tests.
        rng: jitter source, injectable for tests.
        min_part_bytes: the floor for ``part_size_bytes`` (S3's 5 MiB).

    Attributes:
        chunks_uploaded_during_recording: parts :meth:`run` stored.
        parts_uploaded: every UploadPart that succeeded (also re-uploads).
        failures: store requests that failed and were retried.
    """

    def __init__(
        self,
        store: AsyncObjectStore,
        spool_path: str | os.PathLike[str],
        session_id: str,
        part_size_bytes: int,
        *,
        retry_s: float,
        clock: Callable[[], float] = trio.current_time,
        rng: random.Random | None = None,
        min_part_bytes: int = S3_MIN_PART_BYTES,
    ) -> None:
        self._store = store
        self.spool_path = Path(spool_path)
        self.session_id = session_id
        self.key = store.composite_key(session_id)
        self.sidecar_path = sidecar_path(self.spool_path, session_id)
        self._part_size = part_size_bytes
        self._min_part_bytes = min_part_bytes
        self._retry_s = retry_s
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._plan = ChunkPlan(part_size_bytes, min_part_bytes=min_part_bytes)
        self._upload_id: str | None = None
        # This upload's token on the object (UPLOAD_TOKEN_HEADER): set at
        # create, or read from the sidecar on resume.
        self._token: str | None = None
        self._etags: list[str] = []  # ETag of part i + 1, one per committed chunk
        self._wakeup = trio.Event()
        # Held while a part is chosen, uploaded and committed, so run() and
        # finish() never change the plan at once.
        self._lock = trio.Lock()
        self._spool_sha256 = SpoolDigest(self.spool_path)
        self.chunks_uploaded_during_recording = 0
        self.parts_uploaded = 0
        self.failures = 0

    # -- progress -------------------------------------------------------------

    @property
    def uploaded_bytes(self) -> int:
        """Bytes of the spool safely stored as parts (from offset 0)."""
        return self._plan.committed_bytes

    @property
    def uploaded_chunks(self) -> list[Chunk]:
        """The byte range of each stored part, in part-number order."""
        return self._plan.committed

    @property
    def upload_id(self) -> str | None:
        """The multipart upload's id once created."""
        return self._upload_id

    @property
    def url(self) -> str:
        """``s3://bucket/key`` of the recording."""
        return f"s3://{self._store.bucket}/{self.key}"

    async def stored_object(self) -> ObjectInfo | None:
        """The recording's object in the store (one HEAD), or None (recovery when the spool is gone).

        Raises:
            StorageError: the request failed.
        """
        return await self._store.head(self.key)

    # -- while recording ------------------------------------------------------

    def fragment_written(self, complete_bytes: int) -> None:
        """The spool's first ``complete_bytes`` bytes end a complete fragment (sync, cheap)."""
        self._plan.fragment_end(complete_bytes)
        self._wakeup.set()

    async def run(self) -> None:
        """Upload each part as soon as the plan allows; retry forever with backoff.

        Runs until cancelled (the session cancels it at stop, then calls
        :meth:`finish`). A part whose request was in flight at cancellation is
        not committed and is sent again (same number, same bytes) later.
        """
        while True:
            if self._plan.next_chunk() is None:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            attempt = 0
            while True:
                try:
                    async with self._lock:
                        chunk = self._plan.next_chunk()
                        if chunk is not None:
                            await self._upload(chunk)
                            self.chunks_uploaded_during_recording += 1
                    break
                except StorageError as exc:
                    attempt += 1
                    delay = backoff_s(attempt, self._rng)
                    self._log_failure(exc, f"retrying in {delay:.1f} s (attempt {attempt})")
                    await trio.sleep(delay)

    # -- at stop --------------------------------------------------------------

    async def finish(self, total_bytes: int) -> UploadResult:
        """Upload the rest as the last part(s), complete, verify, hash, delete the sidecar.

        Retried with backoff until ``retry_s`` has passed; parts stored are kept across attempts.

        Raises:
            UploadFailedError: the store kept failing for ``retry_s``, or the
                object has the wrong size; the spool (and the sidecar) are kept.
        """
        return await self._retrying(lambda: self._finish_once(total_bytes))

    async def resume_and_finish(self, total_bytes: int | None = None) -> UploadResult:
        """Finish from the parts already in the store (recovery, ``retry-upload``, a failed finish).

        Reads the sidecar, lists the upload's parts and keeps the leading ones
        that match the spool (size, and the ETag when it is an MD5); a part
        that does not is sent again. Without a usable sidecar, or when the
        store no longer knows the upload, aborts every incomplete upload of
        the key and starts again from byte 0.

        Args:
            total_bytes: the spool's size; None reads it from the file.

        Raises:
            UploadFailedError: as :meth:`finish`, or the spool cannot be read.
        """
        if total_bytes is None:
            try:
                total_bytes = (await trio.to_thread.run_sync(os.stat, self.spool_path)).st_size
            except OSError as exc:
                raise UploadFailedError(
                    f"cannot read the spool file: {exc}", destination=False, spool_path=str(self.spool_path)
                ) from exc
        total = total_bytes
        deadline = self._clock() + self._retry_s
        sidecar = await trio.to_thread.run_sync(_read_sidecar, self.sidecar_path)
        if sidecar is not None and (sidecar.bucket, sidecar.key) != (self._store.bucket, self.key):
            log.warning(
                "session %s: the upload sidecar names s3://%s/%s, not s3://%s/%s; starting a fresh upload",
                self.session_id, sidecar.bucket, sidecar.key, self._store.bucket, self.key,
            )
            sidecar = None
        self._token = sidecar.token if sidecar is not None else None
        # Before sending anything: the object may be there already (a crash
        # after Complete left the sidecar), or be someone else's.
        existing = await self._retrying(lambda: self._existing(total), deadline=deadline)
        if existing is not None:
            log.info("session %s: %s is already this recording; nothing to upload", self.session_id, existing.url)
            if sidecar is not None:
                await self._abort_quietly(sidecar.upload_id)
            return await self._done(existing, etag="")
        async with self._lock:
            self._plan = ChunkPlan(self._part_size, min_part_bytes=self._min_part_bytes)
            self._etags = []
            self._upload_id = None
            parts: list[StoredPart] | None = None
            if sidecar is not None:
                upload_id = sidecar.upload_id
                parts = await self._retrying(lambda: self._list_parts_or_none(upload_id), deadline=deadline)
                if parts is None:
                    log.warning("session %s: the store no longer knows upload %s; starting again", self.session_id, upload_id)
                else:
                    self._upload_id = upload_id
                    await self._keep_matching(parts, total)
            if self._upload_id is None:
                aborted = await self._retrying(
                    lambda: self._store.abort_incomplete_uploads(self.session_id), deadline=deadline
                )
                if aborted:
                    log.info("session %s: aborted %d incomplete multipart upload(s)", self.session_id, aborted)
                await trio.to_thread.run_sync(_remove, self.sidecar_path)
        log.info(
            "session %s: resuming the multipart upload after %d stored parts (%d of %d bytes)",
            self.session_id, len(self._etags), self._plan.committed_bytes, total,
        )
        return await self._retrying(lambda: self._finish_once(total), deadline=deadline)

    # -- internals ------------------------------------------------------------

    async def _list_parts_or_none(self, upload_id: str) -> list[StoredPart] | None:
        try:
            return await self._store.list_parts(self.key, upload_id)
        except StorageError as exc:
            if exc.code == "NoSuchUpload":
                return None
            raise

    async def _keep_matching(self, parts: list[StoredPart], total: int) -> None:
        """Commit the leading stored parts that are the spool's bytes; the rest is sent again."""
        offset = 0
        for expected, part in enumerate(parts, start=1):
            end = offset + part.size
            ok = part.number == expected and part.size > 0 and end <= total
            # Every part but the last must be at least the S3 minimum.
            ok = ok and (part.size >= self._min_part_bytes or end == total)
            if ok and self._store.part_etag_is_md5 and _MD5_RE.fullmatch(part.etag):
                try:
                    md5 = await trio.to_thread.run_sync(_md5_range, self.spool_path, offset, end)
                except OSError as exc:
                    raise UploadFailedError(
                        f"cannot read bytes [{offset}, {end}) of the spool file: {exc}",
                        destination=False,
                        spool_path=str(self.spool_path),
                    ) from exc
                ok = md5 == part.etag
            if not ok:
                log.warning(
                    "session %s: stored part %d (%d bytes) does not match the spool at %d; sending from there again",
                    self.session_id, part.number, part.size, offset,
                )
                break
            self._plan.commit((offset, end))
            self._etags.append(part.etag)
            offset = end

    async def _ensure_upload(self) -> str:
        """The upload id, creating the upload (and its sidecar) at the first part."""
        if self._upload_id is not None:
            return self._upload_id
        token = uuid.uuid4().hex
        upload_id = await self._store.create_multipart_upload(
            self.key, content_type="video/mp4", kind="recording", token=token
        )
        sidecar = Sidecar(upload_id, self._store.bucket, self.key, self._part_size, token)
        try:
            await trio.to_thread.run_sync(_write_atomically, self.sidecar_path, sidecar.dumps())
        except OSError as exc:
            raise UploadFailedError(
                f"cannot write the upload sidecar {self.sidecar_path}: {exc}",
                destination=False,
                spool_path=str(self.spool_path),
            ) from exc
        self._upload_id = upload_id
        self._token = token
        log.debug("session %s: multipart upload %s of %s started", self.session_id, upload_id, self.key)
        return upload_id

    async def _upload(self, chunk: Chunk) -> None:
        """Read one chunk from the spool, send it as the next part, commit it."""
        start, end = chunk
        number = len(self._etags) + 1
        if number > MAX_PARTS:
            raise UploadFailedError(
                f"the recording needs more than {MAX_PARTS} parts; raise RECORDING_S3_PART_SIZE_MIB",
                destination=False,
                spool_path=str(self.spool_path),
            )
        upload_id = await self._ensure_upload()
        try:
            data = await trio.to_thread.run_sync(read_range, self.spool_path, start, end)
        except OSError as exc:
            raise UploadFailedError(
                f"cannot read bytes [{start}, {end}) of the spool file: {exc}",
                destination=False,
                spool_path=str(self.spool_path),
            ) from exc
        etag = await self._store.upload_part(self.key, upload_id, number, data)
        del data
        self._plan.commit(chunk)
        self._etags.append(etag)
        self.parts_uploaded += 1
        log.debug("session %s: stored part %d [%d, %d)", self.session_id, number, start, end)

    async def _finish_once(self, total_bytes: int) -> UploadResult:
        async with self._lock:
            try:
                while (chunk := self._plan.final_chunk(total_bytes)) is not None:
                    await self._upload(chunk)
            except ValueError as exc:
                raise UploadFailedError(
                    f"the stored parts do not fit the spool file: {exc}", destination=False, spool_path=str(self.spool_path)
                ) from exc
            if self._upload_id is None or not self._etags:
                raise UploadFailedError("the spool file is empty", destination=False, spool_path=str(self.spool_path))
            upload_id = self._upload_id
            parts = [(i, etag) for i, etag in enumerate(self._etags, start=1)]
        # Never over an object this upload did not write: a HEAD first (also
        # the guard where the store ignores If-None-Match), then a conditional
        # Complete; a refusal (or an upload gone because our Complete already
        # succeeded, its answer lost) asks again whose the object is.
        existing = await self._existing(total_bytes)
        if existing is not None:
            await self._abort_quietly(upload_id)
            return await self._done(existing, etag="")
        try:
            etag = await self._store.complete_multipart_upload(self.key, upload_id, parts)  # If-None-Match: *
        except StorageError as exc:
            if exc.code not in ("PreconditionFailed", "NoSuchUpload"):
                raise
            existing = await self._existing(total_bytes)
            if existing is None:
                raise StorageError(
                    f"completing {self.key} failed ({exc.code}) and there is no object", destination=False, code=exc.code
                ) from exc
            return await self._done(existing, etag="")
        info = await self._store.stat(self.key)
        if info.size != total_bytes:
            raise UploadFailedError(
                f"the completed object {info.key} has {info.size} bytes, the spool {total_bytes}",
                destination=False,
                spool_path=str(self.spool_path),
            )
        return await self._done(info, etag=etag)

    async def _existing(self, total_bytes: int) -> ObjectInfo | None:
        """See :func:`~edge_recorder.sink.exclusive.existing_recording` (refuses another object)."""
        return await existing_recording(
            self._store,
            self.key,
            total_bytes=total_bytes,
            token=self._token,
            spool_sha256=self._spool_sha256,
            spool_path=self.spool_path,
        )

    async def _abort_quietly(self, upload_id: str) -> None:
        """Abort an upload that is no longer needed (best effort: the lifecycle rule is the backstop)."""
        try:
            await self._store.abort_multipart_upload(self.key, upload_id)
        except StorageError as exc:
            if exc.code != "NoSuchUpload":
                log.warning("session %s: cannot abort upload %s: %s", self.session_id, upload_id, exc)

    async def _done(self, info: ObjectInfo, *, etag: str) -> UploadResult:
        """The verified object: hash the spool, delete the sidecar."""
        sha256 = await self._spool_sha256()
        try:
            await trio.to_thread.run_sync(_remove, self.sidecar_path)
        except OSError as exc:  # harmless: a stale sidecar only makes a resume check the object first
            log.warning("session %s: cannot delete the upload sidecar: %s", self.session_id, exc)
        return UploadResult(
            bucket=info.bucket,
            key=info.key,
            size=info.size,
            sha256_hex=sha256,
            etag=etag or info.etag,
            chunks=_part_count(info.etag) if not etag else len(self._etags),
        )


def _part_count(etag: str) -> int:
    """Parts of a multipart ETag (``<md5>-<n>``); 1 for a plain one."""
    _md5, dash, count = etag.rpartition("-")
    return int(count) if dash and count.isdigit() else 1
