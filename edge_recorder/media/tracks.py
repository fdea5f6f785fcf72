"""Every stream's own track beside the composite (issue #14): the worker's archive of them.

The worker hands each encoded input frame to :meth:`TrackArchive.offer` as it
arrives (in the Trio thread: a list append, no I/O), stamped with its time on
the output timeline (pauses cut out, the composite's). The blocking part,
muxing into the files (:class:`~edge_recorder.media.stems.TrackWriter`, no
transcoding), runs in the worker's thread door a few times a second as one
call for all tracks (:meth:`write_pending`), so a 20-person room costs a
handful of thread hand-offs a second, not one per packet.

Policies:

* pending frames are bounded per track (:data:`MAX_PENDING_FRAMES`) and in
  bytes for the archive (:data:`MAX_PENDING_BYTES`); beyond, a frame is
  dropped and counted as skipped (the muxing thread is behind: the
  composite, which shares the door, comes first);
* a stream removed and added again under its key (a producer replaced, a
  new SSRC) gets a new file, ``<key>.2.webm``, listed beside the first;
* a stretch of more than :data:`GAP_S` (audio) or :data:`VIDEO_GAP_S` (video)
  between two frames is a gap, ``"excluded"`` when the peer was taken out of
  the recording in between, ``"no-media"`` otherwise (mute, camera off, loss);
  at most :data:`MAX_GAPS` per track are listed (the last one then runs to
  the next media).

File names come from stream keys (producer ids, hostile input): only
``[A-Za-z0-9._-]``, never starting with a dot, unique in the directory.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

from edge_recorder.media import wire

if TYPE_CHECKING:
    from edge_recorder.media.stems import TrackWriter

__all__ = ["GAP_S", "MAX_GAPS", "MAX_PENDING_BYTES", "MAX_PENDING_FRAMES", "MAX_TRACKS", "VIDEO_GAP_S", "TrackArchive", "track_file_name"]

#: Audio silence longer than this is a gap (Opus DTX sends a packet every 400 ms at most).
GAP_S = 0.5
#: Video stills longer than this are a gap (a static screen share still sends a frame a second or so).
VIDEO_GAP_S = 2.0
MAX_GAPS = 1000
#: Frames waiting for the muxing thread, per track: 10 s of 60 fps video or 50 s of 20 ms Opus.
MAX_PENDING_FRAMES = 600
#: Bytes waiting for the muxing thread, all tracks together.
MAX_PENDING_BYTES = 64 * 1024 * 1024
#: Track files one recording may open: an SFU re-adding streams without end
#: must not fill the disk's directory (or the manifest) with them.
MAX_TRACKS = 1000
_NAME_MAX = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def track_file_name(key: str, extension: str, taken: set[str]) -> str:
    """A file name for stream ``key``'s track, safe in a directory and an object key, not in ``taken`` (pure).

    ``alice-cam`` → ``alice-cam.webm``; a second file for it
    ``alice-cam.2.webm``; ``../x`` → ``_._x.webm``.
    """
    stem = _UNSAFE.sub("_", key)[:_NAME_MAX] or "track"
    if stem.startswith("."):
        stem = "_" + stem[1:]
    name = f"{stem}{extension}"
    n = 2
    while name in taken:
        name = f"{stem}.{n}{extension}"
        n += 1
    return name


@dataclass
class _Track:
    key: str
    file: str
    codec: str
    kind: wire.MediaKind
    writer: TrackWriter | None
    pending: list[tuple[bytes, float, bool]] = field(default_factory=list)
    dropped: int = 0
    complete_bytes: int = 0
    closed: bool = False
    # The writer failed (a disk error): the file stays as far as it got.
    failed: bool = False
    # Set when the peer is excluded; the next gap is "excluded", then cleared.
    excluded_since: float | None = None
    last_written_s: float | None = None
    gaps: list[wire.TrackGap] = field(default_factory=list)

    @property
    def gap_s(self) -> float:
        return VIDEO_GAP_S if self.kind == "video" else GAP_S

    def event(self) -> wire.Track:
        w = self.writer
        return wire.Track(
            key=self.key,
            file=self.file,
            codec=self.codec,
            kind=self.kind,
            complete_bytes=self.complete_bytes,
            first_s=None if w is None or w.first_s is None else round(w.first_s, 4),
            last_s=None if w is None or w.last_s is None else round(w.last_s, 4),
            frames=0 if w is None else w.frames_written,
            skipped=self.dropped + (0 if w is None else w.frames_skipped),
            closed=self.closed,
            gaps=tuple(self.gaps) if self.closed else (),
        )


class TrackArchive:
    """The tracks of one recording, in ``directory``.

    Args:
        directory: where the files go (the parent created it).
        warn: reports a track that cannot be written (the recording goes on).
    """

    def __init__(self, directory: str, warn: Callable[[str], None]) -> None:
        self.directory = directory
        self._warn = warn
        self._by_key: dict[str, _Track] = {}
        self._all: list[_Track] = []
        self._names: set[str] = set()
        self._pending_bytes = 0

    # -- in the Trio thread (no I/O) ---------------------------------------------

    def open(self, key: str, kind: wire.MediaKind, codec: str) -> None:
        """A stream was added: its track, continued when the key's open track has this codec."""
        current = self._by_key.get(key)
        if current is not None and not current.closed and current.codec == codec and current.kind == kind:
            return
        if current is not None:
            self.close_stream(key)
        if len(self._all) >= MAX_TRACKS:
            self._warn(f"no track for stream {key!r}: this recording has {MAX_TRACKS} tracks already"[:300])
            return
        # Imported here, not at the top: stems needs PyAV (the worker's), and
        # recovery imports this module for its limits only.
        from edge_recorder.media.stems import track_format

        try:
            fmt = track_format(codec, kind)
        except Exception as exc:  # noqa: BLE001 - a codec we cannot keep costs its track, not the recording
            self._warn(f"no track for stream {key!r}: {exc}"[:300])
            return
        name = track_file_name(key, fmt.extension, self._names)
        self._names.add(name)
        track = _Track(key=key, file=name, codec=codec, kind=kind, writer=None)
        self._by_key[key] = track
        self._all.append(track)

    def close_stream(self, key: str) -> None:
        """A stream was removed: its track is closed at the next :meth:`write_pending`."""
        track = self._by_key.pop(key, None)
        if track is not None:
            track.closed = True  # written out and finalised by the muxing thread

    def excluded(self, keys: list[str], at_s: float) -> None:
        """The peer of these streams was taken out at output time ``at_s``: their next gap says so."""
        for key in keys:
            track = self._by_key.get(key)
            if track is not None and track.excluded_since is None:
                track.excluded_since = at_s

    def offer(self, key: str, data: bytes, output_s: float, keyframe: bool) -> None:
        """One encoded frame of stream ``key`` at output time ``output_s``; queued for the muxing thread."""
        track = self._by_key.get(key)
        if track is None or not math.isfinite(output_s):
            return
        if len(track.pending) >= MAX_PENDING_FRAMES or self._pending_bytes + len(data) > MAX_PENDING_BYTES:
            track.dropped += 1
            return
        track.pending.append((data, output_s, keyframe))
        self._pending_bytes += len(data)

    # -- in the worker's thread door (blocking) ----------------------------------

    def write_pending(self) -> None:
        """Mux every queued frame; finalise the tracks closed since."""
        for track in list(self._all):
            batch, track.pending = track.pending, []
            for data, output_s, keyframe in batch:
                self._pending_bytes -= len(data)
                self._write(track, data, output_s, keyframe)
            if track.closed and track.writer is not None and not track.failed:
                self._finalise(track)

    def flush(self) -> list[wire.Track]:
        """Make what is written durable; the ``track`` events of the tracks that grew or closed."""
        self.write_pending()
        events = []
        for track in self._all:
            if track.writer is None or track.failed or track.closed:
                continue
            try:
                complete = track.writer.flush()
            except Exception as exc:  # noqa: BLE001 - see _write
                self._fail(track, exc)
                continue
            if complete != track.complete_bytes:
                track.complete_bytes = complete
                events.append(track.event())
        return events

    def close(self) -> list[wire.Track]:
        """Write the rest and finalise every track; one closed ``track`` event each (those with media)."""
        for track in self._all:
            track.closed = True
        self.write_pending()
        return [track.event() for track in self._all if track.writer is not None]

    # -- internals -----------------------------------------------------------------

    def _write(self, track: _Track, data: bytes, output_s: float, keyframe: bool) -> None:
        if track.failed:
            return
        if track.writer is None:
            try:
                from edge_recorder.media.stems import TrackWriter

                track.writer = TrackWriter(os.path.join(self.directory, track.file), track.codec, track.kind)
            except Exception as exc:  # noqa: BLE001 - one track's file, never the recording
                self._fail(track, exc)
                return
        last = track.last_written_s
        try:
            written = track.writer.write(data, output_s, keyframe)
        except Exception as exc:  # noqa: BLE001 - TrackWriter does not raise for media; a disk error might
            self._fail(track, exc)
            return
        if not written:
            return
        if last is not None and output_s - last > track.gap_s and len(track.gaps) < MAX_GAPS:
            excluded = track.excluded_since is not None and track.excluded_since <= output_s
            track.gaps.append(wire.TrackGap(round(last, 4), round(output_s, 4), "excluded" if excluded else "no-media"))
        if track.excluded_since is not None and track.excluded_since <= output_s:
            track.excluded_since = None  # the peer is back; frames before the exclusion do not clear it
        track.last_written_s = output_s

    def _finalise(self, track: _Track) -> None:
        assert track.writer is not None
        try:
            track.complete_bytes = track.writer.close()
        except Exception as exc:  # noqa: BLE001
            self._fail(track, exc)
        track.failed = True  # closed: nothing more goes in

    def _fail(self, track: _Track, exc: BaseException) -> None:
        self._warn(f"track {track.file} of stream {track.key!r} stopped: {type(exc).__name__}: {exc}"[:300])
        track.failed = track.closed = True
        self._pending_bytes -= sum(len(data) for data, _, _ in track.pending)
        track.pending.clear()
        if track.writer is not None:
            try:
                track.complete_bytes = track.writer.close()
            except Exception:  # noqa: BLE001 - the file stays as far as it got
                pass
        if self._by_key.get(track.key) is track:
            del self._by_key[track.key]
