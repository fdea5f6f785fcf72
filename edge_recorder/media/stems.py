"""One stream's own track, kept without transcoding (issue #14): blocking, Trio-free.

The worker's :class:`~edge_recorder.media.tracks.TrackArchive` drives one
:class:`TrackWriter` per track through its thread door. Encoded frames go
into a container as they are: VP8, VP9 and Opus into WebM, H.264 (Annex B,
SPS/PPS in-band as WebRTC sends them) into MP4.

Timestamps are the recording's timeline, not rebased to zero: a frame
written at 12.34 s reads back at 12.34 s (WebM's millisecond timecodes;
MP4 through an edit list, ``delay_moov`` + ``use_editlist``), so a track
lines up with the composite by timestamp alone. Gaps stay gaps.

Crash safety: the file is written through :class:`~edge_recorder.media.encode.FileSink`
(not seekable, so the muxers stream) with ``flush_packets``: once ``mux()``
returns, what the sink has is whole clusters (WebM buffers a cluster and
writes it when it closes, at most every :data:`CLUSTER_MS`) or whole
fragments (MP4: ``frag_keyframe`` and at most :data:`FRAGMENT_US`). So
:meth:`TrackWriter.flush` returns the bytes written so far, fsynced: a
prefix that plays on its own, up to about a second before a SIGKILL.

Dimensions (the muxers want them): VP8 from its keyframe header (RFC 6386
§9.1), VP9 by decoding the first keyframe alone, H.264 from the first IDR's
SPS through libav's raw ``h264`` demuxer, which also gives the ``avcC``
extradata the MP4 needs. Opus needs its ``OpusHead``: the stream is declared
as a libopus stream, whose codec context writes one (2 channels, 48 kHz).

Never raises for media: a frame that cannot be written (before the first
keyframe, out of order, unreadable, a libav error) is skipped and counted.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import av

from edge_recorder.errors import UnsupportedCodecError
from edge_recorder.media.encode import FileSink

__all__ = ["CLUSTER_MS", "FRAGMENT_US", "TrackFormat", "TrackWriter", "track_format", "vp8_dimensions"]

#: WebM clusters close at least this often (ms): the crash-loss bound.
CLUSTER_MS = 1000
#: MP4 fragments close at least this often (µs), keyframe or not.
FRAGMENT_US = 1_000_000
_WEBM_TB = Fraction(1, 1000)
_MP4_TB = Fraction(1, 90000)
# A timestamp beyond this (about 11.6 days) is not a recording's.
_MAX_S = 1_000_000.0


@dataclass(frozen=True, slots=True)
class TrackFormat:
    """What file a codec is kept in."""

    container: str
    extension: str
    mime_type: str


_FORMATS: dict[tuple[str, str], TrackFormat] = {
    ("vp8", "video"): TrackFormat("webm", ".webm", "video/webm"),
    ("vp9", "video"): TrackFormat("webm", ".webm", "video/webm"),
    ("opus", "audio"): TrackFormat("webm", ".webm", "audio/webm"),
    ("h264", "video"): TrackFormat("mp4", ".mp4", "video/mp4"),
}


def track_format(codec: str, kind: Literal["audio", "video"]) -> TrackFormat:
    """The container of ``codec`` (a PyAV decoder name) for a ``kind`` track.

    Raises:
        UnsupportedCodecError: a codec tracks are not kept for.
    """
    fmt = _FORMATS.get((codec.lower(), kind))
    if fmt is None:
        raise UnsupportedCodecError(f"no track format for {kind} codec {codec!r}")
    return fmt


def vp8_dimensions(frame: bytes) -> tuple[int, int] | None:
    """Width and height of a VP8 keyframe (RFC 6386 §9.1), or None if ``frame`` is not one."""
    if len(frame) < 10 or frame[0] & 0x01:  # bit 0 of the tag: 0 = keyframe
        return None
    if frame[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return (width, height) if width and height else None


def _decoded_dimensions(codec: str, frame: bytes) -> tuple[int, int] | None:
    """Decode one keyframe alone for its size (VP9); None if it does not decode."""
    try:
        ctx: Any = av.CodecContext.create(codec, "r")
        pictures = list(ctx.decode(av.Packet(frame))) + list(ctx.decode(None))
    except (av.FFmpegError, ValueError):
        return None
    return (pictures[0].width, pictures[0].height) if pictures else None


class TrackWriter:
    """Muxes one stream's encoded frames into ``path`` (created; never over an existing file).

    Args:
        path: the track's file.
        codec: ``"vp8"``, ``"vp9"``, ``"h264"`` or ``"opus"``.
        kind: ``"video"`` or ``"audio"``.

    Raises:
        UnsupportedCodecError: see :func:`track_format`.
        OSError: the file cannot be created (it exists, or the disk refuses).
    """

    def __init__(self, path: str, codec: str, kind: Literal["audio", "video"]) -> None:
        self.path = path
        self.codec = codec.lower()
        self.kind = kind
        self.format = track_format(self.codec, kind)
        self.frames_written = 0
        self.frames_skipped = 0
        self.first_s: float | None = None
        self.last_s: float | None = None
        self._bytes = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self._container: Any = None
        self._stream: Any = None
        self._last_ticks: int | None = None
        self._closed = False
        self._final_bytes = 0

    # -- the muxer ---------------------------------------------------------------

    def _counted(self, chunk: bytes) -> None:
        self._bytes += len(chunk)

    def _open(self, data: bytes) -> bool:
        """Open the container on the first keyframe; False if its size cannot be read (skip it)."""
        template: Any = None
        size: tuple[int, int] | None = None
        if self.codec == "vp8":
            size = vp8_dimensions(data)
        elif self.codec == "vp9":
            size = _decoded_dimensions("vp9", data)
        elif self.codec == "h264":
            try:
                probe = av.open(io.BytesIO(data), format="h264")
                template = probe.streams.video[0]
            except (av.FFmpegError, IndexError, ValueError):
                return False
            if not template.codec_context.width or not template.codec_context.extradata:
                return False
        if self.kind == "video" and template is None and size is None:
            return False
        options = {"flush_packets": "1"}
        if self.format.container == "webm":
            options |= {"cluster_time_limit": str(CLUSTER_MS), "cluster_size_limit": str(4 << 20)}
        else:
            options |= {
                "movflags": "frag_keyframe+empty_moov+default_base_moof+delay_moov",
                "frag_duration": str(FRAGMENT_US),
                "use_editlist": "1",
            }
        container = av.open(FileSink(self._fd, self._counted), mode="w", format=self.format.container, options=options)
        try:
            if template is not None:
                stream = container.add_stream_from_template(template)
                stream.time_base = _MP4_TB
            elif self.kind == "video":
                assert size is not None
                stream = container.add_mux_stream(self.codec, width=size[0], height=size[1], time_base=_WEBM_TB)
            else:
                # A libopus stream: its codec context writes the OpusHead the
                # WebM track needs; nothing is ever encoded with it.
                stream = container.add_stream("libopus", rate=48000)
                stream.codec_context.layout = "stereo"
                stream.time_base = _WEBM_TB
        except BaseException:
            container.close()
            raise
        self._container, self._stream = container, stream
        return True

    # -- the API -------------------------------------------------------------------

    def write(self, data: bytes, output_s: float, keyframe: bool) -> bool:
        """Mux one encoded frame at ``output_s`` on the recording's timeline; False: skipped (counted)."""
        if self._closed or not data or not math.isfinite(output_s) or not 0.0 <= output_s <= _MAX_S:
            self.frames_skipped += 1
            return False
        try:
            if self._container is None:
                if self.kind == "video" and not keyframe:
                    self.frames_skipped += 1  # nothing decodes before the first keyframe
                    return False
                if not self._open(data):
                    self.frames_skipped += 1
                    return False
            ticks = round(output_s / self._stream.time_base)
            if self._last_ticks is not None and ticks <= self._last_ticks:
                self.frames_skipped += 1  # a muxer refuses time going back (or standing still)
                return False
            packet = av.Packet(data)
            packet.stream = self._stream
            packet.time_base = self._stream.time_base
            packet.pts = packet.dts = ticks
            if keyframe or self.kind == "audio":
                packet.is_keyframe = True
            self._container.mux(packet)
        except (av.FFmpegError, ValueError, OSError) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, av.FFmpegError):
                raise  # the disk: the archive stops this track and says so
            self.frames_skipped += 1
            return False
        self._last_ticks = ticks
        self.frames_written += 1
        if self.first_s is None:
            self.first_s = ticks * float(self._stream.time_base)
        self.last_s = ticks * float(self._stream.time_base)
        return True

    def flush(self) -> int:
        """Make what is written durable; the bytes of the file that play on their own."""
        if self._closed:
            return self._final_bytes
        os.fsync(self._fd)
        return self._bytes

    def close(self) -> int:
        """Finalise the file (the last cluster or fragment); its size. Idempotent.

        A track that never got a frame leaves an empty file (size 0).
        """
        if self._closed:
            return self._final_bytes
        self._closed = True
        try:
            if self._container is not None:
                try:
                    self._container.close()
                except (av.FFmpegError, ValueError):
                    pass  # what was written before stays playable
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
        self._final_bytes = self._bytes
        return self._final_bytes
