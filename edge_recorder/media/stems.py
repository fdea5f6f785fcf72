"""One stream's own track, kept without transcoding (issue #14): blocking, Trio-free.

The worker's :class:`~edge_recorder.media.tracks.TrackArchive` drives one
:class:`TrackWriter` per track through its thread door. Encoded frames go
into a container as they are: VP8, VP9 and Opus into WebM, H.264 (Annex B,
SPS/PPS in-band as WebRTC sends them) into MP4.

Timestamps are the recording's timeline, not rebased to zero: a frame
written at 12.34 s reads back at 12.34 s, so a track lines up with the
composite by timestamp alone. Gaps stay gaps (nothing is filled in).

* WebM: millisecond timecodes (time base 1/1000). A positive first
  timestamp is kept as it is (``avoid_negative_ts`` only shifts negative
  ones); ffprobe and PyAV report ``start_time`` 12.34.
* MP4: time base 1/90000 with ``delay_moov`` + ``use_editlist``: the
  ``moov`` is written with the first fragment, once the first timestamp is
  known, with an empty edit up to it, so readers start the track at 12.34
  (checked with PyAV and ffprobe, libavformat 62).

Crash safety: the file is written through :class:`~edge_recorder.media.encode.FileSink`
(not seekable, so both muxers stream) with ``flush_packets``, so once
``mux()`` returns the sink has everything the muxer let go of. What it lets
go of is whole units: the WebM muxer buffers a cluster and writes it when
the next one starts (at least every :data:`CLUSTER_MS` of media, and on
video keyframes); the MP4 muxer writes ``moof`` + ``mdat`` fragments
(``frag_keyframe``, and at least every :data:`FRAGMENT_US`). PyAV does not
expose ``av_write_frame(ctx, NULL)``, the only way to force a cluster or a
fragment out early, so a flush does not cut one: :meth:`TrackWriter.flush`
fsyncs and returns the end of the last complete unit, counted as the bytes
pass through the sink (MP4: the end of the last ``mdat`` after a ``moof``,
found by :class:`~edge_recorder.media.mp4.Mp4BoxScanner`; WebM: the bytes
after the last ``mux()`` once a cluster has followed the header). Until the
first unit is out that is 0, since a header alone does not open. A SIGKILL
after the flush loses at most the open cluster or fragment: about a second
of media.

Dimensions (the muxers want them), found without decoding every frame:

* VP8 from its keyframe header (RFC 6386 §9.1), pure;
* VP9 by decoding the first keyframe alone: its size sits behind the
  profile-dependent colour config of the uncompressed header, and one
  decode is cheap and cannot get that wrong;
* H.264 through libav's raw ``h264`` demuxer on the first IDR's access unit:
  it parses the SPS (cropping, VUI: a lot to get right by hand) and gives the
  parameter sets as Annex-B extradata; the mp4 muxer turns them into the
  ``avcC`` box (ISO/IEC 14496-15 §5.3.3.1) and each Annex-B access unit into
  length-prefixed NAL units itself (the test reads both back).

Opus gets its ``OpusHead`` (RFC 7845 §5.1, :func:`opus_head`) as CodecPrivate;
the stream is a libopus stream so that libavformat also gets the codec delay
(pre-skip) and writes ``CodecDelay``; nothing is ever encoded with it.

Never raises for media: a frame that cannot be written (before the first
keyframe, out of order, unreadable, a libav error) is skipped and counted.
Only the disk can stop a track (:class:`~edge_recorder.errors.MediaError`).
"""

from __future__ import annotations

import io
import math
import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import av

from edge_recorder.errors import MediaError, UnsupportedCodecError
from edge_recorder.media.encode import FileSink
from edge_recorder.media.mp4 import Mp4BoxScanner

__all__ = [
    "CLUSTER_MS",
    "FRAGMENT_US",
    "OPUS_PRE_SKIP",
    "TrackFormat",
    "TrackWriter",
    "opus_head",
    "track_format",
    "vp8_dimensions",
]

#: WebM clusters close at least this often (ms of media): the crash-loss bound.
CLUSTER_MS = 1000
#: MP4 fragments close at least this often (µs of media), keyframe or not.
FRAGMENT_US = 1_000_000
#: Opus pre-skip in samples at 48 kHz: libopus's lookahead, what WebRTC senders use.
OPUS_PRE_SKIP = 312
_WEBM_TB = Fraction(1, 1000)
_MP4_TB = Fraction(1, 90000)
# A timestamp beyond this (about 11.6 days) is not a recording's.
_MAX_S = 1_000_000.0
#: How far behind the last frame a frame may come and still be kept (one tick after it).
RETIME_MAX_S = 0.1


