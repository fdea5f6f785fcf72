"""``python -m edge_recorder.bench``: the recorder vs the ffmpeg CLI, then an N sweep.

Steps: pre-encode the inputs (cached), run the ffmpeg baseline, then for each N
in ``--sessions`` record N concurrent sessions of the replayed room, stopping at
the first N that is not real time. Prints a table and, for a full run, writes
it into docs/benchmarks.md between the ``bench`` markers. Then (unless
``--no-rooms``) the room-size benchmark (:mod:`edge_recorder.bench.rooms`): a
20-person room against a 2-person room in alternating rounds, written between
the ``rooms`` markers; then (unless ``--no-upload``) the upload benchmark
(:mod:`edge_recorder.bench.upload`): stop → COMPLETED for a 10-minute
recording, streaming vs whole file after stop, written between the ``upload``
markers. ``--rooms`` and ``--upload`` run only those (either or both).
``--against REV`` runs only whole recordings on this tree and on REV in
alternating rounds (:mod:`edge_recorder.bench.against`), written between the
``against`` markers. ``--hostile`` runs only the receive cost per datagram of the SFU's media and
of hostile traffic (:mod:`edge_recorder.bench.hostile`), against
``--hostile-baseline REV`` in alternating rounds when given; a full run
includes it (without a baseline), written between the ``hostile`` markers.
``--placement`` runs only the placement latency (:mod:`edge_recorder.bench.placement`):
``recording.start`` and ``recording.get`` answered through a forwarding node
vs on the node that records, two ``serve`` processes and one ``redis-server``;
a full run includes it unless ``--no-placement``, written between the
``placement`` markers. After the sweep (unless ``--no-meeting``; ``--meeting``
runs only it) the realistic meeting (:mod:`edge_recorder.bench.meeting`):
slides, cameras off part of the time, one talker at a time, the recorder
against the ffmpeg CLI on the same files, written between the ``meeting``
markers; the sweep's targets table includes its ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import shutil
import sys
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import trio

from edge_recorder.bench.ffmpeg import BaselineSettings, run_baseline
from edge_recorder.bench.inputs import Inputs, prepare_inputs
from edge_recorder.bench import against as against_bench
from edge_recorder.bench import hostile as hostile_bench
from edge_recorder.bench import meeting as meeting_bench
from edge_recorder.bench import placement as placement_bench
from edge_recorder.bench import profile as profile_bench
from edge_recorder.bench import render as render_bench
from edge_recorder.bench import still as still_bench
from edge_recorder.bench import upload as upload_bench
from edge_recorder.bench.measure import MachineInfo, machine_info
from edge_recorder.bench.report import (
    Baseline,
    PointResult,
    Report,
    format_table,
    format_targets,
    render_markdown,
    replace_marked_section,
)
from edge_recorder.bench.rooms import (
    LARGE_PEOPLE,
    ROOM_INPUTS,
    SMALL_PEOPLE,
    RoomRound,
    RoomsReport,
    format_rooms_table,
    make_room,
    render_rooms_markdown,
    replace_rooms_section,
    round_order,
)
from edge_recorder.bench.sweep import run_point
from edge_recorder.config import Settings, load_settings
from edge_recorder.media.encode import EncoderSettings

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"
QUICK_SECONDS = 8.0
QUICK_UPLOAD_SECONDS = 60.0
ROOM_SECONDS = 30.0
ROOM_ROUNDS = 3
QUICK_PLACEMENT_ROUNDS = 3
QUICK_MEETING_SECONDS = 60.0
PORT_MIN, PORT_MAX = 41000, 41999
# The settings of every run (the session sweep adds its RECORDING_TMP_DIR).
BENCH_ENV = {
    "RECORDING_PORT_MIN": str(PORT_MIN),
    "RECORDING_PORT_MAX": str(PORT_MAX),
    "RECORDING_OUTPUT_WIDTH": "1280",
    "RECORDING_OUTPUT_HEIGHT": "720",
    "RECORDING_OUTPUT_FPS": "30",
    "RECORDING_X264_PRESET": "veryfast",
    "RECORDING_KEYFRAME_INTERVAL_S": "2",
    "RECORDING_X264_THREADS": "1",
    "RECORDING_MAX_SESSIONS": "64",
    # The sweep finds how many sessions run in real time: admission must not stop it first.
    "RECORDING_CPU_BUDGET": "1024",
}


def _say(line: str) -> None:
    print(line, flush=True)


def _sessions(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("session counts must be positive")
    return values


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m edge_recorder.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=_sessions, default=(1, 2, 3, 4, 5, 6), help="N to sweep, e.g. 1,2,4 (default 1..6)")
    parser.add_argument("--seconds", type=float, default=20.0, help="media seconds replayed per session (default 20)")
    parser.add_argument("--quick", action="store_true", help=f"smoke test: N=1, {QUICK_SECONDS:g} s, docs left alone")
    parser.add_argument("--doc", type=Path, default=DOC_PATH, help="Markdown file to update (default docs/benchmarks.md)")
    parser.add_argument("--no-doc", action="store_true", help="do not write the Markdown file")
    parser.add_argument("--keep", action="store_true", help="keep the recordings and the ffmpeg output")
    parser.add_argument("--ffmpeg", default="ffmpeg", help="the ffmpeg CLI to compare with")
    upload = parser.add_mutually_exclusive_group()
    upload.add_argument("--upload", action="store_true", help="run only the upload-latency benchmark (10-minute recording, multipart and chunks streaming vs whole file)")
    upload.add_argument("--no-upload", action="store_true", help="skip the upload-latency benchmark after the session sweep")
    rooms = parser.add_mutually_exclusive_group()
    rooms.add_argument("--rooms", action="store_true", help=f"run only the room-size benchmark ({LARGE_PEOPLE}-person vs {SMALL_PEOPLE}-person room); with --upload, both")
    rooms.add_argument("--no-rooms", action="store_true", help="skip the room-size benchmark after the session sweep")
    parser.add_argument("--room-seconds", type=float, default=ROOM_SECONDS, help=f"media seconds per room-size round (default {ROOM_SECONDS:g})")
    parser.add_argument("--room-rounds", type=int, default=ROOM_ROUNDS, help=f"rounds of each room, alternating A B, B A, ... (default {ROOM_ROUNDS})")
    parser.add_argument("--hostile", action="store_true", help="run only the per-datagram receive cost of media and hostile traffic")
    parser.add_argument("--hostile-baseline", metavar="REV", help="with --hostile (or a full run): a git revision to compare with, alternating rounds")
    placement = parser.add_mutually_exclusive_group()
    placement.add_argument("--placement", action="store_true", help="run only the placement latency (start and get through a forwarding node vs local; 2 serve processes, 1 redis-server)")
    placement.add_argument("--no-placement", action="store_true", help="skip the placement-latency benchmark in a full run")
    parser.add_argument("--placement-rounds", type=int, default=placement_bench.ROUNDS, help=f"rounds of each scenario of the placement benchmark, alternating A B B A ... (default {placement_bench.ROUNDS})")
    parser.add_argument("--tracks", action="store_true", help="run only the cost of every stream's own track: the 20-person room without and with tracks, alternating rounds")
    parser.add_argument("--still", action="store_true", help="run only what an unchanged picture costs: slides at 2 fps without a camera, RECORDING_SKIP_UNCHANGED_FRAMES off and on, alternating")
    parser.add_argument("--profile", action="store_true", help="run only the CPU profile of one session by library (perf on the media worker and the receiving process)")
    parser.add_argument("--render", action="store_true", help="run only the re-render speed: a 10-minute recording's tracks rendered as pip and grid (edge-recorder render)")
    parser.add_argument("--render-seconds", type=float, default=render_bench.RENDER_SECONDS, help=f"with --render: the recording's length (default {render_bench.RENDER_SECONDS:g} s)")
    meeting = parser.add_mutually_exclusive_group()
    meeting.add_argument("--meeting", action="store_true", help="run only the realistic meeting: slides, cameras off part of the time, one talker at a time; the recorder vs the ffmpeg CLI on the same files")
    meeting.add_argument("--no-meeting", action="store_true", help="skip the realistic meeting after the session sweep")
    parser.add_argument("--meeting-seconds", type=float, default=meeting_bench.MEETING_SECONDS, help=f"media seconds of the meeting (default {meeting_bench.MEETING_SECONDS:g})")
    parser.add_argument("--against", metavar="REV", help="run only whole recordings on this tree and on REV (a git revision), alternating rounds")
    parser.add_argument("--against-rounds", type=int, default=3, help="with --against: rounds of each tree (default 3)")
    parser.add_argument(
        "--upload-mode",
        choices=("both", *upload_bench.UPLOAD_MODES),
        default="both",
        help="streaming designs the upload benchmark runs (RECORDING_S3_UPLOAD_MODE values; default both, plus the whole-file baseline)",
    )
    args = parser.parse_args(argv)
    args.upload_seconds = upload_bench.RECORDING_S
    if args.quick:
        args.sessions = (1,)
        args.seconds = QUICK_SECONDS
        args.no_doc = True
        # A smoke test: the upload benchmark only when asked for, on 1 minute.
        args.no_upload = not args.upload
        args.upload_seconds = QUICK_UPLOAD_SECONDS
        # The room-size benchmark likewise: one round of each, short.
        args.no_rooms = not args.rooms
        args.room_seconds = QUICK_SECONDS
        args.room_rounds = 1
        # The placement benchmark only when asked for, with a few rounds.
        args.no_placement = not args.placement
        args.placement_rounds = QUICK_PLACEMENT_ROUNDS
        # The meeting only when asked for, one minute of it.
        args.no_meeting = not args.meeting
        args.meeting_seconds = min(args.meeting_seconds, QUICK_MEETING_SECONDS)
    if args.seconds < 2:
        parser.error("--seconds must be at least 2")
    if args.room_seconds < 4:
        parser.error("--room-seconds must be at least 4")
    if args.room_rounds < 1:
        parser.error("--room-rounds must be at least 1")
    if args.placement_rounds < 1:
        parser.error("--placement-rounds must be at least 1")
    if args.meeting_seconds < 20:
        parser.error("--meeting-seconds must be at least 20")
    return args


def _input_rows(inputs: Inputs) -> list[dict[str, Any]]:
    """The inputs as the reports list them."""
    return [
        {
            "key": s.definition.key,
            "codec": s.definition.codec,
            "width": s.definition.width,
            "height": s.definition.height,
            "fps": s.definition.fps,
            "kbps": s.bitrate_kbps,
        }
        for s in inputs.streams
    ]


def _machine_line(machine: MachineInfo) -> str:
    return f"{machine.cpu_model}, {machine.logical_cores} logical cores, {machine.memory_gib} GiB RAM, load average before {machine.load_average[0]:.2f}"


def _run_upload(args: argparse.Namespace, machine: MachineInfo, settings: Settings) -> None:
    """The upload-latency benchmark; writes its section of the doc unless told not to."""
    _say(f"upload latency: stop → COMPLETED for {args.upload_seconds / 60:g} min of recording, streaming ({args.upload_mode}) vs whole file after stop")
    o = settings.output
    encoder = EncoderSettings(
        width=o.width_px,
        height=o.height_px,
        fps=o.fps,
        video_bitrate_kbps=o.video_bitrate_kbps,
        x264_preset=o.x264_preset,
        keyframe_interval_s=o.keyframe_interval_s,
        audio_bitrate_kbps=o.audio_bitrate_kbps,
        x264_threads=o.x264_threads,
    )
    report = upload_bench.run_upload_bench(
        _say,
        machine=_machine_line(machine),
        encoder=encoder,
        part_size_mib=settings.s3.part_size_mib,
        recording_s=args.upload_seconds,
        modes=upload_bench.UPLOAD_MODES if args.upload_mode == "both" else (args.upload_mode,),
    )
    _say("")
    _say(upload_bench.format_upload_table(report))
    if not args.no_doc:
        document = args.doc.read_text(encoding="utf-8") if args.doc.exists() else ""
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        args.doc.write_text(
            upload_bench.replace_upload_section(document, upload_bench.render_upload_markdown(report)), encoding="utf-8"
        )
        _say(f"wrote {args.doc} (upload section)")


def _inputs_line(inputs: Inputs, started: float) -> str:
    return (
        f"inputs {'from cache' if inputs.cached else f'encoded in {time.monotonic() - started:.1f} s'} ({inputs.root}): "
        + ", ".join(f"{s.definition.key} {s.bitrate_kbps:.0f} kbps" for s in inputs.streams)
    )


def _run_rooms(args: argparse.Namespace, machine: MachineInfo, settings: Settings) -> None:
    """The room-size benchmark; writes its section of the doc unless told not to."""
    small, large = make_room(SMALL_PEOPLE), make_room(LARGE_PEOPLE)
    order = round_order(args.room_rounds, small.name, large.name)
    _say(
        f"room size: {large.name} ({len(large.streams)} streams) vs {small.name} ({len(small.streams)} streams), "
        f"{len(order)} rounds of {args.room_seconds:g} s: {' '.join(order)}"
    )
    t = time.monotonic()
    inputs = prepare_inputs(args.room_seconds, streams=ROOM_INPUTS)
    _say(_inputs_line(inputs, t))
    rounds: list[RoomRound] = []

    async def run_rounds() -> None:
        for name in order:
            room = small if name == small.name else large
            point = await run_point(settings, inputs, 1, args.room_seconds, say=_say, room=room)
            r = RoomRound(room.name, point)
            rounds.append(r)
            for s in point.sessions:
                if s.status.lower() != "completed":
                    _say(f"  {room.name}: {s.status}: {s.error}")
            s0 = r.session
            _say(
                f"  {room.name}: {'real time' if point.realtime else 'NOT real time'}; steady {r.steady:.3f} CPU-s/s "
                f"(worker {r.worker_steady:.3f}, parent {r.parent_steady:.3f}), sender {point.sender_cpu_s / point.window_s:.3f}; "
                f"{point.frames_dropped} of {point.frames} frames dropped, max lag {point.max_lag_s:.2f} s"
                + (f", {s0.video_frames_decoded} video frames decoded, {s0.videos_decoding} video streams decoding at stop" if s0 else "")
                + f"; others' load {point.other_busy_fraction * 100:.0f} %"
            )

    trio.run(run_rounds)
    report = RoomsReport(
        date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        seconds=args.room_seconds,
        machine=dataclasses.asdict(machine),
        inputs=_input_rows(inputs),
        small=small,
        large=large,
        rounds=tuple(rounds),
    )
    _say("")
    _say(format_rooms_table(report))
    if not args.no_doc:
        document = args.doc.read_text(encoding="utf-8") if args.doc.exists() else ""
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        args.doc.write_text(replace_rooms_section(document, render_rooms_markdown(report)), encoding="utf-8")
        _say(f"wrote {args.doc} (rooms section)")


def _run_meeting(args: argparse.Namespace, machine: MachineInfo, settings: Settings, work: Path) -> meeting_bench.MeetingResult | None:
    """The realistic meeting: the ffmpeg CLI, one real-time session, the CLI again; writes its section unless told not to."""
    script = meeting_bench.make_script(args.meeting_seconds)
    _say(f"realistic meeting: {script.seconds:g} media-s, {len(script.slides)} slides, {len(script.turns)} turns; the ffmpeg CLI, the recorder, the CLI again")
    t = time.monotonic()
    inputs = meeting_bench.prepare_meeting_inputs(script)
    _say(_inputs_line(inputs, t))
    baseline_settings = BaselineSettings.from_settings(settings)
    baselines = []

    def baseline() -> bool:
        result = meeting_bench.run_meeting_baseline(baseline_settings, script, inputs, work / "meeting-ffmpeg.mp4", ffmpeg=args.ffmpeg)
        if result.returncode != 0 or result.frames == 0:
            _say(f"  ffmpeg failed (exit {result.returncode}): {result.stderr}")
            return False
        baselines.append(result)
        _say(f"  ffmpeg CLI: {result.cpu_per_media_s:.3f} CPU-s/media-s ({result.speed:.1f}x real time)")
        return True

    if not baseline():
        return None
    point = trio.run(lambda: run_point(settings, inputs, 1, script.seconds, say=_say, room=meeting_bench.meeting_room()))
    for s in point.sessions:
        if s.status.lower() != "completed":
            _say(f"  meeting: {s.status}: {s.error}")
    _say(f"  edge-recorder: {point.cpu_per_media_s:.3f} CPU-s/media-s, {point.frames_dropped} of {point.frames} frames dropped, {'real time' if point.realtime else 'NOT real time'}")
    if not baseline():
        return None
    result = meeting_bench.MeetingResult(script, tuple(baselines), point)
    _say("")
    _say(meeting_bench.format_meeting_table(result))
    section = meeting_bench.render_meeting_markdown(result, date=_utc_minute(), machine=_machine_line(machine))
    _write_marked_section(args, section, meeting_bench.MEETING_BEGIN, meeting_bench.MEETING_END, "meeting")
    return result


def _run_hostile(args: argparse.Namespace, machine: MachineInfo) -> None:
    """The hostile-input benchmark; writes its section of the doc unless told not to."""
    _say(f"hostile input: receive cost per datagram{f' against {args.hostile_baseline}' if args.hostile_baseline else ''}...")
    result = hostile_bench.compare(args.hostile_baseline, rounds=2 if args.quick else 4)
    _say(hostile_bench.format_table(result))
    section = hostile_bench.render_markdown(result, date=_utc_minute(), machine=_machine_line(machine))
    _write_marked_section(args, section, hostile_bench.HOSTILE_BEGIN, hostile_bench.HOSTILE_END, "hostile")


def _run_against(args: argparse.Namespace, machine: MachineInfo) -> None:
    """Whole recordings on this tree and ``--against REV``, alternating; writes its section unless told not to."""
    _say(f"against {args.against}: {', '.join(name for name, _, _ in against_bench.SCENARIOS)}; {args.against_rounds} rounds of {args.seconds:g} s each side")
    result = against_bench.compare(args.against, rounds=args.against_rounds, seconds=args.seconds, say=_say)
    _say("")
    _say(against_bench.format_table(result))
    section = against_bench.render_markdown(result, date=_utc_minute(), machine=_machine_line(machine))
    _write_marked_section(args, section, against_bench.AGAINST_BEGIN, against_bench.AGAINST_END, "against")


def _run_placement(args: argparse.Namespace, machine: MachineInfo) -> None:
    """The placement-latency benchmark; writes its section of the doc unless told not to."""
    _say(
        f"placement latency: recording.start and recording.get through a forwarding node vs local, "
        f"{args.placement_rounds} rounds of each, alternating..."
    )
    report = placement_bench.run_placement_bench(
        _say, machine=_machine_line(machine), date=_utc_minute(), rounds=args.placement_rounds
    )
    _say("")
    _say(placement_bench.format_table(report))
    section = placement_bench.render_markdown(report)
    _write_marked_section(args, section, placement_bench.PLACEMENT_BEGIN, placement_bench.PLACEMENT_END, "placement")


TRACKS_BEGIN = "<!-- tracks:begin -->"
TRACKS_END = "<!-- tracks:end -->"


def _run_tracks(args: argparse.Namespace, machine: MachineInfo, settings: Settings) -> None:
    """What keeping every stream's own track costs a 20-person room: rounds without (A) and with (B), A B B A ..."""
    room = make_room(LARGE_PEOPLE)
    order = round_order(args.room_rounds, "composite", "composite+tracks")
    _say(f"tracks: {room.name} ({len(room.streams)} streams), {len(order)} rounds of {args.room_seconds:g} s: {' '.join(order)}")
    inputs = prepare_inputs(args.room_seconds, streams=ROOM_INPUTS)
    steady: dict[str, list[float]] = {"composite": [], "composite+tracks": []}
    parent: dict[str, list[float]] = {"composite": [], "composite+tracks": []}
    realtime = {"composite": True, "composite+tracks": True}

    async def run_rounds() -> None:
        for name in order:
            point = await run_point(settings, inputs, 1, args.room_seconds, say=_say, room=room, tracks=name != "composite")
            r = RoomRound(room.name, point)
            steady[name].append(r.steady)
            parent[name].append(r.parent_steady)
            realtime[name] = realtime[name] and point.realtime and point.frames_dropped == 0
            _say(f"  {name}: steady {r.steady:.3f} CPU-s/s (worker {r.worker_steady:.3f}, parent {r.parent_steady:.3f})")

    trio.run(run_rounds)
    a, b = statistics.median(steady["composite"]), statistics.median(steady["composite+tracks"])
    pa, pb = statistics.median(parent["composite"]), statistics.median(parent["composite+tracks"])
    rows = [
        "| outputs | CPU-s per media-s (median) | receiving process | real time, 0 frames dropped |",
        "|---|---|---|---|",
        f"| composite | {a:.3f} | {pa:.3f} | {'yes' if realtime['composite'] else 'no'} |",
        f"| composite + tracks | {b:.3f} | {pb:.3f} | {'yes' if realtime['composite+tracks'] else 'no'} |",
        f"| ratio | {b / a:.3f} | {pb / pa:.3f} | |",
    ]
    section = (
        f"Measured {_utc_minute()} on {_machine_line(machine)}: {len(order)} rounds of "
        f"{args.room_seconds:g} media-s of the {room.name} room ({len(room.streams)} streams), alternating "
        f"{' '.join(order)}, medians of the rounds.\n\n" + "\n".join(rows)
    )
    _say("")
    _say("\n".join(rows))
    _write_marked_section(args, section, TRACKS_BEGIN, TRACKS_END, "tracks")


