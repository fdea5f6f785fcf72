"""A recording's tracks directory delivered as assets (issue #14): one path for a stop, a recovery and ``retry-upload``.

``RECORDING_TMP_DIR/<serverId>/<sessionId>.tracks/`` holds every stream's own
track and ``manifest.json``. At a normal stop the session
(:meth:`~edge_recorder.session.session.RecordingSession._deliver_tracks`),
after a crash the recovery and, for a failed upload, ``retry-upload``
(:mod:`edge_recorder.recovery`) all deliver it here:

* each track with complete bytes, then the manifest, goes through ``send``
  under its asset name (``tracks/<file>``, ``manifest.json``): uploaded to
  the bucket, or, without one (``send`` None), left where it is as the
  artifact (a ``file://`` URL);
* the first file that cannot be delivered stops it: the error names it and
  the kept directory; nothing is removed;
* once all of them are in the bucket, verified, the local copies go (the
  directory too, if nothing else is in it).

What comes back is the state record's ``tracks`` and ``manifest`` entries
(docs/control-protocol.md), from which the bookkeeper writes one
``RecordingAsset`` row each (kinds ``track`` and ``manifest``).

The manifest is written with :func:`write_manifest` only: exclusively, never
over one already there (a recovery after a stop that wrote it keeps it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from edge_recorder.errors import EdgeRecorderError, MediaError
from edge_recorder.media import wire
from edge_recorder.session.destination import Asset, LocalDestination
from edge_recorder.session.manifest import MANIFEST_NAME
from edge_recorder.sink.plan import AUDIO_ASSET

__all__ = ["AssetSender", "TrackDelivery", "asset_entry", "audio_mix_path", "deliver_audio_mix", "deliver_tracks", "track_asset_name", "write_manifest"]

log = logging.getLogger(__name__)

AssetSender = Callable[[str, Path, int], Awaitable[Asset]]
"""Delivers one file to the bucket: ``(asset name, path, bytes to deliver) -> Asset``.

Raises :class:`~edge_recorder.errors.EdgeRecorderError` when it cannot
(the file stays where it is).
"""


def track_asset_name(file: str) -> str:
    """The asset name of track file ``file``: ``tracks/<file>``."""
    return f"tracks/{file}"


@dataclass(frozen=True, slots=True)
class TrackDelivery:
    """What :func:`deliver_tracks` did.

    Attributes:
        tracks: the state record's ``tracks`` entries of the delivered tracks.
        manifest: the state record's ``manifest`` entry; None when it failed.
        error: why the delivery stopped (names the file and the kept
            directory), None when everything was delivered.
    """

    tracks: tuple[dict[str, Any], ...] = ()
    manifest: dict[str, Any] | None = None
    error: str | None = None


def write_manifest(path: Path, body: bytes) -> None:
    """Write ``body`` as a new file at ``path``, 0600, durable (blocking: call it in a thread).

    Raises:
        FileExistsError: a manifest is already there (it is never written over).
        OSError: the disk refused.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(body)
        out.flush()
        os.fsync(out.fileno())


def asset_entry(name: str, asset: Asset) -> dict[str, Any]:
    """The state record's entry of a delivered file other than a track (``manifest``, ``audio``)."""
    return {
        "name": name,
        "url": asset.url,
        "sizeBytes": asset.size_bytes,
        "bucket": asset.bucket,
        "key": asset.key,
        "sha256": asset.sha256,
    }


def _track_entry(name: str, asset: Asset, event: wire.Track) -> dict[str, Any]:
    return {
        "name": name,
        "producerId": event.key,
        "kind": event.kind,
        "codec": event.codec,
        "url": asset.url,
        "sizeBytes": asset.size_bytes,
        "bucket": asset.bucket,
        "key": asset.key,
        "sha256": asset.sha256,
        "startS": event.first_s,
        "endS": event.last_s,
    }


