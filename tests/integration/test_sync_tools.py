"""The A/V sync tools themselves: the flash-and-beep source has zero skew by
its own detectors, the detectors find a known skew (and find flashes inside a
picture-in-picture through H.264/AAC), and the GStreamer sender emits RTCP
Sender Reports for both streams under one CNAME whose NTP↔RTP pairs put audio
and video on one wallclock."""

from __future__ import annotations

import statistics
import subprocess
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import trio

from edge_recorder.rtp.packet import is_rtcp_untrusted, parse_rtp_untrusted
from edge_recorder.rtp.rtcp import (
    SDES_CNAME,
    Bye,
    SenderReport,
    SourceDescription,
    ntp_to_seconds,
    parse_rtcp_untrusted,
)
from edge_recorder.rtp.depacketize.vp8 import Vp8Depacketizer
from tests.integration.peers import stop_processes
from tests.integration.sync_media import (
    GST,
    beep_onsets,
    find_beeps,
    find_flashes,
    flash_onsets,
    gst_rtpbin_sender_argv,
    pair_skews,
    render_sync_source,
)

pytestmark = pytest.mark.integration


def test_rendered_source_has_zero_skew(tmp_path: Path) -> None:
    source = render_sync_source(tmp_path / "sync.mkv", 6.0)
    assert len(source.instants) == 6
    # Not periodic and never on a whole second.
    gaps = {round(b - a, 3) for a, b in zip(source.instants, source.instants[1:])}
    assert len(gaps) > 1
    assert all(abs(t - round(t)) > 0.05 for t in source.instants)
    flashes = find_flashes(source.path)
    beeps = find_beeps(source.path)
    # Matroska keeps 1 ms timestamps; the beeps are placed by sample count.
    assert flashes == pytest.approx(source.instants, abs=0.0006)
    assert beeps == pytest.approx(source.instants, abs=1.5 / source.sample_rate)
    skews = pair_skews(flashes, beeps)
    assert len(skews) == 6
    assert max(abs(s) for s in skews) < 0.001


def test_detectors_measure_a_known_skew_with_its_sign(tmp_path: Path) -> None:
    early = render_sync_source(tmp_path / "early.mkv", 4.0, audio_offset_s=-0.120)
    late = render_sync_source(tmp_path / "late.mkv", 4.0, audio_offset_s=0.0871)
    for source, want in ((early, -0.120), (late, 0.0871)):
        skews = pair_skews(find_flashes(source.path), find_beeps(source.path))
        assert len(skews) == len(source.instants)
        assert skews == pytest.approx([want] * len(skews), abs=0.001)
    # Beeps too far from any flash are left out on request.
    assert pair_skews([1.0, 2.0], [1.05, 1.5, 2.9], max_distance_s=0.1) == pytest.approx([0.05])
    assert pair_skews([], [1.0]) == []


def _transcode_picture_in_picture(src: Path, dst: Path, *, corner: tuple[int, int], scale: int) -> None:
    """Re-encode a source the way the recorder's output looks: H.264 + AAC in
    MP4, the source small in a corner of a mid-grey 640x360 canvas."""
    width, height = 640, 360
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        video = out.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast"}
        audio = out.add_stream("aac", rate=48000)
        audio.layout = "stereo"
        for frame in inp.decode(inp.streams.video[0], inp.streams.audio[0]):
            if isinstance(frame, av.VideoFrame):
                canvas = np.full((height * 3 // 2, width), 128, np.uint8)
                canvas[:height] = 90
                small = frame.to_ndarray(format="gray")[::scale, ::scale]
                x0, y0 = corner
                canvas[y0 : y0 + small.shape[0], x0 : x0 + small.shape[1]] = small
                picture = av.VideoFrame.from_ndarray(canvas, format="yuv420p")
                picture.pts = round(float(frame.time or 0) * 30)
                picture.time_base = Fraction(1, 30)
                out.mux(video.encode(picture))
            elif isinstance(frame, av.AudioFrame):
                frame.pts = round(float(frame.time or 0) * 48000)
                frame.time_base = Fraction(1, 48000)
                out.mux(audio.encode(frame))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))