@dataclass(frozen=True, slots=True)
class TrackFormat:
    """What file a codec is kept in.

    Attributes:
        container: the libavformat muxer name, ``"webm"`` or ``"mp4"``.
        extension: ``".webm"`` or ``".mp4"``.
        mime_type: ``"video/webm"``, ``"audio/webm"`` or ``"video/mp4"``.
    """

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
    """Width and height of a VP8 keyframe (RFC 6386 §9.1), or None if ``frame`` is not one.

    The 3-byte frame tag (bit 0 clear on a keyframe), the start code
    ``9d 01 2a``, then 14-bit width and height (the top 2 bits are scaling).
    """
    if len(frame) < 10 or frame[0] & 0x01:
        return None
    if frame[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return (width, height) if width and height else None


def opus_head(channels: int = 2, pre_skip: int = OPUS_PRE_SKIP, input_rate: int = 48000) -> bytes:
    """The ``OpusHead`` identification header (RFC 7845 §5.1), WebM's Opus CodecPrivate.

    Version 1, output gain 0, channel mapping family 0 (mono or stereo, no
    mapping table). WebRTC signals 2 channels in SDP whatever each packet's
    TOC says, and a stereo decoder plays mono packets.
    """
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, input_rate, 0, 0)


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

    The file is created at once; a track that never gets a frame leaves it
    empty (0 bytes): :meth:`close` returns 0 and the caller may delete it.

    Args:
        path: the track's file.
        codec: ``"vp8"``, ``"vp9"``, ``"h264"`` or ``"opus"``.
        kind: ``"video"`` or ``"audio"``.

    Raises:
        UnsupportedCodecError: see :func:`track_format`.
        OSError: the file cannot be created (it exists, or the disk refuses).

    Attributes:
        frames_written: frames muxed.
        frames_skipped: frames refused (see :meth:`write`).
        first_s: time of the first frame muxed (on the time base), None before.
        last_s: time of the last frame muxed, None before.
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
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self._sink = FileSink(self._fd, self._on_written)
        self._bytes = 0  # through the sink
        self._header_bytes = 0  # WebM: the bytes before the first cluster
        self._complete = 0  # the end of the last complete cluster or fragment
        self._scanner: Mp4BoxScanner | None = None
        self._after_moof = False
        self._container: Any = None
        self._stream: Any = None
        self._time_base = _WEBM_TB if self.format.container == "webm" else _MP4_TB
        self._last_ticks: int | None = None
        self._closed = False

    # -- the API -------------------------------------------------------------------

    def write(self, data: bytes, output_s: float, keyframe: bool) -> bool:
        """Mux one encoded frame at ``output_s`` on the recording's timeline.

        Skipped (and counted) rather than raised: empty data, a time that is
        not finite, negative or beyond ~11 days, a time more than
        :data:`RETIME_MAX_S` before the last written one (one up to that far
        back, or standing still on the time base, 1 ms in WebM, is written one
        tick after the last), video before the first
        keyframe, a first keyframe whose size cannot be read, a frame libav
        refuses, anything after :meth:`close`.

        Returns:
            True if the frame was muxed, False if it was skipped.

        Raises:
            MediaError: writing the file failed (disk full, I/O error); the
                file stays as far as its last complete unit.
        """
        if self._closed or not data or not math.isfinite(output_s) or not 0.0 <= output_s <= _MAX_S:
            return self._skip()
        ticks = round(output_s / self._time_base)
        if self._last_ticks is not None and ticks <= self._last_ticks:
            # A muxer refuses time going back (or standing still). A little
            # back is the timeline's mapping settling (a stream's first Sender
            # Report moves it by a frame or so): the frame is kept one tick
            # after the last, because a dropped video frame breaks every frame
            # predicted from it until the next keyframe, and a dropped Opus
            # packet is a 20 ms hole. Further back is a bogus time: skipped.
            if (self._last_ticks - ticks) * self._time_base > RETIME_MAX_S:
                return self._skip()
            ticks = self._last_ticks + 1
        if self._container is None:
            if self.kind == "video" and not keyframe:
                return self._skip()  # nothing decodes before the first keyframe
            if not self._open(data):
                return self._skip()
        packet = av.Packet(data)
        packet.stream = self._stream
        packet.time_base = self._time_base
        packet.pts = packet.dts = ticks
        # Every Opus packet decodes on its own; the flag also lets WebM cue it.
        packet.is_keyframe = keyframe or self.kind == "audio"
        try:
            self._container.mux(packet)
        except (av.FFmpegError, ValueError) as exc:
            self._raise_if_disk(exc)
            return self._skip()
        if self.format.container == "webm" and self._bytes > self._header_bytes:
            self._complete = self._bytes  # the muxer lets go of whole clusters only
        self._last_ticks = ticks
        self.frames_written += 1
        if self.first_s is None:
            self.first_s = float(ticks * self._time_base)
        self.last_s = float(ticks * self._time_base)
        return True

    def flush(self) -> int:
        """Make what is written durable.

        Returns:
            N such that the file's first N bytes play on their own: the end of
            the last complete cluster or fragment (0 before the first). After
            :meth:`close`, the file's size.

        Raises:
            OSError: fsync failed.
        """
        if not self._closed:
            os.fsync(self._fd)
        return self._complete

    def close(self) -> int:
        """Finalise the file (the last cluster or fragment, WebM's cues); its size. Idempotent.

        Never raises for media: a muxer that fails to finish leaves the file
        as far as it got. A track that never got a frame is an empty file (0).
        After a disk failure it returns the end of the last complete unit.

        Raises:
            OSError: fsync or close of the file failed (once; later calls return the size).
        """
        if self._closed:
            return self._complete
        self._closed = True
        try:
            if self._container is not None:
                try:
                    self._container.close()
                except (av.FFmpegError, ValueError, MediaError):
                    pass  # what was written before stays playable
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
            if self._container is not None and self._sink.failure is None:
                self._complete = self._bytes
            # else: nothing written (0), or the disk failed: the last complete unit stands
        return self._complete

    # -- the muxer -----------------------------------------------------------------

    def _skip(self) -> bool:
        self.frames_skipped += 1
        return False

    def _raise_if_disk(self, exc: Exception) -> None:
        # PyAV reports a failed write callback as an FFmpegError; the sink kept the cause.
        if self._sink.failure is not None:
            raise MediaError(str(self._sink.failure)) from exc

    def _on_written(self, chunk: bytes) -> None:
        """Sink callback (in mux()): count bytes; MP4: note where each fragment ends."""
        self._bytes += len(chunk)
        if self._scanner is None:
            return
        for kind, _start, end in self._scanner.feed(chunk):
            if kind == "moof":
                self._after_moof = True
            elif kind == "mdat" and self._after_moof:
                self._after_moof = False
                self._complete = end

    def _open(self, data: bytes) -> bool:
        """Open the container on the first keyframe; False if its size cannot be read (skip it)."""
        size: tuple[int, int] | None = None
        probe: Any = None
        if self.codec == "vp8":
            size = vp8_dimensions(data)
        elif self.codec == "vp9":
            size = _decoded_dimensions("vp9", data)
        elif self.codec == "h264":
            try:
                probe = av.open(io.BytesIO(data), format="h264")
            except (av.FFmpegError, ValueError):
                return False
        try:
            template: Any = None
            if probe is not None:
                video = probe.streams.video
                template = video[0] if video else None
                if template is None or not template.codec_context.width or not template.codec_context.extradata:
                    return False  # no SPS/PPS before the IDR, or garbage
            if self.kind == "video" and template is None and size is None:
                return False
            return self._start(size, template)
        finally:
            if probe is not None:
                probe.close()

    def _start(self, size: tuple[int, int] | None, template: Any) -> bool:
        options = {"flush_packets": "1"}
        if self.format.container == "webm":
            options |= {"cluster_time_limit": str(CLUSTER_MS), "cluster_size_limit": str(4 << 20)}
        else:
            self._scanner = Mp4BoxScanner()
            options |= {
                "movflags": "frag_keyframe+empty_moov+default_base_moof+delay_moov",
                "frag_duration": str(FRAGMENT_US),
                "use_editlist": "1",
            }
        container: Any = None
        try:
            container = av.open(self._sink, mode="w", format=self.format.container, options=options)
            if template is not None:
                stream = container.add_stream_from_template(template)
            elif self.kind == "video":
                assert size is not None
                stream = container.add_mux_stream(self.codec, width=size[0], height=size[1])
            else:
                stream = container.add_stream("libopus", rate=48000)
                stream.codec_context.layout = "stereo"
                # Opened here, so start_encoding() keeps it; then our own header
                # replaces libopus's (the same bytes today: RFC 7845, not luck).
                stream.codec_context.open()
                stream.codec_context.extradata = opus_head()
            stream.time_base = self._time_base
            container.start_encoding()
        except (av.FFmpegError, ValueError, TypeError) as exc:
            if container is not None:
                try:
                    container.close()
                except (av.FFmpegError, ValueError, MediaError):
                    pass
            self._raise_if_disk(exc)
            self._rewind()  # a half-written header must not precede the next try's
            return False
        self._container, self._stream = container, stream
        self._header_bytes = self._bytes
        return True

    def _rewind(self) -> None:
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._bytes = self._header_bytes = self._complete = 0
        self._scanner = None
        self._after_moof = False
