"""Receiver reports: report blocks (RFC 3550 §6.4.1, §A.3, §A.8), the interval (§6.2), XR RRT/DLRR (RFC 3611)."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_recorder.errors import ParseError, RtcpParseError
from edge_recorder.rtp.nack import NackScheduler
from edge_recorder.rtp.reports import ReceptionStatistics, ReportSchedule, rtt_from_dlrr
from edge_recorder.rtp.rtcp import (
    SDES_CNAME,
    DlrrItem,
    ReceiverReport,
    ReportBlock,
    SourceDescription,
    Unknown,
    parse_rtcp_untrusted,
    parse_xr_dlrr_untrusted,
    receiver_reference_time,
    serialize_rtcp,
)
from tests.fakes.lossy import LossyNetwork

US = 0x5EC0DE01
MEDIA = 0x11223344


def test_a_compound_report_matches_the_hand_computed_bytes() -> None:
    stats = ReceptionStatistics(90000)
    # 65534, 65535, then 0..9 without 3, 4, 7: the wrap counts a cycle, 3 lost.
    for i, seq in enumerate([65534, 65535, 0, 1, 2, 5, 6, 8, 9]):
        stats.received(seq, 3000 * i, i / 30)  # timestamps follow arrival: no jitter
    stats.on_sender_report(0x0000_AAAA_BBBB_0000, 0.25)
    block = stats.report(MEDIA, 0.25 + 1.5)
    assert block == ReportBlock(MEDIA, fraction_lost=(3 << 8) // 12, packets_lost=3, highest_sequence=0x0001_0009, jitter=0, lsr=0xAAAABBBB, dlsr=0x0001_8000)
    data = serialize_rtcp(
        [
            ReceiverReport(US, [block]),
            SourceDescription([(US, [(SDES_CNAME, b"edge-recorder")])]),
            receiver_reference_time(US, 0x0102_0304_0506_0708),
        ]
    )
    expected = bytes.fromhex(
        # RR: V=2 RC=1, PT 201, 7 words; our SSRC; the block (fraction 64, lost 3).
        "81c90007" "5ec0de01" "11223344" "40000003" "00010009" "00000000" "aaaabbbb" "00018000"
        # SDES: SC=1, PT 202, 5 words; CNAME (1), 13 bytes, one null to the word.
        "81ca0005" "5ec0de01" "010d" + b"edge-recorder".hex() + "00"
        # XR: PT 207, 4 words; our SSRC; RRT block (BT 4, 2 words), NTP.
        "80cf0004" "5ec0de01" "04000002" "0102030405060708"
    )
    assert data == expected


def _independent_block(arrivals: list[int], highest_ext: int, base_ext: int) -> tuple[int, int]:
    expected = highest_ext - base_ext + 1
    return expected, expected - len(arrivals)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_loss_over_a_seeded_lossy_network(seed: int) -> None:
    net: LossyNetwork[int] = LossyNetwork(seed=seed, loss=0.1, duplicate=0.02, reorder=0.05, jitter_s=0.004)
    first = 65000  # wraps after 536 packets
    sent = [(i * 0.02, first + i) for i in range(2000)]
    delivered = net.transmit(sent)
    stats = ReceptionStatistics(48000)
    half = len(delivered) // 2
    blocks = []
    for n, (arrival, ext) in enumerate(delivered):
        stats.received(ext & 0xFFFF, (ext - first) * 960, arrival)
        if n + 1 in (half, len(delivered)):
            blocks.append(stats.report(MEDIA, arrival))
    # Independently: extended numbers are known here, so expected and lost are plain arithmetic.
    base = delivered[0][1]
    exts = [ext for _, ext in delivered]
    exp1, lost1 = _independent_block(exts[:half], max(exts[:half]), base)
    exp2, lost2 = _independent_block(exts, max(exts), base)
    assert blocks[0].packets_lost == lost1 and blocks[1].packets_lost == lost2
    assert blocks[1].highest_sequence == max(exts)  # starting at 65000 the extension is the number itself
    assert blocks[0].fraction_lost == ((exp1 - half) << 8) // exp1
    interval_expected, interval_received = exp2 - exp1, len(exts) - half
    assert blocks[1].fraction_lost == max(0, ((interval_expected - interval_received) << 8) // interval_expected)
    # What the network did, roughly: 10 % lost less 2 % duplicated.
    assert abs(lost2 - (net.stats.dropped - net.stats.duplicated)) <= 5  # the edges may differ
    assert 10 < blocks[1].fraction_lost < 40


def test_duplicates_make_loss_negative_and_fraction_zero() -> None:
    stats = ReceptionStatistics(90000)
    for seq in [1, 2, 2, 3, 3]:
        stats.received(seq, 0, 0.0)
    block = stats.report(MEDIA, 0.0)
    assert block.packets_lost == -2 and block.fraction_lost == 0


def test_a_stray_jump_is_ignored_and_a_restart_starts_over() -> None:
    stats = ReceptionStatistics(90000)
    for seq in range(10):
        stats.received(seq, 0, 0.0)
    stats.received(40000, 0, 0.0)  # one stray packet
    assert stats.report(MEDIA, 0.0).highest_sequence == 9
    stats.received(30000, 0, 0.0)
    stats.received(30001, 0, 0.0)  # two in sequence: the sender restarted
    stats.received(30003, 0, 0.0)
    block = stats.report(MEDIA, 0.0)
    assert block.highest_sequence == 30003 and block.packets_lost == 1


def test_jitter_follows_rfc3550_a8() -> None:
    stats = ReceptionStatistics(48000)
    for i in range(50):
        stats.received(i, 960 * i, 1.0 + 0.02 * i)
    assert stats.report(MEDIA, 2.0).jitter == 0  # constant transit: none
    stats = ReceptionStatistics(48000)
    for i in range(400):
        # Alternately 1 ms late: |D| is 48 units each time, J converges on it.
        stats.received(i, 960 * i, 0.02 * i + (0.001 if i % 2 else 0.0))
    assert stats.jitter == pytest.approx(48, abs=0.5)
    assert stats.report(MEDIA, 9.0).jitter in (47, 48)


def test_lsr_and_dlsr_are_zero_before_a_sender_report() -> None:
    stats = ReceptionStatistics(90000)
    stats.received(1, 0, 0.0)
    block = stats.report(MEDIA, 5.0)
    assert (block.lsr, block.dlsr) == (0, 0)
    stats.on_sender_report(0x1234_5678_9ABC_DEF0, 5.0)
    block = stats.report(MEDIA, 5.25)
    assert block.lsr == 0x5678_9ABC and block.dlsr == 0x4000  # 0.25 s in 1/65536 s


def test_the_interval_is_randomised_between_half_and_one_and_a_half() -> None:
    schedule = ReportSchedule(1.0, random.Random(7))
    schedule.start(10.0)
    assert schedule.due_s is not None and 10.25 <= schedule.due_s <= 10.75  # the first one: halved
    schedule.start(11.0)  # idempotent
    first = schedule.due_s
    assert not schedule.due(first - 1e-6) and schedule.due(first)
    gaps = []
    now = first
    for _ in range(2000):
        schedule.sent(now)
        assert schedule.due_s is not None
        gaps.append(schedule.due_s - now)
        now = schedule.due_s
    assert 0.5 <= min(gaps) and max(gaps) <= 1.5
    assert sum(gaps) / len(gaps) == pytest.approx(1.0, abs=0.03)
    with pytest.raises(ValueError):
        ReportSchedule(0.0)


def test_rtt_from_a_dlrr() -> None:
    # Our RRT at 100.0 s (middle bits 100 << 16), held 0.5 s, back at 100.53.
    now = round(100.53 * 65536)
    assert rtt_from_dlrr(now, 100 << 16, 0x8000) == pytest.approx(0.03, abs=1 / 65536)
    assert rtt_from_dlrr(now, 0, 0x8000) is None  # nothing echoed
    assert rtt_from_dlrr(100 << 16, 100 << 16, 0x8000) is None  # negative: garbage


def test_xr_dlrr_parse_and_rrt_shape() -> None:
    rrt = receiver_reference_time(US, 0x0102_0304_0506_0708)
    assert rrt == Unknown(207, 0, bytes.fromhex("5ec0de01" "04000002" "0102030405060708"))
    assert parse_xr_dlrr_untrusted(rrt) == []
    body = struct.pack("!I", 0xABCD) + rrt.body[4:] + struct.pack("!BBHIIIIII", 5, 0, 6, MEDIA, 7, 8, US, 9, 10)
    (xr,) = parse_rtcp_untrusted(serialize_rtcp([Unknown(207, 0, body)]))
    assert isinstance(xr, Unknown)
    assert parse_xr_dlrr_untrusted(xr) == [DlrrItem(MEDIA, 7, 8), DlrrItem(US, 9, 10)]
    with pytest.raises(RtcpParseError):
        parse_xr_dlrr_untrusted(Unknown(207, 0, body[:-4]))  # the DLRR block overruns
    with pytest.raises(RtcpParseError):
        parse_xr_dlrr_untrusted(Unknown(207, 0, struct.pack("!IBBH", 1, 5, 0, 1) + b"\0" * 4))  # not whole sub-blocks
    assert parse_xr_dlrr_untrusted(Unknown(206, 1, body)) == []


@given(st.binary(max_size=64))
def test_xr_parsing_raises_only_parse_errors(body: bytes) -> None:
    try:
        parse_xr_dlrr_untrusted(Unknown(207, 0, body))
    except ParseError:
        pass


def test_the_path_rtt_replaces_the_nack_floor() -> None:
    nack = NackScheduler(max_age_s=0.15)
    assert nack.retry_interval_s == 0.1 and nack.path_rtt_s is None
    nack.set_path_rtt(0.004)
    assert nack.retry_interval_s == pytest.approx(0.024)  # RTT + the 20 ms margin
    nack.update({10: 0.0}, 0.0)
    times = []
    for step in range(151):
        now = step / 1000
        if nack.poll(now):
            times.append(now)
    # The first after the 15 ms grace, then three retries 24 ms apart: all
    # inside the 150 ms wait, where the 100 ms floor let only one retry in.
    assert times == pytest.approx([0.015, 0.039, 0.063, 0.087])
    nack.set_path_rtt(None)
    assert nack.retry_interval_s == 0.1
    with pytest.raises(ValueError):
        nack.set_path_rtt(-1.0)


def test_without_a_path_rtt_one_retry_fits_the_video_wait() -> None:
    nack = NackScheduler(max_age_s=0.15)
    nack.update({10: 0.0}, 0.0)
    times = [step / 1000 for step in range(151) if nack.poll(step / 1000)]
    assert times == pytest.approx([0.015, 0.115])
