"""Issue #9, the RTP part: what a stream's open UDP port does for a stranger.

One test per finding. The receivers are real :class:`StreamReceiver` s on real
sockets; the cases where a stranger on another machine matters (SSRCs and
source moves, the RTCP peer, feedback amplification) send from separate hosts
(network namespaces, ``tests/security/netns.py``) to a recorder bound in the
root namespace.
"""

from __future__ import annotations

import dataclasses
import json
import socket as _stdlib_socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from edge_recorder.control.protocol import AddStreamParams
from edge_recorder.demo.sfu import demo_producers
from edge_recorder.errors import JsonRpcError, RtcpParseError
from edge_recorder.rtp.assembler import AssembledFrame
from edge_recorder.rtp.packet import RtpPacket, serialize_rtp
from edge_recorder.rtp.rtcp import (
    MAX_COMPOUND_PACKETS,
    GenericNack,
    ReceiverReport,
    SenderReport,
    Unknown,
    parse_rtcp_untrusted,
    serialize_rtcp,
)
from edge_recorder.session.stream import StreamReceiver, StreamSpec
from tests.security.netns import Host, hosts

SSRC = 0x1234_5678
RTX_SSRC = 0x1234_5679
STRANGE_SSRC = 0x0BAD_0BAD
VP8_PT = 101
RTX_PT = 102

# A sender inside a host: sends the plan's datagrams, then collects what comes
# back on its sockets for listen_s, and reports both as JSON.
SENDER = r"""
import json, select, socket, sys, time
plan = json.loads(sys.argv[1])
socks = []
for _ in range(plan.get("sockets", 1)):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    socks.append(s)
for delay, index, port, data in plan["sends"]:
    if delay:
        time.sleep(delay)
    socks[index].sendto(bytes.fromhex(data), (plan["ip"], port))
received = []
deadline = time.monotonic() + plan.get("listen_s", 0.0)
while (left := deadline - time.monotonic()) > 0:
    ready, _, _ = select.select(socks, [], [], left)
    for s in ready:
        data = s.recv(65535)
        received.append([socks.index(s), data.hex()])
print(json.dumps({"ports": [s.getsockname()[1] for s in socks], "received": received}))
"""


def _spec(*, mux: bool = True, ssrc: int | None = SSRC, rtx_ssrc: int | None = RTX_SSRC, pt: int = VP8_PT) -> StreamSpec:
    encoding: dict[str, Any] = {}
    if ssrc is not None:
        encoding["ssrc"] = ssrc
    if rtx_ssrc is not None:
        encoding["rtx"] = {"ssrc": rtx_ssrc}
    feedback = [{"type": "nack"}, {"type": "nack", "parameter": "pli"}]
    return StreamSpec.from_params(
        {
            "producerId": "cam",
            "peerId": "alice",
            "kind": "video",
            "rtpParameters": {
                "codecs": [
                    {"mimeType": "video/VP8", "payloadType": pt, "clockRate": 90000, "rtcpFeedback": feedback},
                    {"mimeType": "video/rtx", "payloadType": RTX_PT, "clockRate": 90000, "parameters": {"apt": pt}},
                ],
                "encodings": [encoding],
                "rtcp": {"cname": "alice", "mux": mux},
            },
        }
    )


def _vp8(seq: int, *, ssrc: int = SSRC, key: bool = False, size: int = 20, ts: int | None = None, marker: bool = True) -> bytes:
    """A one-packet VP8 frame (RFC 7741 descriptor with S=1, a valid frame tag)."""
    body = bytes(size)
    tag = (0 if key else 1) | (1 << 4) | (len(body) << 5)
    header = tag.to_bytes(3, "little") + (b"\x9d\x01\x2a\x40\x01\xf0\x00" if key else b"")
    timestamp = seq * 3000 if ts is None else ts
    return serialize_rtp(RtpPacket(VP8_PT, seq & 0xFFFF, timestamp & 0xFFFF_FFFF, ssrc, b"\x10" + header + body, marker=marker))


def _sr(ssrc: int) -> bytes:
    return serialize_rtcp([SenderReport(ssrc, 0xE000_0000_0000_0000, 1234, 10, 1000)])