def _run_render(args: argparse.Namespace, machine: MachineInfo) -> None:
    """How fast a recording's tracks re-render (issue #14's target: 3x real time for 720p pip)."""
    results = render_bench.run_render_bench(seconds=args.render_seconds, say=_say)
    section = render_bench.render_markdown(results, date=_utc_minute(), machine=_machine_line(machine))
    _write_marked_section(args, section, render_bench.RENDER_BEGIN, render_bench.RENDER_END, "render")


def _utc_minute() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _write_marked_section(args: argparse.Namespace, section: str, begin: str, end: str, name: str) -> None:
    """Put ``section`` between its markers in the doc, unless told not to."""
    if args.no_doc:
        return
    document = args.doc.read_text(encoding="utf-8") if args.doc.exists() else ""
    args.doc.write_text(replace_marked_section(document, section, begin_marker=begin, end_marker=end), encoding="utf-8")
    _say(f"wrote {args.doc} ({name} section)")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    machine = machine_info(args.ffmpeg)
    if args.against:
        _run_against(args, machine)
        _say(f"\n(total {time.monotonic() - started:.0f} s)")
        return 0
    if args.hostile:
        _run_hostile(args, machine)
        _say(f"\n(total {time.monotonic() - started:.0f} s)")
        return 0
    if args.render:
        _run_render(args, machine)
        _say(f"\n(total {time.monotonic() - started:.0f} s)")
        return 0
    if args.still:
        still = still_bench.run_still_bench(say=_say)
        _say(f"still slides: skip off {still.off:.3f}, on {still.on:.3f} CPU-s per media-s, ratio {still.ratio:.2f}")
        section = still_bench.render_markdown(still, date=_utc_minute(), machine=_machine_line(machine))
        _write_marked_section(args, section, still_bench.STILL_BEGIN, still_bench.STILL_END, "still")
        _say(f"\n(total {time.monotonic() - started:.0f} s)")
        return 0
    if args.placement:
        _run_placement(args, machine)
        _say(f"\n(total {time.monotonic() - started:.0f} s)")
        return 0
    if args.upload and not args.rooms:
        _run_upload(args, machine, load_settings(environ=dict(BENCH_ENV), config_file=None))
        _say(f"\n(total {time.monotonic() - started:.0f} s)")
        return 0
    work = Path(tempfile.mkdtemp(prefix="edge-recorder-bench-"))
    try:
        settings = load_settings(environ={**BENCH_ENV, "RECORDING_TMP_DIR": str(work / "recordings")}, config_file=None)
        if args.profile:
            profiles = profile_bench.profile_session(settings, say=_say)
            section = profile_bench.render_markdown(profiles, date=_utc_minute(), machine=_machine_line(machine))
            _write_marked_section(args, section, profile_bench.PROFILE_BEGIN, profile_bench.PROFILE_END, "profile")
            _say(f"\n(total {time.monotonic() - started:.0f} s)")
            return 0
        if args.meeting:
            _run_meeting(args, machine, settings, work)
            _say(f"\n(total {time.monotonic() - started:.0f} s)")
            return 0
        if args.tracks:
            _run_tracks(args, machine, settings)
            _say(f"\n(total {time.monotonic() - started:.0f} s)")
            return 0
        if args.rooms:
            _run_rooms(args, machine, settings)
            _say(f"\n(total {time.monotonic() - started:.0f} s)")
            if args.upload:
                _say("")
                _run_upload(args, machine, settings)
                _say(f"\n(total {time.monotonic() - started:.0f} s)")
            return 0
        baseline_settings = BaselineSettings.from_settings(settings)

        _say(f"edge-recorder bench: {machine.cpu_model}, {machine.logical_cores} cores; N = {', '.join(map(str, args.sessions))}, {args.seconds:g} s each")
        t = time.monotonic()
        inputs = prepare_inputs(args.seconds)
        _say(_inputs_line(inputs, t))

        _say("ffmpeg CLI baseline (same inputs, same settings, as fast as it goes)...")
        result = run_baseline(inputs, baseline_settings, work / "ffmpeg.mp4", ffmpeg=args.ffmpeg)
        if result.returncode != 0 or result.frames == 0:
            _say(f"ffmpeg failed (exit {result.returncode}): {result.stderr}")
            return 1
        baseline = Baseline(result.cpu_s, result.media_s, result.wall_s, result.peak_rss_bytes, " ".join(result.command))
        _say(f"  {result.cpu_s:.2f} CPU-s for {result.media_s:.1f} media-s = {baseline.cpu_per_media_s:.3f} CPU-s/media-s ({result.speed:.1f}x real time)")

        points: list[PointResult] = []

        async def sweep() -> None:
            for n in args.sessions:
                point = await run_point(settings, inputs, n, args.seconds, say=_say)
                points.append(point)
                for i, s in enumerate(point.sessions):
                    if s.status.lower() != "completed":
                        _say(f"  session {i}: {s.status}: {s.error}")
                _say(
                    f"  N={n}: {'real time' if point.realtime else 'NOT real time'}; {point.cpu_per_media_s:.3f} CPU-s/media-s per session, "
                    f"{point.frames_dropped} of {point.frames} frames dropped, max lag {point.max_lag_s:.2f} s, "
                    f"machine {point.machine_busy_fraction * 100:.0f} % busy with us, {point.other_busy_fraction * 100:.0f} % with others"
                )
                if not point.realtime:
                    break

        trio.run(sweep)
        meeting = None
        if not args.no_meeting:
            _say("")
            meeting = _run_meeting(args, machine, settings, work)

        report = Report(
            date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            seconds=args.seconds,
            machine=dataclasses.asdict(machine),
            settings=dataclasses.asdict(baseline_settings),
            inputs=_input_rows(inputs),
            baseline=baseline,
            points=tuple(points),
            sweep=args.sessions,
            meeting_ratio=None if meeting is None else meeting.ratio,
            meeting_clean=meeting is not None and meeting.point.realtime and meeting.point.frames_dropped == 0,
        )
        _say("")
        _say(format_table(report))
        _say("")
        _say("targets (issues #4 and #15):")
        _say(format_targets(report))
        _say(f"\n(total {time.monotonic() - started:.0f} s)")
        if not args.no_doc:
            document = args.doc.read_text(encoding="utf-8") if args.doc.exists() else ""
            args.doc.parent.mkdir(parents=True, exist_ok=True)
            args.doc.write_text(replace_marked_section(document, render_markdown(report)), encoding="utf-8")
            _say(f"wrote {args.doc}")
        if not args.no_rooms:
            _say("")
            _run_rooms(args, machine, settings)
            _say(f"\n(total {time.monotonic() - started:.0f} s)")
        if not args.quick:
            _say("")
            _run_hostile(args, machine)
            _say(f"\n(total {time.monotonic() - started:.0f} s)")
        if not args.no_placement:
            _say("")
            _run_placement(args, machine)
            _say(f"\n(total {time.monotonic() - started:.0f} s)")
        if not args.no_upload:
            _say("")
            _run_upload(args, machine, settings)
            _say(f"\n(total {time.monotonic() - started:.0f} s)")
        return 0
    finally:
        if args.keep:
            _say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