async def deliver_tracks(
    tracks_dir: Path,
    tracks: Sequence[wire.Track],
    manifest_size: int,
    *,
    send: AssetSender | None,
    node: str,
) -> TrackDelivery:
    """Deliver ``tracks`` (their files in ``tracks_dir``) and the manifest already written there.

    Args:
        tracks_dir: the session's tracks directory.
        tracks: each track's last event (its file, key, kind, codec, times and
            ``complete_bytes``, what is delivered of it); a track without
            complete bytes has no file worth a name and is left out.
        manifest_size: the bytes of ``tracks_dir/manifest.json``.
        send: the bucket's sender; None: no bucket, the files stay as the artifacts.
        node: ``RECORDING_SERVER_ID``, named in the error (the files are on it).
    """
    manifest_path = tracks_dir / MANIFEST_NAME
    files: list[tuple[str, Path, int, wire.Track | None]] = [
        (track_asset_name(event.file), tracks_dir / event.file, event.complete_bytes, event)
        for event in tracks
        if event.complete_bytes > 0
    ]
    files.append((MANIFEST_NAME, manifest_path, manifest_size, None))
    delivered: list[tuple[str, Asset, wire.Track | None]] = []
    for name, path, size, event in files:
        try:
            asset = await (LocalDestination(path).finish(size) if send is None else send(name, path, size))
        except (EdgeRecorderError, OSError) as exc:
            what = "upload" if send is not None else "delivery"
            return TrackDelivery(
                tracks=tuple(_track_entry(n, a, e) for n, a, e in delivered if e is not None),
                error=f"{what} of {name} failed: {exc}; the tracks are kept in {tracks_dir} on node {node}",
            )
        delivered.append((name, asset, event))
    manifest = next(asset for _, asset, event in delivered if event is None)
    result = TrackDelivery(
        tracks=tuple(_track_entry(name, asset, event) for name, asset, event in delivered if event is not None),
        manifest=asset_entry(MANIFEST_NAME, manifest),
    )
    if send is not None:
        # All of it is in the store, verified: the local copies go.
        def remove() -> None:
            for _, path, _, _ in files:
                path.unlink(missing_ok=True)
            for event in tracks:
                if event.complete_bytes == 0:  # never a frame: nothing of it was worth delivering
                    (tracks_dir / event.file).unlink(missing_ok=True)
            tracks_dir.rmdir()

        try:
            await trio.to_thread.run_sync(remove)
        except OSError as exc:
            log.warning("could not remove the uploaded tracks in %s: %s", tracks_dir, exc)
    return result


def audio_mix_path(composite: Path, session_id: str) -> Path:
    """Where the audio-only mix is made: ``<sessionId>.audio.m4a`` beside the composite's spool."""
    return composite.with_name(f"{session_id}.audio.m4a")


async def deliver_audio_mix(
    composite: Path, session_id: str, *, send: AssetSender | None, node: str
) -> tuple[dict[str, Any] | None, str | None]:
    """Make ``audio.m4a`` from the finished composite (media/remux.py) and deliver it, as at a stop or a recovery.

    Returns:
        The state record's ``audio`` entry, or None and why not (the file is
        kept on the node and named). One already there (a crash while it was
        made or sent) is made again: it is derived, never the original.
    """
    # PyAV in the parent process only here (the media worker does the media).
    from edge_recorder.media.remux import extract_audio

    path = audio_mix_path(composite, session_id)
    try:
        size = await trio.to_thread.run_sync(_extract_again, extract_audio, composite, path)
    except MediaError as exc:
        return None, f"the audio-only mix could not be made: {exc}"
    try:
        asset = await (LocalDestination(path).finish(size) if send is None else send(AUDIO_ASSET, path, size))
    except (EdgeRecorderError, OSError) as exc:
        return None, f"upload of {AUDIO_ASSET} failed: {exc}; it is kept at {path} on node {node}"
    if send is not None:
        try:
            await trio.to_thread.run_sync(path.unlink)  # in the bucket, verified
        except OSError as exc:
            log.warning("could not remove the uploaded %s: %s", path, exc)
    return asset_entry(AUDIO_ASSET, asset), None


def _extract_again(extract: Callable[[Path, Path], int], composite: Path, path: Path) -> int:
    # One left by a crash may be partial; it is only ever derived from the
    # composite, so it is made again from it rather than trusted.
    path.unlink(missing_ok=True)
    return extract(composite, path)