@asynccontextmanager
async def _receiver(bind_ip: str = "0.0.0.0", *, mux: bool = True, spec: StreamSpec | None = None, **kw: Any) -> AsyncIterator[tuple[StreamReceiver, int, int, list[AssembledFrame]]]:
    """A video receiver on real sockets, shown (read by its own task), with the session's liveness tick."""
    frames: list[AssembledFrame] = []

    def deliver(_r: StreamReceiver, _t: float, frame: AssembledFrame) -> bool:
        frames.append(frame)
        return True

    rtp = trio.socket.socket(_stdlib_socket.AF_INET, _stdlib_socket.SOCK_DGRAM)
    await rtp.bind((bind_ip, 0))
    rtcp = None
    if not mux:
        rtcp = trio.socket.socket(_stdlib_socket.AF_INET, _stdlib_socket.SOCK_DGRAM)
        await rtcp.bind((bind_ip, 0))
    receiver = StreamReceiver(spec or _spec(mux=mux), 0, rtp, rtcp, t0_monotonic=time.monotonic(), deliver=deliver, **kw)
    receiver.set_visible(True)

    async def tick() -> None:
        while True:  # the session's housekeeping: a silent stream goes idle
            await receiver.check_liveness(receiver._now())
            await trio.sleep(0.05)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver.run)
            nursery.start_soon(tick)
            yield receiver, rtp.getsockname()[1], (rtcp or rtp).getsockname()[1], frames
            nursery.cancel_scope.cancel()
    finally:
        rtp.close()
        if rtcp is not None:
            rtcp.close()


async def _send(host: Host, ip: str, sends: list[tuple[float, int, int, bytes]], *, sockets: int = 1, listen_s: float = 0.0) -> dict[str, Any]:
    """Run SENDER in ``host``: (delay_s, socket index, port, datagram) each; returns its report."""
    plan = {"ip": ip, "sockets": sockets, "listen_s": listen_s, "sends": [(d, i, p, b.hex()) for d, i, p, b in sends]}
    result = await trio.to_thread.run_sync(lambda: host.python(SENDER, json.dumps(plan)))
    report: dict[str, Any] = json.loads(result.stdout)
    await trio.sleep(0.05)  # the receiver's turn for the last datagrams
    return report


def _feedback(report: dict[str, Any]) -> list[bytes]:
    return [bytes.fromhex(data) for _, data in report["received"]]


def _host(receiver: StreamReceiver) -> str | None:
    address = receiver.source_address
    return None if address is None else str(address[0])


async def _until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    with trio.move_on_after(timeout_s):
        while not check():
            await trio.sleep(0.02)
    assert check()


# -- 1. oversize input -------------------------------------------------------------


async def test_1_oversize_datagrams_frames_and_jitter_buffers_are_dropped_and_counted() -> None:
    # Datagrams over max_datagram_bytes (default 1500) are read short and
    # dropped unparsed: the stream does not even latch onto them.
    async with _receiver("127.0.0.1") as (receiver, port, _, _):
        with _stdlib_socket.socket(_stdlib_socket.AF_INET, _stdlib_socket.SOCK_DGRAM) as sender:
            big = _vp8(1, size=1501 - 16)
            assert len(big) == 1501
            sender.sendto(big, ("127.0.0.1", port))
            await _until(lambda: receiver.stats.drops["oversize"] == 1)
            assert receiver.stats.packets == 0 and receiver.source_address is None
            sender.sendto(_vp8(2, size=1500 - 16), ("127.0.0.1", port))
            await _until(lambda: receiver.stats.packets == 1)

    # A frame over max_frame_bytes is dropped (counted) with a keyframe request;
    # the jitter buffer holds at most twice that many bytes.
    async with _receiver("127.0.0.1", max_datagram_bytes=65_507, max_frame_bytes=64 * 1024) as (receiver, _, _, frames):
        now = receiver._now()
        receiver.handle_datagram(_vp8(10, key=True, size=40_000, ts=9000, marker=False), ("127.0.0.1", 9), now)
        receiver.handle_datagram(_vp8(11, size=40_000, ts=9000), ("127.0.0.1", 9), now)
        receiver.assembler.poll(now + 1.0)  # past the start-up wait
        assert frames == [] and receiver.assembler.waiting_for_keyframe
        assert receiver.assembler.stats.keyframe_requests == 2  # the initial one, and this one
        receiver.handle_datagram(_vp8(12, key=True, ts=12000), ("127.0.0.1", 9), now + 1.0)
        assert len(frames) == 1 and frames[0].keyframe and len(frames[0].data) < 100
        for seq in range(14, 60):  # 13 never comes: nothing completes, everything waits
            receiver.handle_datagram(_vp8(seq, size=30_000), ("127.0.0.1", 9), now + 1.0)
            assert receiver.assembler.buffered_bytes <= 2 * 64 * 1024
        receiver._refresh_stats()
        assert receiver.stats.frames_dropped_oversize == 1
        assert receiver.stats.drops["jitter-buffer-bytes"] > 0


