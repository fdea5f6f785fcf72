"""Tests for edge_recorder.rtp.packet: RTP (RFC 3550 §5.1) and RFC 8285 extensions."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from edge_recorder.errors import RtpParseError
from edge_recorder.rtp.packet import (
    RtpPacket,
    audio_level,
    is_rtcp_untrusted,
    parse_rtp_untrusted,
    serialize_rtp,
)

# Three consecutive Opus packets captured from GStreamer 1.22:
#   audiotestsrc ! level audio-level-meta=true ! opusenc
#   ! rtpopuspay pt=100 ssrc=0x12345678 seqnum-offset=65533 timestamp-offset=4294967000
#   ! application/x-rtp,extmap-10=<"", urn:ietf:params:rtp-hdrext:ssrc-audio-level, "vad=on">
#   ! multifilesink
# The first has the marker set; the third (seq 0) is just after the wrap.
GST_OPUS_FIRST = bytes.fromhex(
    "90e4fffdfffffed812345678bede0001a0080000fcb545deb757f00ed27ae8c911eb0064e9e8ab486af9948b"
    "27bea069afe9936a311d907894c96809a61bbfdbff9c6587bc0f59a0b365aaa3b401ea94022420058f5fd838"
    "eb3b17c9e3e826b9e4dfe85100928f7e5c0ee607040342e38689f89c98c6ea226e34e3b79a47dbffddea0146"
    "79f9a7c86219829464a896cd9d9164c3470679807a88adbb1dc8144252ad7698f8c891ad769f5f14b5ce488d"
    "dce97b7c193a5527bd9ffa97bbe26d188f494d13a5dbc416f7c135f3229417d869d1e87bf4add6a7d0c3e767"
    "c1f4d78d92ce3981e11441fca8fa68baa8eab5e511b86f9f7c00656e8922de17010b3c019827bb3368092495"
    "b5414aa0bffda16d"
)
GST_OPUS_AFTER_WRAP = bytes.fromhex(
    "90640000000008e012345678bede0001a0090000fcaad658108947291ce33c4f60b896e5d0667e911941939f"
    "7147e5aac6ac84176fbc0789140f35142640e9b5d61fb3f4a5bcd95980f2e361a385457eb22dfba5b1d46282"
    "e4bed6f987f192516a3d5e84de2a5c9fc009181bf3ec49c554a5c9d87e31ee6d700178263670e0d567edacb0"
    "f5642ddd57683966dfae836954bc169d74cb326412288c9776b9177cb3dcb3781bfb7a87def665bfb81ce766"
    "bef86d541eaa1eb527fc44976aabae"
)

# A fixed header: V=2, no P/X/CC, M=0, PT=96, seq=0x1234, ts=0xDEADBEEF, ssrc=0xCAFEBABE.
BASE_HEADER = bytes.fromhex("8060 1234 deadbeef cafebabe")


# ----------------------------------------------------------------- known answers


def test_minimal_packet() -> None:
    packet = parse_rtp_untrusted(BASE_HEADER + b"\x01\x02\x03")
    assert packet == RtpPacket(
        payload_type=96,
        sequence_number=0x1234,
        timestamp=0xDEADBEEF,
        ssrc=0xCAFEBABE,
        payload=b"\x01\x02\x03",
    )
    assert serialize_rtp(packet) == BASE_HEADER + b"\x01\x02\x03"


def test_header_only_packet_has_empty_payload() -> None:
    assert parse_rtp_untrusted(BASE_HEADER).payload == b""


def test_marker_and_csrcs() -> None:
    data = bytes.fromhex("82e0 0001 00000002 00000003 11111111 22222222") + b"pay"
    packet = parse_rtp_untrusted(data)
    assert packet.marker is True
    assert packet.payload_type == 96
    assert packet.csrcs == (0x11111111, 0x22222222)
    assert packet.payload == b"pay"
    assert serialize_rtp(packet) == data


def test_rfc8285_one_byte_example() -> None:
    # RFC 8285 §4.2: 0xBEDE, length 3 words; elements: ID 1 (1 byte), ID 2
    # (2 bytes), a padding byte between elements, ID 3 (3 bytes), then padding.
    extension = bytes.fromhex("bede 0003  10 aa  21 bbbb  00  32 cccccc  0000")
    data = bytes([0x90]) + BASE_HEADER[1:] + extension + b"payload"
    packet = parse_rtp_untrusted(data)
    assert packet.extensions == {1: b"\xaa", 2: b"\xbb\xbb", 3: b"\xcc\xcc\xcc"}
    assert packet.payload == b"payload"
    # Re-serialised without the inner padding byte: 2 + 3 + 4 = 9 bytes, 3 words.
    assert serialize_rtp(packet) == (
        bytes([0x90])
        + BASE_HEADER[1:]
        + bytes.fromhex("bede 0003 10aa 21bbbb 32cccccc 000000")
        + b"payload"
    )


def test_one_byte_id_15_stops_parsing() -> None:
    # RFC 8285 §4.2: processing ends at ID 15; what follows is not read.
    extension = bytes.fromhex("bede 0002  10 aa  f0  21 bbbb  000000")
    packet = parse_rtp_untrusted(bytes([0x90]) + BASE_HEADER[1:] + extension)
    assert packet.extensions == {1: b"\xaa"}


def test_one_byte_id_0_is_padding_whatever_its_length_nibble() -> None:
    extension = bytes.fromhex("bede 0001  0f 10 aa 00")
    packet = parse_rtp_untrusted(bytes([0x90]) + BASE_HEADER[1:] + extension)
    assert packet.extensions == {1: b"\xaa"}


def test_rfc8285_two_byte_example() -> None:
    # RFC 8285 §4.3: 0x100 + appbits; elements ID 1 with length 0 and ID 16 with
    # 3 bytes, then a padding byte.
    extension = bytes.fromhex("1000 0002  01 00  10 03 abcdef  00")
    packet = parse_rtp_untrusted(bytes([0x90]) + BASE_HEADER[1:] + extension + b"x")
    assert packet.extensions == {1: b"", 16: b"\xab\xcd\xef"}
    assert packet.payload == b"x"
    assert serialize_rtp(packet) == bytes([0x90]) + BASE_HEADER[1:] + extension + b"x"


def test_two_byte_appbits_are_accepted() -> None:
    extension = bytes.fromhex("100f 0001  05 01 77 00")
    packet = parse_rtp_untrusted(bytes([0x90]) + BASE_HEADER[1:] + extension)
    assert packet.extensions == {5: b"\x77"}


def test_unknown_extension_profile_is_skipped() -> None:
    extension = bytes.fromhex("1234 0001 deadbeef")
    packet = parse_rtp_untrusted(bytes([0x90]) + BASE_HEADER[1:] + extension + b"media")
    assert packet.extensions == {}
    assert packet.payload == b"media"


def test_padding() -> None:
    data = bytes([0xA0]) + BASE_HEADER[1:] + b"abc" + b"\x00\x00\x03"
    packet = parse_rtp_untrusted(data)
    assert packet.payload == b"abc"
    assert packet.padding_size == 3
    assert serialize_rtp(packet) == data


def test_padding_may_fill_the_whole_body() -> None:
    packet = parse_rtp_untrusted(bytes([0xA0]) + BASE_HEADER[1:] + b"\x00\x00\x00\x04")
    assert packet.payload == b""
    assert packet.padding_size == 4


def test_gstreamer_opus_packets() -> None:
    first = parse_rtp_untrusted(GST_OPUS_FIRST)
    assert first.payload_type == 100
    assert first.marker is True
    assert first.sequence_number == 65533
    assert first.timestamp == 0xFFFFFED8  # timestamp-offset 4294967000
    assert first.ssrc == 0x12345678
    assert first.extensions == {10: b"\x08"}
    assert audio_level(first, 10) == (False, 8)
    assert first.payload == GST_OPUS_FIRST[20:]
    assert serialize_rtp(first) == GST_OPUS_FIRST

    after = parse_rtp_untrusted(GST_OPUS_AFTER_WRAP)
    assert after.marker is False
    assert after.sequence_number == 0
    assert after.timestamp == 0x8E0  # 3 x 960 samples after 0xFFFFFED8, wrapped
    assert audio_level(after, 10) == (False, 9)
    assert serialize_rtp(after) == GST_OPUS_AFTER_WRAP


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_buffer_types_parse_alike(kind: type) -> None:
    data = GST_OPUS_FIRST
    assert parse_rtp_untrusted(kind(data)) == parse_rtp_untrusted(data)


def test_memoryview_slice_of_a_larger_buffer() -> None:
    buffer = bytearray(b"\xff" * 7 + GST_OPUS_FIRST + b"\xff" * 5)
    view = memoryview(buffer)[7 : 7 + len(GST_OPUS_FIRST)]
    assert parse_rtp_untrusted(view) == parse_rtp_untrusted(GST_OPUS_FIRST)


def test_non_byte_memoryview_is_read_as_bytes() -> None:
    view = memoryview(GST_OPUS_FIRST[:272]).cast("I")
    assert parse_rtp_untrusted(view) == parse_rtp_untrusted(GST_OPUS_FIRST)


# ------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (BASE_HEADER[:11], "too short"),
        (bytes([0x40]) + BASE_HEADER[1:], "version is 1"),
        (bytes([0x00]) + BASE_HEADER[1:], "version is 0"),
        (bytes([0x82]) + BASE_HEADER[1:] + b"\x00" * 7, "2 CSRCs"),
        (bytes([0x90]) + BASE_HEADER[1:] + b"\xbe\xde\x00", "extension header"),
        (
            bytes([0x90]) + BASE_HEADER[1:] + bytes.fromhex("bede 0002 10aa0000"),
            "overruns the packet",
        ),
        (
            bytes([0x90]) + BASE_HEADER[1:] + bytes.fromhex("bede 0001 33aa0000"),
            "element 3 overruns",
        ),
        (bytes([0x90]) + BASE_HEADER[1:] + bytes.fromhex("1000 0001 000000 07"), "no length byte"),
        (
            bytes([0x90]) + BASE_HEADER[1:] + bytes.fromhex("1000 0001 07 05 0000"),
            "element 7 overruns",
        ),
        (bytes([0xA0]) + BASE_HEADER[1:] + b"abc\x00", "padding count is 0"),
        (bytes([0xA0]) + BASE_HEADER[1:] + b"ab\x05", "exceeds"),
        (bytes([0xA0]) + BASE_HEADER[1:], "exceeds"),
        (
            bytes([0xB0]) + BASE_HEADER[1:] + bytes.fromhex("bede 0001 10aa0000") + b"\x02",
            "exceeds",
        ),
    ],
)
def test_malformed_packets_raise_rtp_parse_error(data: bytes, message: str) -> None:
    with pytest.raises(RtpParseError, match=message):
        parse_rtp_untrusted(data)


# ------------------------------------------------------------------- serialise


def test_serialize_chooses_two_byte_form_for_long_values() -> None:
    packet = RtpPacket(96, 1, 2, 3, extensions={1: b"x" * 17})
    assert serialize_rtp(packet)[12:14] == b"\x10\x00"
    assert parse_rtp_untrusted(serialize_rtp(packet)) == packet


def test_serialize_chooses_two_byte_form_for_high_ids_and_empty_values() -> None:
    assert serialize_rtp(RtpPacket(96, 1, 2, 3, extensions={15: b"x"}))[12:14] == b"\x10\x00"
    assert serialize_rtp(RtpPacket(96, 1, 2, 3, extensions={1: b""}))[12:14] == b"\x10\x00"
    assert serialize_rtp(RtpPacket(96, 1, 2, 3, extensions={14: b"x" * 16}))[12:14] == b"\xbe\xde"


@pytest.mark.parametrize(
    "packet",
    [
        RtpPacket(128, 0, 0, 0),
        RtpPacket(-1, 0, 0, 0),
        RtpPacket(96, 65536, 0, 0),
        RtpPacket(96, 0, 1 << 32, 0),
        RtpPacket(96, 0, 0, -1),
        RtpPacket(96, 0, 0, 0, csrcs=tuple(range(16))),
        RtpPacket(96, 0, 0, 0, csrcs=(1 << 32,)),
        RtpPacket(96, 0, 0, 0, extensions={0: b"x"}),
        RtpPacket(96, 0, 0, 0, extensions={256: b"x"}),
        RtpPacket(96, 0, 0, 0, extensions={1: b"x" * 256}),
        RtpPacket(96, 0, 0, 0, padding_size=256),
        RtpPacket(96, 0, 0, 0, padding_size=-1),
    ],
)
def test_serialize_rejects_unserialisable_packets(packet: RtpPacket) -> None:
    with pytest.raises(ValueError):
        serialize_rtp(packet)


# ------------------------------------------------------------ audio level, demux


def test_audio_level() -> None:
    packet = RtpPacket(100, 0, 0, 0, extensions={10: b"\x80"})
    assert audio_level(packet, 10) == (True, 0)
    packet.extensions[10] = b"\x7f\x00"  # two-byte form may pad the value
    assert audio_level(packet, 10) == (False, 127)
    assert audio_level(packet, 11) is None
    packet.extensions[10] = b""
    assert audio_level(packet, 10) is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (bytes.fromhex("80c80006"), True),  # SR
        (bytes.fromhex("81cd0003"), True),  # RTPFB
        (bytes.fromhex("80c00000"), True),  # 192, lowest of the RFC 5761 range
        (bytes.fromhex("80df0000"), True),  # 223
        (bytes.fromhex("80bf0000"), False),  # 191
        (bytes.fromhex("80e00000"), False),  # 224: RTP, marker + PT 96
        (GST_OPUS_FIRST, False),  # RTP with marker, PT 100
        (GST_OPUS_AFTER_WRAP, False),
        (bytes.fromhex("40c80006"), False),  # version 1
        (b"\x80\xc8\x00", False),  # short
        (b"", False),
    ],
)
def test_is_rtcp_untrusted(data: bytes, expected: bool) -> None:
    assert is_rtcp_untrusted(data) is expected


# ------------------------------------------------------------------ Hypothesis

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)

one_byte_extensions = st.dictionaries(
    st.integers(1, 14), st.binary(min_size=1, max_size=16), max_size=14
)
two_byte_extensions = st.dictionaries(st.integers(1, 255), st.binary(max_size=255), max_size=8)

packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence_number=u16,
    timestamp=u32,
    ssrc=u32,
    payload=st.binary(max_size=1500),
    marker=st.booleans(),
    csrcs=st.lists(u32, max_size=15).map(tuple),
    extensions=one_byte_extensions | two_byte_extensions,
    padding_size=st.integers(0, 255),
)


@given(packets)
def test_round_trip(packet: RtpPacket) -> None:
    assert parse_rtp_untrusted(serialize_rtp(packet)) == packet


@given(packets)
def test_serialised_packets_are_never_rtcp(packet: RtpPacket) -> None:
    # RFC 5761 §4 demux holds as long as PTs avoid 64..95 with the marker set.
    data = serialize_rtp(packet)
    looks_like_rtcp = packet.marker and 64 <= packet.payload_type <= 95
    assert is_rtcp_untrusted(data) is looks_like_rtcp


@given(st.binary(max_size=200))
@example(bytes([0x90]) + BASE_HEADER[1:] + b"\xbe\xde\xff\xff")
@example(bytes([0xBF]) + BASE_HEADER[1:])
def test_arbitrary_bytes_raise_only_rtp_parse_error(data: bytes) -> None:
    try:
        packet = parse_rtp_untrusted(data)
    except RtpParseError:
        return
    # Whatever parses is a valid packet that survives a round trip.
    assert parse_rtp_untrusted(serialize_rtp(packet)) == packet


@given(
    packets,
    st.lists(st.tuples(st.integers(0, 10_000), u8), max_size=8),
    st.integers(0, 10_000),
)
def test_mutated_and_truncated_packets_raise_only_rtp_parse_error(
    packet: RtpPacket, flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(serialize_rtp(packet))
    for position, value in flips:
        data[position % len(data)] = value
    for candidate in (bytes(data), bytes(data[: cut % (len(data) + 1)])):
        with contextlib.suppress(RtpParseError):
            parse_rtp_untrusted(candidate)


@given(packets)
def test_every_truncation_of_a_header_is_rejected_or_consistent(packet: RtpPacket) -> None:
    data = serialize_rtp(packet)
    header_size = len(data) - len(packet.payload) - packet.padding_size
    for size in range(header_size):
        try:
            parsed = parse_rtp_untrusted(data[:size])
        except RtpParseError:
            continue
        # A truncated header can only parse if the cut lands where another
        # valid reading exists; it must then be self-consistent.
        assert parse_rtp_untrusted(serialize_rtp(parsed)) == parsed
