"""The benchmark's sender: replays pre-encoded RTP in real time, in its own process.

Run as ``python -m edge_recorder.bench.replay INPUTS_DIR --sessions N --seconds S``
so that packetizing and sending are not counted as the recorder's CPU.

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
few seconds.
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

from edge_recorder.bench.inputs import InputStream, load_inputs
from edge_recorder.demo.sfu import PAYLOAD_TYPES
from edge_recorder.rtp.packet import serialize_rtp
from edge_recorder.rtp.packetize import OpusPacketizer, Vp8Packetizer

__all__ = ["ScheduledPacket", "build_schedule", "main"]

START_MARGIN_S = 0.02  # first send this long after the targets arrive


@dataclass(frozen=True, slots=True)
class ScheduledPacket:
    """One datagram and when to send it, relative to the replay's start."""

    at_s: float
    session: int
    stream: str
    datagram: bytes


def _stream_packets(stream: InputStream, session: int, seconds: float, rng: random.Random) -> list[ScheduledPacket]:
    d = stream.definition
    packetizer: Vp8Packetizer | OpusPacketizer
    if d.codec == "vp8":
        packetizer = Vp8Packetizer(payload_type=PAYLOAD_TYPES["vp8"], ssrc=d.ssrc, initial_sequence=rng.randrange(1 << 16))
    else:
        packetizer = OpusPacketizer(payload_type=PAYLOAD_TYPES["opus"], ssrc=d.ssrc, initial_sequence=rng.randrange(1 << 16))
    ts_base = rng.getrandbits(32)  # RFC 3550 §5.1: a random origin per stream
    out: list[ScheduledPacket] = []
    for frame in stream.frames:
        at_s = frame.timestamp / d.clock_rate
        if at_s >= seconds:
            break
        for packet in packetizer.packetize(frame.data, (ts_base + frame.timestamp) & 0xFFFFFFFF, keyframe=frame.keyframe):
            out.append(ScheduledPacket(at_s, session, d.key, serialize_rtp(packet)))
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
        try:
            sockets[key].sendto(p.datagram, targets[key])
        except OSError:
            errors += 1  # e.g. ENOBUFS; the recorder sees it as loss
            continue
        packets += 1
        sent_bytes += len(p.datagram)
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
    args = parser.parse_args(argv)

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
