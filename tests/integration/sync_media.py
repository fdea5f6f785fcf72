"""Tools for the A/V sync proof (issue #5): a flash-and-beep source, a GStreamer
sender that sends it the way a browser would (one RTP session per medium, one
CNAME, RTCP Sender Reports), and detectors that find the flashes and beeps
again in any file PyAV can read (the source itself, or the recorder's output).

The source shows a dark grey picture with a full white "flash" of
``flash_frames`` frames at each event instant, and plays silence with a
``beep_hz`` burst of ``beep_s`` starting at the same instants. Instants are
frame-aligned (so the source's own skew is exactly 0) and not periodic: a
phase and a per-event stagger keep them off integer seconds and make a
whole-period misalignment visible.

Skew is *audio − video*: positive when the beep comes after the flash.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

GST = shutil.which("gst-launch-1.0")

__all__ = [
    "SyncSource",
    "beep_onsets",
    "find_beeps",
    "find_flashes",
    "marker_fraction",
    "read_clock",
    "flash_onsets",
    "gst_rtpbin_sender_argv",
    "pair_skews",
    "render_sync_source",
    "sync_instants",
]

DARK_LUMA = 40  # BT.601 limited-range Y of the dark grey background
FLASH_LUMA = 235  # full white
CLOCK_BITS = 16  # the visible clock: the frame number in this many blocks
CLOCK_STRIP_ROWS = 24  # ... across the top rows of the source picture
MARKER_UV = (200, 200)  # the marker background's chroma (a magenta-ish grey at the same luma)


def read_clock(yuv: np.ndarray, width: int, height: int, strip_rows: int) -> int:
    """The frame number a :func:`render_sync_source` clock strip shows in a
    decoded picture (``yuv420p`` ndarray, planes stacked) scaled to ``width``,
    the strip ``strip_rows`` rows high at its top."""
    block = width / CLOCK_BITS
    row = yuv[strip_rows // 2, :width]
    value = 0
    for bit in range(CLOCK_BITS):
        x = int(block * bit + block / 2)
        value = (value << 1) | int(row[x] > 128)
    return value


def marker_fraction(yuv: np.ndarray, width: int, height: int) -> float:
    """The share of a decoded picture's chroma samples that are :data:`MARKER_UV` (±12)."""
    quarter = (height // 2) * (width // 2)
    u = yuv[height:].reshape(-1)[:quarter].astype(np.int16)
    v = yuv[height:].reshape(-1)[quarter : 2 * quarter].astype(np.int16)
    hit = (np.abs(u - MARKER_UV[0]) <= 12) & (np.abs(v - MARKER_UV[1]) <= 12)
    return float(hit.mean())


@dataclass(frozen=True)
class SyncSource:
    """A rendered flash-and-beep file and what is in it.

    Attributes:
        path: the file (Matroska: FFV1 video, PCM s16 stereo audio; both
            codecs have no delay or priming, so the file's own skew is 0).
        duration_s: its length in seconds.
        instants: the event instants in seconds: the first flash frame's time
            and (plus ``audio_offset_s``) the first beep sample's time.
        fps: video frame rate.
        sample_rate: audio sample rate in Hz.
        width: picture width in pixels.
        height: picture height in pixels.
        flash_frames: frames each flash lasts.
        beep_s: each beep's length in seconds.
        beep_hz: the beep's frequency in Hz.
        audio_offset_s: how much later than its flash each beep starts.
    """

    path: Path
    duration_s: float
    instants: tuple[float, ...]
    fps: int
    sample_rate: int
    width: int
    height: int
    flash_frames: int
    beep_s: float
    beep_hz: float
    audio_offset_s: float = 0.0


def sync_instants(
    duration_s: float,
    *,
    period_s: float = 1.0,
    phase_s: float = 0.37,
    stagger_s: float = 0.1,
    fps: int = 30,
    tail_s: float = 0.2,
) -> list[float]:
    """The event instants of a source: ``k * period + phase + (k % 3) * stagger``,
    rounded to whole frames, up to ``duration_s - tail_s``.

    Args:
        duration_s: the source's length in seconds.
        period_s: the mean spacing of events in seconds.
        phase_s: the first event's offset from 0 in seconds.
        stagger_s: an extra offset of 0, 1 or 2 × stagger_s per event, so
            events are not periodic (keep ``2 * stagger_s < period_s / 2``).
        fps: frame rate the instants are rounded to.
        tail_s: room left after the last event, in seconds.

    Returns:
        The instants in seconds, each a multiple of ``1 / fps``.
    """
    out: list[float] = []
    k = 0
    while True:
        frame = round((k * period_s + phase_s + (k % 3) * stagger_s) * fps)
        t = frame / fps
        if t > duration_s - tail_s:
            return out
        out.append(t)
        k += 1


def render_sync_source(
    path: Path | str,
    duration_s: float,
    period_s: float = 1.0,
    *,
    phase_s: float = 0.37,
    stagger_s: float = 0.1,
    fps: int = 30,
    width: int = 640,
    height: int = 360,
    sample_rate: int = 48000,
    flash_frames: int = 2,
    beep_s: float = 0.05,
    beep_hz: float = 1000.0,
    beep_amplitude: float = 0.5,
    audio_offset_s: float = 0.0,
    clock_strip: bool = False,
    marker_s: tuple[float, float] | None = None,
) -> SyncSource:
    """Write a flash-and-beep file with PyAV.

    Video: yuv420p, Y=40 (dark grey) with ``flash_frames`` frames of Y=235
    (white) from each instant; FFV1 so pixels are exact. Audio: stereo s16
    PCM, silence with a sine burst of ``beep_s`` at ``beep_hz`` starting at
    each instant with phase 0 and no ramp (a sharp onset to time).

    Args:
        path: where to write; the container is Matroska whatever the suffix
            says (``.mkv`` is the honest one).
        duration_s: length in seconds.
        period_s, phase_s, stagger_s: see :func:`sync_instants`.
        fps: video frame rate; ``sample_rate / fps`` must be an integer so
            every frame boundary falls on a sample.
        width, height: picture size in pixels (even).
        sample_rate: audio rate in Hz.
        flash_frames: frames per flash (2 survives an output frame rate
            lower than the source's).
        beep_s: beep length in seconds.
        beep_hz: beep frequency in Hz.
        beep_amplitude: beep peak, full scale 1.0.
        audio_offset_s: start each beep this much after its flash (a source
            that is out of sync on purpose, to test the detectors); rounded
            to whole samples.
        clock_strip: draw the frame number as a visible clock: a strip of
            :data:`CLOCK_BITS` black/white blocks across the top
            :data:`CLOCK_STRIP_ROWS` rows (most significant bit left); see
            :func:`read_clock`.
        marker_s: ``(start, end)`` seconds during which the background is
            :data:`MARKER_UV` (same luma, so flashes are found as before): a
            colour a test can search a recording for.

    Returns:
        What was written, with the instants.

    Raises:
        ValueError: ``sample_rate`` is not a multiple of ``fps``.
    """
    if sample_rate % fps:
        raise ValueError(f"sample_rate {sample_rate} is not a multiple of fps {fps}")
    path = Path(path)
    instants = sync_instants(duration_s, period_s=period_s, phase_s=phase_s, stagger_s=stagger_s, fps=fps)
    flash_at = {round(t * fps) + i for t in instants for i in range(flash_frames)}
    n_frames = round(duration_s * fps)
    n_samples = n_frames * (sample_rate // fps)

    pcm = np.zeros(n_samples, np.float64)
    beep_len = round(beep_s * sample_rate)
    burst = beep_amplitude * np.sin(2 * np.pi * beep_hz * np.arange(beep_len) / sample_rate)
    for t in instants:
        start = round((t + audio_offset_s) * sample_rate)
        if not 0 <= start < n_samples:
            continue
        end = min(n_samples, start + beep_len)
        pcm[start:end] = burst[: end - start]
    pcm16 = np.round(pcm * 32767).astype(np.int16)

    dark = np.full((height * 3 // 2, width), 128, np.uint8)
    dark[:height] = DARK_LUMA
    white = dark.copy()
    white[:height] = FLASH_LUMA

    marked = dark.copy()
    chroma = marked[height:].reshape(-1)
    quarter = (height // 2) * (width // 2)
    chroma[:quarter] = MARKER_UV[0]
    chroma[quarter:] = MARKER_UV[1]
    marked_white = marked.copy()
    marked_white[:height] = FLASH_LUMA

    def picture(n: int) -> np.ndarray:
        in_marker = marker_s is not None and marker_s[0] <= n / fps < marker_s[1]
        flashed = n in flash_at
        base = (marked_white if flashed else marked) if in_marker else (white if flashed else dark)
        if not clock_strip:
            return base
        out = base.copy()
        block = width // CLOCK_BITS
        for bit in range(CLOCK_BITS):
            on = (n >> (CLOCK_BITS - 1 - bit)) & 1
            out[:CLOCK_STRIP_ROWS, bit * block : (bit + 1) * block] = FLASH_LUMA if on else 16
        return out

    with av.open(str(path), "w", format="matroska") as container:
        video = container.add_stream("ffv1", rate=fps)
        video.width = width
        video.height = height
        video.pix_fmt = "yuv420p"
        video.time_base = Fraction(1, fps)
        audio = container.add_stream("pcm_s16le", rate=sample_rate)
        audio.layout = "stereo"
        audio.time_base = Fraction(1, sample_rate)
        per_frame = sample_rate // fps
        for n in range(n_frames):
            # Interleave by time: one video frame, then its frame's worth of audio.
            frame = av.VideoFrame.from_ndarray(picture(n), format="yuv420p")
            frame.pts = n
            frame.time_base = Fraction(1, fps)
            container.mux(video.encode(frame))
            block = pcm16[n * per_frame : (n + 1) * per_frame]
            aframe = av.AudioFrame.from_ndarray(
                np.repeat(block, 2).reshape(1, -1), format="s16", layout="stereo"
            )
            aframe.sample_rate = sample_rate
            aframe.pts = n * per_frame
            aframe.time_base = Fraction(1, sample_rate)
            container.mux(audio.encode(aframe))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    return SyncSource(
        path=path,
        duration_s=n_frames / fps,
        instants=tuple(instants),
        fps=fps,
        sample_rate=sample_rate,
        width=width,
        height=height,
        flash_frames=flash_frames,
        beep_s=beep_s,
        beep_hz=beep_hz,
        audio_offset_s=round(audio_offset_s * sample_rate) / sample_rate,
    )


# ------------------------------------------------------------------ detectors


def _luma_means(path: Path | str, region: tuple[int, int, int, int] | None) -> tuple[list[float], list[float]]:
    """Per decoded frame of the first video stream: (time in s, mean Y in region)."""
    times: list[float] = []
    means: list[float] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if frame.format.name not in ("yuv420p", "yuvj420p", "yuv422p", "yuv444p", "gray"):
                frame = frame.reformat(format="yuv420p")
            plane = frame.planes[0]
            y = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
            y = y[:, : frame.width]
            if region is not None:
                x0, y0, w, h = region
                y = y[y0 : y0 + h, x0 : x0 + w]
            if frame.time is None:
                continue
            times.append(float(frame.time))
            means.append(float(y.mean()))
    return times, means


def flash_onsets(
    times: Sequence[float],
    means: Sequence[float],
    *,
    threshold: float | None = None,
    min_contrast: float = 40.0,
) -> list[float]:
    """Where a series of mean lumas crosses ``threshold`` upwards (pure; see
    :func:`find_flashes`).

    Args:
        times: each picture's time in seconds, ascending.
        means: each picture's mean luma (0..255).
        threshold: None for halfway between the 10th percentile and the maximum.
        min_contrast: with ``threshold=None``, no flashes unless the maximum is
            this far above the 10th percentile.

    Returns:
        The times of the first picture of each flash.
    """
    if not means:
        return []
    if threshold is None:
        values = np.asarray(means, dtype=np.float64)
        low, high = float(np.percentile(values, 10)), float(values.max())
        if high - low < min_contrast:
            return []
        threshold = (low + high) / 2
    onsets: list[float] = []
    above = False
    for t, m in zip(times, means):
        if m > threshold and not above:
            onsets.append(float(t))
        above = m > threshold
    return onsets


def find_flashes(
    mp4_path: Path | str,
    region: tuple[int, int, int, int] | None = None,
    *,
    threshold: float | None = None,
    min_contrast: float = 40.0,
) -> list[float]:
    """Times of the frames where a flash starts: mean luma in ``region`` crosses
    ``threshold`` upwards.

    Args:
        mp4_path: any file PyAV can decode; its first video stream is used.
        region: ``(x, y, width, height)`` in pixels of the decoded picture to
            average over (the participant's tile in a composite); None for
            the whole frame.
        threshold: mean luma (0..255) above which a frame counts as flashed;
            None for halfway between the 10th percentile and the maximum.
        min_contrast: with ``threshold=None``, if the maximum is less than
            this above the 10th percentile there are no flashes.

    Returns:
        Presentation times in seconds (the file's own timeline), ascending.
        A flash already on at the first frame counts, at that frame's time.
    """
    times, means = _luma_means(mp4_path, region)
    return flash_onsets(times, means, threshold=threshold, min_contrast=min_contrast)


def _audio_mono(path: Path | str, gap_tolerance_s: float = 0.002) -> tuple[np.ndarray, int, float]:
    """Decode the first audio stream to mono float64 in [-1, 1]; frames follow
    each other unless their pts is off by more than ``gap_tolerance_s``.

    Returns:
        (samples, sample rate, time in seconds of samples[0]).
    """
    chunks: list[tuple[int, np.ndarray]] = []
    rate = 0
    t0: float | None = None
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        for frame in container.decode(stream):
            rate = frame.sample_rate
            data = frame.to_ndarray()
            channels = len(frame.layout.channels)
            if frame.format.is_planar:
                mono = data.astype(np.float64).mean(axis=0)
            else:
                mono = data.reshape(-1, channels).astype(np.float64).mean(axis=1)
            if np.issubdtype(data.dtype, np.integer):
                mono /= float(np.iinfo(data.dtype.type).max) + 1  # type: ignore[type-var]
            expected = chunks[-1][0] + len(chunks[-1][1]) if chunks else 0
            start = expected
            if frame.time is not None:
                if t0 is None:
                    t0 = float(frame.time)
                at = round((float(frame.time) - t0) * rate)
                # Containers round pts (Matroska to 1 ms): trust the running
                # sample count unless pts says there is a real gap or overlap.
                if abs(at - expected) > gap_tolerance_s * rate:
                    start = at
            chunks.append((start, mono))
    if not chunks:
        return np.zeros(0), rate or 48000, 0.0
    end = max(s + len(c) for s, c in chunks)
    out = np.zeros(end, np.float64)
    for s, c in chunks:
        # Placed by pts: a gap stays silent, an overlap is overwritten.
        out[max(0, s) : s + len(c)] = c[max(0, -s) :]
    return out, rate, t0 or 0.0


def _tone_envelope(x: np.ndarray, rate: int, hz: float) -> np.ndarray:
    """Amplitude of the ``hz`` component: I/Q demodulation, then a centred
    moving average one period long (it nulls the 2·hz image exactly when the
    period is a whole number of samples). An ideal burst of amplitude A that
    starts at sample s0 reads exactly A/2 at s0."""
    n = max(1, round(rate / hz))
    phase = np.exp(-2j * np.pi * hz * np.arange(len(x)) / rate)
    kernel = np.ones(n) / n
    baseband = np.convolve(x * phase, kernel, mode="same")
    # mode="same" centres an even kernel half a sample late; the half-amplitude
    # point is at s0 for the window [n - n/2, n + n/2 - 1], which is what
    # numpy uses for even n.
    return 2.0 * np.abs(baseband)


def beep_onsets(
    samples: np.ndarray,
    rate: int,
    *,
    frequency_hz: float = 1000.0,
    min_level: float = 0.02,
    relative_level: float = 0.25,
    min_gap_s: float = 0.2,
    peak_window_s: float = 0.03,
) -> list[float]:
    """Onsets of ``frequency_hz`` bursts in mono samples (pure; see :func:`find_beeps`).

    Args:
        samples: mono audio, full scale 1.0.
        rate: its sample rate in Hz.
        frequency_hz, min_level, relative_level, min_gap_s, peak_window_s:
            as for :func:`find_beeps`.

    Returns:
        Onset times in seconds from ``samples[0]``, ascending.
    """
    x = np.asarray(samples, dtype=np.float64)
    if len(x) == 0:
        return []
    env = _tone_envelope(x, rate, frequency_hz)
    level = max(min_level, relative_level * float(env.max()))
    above = env > level
    if not above.any():
        return []
    edges = np.flatnonzero(np.diff(above.astype(np.int8)) == 1) + 1
    if above[0]:
        edges = np.concatenate(([0], edges))
    onsets: list[float] = []
    last_start = -math.inf
    window = max(1, round(peak_window_s * rate))
    for start in (int(e) for e in edges):
        if (start - last_start) / rate < min_gap_s:
            continue
        last_start = float(start)
        # The burst's level: the median over its first peak_window_s (the max
        # would include the ramp's overshoot).
        peak = float(np.median(env[start : start + window]))
        half = peak / 2
        # Walk back from the region's start to where the envelope crosses half
        # of this burst's level (the region starts at `level`, possibly above it).
        i = start
        while i > 0 and env[i - 1] >= half:
            i -= 1
        while i < len(env) and env[i] < half:
            i += 1
        if i == 0:
            pos = 0.0
        else:
            lo, hi = env[i - 1], env[i]
            pos = (i - 1) + (half - lo) / (hi - lo) if hi > lo else float(i)
        onsets.append(float(pos / rate))
    return onsets


def find_beeps(
    mp4_path: Path | str,
    *,
    frequency_hz: float = 1000.0,
    min_level: float = 0.02,
    relative_level: float = 0.25,
    min_gap_s: float = 0.2,
    peak_window_s: float = 0.03,
) -> list[float]:
    """Onset times of ``frequency_hz`` bursts in the first audio stream.

    The envelope of the tone (see :func:`_tone_envelope`, ~1 ms rise) is
    scanned for regions above ``max(min_level, relative_level × its
    maximum)``; each region's onset is where the envelope first reaches half
    of the region's level (the envelope's median over ``peak_window_s``
    from the region's start), linearly interpolated between samples. For a
    clean burst that is its first sample, to within a sample.

    Args:
        mp4_path: any file PyAV can decode; its first audio stream is used,
            channels averaged.
        frequency_hz: the beep's frequency.
        min_level: the least envelope amplitude (full scale 1.0) that counts.
        relative_level: the least amplitude relative to the loudest beep.
        min_gap_s: regions closer than this merge into one beep.
        peak_window_s: how much of a burst after a region's start sets its
            level (keep it below the beep's length).

    Returns:
        Onset times in seconds on the file's timeline (the first audio
        frame's pts plus the sample position), ascending.
    """
    x, rate, t0 = _audio_mono(mp4_path)
    onsets = beep_onsets(
        x,
        rate,
        frequency_hz=frequency_hz,
        min_level=min_level,
        relative_level=relative_level,
        min_gap_s=min_gap_s,
        peak_window_s=peak_window_s,
    )
    return [t0 + t for t in onsets]


def pair_skews(
    flashes: Sequence[float], beeps: Sequence[float], *, max_distance_s: float | None = None
) -> list[float]:
    """For each beep, the skew to its nearest flash: ``beep − flash``.

    Args:
        flashes: flash onset times in seconds.
        beeps: beep onset times in seconds.
        max_distance_s: beeps farther than this from every flash are left out
            (None keeps all).

    Returns:
        One skew in seconds per kept beep, in the beeps' order; positive
        means audio late.
    """
    if not flashes:
        return []
    f = np.asarray(sorted(flashes))
    out: list[float] = []
    for b in beeps:
        i = int(np.searchsorted(f, b))
        candidates = [f[j] for j in (i - 1, i) if 0 <= j < len(f)]
        nearest = min(candidates, key=lambda v: abs(b - v))
        skew = float(b - nearest)
        if max_distance_s is None or abs(skew) <= max_distance_s:
            out.append(skew)
    return out


def assert_on_one_timeline(
    reference: Path | str, video: Path | str, audio: Path | str, *, events: int, label: str, fps: int = 30
) -> None:
    """The flashes of ``video`` and the beeps of ``audio`` sit where ``reference`` has them.

    Within 20 ms (the issue's bound for tracks against the composite) plus,
    for the flashes, half a frame: a composite shows each tick the frame
    nearest it. At least ``events - 2`` of each are paired (the first and
    last may fall outside a file). Prints the offsets, ``label`` first.
    """
    flashes = pair_skews(find_flashes(reference), find_flashes(video), max_distance_s=0.5)
    beeps = pair_skews(find_beeps(reference), find_beeps(audio), max_distance_s=0.5)
    print(f"\n{label}: flashes {[round(o * 1000) for o in flashes]} ms, beeps {[round(o * 1000) for o in beeps]} ms")
    assert len(flashes) >= events - 2 and len(beeps) >= events - 2, (label, flashes, beeps)
    assert max(abs(o) for o in flashes) <= 0.020 + 0.5 / fps, (label, flashes)
    assert max(abs(o) for o in beeps) <= 0.020, (label, beeps)


# -------------------------------------------------------------- GStreamer sender


def gst_rtpbin_sender_argv(
    source: Path | str,
    host: str,
    *,
    video_port: int,
    audio_port: int,
    video_rtcp_port: int | None = None,
    audio_rtcp_port: int | None = None,
    video_pt: int = 96,
    audio_pt: int = 111,
    video_ssrc: int = 0x5EED0001,
    audio_ssrc: int = 0x5EED0002,
    cname: str = "sync@test",
    video_timestamp_offset: int | None = None,
    audio_timestamp_offset: int | None = None,
    video_delay_s: float = 0.0,
    audio_delay_s: float = 0.0,
    rtcp_sync_send_time: bool = False,
    video_bitrate_bps: int = 800_000,
    keyframe_max_dist: int = 30,
) -> list[str]:
    """A ``gst-launch-1.0`` argv that plays ``source`` live and sends it as
    VP8 + Opus through one ``rtpbin`` (session 0 video, session 1 audio), so
    both SSRCs share a CNAME and RTCP SR + SDES flow for each.

    The file is decoded (``decodebin``), paced by ``clocksync`` on the raw
    branches (that instant is the capture time), encoded, payloaded and sent.
    Each branch links to decodebin through a caps filter: decodebin's pads
    come in either order, and an unfiltered ``d. ! queue`` would sometimes
    take the audio pad for the video branch (and hang on not-negotiated).
    With ``rtcp_sync_send_time=False`` the SRs map the RTP timestamps to the
    capture instants (the payloaders stamp from buffer time), which is what a
    browser does; ``video_delay_s`` then adds sender-side latency after
    capture (a ``queue`` holding that much), so arrival times lie about
    capture while the SRs stay right: arrival-based sync is off by that much,
    SR-based sync is not. ``rtp-profile=avpf`` lets the first RTCP go out
    immediately and keeps the interval short (about 1 s at these rates).

    RTCP goes to ``*_rtcp_port``; with None it is muxed (RFC 5761) onto the
    RTP port through a ``funnel`` and one ``udpsink``, so RTP and RTCP come
    from one source address, as from mediasoup.

    Args:
        source: a file from :func:`render_sync_source` (anything decodebin
            reads with one video and one audio stream).
        host: the recorder's IP.
        video_port, audio_port: the recorder's RTP ports.
        video_rtcp_port, audio_rtcp_port: separate RTCP ports, or None for mux.
        video_pt, audio_pt: payload types.
        video_ssrc, audio_ssrc: SSRCs.
        cname: the CNAME both sessions carry in SDES.
        video_timestamp_offset, audio_timestamp_offset: the payloaders'
            initial RTP timestamps; None lets GStreamer pick random ones.
        video_delay_s, audio_delay_s: sender latency after capture, in seconds.
        rtcp_sync_send_time: True maps SRs to send time instead of capture
            time (GStreamer's default; then ``*_delay_s`` moves the SRs too).
        video_bitrate_bps: VP8 target bitrate.
        keyframe_max_dist: frames between VP8 keyframes.

    Returns:
        The argv (``-q``; run with stdin/stdout to DEVNULL). At the file's end
        both sessions send SR + SDES + BYE, but gst-launch does not always
        exit then: on GStreamer 1.22 about 1 run in 5 never sees EOS on its
        bus, with muxed or separate RTCP alike. Wait for the BYEs (or the
        file's duration) and stop it with SIGTERM rather than waiting for it.
    """
    assert GST is not None, "gst-launch-1.0 is not installed"
    # gst-launch parses the value as a GstStructure: quote the CNAME (it has an @).
    sdes = f'"application/x-rtp-source-sdes,cname=(string)\\"{cname}\\""'
    vts = "" if video_timestamp_offset is None else f"timestamp-offset={video_timestamp_offset & 0xFFFFFFFF} "
    ats = "" if audio_timestamp_offset is None else f"timestamp-offset={audio_timestamp_offset & 0xFFFFFFFF} "

    def delay(seconds: float) -> str:
        if seconds <= 0:
            return ""
        ns = round(seconds * 1e9)
        # Hold `seconds` of media: released only once that much is queued.
        return (
            f"! queue min-threshold-time={ns} max-size-time={ns * 4} "
            f"max-size-buffers=0 max-size-bytes=0 "
        )

    def out(session: int, port: int, rtcp_port: int | None) -> str:
        if rtcp_port is None:
            return (
                f"rb.send_rtp_src_{session} ! funnel name=f{session} "
                f"! udpsink host={host} port={port} sync=false async=false "
                f"rb.send_rtcp_src_{session} ! f{session}. "
            )
        return (
            f"rb.send_rtp_src_{session} ! udpsink host={host} port={port} sync=false async=false "
            f"rb.send_rtcp_src_{session} ! udpsink host={host} port={rtcp_port} sync=false async=false "
        )

    pipeline = (
        f"rtpbin name=rb rtp-profile=avpf rtpsession0::rtcp-min-interval=1000000000 rtpsession1::rtcp-min-interval=1000000000 rtcp-sync-send-time={'true' if rtcp_sync_send_time else 'false'} "
        f"sdes={sdes} "
        f"filesrc location={Path(source)} ! decodebin name=d "
        f"d. ! video/x-raw ! queue ! videoconvert ! clocksync "
        f"! vp8enc deadline=1 cpu-used=8 lag-in-frames=0 error-resilient=1 "
        f"keyframe-max-dist={keyframe_max_dist} target-bitrate={video_bitrate_bps} "
        f"{delay(video_delay_s)}"
        f"! rtpvp8pay pt={video_pt} ssrc={video_ssrc} picture-id-mode=15-bit {vts}"
        f"! rb.send_rtp_sink_0 "
        f"{out(0, video_port, video_rtcp_port)}"
        f"d. ! audio/x-raw ! queue ! audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=2 ! clocksync "
        f"! opusenc bitrate=48000 frame-size=20 "
        f"{delay(audio_delay_s)}"
        f"! rtpopuspay pt={audio_pt} ssrc={audio_ssrc} {ats}"
        f"! rb.send_rtp_sink_1 "
        f"{out(1, audio_port, audio_rtcp_port)}"
    )
    return [GST, "-q", *pipeline.split()]
