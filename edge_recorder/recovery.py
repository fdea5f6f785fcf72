"""Crash recovery: finalise the sessions this node owned that never ended.

At start-up, before accepting work, the service asks the metadata database for
this node's sessions that are not terminal (the process died mid-recording or
mid-upload). For each:

1. the spool is found (:meth:`~edge_recorder.spool.NodeSpool.find`:
   ``RECORDING_TMP_DIR/<serverId>/<sessionId>.mp4``, or the layout before it,
   ``RECORDING_TMP_DIR/<sessionId>.mp4``) and cut after its last complete
   fragment and the complete boxes after it (a partial box at the end is what
   a crash leaves; a finished file's trailer is kept);
2. the complete fragments are delivered: with a bucket, the upload resumes
   from what the store holds (nothing is uploaded twice, an object that is not
   this recording is never overwritten); without one, the file stays as the
   artifact;
3. a session that kept its tracks (``outputs: ["composite", "tracks"]``)
   has them recovered too, after the composite (:func:`recover_tracks`):
   ``<sessionId>.tracks/`` is listed, each track cut after its last complete
   unit (WebM: the last complete cluster,
   :func:`~edge_recorder.media.webm.last_complete_cluster_end`; MP4:
   :func:`last_complete_fragment_end`) and probed with PyAV; a manifest
   written at a stop is delivered as it is, else one is built from the files
   (``"recovered": true``, :func:`recovered_manifest`) and written
   exclusively; every track and the manifest are delivered as the composite
   is (:func:`~edge_recorder.session.track_delivery.deliver_tracks`: uploaded,
   or left as the files), an asset row each. A track without a complete
   unit stays in the directory, left out; one that cannot be delivered fails
   the recovery, naming the kept directory;
4. the session moves to ``COMPLETED`` with reason ``recovered``, or to
   ``FAILED`` with reason ``recovery-failed`` and the kept file's path; every
   move is the row's :class:`~edge_recorder.session.state.SessionRecord` moved
   by :func:`~edge_recorder.session.state.transition` as
   :attr:`~edge_recorder.session.state.Mover.RECOVERY`;
5. every change is written through the bookkeeper (SQL, shared state,
   webhooks), so the row tells the truth again; an uploaded spool is removed
   only once its ``COMPLETED`` row is written.

**The spool is gone** (a crash after the upload removed it, before the row
said ``COMPLETED``): with a bucket, the store is asked for the recording's
object. If it is there, of the size the row knew (when it knew one) and
written after the session started, the session is ``COMPLETED``
(``recovered``) with that object as its asset (and its tracks directory, if
one is left, delivered as above); otherwise ``FAILED`` with what was looked
for and where.

What an upload that cannot be completed already stored is left for a later
``retry-upload``: it is the progress. With the default multipart mode
(``RECORDING_S3_UPLOAD_MODE=multipart``) that is the open multipart upload of
the recording's key and its parts (the spool's sidecar names it); resuming
asks the store which parts it holds and sends the rest. In chunks mode
it is the chunk objects; a process killed in the middle of composing leaves
that compose's multipart upload open, and resuming aborts every in-progress
multipart upload of the session's composite key first (best effort; the
bucket's AbortIncompleteMultipartUpload rule is the backstop).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import logging
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Protocol

import trio

from edge_recorder.config import Settings
from edge_recorder.errors import EdgeRecorderError, StorageError
from edge_recorder.media import wire
from edge_recorder.media.mp4 import Mp4BoxScanner
from edge_recorder.media.tracks import GAP_S, MAX_GAPS, MAX_TRACKS, VIDEO_GAP_S
from edge_recorder.media.webm import webm_complete_end
from edge_recorder.render.plan import MAX_MANIFEST_BYTES
from edge_recorder.session.destination import Asset, LocalDestination
from edge_recorder.session.manifest import MANIFEST_NAME, TrackSource, build_manifest
from edge_recorder.session.track_delivery import AssetSender, TrackDelivery, asset_entry, deliver_audio_mix, deliver_tracks, write_manifest
from edge_recorder.session.state import AssetEntry, Mover, SessionRecord, SessionStatus, controls_after_capture, record_time
from edge_recorder.sink.plan import AUDIO_ASSET, COMPOSITE_ASSET
from edge_recorder.sink.s3 import ObjectInfo
from edge_recorder.sink.streamer import UploadResult
from edge_recorder.spool import NodeSpool
from edge_recorder.state.store import utc_now_iso

log = logging.getLogger(__name__)

# How much earlier than the session's start an object may claim to be written
# and still be taken for its recording when the spool is gone: the store's
# clock and ours disagree by a little. An object older than that is a
# finished recording of an earlier session with the same id.
CLOCK_SKEW_S = 300.0


class RecoverableUpload(Protocol):
    """What recovery needs of an uploader (both upload modes)."""

    @property
    def url(self) -> str:
        """``s3://bucket/key`` of the recording."""

    async def resume_and_finish(self, total_bytes: int | None = None) -> UploadResult:
        """Finish from what the store holds (:meth:`~edge_recorder.sink.streamer.SpoolStreamer.resume_and_finish`)."""

    async def stored_object(self) -> ObjectInfo | None:
        """The recording's object in the store, or None."""


