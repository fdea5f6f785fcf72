"""A reusable fuzz harness for the recorder's network surfaces (issue #9, "Proof").

Three seeded generators, pure apart from ``random.Random(seed)``, so a run is
reproducible from its seed:

* :class:`DatagramFuzzer`: datagrams for a session's RTP/RTCP ports. Random
  bytes of random sizes (up to the IPv4 UDP maximum, 65 507 bytes), and
  mutations of *valid* RTP and RTCP built with the recorder's own serializers
  (``edge_recorder.rtp``): bit flips, truncation, appended bytes, wrong
  version, CSRC counts past the end, header extensions whose length lies,
  padding bits with a bad padding length, sequence and timestamp jumps,
  payload types 64–95 (which a muxed port reads as RTCP, RFC 5761 §4), RTCP
  compounds with bogus lengths, and floods of well-formed NACK/PLI/FIR/SR/BYE.
* :class:`ControlFuzzer`: malformed JSON-RPC for the control WebSocket:
  invalid JSON, wrong types, huge strings, deep nesting, unknown methods,
  batches, binary frames, oversize frames, valid methods with hostile params
  (identifiers and display names with control characters, unknown session
  ids), duplicate keys, NaN and overflowing numbers.
* Measurement helpers: a latency summary, RSS of a process tree, the kernel's
  per-socket UDP drop counts, and the Prometheus text parser for
  ``recordings_rtp_packets_dropped{reason=...}``.

And the I/O around them, each runnable as its own process so a blast never
shares a GIL with the service it measures:

* ``python -m tests.security.fuzz udp --role source|stranger ...``: plain
  blocking sockets. ``source`` is the latched sender: it sends real VP8 and
  Opus (encoded once with PyAV, looped with continuous sequence numbers and
  timestamps, a keyframe at each loop and on PLI/FIR) plus RTCP Sender
  Reports, and interleaves mutations of its own streams *from the same
  socket*. ``stranger`` sends everything from other sockets.
* ``python -m tests.security.fuzz control ...``: a Trio client that sends the
  malformed control messages over real WebSockets and counts every reply.
* ``python -m tests.security.fuzz --report FIGURES.json``: rewrite the
  figures table of ``docs/security.md`` from a run's figures (the test writes
  that JSON when ``FUZZ_FIGURES`` names a path).

Every sub-command prints one JSON object on stdout when it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import select
import socket
import statistics
import struct
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_recorder.rtp.packet import RtpPacket, serialize_rtp
from edge_recorder.rtp.rtcp import (
    NTP_UNIX_EPOCH_OFFSET_S,
    Bye,
    Fir,
    GenericNack,
    Pli,
    ReceiverReport,
    ReportBlock,
    SenderReport,
    SourceDescription,
    seconds_to_ntp,
    serialize_rtcp,
)

UDP_MAX_PAYLOAD = 65_507  # IPv4: 65 535 - 20 (IP) - 8 (UDP)

# --------------------------------------------------------------------------
# Datagrams
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamTemplate:
    """What one stream looks like on the wire, for mutations that stay close to valid."""

    payload_type: int
    ssrc: int
    clock_rate: int
    ports: tuple[int, ...]  # (rtp,) when muxed, (rtp, rtcp) otherwise
    samples: tuple[bytes, ...]  # valid RTP payloads of this stream (real codec output)


DATAGRAM_KINDS: dict[str, float] = {
    # kind: weight. Random bytes dominate the stranger's share; the latched
    # source mostly sends near-valid packets (see ``origin_weights``).
    "random-small": 14,
    "random-mtu": 8,
    "random-jumbo": 3,  # 1 501 .. 9 000 bytes: IP-fragmented on a 1500 MTU path
    "random-huge": 1,  # up to 65 507
    "bit-flip": 10,
    "truncated": 8,
    "extended": 4,
    "wrong-version": 4,
    "csrc-overrun": 4,
    "bad-extension-length": 6,
    "bad-padding": 6,
    "sequence-jump": 6,
    "timestamp-jump": 3,
    "wrong-ssrc": 4,
    "wrong-payload-type": 4,
    "rtcp-range-pt": 4,  # PT 64..95: the second byte reads as RTCP 192..223
    "rtcp-bogus-length": 6,
    "rtcp-truncated": 3,
    "nack-flood": 3,
    "pli-fir-flood": 3,
    "sr-flood": 3,
    "bye-flood": 2,
    "rtcp-unknown": 2,
    "empty": 1,
}


def origin_weights(origin: str) -> dict[str, float]:
    """The mix per origin: a stranger sends more garbage, the source more near-valid packets."""
    weights = dict(DATAGRAM_KINDS)
    if origin == "source":
        for kind in ("random-small", "random-mtu"):
            weights[kind] /= 3
    return weights


class DatagramFuzzer:
    """Seeded generator of hostile datagrams for a session's ports.

    Args:
        rng: the seeded generator (the only source of randomness).
        templates: the session's streams.
        origin: ``"source"`` or ``"stranger"``; sets the mix of kinds.
    """

    def __init__(self, rng: random.Random, templates: Sequence[StreamTemplate], *, origin: str) -> None:
        self.rng = rng
        self.templates = list(templates)
        weights = origin_weights(origin)
        self._kinds = list(weights)
        self._cum = []
        total = 0.0
        for kind in self._kinds:
            total += weights[kind]
            self._cum.append(total)
        # One pool of random bytes sliced at random offsets: randbytes(65507)
        # per datagram would cost more than sending it.
        self._pool = rng.randbytes(1 << 20)
        self._sequence = rng.randrange(1 << 16)

    def _noise(self, n: int) -> bytes:
        start = self.rng.randrange(len(self._pool) - n) if n < len(self._pool) else 0
        return self._pool[start : start + n]

    def _valid_rtp(self, t: StreamTemplate, **over: Any) -> bytes:
        payload = self.rng.choice(t.samples) if t.samples else self._noise(100)
        self._sequence = (self._sequence + 1) & 0xFFFF
        packet = RtpPacket(
            payload_type=over.get("payload_type", t.payload_type),
            sequence_number=over.get("sequence_number", self._sequence),
            timestamp=over.get("timestamp", self.rng.getrandbits(32)),
            ssrc=over.get("ssrc", t.ssrc),
            payload=payload[: self.rng.randrange(1, 1100)] if len(payload) > 1100 else payload,
            marker=self.rng.random() < 0.3,
        )
        return serialize_rtp(packet)

    def next(self) -> tuple[str, int, bytes]:
        """One datagram: ``(kind, destination port, bytes)``."""
        x = self.rng.random() * self._cum[-1]
        lo, hi = 0, len(self._cum) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self._cum[mid] < x:
                lo = mid + 1
            else:
                hi = mid
        kind = self._kinds[lo]
        t = self.rng.choice(self.templates)
        port = self.rng.choice(t.ports)
        return kind, port, getattr(self, "_" + kind.replace("-", "_"))(t)

    def take(self, n: int) -> Iterator[tuple[str, int, bytes]]:
        for _ in range(n):
            yield self.next()

    # -- random ------------------------------------------------------------

    def _random_small(self, t: StreamTemplate) -> bytes:
        return self._noise(self.rng.randrange(1, 64))

    def _random_mtu(self, t: StreamTemplate) -> bytes:
        return self._noise(self.rng.randrange(64, 1501))

    def _random_jumbo(self, t: StreamTemplate) -> bytes:
        return self._noise(self.rng.randrange(1501, 9001))

    def _random_huge(self, t: StreamTemplate) -> bytes:
        return self._noise(self.rng.randrange(9001, UDP_MAX_PAYLOAD + 1))

    def _empty(self, t: StreamTemplate) -> bytes:
        return b""

    # -- mutated RTP ---------------------------------------------------------

    def _bit_flip(self, t: StreamTemplate) -> bytes:
        data = bytearray(self._valid_rtp(t))
        for _ in range(self.rng.randrange(1, 9)):
            # Mostly in the header, where the parser decides.
            i = self.rng.randrange(min(len(data), 24)) if self.rng.random() < 0.7 else self.rng.randrange(len(data))
            data[i] ^= 1 << self.rng.randrange(8)
        return bytes(data)

    def _truncated(self, t: StreamTemplate) -> bytes:
        data = self._valid_rtp(t)
        return data[: self.rng.randrange(0, min(len(data), 40))]

    def _extended(self, t: StreamTemplate) -> bytes:
        return self._valid_rtp(t) + self._noise(self.rng.randrange(1, 3000))

    def _wrong_version(self, t: StreamTemplate) -> bytes:
        data = bytearray(self._valid_rtp(t))
        data[0] = (data[0] & 0x3F) | (self.rng.choice((0, 1, 3)) << 6)
        return bytes(data)

    def _csrc_overrun(self, t: StreamTemplate) -> bytes:
        data = bytearray(self._valid_rtp(t))
        data[0] = (data[0] & 0xF0) | self.rng.randrange(1, 16)  # CC says up to 60 more header bytes
        return bytes(data[: self.rng.randrange(12, 12 + 4 * (data[0] & 0x0F) + 1)])

    def _bad_extension_length(self, t: StreamTemplate) -> bytes:
        header = bytearray(self._valid_rtp(t)[:12])
        header[0] |= 0x10  # X
        profile = self.rng.choice((0xBEDE, 0x1000, self.rng.getrandbits(16)))
        words = self.rng.choice((0xFFFF, self.rng.randrange(1, 0x10000), 0))
        body = self._noise(self.rng.randrange(0, 64))
        if profile == 0xBEDE and body and self.rng.random() < 0.5:
            # One-byte elements (RFC 8285 §4.2) whose own lengths overrun the block.
            body = bytes([(self.rng.randrange(1, 15) << 4) | 15]) + body
        return bytes(header) + struct.pack("!HH", profile, words) + body

    def _bad_padding(self, t: StreamTemplate) -> bytes:
        data = bytearray(self._valid_rtp(t))
        data[0] |= 0x20  # P
        data[-1] = self.rng.choice((0, 255, len(data) - 11, len(data), self.rng.randrange(256))) & 0xFF
        return bytes(data)

    def _sequence_jump(self, t: StreamTemplate) -> bytes:
        self._sequence = (self._sequence + self.rng.choice((1000, 20000, 32767, 32768, 40000))) & 0xFFFF
        return self._valid_rtp(t)

    def _timestamp_jump(self, t: StreamTemplate) -> bytes:
        return self._valid_rtp(t, timestamp=self.rng.choice((0, 0xFFFFFFFF, 0x80000000, self.rng.getrandbits(32))))

    def _wrong_ssrc(self, t: StreamTemplate) -> bytes:
        return self._valid_rtp(t, ssrc=self.rng.getrandbits(32))

    def _wrong_payload_type(self, t: StreamTemplate) -> bytes:
        return self._valid_rtp(t, payload_type=self.rng.choice([p for p in range(128) if p != t.payload_type and not 64 <= p <= 95]))

    def _rtcp_range_pt(self, t: StreamTemplate) -> bytes:
        return self._valid_rtp(t, payload_type=self.rng.randrange(64, 96))

    # -- RTCP ----------------------------------------------------------------

    def _sr(self, t: StreamTemplate, ssrc: int | None = None) -> SenderReport:
        return SenderReport(
            ssrc=t.ssrc if ssrc is None else ssrc,
            ntp_timestamp=self.rng.getrandbits(64),
            rtp_timestamp=self.rng.getrandbits(32),
            packet_count=self.rng.getrandbits(32),
            octet_count=self.rng.getrandbits(32),
            reports=[ReportBlock(ssrc=self.rng.getrandbits(32)) for _ in range(self.rng.randrange(0, 4))],
        )

    def _rtcp_bogus_length(self, t: StreamTemplate) -> bytes:
        data = bytearray(serialize_rtcp([self._sr(t), SourceDescription(chunks=[(t.ssrc, [(1, b"x@y")])])]))
        # Lie in the first or the second packet's length word.
        at = 2 if self.rng.random() < 0.5 else 4 * (struct.unpack_from("!H", data, 2)[0] + 1) + 2
        if at + 2 <= len(data):
            struct.pack_into("!H", data, at, self.rng.choice((0, 1, 0xFFFF, self.rng.randrange(0x10000))))
        return bytes(data)

    def _rtcp_truncated(self, t: StreamTemplate) -> bytes:
        data = serialize_rtcp([self._sr(t), ReceiverReport(ssrc=1, reports=[ReportBlock(ssrc=t.ssrc)])])
        return data[: self.rng.randrange(1, len(data))]

    def _nack_flood(self, t: StreamTemplate) -> bytes:
        # Up to ~1400 bytes of NACK: every FCI asks for 17 packets.
        lost = sorted({self.rng.randrange(1 << 16) for _ in range(self.rng.randrange(1, 300))})
        return serialize_rtcp([GenericNack(sender_ssrc=self.rng.getrandbits(32), media_ssrc=t.ssrc, lost=lost)])

    def _pli_fir_flood(self, t: StreamTemplate) -> bytes:
        packets: list[Any] = []
        for _ in range(self.rng.randrange(1, 40)):
            if self.rng.random() < 0.5:
                packets.append(Pli(sender_ssrc=self.rng.getrandbits(32), media_ssrc=t.ssrc))
            else:
                packets.append(Fir(sender_ssrc=self.rng.getrandbits(32), entries=[(t.ssrc, self.rng.randrange(256))]))
        return serialize_rtcp(packets)

    def _sr_flood(self, t: StreamTemplate) -> bytes:
        # Sender Reports for the real SSRC carrying absurd NTP times, and for
        # SSRCs nobody declared (an unbounded SR table would grow with them).
        return serialize_rtcp([self._sr(t, None if self.rng.random() < 0.5 else self.rng.getrandbits(32)) for _ in range(self.rng.randrange(1, 20))])

    def _bye_flood(self, t: StreamTemplate) -> bytes:
        reason = self._noise(self.rng.randrange(0, 255)) if self.rng.random() < 0.5 else None
        return serialize_rtcp([Bye(ssrcs=[t.ssrc] + [self.rng.getrandbits(32) for _ in range(self.rng.randrange(0, 30))], reason=reason)])

    def _rtcp_unknown(self, t: StreamTemplate) -> bytes:
        pt = self.rng.choice((195, 196, 199, 207, 208, 209, 210, 211, 223))
        body = self._noise(4 * self.rng.randrange(0, 100))
        return struct.pack("!BBH", 0x80 | self.rng.randrange(32), pt, len(body) // 4) + body


# --------------------------------------------------------------------------
# Control messages
# --------------------------------------------------------------------------

CONTROL_CHARS = "".join(chr(c) for c in [*range(0, 32), 127, *range(0x80, 0xA0)])
HOSTILE_TEXT = [
    "\x00", "\x1b[2J\x1b[31mred", "line\nbreak\r\n", "\u202eevil\u202c", "\u200b\u200d\ufeff",
    "e\u0301\u0301\u0301\u0301\u0301\u0301\u0301\u0301", "\U0001f600" * 64, "../../etc/passwd",
    "%s%n%x", "' OR 1=1 --", "<script>", "\ud7ff\ue000\uffff", "A" * 257, "\t", " ",
]  # fmt: skip

CONTROL_KINDS: dict[str, float] = {
    "invalid-json": 14,
    "truncated-json": 8,
    "wrong-types": 12,
    "huge-string": 3,
    "deep-nesting": 5,
    "unknown-method": 8,
    "batch": 5,
    "binary-garbage": 5,
    "binary-json": 3,
    "oversize": 1,  # > 256 KiB: -32600, the connection stays open
    "duplicate-keys": 3,
    "bad-numbers": 4,
    "hostile-ids": 12,
    "unknown-session": 10,
    "notification": 3,
    "hostile-display-name": 0.3,  # a real addStream + removeStream on the live session
}


@dataclass
class ControlMessage:
    kind: str
    frame: str | bytes
    expects_reply: bool = True
    # For "hostile-display-name": the producer id to remove afterwards.
    producer_id: str | None = None


class ControlFuzzer:
    """Seeded generator of malformed or hostile JSON-RPC frames.

    It never generates a request that would change the live session other
    than by adding (then removing) a stream: no valid ``recording.start``
    (a new session costs a media worker) and no ``recording.stop`` of a
    session that exists.

    Args:
        rng: the seeded generator.
        live_session_id: the session recording meanwhile.
        stream_params: a valid ``recording.addStream`` params object for it,
            which the hostile-display-name case copies.
    """

    METHODS = (
        "recorder.info", "recording.start", "recording.addStream", "recording.removeStream",
        "recording.setActiveSpeaker", "recording.stop", "recording.get", "recording.list",
    )  # fmt: skip

    def __init__(self, rng: random.Random, live_session_id: str, stream_params: dict[str, Any]) -> None:
        self.rng = rng
        self.live = live_session_id
        self.stream_params = stream_params
        self._ids = 0
        self._kinds = list(CONTROL_KINDS)
        self._weights = [CONTROL_KINDS[k] for k in self._kinds]
        self._producers = 0

    def _id(self) -> int:
        self._ids += 1
        return self._ids

    def _text(self, n: int) -> str:
        alphabet = CONTROL_CHARS + "abcXYZ019 /\\\"'{}[]:,.\u00e9\u4e2d\U0001f600"
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    def _hostile(self) -> Any:
        choice = self.rng.randrange(9)
        if choice == 0:
            return self.rng.choice(HOSTILE_TEXT)
        if choice == 1:
            return self._text(self.rng.randrange(0, 300))
        if choice == 2:
            return self.rng.choice((None, True, 0, -1, 2**63, 1.5, [], {}, [1], {"a": 1}))
        if choice == 3:
            return "x" * self.rng.choice((0, 128, 129, 256, 257, 10_000))
        if choice == 4:
            return self.live + self.rng.choice(("\x00", "/", " ", "\n", ".."))
        return self.rng.choice(HOSTILE_TEXT) + self._text(8)

    def _fresh_session_id(self) -> str:
        """A well-formed session id that is not the live session's."""
        while True:
            candidate = "nope-" + "".join(self.rng.choice("abcdef0123456789") for _ in range(12))
            if candidate != self.live:
                return candidate

    def next(self) -> ControlMessage:
        kind = self.rng.choices(self._kinds, self._weights)[0]
        message: ControlMessage = getattr(self, "_" + kind.replace("-", "_"))(kind)
        return message

    def _req(self, method: Any, params: Any = None, **extra: Any) -> dict[str, Any]:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self._id(), "method": method}
        if params is not None:
            message["params"] = params
        message.update(extra)
        return message

    def _invalid_json(self, kind: str) -> ControlMessage:
        frame = self.rng.choice(
            (
                "{not json", "", " ", "null", "true", "42", '"str"', "{", "}", "[", "{'a': 1}", '{"a":}',
                '{"jsonrpc":"2.0","id":1,"method":"recorder.info"', "\x00" * 10, "\ufeff{}",
                self._text(self.rng.randrange(1, 200)),
            )
        )  # fmt: skip
        return ControlMessage(kind, frame)

    def _truncated_json(self, kind: str) -> ControlMessage:
        text = json.dumps(self._req("recording.get", {"sessionId": self.live}))
        return ControlMessage(kind, text[: self.rng.randrange(1, len(text) - 1)])

    def _wrong_types(self, kind: str) -> ControlMessage:
        m = self._req(self.rng.choice(self.METHODS))
        field_ = self.rng.choice(("jsonrpc", "id", "method", "params"))
        m[field_] = self.rng.choice((None, 2, 2.0, "1.0", True, [], {}, [1, 2], {"x": []}, "x" * 300, -1.5))
        if field_ == "params" and isinstance(m[field_], dict) and not m[field_]:
            m[field_] = 7
        if self.rng.random() < 0.2:
            del m[self.rng.choice(("jsonrpc", "method"))]
        return ControlMessage(kind, json.dumps(m))

    def _huge_string(self, kind: str) -> ControlMessage:
        n = self.rng.randrange(10_000, 250_000)
        where = self.rng.randrange(3)
        if where == 0:
            m = self._req("x" * n)
        elif where == 1:
            m = self._req("recording.get", {"sessionId": "s" * n})
        else:
            m = self._req("recording.stop", {"sessionId": self._fresh_session_id(), "reason": "r" * n})
        return ControlMessage(kind, json.dumps(m))

    def _deep_nesting(self, kind: str) -> ControlMessage:
        depth = self.rng.choice((33, 64, 1000, 10_000, 100_000))
        opener, closer = ("[", "]") if self.rng.random() < 0.5 else ('{"a":', "}")
        inner = opener * depth + "1" + closer * depth
        if self.rng.random() < 0.5:
            return ControlMessage(kind, '{"jsonrpc":"2.0","id":%d,"method":"recording.get","params":{"sessionId":%s}}' % (self._id(), inner))
        return ControlMessage(kind, inner)

    def _unknown_method(self, kind: str) -> ControlMessage:
        method = self.rng.choice(("recording.explode", "rpc.discover", "__proto__", "constructor", "recording.", ".", "Recording.Start", self._text(20)))
        return ControlMessage(kind, json.dumps(self._req(method, {"sessionId": self.live})))

    def _batch(self, kind: str) -> ControlMessage:
        items = [self._req("recorder.info") for _ in range(self.rng.randrange(0, 50))]
        return ControlMessage(kind, json.dumps(items))

    def _binary_garbage(self, kind: str) -> ControlMessage:
        return ControlMessage(kind, self.rng.randbytes(self.rng.randrange(1, 2000)))

    def _binary_json(self, kind: str) -> ControlMessage:
        return ControlMessage(kind, json.dumps(self._req("recording.get", {"sessionId": self._fresh_session_id()})).encode())

    def _oversize(self, kind: str) -> ControlMessage:
        n = self.rng.randrange(262_145, 1_000_000)
        return ControlMessage(kind, '{"jsonrpc":"2.0","id":1,"method":"recorder.info","pad":"' + "p" * n + '"}')

    def _duplicate_keys(self, kind: str) -> ControlMessage:
        return ControlMessage(kind, '{"jsonrpc":"2.0","id":%d,"method":"recording.get","method":"recording.stop","params":{"sessionId":"%s"}}' % (self._id(), self.live))

    def _bad_numbers(self, kind: str) -> ControlMessage:
        value = self.rng.choice(("NaN", "Infinity", "-Infinity", "1e999", "9" * 5000, "-0", "1E400", '"\\ud800"', '"\\udfff\\ud800"'))
        return ControlMessage(kind, '{"jsonrpc":"2.0","id":%s,"method":"recorder.info"}' % value)

    def _hostile_ids(self, kind: str) -> ControlMessage:
        method = self.rng.choice(("recording.start", "recording.get", "recording.addStream", "recording.removeStream", "recording.setActiveSpeaker", "recording.stop"))
        if method == "recording.start":
            # roomId is always broken: a valid start would cost a media worker.
            params: dict[str, Any] = {"roomId": self.rng.choice(("", "a/b", "a b", "..", ".", "x" * 129, "\x00", 5, None, ["r"])), "sessionId": self._hostile()}
            if self.rng.random() < 0.5:
                params["metadata"] = self.rng.choice(({"k": "v" * 20_000}, "meta", [1], {"deep": [[[[[[1]]]]]]}))
                params["layout"] = self._hostile()
        elif method == "recording.stop":
            params = {"sessionId": self.rng.choice((self._fresh_session_id(), "", "a/b", 7, None, "\x00" + self.live)), "reason": self._hostile()}
        elif method == "recording.addStream":
            params = json.loads(json.dumps(self.stream_params))
            params["sessionId"] = self.rng.choice((self._fresh_session_id(), self.live))
            # At least one field is hostile, so it is refused (or unknown session).
            target = self.rng.choice(("producerId", "peerId", "kind", "source", "rtpParameters", "displayName", "codec"))
            if target == "codec":
                codec = params["rtpParameters"]["codecs"][0]
                codec[self.rng.choice(("mimeType", "payloadType", "clockRate", "channels", "parameters", "rtcpFeedback"))] = self._hostile()
                params["producerId"] = "\x01" + params["producerId"]
            elif target == "displayName":
                params["displayName"] = "x" * 257 + self.rng.choice(HOSTILE_TEXT)
            else:
                params[target] = self._hostile() if target != "producerId" else self.rng.choice(("", "a/b", "..", "\x00", 5, "x" * 129))
            if params["sessionId"] == self.live and target in ("rtpParameters", "codec", "kind", "source", "peerId"):
                params["producerId"] = "\x02broken"  # never a valid stream on the live session
        else:
            params = {"sessionId": self.rng.choice((self._hostile(), self._fresh_session_id())), "producerId": self._hostile(), "peerId": self._hostile(), "roomId": self._hostile()}
        return ControlMessage(kind, json.dumps(self._req(method, params)))

    def _unknown_session(self, kind: str) -> ControlMessage:
        sid = self._fresh_session_id()
        method = self.rng.choice(("recording.get", "recording.stop", "recording.removeStream", "recording.setActiveSpeaker", "recording.addStream"))
        params: dict[str, Any] = {"sessionId": sid, "producerId": "p1", "peerId": "peer"}
        if method == "recording.addStream":
            params = dict(self.stream_params, sessionId=sid)
        return ControlMessage(kind, json.dumps(self._req(method, params)))

    def _notification(self, kind: str) -> ControlMessage:
        m = {"jsonrpc": "2.0", "method": self.rng.choice(("recording.stop", "recorder.info", "x")), "params": {"sessionId": self._fresh_session_id()}}
        return ControlMessage(kind, json.dumps(m), expects_reply=False)

    def _hostile_display_name(self, kind: str) -> ControlMessage:
        self._producers += 1
        params = json.loads(json.dumps(self.stream_params))
        producer = f"fuzz-producer-{self._producers}"
        params.update(
            sessionId=self.live,
            producerId=producer,
            peerId=f"fuzz-peer-{self._producers}",
            displayName=self.rng.choice(HOSTILE_TEXT[:12]) + self._text(self.rng.randrange(0, 40)),
        )
        params["displayName"] = params["displayName"][:256]
        params["rtpParameters"]["encodings"] = [{"ssrc": self.rng.getrandbits(32)}]
        return ControlMessage(kind, json.dumps(self._req("recording.addStream", params)), producer_id=producer)


