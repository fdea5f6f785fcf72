"""H.264 + AAC encoding into a streamed fragmented MP4 file.

The file is written through a non-seekable sink so FFmpeg's mp4 muxer streams:
``ftyp`` + ``moov`` first (``empty_moov``), then one ``moof`` + ``mdat`` per GOP
(``frag_keyframe``), then ``mfra`` at close (notes §3). Nothing is ever
rewritten, so an uploader can ship bytes as soon as a fragment is complete, and
a file cut at a fragment boundary plays up to that point.

:class:`~edge_recorder.media.mp4.Mp4BoxScanner` follows the top-level boxes
of the byte stream as it is written; when an ``mdat`` completes after a
``moof``, the writer reports the fragment through
``on_fragment(complete_bytes, media_end_s)``.

Timestamps come from counters, never from network time (notes §0.6): video
pts is the output frame index in 1/fps, audio pts the output sample index in
1/sample_rate. Both tracks start at t=0, because ``empty_moov`` pins each
track's first sample to 0 and would otherwise stretch it to absorb an offset;
the AAC priming packet is dropped so audio is not 21.3 ms late (see the
comment at ``AAC_FRAME_SAMPLES``).

Threads: ``encode_video`` and ``encode_audio`` may run concurrently in two
threads. Each encoder is touched by its own method only; muxing (and so the
sink, the scanner and ``on_fragment``) is serialised by one lock.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from av.audio.stream import AudioStream
from av.video.frame import PictureType
from av.video.reformatter import Interpolation, VideoReformatter
from av.video.stream import VideoStream

from edge_recorder.errors import MediaError
from edge_recorder.media.mp4 import Mp4BoxScanner, TrackInfo, fragment_media_end_s, parse_moov_tracks

__all__ = [
    "AAC_FRAME_SAMPLES",
    "FileSink",
    "EncoderSettings",
    "FragmentedMp4Writer",
]

F32 = npt.NDArray[np.float32]

MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"
# Audio alone: every AAC packet is a keyframe, so frag_keyframe would cut a
# fragment per 21 ms packet; a fragment per second of audio instead.
AUDIO_ONLY_MOVFLAGS = "empty_moov+default_base_moof"
AUDIO_ONLY_FRAGMENT_US = 1_000_000
AAC_FRAME_SAMPLES = 1024
# FFmpeg's AAC encoder emits one priming packet first, stamped pts -1024
# (its initial padding): decoding it yields 1024 samples of encoder delay, and
# each later packet's pts is the time of the input samples it decodes to.
# With empty_moov there is no edit list to hide the priming packet, and
# measured here (PyAV and the ffmpeg CLI decoding the file):
#   - keeping it shifts the whole file by 21.3 ms (the muxer pins the first
#     sample to 0 and stretches the first video frame to absorb it);
#   - feeding frames from pts 1024 instead keeps video exact but decodes the
#     audio 21.3 ms late (a beep at 1 s plays at 1.0213 s).
# Dropping the priming packet puts a flash and a beep at t=1 s both at
# 1.000 s and starts both tracks at exactly 0. The cost: the first decoded
# AAC frame lacks its overlap-add half, i.e. the first 21 ms of the
# recording (silence from the mixer in practice) are slightly wrong.
# See ``FragmentedMp4Writer._encode_aac``.

# Gaps in the audio counter are filled with silence in blocks of this many
# samples, so a jump of minutes never allocates minutes of zeros at once.
_SILENCE_BLOCK = 48000


@dataclass(frozen=True)
class EncoderSettings:
    """Output encoding settings.

    Attributes:
        width: video width, pixels (even).
        height: video height, pixels (even).
        fps: output frame rate, frames per second.
        video_bitrate_kbps: H.264 target bitrate, kbit/s.
        x264_preset: libx264 preset (``ultrafast`` ... ``veryslow``).
        keyframe_interval_s: GOP length = fragment length, seconds.
        audio_bitrate_kbps: AAC bitrate, kbit/s.
        sample_rate: audio sample rate, Hz.
        x264_threads: libx264 threads (1: parallelism comes from many recordings).
    """

    width: int = 1280
    height: int = 720
    fps: int = 30
    video_bitrate_kbps: int = 2500
    x264_preset: str = "veryfast"
    keyframe_interval_s: float = 2.0
    audio_bitrate_kbps: int = 128
    sample_rate: int = 48000
    x264_threads: int = 1

    @property
    def keyint(self) -> int:
        """GOP length in frames."""
        return max(1, round(self.fps * self.keyframe_interval_s))


class FileSink:
    """File-like object handed to ``av.open``: write-only, not seekable.

    ``seekable()`` returning False makes PyAV install no seek callback, which
    is what lets the mp4 muxer stream fragments (notes §3).
    """

    def __init__(self, fd: int, on_written: Callable[[bytes], None]) -> None:
        self._fd = fd
        self._on_written = on_written
        # PyAV reports a failed callback as "Error in PyAV callback: '<none>'",
        # losing what went wrong; the first failure is kept to be said plainly.
        self.failure: MediaError | None = None

    def write(self, data: Any) -> int:
        """Write all of ``data`` and report it; called by FFmpeg via PyAV.

        PyAV swallows a BaseException raised here (trio.Cancelled,
        KeyboardInterrupt) and silently drops the data (notes §2.4), so every
        failure is turned into a plain MediaError, which ``mux()`` re-raises.
        """
        try:
            chunk = bytes(data)
            view = memoryview(chunk)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self._on_written(chunk)
            return len(chunk)
        except MediaError as exc:
            self.failure = self.failure or exc
            raise
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                failure = MediaError(
                    "the disk of RECORDING_TMP_DIR is full (ENOSPC: no space left on device); "
                    "the recording is kept up to its last complete fragment"
                )
            else:
                failure = MediaError(f"writing the recording failed: {exc.strerror or exc} (errno {exc.errno})")
            self.failure = self.failure or failure
            raise failure from exc
        except BaseException as exc:  # noqa: BLE001 - see docstring
            failure = MediaError(f"writing the recording failed: {exc!r}")
            self.failure = self.failure or failure
            raise failure from exc

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False


class FragmentedMp4Writer:
    """Encode video and audio into a streamed fragmented MP4 file.

    Args:
        path: output file; created or truncated.
        settings: encoder settings.
        audio_only: no video track (an audio-only mix, ``audio.m4a``): a
            fragment per second of audio; :meth:`encode_video` refuses.
        on_fragment: called as ``on_fragment(complete_bytes, media_end_s)``
            from the muxing thread each time a ``moof`` + ``mdat`` fragment
            has been written to the file: the file's first ``complete_bytes``
            bytes are a playable fMP4 up to ``media_end_s`` seconds. It must be
            quick and must not call back into the writer.

    Raises:
        MediaError: the file cannot be opened or the encoders not set up.

    Attributes:
        bytes_written: bytes written to the file so far.
        fragments: complete fragments written so far.
        video_frames: video frames submitted to the encoder.
        audio_frames: AAC frames (of 1024 samples) submitted to the encoder.
        audio_samples_dropped: audio samples dropped because their sample
            index had already been encoded (overlapping calls).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        settings: EncoderSettings,
        *,
        on_fragment: Callable[[int, float], None] | None = None,
        audio_only: bool = False,
    ) -> None:
        self.settings = settings
        self.audio_only = audio_only
        self.bytes_written = 0
        self.fragments = 0
        self.video_frames = 0
        self.audio_frames = 0
        self.audio_samples_dropped = 0
        self._on_fragment = on_fragment
        self._mux_lock = threading.Lock()
        self._video_lock = threading.Lock()
        self._audio_lock = threading.Lock()
        self._closed = False
        self._scanner = Mp4BoxScanner(keep=("moov", "moof"))
        self._tracks: dict[int, TrackInfo] = {}
        self._pending_moof: bytes | None = None
        self._last_index = -1
        self._video_tb = Fraction(1, settings.fps)
        self._audio_tb = Fraction(1, settings.sample_rate)
        self._reformatter: VideoReformatter | None = None
        # Audio waiting for a whole AAC frame, and the output sample index of
        # its first sample.
        self._audio_pending: list[F32] = []
        self._audio_pending_n = 0
        self._audio_next = 0  # sample index the next input sample should have
        self._audio_encoded = 0  # sample index of the next AAC frame's first sample
        # Never truncate: the session created the spool exclusively (empty,
        # 0600); a file that already holds bytes is a recording, and a
        # recording is never written over. O_NOFOLLOW: a planted link is refused.
        try:
            self._fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise MediaError(f"cannot open {os.fspath(path)!r} for writing: {exc}") from exc
        if os.fstat(self._fd).st_size > 0:
            os.close(self._fd)
            raise MediaError(f"{os.fspath(path)!r} already holds a recording; it is never written over")
        try:
            self._container, self._video, self._audio = self._open(settings)
        except BaseException:
            os.close(self._fd)
            raise

    # -- setup ---------------------------------------------------------------

    def _open(self, settings: EncoderSettings) -> tuple[av.container.OutputContainer, VideoStream | None, AudioStream]:
        sink = self._sink = FileSink(self._fd, self._on_written)
        options = (
            {"movflags": AUDIO_ONLY_MOVFLAGS, "frag_duration": str(AUDIO_ONLY_FRAGMENT_US)}
            if self.audio_only
            else {"movflags": MOVFLAGS}
        )
        try:
            container = av.open(sink, mode="w", format="mp4", options=options)
        except av.FFmpegError as exc:
            raise MediaError(f"cannot open the mp4 muxer: {exc}") from exc
        try:
            keyint = settings.keyint
            video = None if self.audio_only else container.add_stream(
                "libx264",
                rate=settings.fps,
                options={
                    "preset": settings.x264_preset,
                    # zerolatency: no lookahead or mbtree; faster here (13.6 vs
                    # 21 ms at 720p), small memory, dts == pts (notes §2.4).
                    "tune": "zerolatency",
                    # Fixed GOPs give fixed-length fragments (frag_keyframe).
                    "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0",
                    # A frame typed I becomes an IDR, not an open-GOP I frame:
                    # the cut after a pause starts a fragment that plays alone.
                    "forced-idr": "1",
                },
            )
            if video is not None:
                video.width = settings.width
                video.height = settings.height
                video.pix_fmt = "yuv420p"
                video.bit_rate = settings.video_bitrate_kbps * 1000
                video.time_base = self._video_tb
                video.codec_context.time_base = self._video_tb
                video.codec_context.thread_count = settings.x264_threads
            audio = container.add_stream("aac", rate=settings.sample_rate)
            audio.codec_context.layout = "stereo"
            audio.bit_rate = settings.audio_bitrate_kbps * 1000
            audio.time_base = self._audio_tb
            audio.codec_context.thread_count = 1
            # Open both encoders and write ftyp+moov now, in this thread:
            # otherwise the first mux() would open the *other* stream's encoder
            # from whichever thread got there first, racing its owner.
            with self._mux_lock:
                container.start_encoding()
        except (av.FFmpegError, ValueError, TypeError) as exc:
            self._abandon(container)
            raise MediaError(f"cannot set up the encoders: {exc}") from exc
        except BaseException:
            self._abandon(container)
            raise
        assert (video is None or isinstance(video, VideoStream)) and isinstance(audio, AudioStream)
        return container, video, audio

    @staticmethod
    def _abandon(container: av.container.OutputContainer) -> None:
        try:
            container.close()
        except Exception:  # noqa: BLE001 - already failing; the first error wins
            pass

    # -- encoding ------------------------------------------------------------

    def encode_video(self, frame: av.VideoFrame, index: int, *, force_keyframe: bool = False) -> None:
        """Encode one output video frame.

        The frame's pixels are not modified; its ``pts`` and ``time_base`` are
        set. Frames of another size or format are converted first.

        Args:
            frame: the composited frame.
            index: output frame number; pts = index in 1/fps. Must increase.
            force_keyframe: make this frame an IDR (the first after a pause's
                cut): with ``frag_keyframe`` it starts a new fragment.

        Raises:
            MediaError: encoding or writing failed, the index did not increase,
                or the writer is closed.
        """
        with self._video_lock:
            self._check_open()
            if self._video is None:
                raise MediaError("this writer writes audio only")
            if index <= self._last_index:
                raise MediaError(f"video frame index {index} not after {self._last_index}")
            s = self.settings
            try:
                if frame.width != s.width or frame.height != s.height or frame.format.name != "yuv420p":
                    if self._reformatter is None:
                        self._reformatter = VideoReformatter()
                    frame = self._reformatter.reformat(
                        frame, s.width, s.height, "yuv420p", interpolation=Interpolation.BILINEAR, threads=1
                    )
                frame.pts = index
                frame.time_base = self._video_tb
                frame.pict_type = PictureType.I if force_keyframe else PictureType.NONE
                packets = self._video.encode(frame)
            except (av.FFmpegError, ValueError) as exc:
                raise MediaError(f"video encode failed at frame {index}: {exc}") from exc
            self._last_index = index
            self.video_frames += 1
            self._mux(packets)

    def encode_audio(self, pcm: npt.NDArray[np.floating], sample_index: int) -> None:
        """Queue mixed audio; encode every complete 1024-sample AAC frame.

        A gap before ``sample_index`` is filled with silence; samples before
        the last one already queued are dropped (and counted), so the audio
        track is continuous from t=0.

        Args:
            pcm: float array (n, 2) in [-1, 1].
            sample_index: output sample index of ``pcm[0]``.

        Raises:
            MediaError: encoding or writing failed, or the writer is closed.
            ValueError: ``pcm`` has the wrong shape.
        """
        if pcm.ndim != 2 or pcm.shape[1] != 2:
            raise ValueError(f"pcm must have shape (n, 2), got {pcm.shape}")
        with self._audio_lock:
            self._check_open()
            if sample_index < self._audio_next:
                skip = min(pcm.shape[0], self._audio_next - sample_index)
                self.audio_samples_dropped += skip
                pcm = pcm[skip:]
                sample_index += skip
            while sample_index > self._audio_next:
                gap = min(sample_index - self._audio_next, _SILENCE_BLOCK)
                self._queue_audio(np.zeros((gap, 2), dtype=np.float32))
            if pcm.shape[0]:
                self._queue_audio(np.asarray(pcm, dtype=np.float32))

    def close(self) -> None:
        """Flush both encoders, write the last fragment and the trailer, close the file.

        Safe to call twice; the file descriptor is closed even if flushing fails.

        Raises:
            MediaError: flushing or writing failed (the file is closed anyway).
        """
        with self._video_lock, self._audio_lock:
            if self._closed:
                return
            self._closed = True
            try:
                try:
                    if self._audio_pending_n:
                        # AAC accepts a short last frame: no padding silence.
                        self._encode_aac(self._take_audio(self._audio_pending_n))
                    self._mux(self._audio.encode(None))
                    if self._video is not None:
                        self._mux(self._video.encode(None))
                    with self._mux_lock:
                        self._container.close()
                except (av.FFmpegError, ValueError) as exc:
                    self._abandon(self._container)
                    if self._sink.failure is not None:
                        raise MediaError(str(self._sink.failure)) from None
                    raise MediaError(f"finishing the recording failed: {exc}") from exc
                except BaseException:
                    self._abandon(self._container)
                    raise
            finally:
                os.close(self._fd)

    # -- internals -----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise MediaError("the writer is closed")

    def _queue_audio(self, block: F32) -> None:
        self._audio_pending.append(block)
        self._audio_pending_n += block.shape[0]
        self._audio_next += block.shape[0]
        while self._audio_pending_n >= AAC_FRAME_SAMPLES:
            self._encode_aac(self._take_audio(AAC_FRAME_SAMPLES))

    def _take_audio(self, n: int) -> F32:
        joined = self._audio_pending[0] if len(self._audio_pending) == 1 else np.concatenate(self._audio_pending)
        head, rest = joined[:n], joined[n:]
        self._audio_pending = [rest] if rest.shape[0] else []
        self._audio_pending_n = rest.shape[0]
        return head

    def _encode_aac(self, block: F32) -> None:
        try:
            # The AAC encoder takes planar float: (channels, samples).
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block.T), format="fltp", layout="stereo")
            frame.sample_rate = self.settings.sample_rate
            frame.pts = self._audio_encoded
            frame.time_base = self._audio_tb
            packets = self._audio.encode(frame)
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(f"audio encode failed at sample {self._audio_encoded}: {exc}") from exc
        # Only the priming packet has a negative pts; drop it (see the comment
        # at AAC_FRAME_SAMPLES for the measurements behind this).
        packets = [p for p in packets if p.pts is None or p.pts >= 0]
        self._audio_encoded += block.shape[0]
        self.audio_frames += 1
        self._mux(packets)

    def _mux(self, packets: list[av.Packet[Any]]) -> None:
        if not packets:
            return
        with self._mux_lock:
            try:
                self._container.mux(packets)
            except av.FFmpegError as exc:
                if self._sink.failure is not None:
                    raise MediaError(str(self._sink.failure)) from None
                raise MediaError(f"muxing failed: {exc}") from exc

    def _on_written(self, chunk: bytes) -> None:
        """Sink callback (muxing thread, mux lock held): count bytes, spot fragments."""
        self.bytes_written += len(chunk)
        for kind, start, end in self._scanner.feed(chunk):
            body = self._scanner.pop_body(start)
            if kind == "moov" and body is not None:
                self._tracks = parse_moov_tracks(body)
            elif kind == "moof":
                self._pending_moof = body
            elif kind == "mdat" and self._pending_moof is not None:
                media_end = fragment_media_end_s(self._pending_moof, self._tracks)
                self._pending_moof = None
                self.fragments += 1
                if self._on_fragment is not None:
                    self._on_fragment(end, media_end)