# -- 2. the declared SSRC, and source moves -------------------------------------------


async def test_2_only_the_declared_ssrcs_are_accepted_and_a_stranger_cannot_move_the_source() -> None:
    with hosts(2) as (sfu, stranger):
        async with _receiver(idle_s=0.3) as (receiver, port, _, _):
            # A stranger first, with its own SSRC: not adopted, nothing latched.
            await _send(stranger, stranger.gateway, [(0, 0, port, _vp8(s, ssrc=STRANGE_SSRC)) for s in range(5)])
            assert receiver.stats.drops["unknown-ssrc"] == 5
            assert receiver.source_address is None and receiver.expected_ssrc == SSRC
            # The SFU with the declared SSRC latches.
            await _send(sfu, sfu.gateway, [(0, 0, port, _vp8(s)) for s in range(100, 110)])
            assert _host(receiver) == sfu.address and receiver.stats.packets == 10
            # Once the SFU is quiet, a stranger on another host with the right
            # SSRC (or RTX SSRC) still cannot take the stream over.
            await _until(lambda: not receiver.live)
            await _send(stranger, stranger.gateway, [(0, 0, port, _vp8(s)) for s in range(110, 120)])
            rtx = serialize_rtp(RtpPacket(RTX_PT, 1, 0, RTX_SSRC, b"\x00\x6e" + b"\x10" * 10))
            await _send(stranger, stranger.gateway, [(0, 0, port, rtx)])
            assert receiver.stats.drops["foreign-host"] == 11
            assert _host(receiver) == sfu.address and receiver.stats.packets == 10
            # The SFU moved to another port of its host: the same SSRC follows.
            # A new SSRC from it is not adopted (that is a new addStream).
            await _send(sfu, sfu.gateway, [(0, 0, port, _vp8(s, ssrc=STRANGE_SSRC)) for s in range(5)])
            assert receiver.stats.drops["unknown-ssrc"] == 10
            report = await _send(sfu, sfu.gateway, [(0, 0, port, _vp8(s)) for s in range(120, 130)])
            assert receiver.source_address == (sfu.address, report["ports"][0])
            assert receiver.stats.source_moves == 1 and receiver.stats.packets == 20
            assert receiver.stats.ssrc_changes == 0

        # With RECORDING_RTP_SOURCE_MOVE_ANY_HOST the same SSRC may move hosts.
        async with _receiver(idle_s=0.3, source_move_any_host=True) as (receiver, port, _, _):
            await _send(sfu, sfu.gateway, [(0, 0, port, _vp8(s)) for s in range(10)])
            await _until(lambda: not receiver.live)
            await _send(stranger, stranger.gateway, [(0, 0, port, _vp8(s, ssrc=STRANGE_SSRC)) for s in range(10, 15)])
            assert _host(receiver) == sfu.address
            await _send(stranger, stranger.gateway, [(0, 0, port, _vp8(s)) for s in range(10, 15)])
            assert _host(receiver) == stranger.address and receiver.stats.source_moves == 1


async def test_2_with_source_networks_a_stranger_cannot_even_latch_before_the_sender() -> None:
    """The gap left by the SSRC rule: SSRCs travel in signalling, so a stranger
    who knows one could latch the stream before the SFU's first packet.
    RECORDING_RTP_SOURCE_NETWORKS (the SFU hosts) closes it."""
    import ipaddress

    with hosts(2) as (sfu, stranger):
        sfu_net = ipaddress.ip_network(f"{sfu.address}/24", strict=False)
        async with _receiver(source_networks=(sfu_net,)) as (receiver, port, _, _):
            # The stranger first, with the declared SSRC and payload type.
            await _send(stranger, stranger.gateway, [(0, 0, port, _vp8(s)) for s in range(10)])
            assert receiver.stats.drops["foreign-network"] == 10
            assert receiver.source_address is None and receiver.stats.packets == 0
            await _send(sfu, sfu.gateway, [(0, 0, port, _vp8(s)) for s in range(100, 110)])
            assert _host(receiver) == sfu.address and receiver.stats.packets == 10
        # Without the setting, the same stranger latches: the gap it closes.
        async with _receiver() as (receiver, port, _, _):
            await _send(stranger, stranger.gateway, [(0, 0, port, _vp8(s)) for s in range(10)])
            assert _host(receiver) == stranger.address