# --------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------


def latency_summary(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds."""
    if not samples_s:
        return {"count": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    ordered = sorted(samples_s)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {
        "count": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "over_50ms": sum(1 for s in ordered if s > 0.05),
    }


def rss_bytes(pid: int, *, children: bool = False) -> int:
    """RSS of a process (and, with ``children``, of its descendants)."""
    import psutil

    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    if children:
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.NoSuchProcess:
                pass
    return int(total)


def kernel_udp_drops(pid: int, ports: Sequence[int]) -> dict[int, int]:
    """The kernel's receive-buffer drops per local UDP port of ``pid``'s namespace (``/proc/net/udp`` "drops")."""
    wanted = set(ports)
    out: dict[int, int] = {}
    for name in ("udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            port = int(parts[1].rsplit(":", 1)[1], 16)
            if port in wanted:
                out[port] = out.get(port, 0) + int(parts[-1])
    return out


_METRIC_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([-+0-9.eEinfNa]+)$")


def parse_prometheus(body: str) -> dict[str, dict[str, float]]:
    """``name -> {labels-string: value}`` from the text exposition format."""
    out: dict[str, dict[str, float]] = {}
    for line in body.splitlines():
        m = _METRIC_RE.match(line)
        if m:
            out.setdefault(m.group(1), {})[m.group(2) or ""] = float(m.group(3))
    return out


def drops_by_reason(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    drops: dict[str, float] = {}
    series = metrics.get("edge_recorder_rtp_packets_dropped_total") or metrics.get("recordings_rtp_packets_dropped_total") or {}
    for labels, value in series.items():
        m = re.search(r'reason="([^"]*)"', labels)
        if m:
            drops[m.group(1)] = value
    return drops


# --------------------------------------------------------------------------
# The UDP blaster (a process of its own)
# --------------------------------------------------------------------------


def _encode_loop(kind: str, seconds: float) -> list[tuple[bytes, bool]]:
    """Real codec output, one GOP, to be looped: [(bitstream, keyframe)] per frame/packet."""
    from edge_recorder.demo.sources import CameraSource, OpusEncoder, ToneSource, VideoEncoder

    if kind == "video":
        source = CameraSource("Fuzz", (200, 40, 40))
        encoder = VideoEncoder("vp8", source.width, source.height, 30, 500, keyframe_interval_s=seconds * 2)
        frames: list[tuple[bytes, bool]] = []
        for k in range(int(seconds * 30)):
            frames.extend(encoder.encode(source.frame(k / 30)))
        return frames
    tone = ToneSource(440.0, beep_period_s=1.0)
    opus = OpusEncoder()
    packets: list[tuple[bytes, bool]] = []
    for k in range(int(seconds * 50)):
        packets.extend((data, False) for data in opus.encode(tone.block(k * 960)))
    return packets


@dataclass
class _LiveStream:
    """The source role's real sender for one stream, looping pre-encoded media."""

    spec: dict[str, Any]
    sock: socket.socket
    target: tuple[str, int]
    frames: list[tuple[bytes, bool]]
    packetizer: Any
    period_s: float
    clock_rate: int
    index: int = 0
    due: float = 0.0
    ts_base: int = 0
    sent_units: int = 0
    packets: int = 0
    octets: int = 0
    sr_due: float = 0.0
    keyframe_requests: int = 0
    feedback: Counter[str] = field(default_factory=Counter)


def _blast_udp(args: argparse.Namespace) -> dict[str, Any]:
    from edge_recorder.errors import ParseError
    from edge_recorder.rtp.packetize import OpusPacketizer, Vp8Packetizer
    from edge_recorder.rtp.rtcp import parse_rtcp_untrusted

    streams = json.loads(args.streams)
    ip = args.ip
    rng = random.Random(args.seed)
    live: list[_LiveStream] = []
    templates: list[StreamTemplate] = []
    sockets: list[socket.socket] = []
    for s in streams:
        frames = _encode_loop(s["kind"], 2.0)
        samples = tuple(p.payload for d, k in frames[:20] for p in _packetize_once(s, d, k))
        ports = tuple(sorted({s["port"], s["rtcpPort"]}))
        templates.append(StreamTemplate(s["payloadType"], s["ssrc"], s["clockRate"], ports, samples))
        if args.role == "source":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((args.bind, 0))
            sock.setblocking(False)
            sockets.append(sock)
            cls = Vp8Packetizer if s["kind"] == "video" else OpusPacketizer
            live.append(
                _LiveStream(
                    spec=s, sock=sock, target=(ip, s["port"]), frames=frames,
                    packetizer=cls(payload_type=s["payloadType"], ssrc=s["ssrc"]),
                    period_s=1 / 30 if s["kind"] == "video" else 0.02, clock_rate=s["clockRate"],
                    ts_base=rng.getrandbits(32),
                )
            )  # fmt: skip
    if args.role == "stranger":
        for _ in range(4):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((args.bind, 0))
            sock.setblocking(False)
            sockets.append(sock)
    for sock in sockets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
    fuzzer = DatagramFuzzer(rng, templates, origin=args.role)
    by_port = {port: st.sock for st in live for port in (st.spec["port"], st.spec["rtcpPort"])}

    sent: Counter[str] = Counter()
    sent_per_port: Counter[int] = Counter()
    send_errors = 0
    legit_sent: Counter[int] = Counter()
    start = time.monotonic()
    fuzz_start = start + args.warmup
    end = start + args.warmup + args.duration
    for st in live:
        st.due = start
        st.sr_due = start
    total = 0
    while True:
        now = time.monotonic()
        if now >= end and total >= args.count:
            break
        if now >= end + 30:
            break  # never run away: report what was sent
        # 1. Real media, on time (the source role only).
        for st in live:
            while st.due <= now:
                _send_media_unit(st, legit_sent)
            if st.sr_due <= now:
                elapsed = st.sent_units * st.period_s
                report = SenderReport(
                    ssrc=st.spec["ssrc"],
                    ntp_timestamp=seconds_to_ntp(time.time() + NTP_UNIX_EPOCH_OFFSET_S),
                    rtp_timestamp=(st.ts_base + round(elapsed * st.clock_rate)) % (1 << 32),
                    packet_count=st.packets & 0xFFFFFFFF,
                    octet_count=st.octets & 0xFFFFFFFF,
                )
                with contextlib.suppress(OSError):
                    # To the RTCP port (the RTP port when muxed), from the RTP socket.
                    st.sock.sendto(serialize_rtcp([report]), (ip, st.spec["rtcpPort"]))
                    legit_sent[st.spec["rtcpPort"]] += 1
                st.sr_due += 1.0
            # Feedback from the recorder: PLI/FIR restart the loop at its keyframe.
            while True:
                try:
                    data, _ = st.sock.recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                try:
                    packets = parse_rtcp_untrusted(data)
                except ParseError:
                    st.feedback["unparsable"] += 1
                    continue
                for p in packets:
                    st.feedback[type(p).__name__] += 1
                    if isinstance(p, (Pli, Fir)):
                        st.keyframe_requests += 1
                        st.index = 0
        # 2. Fuzz at a capped rate: what is due by now, at most a burst.
        if now >= fuzz_start and total < args.count:
            due = min(args.count, int((now - fuzz_start) / args.duration * args.count) + 1)
            burst = min(due - total, 64)
            for _ in range(burst):
                kind, port, data = fuzzer.next()
                # The source sends each one from the latched socket of the
                # stream it targets; the stranger from any of its own.
                sock = by_port[port] if live else rng.choice(sockets)
                try:
                    sock.sendto(data, (ip, port))
                except BlockingIOError:
                    # The local send buffer is full: wait for it (count as sent once it is).
                    select.select([], [sock], [], 0.05)
                    try:
                        sock.sendto(data, (ip, port))
                    except OSError:
                        send_errors += 1
                        continue
                except OSError:
                    send_errors += 1  # e.g. ECONNREFUSED from an earlier ICMP
                    continue
                sent[kind] += 1
                sent_per_port[port] += 1
                total += 1
        time.sleep(0.0005)
    feedback: Counter[str] = Counter()
    keyframe_requests = 0
    for st in live:
        feedback.update(st.feedback)
        keyframe_requests += st.keyframe_requests
    for sock in sockets:
        sock.close()
    return {
        "role": args.role,
        "seed": args.seed,
        "fuzz_sent": total,
        "fuzz_by_kind": dict(sorted(sent.items())),
        "fuzz_per_port": {str(k): v for k, v in sorted(sent_per_port.items())},
        "legit_per_port": {str(k): v for k, v in sorted(legit_sent.items())},
        "send_errors": send_errors,
        "feedback_received": dict(feedback),
        "keyframe_requests_received": keyframe_requests,
        "wall_s": round(time.monotonic() - start, 2),
    }


def _packetize_once(spec: dict[str, Any], data: bytes, keyframe: bool) -> list[RtpPacket]:
    from edge_recorder.rtp.packetize import OpusPacketizer, Vp8Packetizer

    if spec["kind"] == "video":
        return Vp8Packetizer(payload_type=spec["payloadType"], ssrc=spec["ssrc"]).packetize(data, 0, keyframe=keyframe)
    return OpusPacketizer(payload_type=spec["payloadType"], ssrc=spec["ssrc"]).packetize(data, 0)


def _send_media_unit(st: _LiveStream, legit_sent: Counter[int]) -> None:
    data, keyframe = st.frames[st.index]
    st.index = (st.index + 1) % len(st.frames)
    timestamp = (st.ts_base + round(st.sent_units * st.period_s * st.clock_rate)) % (1 << 32)
    if st.spec["kind"] == "video":
        packets = st.packetizer.packetize(data, timestamp, keyframe=keyframe)
    else:
        packets = st.packetizer.packetize(data, timestamp)
        level_id = st.spec.get("audioLevelId")
        if level_id:
            for p in packets:
                p.extensions[level_id] = bytes([0x80 | 20])  # voice, -20 dBov
    for p in packets:
        try:
            st.sock.sendto(serialize_rtp(p), st.target)
        except BlockingIOError:
            select.select([], [st.sock], [], 0.05)
            with contextlib.suppress(OSError):
                st.sock.sendto(serialize_rtp(p), st.target)
        except OSError:
            continue
        st.packets += 1
        st.octets += len(p.payload)
        legit_sent[st.target[1]] += 1
    st.sent_units += 1
    st.due += st.period_s


# --------------------------------------------------------------------------
# The control fuzzer (a process of its own)
# --------------------------------------------------------------------------


async def _control_fuzz(args: argparse.Namespace) -> dict[str, Any]:
    import trio
    from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

    rng = random.Random(args.seed)
    stream_params = json.loads(args.stream_params)
    fuzzer = ControlFuzzer(rng, args.session_id, stream_params)
    headers = [("Authorization", f"Bearer {args.token}")] if args.token else []
    sent: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    closes: Counter[str] = Counter()
    unanswered = 0
    display_names: Counter[str] = Counter()
    handshake: Counter[str] = Counter()
    queue: list[ControlMessage] = [fuzzer.next() for _ in range(args.count)]
    budget = {"next": 0}
    t0 = trio.current_time()

    async def one_connection(index: int) -> None:
        nonlocal unanswered
        while budget["next"] < len(queue):
            try:
                async with open_websocket_url(args.url, extra_headers=[(k.encode(), v.encode()) for k, v in headers], max_message_size=8 << 20) as ws:
                    await _drive(ws, index)
            except HandshakeError as exc:
                handshake[f"refused-{type(exc).__name__}"] += 1
                await trio.sleep(0.2)
            except ConnectionClosed as exc:
                closes[str(exc.reason.code if exc.reason else None)] += 1
            except OSError as exc:
                handshake[f"oserror-{exc.errno}"] += 1
                await trio.sleep(0.2)

    async def _drive(ws: Any, index: int) -> None:
        nonlocal unanswered
        outstanding = {"n": 0}
        waiters: dict[Any, trio.Event] = {}

        async def reader() -> None:
            try:
                while True:
                    raw = await ws.get_message()
                    try:
                        reply = json.loads(raw)
                    except ValueError:
                        codes["unparsable-reply"] += 1
                        continue
                    if isinstance(reply, dict) and "method" in reply and "id" not in reply:
                        continue  # a notification (recording.state)
                    err = reply.get("error") if isinstance(reply, dict) else None
                    waiter = waiters.pop(reply.get("id"), None) if isinstance(reply, dict) and isinstance(reply.get("id"), (int, str)) else None
                    if waiter is not None:
                        waiter.set()
                    codes[str(err.get("code")) if isinstance(err, dict) else "result"] += 1
                    outstanding["n"] -= 1
            except ConnectionClosed as exc:
                closes[str(exc.reason.code if exc.reason else None)] += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            try:
                while budget["next"] < len(queue):
                    message = queue[budget["next"]]
                    budget["next"] += 1
                    # Pace: each connection sends one message per ``interval``,
                    # and never more than 24 unanswered (the server's in-flight cap is 32).
                    deadline = t0 + (budget["next"] / len(queue)) * args.duration
                    await trio.sleep_until(deadline)
                    with trio.move_on_after(5):
                        while outstanding["n"] >= 24:
                            await trio.sleep(0.005)
                    if message.expects_reply:
                        outstanding["n"] += 1
                    sent[message.kind] += 1
                    if message.producer_id is not None:
                        added = waiters[json.loads(message.frame)["id"]] = trio.Event()
                    await ws.send_message(message.frame)
                    if message.producer_id is not None:
                        display_names["added"] += 1
                        # Take it out again so the live session's layout stays
                        # small. Only once the add is answered: a removeStream
                        # racing its addStream fails the session (see
                        # test_a_stream_removed_before_its_receiver_runs_...).
                        with trio.move_on_after(5):
                            await added.wait()
                        await trio.sleep(0.05)
                        remove = {"jsonrpc": "2.0", "id": f"rm-{message.producer_id}", "method": "recording.removeStream", "params": {"sessionId": args.session_id, "producerId": message.producer_id}}
                        outstanding["n"] += 1
                        await ws.send_message(json.dumps(remove))
                        display_names["removed"] += 1
                # Wait for the last replies.
                if outstanding["n"] > 0:
                    with trio.move_on_after(10):
                        while outstanding["n"] > 0:
                            await trio.sleep(0.01)
            except ConnectionClosed as exc:
                closes[str(exc.reason.code if exc.reason else None)] += 1
            finally:
                unanswered += max(0, outstanding["n"])
                nursery.cancel_scope.cancel()

    async def handshakes() -> None:
        # Peers that never get a JSON-RPC session: no token, a wrong path,
        # garbage instead of HTTP, and a few that send nothing at all.
        host, port = re.match(r"ws://([^:/]+):(\d+)", args.url).groups()  # type: ignore[union-attr]
        async with trio.open_nursery() as attempts:
            for i in range(args.handshakes):
                attempts.start_soon(one_handshake, host, int(port), i % 4)
                await trio.sleep(args.duration / max(1, args.handshakes))

    async def one_handshake(host: str, port: int, variant: int) -> None:
        try:
            async with await trio.open_tcp_stream(host, port) as stream:
                if variant == 0:
                    request = f"GET /control HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                elif variant == 1:
                    request = f"GET /nope HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {args.token}\r\n\r\n"
                elif variant == 2:
                    request = rng.randbytes(rng.randrange(1, 3000)).decode("latin-1")
                else:
                    request = ""
                if request:
                    await stream.send_all(request.encode("latin-1"))
                with trio.move_on_after(8) as scope:
                    answer = await stream.receive_some(4096)
                if scope.cancelled_caught:
                    handshake["no-answer-8s"] += 1
                else:
                    status = answer[:12].decode("latin-1", "replace") if answer else "closed"
                    handshake[status.strip() or "closed"] += 1
        except (OSError, trio.BrokenResourceError) as exc:
            handshake[f"error-{type(exc).__name__}"] += 1

    metrics_answers: Counter[str] = Counter()
    slow_closed_after_s: list[float] = []

    async def metrics_port() -> None:
        # The HTTP port: a few slow heads held open (slowloris), and hostile
        # requests, while the test keeps scraping /metrics.
        host, port = args.metrics.rsplit(":", 1)
        requests = [
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 40_000 + b"\r\n\r\n",  # head too large
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"b" * 100_000,  # body too large
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /metrics HTTP/1.0\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS ClientHello's start
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        ]

        async def slow() -> None:
            t = trio.current_time()
            try:
                async with await trio.open_tcp_stream(host, int(port)) as stream:
                    await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
                    with trio.move_on_after(args.duration):
                        while await stream.receive_some(4096):
                            pass
                slow_closed_after_s.append(round(trio.current_time() - t, 2))
            except (OSError, trio.BrokenResourceError):
                slow_closed_after_s.append(round(trio.current_time() - t, 2))

        async def hostile(data: bytes) -> None:
            try:
                async with await trio.open_tcp_stream(host, int(port)) as stream:
                    await stream.send_all(data)
                    with trio.move_on_after(10) as waited:
                        answer = await stream.receive_some(4096)
                        metrics_answers[answer[:12].decode("latin-1", "replace").strip() or "closed"] += 1
                    if waited.cancelled_caught:
                        metrics_answers["no answer in 10 s"] += 1
            except (OSError, trio.BrokenResourceError) as exc:
                metrics_answers[f"error-{type(exc).__name__}"] += 1

        async with trio.open_nursery() as n:
            for _ in range(args.metrics_slow):
                n.start_soon(slow)
            for i in range(60):
                n.start_soon(hostile, requests[i % len(requests)])
                await trio.sleep(args.duration / 60)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(handshakes)
        if args.metrics:
            nursery.start_soon(metrics_port)
        for i in range(args.connections):
            nursery.start_soon(one_connection, i)
    return {
        "sent": sum(sent.values()),
        "sent_by_kind": dict(sorted(sent.items())),
        "replies_by_code": dict(sorted(codes.items())),
        "unanswered": unanswered,
        "closes": dict(closes),
        "handshakes": dict(handshake),
        "display_name_streams": dict(display_names),
        "metrics_port": {"answers": dict(metrics_answers), "slow_heads_closed_after_s": sorted(slow_closed_after_s)},
        "wall_s": round(trio.current_time() - t0, 2),
    }


# --------------------------------------------------------------------------
# The figures table in docs/security.md
# --------------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
BEGIN, END = "<!-- fuzz-figures:begin -->", "<!-- fuzz-figures:end -->"


def figures_markdown(f: dict[str, Any]) -> str:
    """The figures of one run as the Markdown that goes between the markers."""
    lat = f["latency"]
    rows = [
        ("run", f"{f['date']}, {f['machine']}, {f['tree']}, seeds {f['seeds']}; hosts: {f['hosts']}"),
        ("recording", f"{f['recording_s']:.1f} s wall, status **{f['status']}**; output {f['output']['duration_s']:.1f} s, "
                      f"{f['output']['video_frames']} video frames, {f['output']['audio_frames']} audio frames, decodes with av.open"),
        ("datagrams sent at the session's ports", f"{f['datagrams']['fuzz_total']:,} hostile ({f['datagrams']['stranger']:,} from a stranger on another host, "
                                                  f"{f['datagrams']['source']:,} from the latched source's own sockets) + {f['datagrams']['legit']:,} real media/RTCP"),
        ("accounted for by the recorder", f"{f['accounting']['accounted']:,} of {f['accounting']['sent']:,} "
                                          f"({f['accounting']['ratio']:.3f}): accepted RTP {f['accounting']['rtp_accepted']:,}, "
                                          f"accepted RTCP {f['accounting']['rtcp_accepted']:,}, dropped and counted {f['accounting']['dropped']:,}, "
                                          f"kernel receive-buffer drops {f['accounting']['kernel_drops']:,}"),
        ("drops by reason", ", ".join(f"`{k}` {int(v):,}" for k, v in sorted(f["drops"].items(), key=lambda kv: -kv[1]))),
        ("feedback to the latched source", ", ".join(f"{k} {v}" for k, v in sorted(f["feedback"].items())) or "none"),
        ("malformed control messages", f"{f['control']['sent']:,} sent on {f['control']['connections']} connections, {f['control']['unanswered']} unanswered; "
                                       f"replies by code: " + ", ".join(f"{k} {v:,}" for k, v in f["control"]["replies_by_code"].items())),
        ("control closes / bad handshakes", f"closes by the server: {f['control']['closes'] or 'none'}; handshakes without the token, "
                                            f"on a wrong path, of garbage or silent: " + ", ".join(f"{k} {v}" for k, v in sorted(f["control"]["handshakes"].items()))),
        ("legitimate requests (recorder.info / recording.get every 50 ms)", f"{lat['count']} answered, none failed; p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, "
                                                                             f"max {lat['max_ms']} ms, {lat['over_50ms']} over 50 ms"),
        ("… before the fuzz / under the fuzz", _lat(f["latency_before_fuzz"]) + " / " + _lat(f["latency_under_fuzz"])),
        ("/metrics scrapes (every 1 s)", f"{f['metrics_latency']['count']}, p50 {f['metrics_latency']['p50_ms']} ms, max {f['metrics_latency']['max_ms']} ms"),
        ("metrics port, hostile requests", ", ".join(f"{k} {v}" for k, v in sorted(f["control"]["metrics_port"]["answers"].items()))
                                           + f"; {len(f['control']['metrics_port']['slow_heads_closed_after_s'])} slow heads closed after "
                                           + f"{min(f['control']['metrics_port']['slow_heads_closed_after_s'] or [0])}–{max(f['control']['metrics_port']['slow_heads_closed_after_s'] or [0])} s"),
        ("RSS, service process", f"{f['rss']['service_before_mib']:.1f} MiB → {f['rss']['service_after_mib']:.1f} MiB "
                                 f"(peak {f['rss']['service_peak_mib']:.1f}, growth {f['rss']['service_after_mib'] - f['rss']['service_before_mib']:+.1f} MiB)"),
        ("RSS, media worker", f"{f['rss']['worker_first_mib']:.1f} MiB → {f['rss']['worker_last_mib']:.1f} MiB (peak {f['rss']['worker_peak_mib']:.1f})"),
        ("CPU", f"service {f['cpu']['service_s']:.1f} s, worker {f['cpu']['worker_s']:.1f} s over {f['recording_s']:.1f} s"),
    ]  # fmt: skip
    lines = ["| figure | measured |", "| --- | --- |"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def _lat(summary: dict[str, Any]) -> str:
    return f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, max {summary['max_ms']} ms (n={summary['count']})"


def write_report(figures: dict[str, Any], doc: Path = DOC) -> None:
    text = doc.read_text()
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    doc.write_text(text[:start] + "\n" + figures_markdown(figures) + "\n" + text[stop:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.security.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--report", metavar="FIGURES_JSON", help="rewrite the figures table of docs/security.md")
    sub = parser.add_subparsers(dest="command")
    udp = sub.add_parser("udp", help="blast datagrams at a session's ports")
    udp.add_argument("--role", choices=("source", "stranger"), required=True)
    udp.add_argument("--ip", required=True, help="the recorder's address (addStream's ip)")
    udp.add_argument("--bind", default="0.0.0.0")
    udp.add_argument("--streams", required=True, help="JSON list of {kind, port, rtcpPort, payloadType, ssrc, clockRate, audioLevelId}")
    udp.add_argument("--count", type=int, required=True)
    udp.add_argument("--duration", type=float, required=True, help="seconds to spread the fuzz over")
    udp.add_argument("--warmup", type=float, default=0.0, help="seconds of real media only, first")
    udp.add_argument("--seed", type=int, default=1)
    ctl = sub.add_parser("control", help="send malformed control messages")
    ctl.add_argument("--url", required=True)
    ctl.add_argument("--token", default="")
    ctl.add_argument("--session-id", required=True)
    ctl.add_argument("--stream-params", required=True)
    ctl.add_argument("--count", type=int, required=True)
    ctl.add_argument("--duration", type=float, required=True)
    ctl.add_argument("--connections", type=int, default=4)
    ctl.add_argument("--handshakes", type=int, default=40)
    ctl.add_argument("--seed", type=int, default=1)
    ctl.add_argument("--metrics", default="", help="HOST:PORT of /metrics, to fuzz that port too")
    ctl.add_argument("--metrics-slow", type=int, default=6, help="slow request heads held open there")
    args = parser.parse_args(argv)
    if args.report:
        write_report(json.loads(Path(args.report).read_text()))
        print(f"updated {DOC}")
        return 0
    if args.command == "udp":
        result = _blast_udp(args)
    elif args.command == "control":
        import trio

        result = trio.run(_control_fuzz, args)
    else:
        parser.print_help()
        return 2
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
