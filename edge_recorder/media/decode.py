"""Decoders: depacketized codec frames in, PyAV video frames / float PCM out.

One decoder per input stream, confined to one thread at a time (PyAV codec
contexts are not thread-safe; the GIL is released inside ``decode``, notes
§2.1). Decoders run single-threaded: frame threading adds a frame of latency
per thread and gave no gain on 2 cores; parallelism comes from decoding many
streams at once (notes §2.2, §2.4).

Every ``av.FFmpegError`` becomes :class:`~edge_recorder.errors.DecodeError`,
which the caller treats as "drop this frame and ask for a keyframe".
"""

from __future__ import annotations

import av
import av.error
import numpy as np
import numpy.typing as npt
from av.audio.codeccontext import AudioCodecContext
from av.video.codeccontext import VideoCodecContext

from edge_recorder.errors import DecodeError, MediaError, UnsupportedCodecError

__all__ = ["AudioDecoder", "VideoDecoder", "to_stereo_float"]

F32 = npt.NDArray[np.float32]

# FFmpeg's native decoders: for VP8 they beat libvpx (2.67 vs 2.94 ms at 720p)
# and for Opus they emit fltp at 48 kHz, which is what we mix in.
_VIDEO_DECODERS = {"vp8": "vp8", "vp9": "vp9", "h264": "h264"}
_AUDIO_DECODERS = {"opus": "opus"}

# Integer sample formats and the scale that maps them to [-1, 1).
_INT_SCALE = {"s16": 32768.0, "s16p": 32768.0, "s32": 2147483648.0, "s32p": 2147483648.0}
_FLOAT_FORMATS = {"flt", "fltp", "dbl", "dblp"}


def to_stereo_float(frame: av.AudioFrame) -> F32:
    """Convert a decoded audio frame to interleaved float32 stereo.

    Mono is duplicated to both channels; more than two channels keep the first
    two (front left/right in FFmpeg's standard layouts). The sample rate is not
    changed.

    Args:
        frame: a decoded frame in flt/fltp/dbl/dblp/s16/s16p/s32/s32p.

    Returns:
        A new C-contiguous float32 array of shape (frame.samples, 2).

    Raises:
        MediaError: unsupported sample format or no channels.
    """
    fmt = frame.format.name
    channels = frame.layout.nb_channels
    if channels < 1:
        raise MediaError("audio frame has no channels")
    raw = frame.to_ndarray()
    # Planar formats come as (channels, samples); packed as (1, samples * channels).
    if frame.format.is_planar:
        data = raw.T
    else:
        data = raw.reshape(-1, channels)
    if fmt in _FLOAT_FORMATS:
        pcm = data.astype(np.float32, copy=False)
    elif fmt in _INT_SCALE:
        pcm = data.astype(np.float32) / np.float32(_INT_SCALE[fmt])
    else:
        raise MediaError(f"unsupported audio sample format {fmt!r}")
    if channels == 1:
        return np.ascontiguousarray(np.repeat(pcm, 2, axis=1), dtype=np.float32)
    return np.ascontiguousarray(pcm[:, :2], dtype=np.float32)


class VideoDecoder:
    """Decode one video stream (VP8, VP9 or H.264) frame by frame.

    Args:
        codec: ``"vp8"``, ``"vp9"`` or ``"h264"``.

    Raises:
        UnsupportedCodecError: any other codec.
    """

    def __init__(self, codec: str) -> None:
        name = _VIDEO_DECODERS.get(codec.lower())
        if name is None:
            raise UnsupportedCodecError(f"no video decoder for {codec!r}")
        self.codec = codec.lower()
        ctx = av.CodecContext.create(name, "r")
        assert isinstance(ctx, VideoCodecContext)
        # Explicit: the default (auto) spawns a thread per core for every
        # stream and oversubscribes a box running many recordings.
        ctx.thread_count = 1
        ctx.thread_type = "SLICE"
        self._ctx: VideoCodecContext | None = ctx

    def decode(self, data: bytes) -> list[av.VideoFrame]:
        """Decode one depacketized frame (a full access unit / VP8 frame).

        The returned frames may be held by the decoder as references: read
        them, never write into them.

        Args:
            data: the codec frame.

        Returns:
            Zero or more decoded frames (zero while the decoder waits for more).

        Raises:
            DecodeError: corrupt or empty input.
            MediaError: the decoder is closed.
        """
        if self._ctx is None:
            raise MediaError("video decoder is closed")
        if not data:
            # An empty packet would put the decoder into draining mode.
            raise DecodeError("empty video frame")
        try:
            return self._ctx.decode(av.Packet(data))
        except av.FFmpegError as exc:
            raise DecodeError(f"{self.codec} decode failed: {exc}") from exc

    def close(self) -> None:
        """Release the codec context; safe to call twice."""
        self._ctx = None


class AudioDecoder:
    """Decode one audio stream to 48 kHz (or ``sample_rate``) float32 stereo.

    Args:
        codec: ``"opus"``.
        sample_rate: output sample rate, Hz.

    Raises:
        UnsupportedCodecError: any other codec.
    """

    def __init__(self, codec: str = "opus", sample_rate: int = 48000) -> None:
        name = _AUDIO_DECODERS.get(codec.lower())
        if name is None:
            raise UnsupportedCodecError(f"no audio decoder for {codec!r}")
        self.codec = codec.lower()
        self.sample_rate = sample_rate
        ctx = av.CodecContext.create(name, "r")
        assert isinstance(ctx, AudioCodecContext)
        # RTP Opus (RFC 7587) is always signalled as 48000/2; without an
        # OpusHead the decoder needs the rate and layout from us.
        ctx.sample_rate = 48000
        ctx.layout = "stereo"
        ctx.thread_count = 1
        self._ctx: AudioCodecContext | None = ctx
        # Built on first need and then reused: a resampler keeps filter state
        # across frames, a new one per frame would click at every boundary.
        self._resampler: av.AudioResampler | None = None

    def decode(self, data: bytes) -> F32:
        """Decode one packet.

        Args:
            data: one codec packet (one Opus packet per RTP packet).

        Returns:
            float32 array (n, 2) at ``sample_rate``; n may be 0.

        Raises:
            DecodeError: corrupt or empty input.
            MediaError: the decoder is closed or the output cannot be converted.
        """
        if self._ctx is None:
            raise MediaError("audio decoder is closed")
        if not data:
            raise DecodeError("empty audio packet")
        try:
            frames = self._ctx.decode(av.Packet(data))
            blocks = [block for frame in frames for block in self._convert(frame)]
        except av.FFmpegError as exc:
            raise DecodeError(f"{self.codec} decode failed: {exc}") from exc
        if not blocks:
            return np.zeros((0, 2), dtype=np.float32)
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)

    def close(self) -> None:
        """Release the codec context; safe to call twice."""
        self._ctx = None
        self._resampler = None

    def _convert(self, frame: av.AudioFrame) -> list[F32]:
        if self._resampler is None and frame.sample_rate == self.sample_rate and frame.layout.nb_channels <= 2:
            return [to_stereo_float(frame)]
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="fltp", layout="stereo", rate=self.sample_rate)
        return [to_stereo_float(out) for out in self._resampler.resample(frame)]
