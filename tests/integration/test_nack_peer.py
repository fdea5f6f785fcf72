"""The NACK-answering sender itself, through the impaired path to a small
NACKing receiver written here: what it loses comes back (plain or RTX, equal to
the original), its SRs map RTP time to the wallclock correctly, and a PLI gets
a keyframe."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from edge_recorder.demo.sfu import SyntheticProducer
from edge_recorder.demo.sources import ScreenSource, ToneSource
from edge_recorder.rtp.packet import RtpPacket, is_rtcp_untrusted, parse_rtp_untrusted
from edge_recorder.rtp.rtcp import (
    NTP_UNIX_EPOCH_OFFSET_S,
    SDES_CNAME,
    GenericNack,
    Pli,
    SenderReport,
    SourceDescription,
    ntp_to_seconds,
    parse_rtcp_untrusted,
    serialize_rtcp,
)
from edge_recorder.rtp.rtx import unwrap_rtx
from edge_recorder.rtp.seqnum import seq_distance
from tests.integration.impair import Impairment, ImpairmentProxy
from tests.integration.nack_peer import NackPeer, RtxConfig

pytestmark = pytest.mark.integration

RUN_S = 2.5


@dataclass
class NackingReceiver:
    """NACKs every gap in the media sequence at once; unwraps RTX."""

    media_ssrc: int
    media_pt: int
    rtx: RtxConfig | None = None
    originals: dict[int, tuple[float, RtpPacket]] = field(default_factory=dict)
    recovered: dict[int, RtpPacket] = field(default_factory=dict)
    nacked: set[int] = field(default_factory=set)
    reports: list[tuple[SenderReport, list[tuple[int, list[tuple[int, bytes]]]]]] = field(default_factory=list)
    rtx_packets: int = 0
    highest: int | None = None
    source: Any = None

    async def run(self, sock: Any) -> None:
        while True:
            data, self.source = await sock.recvfrom(65535)
            arrival = time.time()
            if is_rtcp_untrusted(data):
                packets = parse_rtcp_untrusted(data)
                srs = [p for p in packets if isinstance(p, SenderReport)]
                chunks = [c for p in packets if isinstance(p, SourceDescription) for c in p.chunks]
                self.reports += [(sr, chunks) for sr in srs]
                continue
            packet = parse_rtp_untrusted(data)
            if self.rtx is not None and packet.ssrc == self.rtx.ssrc:
                assert packet.payload_type == self.rtx.payload_type
                self.rtx_packets += 1
                original = unwrap_rtx(packet, media_payload_type=self.media_pt, media_ssrc=self.media_ssrc)
                assert original is not None
                self.recovered[original.sequence_number] = original
                continue
            assert packet.ssrc == self.media_ssrc
            seq = packet.sequence_number
            if seq in self.nacked:
                self.recovered[seq] = packet  # a plain retransmission
                continue
            self.originals[seq] = (arrival, packet)
            if self.highest is not None and seq_distance(self.highest, seq) > 1:
                lost = [(self.highest + i) & 0xFFFF for i in range(1, seq_distance(self.highest, seq))]
                self.nacked.update(lost)
                await sock.sendto(serialize_rtcp([GenericNack(1, self.media_ssrc, lost)]), self.source)
            if self.highest is None or seq_distance(self.highest, seq) > 0:
                self.highest = seq


def _camera() -> SyntheticProducer:
    # A busy picture at a high bitrate: several packets per frame.
    return SyntheticProducer("cam", "pat", "Pat", "video", "screen", "vp8", ScreenSource(640, 360), fps=30, bitrate_kbps=2000)


def _mic() -> SyntheticProducer:
    return SyntheticProducer("mic", "pat", "Pat", "audio", "microphone", "opus", ToneSource(440.0))


async def _run(peer: NackPeer, *, loss: float, seed: int = 4) -> tuple[NackingReceiver, dict[int, bytes], ImpairmentProxy]:
    """Peer → proxy (drops `loss` of the original media packets, remembering
    them) → receiver, for RUN_S seconds."""
    rng = random.Random(seed)
    dropped: dict[int, bytes] = {}
    media_ssrc = peer.producer.ssrc

    def drop(data: bytes, t: float) -> bool:
        if is_rtcp_untrusted(data) or int.from_bytes(data[8:12], "big") != media_ssrc:
            return False
        seq = int.from_bytes(data[2:4], "big")
        if seq in dropped or t < 0.2 or t > RUN_S - 0.3:  # retransmissions pass; a clean start and end
            return False
        if rng.random() < loss:
            dropped[seq] = data
            return True
        return False

    receiver_sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with receiver_sock:
        await receiver_sock.bind(("127.0.0.1", 0))
        receiver = NackingReceiver(media_ssrc, peer.producer.payload_type, peer.rtx)
        async with trio.open_nursery() as nursery:
            proxy = ImpairmentProxy(receiver_sock.getsockname(), Impairment(seed=seed, delay_ms=5), drop=drop)
            proxy_address = await nursery.start(proxy.run)
            nursery.start_soon(receiver.run, receiver_sock)
            await nursery.start(peer.run, proxy_address)
            await trio.sleep(RUN_S)
            nursery.cancel_scope.cancel()
    return receiver, dropped, proxy


def _check_sender_reports(peer: NackPeer, receiver: NackingReceiver) -> None:
    """SRs arrive about every second with the CNAME, and their NTP↔RTP pair
    says when each packet was captured: packets arrive a little after it."""
    reports = receiver.reports
    assert int(RUN_S) <= len(reports) <= int(RUN_S) + 2
    for sr, chunks in reports:
        assert sr.ssrc == peer.producer.ssrc
        assert chunks == [(peer.producer.ssrc, [(SDES_CNAME, peer.cname.encode())])]
        assert 0 < sr.packet_count <= peer.stats.packets_sent
    rate = peer.clock_rate
    lags = []
    for sr, _ in reports:
        sr_wall = ntp_to_seconds(sr.ntp_timestamp) - NTP_UNIX_EPOCH_OFFSET_S
        for arrival, packet in receiver.originals.values():
            captured = sr_wall + seq_distance32(sr.rtp_timestamp, packet.timestamp) / rate
            lags.append(arrival - captured)
    # Arrival minus capture: the encode (a thread, for video), the proxy's
    # 5 ms, scheduling. Never before capture, never long after.
    assert min(lags) > 0.0, min(lags)
    assert max(lags) < 0.15, max(lags)
    assert sorted(lags)[len(lags) // 2] < 0.05


def seq_distance32(a: int, b: int) -> int:
    return ((b - a + 0x8000_0000) & 0xFFFF_FFFF) - 0x8000_0000


@pytest.mark.parametrize("rtx", [None, RtxConfig(payload_type=97, ssrc=0x0E7A_0001)], ids=["plain", "rtx"])
async def test_video_losses_come_back_equal_to_the_originals(rtx: RtxConfig | None) -> None:
    peer = NackPeer(_camera(), rtx=rtx, initial_sequence=65500)  # wraps early on
    receiver, dropped, proxy = await _run(peer, loss=0.1)
    assert len(dropped) >= 8
    assert proxy.stats.dropped == len(dropped)
    assert set(dropped) <= receiver.nacked
    assert set(peer.stats.nacked) == receiver.nacked
    assert peer.history.stats.unavailable == 0
    # Every lost packet came back, exactly as it was first sent.
    assert set(receiver.recovered) == set(dropped)
    for seq, data in dropped.items():
        assert receiver.recovered[seq] == parse_rtp_untrusted(data)
    assert peer.stats.retransmitted == len(dropped)
    if rtx is None:
        assert receiver.rtx_packets == 0
    else:
        assert receiver.rtx_packets == len(dropped)
    _check_sender_reports(peer, receiver)


async def test_audio_nack_and_sender_reports() -> None:
    peer = NackPeer(_mic())
    receiver, dropped, _ = await _run(peer, loss=0.05, seed=8)
    assert len(dropped) >= 3
    assert set(receiver.recovered) == set(dropped)
    # 20 ms packets stamped 960 apart, 312 samples before their capture block.
    ts = sorted((p.sequence_number, p.timestamp) for _, p in receiver.originals.values())
    steps = {seq_distance32(a[1], b[1]) for a, b in zip(ts, ts[1:]) if seq_distance(a[0], b[0]) == 1}
    assert steps == {960}
    _check_sender_reports(peer, receiver)


async def test_pli_gets_a_keyframe_and_the_parameters_describe_rtx() -> None:
    rtx = RtxConfig(payload_type=97, ssrc=0x0E7A_0002)
    peer = NackPeer(_camera(), rtx=rtx)
    params = peer.add_stream_params("s1")["rtpParameters"]
    assert params["codecs"][1] == {"mimeType": "video/rtx", "payloadType": 97, "clockRate": 90000, "parameters": {"apt": 101}, "rtcpFeedback": []}
    assert params["encodings"] == [{"ssrc": peer.producer.ssrc, "rtx": {"ssrc": rtx.ssrc}}]
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        async with trio.open_nursery() as nursery:
            address = await nursery.start(peer.run, sock.getsockname())
            await trio.sleep(0.3)
            assert peer.stats.keyframes_sent == 1  # the first frame
            await sock.sendto(serialize_rtcp([Pli(1, peer.producer.ssrc)]), address)
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
    assert peer.stats.keyframe_requests == 1
    assert peer.stats.keyframes_sent == 2
