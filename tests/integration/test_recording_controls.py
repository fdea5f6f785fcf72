"""Controls while recording (issue #13) against real senders: pause, layout, consent.

Pause into one file:

GStreamer sends a pre-rendered source (a visible clock, flashes and beeps, and
a marker colour only in the stretch the test pauses over) the way a browser
would. The recording is decoded with PyAV and checked: its length is what was
recorded, the clock jumps once by the pause and never goes back, the marker is
nowhere in the file, audio and video end together and stay in sync across
the cut, and the video restarts on a keyframe.

Layout and consent: two GStreamer peers (a red camera with a 440 Hz tone, a
blue one with 1500 Hz) go pip → grid → one excluded → included → spotlight,
read back from the frames' colours and the mix's tones; a room of
microphones shows the slate, whose names lose the excluded peer.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import trio

from edge_recorder.demo.sources import rgb_to_yuv
from edge_recorder.media.composite import Compositor
from edge_recorder.media.layout import Scene
from edge_recorder.session.manager import SessionManager
from edge_recorder.session.state import SessionStatus
from edge_recorder.session.stream import StreamSpec
from tests.integration.peers import Producer, gst_opus, gst_video, stop_processes
from tests.integration.sync_media import (
    CLOCK_STRIP_ROWS,
    GST,
    find_beeps,
    find_flashes,
    gst_rtpbin_sender_argv,
    marker_fraction,
    pair_skews,
    read_clock,
    render_sync_source,
)

pytestmark = pytest.mark.integration

RECORD_S = 6.0
PAUSE_S = 5.0
SOURCE_S = 2 * RECORD_S + PAUSE_S + 2.0
# The sender's source time lags the test's clock by its start-up (GStreamer
# takes 0.5-1.2 s to play): the marker sits inside the paused stretch of
# source time whatever that lag, 0 to 1.5 s.
MARKER_S = (RECORD_S + 0.1, RECORD_S + PAUSE_S - 1.5)


def _decode(path: Path, width: int, height: int) -> dict[str, Any]:
    out: dict[str, Any] = {"clock": [], "marker_frames": [], "keyframes": [], "audio_end_s": 0.0, "video_end_s": 0.0}
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        fps = float(video.average_rate or 30)
        for packet in container.demux(video):
            if packet.pts is not None and packet.is_keyframe:
                out["keyframes"].append(float(packet.pts * packet.time_base))
        container.seek(0)
        for frame in container.decode(video, audio):
            t = float(frame.time or 0.0)
            if isinstance(frame, av.VideoFrame):
                yuv = frame.to_ndarray(format="yuv420p")
                out["clock"].append((t, read_clock(yuv, width, height, CLOCK_STRIP_ROWS)))
                if marker_fraction(yuv, width, height) > 0.05:
                    out["marker_frames"].append(round(t, 2))
                out["video_end_s"] = max(out["video_end_s"], t + 1 / fps)
            else:
                out["audio_end_s"] = max(out["audio_end_s"], t + frame.samples / frame.sample_rate)
    return out


@pytest.mark.skipif(GST is None, reason="GStreamer is installed by scripts/dev")
async def test_pause_and_resume_cut_one_file_without_keeping_the_paused_media(
    manager: SessionManager, settings: Any, tmp_path: Path
) -> None:
    source = render_sync_source(tmp_path / "clock.mkv", SOURCE_S, phase_s=1.37, clock_strip=True, marker_s=MARKER_S)
    video = Producer("pause-cam", "pat", "video", "camera", "video/VP8", 96, 0x9A05E01)
    audio = Producer("pause-mic", "pat", "audio", "microphone", "audio/opus", 111, 0x9A05E02)
    session = await manager.start("room-pause", layout="pip")
    ports = {}
    for producer in (video, audio):
        ports[producer.kind] = await session.add_stream(StreamSpec.from_params(producer.add_stream_params(session.session_id)))
    argv = gst_rtpbin_sender_argv(
        source.path,
        "127.0.0.1",
        video_port=ports["video"]["port"],
        audio_port=ports["audio"]["port"],
        video_ssrc=video.ssrc,
        audio_ssrc=audio.ssrc,
        cname="pat@test",
    )
    proc = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await trio.sleep(RECORD_S)
        paused = await session.pause(connection="c-test", remote="192.0.2.7:4000")
        assert paused["changed"] and paused["paused"]
        again = await session.pause(connection="c-test")
        assert not again["changed"]
        assert session.state_record().to_wire()["paused"] is True
        await trio.sleep(PAUSE_S)
        resumed = await session.resume(connection="c-test")
        assert resumed["changed"] and not resumed["paused"]
        await trio.sleep(RECORD_S)
        await session.stop("host")
    finally:
        await stop_processes([proc])
    assert session.status is SessionStatus.COMPLETED, session.error
    record = session.state_record().to_wire()
    (interval,) = record["pauses"]
    assert interval["mediaEndS"] - interval["mediaStartS"] == pytest.approx(PAUSE_S, abs=0.2)
    assert [e["action"] for e in record["events"]] == ["pause", "resume"]
    assert record["events"][0]["remote"] == "192.0.2.7:4000"

    w, h = settings.output.width_px, settings.output.height_px
    info = _decode(session.path, w, h)
    # One file of the recorded time: 6 s + 6 s, the pause cut out.
    assert info["video_end_s"] == pytest.approx(2 * RECORD_S, abs=0.5), info["video_end_s"]
    assert abs(info["audio_end_s"] - info["video_end_s"]) <= 0.05, (info["audio_end_s"], info["video_end_s"])
    # Nothing sent while paused is in the file (the spool is the file).
    assert info["marker_frames"] == [], (info["marker_frames"], info["clock"][:: source.fps])
    # The clock never goes back and jumps once, by the pause.
    shown = [(t, n) for t, n in info["clock"] if n > 0]
    assert shown, "the clock was never seen"
    steps = [(b[1] - a[1], a[0]) for a, b in zip(shown, shown[1:])]
    assert all(step >= 0 for step, _ in steps), [s for s in steps if s[0] < 0][:5]
    jumps = [(step, t) for step, t in steps if step > source.fps // 2]
    assert len(jumps) == 1, jumps
    jump_s = jumps[0][0] / source.fps
    # By the pause, plus at most the wait for the first keyframe after it:
    # GStreamer's vp8enc ignores PLI and sends one every second (mediasoup
    # asks the browser at once), and until then the last picture holds.
    assert PAUSE_S - 0.3 <= jump_s <= PAUSE_S + 1.0 + 0.4, jump_s
    # The resume point starts on a keyframe.
    cut_t = jumps[0][1]
    assert any(abs(k - cut_t) <= 0.1 for k in info["keyframes"]), (cut_t, info["keyframes"])
    # Lip sync across the cut: every flash/beep pair within the sync target.
    skews = pair_skews(find_flashes(session.path, (0, CLOCK_STRIP_ROWS * 2, w, h // 2)), find_beeps(session.path), max_distance_s=0.5)
    assert len(skews) >= 6, skews
    assert max(abs(s) for s in skews) <= 0.060, skews


# ---------------------------------------------------------------- layout and consent

RED = (200, 40, 40)
BLUE = (40, 60, 200)
LOW_HZ, HIGH_HZ = 440.0, 1500.0


def _colour_shares(yuv: np.ndarray, width: int, height: int) -> tuple[float, float, float, float]:
    """The shares of chroma samples that are RED and BLUE (±14): in the picture, then in its left half."""
    quarter = (height // 2) * (width // 2)
    flat = yuv[height:].reshape(-1)
    u = flat[:quarter].astype(np.int16).reshape(height // 2, width // 2)
    v = flat[quarter : 2 * quarter].astype(np.int16).reshape(height // 2, width // 2)
    whole, left = [], []
    for rgb in (RED, BLUE):
        _, want_u, want_v = rgb_to_yuv(rgb)
        hit = (np.abs(u - want_u) <= 14) & (np.abs(v - want_v) <= 14)
        whole.append(float(hit.mean()))
        left.append(float(hit[:, : width // 4].mean()))
    return whole[0], whole[1], left[0], left[1]


def _tone_level(pcm: np.ndarray, rate: int, hz: float) -> float:
    """The amplitude of one frequency in a mono stretch: the median over its 100 ms blocks.

    Per block (a single-bin DFT), not over the whole stretch: the mixer's
    drift correction may skip or repeat a few samples, and one such phase
    jump would cancel half of a long coherent sum.
    """
    block = rate // 10
    n = np.arange(block)
    probe = np.exp(-2j * np.pi * hz * n / rate)
    levels = [
        float(np.abs(np.dot(pcm[i : i + block], probe)) * 2 / block) for i in range(0, len(pcm) - block + 1, block)
    ]
    return float(np.median(levels)) if levels else 0.0


def _frames_and_audio(
    path: Path, width: int, height: int
) -> tuple[list[tuple[float, float, float, float, float]], np.ndarray, int]:
    """Per video frame (time, red, blue, red on the left, blue on the left); the mono mix; its rate."""
    frames: list[tuple[float, float, float, float, float]] = []
    blocks: list[np.ndarray] = []
    rate = 48000
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0], container.streams.audio[0]):
            if isinstance(frame, av.VideoFrame):
                frames.append((float(frame.time or 0.0), *_colour_shares(frame.to_ndarray(format="yuv420p"), width, height)))
            else:
                rate = frame.sample_rate
                blocks.append(frame.to_ndarray().astype(np.float64).mean(axis=0))
    return frames, np.concatenate(blocks), rate


@pytest.mark.skipif(GST is None, reason="GStreamer is installed by scripts/dev")
async def test_layout_changes_and_an_excluded_peer_show_in_the_frames_and_the_mix(
    manager: SessionManager, settings: Any
) -> None:
    red_cam = Producer("red-cam", "rosa", "video", "camera", "video/VP8", 96, 0x7ED0001)
    red_mic = Producer("red-mic", "rosa", "audio", "microphone", "audio/opus", 111, 0x7ED0002)
    blue_cam = Producer("blue-cam", "bleu", "video", "camera", "video/VP8", 96, 0xB1E0001)
    blue_mic = Producer("blue-mic", "bleu", "audio", "microphone", "audio/opus", 111, 0xB1E0002)
    session = await manager.start("room-consent", layout="pip")
    argvs = []
    w, h = settings.output.width_px, settings.output.height_px
    for producer, rgb, hz in ((red_cam, RED, 0.0), (red_mic, None, LOW_HZ), (blue_cam, BLUE, 0.0), (blue_mic, None, HIGH_HZ)):
        ports = await session.add_stream(StreamSpec.from_params(producer.add_stream_params(session.session_id)))
        if rgb is not None:
            argvs.append(gst_video(producer, "127.0.0.1", ports["port"], ports["rtcpPort"], rgb=rgb, width=320, height=180, fps=15))
        else:
            argvs.append(gst_opus(producer, "127.0.0.1", ports["port"], frequency_hz=hz, volume=0.3))
    procs = [
        await trio.lowlevel.open_process(a, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for a in argvs
    ]
    marks: dict[str, float] = {}
    try:
        await trio.sleep(2.5)
        marks["grid"] = (await session.update_layout(layout="grid", connection="c-test"))["events"][-1]["mediaS"]
        await trio.sleep(2.0)
        marks["exclude"] = (await session.set_peer_excluded("rosa", True, connection="c-test"))["events"][-1]["mediaS"]
        await trio.sleep(2.5)
        marks["include"] = (await session.set_peer_excluded("rosa", False, connection="c-test"))["events"][-1]["mediaS"]
        await trio.sleep(2.5)
        # The pin: bleu's camera first in the grid (rosa's was, in stream order).
        marks["spotlight"] = (await session.update_layout(spotlight="bleu", set_spotlight=True, connection="c-test"))[
            "events"
        ][-1]["mediaS"]
        await trio.sleep(1.5)
        await session.stop("host")
    finally:
        for proc in procs:
            await stop_processes([proc])
    assert session.status is SessionStatus.COMPLETED, session.error
    record = session.state_record().to_wire()
    assert [e["action"] for e in record["events"]] == ["updateLayout", "excludePeer", "includePeer", "updateLayout"]
    assert record["layoutState"]["layout"] == "grid" and record["layoutState"]["spotlight"] == "bleu"
    assert record["excludedPeers"] == []

    frames, audio, rate = _frames_and_audio(session.path, w, h)

    def between(a: float, b: float) -> list[tuple[float, float, float, float, float]]:
        return [f for f in frames if a <= f[0] < b]

    # pip, no screen share: one camera fills the canvas, the other is not shown.
    before = between(1.5, marks["grid"] - 0.5)
    assert before and all(max(r, b) > 0.5 and min(r, b) < 0.15 for _, r, b, _, _ in before), before[:3]
    # grid: both side by side, each about a half (letterboxed), rosa's first (on the left).
    grid = between(marks["grid"] + 0.1, marks["exclude"] - 0.5)
    assert grid and all(0.2 < r < 0.6 and 0.2 < b < 0.6 for _, r, b, _, _ in grid), grid[:3]
    assert all(lr > 0.35 and lb < 0.05 for _, _, _, lr, lb in grid), grid[:3]
    # Excluded: no red anywhere, from the instant of exclusion until the inclusion.
    excluded = between(marks["exclude"] + 0.05, marks["include"])
    assert excluded and all(r < 0.002 for _, r, _, _, _ in excluded), [f for f in excluded if f[1] >= 0.002][:3]
    assert all(b > 0.5 for _, _, b, _, _ in excluded[len(excluded) // 2 :])
    # Included again: red is back within a keyframe interval and a request.
    back = between(marks["include"] + 1.5, marks["spotlight"])
    assert back and all(r > 0.2 for _, r, _, _, _ in back), back[:3]
    # Spotlight on bleu, from the next frame: blue on the left, red still in the grid.
    pinned = between(marks["spotlight"] + 0.1, frames[-1][0])
    assert pinned and all(lb > 0.35 and lr < 0.05 and r > 0.2 for _, r, _, lr, lb in pinned), pinned[:3]

    def tone(hz: float, a: float, b: float) -> float:
        return _tone_level(audio[int(a * rate) : int(b * rate)], rate, hz)

    # The mix: rosa's 440 Hz is gone while excluded (bleu's 1500 Hz stays), and back after.
    present = tone(LOW_HZ, 1.5, marks["exclude"] - 0.5)
    gone = tone(LOW_HZ, marks["exclude"] + 0.1, marks["include"])
    assert present > 0.02, present
    # At least 20 dB down: what is left is the codec's noise, not rosa's tone.
    assert gone < 0.1 * present, (gone, present)
    assert tone(HIGH_HZ, marks["exclude"] + 0.1, marks["include"]) > 0.02
    assert tone(LOW_HZ, marks["include"] + 1.0, frames[-1][0] - 0.3) > 0.02


@pytest.mark.skipif(GST is None, reason="GStreamer is installed by scripts/dev")
async def test_an_excluded_peer_leaves_the_slate(manager: SessionManager, settings: Any) -> None:
    # Microphones only: no picture, so the composite is the slate naming the room.
    mics = [
        Producer("rosa-mic", "rosa", "audio", "microphone", "audio/opus", 111, 0x5A70001, display_name="Rosa Rubra"),
        Producer("bleu-mic", "bleu", "audio", "microphone", "audio/opus", 111, 0x5A70002, display_name="Bleu Azur"),
    ]
    session = await manager.start("room-slate", layout="pip")
    argvs = []
    for producer, hz in zip(mics, (LOW_HZ, HIGH_HZ)):
        ports = await session.add_stream(StreamSpec.from_params(producer.add_stream_params(session.session_id)))
        argvs.append(gst_opus(producer, "127.0.0.1", ports["port"], frequency_hz=hz, volume=0.3))
    procs = [
        await trio.lowlevel.open_process(a, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for a in argvs
    ]
    try:
        await trio.sleep(2.0)
        excluded_at = (await session.set_peer_excluded("rosa", True, connection="c-test"))["events"][-1]["mediaS"]
        await trio.sleep(1.5)
        await session.stop("host")
    finally:
        await stop_processes(procs)
    assert session.status is SessionStatus.COMPLETED, session.error

    # The slates the compositor draws for each cast, as the references.
    w, h = settings.output.width_px, settings.output.height_px
    compositor = Compositor(w, h)
    both = compositor.render(Scene((), ("Rosa Rubra", "Bleu Azur")), {}).to_ndarray(format="yuv420p")[:h]
    alone = compositor.render(Scene((), ("Bleu Azur",)), {}).to_ndarray(format="yuv420p")[:h]
    assert np.abs(both.astype(np.int16) - alone).mean() > 1.0, "the two slates must differ to tell them apart"
    nearest: list[tuple[float, str]] = []
    with av.open(str(session.path)) as container:
        for frame in container.decode(video=0):
            luma = frame.to_ndarray(format="yuv420p")[:h].astype(np.int16)
            to_both, to_alone = np.abs(luma - both).mean(), np.abs(luma - alone).mean()
            nearest.append((float(frame.time or 0.0), "both" if to_both < to_alone else "alone"))
    # The worker drops what it holds of an excluded peer at once, so in the
    # file the name leaves up to the playout delay before the event's media
    # time (never after it): the documented bound.
    delay_s = settings.ingest.playout_delay_ms / 1000
    first_alone = min(t for t, cast in nearest if cast == "alone")
    assert excluded_at - delay_s - 0.1 <= first_alone <= excluded_at + 0.1, (first_alone, excluded_at)
    assert {cast for t, cast in nearest if 0.5 <= t < first_alone} == {"both"}, nearest[:10]
    assert {cast for t, cast in nearest if t >= first_alone} == {"alone"}, [n for n in nearest if n[0] >= first_alone]
