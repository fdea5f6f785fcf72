"""The receiver shell's trust decisions, driven datagram by datagram (no network)."""

from __future__ import annotations

import socket as _stdlib_socket
from collections.abc import AsyncIterator

import pytest
import trio

from edge_recorder.rtp.packet import RtpPacket, serialize_rtp
from edge_recorder.session.stream import StreamReceiver
from tests.security.test_rtp_trust import SSRC, _spec, _vp8

SFU = ("10.0.0.1", 40000)


@pytest.fixture
async def receiver() -> AsyncIterator[StreamReceiver]:
    sock = trio.socket.socket(_stdlib_socket.AF_INET, _stdlib_socket.SOCK_DGRAM)
    with sock:
        r = StreamReceiver(_spec(), 0, sock, None, t0_monotonic=0.0, deliver=lambda *_: True, clock=lambda: 0.0)
        r.set_visible(True)
        yield r


async def test_an_unproven_source_schedules_no_feedback(receiver: StreamReceiver) -> None:
    for i in range(10):
        receiver.handle_datagram(_vp8(i * 20), SFU, i * 0.001)  # gaps: never in sequence
    assert not receiver.gate.proven and receiver.assembler.missing_since()
    assert not receiver.keyframe_due(1.0)
    # Nothing due but the assembler's own give-up: no wake-up loop on NACKs
    # or keyframe retries that will not be sent.
    assert receiver._next_wake() == receiver.assembler.next_deadline()
    assert receiver.nack is not None and receiver.nack.pending == 0


async def test_a_proven_source_gets_nacks_and_keyframe_requests(receiver: StreamReceiver) -> None:
    for seq in range(8):
        receiver.handle_datagram(_vp8(seq), SFU, seq * 0.001)
    receiver.handle_datagram(_vp8(20), SFU, 0.01)
    assert receiver.gate.proven and receiver.keyframe_due(0.02)
    assert receiver.nack is not None and receiver.nack.pending == 12  # 8..19


async def test_a_move_restarts_probation_and_no_stale_nack_deadline_spins_the_loop(receiver: StreamReceiver) -> None:
    for seq in range(8):
        receiver.handle_datagram(_vp8(seq), SFU, seq * 0.001)
    receiver.handle_datagram(_vp8(20), SFU, 0.01)  # gaps the scheduler now tracks
    receiver.live = False  # quiet for idle_s
    receiver.handle_datagram(_vp8(21), ("10.0.0.1", 40002), 3.0)
    assert receiver.stats.source_moves == 1 and not receiver.gate.proven
    assert receiver.nack is not None and receiver.nack.next_deadline() is not None  # stale, from before
    wake = receiver._next_wake()
    assert wake is None or wake >= 3.0, "a deadline in the past would spin the receive loop"


async def test_rtx_from_the_source_with_the_declared_ssrc_only(receiver: StreamReceiver) -> None:
    receiver.handle_datagram(_vp8(1), SFU, 0.0)
    rtx = RtpPacket(102, 1, 3000, SSRC + 1, b"\x00\x02" + _vp8(2)[12:])
    receiver.handle_datagram(serialize_rtp(rtx), SFU, 0.01)
    assert receiver.stats.rtx_packets == 1
    receiver.handle_datagram(serialize_rtp(RtpPacket(102, 2, 3000, 77, b"\x00\x03" + _vp8(3)[12:])), SFU, 0.02)
    assert receiver.stats.drops["unknown-ssrc"] == 1 and receiver.stats.rtx_packets == 1
