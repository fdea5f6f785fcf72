"""The impaired path itself: the skew arithmetic exactly, then loss, bursts,
jitter, reordering, duplication, delay and the return path over real UDP
sockets on localhost."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from edge_recorder.rtp.packet import RtpPacket, is_rtcp_untrusted, parse_rtp_untrusted, serialize_rtp
from edge_recorder.rtp.rtcp import (
    Pli,
    SenderReport,
    SourceDescription,
    ntp_to_seconds,
    parse_rtcp_untrusted,
    seconds_to_ntp,
    serialize_rtcp,
)
from edge_recorder.rtp.seqnum import seq_distance
from tests.integration.impair import ClockSkew, Impairment, ImpairmentProxy, PathModel

pytestmark = pytest.mark.integration

VIDEO_SSRC = 0x1234_5678
AUDIO_SSRC = 0x0BAD_CAFE


def _rtp(seq: int, ts: int = 0, ssrc: int = VIDEO_SSRC, pt: int = 96) -> bytes:
    return serialize_rtp(RtpPacket(pt, seq & 0xFFFF, ts & 0xFFFF_FFFF, ssrc, payload=b"\x90\x80" + bytes(100)))


def _sr(ssrc: int, ntp: int, ts: int) -> bytes:
    return serialize_rtcp(
        [SenderReport(ssrc, ntp, ts & 0xFFFF_FFFF, 1, 100), SourceDescription([(ssrc, [(1, b"a@b")])])]
    )


def _round_exact(numerator: int, denominator: int) -> int:
    """Round half to even, in integers (what ``round(Fraction)`` does)."""
    q, r = divmod(numerator, denominator)
    if 2 * r > denominator or (2 * r == denominator and q % 2):
        q += 1
    return q


# ------------------------------------------------------------ skew, exactly


@pytest.mark.parametrize("ppm", [100, -250, 37, 1000])
def test_skew_rewrites_rtp_timestamps_around_each_ssrcs_first_exactly(ppm: int) -> None:
    skew = ClockSkew(ppm)
    ts0 = 0xFFFF_0000  # wraps within the first second
    for k in range(0, 400):
        delta = 3000 * k
        got = skew.rtp_timestamp(VIDEO_SSRC, ts0 + delta)
        want = (ts0 + _round_exact(delta * (1_000_000 + ppm), 1_000_000)) & 0xFFFF_FFFF
        assert got == want, k
    # Another SSRC far away in timestamp space has its own origin.
    assert skew.rtp_timestamp(AUDIO_SSRC, 5000) == 5000
    assert skew.rtp_timestamp(AUDIO_SSRC, 5000 + 48000) == 5000 + _round_exact(48000 * (1_000_000 + ppm), 1_000_000)
    # A timestamp before the origin (an SR sent before the first packet's
    # capture instant, say) is scaled the other way.
    assert skew.rtp_timestamp(AUDIO_SSRC, 5000 - 48000) == (5000 - _round_exact(48000 * (1_000_000 + ppm), 1_000_000)) & 0xFFFF_FFFF


def test_skew_rtx_ssrc_shares_its_media_ssrcs_origin() -> None:
    skew = ClockSkew(400)
    for k in range(100):
        skew.rtp_timestamp(VIDEO_SSRC, 1_000_000 + 3000 * k)
    # A retransmission of packet 50 on an RTX SSRC carries packet 50's timestamp.
    assert skew.rtp_timestamp(0xABCD, 1_000_000 + 3000 * 50) == skew.rtp_timestamp(VIDEO_SSRC, 1_000_000 + 3000 * 50)


def test_skew_rewrites_sender_reports_consistently_for_one_wallclock() -> None:
    """Emulate a real sender (perfect clocks) and check the skewed SRs describe
    a sender whose RTP and NTP clocks both run 1 + skew fast and whose audio and
    video still map to one wallclock instant."""
    ppm = 500
    skew = ClockSkew(ppm)
    wall0 = 3_900_000_000.25  # NTP seconds at real time 0
    v_base, a_base = 0xFFFF_F000, 123_456  # RTP timestamps at real time 0 (video wraps)

    def sender_at(t: float) -> tuple[int, int, int]:
        return seconds_to_ntp(wall0 + t), (v_base + round(t * 90000)) & 0xFFFF_FFFF, (a_base + round(t * 48000)) & 0xFFFF_FFFF

    # First media packets fix the RTP origins at t = 0.
    skew.rtp_timestamp(VIDEO_SSRC, v_base)
    skew.rtp_timestamp(AUDIO_SSRC, a_base)
    reports: dict[int, list[tuple[float, int]]] = {VIDEO_SSRC: [], AUDIO_SSRC: []}
    first_ntp = None
    for t in (0.5, 0.75, 10.5, 20.25):
        ntp, vts, ats = sender_at(t)
        for ssrc, ts in ((VIDEO_SSRC, vts), (AUDIO_SSRC, ats)):
            data = bytearray(_sr(ssrc, ntp, ts))
            assert skew.rewrite_rtcp(data) == 1
            sr = parse_rtcp_untrusted(bytes(data))
            assert isinstance(sr[0], SenderReport) and isinstance(sr[1], SourceDescription)
            if first_ntp is None:
                first_ntp = ntp
            # NTP is scaled exactly around the path's first SR.
            assert sr[0].ntp_timestamp == first_ntp + _round_exact((ntp - first_ntp) * (1_000_000 + ppm), 1_000_000)
            assert sr[0].rtp_timestamp == skew.rtp_timestamp(ssrc, ts)
            reports[ssrc].append((ntp_to_seconds(sr[0].ntp_timestamp), sr[0].rtp_timestamp))
    origins = {}
    for ssrc, rate, base in ((VIDEO_SSRC, 90000, v_base), (AUDIO_SSRC, 48000, a_base)):
        pairs = reports[ssrc]
        # The sender's own clocks agree: RTP advances `rate` per (skewed) NTP second.
        for (n1, r1), (n2, r2) in zip(pairs, pairs[1:]):
            assert abs(((r2 - r1) & 0xFFFF_FFFF) / rate - (n2 - n1)) < 2 / rate
        # ...and both run 1 + skew fast against real time (19.75 s here).
        (n_first, r_first), (n_last, r_last) = pairs[0], pairs[-1]
        assert ((r_last - r_first) & 0xFFFF_FFFF) / rate == pytest.approx(19.75 * (1 + ppm / 1e6), abs=1 / rate)
        assert n_last - n_first == pytest.approx(19.75 * (1 + ppm / 1e6), abs=1e-6)
        # The wallclock instant of the RTP origin, from every SR.
        origins[ssrc] = [n - (((r - base + 0x8000_0000) & 0xFFFF_FFFF) - 0x8000_0000) / rate for n, r in pairs]
    all_origins = origins[VIDEO_SSRC] + origins[AUDIO_SSRC]
    # Audio and video map to one wallclock: A/V sync survives the skew.
    assert max(all_origins) - min(all_origins) < 3e-5


def test_path_model_replays_from_its_seed() -> None:
    imp = Impairment(seed=42, loss=0.1, burst_probability=0.02, burst_length=(2, 4), jitter_ms=10, reorder=0.05, duplicate=0.05)
    runs = []
    for _ in range(2):
        model = PathModel(imp)
        runs.append([model.delays(_rtp(i)) for i in range(500)])
    assert runs[0] == runs[1]
    assert any(d == [] for d in runs[0]) and any(len(d) == 2 for d in runs[0])


# --------------------------------------------------------------- real sockets


@dataclass
class Received:
    packets: list[tuple[float, bytes]] = field(default_factory=list)
    source: Any = None


@dataclass
class Rig:
    proxy: ImpairmentProxy
    proxy_address: tuple[str, int]
    sender: Any
    receiver: Any
    received: Received


@asynccontextmanager
async def _rig(impairment: Impairment, **proxy_kwargs: Any) -> AsyncIterator[Rig]:
    receiver = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    sender = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with receiver, sender:
        await receiver.bind(("127.0.0.1", 0))
        await sender.bind(("127.0.0.1", 0))
        received = Received()

        async def collect() -> None:
            while True:
                data, source = await receiver.recvfrom(65535)
                received.source = source
                received.packets.append((trio.current_time(), data))

        async with trio.open_nursery() as nursery:
            proxy = ImpairmentProxy(receiver.getsockname(), impairment, **proxy_kwargs)
            address = await nursery.start(proxy.run)
            nursery.start_soon(collect)
            yield Rig(proxy, address, sender, receiver, received)
            nursery.cancel_scope.cancel()


async def _send(rig: Rig, packets: list[bytes], *, spacing_s: float = 0.0005) -> list[float]:
    """Send paced (the receiver's kernel buffer must never overflow); returns send times."""
    start = trio.current_time()
    times = []
    for i, data in enumerate(packets):
        await trio.sleep_until(start + i * spacing_s)
        times.append(trio.current_time())
        await rig.sender.sendto(data, rig.proxy_address)
    return times


async def _settle(rig: Rig, sent: int) -> None:
    """Wait until the proxy has taken all ``sent`` datagrams and the receiver has
    everything the proxy delivered."""
    with trio.fail_after(5):
        while rig.proxy.stats.received < sent or rig.proxy.pending:
            await trio.sleep(0.005)
        while len(rig.received.packets) < rig.proxy.stats.forwarded:
            await trio.sleep(0.005)
    await trio.sleep(0.02)  # anything extra would show up now


def _seqs(received: Received, ssrc: int = VIDEO_SSRC) -> list[int]:
    out = []
    for _, data in received.packets:
        if not is_rtcp_untrusted(data):
            packet = parse_rtp_untrusted(data)
            if packet.ssrc == ssrc:
                out.append(packet.sequence_number)
    return out


async def test_loss_rate_matches_the_seed_and_drops_are_listed() -> None:
    n, first = 2000, 64500  # the sequence numbers wrap
    async with _rig(Impairment(seed=7, loss=0.1)) as rig:
        await _send(rig, [_rtp(first + i) for i in range(n)], spacing_s=0.0002)
        await _settle(rig, n)
    stats = rig.proxy.stats
    assert stats.received == n
    assert 0.085 <= stats.dropped / n <= 0.115
    got = _seqs(rig.received)
    assert len(got) == stats.forwarded == n - stats.dropped
    dropped = {seq for ssrc, seq in stats.dropped_packets if ssrc == VIDEO_SSRC}
    assert len(dropped) == stats.dropped
    assert dropped.isdisjoint(got)
    assert dropped | set(got) == {(first + i) & 0xFFFF for i in range(n)}
    # The receiver sees the proxy's upstream socket, which is what it answers.
    assert rig.received.source == rig.proxy.upstream_address


def _runs(seqs: list[int]) -> list[int]:
    """Lengths of runs of consecutive sequence numbers (in send order)."""
    runs: list[int] = []
    previous = None
    for seq in seqs:
        if previous is not None and seq_distance(previous, seq) == 1:
            runs[-1] += 1
        else:
            runs.append(1)
        previous = seq
    return runs


async def test_burst_loss_drops_runs_of_the_configured_length() -> None:
    n = 2000
    async with _rig(Impairment(seed=3, burst_probability=0.02, burst_length=(2, 5))) as rig:
        await _send(rig, [_rtp(i) for i in range(n)], spacing_s=0.0002)
        await _settle(rig, n)
    stats = rig.proxy.stats
    runs = _runs([seq for _, seq in stats.dropped_packets])
    assert len(runs) >= 20
    assert min(runs) >= 2
    # Two bursts back to back (p = 0.02 per packet) merge into one longer run.
    assert sum(r <= 5 for r in runs) >= 0.9 * len(runs)
    assert 2.0 <= sum(runs) / len(runs) <= 5.5
    assert set(_seqs(rig.received)).isdisjoint(seq for _, seq in stats.dropped_packets)


async def test_jitter_reorders_and_the_fixed_delay_holds() -> None:
    n = 400
    async with _rig(Impairment(seed=11, delay_ms=40, jitter_ms=15)) as rig:
        sent = await _send(rig, [_rtp(i) for i in range(n)], spacing_s=0.002)
        await _settle(rig, n)
    stats = rig.proxy.stats
    got = _seqs(rig.received)
    assert sorted(got) == list(range(n))
    measured = sum(1 for i, seq in enumerate(got) if seq < max(got[: i + 1]))
    assert measured > 20, "15 ms of jitter at 2 ms spacing must reorder"
    assert stats.reordered == measured
    delays = [t - sent[parse_rtp_untrusted(d).sequence_number] for t, d in rig.received.packets]
    assert min(delays) >= 0.040 - 0.001
    assert max(delays) <= 0.040 + 0.015 + 0.030  # scheduling slack on a busy CI box


async def test_normal_jitter_stays_within_its_bound() -> None:
    n = 300
    async with _rig(Impairment(seed=5, jitter_ms=20, jitter_distribution="normal")) as rig:
        sent = await _send(rig, [_rtp(i) for i in range(n)], spacing_s=0.002)
        await _settle(rig, n)
    delays = sorted(t - sent[parse_rtp_untrusted(d).sequence_number] for t, d in rig.received.packets)
    assert len(delays) == n
    median = delays[n // 2]
    assert 0.002 <= median <= 0.012  # half-normal σ = 6.7 ms: median ≈ 4.5 ms
    assert rig.proxy.stats.reordered > 0


async def test_explicit_reordering_and_duplication() -> None:
    n = 500
    async with _rig(Impairment(seed=9, reorder=0.1, reorder_delay_ms=20, duplicate=0.05)) as rig:
        await _send(rig, [_rtp(i) for i in range(n)], spacing_s=0.002)
        await _settle(rig, n)
    stats = rig.proxy.stats
    got = _seqs(rig.received)
    counts = Counter(got)
    assert set(counts) == set(range(n))
    assert sum(c - 1 for c in counts.values()) == stats.duplicated > 10
    assert 30 <= stats.reorder_delayed <= 80
    assert stats.reordered > 20
    assert stats.forwarded == len(got) == n + stats.duplicated


async def test_rtcp_is_not_impaired_by_default_and_the_return_path_works() -> None:
    async with _rig(Impairment(seed=1, loss=1.0)) as rig:
        await _send(rig, [_rtp(i) for i in range(20)] + [_sr(VIDEO_SSRC, seconds_to_ntp(3.9e9), 1234)])
        await _settle(rig, 21)
        assert rig.proxy.stats.dropped == 20
        assert len(rig.received.packets) == 1 and is_rtcp_untrusted(rig.received.packets[0][1])
        # The recorder answers the address it received from; the proxy relays
        # that back to the sender unchanged.
        pli = serialize_rtcp([Pli(1, VIDEO_SSRC)])
        await rig.receiver.sendto(pli, rig.received.source)
        with trio.fail_after(2):
            data, source = await rig.sender.recvfrom(2048)
        assert data == pli and source == rig.proxy_address
        assert rig.proxy.stats.returned == 1


async def test_rtcp_is_impaired_on_request_and_scripted_drops_count() -> None:
    imp = Impairment(seed=1, loss=1.0, impair_rtcp=True)
    async with _rig(imp, drop=lambda data, t: not is_rtcp_untrusted(data) and data[3] % 2 == 0) as rig:
        await _send(rig, [_rtp(i) for i in range(10)] + [_sr(VIDEO_SSRC, seconds_to_ntp(3.9e9), 1)])
        await _settle(rig, 11)
    stats = rig.proxy.stats
    assert rig.received.packets == []
    assert stats.dropped == 11 and stats.dropped_rtcp == 1
    assert sorted(seq for _, seq in stats.dropped_packets) == list(range(10))


async def test_clock_skew_rewrites_what_arrives() -> None:
    ppm = 2000
    ntp0 = seconds_to_ntp(3_900_000_000.0)
    v0, a0 = 0xFFFF_FF00, 777
    packets = []
    for k in range(30):
        packets.append(_rtp(k, v0 + 3000 * k, VIDEO_SSRC))
        packets.append(_rtp(k, a0 + 960 * k, AUDIO_SSRC, pt=111))
    packets.append(_sr(VIDEO_SSRC, ntp0 + (1 << 32), v0 + 90000))  # 1 s later on both clocks
    packets.append(_sr(AUDIO_SSRC, ntp0 + (3 << 31), a0 + 72000))  # 1.5 s
    async with _rig(Impairment(seed=0, clock_skew_ppm=ppm)) as rig:
        await _send(rig, packets)
        await _settle(rig, len(packets))
    assert rig.proxy.stats.rewritten_srs == 2
    rtp = [parse_rtp_untrusted(d) for _, d in rig.received.packets if not is_rtcp_untrusted(d)]
    for p in rtp:
        k = p.sequence_number
        if p.ssrc == VIDEO_SSRC:
            assert p.timestamp == (v0 + _round_exact(3000 * k * (1_000_000 + ppm), 1_000_000)) & 0xFFFF_FFFF
        else:
            assert p.timestamp == a0 + _round_exact(960 * k * (1_000_000 + ppm), 1_000_000)
    srs = [parse_rtcp_untrusted(d)[0] for _, d in rig.received.packets if is_rtcp_untrusted(d)]
    assert [sr.ssrc for sr in srs if isinstance(sr, SenderReport)] == [VIDEO_SSRC, AUDIO_SSRC]
    video_sr, audio_sr = srs
    assert isinstance(video_sr, SenderReport) and isinstance(audio_sr, SenderReport)
    # The first SR is the NTP origin; the second is scaled around it.
    assert video_sr.ntp_timestamp == ntp0 + (1 << 32)
    assert audio_sr.ntp_timestamp == ntp0 + (1 << 32) + _round_exact((1 << 31) * (1_000_000 + ppm), 1_000_000)
    assert video_sr.rtp_timestamp == (v0 + 90000 + 180) & 0xFFFF_FFFF
    assert audio_sr.rtp_timestamp == a0 + 72000 + 144
