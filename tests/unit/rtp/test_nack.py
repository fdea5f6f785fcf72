"""Tests for edge_recorder.rtp.nack (generic NACK, RFC 4585 §6.2.1) and the NACK-answering fake.

Virtual time throughout. :func:`simulate` plays a whole exchange: a sender
keeps a :class:`RetransmissionHistory`, a seeded lossy network carries media
one way and NACKs back, the receiver runs a :class:`FrameAssembler` and a
:class:`NackScheduler` as the I/O shell will (push, received, update, poll;
wake at the earliest ``next_deadline``), and every NACK crosses the wire as
RTCP bytes and every retransmission as RTX (RFC 4588).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_recorder.rtp.assembler import AssembledFrame, FrameAssembler
from edge_recorder.rtp.depacketize import depacketizer_for
from edge_recorder.rtp.nack import NackScheduler
from edge_recorder.rtp.packet import RtpPacket
from edge_recorder.rtp.rtcp import GenericNack, parse_rtcp_untrusted, serialize_rtcp
from edge_recorder.rtp.rtx import RtxPacketizer, unwrap_rtx
from tests.fakes.lossy import LossyNetwork
from tests.fakes.nack_sender import RetransmissionHistory

MEDIA_PT = 100
MEDIA_SSRC = 0x0A0B0C0D
RTX_PT = 101
RTX_SSRC = 0x0A0B0C0E
RECEIVER_SSRC = 1
# An Opus code-0 packet (RFC 6716 §3.1): TOC 0xF8 (CELT FB 20 ms) and a frame.
OPUS_TOC = b"\xf8"


def gaps(*seqs: int, seen: float = 0.0) -> dict[int, float]:
    return dict.fromkeys(seqs, seen)


def scheduler(**kwargs: float) -> NackScheduler:
    return NackScheduler(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------ scheduler rules


def test_first_nack_waits_for_the_reorder_grace() -> None:
    nack = NackScheduler(reorder_grace_s=0.015)
    nack.update(gaps(10, seen=1.0), 1.0)
    assert nack.next_deadline() == pytest.approx(1.015)
    assert nack.poll(1.01) == []
    assert nack.poll(1.015) == [10]
    assert (nack.stats.nacked, nack.stats.nack_packets, nack.stats.retries) == (1, 1, 0)


def test_reordered_packet_inside_the_grace_is_never_nacked() -> None:
    nack = NackScheduler(reorder_grace_s=0.02)
    nack.update(gaps(10, seen=1.0), 1.0)
    assert nack.received(10, 1.01) is False  # arrived late, but before we asked
    nack.update({}, 1.01)
    assert nack.next_deadline() is None and nack.poll(2.0) == []
    assert nack.stats == type(nack.stats)()


def test_retries_are_spaced_and_limited() -> None:
    nack = NackScheduler(
        reorder_grace_s=0.01, min_retry_interval_s=0.1, max_retries=2, max_age_s=10.0
    )
    nack.update(gaps(5), 0.0)
    times = []
    while (deadline := nack.next_deadline()) is not None:
        assert nack.poll(deadline) == [5]
        times.append(deadline)
        assert nack.poll(deadline) == []  # asked once per instant
    assert times == pytest.approx([0.01, 0.11, 0.21])
    assert (nack.stats.nacked, nack.stats.retries, nack.stats.nack_packets) == (1, 2, 3)
    assert nack.pending == 1  # still missing, just not asked any more


def test_nothing_is_asked_past_max_age() -> None:
    nack = NackScheduler(
        max_age_s=0.15, reorder_grace_s=0.015, min_retry_interval_s=0.1, max_retries=5
    )
    nack.update(gaps(7), 0.0)
    assert nack.poll(0.015) == [7]
    assert nack.next_deadline() == pytest.approx(0.115)
    assert nack.poll(0.115) == [7]
    assert nack.next_deadline() is None  # 0.215 is past 0.15: no point asking


def test_a_late_poll_past_max_age_sends_nothing_and_does_not_spin() -> None:
    nack = NackScheduler(max_age_s=0.1, reorder_grace_s=0.01)
    nack.update(gaps(7), 0.0)
    assert nack.poll(0.5) == []
    assert nack.next_deadline() is None
    assert nack.stats.nacked == 0


def test_grace_longer_than_max_age_never_asks() -> None:
    nack = NackScheduler(max_age_s=0.01, reorder_grace_s=0.01)
    nack.update(gaps(7), 0.0)
    assert nack.next_deadline() is None and nack.poll(0.01) == []


def test_rtt_from_retransmissions_stretches_the_retry_interval() -> None:
    nack = NackScheduler(reorder_grace_s=0.0, min_retry_interval_s=0.01, max_age_s=10.0)
    assert nack.rtt_s is None and nack.retry_interval_s == 0.01
    nack.update(gaps(1, 2), 0.0)
    assert nack.poll(0.0) == [1, 2]
    assert nack.received(1, 0.04, retransmission=True)
    assert nack.rtt_s == pytest.approx(0.04)  # RFC 6298 §2.2: the first sample as is
    assert nack.retry_interval_s == pytest.approx(0.04)
    assert nack.received(2, 0.12, retransmission=True)
    assert nack.rtt_s == pytest.approx(0.04 + (0.12 - 0.04) / 8)  # gain 1/8
    assert (nack.stats.recovered, nack.stats.rtt_samples) == (2, 2)


def test_rtt_sample_is_timed_from_the_first_request() -> None:
    nack = NackScheduler(reorder_grace_s=0.0, min_retry_interval_s=0.05, max_age_s=10.0)
    nack.update(gaps(1), 0.0)
    assert nack.poll(0.0) == [1]
    assert nack.poll(0.05) == [1]
    assert nack.received(1, 0.06, retransmission=True)
    assert nack.rtt_s == pytest.approx(0.06)


def test_arrival_on_the_media_ssrc_recovers_without_an_rtt_sample() -> None:
    # mediasoup without RTX resends on the media SSRC: it may be a late original.
    nack = NackScheduler(reorder_grace_s=0.0)
    nack.update(gaps(3), 0.0)
    assert nack.poll(0.0) == [3]
    assert nack.received(3, 0.02)
    assert nack.stats.recovered == 1 and nack.rtt_s is None
    assert nack.received(3, 0.03) is False  # a duplicate counts once


def test_oldest_first_and_capped_per_packet() -> None:
    nack = NackScheduler(reorder_grace_s=0.0, max_per_nack=64)
    nack.update(gaps(*range(1000, 1100)), 0.0)
    first = nack.poll(0.0)
    assert first == list(range(1000, 1064))
    assert nack.next_deadline() == 0.0  # the rest is due at once: poll again
    assert nack.poll(0.0) == list(range(1064, 1100))
    assert nack.stats.nack_packets == 2 and nack.stats.nacked == 100


def test_wire_numbers_in_sequence_order_across_the_wrap() -> None:
    nack = NackScheduler(reorder_grace_s=0.0)
    nack.update(gaps(65534, 65535, 65536, 65537), 0.0)  # extended numbers
    assert nack.poll(0.0) == [65534, 65535, 0, 1]
    assert nack.received(0, 0.01)  # the wire number of 65536
    nack.update(gaps(65534, 65535, 65537), 0.01)
    assert nack.pending == 3 and nack.stats.recovered == 1


def test_gaps_the_assembler_gave_up_on_are_forgotten() -> None:
    nack = NackScheduler(reorder_grace_s=0.0)
    nack.update(gaps(1, 2, 3), 0.0)
    assert nack.poll(0.0) == [1, 2, 3]
    nack.update(gaps(3), 0.2)  # 1 and 2 given up (no received() for them)
    assert nack.pending == 1 and nack.stats.unrecovered == 2
    nack.update({}, 0.3)
    assert nack.pending == 0 and nack.stats.unrecovered == 3
    nack.update(gaps(9, seen=0.3), 0.3)  # never asked: not counted when it goes
    nack.update({}, 0.31)
    assert nack.stats.unrecovered == 3


def test_bare_sequence_numbers_are_seen_when_first_reported() -> None:
    nack = NackScheduler(reorder_grace_s=0.01)
    nack.update([4], 1.0)
    nack.update([4, 5], 1.005)  # 4 keeps its first time
    assert nack.next_deadline() == pytest.approx(1.01)
    assert nack.poll(1.01) == [4]
    assert nack.poll(1.015) == [5]


def test_a_renumbered_gap_starts_over() -> None:
    # A sender restart makes the assembler number the stream afresh: the same
    # extended number with a new seen time is a new gap with a fresh budget.
    nack = NackScheduler(reorder_grace_s=0.0, max_retries=0)
    nack.update(gaps(8, seen=0.0), 0.0)
    assert nack.poll(0.0) == [8]
    assert nack.next_deadline() is None
    nack.update(gaps(8, seen=5.0), 5.0)
    assert nack.stats.unrecovered == 1
    assert nack.poll(5.0) == [8]


def test_poll_output_packs_into_a_generic_nack() -> None:
    nack = NackScheduler(reorder_grace_s=0.0)
    lost = [65530, 65531, 65533, 65540, 65600, 70000]
    nack.update(gaps(*lost), 0.0)
    seqs = nack.poll(0.0)
    wire = serialize_rtcp([GenericNack(RECEIVER_SSRC, MEDIA_SSRC, seqs)])
    (parsed,) = parse_rtcp_untrusted(wire)
    assert isinstance(parsed, GenericNack)
    assert sorted(parsed.lost) == sorted(seq & 0xFFFF for seq in lost)
    assert len(wire) == 12 + 3 * 4  # 65530..65540 share one PID+BLP pair


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_age_s": 0.0},
        {"max_age_s": -1.0},
        {"max_age_s": math.inf},
        {"reorder_grace_s": -0.01},
        {"reorder_grace_s": math.nan},
        {"min_retry_interval_s": 0.0},
        {"max_retries": -1},
        {"max_per_nack": 0},
    ],
)
def test_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        scheduler(**kwargs)


# ------------------------------------------------------ the sender's history


def media(seq: int, payload: bytes = b"x") -> RtpPacket:
    return RtpPacket(MEDIA_PT, seq & 0xFFFF, seq * 960, MEDIA_SSRC, OPUS_TOC + payload)


def test_history_resends_originals_without_rtx() -> None:
    history = RetransmissionHistory(MEDIA_SSRC, capacity=4)
    for seq in range(65533, 65539):
        history.sent(media(seq))
    assert len(history) == 4  # 65533 and 65534 forgotten
    out = history.resend(GenericNack(RECEIVER_SSRC, MEDIA_SSRC, [65535, 0, 65534, 0, 2]))
    assert out == [media(65535), media(65536), media(65538)]
    s = history.stats
    assert (s.nacks, s.requested, s.resent, s.unavailable) == (1, 4, 3, 1)
    assert history.resend(GenericNack(RECEIVER_SSRC, 999, [0])) == []
    assert history.stats.ignored == 1


def test_history_wraps_in_rtx_with_its_own_counter() -> None:
    rtx = RtxPacketizer(payload_type=RTX_PT, ssrc=RTX_SSRC, initial_sequence=65535)
    history = RetransmissionHistory(MEDIA_SSRC, rtx=rtx)
    for seq in range(10):
        history.sent(media(seq, bytes((seq,))))
    out = history.resend(GenericNack(RECEIVER_SSRC, MEDIA_SSRC, [3, 7]))
    out += history.resend(GenericNack(RECEIVER_SSRC, MEDIA_SSRC, [3]))
    assert [(p.ssrc, p.payload_type, p.sequence_number) for p in out] == [
        (RTX_SSRC, RTX_PT, 65535),
        (RTX_SSRC, RTX_PT, 0),
        (RTX_SSRC, RTX_PT, 1),
    ]
    restored = [unwrap_rtx(p, media_payload_type=MEDIA_PT, media_ssrc=MEDIA_SSRC) for p in out]
    assert restored == [media(3, b"\x03"), media(7, b"\x07"), media(3, b"\x03")]


def test_history_refuses_another_stream_and_bad_capacity() -> None:
    history = RetransmissionHistory(MEDIA_SSRC)
    with pytest.raises(ValueError):
        history.sent(RtpPacket(MEDIA_PT, 1, 0, 12345))
    for capacity in (0, 32769):
        with pytest.raises(ValueError):
            RetransmissionHistory(MEDIA_SSRC, capacity=capacity)


# --------------------------------------------------------- the whole exchange


@dataclass(frozen=True)
class Request:
    """One sequence number in one NACK, as the receiver saw things at that instant."""

    time: float
    seq: int  # wire number
    seen: float  # when the assembler first saw it missing
    already_received: bool
    retry_interval_s: float  # the scheduler's spacing just before the poll
    packet_size: int  # how many numbers the NACK carried


@dataclass
class Exchange:
    """Everything one simulated exchange produced."""

    sent: list[RtpPacket]
    forward_delivered: set[int]  # wire numbers that crossed the media path
    received: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    ever_missing: set[int] = field(default_factory=set)  # wire numbers
    requests: list[Request] = field(default_factory=list)
    retransmissions_delivered: dict[int, list[float]] = field(
        default_factory=lambda: defaultdict(list)
    )
    frames: list[AssembledFrame] = field(default_factory=list)
    nack: NackScheduler = field(default_factory=NackScheduler)

    def requests_for(self, seq: int) -> list[Request]:
        return [r for r in self.requests if r.seq == seq]


def simulate(
    *,
    seed: int,
    packets: int = 250,
    interval_s: float = 0.01,
    initial_sequence: int = 65400,
    loss: float = 0.1,
    reorder: float = 0.0,
    duplicate: float = 0.0,
    jitter_s: float = 0.0,
    feedback_loss: float = 0.0,
    rtx_loss: float = 0.0,
    max_age_s: float = 0.15,
    reorder_grace_s: float = 0.015,
    min_retry_interval_s: float = 0.03,
    max_retries: int = 3,
    max_per_nack: int = 64,
) -> Exchange:
    """Play one sender/receiver exchange with NACK and RTX in virtual time."""
    rtx = RtxPacketizer(payload_type=RTX_PT, ssrc=RTX_SSRC, initial_sequence=seed & 0xFFFF)
    history = RetransmissionHistory(MEDIA_SSRC, rtx=rtx)
    sent = [media(initial_sequence + i, i.to_bytes(4, "big")) for i in range(packets)]
    for packet in sent:
        history.sent(packet)
    forward: LossyNetwork[RtpPacket] = LossyNetwork(
        seed,
        loss=loss,
        reorder=reorder,
        duplicate=duplicate,
        jitter_s=jitter_s,
        base_delay_s=0.01,
    )
    back: LossyNetwork[bytes] = LossyNetwork(seed + 1, loss=feedback_loss, base_delay_s=0.01)
    resend: LossyNetwork[RtpPacket] = LossyNetwork(
        seed + 2, loss=rtx_loss, jitter_s=jitter_s, base_delay_s=0.01
    )
    arrivals = forward.transmit((i * interval_s, p) for i, p in enumerate(sent))

    assembler = FrameAssembler(depacketizer_for("audio/opus"), max_wait_s=max_age_s)
    nack = NackScheduler(
        max_age_s=max_age_s,
        reorder_grace_s=reorder_grace_s,
        min_retry_interval_s=min_retry_interval_s,
        max_retries=max_retries,
        max_per_nack=max_per_nack,
    )
    out = Exchange(
        sent=sent, forward_delivered={p.sequence_number for _, p in arrivals}, nack=nack
    )

    order = itertools.count()
    events: list[tuple[float, int, str, object]] = []
    for arrival, packet in arrivals:
        heapq.heappush(events, (arrival, next(order), "rtp", packet))

    def sync_and_send(now: float) -> None:
        nack.update(assembler.missing_since(), now)
        out.ever_missing.update(seq & 0xFFFF for seq in assembler.missing_since())
        while True:
            seen = {seq & 0xFFFF: t for seq, t in assembler.missing_since().items()}
            interval = nack.retry_interval_s
            seqs = nack.poll(now)
            if not seqs:
                return
            for seq in seqs:
                out.requests.append(
                    Request(now, seq, seen[seq], seq in out.received, interval, len(seqs))
                )
            wire = serialize_rtcp([GenericNack(RECEIVER_SSRC, MEDIA_SSRC, seqs)])
            for arrival, datagram in back.transmit([(now, wire)]):
                heapq.heappush(events, (arrival, next(order), "rtcp", datagram))
            deadline = nack.next_deadline()
            if deadline is None or deadline > now:
                return

    now = 0.0
    for _ in range(1_000_000):
        deadlines = [d for d in (assembler.next_deadline(), nack.next_deadline()) if d is not None]
        wake = min(deadlines, default=math.inf)
        if not events and wake == math.inf:
            break
        if wake <= (events[0][0] if events else math.inf):
            # As the I/O shell: timers first, then packets that arrive at that instant.
            now = max(now, wake)
            out.frames += assembler.poll(now)
            sync_and_send(now)
            continue
        now, _, kind, item = heapq.heappop(events)
        if kind == "rtcp":
            assert isinstance(item, bytes)
            for feedback in parse_rtcp_untrusted(item):
                assert isinstance(feedback, GenericNack)
                for packet in history.resend(feedback):
                    for arrival, copy in resend.transmit([(now, packet)]):
                        heapq.heappush(events, (arrival, next(order), "rtp", copy))
            continue
        assert isinstance(item, RtpPacket)
        packet: RtpPacket | None = item
        retransmission = item.ssrc == RTX_SSRC
        if retransmission:
            packet = unwrap_rtx(item, media_payload_type=MEDIA_PT, media_ssrc=MEDIA_SSRC)
            assert packet is not None
            out.retransmissions_delivered[packet.sequence_number].append(now)
        assert packet is not None
        out.frames += assembler.push(packet, now)
        out.received[packet.sequence_number].append(now)
        nack.received(packet.sequence_number, now, retransmission=retransmission)
        sync_and_send(now)
    else:
        pytest.fail("the simulation did not settle")
    return out


def check_scheduler_invariants(out: Exchange, **config: float) -> None:
    """What the scheduler must never do, whatever the network did."""
    max_age_s = config.get("max_age_s", 0.15)
    grace_s = config.get("reorder_grace_s", 0.015)
    min_interval_s = config.get("min_retry_interval_s", 0.03)
    max_retries = int(config.get("max_retries", 3))
    max_per_nack = int(config.get("max_per_nack", 64))
    eps = 1e-9
    by_seq: dict[int, list[Request]] = defaultdict(list)
    for request in out.requests:
        by_seq[request.seq].append(request)
        # Never NACKs a packet already received.
        assert not request.already_received, request
        # Never before the reorder grace, never past the max age.
        assert request.time - request.seen >= grace_s - eps, request
        assert request.time - request.seen < max_age_s, request
        assert request.packet_size <= max_per_nack
    for seq, requests in by_seq.items():
        # Never more than the retry limit.
        assert len(requests) <= 1 + max_retries, seq
        # Retries spaced by at least max(RTT, minimum interval).
        for previous, retry in itertools.pairwise(requests):
            spacing = retry.time - previous.time
            assert spacing >= min_interval_s - eps, (seq, spacing)
            assert spacing >= retry.retry_interval_s - eps, (seq, spacing)
    stats = out.nack.stats
    assert stats.nacked == len(by_seq)
    assert stats.retries == len(out.requests) - len(by_seq)
    assert stats.recovered + stats.unrecovered + out.nack.pending >= stats.nacked


def lost_and_noticed(out: Exchange) -> set[int]:
    """Wire numbers the media path dropped and the receiver saw missing."""
    return {
        p.sequence_number for p in out.sent if p.sequence_number not in out.forward_delivered
    } & out.ever_missing


def emitted(out: Exchange) -> list[int]:
    return [frame.first_seq & 0xFFFF for frame in out.frames]


settings_sim = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@settings_sim
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0.0, 0.3),
    reorder=st.floats(0.0, 0.3),
    duplicate=st.floats(0.0, 0.1),
    jitter_s=st.floats(0.0, 0.02),
    reorder_grace_s=st.floats(0.0, 0.03),
)
def test_every_noticed_loss_is_recovered_when_feedback_and_rtx_get_through(
    seed: int,
    loss: float,
    reorder: float,
    duplicate: float,
    jitter_s: float,
    reorder_grace_s: float,
) -> None:
    # First NACK at seen + grace (<= 30 ms), 10 ms back, 10-30 ms forward: well
    # inside the 150 ms the assembler waits.
    out = simulate(
        seed=seed,
        loss=loss,
        reorder=reorder,
        duplicate=duplicate,
        jitter_s=jitter_s,
        reorder_grace_s=reorder_grace_s,
    )
    check_scheduler_invariants(out, reorder_grace_s=reorder_grace_s)
    lost = lost_and_noticed(out)
    for seq in lost:
        assert out.requests_for(seq), f"lost {seq} never asked for"
        assert seq in out.received, f"lost {seq} never recovered"
    # Every packet between the first and the last the receiver got was played,
    # in order, once: nothing was given up on.
    order = [p.sequence_number for p in out.sent]
    got = [seq for seq in order if seq in out.received]
    start, end = order.index(got[0]), order.index(got[-1])
    assert emitted(out) == order[start : end + 1]
    assert out.nack.stats.recovered >= len(lost)
    assert out.nack.stats.unrecovered == 0
    if not reorder and not jitter_s:
        # In-order arrival: only true losses are asked for, each answered at once.
        assert {r.seq for r in out.requests} == lost
        assert out.nack.stats.retries == 0
        assert out.nack.stats.recovered == len(lost)


@settings_sim
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0.0, 0.4),
    reorder=st.floats(0.0, 0.3),
    duplicate=st.floats(0.0, 0.1),
    jitter_s=st.floats(0.0, 0.02),
    feedback_loss=st.floats(0.0, 0.5),
    rtx_loss=st.floats(0.0, 0.5),
    max_age_s=st.sampled_from([0.1, 0.15, 0.3]),
    reorder_grace_s=st.floats(0.0, 0.03),
    min_retry_interval_s=st.floats(0.01, 0.08),
    max_retries=st.integers(0, 4),
    max_per_nack=st.integers(1, 64),
)
def test_scheduler_invariants_on_a_lossy_exchange(
    seed: int,
    loss: float,
    reorder: float,
    duplicate: float,
    jitter_s: float,
    feedback_loss: float,
    rtx_loss: float,
    max_age_s: float,
    reorder_grace_s: float,
    min_retry_interval_s: float,
    max_retries: int,
    max_per_nack: int,
) -> None:
    config = {
        "max_age_s": max_age_s,
        "reorder_grace_s": reorder_grace_s,
        "min_retry_interval_s": min_retry_interval_s,
        "max_retries": max_retries,
        "max_per_nack": max_per_nack,
    }
    out = simulate(
        seed=seed,
        loss=loss,
        reorder=reorder,
        duplicate=duplicate,
        jitter_s=jitter_s,
        feedback_loss=feedback_loss,
        rtx_loss=rtx_loss,
        **config,  # type: ignore[arg-type]
    )
    check_scheduler_invariants(out, **config)
    for seq in lost_and_noticed(out):
        requests = out.requests_for(seq)
        if reorder_grace_s < max_age_s:
            assert requests, f"lost {seq} never asked for"
        # A retransmission that arrived before the assembler gave up was used.
        seen = requests[0].seen if requests else math.inf
        if any(t < seen + max_age_s for t in out.retransmissions_delivered[seq]):
            assert seq in emitted(out)


def test_lossy_exchange_counts_for_a_fixed_seed() -> None:
    out = simulate(
        seed=11, loss=0.1, reorder=0.1, jitter_s=0.005, feedback_loss=0.2, rtx_loss=0.2
    )
    check_scheduler_invariants(out)
    stats = out.nack.stats
    lost = lost_and_noticed(out)
    assert len(lost) > 10
    assert stats.nacked >= len(lost) and stats.retries > 0
    assert 0 < stats.recovered <= stats.nacked
    assert stats.rtt_samples > 0 and out.nack.rtt_s is not None
    # 10 ms each way plus up to 5 ms jitter, or a retry's worth more.
    assert 0.02 <= out.nack.rtt_s < 0.1
    assert stats.nack_packets <= stats.nacked + stats.retries
