"""The receiver shell: its trust decisions and its receiver reports, driven datagram by datagram."""

from __future__ import annotations

import contextlib
import random
import socket as _stdlib_socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from edge_recorder.rtp.packet import RtpPacket, serialize_rtp
from edge_recorder.rtp.rtcp import SenderReport, Unknown, serialize_rtcp
from edge_recorder.session.stream import RECORDER_SSRC, StreamReceiver
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
    assert receiver.next_wake() == receiver.assembler.next_deadline()
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
    await receiver.check_liveness(2.5)  # quiet for idle_s (2 s)
    assert not receiver.live
    receiver.handle_datagram(_vp8(21), ("10.0.0.1", 40002), 3.0)
    assert receiver.stats.source_moves == 1 and not receiver.gate.proven
    assert receiver.nack is not None and receiver.nack.next_deadline() is not None  # stale, from before
    wake = receiver.next_wake()
    assert wake is None or wake >= 3.0, "a deadline in the past would spin the receive loop"


async def test_rtx_from_the_source_with_the_declared_ssrc_only(receiver: StreamReceiver) -> None:
    receiver.handle_datagram(_vp8(1), SFU, 0.0)
    rtx = RtpPacket(102, 1, 3000, SSRC + 1, b"\x00\x02" + _vp8(2)[12:])
    receiver.handle_datagram(serialize_rtp(rtx), SFU, 0.01)
    assert receiver.stats.rtx_packets == 1
    receiver.handle_datagram(serialize_rtp(RtpPacket(102, 2, 3000, 77, b"\x00\x03" + _vp8(3)[12:])), SFU, 0.02)
    assert receiver.stats.drops["unknown-ssrc"] == 1 and receiver.stats.rtx_packets == 1


# -- receiver reports (issue #10: the recorder sent none) ------------------------



def _decode_compound(data: bytes) -> dict[int, bytes]:
    """An independent decoder: packet type -> body, walking the length fields by hand."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        b0, pt, words = struct.unpack_from("!BBH", data, pos)
        assert b0 >> 6 == 2 and not b0 & 0x20
        out[pt] = bytes([b0 & 0x1F]) + data[pos + 4 : pos + 4 + 4 * words]
        pos += 4 + 4 * words
    assert pos == len(data)
    return out


@contextlib.asynccontextmanager
async def _on_localhost(now: list[float], seed: int) -> AsyncIterator[tuple[trio.socket.SocketType, Any, StreamReceiver]]:
    """A shown receiver on a real socket, and the SFU's socket it reports to: (sfu, its address, receiver)."""
    sfu = trio.socket.socket(_stdlib_socket.AF_INET, _stdlib_socket.SOCK_DGRAM)
    ours = trio.socket.socket(_stdlib_socket.AF_INET, _stdlib_socket.SOCK_DGRAM)
    with sfu, ours:
        await sfu.bind(("127.0.0.1", 0))
        await ours.bind(("127.0.0.1", 0))
        r = StreamReceiver(
            _spec(), 0, ours, None, t0_monotonic=0.0, deliver=lambda *_: True, clock=lambda: now[0],
            rng=random.Random(seed), wall_clock=lambda: 1_000_000.0,
        )
        r.set_visible(True)
        yield sfu, sfu.getsockname(), r