def test_flashes_in_a_picture_in_picture_and_beeps_through_aac(tmp_path: Path) -> None:
    source = render_sync_source(tmp_path / "sync.mkv", 4.0)
    output = tmp_path / "pip.mp4"
    _transcode_picture_in_picture(source.path, output, corner=(464, 256), scale=4)
    # A flash in 1/16 of the picture is not a flash of the whole picture...
    assert find_flashes(output) == []
    # ...but is one of its tile.
    flashes = find_flashes(output, region=(464, 256, 160, 90))
    assert flashes == pytest.approx(source.instants, abs=0.001)
    beeps = find_beeps(output)
    assert beeps == pytest.approx(source.instants, abs=0.0005)
    assert max(abs(s) for s in pair_skews(flashes, beeps)) < 0.001


# ------------------------------------------------------------ the GStreamer sender


@dataclass
class Capture:
    rtp: list[tuple[float, Any]] = field(default_factory=list)  # (arrival, RtpPacket)
    reports: list[tuple[float, SenderReport]] = field(default_factory=list)
    cnames: dict[int, bytes] = field(default_factory=dict)
    byes: set[int] = field(default_factory=set)
    sources: set[Any] = field(default_factory=set)


async def _capture(sock: Any, into: Capture) -> None:
    while True:
        data, source = await sock.recvfrom(65535)
        now = time.monotonic()
        into.sources.add(source)
        if not is_rtcp_untrusted(data):
            into.rtp.append((now, parse_rtp_untrusted(data)))
            continue
        for packet in parse_rtcp_untrusted(data):
            if isinstance(packet, SenderReport):
                into.reports.append((now, packet))
            elif isinstance(packet, SourceDescription):
                for ssrc, items in packet.chunks:
                    into.cnames.update({ssrc: value for kind, value in items if kind == SDES_CNAME})
            elif isinstance(packet, Bye):
                into.byes.update(packet.ssrcs)


def _origins(reports: list[tuple[float, SenderReport]], offset: int, rate: int) -> list[float]:
    """Per SR, the NTP time (s) its pair gives to media time 0 (RTP = offset)."""
    return [ntp_to_seconds(sr.ntp_timestamp) - ((sr.rtp_timestamp - offset) & 0xFFFF_FFFF) / rate for _, sr in reports]


