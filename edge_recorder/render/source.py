"""Where a re-render's manifest and tracks come from: a directory, this node's spool, or the bucket.

In that order, for ``edge-recorder render <sessionId>``:

1. ``--tracks-dir DIR``: a directory holding ``manifest.json`` and the
   tracks (beside it, or under ``tracks/`` as in the bucket);
2. this node's spool, ``RECORDING_TMP_DIR/<serverId>/<sessionId>.tracks/``:
   a recording without a bucket keeps its tracks there, and so does one
   whose upload failed;
3. the bucket (``RECORDING_S3_BUCKET``): ``<prefix><sessionId>/manifest.json``
   and each track it names, downloaded into a scratch directory first (the
   decoders read files), each bounded: the manifest by
   :data:`~edge_recorder.render.plan.MAX_MANIFEST_BYTES`, a track by
   :data:`MAX_TRACK_BYTES`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import trio

from edge_recorder.config import Settings
from edge_recorder.errors import ManifestError, MediaError, StorageError, UnknownSessionError
from edge_recorder.render.plan import MAX_MANIFEST_BYTES, RecordingPlan, parse_manifest
from edge_recorder.session.manifest import MANIFEST_NAME
from edge_recorder.sink.s3 import AsyncObjectStore
from edge_recorder.spool import NodeSpool

__all__ = ["MAX_TRACK_BYTES", "RecordingFiles", "download_recording", "local_recording", "read_manifest"]

#: No track of a recording is bigger (a day of a 4K share at 8 Mbit/s is ~86 GB; this is a bound, not a plan).
MAX_TRACK_BYTES = 128 << 30


@dataclass(frozen=True, slots=True)
class RecordingFiles:
    """A recording ready to render: its plan, and the directory its files are in."""

    plan: RecordingPlan
    directory: Path
    where: str


def read_manifest(directory: Path) -> RecordingPlan:
    """The plan of the manifest in ``directory``.

    Raises:
        ManifestError: no manifest there, or one that cannot be read.
    """
    path = directory / MANIFEST_NAME
    try:
        with path.open("rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_manifest(data)


def local_recording(settings: Settings, session_id: str, tracks_dir: Path | None = None) -> RecordingFiles | None:
    """The recording in ``tracks_dir``, else in this node's spool; None if the spool has none.

    Raises:
        ManifestError: ``tracks_dir`` holds no readable manifest, or the spool's cannot be read.
    """
    if tracks_dir is not None:
        return RecordingFiles(read_manifest(tracks_dir), tracks_dir, str(tracks_dir))
    spooled = NodeSpool(Path(settings.tmp_dir), settings.server_id).tracks_dir_for(session_id)
    if not (spooled / MANIFEST_NAME).is_file():
        return None
    return RecordingFiles(read_manifest(spooled), spooled, str(spooled))


class _FileWriter:
    """Writes a download into a new file; a local failure is ours, not the store's (MediaError)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise MediaError(f"cannot create {path}: {exc.strerror or exc}") from None

    def __call__(self, piece: bytes) -> None:
        view = memoryview(piece)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise MediaError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        os.close(self._fd)


async def _download(store: AsyncObjectStore, key: str, path: Path, max_bytes: int) -> int:
    writer = await trio.to_thread.run_sync(_FileWriter, path)
    try:
        return await store.download(key, writer, max_bytes=max_bytes)
    finally:
        writer.close()


async def download_recording(store: AsyncObjectStore, session_id: str, scratch: Path) -> RecordingFiles:
    """Download ``session_id``'s manifest and every track it names into ``scratch`` (an empty directory).

    Raises:
        UnknownSessionError: the bucket has no manifest for it (no tracks were kept).
        ManifestError: the manifest cannot be read.
        StorageError: a download failed or an object is bigger than its bound.
        MediaError: a file in ``scratch`` cannot be written.
    """
    manifest_key = store.asset_key(session_id, MANIFEST_NAME)
    try:
        await _download(store, manifest_key, scratch / MANIFEST_NAME, MAX_MANIFEST_BYTES)
    except StorageError as exc:
        if exc.code == "NoSuchKey":
            raise UnknownSessionError(
                f"no manifest for session {session_id} in bucket {store.bucket} ({manifest_key}): "
                'it was recorded without outputs: ["composite", "tracks"], or is not there'
            ) from None
        raise
    plan = await trio.to_thread.run_sync(read_manifest, scratch)
    if plan.session_id != session_id:
        raise ManifestError(f"the manifest at {manifest_key} is session {plan.session_id}'s, not {session_id}'s")
    (scratch / "tracks").mkdir(mode=0o700)
    for track in plan.tracks:
        await _download(store, store.asset_key(session_id, track.file), scratch / track.file, MAX_TRACK_BYTES)
    return RecordingFiles(plan, scratch, f"s3://{store.bucket}/{manifest_key.removesuffix(MANIFEST_NAME)}")
