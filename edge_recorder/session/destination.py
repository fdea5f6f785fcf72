"""Where a finished recording goes: a bucket, or the local directory.

A session feeds its destination each complete fragment as it lands (so a
bucket receives the recording *while* it is recorded) and, at stop, asks it to
finish. The local spool file is always complete; it is removed only after a
verified upload and kept, with its path in the error, when the upload fails.

* :class:`LocalDestination` (no bucket configured, the embedded default): the
  spool file is the artifact; the session completes with a ``file://`` URL.
  It writes nothing: the spool was created exclusively
  (:meth:`~edge_recorder.spool.NodeSpool.create`), so no finished recording is
  ever written over.
* :class:`S3Destination`: parts (or chunks) uploaded in the background during
  the recording, completed (or composed) into ``<prefix><sessionId>/composite.mp4``
  at stop, never over an object another upload wrote (see
  ``edge_recorder/sink/exclusive.py`` and docs/storage.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from edge_recorder.sink.uploader import sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Asset:
    """The recording at its destination (``RecordingAsset``).

    ``sha256`` is None only for a recording recovered from the store after its
    spool was gone, when no row had kept the hash.
    """

    url: str
    size_bytes: int
    sha256: str | None
    bucket: str | None = None
    key: str | None = None
    sse_mode: str | None = None

    def record(self) -> dict[str, Any]:
        """The state record's ``asset`` block."""
        return {"bucket": self.bucket, "key": self.key, "size": self.size_bytes, "url": self.url}


class Destination(Protocol):
    def fragment_written(self, complete_bytes: int) -> None:
        """A fragment ending at ``complete_bytes`` is on disk (cheap, sync)."""

    async def run(self) -> None:
        """Background work during the recording; cancelled at stop."""

    async def finish(self, total_bytes: int) -> Asset:
        """Deliver the whole recording.

        Raises:
            UploadFailedError: the destination refused it for longer than the
                retry period; the spool file stays where it is.
        """

    @property
    def removes_spool(self) -> bool:
        """Whether the spool is deleted after a successful finish."""


class LocalDestination:
    """The local directory is the destination: nothing to upload."""

    removes_spool = False

    def __init__(self, spool_path: Path) -> None:
        self._path = spool_path

    def fragment_written(self, complete_bytes: int) -> None:
        pass

    async def run(self) -> None:
        await trio.sleep_forever()

    async def finish(self, total_bytes: int) -> Asset:
        sha = await trio.to_thread.run_sync(sha256_file, self._path)
        return Asset(url=self._path.resolve().as_uri(), size_bytes=total_bytes, sha256=sha)


class S3Destination:
    """Streams the spool to a bucket while recording (chunks), composes at stop."""

    removes_spool = True

    def __init__(self, uploader: Any, *, bucket: str, sse_mode: str, presign: Any = None) -> None:
        self._uploader = uploader
        self._bucket = bucket
        self._sse_mode = sse_mode

    def fragment_written(self, complete_bytes: int) -> None:
        self._uploader.fragment_written(complete_bytes)

    @property
    def uploaded_bytes(self) -> int:
        """Bytes of the recording safely in the store so far."""
        return int(self._uploader.uploaded_bytes)

    async def run(self) -> None:
        await self._uploader.run()

    async def finish(self, total_bytes: int) -> Asset:
        result = await self._uploader.finish(total_bytes)
        return Asset(
            url=f"s3://{result.bucket}/{result.key}",
            size_bytes=result.size,
            sha256=result.sha256_hex,
            bucket=result.bucket,
            key=result.key,
            sse_mode=self._sse_mode,
        )