# Called as ``(session_id, spool)`` for the composite and, for a track or the
# manifest, ``(session_id, file, asset="tracks/<file>")`` (the service's
# uploader takes both; see edge_recorder/wiring.py).
UploaderFor = Callable[..., RecoverableUpload]


class RecordSink(Protocol):
    """What recovery needs of the bookkeeper: queue a record (and asset fields) to be written."""

    def submit(self, record: dict[str, Any], asset: dict[str, Any] | None = None, *, remove_after: Path | None = None) -> None:
        """See :meth:`~edge_recorder.bookkeeping.Bookkeeper.submit`."""


def last_complete_fragment_end(path: Path) -> int:
    """Byte offset just past the last complete fragment and the complete boxes after it (0: no fragment).

    A fragment is a complete ``moof`` followed by its complete ``mdat``. Whole
    boxes after the last fragment (a finished file's ``mfra`` index) are
    kept; a ``moof`` without its ``mdat``, or a box that runs past the end of
    the file (the crash's partial write), is not. Reads in 1 MiB blocks.
    """
    scanner = Mp4BoxScanner()
    end = 0
    saw_fragment = False
    open_moof = False
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            for kind, _start, stop in scanner.feed(block):
                if kind == "moof":
                    open_moof = True
                elif kind == "mdat" and open_moof:
                    end = stop
                    saw_fragment = True
                    open_moof = False
                elif saw_fragment and not open_moof:
                    end = stop
    return end


def _cut(path: Path) -> tuple[int, int]:
    """``(size, end)``: cut ``path`` to :func:`last_complete_fragment_end` (unless that is 0)."""
    end = last_complete_fragment_end(path)
    size = path.stat().st_size
    if 0 < end < size:
        os.truncate(path, end)
    return size, end


# -- tracks (issue #14) ---------------------------------------------------------

# The one bound on a manifest (render/plan.py's: bigger is not one we wrote).
_MAX_MANIFEST_BYTES = MAX_MANIFEST_BYTES
_TRACK_EXTENSIONS = (".webm", ".mp4")


def track_complete_end(path: Path) -> int:
    """The end of the last complete unit of a track file: WebM clusters, MP4 fragments (0: none; blocking)."""
    if path.suffix == ".webm":
        return webm_complete_end(path)
    return last_complete_fragment_end(path)


@dataclass(frozen=True, slots=True)
class _Probe:
    """What a track file says of itself, once cut (PyAV, no decoding)."""

    kind: Literal["audio", "video"]
    codec: str
    first_s: float
    last_s: float
    frames: int
    gaps: tuple[wire.TrackGap, ...]


