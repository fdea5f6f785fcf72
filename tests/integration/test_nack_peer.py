"""The NACK-answering sender itself, through the impaired path to a small
NACKing receiver written here: what it loses comes back (plain or RTX, equal to
the original), its SRs map RTP time to the wallclock correctly, and a PLI gets
a keyframe."""

from __future__ import annotations

import random
import struct
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
from edge_recorder.session.stream import RECORDER_SSRC, StreamReceiver, StreamSpec
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


# -- the recorder's receiver reports, and NACK retries that follow the RTT -------


def _decode_rr(data: bytes) -> tuple[int, list[tuple[int, int, int, int, int, int, int]]]:
    """An independent decoder of the RR in a compound: (reporter, blocks), by hand from RFC 3550 §6.4.2."""
    pos = 0
    while pos < len(data):
        b0, pt, words = struct.unpack_from("!BBH", data, pos)
        if pt == 201:
            (reporter,) = struct.unpack_from("!I", data, pos + 4)
            blocks = []
            for i in range(b0 & 0x1F):
                ssrc, word, highest, jitter, lsr, dlsr = struct.unpack_from("!6I", data, pos + 8 + 24 * i)
                blocks.append((ssrc, word >> 24, word & 0xFF_FFFF, highest, jitter, lsr, dlsr))
            return reporter, blocks
        pos += 4 + 4 * words
    raise AssertionError("no RR in the compound")


async def _record_from_peer(peer: NackPeer, *, seed: int) -> tuple[StreamReceiver, dict[int, list[float]], set[int]]:
    """The recorder's receiver for one stream, fed by the peer through a proxy
    that loses some originals after 1.5 s; the peer never resends those, so
    every request for them shows up, with the time it arrived."""
    rng = random.Random(seed)
    media_ssrc = peer.producer.ssrc
    dropped: set[int] = set()
    requests: dict[int, list[float]] = {}
    answer = peer.resend

    def resend(nack: GenericNack) -> list[RtpPacket]:
        for seq in nack.lost:
            requests.setdefault(seq, []).append(trio.current_time())
        wanted = [seq for seq in nack.lost if seq not in dropped]
        return answer(GenericNack(nack.sender_ssrc, nack.media_ssrc, wanted)) if wanted else []

    peer.resend = resend
    start = trio.current_time()

    def drop(data: bytes, t: float) -> bool:
        if is_rtcp_untrusted(data) or int.from_bytes(data[8:12], "big") != media_ssrc:
            return False
        seq = int.from_bytes(data[2:4], "big")
        if 1.5 < trio.current_time() - start < 2.7 and seq not in requests and rng.random() < 0.05:
            dropped.add(seq)
            return True
        return False

    spec = StreamSpec.from_params(peer.add_stream_params("s1"))
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        receiver = StreamReceiver(spec, 0, sock, None, t0_monotonic=trio.current_time(), deliver=lambda *_: True,
                                  clock=trio.current_time, rng=random.Random(seed))
        receiver.set_visible(True)
        async with trio.open_nursery() as nursery:
            proxy = ImpairmentProxy(sock.getsockname(), Impairment(seed=seed, delay_ms=5), drop=drop)
            proxy_address = await nursery.start(proxy.run)
            nursery.start_soon(receiver.run)
            await nursery.start(peer.run, proxy_address)
            await trio.sleep(3.0)
            nursery.cancel_scope.cancel()
    return receiver, requests, dropped


async def test_the_recorder_sends_receiver_reports_and_retries_at_the_rtt() -> None:
    peer = NackPeer(_camera(), sender_report_interval_s=0.25)
    receiver, requests, dropped = await _record_from_peer(peer, seed=5)
    # The peer received RFC 3550 receiver reports about its stream, about one a second.
    reports = [_decode_rr(data) for data in peer.stats.receiver_reports]
    assert 2 <= len(reports) <= 6, len(reports)
    assert receiver.stats.receiver_reports == len(reports)
    for reporter, blocks in reports:
        assert reporter == RECORDER_SSRC and len(blocks) == 1 and blocks[0][0] == peer.producer.ssrc
    *_, (_, [(_, fraction, lost, highest, jitter, lsr, dlsr)]) = reports
    assert 0 < lost <= len(dropped) and lsr != 0 and dlsr < 0.3 * 65536
    assert highest >= peer.stats.packets_sent - 200  # near the last sent (30 fps, several packets a frame)
    assert jitter < 90 * 50  # under 50 ms on a 5 ms proxy
    # The peer answered the XR RRT: the recorder knows the round trip, a few ms here.
    assert peer.stats.dlrr_sent >= 1
    assert receiver.stats.rtt_s is not None and receiver.stats.rtt_s < 0.05
    assert receiver.nack is not None and receiver.nack.path_rtt_s == receiver.stats.rtt_s
    # So a number never answered was asked for four times inside the 150 ms
    # wait (the first and three retries about RTT + 20 ms apart), not twice.
    assert len(dropped) >= 3
    for seq in dropped:
        times = requests[seq]
        assert len(times) == 4, (seq, times)
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert all(0.015 < gap < 0.07 for gap in gaps), gaps


async def test_without_a_dlrr_the_retries_keep_the_floor() -> None:
    peer = NackPeer(_camera(), sender_report_interval_s=0.25)
    peer.answers_rrt = False  # a sender that ignores XR
    receiver, requests, dropped = await _record_from_peer(peer, seed=5)
    assert peer.stats.receiver_reports and peer.stats.dlrr_sent == 0
    assert receiver.stats.rtt_s is None
    assert len(dropped) >= 3
    for seq in dropped:
        times = requests[seq]
        assert len(times) == 2, (seq, times)
        assert 0.095 < times[1] - times[0] < 0.13