async def test_2_a_replaced_producer_is_a_new_add_stream_with_its_new_ssrc(manager: Any) -> None:
    """The documented path (control-protocol.md, addStream with a known producerId)."""
    session = await manager.start("room-replace")
    producer = dataclasses.replace(demo_producers()["alice-cam"], ssrc=SSRC)
    first = await session.add_stream(StreamSpec.from_params(producer.add_stream_params(session.session_id)))
    old = next(r for r in session.streams if r.spec.producer_id == producer.producer_id)
    with _stdlib_socket.socket(_stdlib_socket.AF_INET, _stdlib_socket.SOCK_DGRAM) as sender:
        for seq in range(10):
            sender.sendto(_vp8(seq), (first["ip"], first["port"]))
        await _until(lambda: old.stats.packets == 10)
        await trio.sleep(1.5)  # quiet: still no new SSRC on a declared stream
        for seq in range(5):
            sender.sendto(_vp8(seq, ssrc=STRANGE_SSRC), (first["ip"], first["port"]))
        await _until(lambda: old.stats.drops["unknown-ssrc"] == 5)
        assert old.stats.ssrc_changes == 0 and old.expected_ssrc == SSRC
        replaced = dataclasses.replace(producer, ssrc=STRANGE_SSRC)
        second = await session.add_stream(StreamSpec.from_params(replaced.add_stream_params(session.session_id)))
        new = next(r for r in session.streams if r.spec.producer_id == producer.producer_id)
        assert new is not old and second["port"] != first["port"] and new.expected_ssrc == STRANGE_SSRC
        for seq in range(5):
            sender.sendto(_vp8(seq, ssrc=STRANGE_SSRC), (second["ip"], second["port"]))
        await _until(lambda: new.stats.packets == 5)
    await session.stop("host")
    assert session.status.value == "COMPLETED", session.error


# -- 3. the RTCP peer of a non-muxed stream ---------------------------------------------


async def test_3_rtcp_latches_only_from_the_sources_host_with_the_streams_ssrc() -> None:
    with hosts(2) as (sfu, stranger):
        async with _receiver(mux=False, keyframe_request_interval_s=0.2) as (receiver, port, rtcp_port, _):
            # Before any RTP, and from another host later, an SR with the
            # stream's SSRC does not make the stranger our RTCP peer.
            await _send(stranger, stranger.gateway, [(0, 0, rtcp_port, _sr(SSRC))])
            assert receiver.rtcp_address is None and receiver.stats.drops["foreign-source"] == 1
            await _send(sfu, sfu.gateway, [(0, 0, port, _vp8(s)) for s in range(20)])
            assert _host(receiver) == sfu.address
            report = await _send(stranger, stranger.gateway, [(0, 0, rtcp_port, _sr(SSRC))], listen_s=0.6)
            assert receiver.rtcp_address is None and receiver.stats.drops["foreign-source"] == 2
            assert _feedback(report) == [], "no feedback to the stranger"
            # From the SFU's host, a sender SSRC that is not the stream's does not latch either.
            await _send(sfu, sfu.gateway, [(0, 0, rtcp_port, serialize_rtcp([ReceiverReport(STRANGE_SSRC)]))])
            assert receiver.rtcp_address is None and receiver.stats.drops["unknown-ssrc"] == 1
            # The SFU's own RTCP socket with its SR latches; keyframe requests go there.
            report = await _send(sfu, sfu.gateway, [(0, 1, rtcp_port, _sr(SSRC))], sockets=2, listen_s=0.6)
            assert receiver.rtcp_address == (sfu.address, report["ports"][1])
            assert receiver.stats.rtcp_packets == 1
            assert [i for i, _ in report["received"]] and {i for i, _ in report["received"]} == {1}
            report = await _send(stranger, stranger.gateway, [(0, 0, rtcp_port, _sr(SSRC))], listen_s=0.5)
            assert _feedback(report) == [] and receiver.stats.drops["foreign-source"] == 3


# -- 4. feedback amplification ----------------------------------------------------------