def _probe(path: Path, size: int) -> _Probe | str:
    """Demux the track's first ``size`` bytes (the whole file, cut): its kind, codec, span, frames and gaps; or why not."""
    import av  # only with tracks to recover: recovery of a composite needs no libav

    try:
        with av.open(str(path)) as container:
            if not container.streams:
                return "it has no stream"
            stream = container.streams[0]
            kind = stream.type
            if kind not in ("audio", "video") or stream.time_base is None:
                return f"its stream is {kind}, not audio or video"
            time_base = stream.time_base
            gap_s = VIDEO_GAP_S if kind == "video" else GAP_S
            frames = 0
            first: float | None = None
            last: float | None = None
            gaps: list[wire.TrackGap] = []
            for packet in container.demux(stream):
                if packet.pts is None or not packet.size:
                    continue  # the demuxer's flush packet
                t = float(packet.pts * time_base)
                if last is not None and t - last > gap_s and len(gaps) < MAX_GAPS:
                    gaps.append(wire.TrackGap(round(last, 4), round(t, 4), "no-media"))
                first = t if first is None else first
                last = t
                frames += 1
            codec = stream.codec_context.name
    except (av.FFmpegError, ValueError, OSError) as exc:
        return f"it does not open: {exc}"
    if first is None or last is None:
        return "it has no frame"
    return _Probe(kind, codec, round(first, 4), round(last, 4), frames, tuple(gaps))


def _composite_video(spool: Path) -> dict[str, Any] | None:
    """The composite's ``{width, height, fps}`` for the manifest, or None if it does not say."""
    import av  # as in _probe

    try:
        with av.open(str(spool)) as container:
            video = container.streams.video
            if not video:
                return None
            ctx = video[0].codec_context
            # The nominal rate: with unchanged pictures not encoded again the average is lower.
            rate = video[0].codec_context.framerate or video[0].guessed_rate or video[0].average_rate
            fps = round(Fraction(rate)) if rate else 0
            return {"width": ctx.width, "height": ctx.height, "fps": fps} if ctx.width and ctx.height and fps else None
    except (av.FFmpegError, ValueError, OSError):
        return None


def _producer_of(file: str, names: set[str], known: Mapping[str, str]) -> str:
    """The producer id behind track ``file``: as the state record had it, else from the name.

    Names are the producer ids made safe (``media/tracks.py``); a stream
    added again under its key has ``<key>.2.webm``, so ``.N`` is dropped when
    ``<key>.webm`` is there too.
    """
    if file in known:
        return known[file]
    stem, _, extension = file.rpartition(".")
    base, dot, n = stem.rpartition(".")
    if dot and n.isdigit() and int(n) >= 2 and f"{base}.{extension}" in names:
        return base
    return stem


@dataclass(frozen=True, slots=True)
class RecoveredTracks:
    """A crashed session's tracks directory, cut and described (:func:`prepare_tracks`).

    Attributes:
        tracks: one event per deliverable track, with its complete bytes.
        sources: the stream behind each (by file), when the state record knew it.
        manifest: the manifest already in the directory (its bytes), or None.
        left: the files not delivered, and why (kept in the directory).
        cut: the files whose crash's partial write was cut: (file, size, kept).
    """

    tracks: tuple[wire.Track, ...]
    sources: Mapping[str, TrackSource]
    manifest: bytes | None
    left: Mapping[str, str]
    cut: tuple[tuple[str, int, int], ...]


def _state_streams(last_record: Mapping[str, Any] | None) -> tuple[dict[str, str], dict[str, Mapping[str, Any]]]:
    """From the session's last state record: producer id by track file, stream by producer id."""
    by_file: dict[str, str] = {}
    streams: dict[str, Mapping[str, Any]] = {}
    if last_record is None:
        return by_file, streams
    for entry in last_record.get("tracks") or []:
        if isinstance(entry, Mapping) and isinstance(entry.get("name"), str) and isinstance(entry.get("producerId"), str):
            by_file[str(entry["name"]).removeprefix("tracks/")] = str(entry["producerId"])
    for entry in last_record.get("streams") or []:
        if isinstance(entry, Mapping) and isinstance(entry.get("producerId"), str):
            streams[str(entry["producerId"])] = entry
    return by_file, streams