@pytest.mark.skipif(GST is None, reason="GStreamer is installed by scripts/dev")
async def test_gst_sender_sends_sender_reports_for_both_streams_under_one_cname(tmp_path: Path) -> None:
    source = render_sync_source(tmp_path / "sync.mkv", 3.0)
    v_off, a_off = 0xFFFF_0000, 1234  # video wraps after 0.73 s
    socks = {name: trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) for name in ("video", "audio", "audio_rtcp")}
    captures = {name: Capture() for name in socks}
    for sock in socks.values():
        await sock.bind(("127.0.0.1", 0))
    argv = gst_rtpbin_sender_argv(
        source.path,
        "127.0.0.1",
        video_port=socks["video"].getsockname()[1],  # RTCP muxed
        audio_port=socks["audio"].getsockname()[1],
        audio_rtcp_port=socks["audio_rtcp"].getsockname()[1],  # RTCP apart
        video_ssrc=0x1111,
        audio_ssrc=0x2222,
        cname="pat@sync",
        video_timestamp_offset=v_off,
        audio_timestamp_offset=a_off,
        video_delay_s=0.3,
    )
    video, audio, audio_rtcp = captures["video"], captures["audio"], captures["audio_rtcp"]
    started = time.monotonic()
    proc = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        async with trio.open_nursery() as nursery:
            for name, sock in socks.items():
                nursery.start_soon(_capture, sock, captures[name])
            # At the file's end both sessions send BYE. gst-launch does not
            # always exit after that (about 1 run in 5 on GStreamer 1.22 the
            # EOS never reaches the bus), so the BYEs, not the exit, end the run.
            with trio.fail_after(12):
                while (video.byes, audio_rtcp.byes) != ({0x1111}, {0x2222}) and proc.returncode is None:
                    await trio.sleep(0.05)
            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            exited = proc.returncode
            await stop_processes([proc])
            stderr = await proc.stderr.receive_some() if proc.stderr is not None else b""
            if proc.stderr is not None:
                await proc.stderr.aclose()
            for sock in socks.values():
                sock.close()
    assert exited in (None, 0), stderr
    assert {p.ssrc for _, p in video.rtp} == {0x1111} and {p.payload_type for _, p in video.rtp} == {96}
    assert {p.ssrc for _, p in audio.rtp} == {0x2222} and {p.payload_type for _, p in audio.rtp} == {111}
    assert audio.reports == [] and audio_rtcp.rtp == []
    # Muxed RTCP comes from the RTP source address (the funnel), as from mediasoup.
    assert len(video.sources) == 1
    v_reports = [r for r in video.reports if r[1].ssrc == 0x1111]
    a_reports = [r for r in audio_rtcp.reports if r[1].ssrc == 0x2222]
    assert len(v_reports) == len(video.reports) and len(a_reports) == len(audio_rtcp.reports)
    # About one a second, the first within a second of the start.
    for reports in (v_reports, a_reports):
        assert 3 <= len(reports) <= 8, len(reports)
        assert reports[0][0] - started < 1.5
    assert video.cnames == {0x1111: b"pat@sync"} and audio_rtcp.cnames == {0x2222: b"pat@sync"}
    assert video.byes == {0x1111} and audio_rtcp.byes == {0x2222}
    # The payloaders start at the given offsets (media time 0 is RTP = offset).
    assert video.rtp[0][1].timestamp == v_off and audio.rtp[0][1].timestamp == a_off
    # Every SR of either stream maps media time 0 to one wallclock instant:
    # the SRs are capture-time and put audio and video in sync...
    origins = _origins(v_reports, v_off, 90000) + _origins(a_reports, a_off, 48000)
    assert max(origins) - min(origins) < 0.002, origins
    # ...while arrival times do not: the video was held 0.3 s after capture.
    def lag(capture: Capture, offset: int, rate: int) -> float:
        return float(statistics.median(t - ((p.timestamp - offset) & 0xFFFF_FFFF) / rate for t, p in capture.rtp))

    extra = lag(video, v_off, 90000) - lag(audio, a_off, 48000)
    assert 0.2 < extra < 0.4, extra
    # And the RTP timestamps (what the SRs map) carry the content on time:
    # decoded and placed by timestamp, flashes and beeps fall on the instants.
    flashes, beeps = _decode_by_rtp_time(video, v_off, audio, a_off)
    assert flashes == pytest.approx(source.instants, abs=0.001)
    assert beeps == pytest.approx(source.instants, abs=0.001)


def _decode_by_rtp_time(video: Capture, v_off: int, audio: Capture, a_off: int) -> tuple[list[float], list[float]]:
    """Flash and beep onsets in media time (RTP timestamp − offset) of what was sent."""
    frames: dict[int, list[Any]] = {}
    for _, packet in sorted(video.rtp, key=lambda item: item[0]):
        frames.setdefault(packet.timestamp, []).append(packet)
    depacketizer = Vp8Depacketizer()
    decoder = av.CodecContext.create("vp8", "r")
    times, means = [], []
    for ts, packets in sorted(frames.items(), key=lambda item: (item[0] - v_off) & 0xFFFF_FFFF):
        bitstream = depacketizer.depacketize([p.payload for p in packets])
        for picture in decoder.decode(av.Packet(bitstream)):
            times.append(((ts - v_off) & 0xFFFF_FFFF) / 90000)
            means.append(float(picture.to_ndarray(format="gray").mean()))
    opus = av.CodecContext.create("opus", "r")
    opus.sample_rate = 48000
    opus.layout = "stereo"
    pcm = np.zeros(48000 * 5)
    for _, packet in sorted(audio.rtp, key=lambda item: item[0]):  # arrival order is send order here
        start = (packet.timestamp - a_off) & 0xFFFF_FFFF
        for block in opus.decode(av.Packet(packet.payload)):
            samples = block.to_ndarray()
            mono = samples[0] if block.format.is_planar else samples.reshape(-1, 2)[:, 0]
            pcm[start : start + len(mono)] = mono[: max(0, len(pcm) - start)]
    return flash_onsets(times, means), beep_onsets(pcm, 48000)
