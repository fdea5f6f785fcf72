"""Tests for edge_recorder.rtp.rtcp: compound RTCP (RFC 3550 §6, RFC 4585, RFC 5104)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from edge_recorder.errors import RtcpParseError
from edge_recorder.rtp.rtcp import (
    NTP_UNIX_EPOCH_OFFSET_S,
    Bye,
    Fir,
    GenericNack,
    Pli,
    ReceiverReport,
    ReportBlock,
    RtcpPacket,
    SenderReport,
    SourceDescription,
    Unknown,
    ntp_middle32,
    ntp_to_seconds,
    parse_rtcp_untrusted,
    seconds_to_ntp,
    serialize_rtcp,
)

# SR + SDES sent by GStreamer 1.22's rtpbin for an Opus stream (ssrc 0x12345678),
# captured from its send_rtcp_src over UDP.
GST_SR_SDES = bytes.fromhex(
    "80c8000612345678eeafdec818f1e4b4b15ec6fb0000003b000025bb"
    "81ca000c12345678011c757365723235333235383839313640686f73742d37633236323137"
    "6206094753747265616d6572000000"
)

# Chrome-style compound: SR without report blocks, then SDES with a 16-character CNAME.
CHROME_SR_SDES = bytes.fromhex(
    # SR: V=2 RC=0 PT=200 length=6
    "80c80006"
    "1a2b3c4d"  # SSRC of sender
    "e8d4a51080000000"  # NTP 3906250000.5
    "00015f90"  # RTP timestamp 90000
    "00000064"  # packet count 100
    "00002710"  # octet count 10000
    # SDES: V=2 SC=1 PT=202 length=6
    "81ca0006"
    "1a2b3c4d"
    "0110" + b"4TOk42mSjXCkVIa6".hex() + "0000"  # CNAME item, then 2 null octets
)


# ----------------------------------------------------------------- known answers


def test_gstreamer_sr_sdes() -> None:
    sr, sdes = parse_rtcp_untrusted(GST_SR_SDES)
    assert isinstance(sr, SenderReport)
    assert sr.ssrc == 0x12345678
    assert sr.ntp_timestamp == 0xEEAFDEC818F1E4B4
    assert sr.rtp_timestamp == 0xB15EC6FB
    assert sr.packet_count == 59
    assert sr.octet_count == 0x25BB
    assert sr.reports == []
    assert ntp_to_seconds(sr.ntp_timestamp) - NTP_UNIX_EPOCH_OFFSET_S > 1_704_067_200  # after 2024
    assert sdes == SourceDescription(
        [(0x12345678, [(1, b"user2532588916@host-7c26217b"), (6, b"GStreamer")])]
    )
    assert serialize_rtcp([sr, sdes]) == GST_SR_SDES


def test_chrome_style_sr_sdes() -> None:
    packets = parse_rtcp_untrusted(CHROME_SR_SDES)
    assert packets == [
        SenderReport(0x1A2B3C4D, 0xE8D4A51080000000, 90000, 100, 10000),
        SourceDescription([(0x1A2B3C4D, [(1, b"4TOk42mSjXCkVIa6")])]),
    ]
    assert ntp_to_seconds(packets[0].ntp_timestamp) == 3906250000.5  # type: ignore[union-attr]
    assert serialize_rtcp(packets) == CHROME_SR_SDES


def test_receiver_report_with_negative_loss() -> None:
    data = bytes.fromhex(
        "81c90007 00000001"  # RR, RC=1, reporter 1
        "1a2b3c4d"  # source
        "40ffffff"  # fraction lost 64/256, cumulative lost -1 (duplicates)
        "0001ffff"  # extended highest sequence: 1 cycle, seq 65535
        "00000010"  # jitter
        "dec818f1"  # LSR
        "00010000"  # DLSR: 1 s
    )
    (rr,) = parse_rtcp_untrusted(data)
    assert rr == ReceiverReport(
        1, [ReportBlock(0x1A2B3C4D, 64, -1, 0x1FFFF, 16, 0xDEC818F1, 0x10000)]
    )
    assert serialize_rtcp([rr]) == data


def test_generic_nack_pid_blp() -> None:
    # RFC 4585 §6.2.1: PID 100 lost, BLP 0b101: 101 and 103 lost too.
    data = bytes.fromhex("81cd0003 00000001 1a2b3c4d 0064 0005")
    (nack,) = parse_rtcp_untrusted(data)
    assert nack == GenericNack(1, 0x1A2B3C4D, [100, 101, 103])
    assert serialize_rtcp([nack]) == data


def test_generic_nack_several_pairs_and_wrap() -> None:
    data = bytes.fromhex("81cd0004 00000001 00000002 fffe 8001 0064 0000")
    (nack,) = parse_rtcp_untrusted(data)
    # 65534, then bit 0 -> 65535, bit 15 -> 65534 + 16 = 14 (wrapped); then 100.
    assert nack == GenericNack(1, 2, [65534, 65535, 14, 100])
    assert serialize_rtcp([nack]) == data


def test_generic_nack_serialise_compresses_runs() -> None:
    nack = GenericNack(1, 2, list(range(1000, 1034)))  # 34 losses -> 2 pairs
    data = serialize_rtcp([nack])
    assert data == bytes.fromhex("81cd0004 00000001 00000002 03e8 ffff 03f9 ffff")
    assert parse_rtcp_untrusted(data) == [nack]


def test_generic_nack_serialise_sorts_and_dedups() -> None:
    nack = GenericNack(1, 2, [5, 3, 65535, 3, 4])
    (parsed,) = parse_rtcp_untrusted(serialize_rtcp([nack]))
    assert isinstance(parsed, GenericNack)
    assert parsed.lost == [65535, 3, 4, 5]


def test_pli() -> None:
    data = bytes.fromhex("81ce0002 00000001 1a2b3c4d")
    assert parse_rtcp_untrusted(data) == [Pli(1, 0x1A2B3C4D)]
    assert serialize_rtcp([Pli(1, 0x1A2B3C4D)]) == data


def test_fir() -> None:
    # RFC 5104 §4.3.1: media SSRC field 0; FCI = SSRC, seq nr, 24 reserved bits.
    data = bytes.fromhex("84ce0006 00000001 00000000 1a2b3c4d 07000000 0a0b0c0d ff000000")
    fir = Fir(1, [(0x1A2B3C4D, 7), (0x0A0B0C0D, 255)])
    assert parse_rtcp_untrusted(data) == [fir]
    assert serialize_rtcp([fir]) == data


def test_bye_with_and_without_reason() -> None:
    with_reason = bytes.fromhex("81cb0003 1a2b3c4d 05") + b"ended" + b"\x00\x00"
    assert parse_rtcp_untrusted(with_reason) == [Bye([0x1A2B3C4D], b"ended")]
    assert serialize_rtcp([Bye([0x1A2B3C4D], b"ended")]) == with_reason
    without = bytes.fromhex("82cb0002 00000001 00000002")
    assert parse_rtcp_untrusted(without) == [Bye([1, 2])]
    assert serialize_rtcp([Bye([1, 2])]) == without


@pytest.mark.parametrize(
    "data",
    [
        bytes.fromhex("8fce0005 00000001 00000000 52454d42 01 0a 3d09 1a2b3c4d"),  # REMB (PSFB 15)
        bytes.fromhex("8fcd0002 00000001 1a2b3c4d"),  # transport-cc header only (RTPFB 15)
        bytes.fromhex("80cf0002 00000001 04000000"),  # XR
        bytes.fromhex("80cc0002 00000001") + b"name",  # APP
        bytes.fromhex("82ce0002 00000001 1a2b3c4d"),  # SLI-type PSFB FMT 2
    ],
)
def test_unknown_packets_pass_through(data: bytes) -> None:
    (packet,) = parse_rtcp_untrusted(data)
    assert isinstance(packet, Unknown)
    assert packet.packet_type == data[1]
    assert packet.count == data[0] & 0x1F
    assert packet.body == data[4:]
    assert serialize_rtcp([packet]) == data


def test_compound_with_padding_on_the_last_packet() -> None:
    rr = bytes.fromhex("80c90001 00000001")
    padded_pli = bytes.fromhex("a1ce0003 00000001 00000002 00000004")
    packets = parse_rtcp_untrusted(rr + padded_pli)
    assert packets == [ReceiverReport(1), Pli(1, 2)]


def test_reduced_size_feedback_alone() -> None:
    # RFC 5506: mediasoup sends feedback without a leading SR/RR.
    assert parse_rtcp_untrusted(bytes.fromhex("81ce0002 00000001 00000002")) == [Pli(1, 2)]


def test_sr_profile_extension_bytes_are_skipped() -> None:
    data = bytes.fromhex("80c80007 00000001 0000000000000000 00000000 00000000 00000000 abcdabcd")
    assert parse_rtcp_untrusted(data) == [SenderReport(1, 0, 0, 0, 0)]


def test_sdes_chunk_with_no_items() -> None:
    data = bytes.fromhex("81ca0002 00000007 00000000")
    assert parse_rtcp_untrusted(data) == [SourceDescription([(7, [])])]
    assert serialize_rtcp([SourceDescription([(7, [])])]) == data


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_buffer_types_parse_alike(kind: type) -> None:
    assert parse_rtcp_untrusted(kind(CHROME_SR_SDES)) == parse_rtcp_untrusted(CHROME_SR_SDES)


# ------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x80\xc8\x00", "truncated"),
        (CHROME_SR_SDES + b"\x81", "truncated"),
        (bytes.fromhex("40c80000"), "version is 1"),
        (bytes.fromhex("80600000"), "not RTCP"),  # an RTP header, PT 96
        (bytes.fromhex("80e00000"), "not RTCP"),
        (bytes.fromhex("80c80006 00000001"), "overruns"),
        (bytes.fromhex("a0c90001 00000000"), "padding count 0"),
        (bytes.fromhex("a0c90001 00000009"), "padding count 9"),
        (bytes.fromhex("81c80006") + bytes(24), "SR with 1 report blocks"),
        (bytes.fromhex("81c90001 00000001"), "RR with 1 report blocks"),
        (bytes.fromhex("82ca0002 00000001 00000000"), "chunk 1 of 2 is missing"),
        (bytes.fromhex("81ca0002 00000001 01026869"), "no terminating null"),
        (bytes.fromhex("81ca0002 00000001 010a6869"), "overruns"),
        (bytes.fromhex("81ca0002 00000001 02014105"), "truncated"),
        (bytes.fromhex("82cb0001 00000001"), "BYE with 2 SSRCs"),
        (bytes.fromhex("81cb0002 00000001 09616263"), "reason overruns"),
        (bytes.fromhex("81cd0002 00000001 00000002"), "FCI"),
        (bytes.fromhex("81ce0003 00000001 00000002 00000000"), "PLI must have"),
        (bytes.fromhex("84ce0002 00000001 00000000"), "FIR needs"),
        (bytes.fromhex("84ce0003 00000001 00000000 00000001"), "FIR needs"),
    ],
)
def test_malformed_rtcp_raises_rtcp_parse_error(data: bytes, message: str) -> None:
    with pytest.raises(RtcpParseError, match=message):
        parse_rtcp_untrusted(data)


# ------------------------------------------------------------------- serialise


@pytest.mark.parametrize(
    "packet",
    [
        SenderReport(1 << 32, 0, 0, 0, 0),
        SenderReport(1, 1 << 64, 0, 0, 0),
        ReceiverReport(1, [ReportBlock(1)] * 32),
        ReceiverReport(1, [ReportBlock(1, fraction_lost=256)]),
        ReceiverReport(1, [ReportBlock(1, packets_lost=1 << 23)]),
        ReceiverReport(1, [ReportBlock(1, packets_lost=-(1 << 23) - 1)]),
        SourceDescription([(1, [(0, b"x")])]),
        SourceDescription([(1, [(1, b"x" * 256)])]),
        Bye([1], b"x" * 256),
        Bye(list(range(32))),
        Fir(1, []),
        Fir(1, [(1, 256)]),
        GenericNack(1, 2, []),
        GenericNack(1, 2, [65536]),
        Unknown(100, 0, b""),
        Unknown(204, 32, b""),
        Unknown(204, 0, b"abc"),
    ],
)
def test_serialize_rejects_out_of_range(packet: RtcpPacket) -> None:
    with pytest.raises(ValueError):
        serialize_rtcp([packet])


def test_serialize_rejects_non_packets() -> None:
    with pytest.raises(ValueError, match="not an RTCP packet"):
        serialize_rtcp([object()])  # type: ignore[list-item]


# ------------------------------------------------------------------------ NTP


def test_ntp_helpers() -> None:
    ntp = seconds_to_ntp(3906250000.5)
    assert ntp == 0xE8D4A51080000000
    assert ntp_to_seconds(ntp) == 3906250000.5
    assert ntp_middle32(0x1122334455667788) == 0x33445566
    assert seconds_to_ntp(0.0) == 0
    for bad in (-1.0, 2.0**32, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            seconds_to_ntp(bad)


@given(st.floats(0.0, 2.0**32, exclude_max=True))
def test_ntp_round_trip_within_resolution(seconds: float) -> None:
    assert abs(ntp_to_seconds(seconds_to_ntp(seconds)) - seconds) <= 1e-6


# ------------------------------------------------------------------ Hypothesis

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)

report_blocks = st.builds(
    ReportBlock,
    ssrc=u32,
    fraction_lost=u8,
    packets_lost=st.integers(-(1 << 23), (1 << 23) - 1),
    highest_sequence=u32,
    jitter=u32,
    lsr=u32,
    dlsr=u32,
)
sender_reports = st.builds(
    SenderReport,
    ssrc=u32,
    ntp_timestamp=st.integers(0, (1 << 64) - 1),
    rtp_timestamp=u32,
    packet_count=u32,
    octet_count=u32,
    reports=st.lists(report_blocks, max_size=31),
)
receiver_reports = st.builds(ReceiverReport, ssrc=u32, reports=st.lists(report_blocks, max_size=31))
sdes_items = st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=255)), max_size=5)
source_descriptions = st.builds(
    SourceDescription, chunks=st.lists(st.tuples(u32, sdes_items), max_size=31)
)
byes = st.builds(Bye, ssrcs=st.lists(u32, max_size=31), reason=st.none() | st.binary(max_size=255))
plis = st.builds(Pli, sender_ssrc=u32, media_ssrc=u32)
firs = st.builds(
    Fir, sender_ssrc=u32, entries=st.lists(st.tuples(u32, u8), min_size=1, max_size=20)
)


@st.composite
def canonical_lost(draw: st.DrawFn) -> list[int]:
    """Lost sequence numbers in wrap-aware ascending order, as parsing yields them."""
    start = draw(u16)
    gaps = draw(st.lists(st.integers(1, 40), max_size=60))
    values = [start]
    for gap in gaps:
        values.append(values[-1] + gap)
    return [value & 0xFFFF for value in values]


nacks = st.builds(GenericNack, sender_ssrc=u32, media_ssrc=u32, lost=canonical_lost())
unknowns = st.builds(
    Unknown,
    packet_type=st.sampled_from([192, 193, 204, 207, 208, 223]),
    count=st.integers(0, 31),
    body=st.binary(max_size=64).map(lambda body: body + bytes(-len(body) % 4)),
) | st.builds(
    Unknown,
    packet_type=st.sampled_from([205, 206]),
    count=st.sampled_from([0, 2, 3, 5, 15, 31]),
    body=st.binary(max_size=64).map(lambda body: body + bytes(-len(body) % 4)),
)
any_packet = (
    sender_reports | receiver_reports | source_descriptions | byes | plis | firs | nacks | unknowns
)


@pytest.mark.parametrize(
    "strategy",
    [sender_reports, receiver_reports, source_descriptions, byes, plis, firs, nacks, unknowns],
    ids=["sr", "rr", "sdes", "bye", "pli", "fir", "nack", "unknown"],
)
@given(data=st.data())
def test_round_trip_each_type(strategy: st.SearchStrategy[RtcpPacket], data: st.DataObject) -> None:
    packet = data.draw(strategy)
    assert parse_rtcp_untrusted(serialize_rtcp([packet])) == [packet]


@given(st.lists(any_packet, min_size=1, max_size=6))
def test_round_trip_compound(packets: list[RtcpPacket]) -> None:
    assert parse_rtcp_untrusted(serialize_rtcp(packets)) == packets


@given(st.lists(u16, min_size=1, max_size=100))
def test_nack_keeps_the_set_of_losses(lost: list[int]) -> None:
    (parsed,) = parse_rtcp_untrusted(serialize_rtcp([GenericNack(1, 2, lost)]))
    assert isinstance(parsed, GenericNack)
    assert sorted(parsed.lost) == sorted(set(lost))


@given(st.binary(max_size=200))
@example(bytes.fromhex("81ca0001 00000001"))
@example(bytes.fromhex("bfc90000"))
def test_arbitrary_bytes_raise_only_rtcp_parse_error(data: bytes) -> None:
    try:
        packets = parse_rtcp_untrusted(data)
    except RtcpParseError:
        return
    assert all(isinstance(packet, RtcpPacket) for packet in packets)


@given(
    st.lists(any_packet, min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(0, 10_000), u8), max_size=8),
    st.integers(0, 10_000),
)
def test_mutated_and_truncated_compounds_raise_only_rtcp_parse_error(
    packets: list[RtcpPacket], flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(serialize_rtcp(packets))
    for position, value in flips:
        data[position % len(data)] = value
    for candidate in (bytes(data), bytes(data[: cut % (len(data) + 1)])):
        with contextlib.suppress(RtcpParseError):
            parse_rtcp_untrusted(candidate)


def test_types_filter_skips_other_packets_unparsed() -> None:
    from edge_recorder.rtp.rtcp import MAX_NACK_ITEMS

    nack = GenericNack(1, 2, list(range(0, 17 * (MAX_NACK_ITEMS + 1), 17)))
    data = serialize_rtcp([SenderReport(5, 1, 2, 3, 4), nack, Pli(1, 2)])
    with pytest.raises(RtcpParseError, match="FCI entries"):
        parse_rtcp_untrusted(data)
    assert parse_rtcp_untrusted(data, types={200, 206}) == [SenderReport(5, 1, 2, 3, 4), Pli(1, 2)]
    with pytest.raises(RtcpParseError, match="more than 2 packets"):
        parse_rtcp_untrusted(data, types={200}, max_packets=2)


@given(st.lists(any_packet, min_size=1, max_size=6), st.sets(st.integers(192, 223)))
def test_the_types_filter_keeps_exactly_the_packets_of_those_types(packets: list[RtcpPacket], types: set[int]) -> None:
    data = serialize_rtcp(packets)
    full = parse_rtcp_untrusted(data)
    kept = parse_rtcp_untrusted(data, types=types)
    assert kept == [p for p in full if _type_of(p) in types]


def _type_of(packet: RtcpPacket) -> int:
    return serialize_rtcp([packet])[1]