async def test_a_receiver_report_goes_to_the_source_and_its_dlrr_sets_the_nack_rtt() -> None:
    now = [0.0]
    async with _on_localhost(now, 3) as (sfu, address, r):
        # 30 packets at 30 fps, 5 of them lost after probation.
        for seq in range(30):
            now[0] = seq / 30
            if seq not in (12, 16, 20, 24, 27):
                r.handle_datagram(_vp8(seq, key=seq == 0), address, now[0])
        await r.wake(now[0])  # the NACKs go, and the first report is scheduled
        sr_ntp = 0x0000_1111_2222_0000
        now[0] = 1.0
        r.handle_datagram(serialize_rtcp([SenderReport(SSRC, sr_ntp, 0, 20, 400)]), address, now[0])
        assert r.report_schedule.due_s is not None
        wake = r.next_wake()
        assert wake is not None and wake <= r.report_schedule.due_s  # the loop wakes for it
        now[0] = r.report_schedule.due_s + 0.125
        sent_at = now[0]
        await r.wake(now[0])
        assert r.stats.receiver_reports == 1
        # Read what the NACKs and PLIs got too; the last datagram is the report.
        datagrams = []
        while True:
            with trio.move_on_after(0.2):
                datagrams.append((await sfu.recvfrom(2048))[0])
                continue
            break
        packets = _decode_compound(datagrams[-1])
        assert sorted(packets) == [201, 202, 207]  # RR, SDES, XR
        rr = packets[201]
        assert rr[0] == 1  # one report block
        reporter, ssrc, word, highest, jitter, lsr, dlsr = struct.unpack("!7I", rr[1:])
        assert (reporter, ssrc) == (RECORDER_SSRC, SSRC)
        assert word >> 24 == (5 << 8) // 30 and word & 0xFF_FFFF == 5
        assert highest == 29
        assert jitter == 0  # the packets came at their own clock's pace
        assert lsr == 0x1111_2222 and dlsr == round((sent_at - 1.0) * 65536)
        sdes = packets[202]
        assert sdes[0] == 1 and sdes[1:5] == RECORDER_SSRC.to_bytes(4, "big") and sdes[5] == 1
        assert sdes[7 : 7 + sdes[6]] == b"edge-recorder"
        xr = packets[207]
        assert xr[1:5] == RECORDER_SSRC.to_bytes(4, "big") and xr[5:9] == bytes.fromhex("04000002")
        (rrt_ntp,) = struct.unpack("!Q", xr[9:17])
        # mediasoup's answer: a DLRR in its next SR compound, held 0.25 s, back 40 ms later.
        assert r.nack is not None and r.nack.path_rtt_s is None
        lrr = (rrt_ntp >> 16) & 0xFFFF_FFFF
        dlrr_body = struct.pack("!IBBHIII", SSRC, 5, 0, 3, SSRC, lrr, 0x4000)
        now[0] = sent_at + 0.29
        r.handle_datagram(serialize_rtcp([SenderReport(SSRC, sr_ntp + (1 << 32), 0, 30, 600), Unknown(207, 0, dlrr_body)]), address, now[0])
        assert r.stats.rtt_s == pytest.approx(0.04, abs=2 / 65536)
        assert r.nack.path_rtt_s == r.stats.rtt_s
        # A DLRR echoing something we never sent is not believed.
        r.handle_datagram(serialize_rtcp([Unknown(207, 0, struct.pack("!IBBHIII", SSRC, 5, 0, 3, SSRC, lrr + 1, 0))]), address, now[0])
        assert r.stats.rtt_s == pytest.approx(0.04, abs=2 / 65536)


async def test_no_report_before_probation_nor_for_a_silent_source() -> None:
    now = [0.0]
    async with _on_localhost(now, 1) as (_sfu, address, r):
        for i in range(4):
            r.handle_datagram(_vp8(i * 2, key=i == 0), address, i * 0.03)  # gaps: never proven
        await r.wake(5.0)
        assert r.report_schedule.due_s is None and r.stats.receiver_reports == 0
        for seq in range(20, 30):
            r.handle_datagram(_vp8(seq), address, 5.0)
        await r.wake(5.0)
        assert r.report_schedule.due_s is not None
        await r.wake(r.report_schedule.due_s)
        assert r.stats.receiver_reports == 1
        # Silent since: the next due time passes without a report, and is rescheduled.
        due = r.report_schedule.due_s
        await r.wake(due)
        assert r.stats.receiver_reports == 1 and r.report_schedule.due_s > due
