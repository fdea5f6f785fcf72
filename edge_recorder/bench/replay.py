"""The benchmark's sender: replays pre-encoded RTP in real time, in its own process.

Run as ``python -m edge_recorder.bench.replay INPUTS_DIR --sessions N --seconds S``
so that packetizing and sending are not counted as the recorder's CPU. With
``--room NAME`` (e.g. ``20-person``, :mod:`edge_recorder.bench.rooms`) it
replays that room's streams instead of the sweep's four: several streams may
replay one bitstream, each from its own start point and send phase, audio
carries the RFC 6464 level and every stream sends RTCP Sender Reports.

Protocol with the bench process (one JSON object per line):

1. The sender loads the inputs, packetizes every session's streams up front
   (RFC 7741 VP8, RFC 7587 Opus; each session's stream gets its own random
   sequence number and timestamp origin) and prints ``{"event": "ready"}``.
2. The bench writes ``{"targets": [{"screen": [ip, port], ...}, ...]}`` (one
   object per session) on stdin.
3. The sender sends every frame's packets at the frame's media time (a burst
   per frame, as a browser's pacer roughly does at these rates), from one
   socket per stream, then prints ``{"event": "done", ...}`` with what it sent
   and how late it ran, and exits.

RTCP from the recorder (receiver reports, PLI) is ignored: pre-encoded streams
cannot make a keyframe on demand, which is why the inputs carry one every
few seconds. Sender Reports (room mode) are built when they are sent: NTP time
from ``time.time()``, the RTP timestamp of that instant (RFC 3550 §6.4.1).
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from edge_recorder.bench.inputs import EncodedFrame, InputStream, Inputs, load_inputs
from edge_recorder.bench.meeting import MEETING_ROOM, MEETING_STREAMS, meeting_room
from edge_recorder.bench.rooms import ROOM_INPUTS, Room, room_by_name
from edge_recorder.demo.sfu import AUDIO_LEVEL_ID, PAYLOAD_TYPES, SENDER_REPORT_INTERVAL_S
from edge_recorder.rtp.packet import serialize_rtp
from edge_recorder.rtp.packetize import OpusPacketizer, Vp8Packetizer
from edge_recorder.rtp.rtcp import NTP_UNIX_EPOCH_OFFSET_S, SenderReport, seconds_to_ntp, serialize_rtcp

__all__ = ["ScheduledPacket", "SenderReportTemplate", "build_room_schedule", "build_schedule", "main", "rotate_frames"]

START_MARGIN_S = 0.02  # first send this long after the targets arrive


@dataclass(frozen=True, slots=True)
class SenderReportTemplate:
    """An RTCP SR whose clock fields are filled in when it is sent (RFC 3550 §6.4.1).

    The stream's frame with RTP timestamp ``ts_base + T`` is sent at
    ``phase_s + T / clock_rate`` after the replay's start, so the RTP timestamp
    of the instant ``elapsed_s`` is ``ts_base + (elapsed_s - phase_s) · clock_rate``.
    """

    ssrc: int
    ts_base: int
    phase_s: float
    clock_rate: int
    packet_count: int  # packets of this stream scheduled before the report
    octet_count: int  # their payload octets

    def datagram(self, elapsed_s: float, unix_time_s: float) -> bytes:
        report = SenderReport(
            ssrc=self.ssrc,
            ntp_timestamp=seconds_to_ntp(unix_time_s + NTP_UNIX_EPOCH_OFFSET_S),
            rtp_timestamp=(self.ts_base + round((elapsed_s - self.phase_s) * self.clock_rate)) & 0xFFFFFFFF,
            packet_count=self.packet_count & 0xFFFFFFFF,
            octet_count=self.octet_count & 0xFFFFFFFF,
        )
        return serialize_rtcp([report])


@dataclass(frozen=True, slots=True)
class ScheduledPacket:
    """One datagram and when to send it, relative to the replay's start.

    ``report`` set: an RTCP Sender Report, built when sent (``datagram`` is empty).
    """

    at_s: float
    session: int
    stream: str
    datagram: bytes
    report: SenderReportTemplate | None = None


def rotate_frames(stream: InputStream, rotate_s: float) -> list[EncodedFrame]:
    """The stream's frames starting ``rotate_s`` in, wrapping around at the end.

    Timestamps are rebased so the first frame is at 0 and they keep counting
    across the wrap (the stream's duration is its last timestamp plus one
    frame). A wrap lands on the stream's first frame, a keyframe, so the
    bitstream stays decodable; a start mid-GOP waits for the next keyframe,
    like joining a stream late.
    """
    frames = list(stream.frames)
    if not frames or rotate_s <= 0:
        return frames
    d = stream.definition
    step = frames[1].timestamp - frames[0].timestamp if len(frames) > 1 else 1
    total = frames[-1].timestamp + step
    start = round(rotate_s * d.clock_rate) % total
    k = next((i for i, f in enumerate(frames) if f.timestamp >= start), 0)
    origin = frames[k].timestamp
    return [
        EncodedFrame(f.data, f.keyframe, (f.timestamp - origin) % total, f.audio_level) for f in frames[k:] + frames[:k]
    ]


def _stream_packets(
    stream: InputStream,
    session: int,
    seconds: float,
    rng: random.Random,
    *,
    key: str | None = None,
    ssrc: int | None = None,
    rotate_s: float = 0.0,
    phase_s: float = 0.0,
    audio_levels: bool = False,
    sender_reports: bool = False,
) -> list[ScheduledPacket]:
    d = stream.definition
    key = d.key if key is None else key
    ssrc = d.ssrc if ssrc is None else ssrc
    packetizer: Vp8Packetizer | OpusPacketizer
    if d.codec == "vp8":
        packetizer = Vp8Packetizer(payload_type=PAYLOAD_TYPES["vp8"], ssrc=ssrc, initial_sequence=rng.randrange(1 << 16))
    else:
        packetizer = OpusPacketizer(payload_type=PAYLOAD_TYPES["opus"], ssrc=ssrc, initial_sequence=rng.randrange(1 << 16))
    ts_base = rng.getrandbits(32)  # RFC 3550 §5.1: a random origin per stream
    out: list[ScheduledPacket] = []
    packets = octets = 0
    next_report_s = 0.0  # media time of the next SR: one after the first frame, then every interval
    for frame in rotate_frames(stream, rotate_s):
        media_s = frame.timestamp / d.clock_rate
        if media_s >= seconds:
            break
        at_s = phase_s + media_s
        for packet in packetizer.packetize(frame.data, (ts_base + frame.timestamp) & 0xFFFFFFFF, keyframe=frame.keyframe):
            if audio_levels and frame.audio_level is not None:
                packet.extensions[AUDIO_LEVEL_ID] = bytes([frame.audio_level])
            out.append(ScheduledPacket(at_s, session, key, serialize_rtp(packet)))
            packets += 1
            octets += len(packet.payload)
        if sender_reports and media_s >= next_report_s:
            template = SenderReportTemplate(ssrc, ts_base, phase_s, d.clock_rate, packets, octets)
            out.append(ScheduledPacket(at_s, session, key, b"", template))
            next_report_s += SENDER_REPORT_INTERVAL_S
    return out


def build_schedule(streams: Sequence[InputStream], sessions: int, seconds: float, *, seed: int = 0) -> list[ScheduledPacket]:
    """Every datagram of every session, in send order (stable within a stream).

    Args:
        streams: the pre-encoded streams.
        sessions: how many sessions receive them.
        seconds: replay only frames whose media time is below this.
        seed: seeds sequence numbers and timestamp origins.

    Returns:
        The packets sorted by ``at_s``; a stream's packets keep their order.
    """
    rng = random.Random(seed)
    runs = [_stream_packets(stream, s, seconds, rng) for s in range(sessions) for stream in streams]
    return list(heapq.merge(*runs, key=lambda p: p.at_s))


def build_room_schedule(room: Room, inputs: Inputs, sessions: int, seconds: float, *, seed: int = 0) -> list[ScheduledPacket]:
    """Every datagram of ``sessions`` copies of ``room``, in send order.

    Each of the room's streams replays its ``encoded`` bitstream from
    ``inputs`` under its own key and SSRC, rotated by ``rotate_s`` and sent
    ``phase_s`` late, with RFC 6464 audio levels and a Sender Report per
    stream every second.

    Args:
        room: the streams.
        inputs: the pre-encoded bitstreams (``ROOM_INPUTS``).
        sessions: how many sessions receive the room.
        seconds: replay only frames whose media time is below this.
        seed: seeds sequence numbers and timestamp origins.

    Returns:
        The packets sorted by ``at_s``; a stream's packets keep their order.
    """
    rng = random.Random(seed)
    runs = [
        _stream_packets(
            inputs.stream(rs.encoded),
            s,
            seconds,
            rng,
            key=rs.key,
            ssrc=rs.definition.ssrc,
            rotate_s=rs.rotate_s,
            phase_s=rs.phase_s,
            audio_levels=True,
            sender_reports=True,
        )
        for s in range(sessions)
        for rs in room.streams
    ]
    return list(heapq.merge(*runs, key=lambda p: p.at_s))


def _emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _send(schedule: Iterable[ScheduledPacket], sockets: dict[tuple[int, str], socket.socket], targets: dict[tuple[int, str], tuple[str, int]]) -> dict[str, float]:
    """Send on schedule; returns how it went (late = behind the schedule)."""
    start = time.monotonic() + START_MARGIN_S
    late_max_s = 0.0
    late_sum_s = 0.0
    packets = 0
    sent_bytes = 0
    errors = 0
    for p in schedule:
        due = start + p.at_s
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        else:
            late = now - due
            late_max_s = max(late_max_s, late)
            late_sum_s += late
        key = (p.session, p.stream)
        datagram = p.datagram if p.report is None else p.report.datagram(time.monotonic() - start, time.time())
        try:
            sockets[key].sendto(datagram, targets[key])
        except OSError:
            errors += 1  # e.g. ENOBUFS; the recorder sees it as loss
            continue
        packets += 1
        sent_bytes += len(datagram)
    return {
        "packets": packets,
        "bytes": sent_bytes,
        "send_errors": errors,
        "late_max_s": round(late_max_s, 4),
        "late_mean_s": round(late_sum_s / max(1, packets), 5),
        "duration_s": round(time.monotonic() - start, 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_recorder.bench.replay", description=__doc__.splitlines()[0])
    parser.add_argument("inputs", type=Path, help="a directory written by edge_recorder.bench.inputs")
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--room", help=f"replay this room (e.g. 20-person) from ROOM_INPUTS, or {MEETING_ROOM!r} from its inputs, instead of the sweep's streams")
    args = parser.parse_args(argv)

    if args.room == MEETING_ROOM:
        inputs = load_inputs(args.inputs, streams=MEETING_STREAMS)
        schedule = build_room_schedule(meeting_room(), inputs, args.sessions, args.seconds)
    elif args.room:
        inputs = load_inputs(args.inputs, streams=ROOM_INPUTS)
        schedule = build_room_schedule(room_by_name(args.room), inputs, args.sessions, args.seconds)
    else:
        inputs = load_inputs(args.inputs)
        schedule = build_schedule(inputs.streams, args.sessions, args.seconds)
    _emit("ready", packets=len(schedule))

    line = sys.stdin.readline()
    if not line:
        return 0  # the bench went away before sending
    sessions: list[dict[str, list[object]]] = json.loads(line)["targets"]
    sockets: dict[tuple[int, str], socket.socket] = {}
    targets: dict[tuple[int, str], tuple[str, int]] = {}
    for index, streams in enumerate(sessions):
        for key, (ip, port) in streams.items():
            family = socket.AF_INET6 if ":" in str(ip) else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            sock.bind((str(ip), 0))
            sockets[(index, key)] = sock
            targets[(index, key)] = (str(ip), int(str(port)))
    _emit("sending", monotonic=time.monotonic())
    try:
        result = _send(schedule, sockets, targets)
    finally:
        for sock in sockets.values():
            sock.close()
    _emit("done", **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