def prepare_tracks(tracks_dir: Path, last_record: Mapping[str, Any] | None = None) -> RecoveredTracks:
    """Cut each track of a crashed session to its complete prefix and describe it (blocking).

    A track without a complete unit (a header, part of its first cluster),
    or one that does not open once cut, is left in the directory and named in
    ``left``; the rest are delivered. Never cuts more than a partial write:
    the end is the last complete cluster (WebM,
    :func:`~edge_recorder.media.webm.last_complete_cluster_end`) or fragment
    (MP4, :func:`last_complete_fragment_end`).

    Args:
        last_record: the session's last state record (shared state), for the
            streams behind the tracks; None when it is gone.

    Raises:
        OSError: the directory cannot be listed, or a file read or cut.
    """
    names = sorted(
        entry.name
        for entry in os.scandir(tracks_dir)
        if entry.is_file(follow_symlinks=False)
        and entry.name.endswith(_TRACK_EXTENSIONS)
        and not entry.name.startswith(".")
    )
    manifest: bytes | None = None
    try:
        fd = os.open(tracks_dir / MANIFEST_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    else:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise OSError(f"{tracks_dir / MANIFEST_NAME} is not a file")
            manifest = f.read(_MAX_MANIFEST_BYTES + 1)
    by_file, streams = _state_streams(last_record)
    tracks: list[wire.Track] = []
    sources: dict[str, TrackSource] = {}
    left: dict[str, str] = {}
    cut: list[tuple[str, int, int]] = []
    for name in names:
        if len(tracks) >= MAX_TRACKS:
            left[name] = f"a recording has at most {MAX_TRACKS} tracks"
            continue
        path = tracks_dir / name
        end = track_complete_end(path)
        size = path.stat().st_size
        if end == 0:
            left[name] = "no complete cluster or fragment" if size else "no frame was written"
            continue
        if end < size:
            os.truncate(path, end)
            cut.append((name, size, end))
        probe = _probe(path, end)
        if isinstance(probe, str):
            left[name] = probe
            continue
        producer = _producer_of(name, set(names), by_file)
        tracks.append(
            wire.Track(
                key=producer,
                file=name,
                codec=probe.codec,
                kind=probe.kind,
                complete_bytes=end,
                first_s=probe.first_s,
                last_s=probe.last_s,
                frames=probe.frames,
                closed=True,
                gaps=probe.gaps,
            )
        )
        stream = streams.get(producer)
        if stream is not None:
            sources[name] = TrackSource(
                producer_id=producer,
                peer_id=str(stream.get("peerId") or ""),
                display_name=str(stream.get("displayName") or ""),  # the session sidecar keeps it
                kind=str(stream.get("kind") or probe.kind),
                source=str(stream.get("source") or ""),
            )
    return RecoveredTracks(tuple(tracks), sources, manifest, left, tuple(cut))


def recovered_manifest(
    record: SessionRecord,
    tracks: RecoveredTracks,
    *,
    last_record: Mapping[str, Any] | None = None,
    video: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a recording recovered after a crash (pure): ``"recovered": true``.

    What the files say (kind, codec, first and last frame, frames, gaps, all
    ``"no-media"``: whether a peer was excluded is not in the file) and what
    the records kept (the stream's peer and source, the pauses, the last
    control events; the session sidecar's display names). Not known after a
    crash: skipped frames (null), the active speaker (empty), the start layout (null).
    """
    controls: dict[str, Any] = dict(record.controls or {})
    if last_record is not None and isinstance(last_record.get("events"), list) and not controls.get("events"):
        controls["events"] = list(last_record["events"])
    manifest = build_manifest(
        session_id=record.session_id,
        room_id=record.room_id,
        started_at=record.started_at,
        stopped_at=record.stopped_at,
        composite=COMPOSITE_ASSET,
        tracks=[(event, tracks.sources.get(event.file)) for event in tracks.tracks],
        controls=controls,
        speaker_switches=[],
        layout=None,
        video=video,
    )
    for entry in manifest["tracks"]:
        if not entry.get("displayName"):
            entry["displayName"] = None
        entry["skippedFrames"] = None
        if not entry.get("peerId"):
            entry["peerId"] = None
        if not entry.get("source"):
            entry["source"] = None
    manifest["recovered"] = True
    return manifest


def _tracks_from_manifest(body: bytes, tracks: RecoveredTracks) -> tuple[wire.Track, ...] | str:
    """The tracks as a manifest already written (at a stop) describes them, or why it cannot be read.

    The files are delivered as they are on disk (cut); the manifest's entry
    gives each its producer, times and frames. A file it does not list keeps
    what its probe found.
    """
    if len(body) > _MAX_MANIFEST_BYTES:
        return f"it is bigger than {_MAX_MANIFEST_BYTES} bytes"
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return f"it is not JSON ({str(exc)[:80]})"
    entries = doc.get("tracks") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        return "it has no list of tracks"
    by_file = {
        str(e["file"]).removeprefix("tracks/"): e for e in entries if isinstance(e, dict) and isinstance(e.get("file"), str)
    }
    out = []
    for event in tracks.tracks:
        entry = by_file.get(event.file)
        if entry is None:
            out.append(event)
            continue

        def number(key: str, default: float | None) -> float | None:
            value = entry.get(key)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default

        producer = entry.get("producerId")
        frames = entry.get("frames")
        out.append(
            wire.Track(
                key=producer if isinstance(producer, str) and producer else event.key,
                file=event.file,
                codec=event.codec,
                kind=event.kind,
                complete_bytes=event.complete_bytes,
                first_s=number("startS", event.first_s),
                last_s=number("endS", event.last_s),
                frames=frames if isinstance(frames, int) and not isinstance(frames, bool) else event.frames,
                closed=True,
                gaps=event.gaps,
            )
        )
    return tuple(out)


# A session sidecar bigger than this is not one we wrote (2000 streams fit in ~1 MiB).
_MAX_SIDECAR_BYTES = 4 << 20


def read_session_sidecar(node_spool: NodeSpool, session_id: str) -> dict[str, Any] | None:
    """``<sessionId>.session.json`` (session.py writes it): the outputs and streams, or None if absent or unreadable (blocking)."""
    path = node_spool.session_sidecar_for(session_id)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            doc = json.loads(f.read(_MAX_SIDECAR_BYTES + 1)[:_MAX_SIDECAR_BYTES])
    except (OSError, ValueError, RecursionError):
        log.warning("ignoring the unreadable session sidecar %s", path, extra={"sessionId": session_id})
        return None
    if not isinstance(doc, dict) or doc.get("version") != 1 or doc.get("sessionId") != session_id:
        return None
    outputs = doc.get("outputs")
    streams = doc.get("streams")
    return {
        "outputs": [o for o in outputs if isinstance(o, str)] if isinstance(outputs, list) else None,
        "streams": [e for e in streams if isinstance(e, dict)] if isinstance(streams, list) else [],
    }


def _known_of(last_record: Mapping[str, Any] | None, sidecar: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """What is known of a crashed session: shared state's last record, its streams and outputs from the sidecar when it has them."""
    if sidecar is None:
        return last_record
    known = dict(last_record or {})
    if sidecar.get("streams"):
        known["streams"] = sidecar["streams"]  # the sidecar names every stream the session had, removed ones too
    if sidecar.get("outputs") is not None:
        known["outputs"] = sidecar["outputs"]
    return known


def wants_audio_mix(last_record: Mapping[str, Any] | None) -> bool:
    """Whether the session asked for ``audio.m4a`` (its last state record's ``outputs``; unknown without it)."""
    outputs = last_record.get("outputs") if last_record is not None else None
    return isinstance(outputs, list) and "audio" in outputs


def _tracks_record(delivery: TrackDelivery) -> dict[str, Any]:
    """The state record's issue #14 keys of a delivered tracks directory."""
    return {"outputs": ["composite", "tracks"], "tracks": list(delivery.tracks), "manifest": delivery.manifest}


async def recover_tracks(
    record: SessionRecord,
    tracks_dir: Path,
    settings: Settings,
    *,
    send: AssetSender | None,
    composite: Path | None,
    last_record: Mapping[str, Any] | None = None,
) -> TrackDelivery:
    """Cut, describe and deliver a crashed (or failed) session's tracks directory with its manifest.

    The manifest a stop wrote is delivered as it is; without one, one is
    built (:func:`recovered_manifest`) and written exclusively. A failure is
    the delivery's ``error``, naming the kept directory.

    Args:
        record: the session as it is moved (its ``stoppedAt``, its controls).
        send: the bucket's sender; None: the files stay as the artifacts.
        composite: the recovered composite, for the manifest's ``video``.
    """
    sid = record.session_id
    where = f"the tracks are kept in {tracks_dir} on node {settings.server_id}"
    try:
        found = await trio.to_thread.run_sync(prepare_tracks, tracks_dir, last_record)
    except OSError as exc:
        return TrackDelivery(error=f"cannot read or cut the tracks in {tracks_dir}: {exc}; {where}")
    for name, size, kept in found.cut:
        log.warning(
            "Cut the partial write a crash left at the end of a track",
            extra={"sessionId": sid, "path": str(tracks_dir / name), "bytes": size, "kept": kept},
        )
    for name, why in found.left.items():
        log.warning("A track is not recovered: %s; it stays in %s", why, tracks_dir, extra={"sessionId": sid, "file": name})
    tracks = found.tracks
    if found.manifest is not None:
        described = _tracks_from_manifest(found.manifest, found)
        if isinstance(described, str):
            return TrackDelivery(
                error=f"the tracks manifest {tracks_dir / MANIFEST_NAME} cannot be read: {described}; {where}; "
                "it is never written over: remove it to have a new one built"
            )
        tracks = described
        size = len(found.manifest)
    else:
        video = await trio.to_thread.run_sync(_composite_video, composite) if composite is not None else None
        body = json.dumps(recovered_manifest(record, found, last_record=last_record, video=video), indent=1, ensure_ascii=False).encode()
        try:
            await trio.to_thread.run_sync(write_manifest, tracks_dir / MANIFEST_NAME, body)
        except OSError as exc:
            return TrackDelivery(error=f"cannot write the tracks manifest {tracks_dir / MANIFEST_NAME}: {exc}; {where}")
        size = len(body)
    return await deliver_tracks(tracks_dir, tracks, size, send=send, node=settings.server_id)


def _tracks_dir(node_spool: NodeSpool, session_id: str) -> Path | None:
    """The session's tracks directory if it is one (not a link), else None (blocking)."""
    path = node_spool.tracks_dir_for(session_id)
    try:
        return path if stat.S_ISDIR(path.lstat().st_mode) else None
    except FileNotFoundError:
        return None


def _asset_of(result: UploadResult, sse_mode: str) -> Asset:
    return Asset(
        url=f"s3://{result.bucket}/{result.key}",
        size_bytes=result.size,
        sha256=result.sha256_hex,
        bucket=result.bucket,
        key=result.key,
        sse_mode=sse_mode,
    )


def record_from_row(row: dict[str, Any], *, with_asset: bool = False) -> dict[str, Any]:
    """A protocol state record (its JSON object) from a metadata row (and its asset, if asked).

    The public view: its ``error`` has no node paths (see
    :meth:`~edge_recorder.session.state.SessionRecord.to_wire`).
    """
    return SessionRecord.from_row(row, with_asset=with_asset).to_wire()


def _asset_fields(row: dict[str, Any]) -> dict[str, Any]:
    asset = row.get("asset")
    return asset if isinstance(asset, dict) else {}


def _not_this_recording(info: ObjectInfo, row: dict[str, Any]) -> str | None:
    """Why the object at the recording's key is not this session's recording, or None (pure).

    The row may know the size (``sizeBytes``, or at least ``uploadedBytes``)
    and when the session started.
    """
    asset = _asset_fields(row)
    size = asset.get("sizeBytes")
    if isinstance(size, int) and info.size != size:
        return f"it has {info.size} bytes, the recording {size}"
    uploaded = asset.get("uploadedBytes")
    if isinstance(uploaded, int) and info.size < uploaded:
        return f"it has {info.size} bytes, fewer than the {uploaded} already uploaded"
    started = row.get("startedAt")
    if isinstance(started, dt.datetime) and info.last_modified is not None:
        if started.tzinfo is None:
            started = started.replace(tzinfo=dt.timezone.utc)
        if info.last_modified < started - dt.timedelta(seconds=CLOCK_SKEW_S):
            return f"it was written at {record_time(info.last_modified)}, before the session started ({record_time(started)})"
    return None


def _asset_row(asset: Asset, *, local_path: str | None, main: str = COMPOSITE_ASSET) -> dict[str, Any]:
    kind = {"kind": "audio", "name": main} if main != COMPOSITE_ASSET else {}
    return {
        **kind,
        "bucket": asset.bucket,
        "key": asset.key,
        "url": asset.url,
        "size_bytes": asset.size_bytes,
        "sha256": asset.sha256,
        "sse_mode": asset.sse_mode,
        "duration_s": None,
        "local_path": local_path,
        "uploaded_bytes": asset.size_bytes,
    }


def main_asset_of(known: Mapping[str, Any] | None) -> str:
    """The asset a crashed session's spool is: the composite, or the audio mix when ``outputs`` had no composite."""
    outputs = known.get("outputs") if known is not None else None
    if isinstance(outputs, list) and "composite" not in outputs and "audio" in outputs:
        return AUDIO_ASSET
    return COMPOSITE_ASSET


def _asset_entry(asset: Asset) -> AssetEntry:
    return AssetEntry(asset.bucket, asset.key, asset.size_bytes, asset.url)


async def recover_session(
    row: dict[str, Any],
    settings: Settings,
    *,
    bookkeeper: RecordSink,
    uploader_for: UploaderFor | None,
    by: Mover = Mover.RECOVERY,
    last_record: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Finalise one session left behind; returns its final record (operator's view: ``error`` names paths).

    Never deletes or cuts more of a spool than the crash's partial write; a
    spool is removed only after its upload is verified and its ``COMPLETED``
    row written (by the bookkeeper). A session that kept tracks has them and
    their manifest delivered too (:func:`recover_tracks`), after the
    composite; a track that cannot be delivered fails the recovery.

    Args:
        by: who moves its status (an operator's ``retry-upload`` may reopen FAILED).
        last_record: the session's last record in shared state, if it is
            still there: the streams behind the tracks (peer, source) and the
            last control events, for a manifest built here.
    """
    record = SessionRecord.from_row(row)
    sid = record.session_id
    node_spool = NodeSpool(Path(settings.tmp_dir), settings.server_id)
    last_record = _known_of(last_record, await trio.to_thread.run_sync(read_session_sidecar, node_spool, sid))
    main = main_asset_of(last_record)

    def move(status: SessionStatus, **fields: Any) -> dict[str, Any]:
        """Move the record (through ``transition``) and return its JSON object, as submitted."""
        nonlocal record
        now = utc_now_iso()
        record = record.moved(status, by=by, now=now, stopped_at=record.stopped_at or now, **fields)
        return record.to_wire(operator=True)

    def failed(error: str) -> dict[str, Any]:
        final = move(SessionStatus.FAILED, reason="recovery-failed", error=error)
        bookkeeper.submit(final)
        log.error("Recording not recovered: %s", error, extra={"sessionId": sid})
        return final

    def spool_upload(path: Path) -> RecoverableUpload:
        """The spool's uploader, under its asset's name (the composite's the default every uploader knows)."""
        assert uploader_for is not None
        return uploader_for(sid, path) if main == COMPOSITE_ASSET else uploader_for(sid, path, asset=main)

    async def send(name: str, path: Path, size: int) -> Asset:
        assert uploader_for is not None
        return _asset_of(await uploader_for(sid, path, asset=name).resume_and_finish(size), settings.s3.sse)

    async def tracks_of(composite: Path | None) -> dict[str, Any] | str:
        """The final record's tracks keys (``{}`` without a tracks directory), or why they failed."""
        tracks_dir = await trio.to_thread.run_sync(_tracks_dir, node_spool, sid)
        if tracks_dir is None:
            return {}
        now = utc_now_iso()
        # The manifest's view of the session: stopped, its open pause closed (as the move will).
        ended = dataclasses.replace(
            record, stopped_at=record.stopped_at or now, controls=controls_after_capture(record.controls, now)
        )
        delivery = await recover_tracks(
            ended,
            tracks_dir,
            settings,
            send=None if uploader_for is None else send,
            composite=composite,
            last_record=last_record,
        )
        if delivery.error is not None:
            retry = "" if uploader_for is None else f"; run `edge-recorder retry-upload {sid}`"
            return delivery.error + retry
        log.info(
            "Tracks recovered",
            extra={"sessionId": sid, "tracks": len(delivery.tracks), "path": str(tracks_dir)},
        )
        return {"tracks": _tracks_record(delivery)}

    found = await trio.to_thread.run_sync(node_spool.find, sid)
    if found is None:
        looked = f"{node_spool.path_for(sid)} or {node_spool.legacy_path_for(sid)}"
        if uploader_for is None:
            return failed(f"the spool file is gone (no {looked}) and no bucket is configured; nothing to recover")
        upload = spool_upload(node_spool.path_for(sid))
        try:
            info = await upload.stored_object()
        except StorageError as exc:
            return failed(
                f"the spool file is gone (no {looked}) and the store could not be checked for {upload.url}: {exc}; "
                f"run `edge-recorder retry-upload {sid}` when it answers"
            )
        if info is None:
            return failed(f"the spool file is gone (no {looked}) and there is no object at {upload.url}; nothing to recover")
        why = _not_this_recording(info, row)
        if why is not None:
            return failed(
                f"the spool file is gone (no {looked}) and the object at {info.url} is not this recording: {why}; "
                "it is left as it is"
            )
        sha256 = _asset_fields(row).get("sha256")
        asset = Asset(
            url=info.url,
            size_bytes=info.size,
            sha256=sha256 if isinstance(sha256, str) else None,  # unknown unless the row kept it
            bucket=info.bucket,
            key=info.key,
            sse_mode=settings.s3.sse,
        )
        tracks = await tracks_of(None)
        if isinstance(tracks, str):
            return failed(tracks)
        final = move(SessionStatus.COMPLETED, reason="recovered", error=None, asset=_asset_entry(asset), **tracks)
        bookkeeper.submit(final, _asset_row(asset, local_path=None, main=main))
        log.warning(
            "Recording recovered from the store: the spool was gone, the object is there",
            extra={"sessionId": sid, "bytes": info.size, "url": info.url},
        )
        return final
    spool = found
    try:
        size, end = await trio.to_thread.run_sync(_cut, spool)
    except OSError as exc:
        return failed(f"cannot read or cut the spool file {spool}: {exc}; the file is kept as it is")
    if end == 0:
        return failed(f"no complete fragment in {spool}; the file is kept as it is")
    if end < size:
        log.warning(
            "Cut the partial write a crash left at the end of the spool",
            extra={"sessionId": sid, "path": str(spool), "bytes": size, "kept": end},
        )
    if record.status is not SessionStatus.UPLOADING:
        bookkeeper.submit(move(SessionStatus.UPLOADING))
    remove_after: Path | None = None
    if uploader_for is None:
        try:
            asset = await LocalDestination(spool).finish(end)
        except OSError as exc:
            return failed(f"cannot read the spool file {spool}: {exc}; the file is kept as it is")
        local_path: str | None = str(spool)
    else:
        try:
            result = await spool_upload(spool).resume_and_finish(end)
        except EdgeRecorderError as exc:
            kept = "" if str(spool) in str(exc) else f"; the recording is kept at {spool}"
            return failed(f"upload failed: {exc}{kept}; run `edge-recorder retry-upload {sid}`")
        asset = _asset_of(result, settings.s3.sse)
        # Removed by the bookkeeper once the COMPLETED row is written: a crash
        # before that finds the spool (and the object) again.
        remove_after = spool
        local_path = None
    tracks = await tracks_of(spool)
    if isinstance(tracks, str):
        return failed(tracks)
    if wants_audio_mix(last_record):
        if main == AUDIO_ASSET:
            entry: dict[str, Any] | None = asset_entry(AUDIO_ASSET, asset)  # the spool is the mix
        else:
            entry, error = await deliver_audio_mix(
                spool, sid, send=None if uploader_for is None else send, node=settings.server_id
            )
            if error is not None:
                return failed(error)
        outputs = dict(tracks.get("tracks") or {})
        outputs["outputs"] = list(last_record["outputs"]) if last_record is not None else ["composite", "audio"]
        outputs["audio"] = entry
        tracks = {"tracks": outputs}
    final = move(SessionStatus.COMPLETED, reason="recovered", error=None, asset=_asset_entry(asset), **tracks)
    bookkeeper.submit(final, _asset_row(asset, local_path=local_path, main=main), remove_after=remove_after)
    # Recovered: nothing more to learn from the sidecar (a crash before the row is written recovers again, without names).
    await trio.to_thread.run_sync(functools.partial(node_spool.session_sidecar_for(sid).unlink, missing_ok=True))
    log.info("Recording recovered", extra={"sessionId": sid, "bytes": end, "url": asset.url})
    return final
