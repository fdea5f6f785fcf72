"""Never over an object we did not write: the check every upload makes before its final write.

A session id can come back (a client that reuses ids, a restart that replays a
start): its recording would go to the key of a finished one,
``<prefix><sessionId>/composite.mp4``, and S3 replaces an object silently. So
the final write of a recording (CompleteMultipartUpload in the ``multipart``
mode, the compose in the ``chunks`` mode) is conditional (``If-None-Match:
*``, see :class:`~edge_recorder.sink.s3.MultipartApi`), and before it, and
after a refusal, the spool streamer (:mod:`edge_recorder.sink.streamer`) asks
:func:`existing_recording` whose the object at the key is:

* **ours**: it carries this upload's token (:data:`~edge_recorder.sink.s3.UPLOAD_TOKEN_HEADER`,
  kept in the multipart sidecar) and the spool's size. That is our own
  Complete whose answer was lost, or a crash after Complete that left the
  sidecar: the upload is done.
* **the same recording**: no token of ours (a resume in a new process, an
  older object), but the same size and the same SHA-256 as the spool (one GET
  of the object, only in this rare case). Nothing would change by writing it
  again, so it counts as done.
* **someone else's**: the upload is refused with
  :class:`~edge_recorder.errors.UploadFailedError` (``destination=True``,
  ``code="ObjectExists"``) naming the object and the kept spool file. The
  object is left as it is, and so is the spool.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from edge_recorder.errors import UploadFailedError
from edge_recorder.sink.store import ObjectInfo

__all__ = ["OBJECT_EXISTS", "ObjectAtKey", "existing_recording", "is_this_upload", "object_exists_error"]

log = logging.getLogger(__name__)

# StorageError.code of a refused upload: the key holds an object that is not this recording.
OBJECT_EXISTS = "ObjectExists"


class ObjectAtKey(Protocol):
    """The recording's key as the check reads it (an upload target)."""

    async def head(self) -> ObjectInfo | None:
        """The object at the key, or None."""

    async def stored_sha256(self) -> str:
        """SHA-256 of the object at the key."""


def is_this_upload(info: ObjectInfo, *, total_bytes: int, token: str | None) -> bool:
    """Whether ``info`` is the object this upload wrote: our token and the spool's size (pure)."""
    return token is not None and info.upload_token == token and info.size == total_bytes


def object_exists_error(info: ObjectInfo, spool_path: Path) -> UploadFailedError:
    """The refusal: an object that is not this recording is at the recording's key."""
    return UploadFailedError(
        f"an object already exists at {info.url} ({info.size} bytes) and is not this recording; "
        "it is never overwritten (move it, or record under another session id, then retry-upload)",
        destination=True,
        spool_path=str(spool_path),
        code=OBJECT_EXISTS,
    )


async def existing_recording(
    at_key: ObjectAtKey,
    *,
    total_bytes: int,
    token: str | None,
    spool_sha256: Callable[[], Awaitable[str]],
    spool_path: Path,
) -> ObjectInfo | None:
    """Whose is the object at ``key``? None when there is none.

    Args:
        at_key: the recording's final key (HEAD and, rarely, its SHA-256).
        total_bytes: the spool's size.
        token: this upload's token (None: unknown, e.g. no sidecar).
        spool_sha256: the spool's SHA-256 (called only to compare contents).
        spool_path: named in the refusal.

    Returns:
        None (no object), or the object when it is this recording (see the module docstring).

    Raises:
        UploadFailedError: ``code="ObjectExists"``: another object is there.
        StorageError: a request failed (the caller retries).
    """
    info = await at_key.head()
    if info is None:
        return None
    if is_this_upload(info, total_bytes=total_bytes, token=token):
        return info
    if info.size == total_bytes and await at_key.stored_sha256() == await spool_sha256():
        log.info("%s already holds this recording (same size and SHA-256); not written again", info.url)
        return info
    raise object_exists_error(info, spool_path)