async def test_4_no_feedback_before_probation_and_feedback_within_a_budget_after() -> None:
    with hosts(2) as (sfu, stranger):
        # 20 small packets opening gaps (the 880 bytes): from an
        # unproven source they buy no NACK, PLI or FIR at all.
        async with _receiver() as (receiver, port, _, _):
            sends = [(0.002, 0, port, _vp8(i * 40)) for i in range(20)]
            assert sum(len(d) for *_, d in sends) <= 1000
            report = await _send(stranger, stranger.gateway, sends, listen_s=1.0)
            assert receiver.stats.packets == 20
            assert _feedback(report) == []
            assert receiver.stats.feedback_packets == receiver.stats.nack_packets == receiver.stats.plis == 0

        # A source that proved itself (in-sequence packets) gets feedback, but
        # never more bytes than a small fraction of what it sent plus an allowance.
        async with _receiver() as (receiver, port, _, _):
            sends = [(0.001, 0, port, _vp8(s)) for s in range(10)]
            sends += [(0.002, 0, port, _vp8(10 + i * 40)) for i in range(200)]
            sent = sum(len(d) for *_, d in sends)
            report = await _send(sfu, sfu.gateway, sends, listen_s=1.0)
            got = sum(len(d) for d in _feedback(report))
            assert receiver.stats.plis >= 1 and receiver.stats.nack_packets >= 1, "feedback works"
            await trio.sleep(1.0)  # keyframe requests carry on: still within the budget
            assert got <= receiver.stats.feedback_bytes <= 512 + 0.05 * sent
            assert receiver.stats.feedback_refused > 0


# -- 5. RTCP parsing cost ------------------------------------------------------------------


async def test_5_oversize_rtcp_is_dropped_before_parsing_and_parsing_is_bounded() -> None:
    huge = serialize_rtcp([SenderReport(SSRC, 1, 2, 3, 4), Unknown(204, 0, bytes(60_000))])
    assert len(huge) > 60_000
    async with _receiver("127.0.0.1", mux=False) as (receiver, port, rtcp_port, _):
        with _stdlib_socket.socket(_stdlib_socket.AF_INET, _stdlib_socket.SOCK_DGRAM) as sender:
            for seq in range(10):
                sender.sendto(_vp8(seq), ("127.0.0.1", port))
            await _until(lambda: receiver.stats.packets == 10)
            sender.sendto(huge, ("127.0.0.1", port))  # muxed on the RTP port
            sender.sendto(huge, ("127.0.0.1", rtcp_port))
            await _until(lambda: receiver.stats.drops["oversize"] == 2)
            assert receiver.stats.rtcp_packets == 0 and receiver.rtcp_address is None
            # Within the cap, a compound of hundreds of empty packets is refused
            # after MAX_COMPOUND_PACKETS headers, and a NACK the receiver has no
            # use for is skipped, not expanded.
            many = struct.pack("!BBH", 0x80, 204, 0) * 350
            sender.sendto(many, ("127.0.0.1", rtcp_port))
            await _until(lambda: receiver.stats.drops["malformed-rtcp"] == 1)
            sr_and_nack = serialize_rtcp([SenderReport(SSRC, 1, 2, 3, 4), GenericNack(1, SSRC, list(range(0, 5000, 17)))])
            assert len(sr_and_nack) < 1500
            sender.sendto(sr_and_nack, ("127.0.0.1", rtcp_port))
            await _until(lambda: receiver.stats.rtcp_packets == 1)
    with pytest.raises(RtcpParseError, match="more than"):
        parse_rtcp_untrusted(many)
    assert len(parse_rtcp_untrusted(many[: 4 * MAX_COMPOUND_PACKETS])) == MAX_COMPOUND_PACKETS
    with pytest.raises(RtcpParseError, match="FCI entries"):
        parse_rtcp_untrusted(sr_and_nack)  # 295 PID+BLP entries: not expanded
    assert [type(p) for p in parse_rtcp_untrusted(sr_and_nack, types={200})] == [SenderReport]


# -- 6. payload types that alias RTCP -----------------------------------------------------


@pytest.mark.parametrize("payload_type", [64, 77, 95])
def test_6_payload_types_64_to_95_are_refused_on_muxed_streams(payload_type: int) -> None:
    params = {
        "sessionId": "s1",
        "producerId": "cam",
        "peerId": "alice",
        "kind": "video",
        "rtpParameters": {
            "codecs": [{"mimeType": "video/VP8", "payloadType": payload_type, "clockRate": 90000}],
            "encodings": [{"ssrc": SSRC}],
            "rtcp": {"mux": True},
        },
    }
    with pytest.raises(JsonRpcError) as info:
        AddStreamParams.from_params(params)
    assert info.value.code == -32602
    assert info.value.data == {"field": "rtpParameters.codecs[0].payloadType"}
    params["rtpParameters"]["rtcp"] = {"mux": False}  # type: ignore[index]
    assert AddStreamParams.from_params(params).spec.rtp_parameters.media_codec.payload_type == payload_type
