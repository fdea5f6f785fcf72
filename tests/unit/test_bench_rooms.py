"""The room-size benchmark's pure parts: rooms, round order, the replay schedule, the report."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import pytest

from edge_recorder.bench.inputs import OPUS_PACKET_SAMPLES, EncodedFrame, InputStream, Inputs
from edge_recorder.bench.replay import SenderReportTemplate, build_room_schedule, build_schedule, rotate_frames
from edge_recorder.bench.report import BEGIN_MARKER, END_MARKER, PointResult, SessionResult
from edge_recorder.bench.rooms import (
    ROOM_INPUTS,
    ROOMS_BEGIN,
    ROOMS_END,
    Room,
    RoomRound,
    RoomsReport,
    format_rooms_table,
    make_room,
    render_rooms_markdown,
    replace_rooms_section,
    room_by_name,
    round_order,
)
from edge_recorder.bench.upload import UPLOAD_BEGIN, UPLOAD_END
from edge_recorder.demo.sfu import AUDIO_LEVEL_ID
from edge_recorder.rtp.packet import RtpPacket, audio_level, is_rtcp_untrusted, parse_rtp_untrusted
from edge_recorder.rtp.rtcp import NTP_UNIX_EPOCH_OFFSET_S, SenderReport, ntp_to_seconds, parse_rtcp_untrusted

# ----------------------------------------------------------------------------- rooms


def test_two_person_room_is_screen_two_cameras_two_talkers() -> None:
    room = make_room(2)
    assert room.name == "2-person"
    assert [s.key for s in room.streams] == ["alice-screen", "alice-cam", "alice-mic", "bob-cam", "bob-mic"]
    assert [s.encoded for s in room.streams] == ["screen", "camera", "mic-a", "camera", "mic-b"]
    assert room.active_speaker == "alice" and room.layout == "pip"


def test_twenty_person_room_adds_eighteen_quiet_people() -> None:
    room = make_room(20)
    assert len(room.streams) == 41
    assert room.count("video") == 21 and room.count("audio") == 20
    assert sum(1 for s in room.streams if s.encoded == "camera") == 20
    assert sum(1 for s in room.streams if s.encoded == "quiet") == 18
    assert len({s.key for s in room.streams}) == 41
    assert len({s.definition.ssrc for s in room.streams}) == 41
    assert len({s.definition.peer_id for s in room.streams}) == 20
    # Each person's camera and microphone share a peer id and a display name.
    by_peer: dict[str, set[str]] = defaultdict(set)
    for s in room.streams:
        by_peer[s.definition.peer_id].add(s.definition.display_name)
    assert all(len(names) == 1 for names in by_peer.values())


def test_alice_and_bob_are_the_same_in_both_rooms() -> None:
    small, large = make_room(2), make_room(20)
    assert large.streams[: len(small.streams)] == small.streams


def test_reused_copies_are_spread_over_the_gop_and_the_frame_interval() -> None:
    cameras = [s for s in make_room(20).streams if s.encoded == "camera"]
    assert len({round(s.rotate_s, 3) for s in cameras}) == 20
    assert all(0 <= s.rotate_s < 3.0 for s in cameras)
    assert all(0 <= s.phase_s < 1 / 30 for s in cameras)
    quiet = [s for s in make_room(20).streams if s.encoded == "quiet"]
    assert all(0 <= s.phase_s < 0.02 for s in quiet)


def test_rooms_are_found_by_name() -> None:
    assert room_by_name("20-person") == make_room(20)
    for bad in ("twenty", "20-people", "-person", "1-person"):
        with pytest.raises(ValueError):
            room_by_name(bad)


def test_rounds_alternate_so_pairs_share_conditions() -> None:
    assert round_order(1) == ["2-person", "20-person"]
    assert round_order(3) == ["2-person", "20-person", "20-person", "2-person", "2-person", "20-person"]
    with pytest.raises(ValueError):
        round_order(0)


# ----------------------------------------------------------------------------- schedule


def _video(key: str, seconds: float, fps: int = 30, gop: int = 90) -> InputStream:
    d = next(s for s in ROOM_INPUTS if s.key == key)
    ticks = 90_000 // fps
    frames = tuple(EncodedFrame(bytes([i % 251]) * (2500 if i % gop == 0 else 700), i % gop == 0, i * ticks) for i in range(round(seconds * fps)))
    return InputStream(d, Path(f"/nonexistent/{d.file_name}"), frames)


def _audio(key: str, seconds: float, level: int) -> InputStream:
    d = next(s for s in ROOM_INPUTS if s.key == key)
    count = round(seconds * 50)
    frames = tuple(EncodedFrame(bytes([k % 251]) * 80, True, k * OPUS_PACKET_SAMPLES, level + (k % 3)) for k in range(count))
    return InputStream(d, Path(f"/nonexistent/{d.file_name}"), frames)


def _inputs(seconds: float) -> Inputs:
    streams = (
        _video("screen", seconds, fps=15, gop=45),
        _video("camera", seconds),
        _audio("mic-a", seconds, 0x80 | 15),
        _audio("mic-b", seconds, 0x80 | 12),
        _audio("quiet", seconds, 59),
    )
    return Inputs(root=Path("/nonexistent"), seconds=seconds, streams=streams, cached=True)


def test_rotation_rebases_timestamps_and_wraps_onto_the_first_frame() -> None:
    stream = _video("camera", 4.0)
    frames = rotate_frames(stream, 1.0)
    assert len(frames) == len(stream.frames)
    assert [f.timestamp for f in frames] == [i * 3000 for i in range(len(frames))]
    assert frames[0].data == stream.frames[30].data
    wrap = len(stream.frames) - 30
    assert frames[wrap].keyframe and frames[wrap].data == stream.frames[0].data
    assert rotate_frames(stream, 0.0) == list(stream.frames)
    # Whole turns wrap around to the start.
    assert rotate_frames(stream, 4.0)[0] == stream.frames[0]


def test_rotation_keeps_audio_levels_with_their_packets() -> None:
    stream = _audio("quiet", 2.0, 59)
    frames = rotate_frames(stream, 0.5)
    assert [f.audio_level for f in frames] == [f.audio_level for f in stream.frames[25:] + stream.frames[:25]]


def test_room_schedule_has_every_stream_in_order_with_its_own_origin() -> None:
    seconds = 3.0
    room = make_room(20)
    schedule = build_room_schedule(room, _inputs(seconds), 1, seconds)
    assert [p.at_s for p in schedule] == sorted(p.at_s for p in schedule)
    rtp: dict[str, list[tuple[float, RtpPacket]]] = defaultdict(list)
    for p in schedule:
        if p.report is None:
            assert not is_rtcp_untrusted(p.datagram)
            rtp[p.stream].append((p.at_s, parse_rtp_untrusted(p.datagram)))
    assert set(rtp) == {s.key for s in room.streams}
    for s in room.streams:
        packets = [pkt for _, pkt in rtp[s.key]]
        assert {pkt.ssrc for pkt in packets} == {s.definition.ssrc}
        seqs = [pkt.sequence_number for pkt in packets]
        assert all((b - a) % 65536 == 1 for a, b in zip(seqs, seqs[1:]))
        first_at = rtp[s.key][0][0]
        assert first_at == pytest.approx(s.phase_s)
        assert all(at < seconds + s.phase_s for at, _ in rtp[s.key])
    # Copies of one bitstream differ on the wire: sequence and timestamp origins.
    cameras = [s.key for s in room.streams if s.encoded == "camera"]
    assert len({rtp[k][0][1].sequence_number for k in cameras}) == len(cameras)
    assert len({rtp[k][0][1].timestamp for k in cameras}) == len(cameras)


def test_room_audio_carries_the_rfc6464_level_of_its_frame() -> None:
    room = make_room(20)
    schedule = build_room_schedule(room, _inputs(2.0), 1, 2.0)
    kinds = {s.key: s.definition.kind for s in room.streams}
    for p in schedule:
        if p.report is not None:
            continue
        packet = parse_rtp_untrusted(p.datagram)
        level = audio_level(packet, AUDIO_LEVEL_ID)
        if kinds[p.stream] == "video":
            assert level is None
        elif p.stream == "alice-mic":
            assert level is not None and level[0] and 15 <= level[1] <= 17
        elif p.stream.startswith("p"):
            assert level is not None and not level[0] and 59 <= level[1] <= 61


def test_room_streams_send_a_sender_report_every_second() -> None:
    seconds = 3.0
    room = make_room(2)
    schedule = build_room_schedule(room, _inputs(seconds), 1, seconds)
    for s in room.streams:
        mine = [p for p in schedule if p.stream == s.key]
        reports = [(i, p) for i, p in enumerate(mine) if p.report is not None]
        assert len(reports) == 3  # after the first frame, then at 1 s and 2 s
        for i, p in reports:
            assert p.report is not None and p.datagram == b""
            sent = [q for q in mine[:i] if q.report is None]
            assert p.report.packet_count == len(sent)
            assert p.report.ssrc == s.definition.ssrc
            assert p.report.octet_count == sum(len(parse_rtp_untrusted(q.datagram).payload) for q in sent)


def test_sender_report_pairs_wall_clock_with_the_rtp_time_of_that_instant() -> None:
    template = SenderReportTemplate(ssrc=7, ts_base=1000, phase_s=0.01, clock_rate=90_000, packet_count=5, octet_count=500)
    (report,) = parse_rtcp_untrusted(template.datagram(2.01, 1_700_000_000.25))
    assert isinstance(report, SenderReport)
    assert report.ssrc == 7 and report.packet_count == 5 and report.octet_count == 500
    assert report.rtp_timestamp == 1000 + 2 * 90_000
    assert ntp_to_seconds(report.ntp_timestamp) - NTP_UNIX_EPOCH_OFFSET_S == pytest.approx(1_700_000_000.25, abs=1e-6)
    wrapped = SenderReportTemplate(7, 0xFFFF_FFFF, 0.0, 48_000, 0, 0)
    (report,) = parse_rtcp_untrusted(wrapped.datagram(1.0, 0.0))
    assert isinstance(report, SenderReport) and report.rtp_timestamp == 48_000 - 1


def test_the_sweep_schedule_stays_plain_rtp() -> None:
    inputs = _inputs(2.0)
    schedule = build_schedule(inputs.streams[:4], 2, 2.0)
    assert all(p.report is None for p in schedule)
    assert all(not parse_rtp_untrusted(p.datagram).extensions for p in schedule)
    assert {(p.session, p.stream) for p in schedule} == {(s, k) for s in (0, 1) for k in ("screen", "camera", "mic-a", "mic-b")}


# ----------------------------------------------------------------------------- report


def _session(*, window_cpu: float, cpu: float | None = None, dropped: int = 0, speaker: str = "bob", packets: int = 9000) -> SessionResult:
    return SessionResult(
        status="COMPLETED",
        worker_cpu_s=cpu if cpu is not None else window_cpu + 1.0,
        window_cpu_s=window_cpu,
        media_s=30.0,
        frames_encoded=900 - dropped,
        frames_dropped=dropped,
        ingest_drops=0,
        keyframe_requests=0,
        max_lag_s=0.05,
        peak_rss_bytes=150 << 20,
        first_frame_s=0.4,
        streams=5,
        packets_received=packets,
        video_frames_decoded=1350,
        videos_decoding=2,
        speaker_switches=1,
        active_speaker=speaker,
    )


def _round(room: Room, *, worker: float, parent: float, window_s: float = 30.0, dropped: int = 0) -> RoomRound:
    packets = round(300 * 30 if room.people == 2 else 2800 * 30)
    point = PointResult(
        n=1,
        sessions=(_session(window_cpu=worker * window_s, dropped=dropped, packets=packets),),
        parent_cpu_s=parent * window_s + 0.5,
        parent_window_cpu_s=parent * window_s,
        window_s=window_s,
        parent_peak_rss_bytes=90 << 20,
        sender_cpu_s=1.5,
        sender_late_max_s=0.001,
        logical_cores=2,
        system_busy_fraction=0.6,
    )
    return RoomRound(room.name, point)


SMALL, LARGE = make_room(2), make_room(20)
MACHINE = {"cpu_model": "Test CPU", "logical_cores": 2, "memory_gib": 4.0, "load_average": (0.2, 0.1, 0.1), "python": "3.11.7", "pyav": "18.1.0", "libav": "libavcodec 62"}
INPUTS = [
    {"key": "screen", "codec": "vp8", "width": 1280, "height": 720, "fps": 15, "kbps": 1400.0},
    {"key": "camera", "codec": "vp8", "width": 640, "height": 360, "fps": 30, "kbps": 610.0},
    {"key": "quiet", "codec": "opus", "width": 0, "height": 0, "fps": 0, "kbps": 28.0},
]


def _report(*rounds: RoomRound) -> RoomsReport:
    return RoomsReport(date="2026-01-01 00:00 UTC", seconds=30.0, machine=MACHINE, inputs=INPUTS, small=SMALL, large=LARGE, rounds=rounds)


def test_ratio_is_steady_recorder_cpu_summed_over_rounds() -> None:
    report = _report(
        _round(SMALL, worker=0.40, parent=0.05),
        _round(LARGE, worker=0.45, parent=0.08),
        _round(LARGE, worker=0.47, parent=0.08),
        _round(SMALL, worker=0.42, parent=0.05),
    )
    small, large = report.figures(SMALL), report.figures(LARGE)
    assert math.isclose(small.steady, 0.46)
    assert math.isclose(small.worker_steady, 0.41) and math.isclose(small.parent_steady, 0.05)
    assert math.isclose(large.steady, 0.54)
    assert math.isclose(report.ratio, 0.54 / 0.46)
    assert report.met
    assert report.pair_ratios() == pytest.approx([0.53 / 0.45, 0.55 / 0.47])
    # Whole run: worker CPU before stop (window + 1 s) + parent (window + 0.5 s), per media second.
    assert math.isclose(small.whole_run, (0.40 * 30 + 1 + 0.05 * 30 + 0.5 + 0.42 * 30 + 1 + 0.05 * 30 + 0.5) / 60)
    assert small.realtime and large.realtime


def test_target_missed_and_not_real_time_show() -> None:
    report = _report(_round(SMALL, worker=0.40, parent=0.05), _round(LARGE, worker=0.60, parent=0.30, dropped=100))
    assert not report.met
    assert not report.figures(LARGE).realtime
    text = render_rooms_markdown(report)
    assert "**no**" in text and "**not met**" in text
    assert "| 20-person | 41 | NO |" in text


def test_markdown_names_both_rooms_the_method_and_the_flags() -> None:
    report = _report(_round(SMALL, worker=0.40, parent=0.05), _round(LARGE, worker=0.45, parent=0.08))
    text = render_rooms_markdown(report)
    assert text.startswith("### Latest room-size run: 2026-01-01 00:00 UTC")
    assert "Test CPU" in text and "Python 3.11.7, PyAV 18.1.0 (libavcodec 62)" in text
    assert "2 people, 5 streams: 1 screen share, 2 cameras, 2 microphones" in text
    assert "20 people, 41 streams: 1 screen share, 20 cameras, 20 microphones" in text
    assert "Rounds: A B (1 of each room, 30 s of media each" in text
    assert "Active speaker at stop (switches seen): A bob (1 switch); B bob (1 switch)." in text
    assert "one encoded bitstream" in text and "≤ 1.2×" in text
    assert "`just bench --rooms`" in text
    assert "1.18×" in text  # (0.45 + 0.08) / (0.40 + 0.05)
    # 0.03 CPU-s/s more in the parent for 2500 more datagrams a second: 12 µs each.
    assert "parent +0.030 CPU-s/s for +2500 datagrams/s (≈ 12 µs per extra datagram); worker +0.050 CPU-s/s" in text
    assert "20 vs 2 Opus streams" in text
    # The larger room's steady figure is what one 720p30 recording costs for admission.
    assert "RECORDING_SESSION_CPU_COST" in text and ": 0.53 measured here in the 20-person room" in text
    terminal = format_rooms_table(report)
    assert "20-person" in terminal and "**" not in terminal


def test_missing_figures_render_as_dashes() -> None:
    report = _report()
    assert math.isnan(report.ratio) and not report.met
    assert "–" in render_rooms_markdown(report)


def test_rooms_section_is_appended_then_replaced_leaving_other_sections() -> None:
    document = f"# Benchmarks\n\n{BEGIN_MARKER}\nsweep\n{END_MARKER}\n\n{UPLOAD_BEGIN}\nupload\n{UPLOAD_END}\n"
    once = replace_rooms_section(document, "first")
    assert once.startswith(document)
    assert once.endswith(f"\n\n{ROOMS_BEGIN}\nfirst\n{ROOMS_END}\n")
    twice = replace_rooms_section(once, "second\n")
    assert twice == once.replace("first", "second")
    assert f"{BEGIN_MARKER}\nsweep\n{END_MARKER}" in twice and f"{UPLOAD_BEGIN}\nupload\n{UPLOAD_END}" in twice
    assert replace_rooms_section("", "x") == f"{ROOMS_BEGIN}\nx\n{ROOMS_END}\n"
