"""Room size: does a 20-person room cost at most 1.2× a 2-person room? (pure: no I/O)

Issue #5 asks that "a room of 20 cameras and 20 microphones with one visible
overlay costs at most 1.2× a 2-person room". Both rooms are recorded as one
session each with layout ``pip``, in the same run, alternating in rounds
(A B, B A, A B, …: every pair sees the same conditions and a slow drift of the
machine's load cancels out over a B A pair):

* **2-person**: Alice's screen share (the sweep's 720p15 VP8 stream), Alice's
  and Bob's cameras (360p30 VP8) and microphones (Opus tones);
* **20-person**: the same five streams, plus 18 more people with a camera and
  an unmuted but quiet microphone each (white noise at about -60 dBov, still a
  20 ms Opus packet every 20 ms, like a browser without DTX).

Every camera replays the *same* pre-encoded camera bitstream and every quiet
microphone the same noise bitstream, each copy with its own SSRC, sequence and
timestamp origin, its own start point in the bitstream (``rotate_s``, wrapping
around; so copies are not in lockstep: keyframes spread over the GOP, noise
uncorrelated between microphones) and its own send phase within a frame
interval (``phase_s``: cameras are not frame-synchronous). Alice's and Bob's
streams are identical in both rooms. Audio carries the RFC 6464 level of its
PCM in ``urn:ietf:params:rtp-hdrext:ssrc-audio-level`` and every stream sends
RTCP Sender Reports, as :mod:`edge_recorder.demo.sfu` does.

The session starts with Alice as the explicit active speaker; after the
explicit hold the recorder follows the audio levels (both rooms have the same
two talkers; the quiet microphones stay below the speech threshold).

Figures per room, summed over its rounds:

* **steady CPU-s/s** = (the worker's CPU + the parent's CPU while the sender
  was sending) ÷ that window's wall time: the recorder's cost of the room
  once it runs, which is what the target is judged on; **worker** and
  **parent** are its two parts (the parent is the bench process: RTP receive,
  jitter buffers, the pipe; each round runs one session, so it is all that
  session's).
* **whole run CPU-s/media-s**: the sweep's figure (start-up included) ÷ media
  seconds recorded.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass, replace
from typing import Any, Sequence

from edge_recorder.bench.inputs import BENCH_STREAMS, KEYFRAME_INTERVAL_S, StreamDef
from edge_recorder.bench.report import MIB, PointResult, SessionResult, replace_marked_section
from edge_recorder.media.layout import LayoutName

__all__ = [
    "LARGE_PEOPLE",
    "ROOMS_BEGIN",
    "ROOMS_END",
    "ROOM_INPUTS",
    "SMALL_PEOPLE",
    "TARGET_RATIO",
    "Room",
    "RoomFigures",
    "RoomRound",
    "RoomStream",
    "RoomsReport",
    "format_rooms_table",
    "make_room",
    "render_rooms_markdown",
    "replace_rooms_section",
    "room_by_name",
    "round_order",
]

ROOMS_BEGIN = "<!-- rooms:begin -->"
ROOMS_END = "<!-- rooms:end -->"
TARGET_RATIO = 1.2  # issue #5: the 20-person room costs at most 1.2× the 2-person room
SMALL_PEOPLE = 2
LARGE_PEOPLE = 20
QUIET_DBOV = -60.0

_BENCH = {d.key: d for d in BENCH_STREAMS}
QUIET_MIC = StreamDef("quiet", "quiet", "Quiet", "audio", "microphone", "opus", bitrate_kbps=48, ssrc=0xA0D10005, noise_dbov=QUIET_DBOV)
# What the room benchmark pre-encodes: one bitstream per kind of stream, reused.
ROOM_INPUTS: tuple[StreamDef, ...] = (_BENCH["screen"], _BENCH["camera"], _BENCH["mic-a"], _BENCH["mic-b"], QUIET_MIC)
_SSRC_BASE = 0x52000000


@dataclass(frozen=True)
class RoomStream:
    """One stream of a room: how the recorder sees it and what the sender replays.

    Attributes:
        definition: as described to the recorder (its ``key`` is unique in the
            room; peer, display name and SSRC are this stream's own).
        encoded: the key of the pre-encoded bitstream it replays (``ROOM_INPUTS``).
        rotate_s: start this far into the bitstream, wrapping around at its end.
        phase_s: send (and timestamp) offset of the whole stream, under one
            frame interval.
    """

    definition: StreamDef
    encoded: str
    rotate_s: float = 0.0
    phase_s: float = 0.0

    @property
    def key(self) -> str:
        return self.definition.key


@dataclass(frozen=True)
class Room:
    """A room as the benchmark records it: one session, these streams."""

    name: str  # "2-person"
    people: int
    streams: tuple[RoomStream, ...]
    active_speaker: str
    layout: LayoutName = "pip"

    def count(self, kind: str) -> int:
        return sum(1 for s in self.streams if s.definition.kind == kind)


def _person(index: int) -> tuple[str, str]:
    """Peer id and display name of the index-th person (0 = Alice, 1 = Bob)."""
    if index == 0:
        return "alice", "Alice"
    if index == 1:
        return "bob", "Bob"
    return f"p{index + 1:02d}", f"Person {index + 1}"


def _stream(encoded: str, key: str, peer: str, name: str, ssrc: int, *, rotate_s: float = 0.0, phase_s: float = 0.0) -> RoomStream:
    definition = replace(_encoded(encoded), key=key, peer_id=peer, display_name=name, ssrc=ssrc)
    return RoomStream(definition, encoded, rotate_s=rotate_s, phase_s=phase_s)


def _encoded(key: str) -> StreamDef:
    return next(d for d in ROOM_INPUTS if d.key == key)


def make_room(people: int) -> Room:
    """A room of ``people`` people: Alice shares her screen, everyone has a camera and a microphone.

    Alice (440 Hz beeps) and Bob (660 Hz tone) talk; from the third person on,
    microphones are quiet. Offsets are seeded by the stream's key, so a
    person's streams are the same in every room.

    Raises:
        ValueError: fewer than 2 people.
    """
    if people < 2:
        raise ValueError(f"a room needs at least 2 people, not {people}")
    camera_frame_s = 1 / _encoded("camera").fps
    streams: list[RoomStream] = []

    def ssrc() -> int:
        return _SSRC_BASE + len(streams)

    streams.append(_stream("screen", "alice-screen", "alice", "Alice", ssrc()))
    for i in range(people):
        peer, name = _person(i)
        rng = random.Random(f"room-stream-{peer}")
        if i == 0:
            camera = _stream("camera", f"{peer}-cam", peer, name, ssrc())
        else:
            camera = _stream(
                "camera",
                f"{peer}-cam",
                peer,
                name,
                ssrc(),
                rotate_s=rng.uniform(0, KEYFRAME_INTERVAL_S),
                phase_s=rng.uniform(0, camera_frame_s),
            )
        streams.append(camera)
        if i < 2:
            streams.append(_stream("mic-a" if i == 0 else "mic-b", f"{peer}-mic", peer, name, ssrc(), phase_s=0.0 if i == 0 else 0.007))
        else:
            # Anywhere in the noise: copies at different offsets are uncorrelated.
            streams.append(_stream("quiet", f"{peer}-mic", peer, name, ssrc(), rotate_s=rng.uniform(0, 60.0), phase_s=rng.uniform(0, 0.02)))
    return Room(name=f"{people}-person", people=people, streams=tuple(streams), active_speaker="alice")


def room_by_name(name: str) -> Room:
    """``"20-person"`` → ``make_room(20)``.

    Raises:
        ValueError: not ``"<people>-person"``.
    """
    head, _, tail = name.partition("-")
    if tail != "person" or not head.isdigit():
        raise ValueError(f"not a room name: {name!r} (want e.g. '20-person')")
    return make_room(int(head))


def round_order(rounds: int, small: str = "2-person", large: str = "20-person") -> list[str]:
    """The rooms in the order they run: A B, B A, A B, … (``rounds`` of each).

    Raises:
        ValueError: rounds < 1.
    """
    if rounds < 1:
        raise ValueError("at least one round")
    order: list[str] = []
    for i in range(rounds):
        order += [small, large] if i % 2 == 0 else [large, small]
    return order


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class RoomRound:
    """One round: one session of one room."""

    room: str
    point: PointResult  # n = 1

    @property
    def session(self) -> SessionResult | None:
        return self.point.sessions[0] if self.point.sessions else None

    @property
    def worker_steady(self) -> float:
        return _div(sum(s.window_cpu_s for s in self.point.sessions), self.point.window_s)

    @property
    def parent_steady(self) -> float:
        return _div(self.point.parent_window_cpu_s, self.point.window_s)

    @property
    def steady(self) -> float:
        return self.worker_steady + self.parent_steady


@dataclass(frozen=True)
class RoomFigures:
    """A room's figures, summed over its rounds."""

    room: Room
    rounds: tuple[RoomRound, ...]

    def _sum(self, attr: str) -> float:
        return sum(float(getattr(s, attr)) for r in self.rounds for s in r.point.sessions)

    @property
    def window_s(self) -> float:
        return sum(r.point.window_s for r in self.rounds)

    @property
    def worker_steady(self) -> float:
        """Worker CPU-s per second of the replay windows."""
        return _div(self._sum("window_cpu_s"), self.window_s)

    @property
    def parent_steady(self) -> float:
        return _div(sum(r.point.parent_window_cpu_s for r in self.rounds), self.window_s)

    @property
    def steady(self) -> float:
        """The recorder (parent + worker), CPU-s per second of the replay windows."""
        return self.worker_steady + self.parent_steady

    @property
    def media_s(self) -> float:
        return self._sum("media_s")

    @property
    def whole_run(self) -> float:
        """(Worker CPU before stop + parent CPU from start to stop) ÷ media seconds recorded."""
        cpu = self._sum("worker_cpu_s") + sum(r.point.parent_cpu_s for r in self.rounds)
        return _div(cpu, self.media_s)

    @property
    def sender_steady(self) -> float:
        return _div(sum(r.point.sender_cpu_s for r in self.rounds), self.window_s)

    @property
    def frames(self) -> int:
        return sum(r.point.frames for r in self.rounds)

    @property
    def frames_dropped(self) -> int:
        return sum(r.point.frames_dropped for r in self.rounds)

    @property
    def ingest_drops(self) -> int:
        return sum(r.point.ingest_drops for r in self.rounds)

    @property
    def max_lag_s(self) -> float:
        return max((r.point.max_lag_s for r in self.rounds), default=math.nan)

    @property
    def first_frame_s(self) -> list[float]:
        return sorted(f for r in self.rounds for f in r.point.first_frame_s)

    @property
    def peak_rss_bytes(self) -> int:
        return max((r.point.peak_rss_bytes for r in self.rounds), default=0)

    @property
    def parent_peak_rss_bytes(self) -> int:
        return max((r.point.parent_peak_rss_bytes for r in self.rounds), default=0)

    @property
    def packets_per_media_s(self) -> float:
        """Datagrams (RTP + RTCP) the parent received per media second."""
        return _div(self._sum("packets_received"), self.media_s)

    @property
    def decoded_per_media_s(self) -> float:
        """Video frames the worker decoded per media second (all video streams)."""
        return _div(self._sum("video_frames_decoded"), self.media_s)

    @property
    def realtime(self) -> bool:
        return bool(self.rounds) and all(r.point.realtime for r in self.rounds)

    @property
    def others_load(self) -> float:
        values = [r.point.other_busy_fraction for r in self.rounds if not math.isnan(r.point.other_busy_fraction)]
        return statistics.fmean(values) if values else math.nan

    @property
    def machine_busy(self) -> float:
        values = [r.point.machine_busy_fraction for r in self.rounds if not math.isnan(r.point.machine_busy_fraction)]
        return statistics.fmean(values) if values else math.nan

    @property
    def speakers(self) -> str:
        """Final speaker and switches per round, e.g. ``bob (1 switch)``."""
        seen: list[str] = []
        for r in self.rounds:
            s = r.session
            if s is None:
                continue
            switches = int(s.speaker_switches)
            seen.append(f"{s.active_speaker or 'none'} ({switches} switch{'' if switches == 1 else 'es'})")
        distinct = sorted(set(seen))
        return ", ".join(distinct) if distinct else "–"


@dataclass(frozen=True)
class RoomsReport:
    """Everything one room-size run measured."""

    date: str
    seconds: float  # media seconds replayed per round
    machine: dict[str, Any]
    inputs: list[dict[str, Any]]  # key, codec, width, height, fps, kbps (ROOM_INPUTS order)
    small: Room
    large: Room
    rounds: tuple[RoomRound, ...]  # in the order they ran
    target_ratio: float = TARGET_RATIO

    def figures(self, room: Room) -> RoomFigures:
        return RoomFigures(room, tuple(r for r in self.rounds if r.room == room.name))

    @property
    def ratio(self) -> float:
        """Steady CPU of the large room ÷ the small room's (the target's figure)."""
        return _div(self.figures(self.large).steady, self.figures(self.small).steady)

    def pair_ratios(self) -> list[float]:
        """The ratio per adjacent pair of rounds (A B or B A), to show the spread."""
        out: list[float] = []
        for a, b in zip(self.rounds[::2], self.rounds[1::2]):
            by_room = {a.room: a, b.room: b}
            small, large = by_room.get(self.small.name), by_room.get(self.large.name)
            if small is not None and large is not None:
                out.append(_div(large.steady, small.steady))
        return out

    @property
    def met(self) -> bool:
        return not math.isnan(self.ratio) and self.ratio <= self.target_ratio


def _div(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def _f(value: float, digits: int = 3) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def _ms(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value * 1000:.0f}"


def _pct(value: float) -> str:
    return "–" if math.isnan(value) else f"{value * 100:.0f} %"


def _first(values: Sequence[float]) -> str:
    if not values:
        return "–/–"
    return f"{_ms(statistics.median(values))}/{_ms(max(values))}"


def _ratio(large: float, small: float) -> str:
    r = _div(large, small)
    return "–" if math.isnan(r) else f"{r:.2f}×"


def _room_text(room: Room) -> str:
    return (
        f"{room.people} people, {len(room.streams)} streams: 1 screen share, "
        f"{room.count('video') - 1} cameras, {room.count('audio')} microphones"
    )


ROOM_HEADER = (
    "room",
    "streams",
    "real time",
    "steady CPU-s/s",
    "worker",
    "parent",
    "whole run CPU-s/media-s",
    "packets in/media-s",
    "video frames decoded/media-s",
    "dropped frames",
    "ingest drops",
    "max lag s",
    "first frame p50/max ms",
    "peak worker RSS MiB",
    "sender CPU-s/s",
    "others' load",
)


def room_rows(report: RoomsReport) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for room in (report.small, report.large):
        f = report.figures(room)
        rows.append(
            (
                room.name,
                str(len(room.streams)),
                "yes" if f.realtime else "NO",
                _f(f.steady),
                _f(f.worker_steady),
                _f(f.parent_steady),
                _f(f.whole_run),
                _f(f.packets_per_media_s, 0),
                _f(f.decoded_per_media_s, 1),
                f"{f.frames_dropped}/{f.frames}",
                str(f.ingest_drops),
                _f(f.max_lag_s, 2),
                _first(f.first_frame_s),
                f"{f.peak_rss_bytes / MIB:.0f}",
                _f(f.sender_steady),
                _pct(f.others_load),
            )
        )
    return rows


RATIO_HEADER = ("figure", "2-person", "20-person", "ratio", "target", "met")


def ratio_rows(report: RoomsReport) -> list[tuple[str, ...]]:
    small, large = report.figures(report.small), report.figures(report.large)
    met = "yes" if report.met else "**no**"
    return [
        ("recorder, steady (parent + worker) CPU-s/s", _f(small.steady), _f(large.steady), _ratio(large.steady, small.steady), f"≤ {report.target_ratio:g}×", met),
        ("worker, steady", _f(small.worker_steady), _f(large.worker_steady), _ratio(large.worker_steady, small.worker_steady), "", ""),
        ("parent, steady", _f(small.parent_steady), _f(large.parent_steady), _ratio(large.parent_steady, small.parent_steady), "", ""),
        ("recorder, whole run (start-up included) CPU-s/media-s", _f(small.whole_run), _f(large.whole_run), _ratio(large.whole_run, small.whole_run), "", ""),
    ]


ROUND_HEADER = (
    "#",
    "room",
    "steady CPU-s/s",
    "worker",
    "parent",
    "dropped frames",
    "ingest drops",
    "video frames decoded",
    "max lag s",
    "first frame ms",
    "speaker at stop (switches)",
    "machine busy",
    "others' load",
)


def round_rows(report: RoomsReport) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for i, r in enumerate(report.rounds, 1):
        s = r.session
        rows.append(
            (
                str(i),
                r.room,
                _f(r.steady),
                _f(r.worker_steady),
                _f(r.parent_steady),
                f"{r.point.frames_dropped}/{r.point.frames}",
                str(r.point.ingest_drops),
                str(s.video_frames_decoded) if s is not None else "–",
                _f(r.point.max_lag_s, 2),
                _ms(s.first_frame_s if s is not None else None),
                f"{s.active_speaker or 'none'} ({s.speaker_switches})" if s is not None else "–",
                _pct(r.point.machine_busy_fraction),
                _pct(r.point.other_busy_fraction),
            )
        )
    return rows


def _fixed(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    table = [tuple(header), *(tuple(cell.replace("**", "") for cell in row) for row in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1) -> str:
    align = ["---" if i < left else "---:" for i in range(len(header))]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def _verdict(report: RoomsReport) -> str:
    pairs = report.pair_ratios()
    spread = f" (per A/B pair: {', '.join(f'{p:.2f}' for p in pairs)})" if len(pairs) > 1 else ""
    return (
        f"20-person ÷ 2-person, steady recorder CPU: **{_ratio(report.figures(report.large).steady, report.figures(report.small).steady)}**"
        f"{spread}; target ≤ {report.target_ratio:g}×: {'met' if report.met else '**not met**'}."
    )


def session_cost_line(report: RoomsReport) -> str:
    """What ``RECORDING_SESSION_CPU_COST`` (cores per 720p30 recording, fleet admission) should be, from this run.

    The larger room's steady figure is the cost of a recording on this machine
    (the output is the sweep's 1280x720 at 30 fps); the default 0.5 should be at least that.
    """
    steady = report.figures(report.large).steady
    if math.isnan(steady):
        return "RECORDING_SESSION_CPU_COST: –"
    return (
        f"RECORDING_SESSION_CPU_COST (cores one 1280x720 30 fps recording costs, for admission and placement): "
        f"{steady:.2f} measured here in the {report.large.name} room; set it to at least that on machines like this one "
        f"(the default is 0.5)."
    )


def _difference(report: RoomsReport) -> str:
    """Where the large room's extra CPU goes, in words."""
    small, large = report.figures(report.small), report.figures(report.large)
    extra_packets = large.packets_per_media_s - small.packets_per_media_s
    parent = large.parent_steady - small.parent_steady
    worker = large.worker_steady - small.worker_steady
    if math.isnan(parent) or math.isnan(worker):
        return "Where the difference goes: –"
    per_packet = f" (≈ {parent / extra_packets * 1e6:.0f} µs per extra datagram)" if extra_packets > 0 else ""
    return (
        f"Where the difference goes: parent +{parent:.3f} CPU-s/s for +{extra_packets:.0f} datagrams/s{per_packet}; "
        f"worker +{worker:.3f} CPU-s/s for {large.decoded_per_media_s:.1f} vs {small.decoded_per_media_s:.1f} video frames "
        f"decoded per media second and {report.large.count('audio')} vs {report.small.count('audio')} Opus streams decoded and mixed."
    )


def format_rooms_table(report: RoomsReport) -> str:
    """Fixed-width tables for the terminal."""
    lines = _fixed(ROOM_HEADER, room_rows(report))
    lines += ["", *_fixed(RATIO_HEADER, ratio_rows(report)), "", *_fixed(ROUND_HEADER, round_rows(report)), "", _verdict(report).replace("**", ""), _difference(report), session_cost_line(report)]
    return "\n".join(lines)


def _inputs_text(report: RoomsReport) -> str:
    parts = []
    names = {"screen": "screen", "camera": "camera (every camera)", "mic-a": "Alice's mic", "mic-b": "Bob's mic", "quiet": f"quiet mic (every other, {QUIET_DBOV:g} dBov noise)"}
    for i in report.inputs:
        size = f"{i['width']}x{i['height']}@{i['fps']} " if i.get("width") else ""
        parts.append(f"{names.get(i['key'], i['key'])} {i['codec'].upper()} {size}{i['kbps']:.0f} kbps")
    return "; ".join(parts)


def render_rooms_markdown(report: RoomsReport) -> str:
    """The docs/benchmarks.md section between the rooms markers."""
    m = report.machine
    load = m.get("load_average")
    order = " ".join("A" if r.room == report.small.name else "B" for r in report.rounds)
    per_room = len(report.rounds) // 2 if report.rounds else 0
    lines = [
        f"### Latest room-size run: {report.date}",
        "",
        f"- Machine: {m.get('cpu_model')}, {m.get('logical_cores')} logical cores, {m.get('memory_gib')} GiB RAM"
        + (f"; load average before the run {load[0]:.2f}" if load else ""),
        f"- Software: Python {m.get('python')}, PyAV {m.get('pyav')} ({m.get('libav')})",
        f"- A = {report.small.name} room ({_room_text(report.small)}); B = {report.large.name} room ({_room_text(report.large)}). "
        f"Layout {report.small.layout}, one visible overlay (the active speaker's camera on the screen share); "
        "Alice is the explicit speaker at the start, then the audio levels decide (the same two talkers in both rooms).",
        f"- Inputs: {_inputs_text(report)}. The cameras all replay one encoded bitstream and the quiet microphones another, "
        "each copy with its own SSRC, sequence and timestamp origin, start point in the bitstream and send phase; "
        "audio carries the RFC 6464 level of its PCM (header extension id 10) and every stream sends an RTCP Sender Report every second.",
        f"- Rounds: {order} ({per_room} of each room, {report.seconds:g} s of media each, one session at a time, same settings as the sweep above). "
        f"Active speaker at stop (switches seen): A {report.figures(report.small).speakers}; B {report.figures(report.large).speakers}.",
        "",
        _markdown(ROOM_HEADER, room_rows(report)),
        "",
        _markdown(RATIO_HEADER, ratio_rows(report)),
        "",
        _verdict(report),
        "",
        _difference(report),
        "",
        session_cost_line(report),
        "",
        "<details><summary>Rounds</summary>",
        "",
        _markdown(ROUND_HEADER, round_rows(report), left=2),
        "",
        "</details>",
        "",
        "Method: **steady** = (worker CPU + parent CPU) while the sender was sending ÷ that window's wall time "
        "(the target's figure; start-up is a fixed cost per recording, shown in **whole run**). The parent is the bench "
        "process that receives the RTP (one session per round, so all of it is that session's). Alternating the rooms "
        "(A B, B A, …) gives both the same machine conditions; the per-pair ratios show the noise (absolute figures move "
        "between runs on a shared machine: compare the ratio). **Real time** is the sweep's verdict (output frames dropped "
        "≤ 1 %, lag < 1 s); **ingest drops** (frames lost on the way in, e.g. a full pipe to the worker: gaps in the audio, "
        "a video stream waiting for its next keyframe) are not in it, so read both. "
        "`just bench` runs this after the session sweep; `just bench --rooms` runs only this, "
        "`--no-rooms` skips it, `--room-seconds` and `--room-rounds` change its length.",
    ]
    return "\n".join(lines)


def replace_rooms_section(document: str, section: str) -> str:
    """Put ``section`` between the rooms markers, keeping everything else."""
    return replace_marked_section(document, section, begin_marker=ROOMS_BEGIN, end_marker=ROOMS_END)
