"""Tests for edge_recorder.rtp.rtx: RTX retransmissions (RFC 4588 §4) on the wire."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_recorder.errors import RtpParseError
from edge_recorder.rtp.packet import RtpPacket, parse_rtp_untrusted, serialize_rtp
from edge_recorder.rtp.rtx import RtxPacketizer, unwrap_rtx, wrap_rtx

MEDIA_PT = 101
MEDIA_SSRC = 0x11223344
RTX_PT = 102
RTX_SSRC = 0x11223345

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)


@st.composite
def media_packets(draw: st.DrawFn) -> RtpPacket:
    # One-byte extension elements (RFC 8285 §4.2) so the parsed dict equals the drawn one.
    extensions = draw(
        st.dictionaries(st.integers(1, 14), st.binary(min_size=1, max_size=16), max_size=4)
    )
    return RtpPacket(
        payload_type=MEDIA_PT,
        sequence_number=draw(u16),
        timestamp=draw(u32),
        ssrc=MEDIA_SSRC,
        payload=draw(st.binary(max_size=300)),
        marker=draw(st.booleans()),
        csrcs=tuple(draw(st.lists(u32, max_size=15))),
        extensions=extensions,
    )


def over_the_wire(packet: RtpPacket) -> RtpPacket:
    return parse_rtp_untrusted(serialize_rtp(packet))


def unwrap(packet: RtpPacket) -> RtpPacket | None:
    return unwrap_rtx(packet, media_payload_type=MEDIA_PT, media_ssrc=MEDIA_SSRC)


# -------------------------------------------------------------------- round trip


@given(media_packets(), u16, st.integers(0, 255))
def test_wrap_then_unwrap_over_the_wire_gives_the_original(
    original: RtpPacket, rtx_sequence: int, rtx_padding: int
) -> None:
    rtx = wrap_rtx(
        original, rtx_payload_type=RTX_PT, rtx_ssrc=RTX_SSRC, sequence_number=rtx_sequence
    )
    assert (rtx.payload_type, rtx.ssrc, rtx.sequence_number) == (RTX_PT, RTX_SSRC, rtx_sequence)
    assert (rtx.timestamp, rtx.marker, rtx.csrcs) == (
        original.timestamp,
        original.marker,
        original.csrcs,
    )
    assert rtx.extensions == original.extensions and rtx.extensions is not original.extensions
    assert rtx.payload[:2] == original.sequence_number.to_bytes(2, "big")
    # The RTX packet's own padding (RFC 3550 §5.1) is not part of the original.
    rtx.padding_size = rtx_padding
    assert unwrap(over_the_wire(rtx)) == original


def test_wire_layout_of_a_retransmission() -> None:
    # RTX PT 102, RTX seq 0x0102, ts 0xA0B0C0D0, RTX SSRC, payload OSN 0xFFFE + "vp8!".
    data = bytes.fromhex("80e60102a0b0c0d011223345fffe") + b"vp8!"
    original = unwrap(parse_rtp_untrusted(data))
    assert original == RtpPacket(
        payload_type=MEDIA_PT,
        sequence_number=0xFFFE,
        timestamp=0xA0B0C0D0,
        ssrc=MEDIA_SSRC,
        payload=b"vp8!",
        marker=True,
    )
    packetizer = RtxPacketizer(payload_type=RTX_PT, ssrc=RTX_SSRC, initial_sequence=0x0102)
    assert serialize_rtp(packetizer.wrap(original)) == data


def test_packetizer_counts_its_own_sequence_across_the_wrap() -> None:
    packetizer = RtxPacketizer(payload_type=RTX_PT, ssrc=RTX_SSRC, initial_sequence=65534)
    originals = [
        RtpPacket(MEDIA_PT, seq & 0xFFFF, 9000, MEDIA_SSRC, b"x") for seq in (65535, 0, 65535, 1)
    ]
    wrapped = [packetizer.wrap(p) for p in originals]
    # RFC 4588 §4: the RTX stream's numbers run on regardless of the OSNs.
    assert [p.sequence_number for p in wrapped] == [65534, 65535, 0, 1]
    assert [unwrap(over_the_wire(p)) for p in wrapped] == originals
    assert packetizer.next_sequence == 2


def test_packetizer_picks_a_random_initial_sequence() -> None:
    packetizer = RtxPacketizer(payload_type=RTX_PT, ssrc=RTX_SSRC)
    assert 0 <= packetizer.next_sequence <= 0xFFFF


# ----------------------------------------------------------- padding and garbage


@pytest.mark.parametrize("padding_size", [1, 2, 224, 255])
def test_padding_only_packets_are_not_retransmissions(padding_size: int) -> None:
    # libwebrtc probes bandwidth with RTX packets that hold only padding (no OSN).
    packetizer = RtxPacketizer(payload_type=RTX_PT, ssrc=RTX_SSRC, initial_sequence=7)
    probe = over_the_wire(packetizer.padding(padding_size, timestamp=-1))
    assert probe.payload == b"" and probe.padding_size == padding_size
    assert probe.timestamp == 0xFFFF_FFFF and probe.sequence_number == 7
    assert unwrap(probe) is None
    assert packetizer.next_sequence == 8  # padding consumes RTX numbers too


def test_empty_rtx_payload_without_padding_is_not_a_retransmission() -> None:
    assert unwrap(RtpPacket(RTX_PT, 5, 0, RTX_SSRC)) is None


def test_one_byte_payload_is_too_short_for_the_osn() -> None:
    with pytest.raises(RtpParseError, match="OSN"):
        unwrap(over_the_wire(RtpPacket(RTX_PT, 5, 0, RTX_SSRC, b"\x01", padding_size=3)))


def test_osn_alone_restores_an_empty_payload() -> None:
    original = unwrap(RtpPacket(RTX_PT, 5, 77, RTX_SSRC, b"\x12\x34"))
    assert original == RtpPacket(MEDIA_PT, 0x1234, 77, MEDIA_SSRC, b"")


@given(st.binary(max_size=80))
def test_garbage_raises_only_rtp_parse_error(data: bytes) -> None:
    with contextlib.suppress(RtpParseError):
        packet = parse_rtp_untrusted(data)
        result = unwrap(packet)
        if result is None:
            assert packet.payload == b""
        else:
            assert len(packet.payload) >= 2
            assert result.payload == packet.payload[2:]
            assert result.sequence_number == int.from_bytes(packet.payload[:2], "big")
            assert (result.payload_type, result.ssrc) == (MEDIA_PT, MEDIA_SSRC)
            serialize_rtp(result)  # always serialisable again


# ----------------------------------------------------------------- bad arguments


def test_bad_arguments() -> None:
    packet = RtpPacket(MEDIA_PT, 1, 0, MEDIA_SSRC, b"x")
    with pytest.raises(ValueError):
        wrap_rtx(packet, rtx_payload_type=RTX_PT, rtx_ssrc=RTX_SSRC, sequence_number=65536)
    with pytest.raises(ValueError):
        wrap_rtx(
            RtpPacket(MEDIA_PT, -1, 0, MEDIA_SSRC),
            rtx_payload_type=RTX_PT,
            rtx_ssrc=RTX_SSRC,
            sequence_number=0,
        )
    with pytest.raises(ValueError):
        RtxPacketizer(payload_type=128, ssrc=1)
    with pytest.raises(ValueError):
        RtxPacketizer(payload_type=RTX_PT, ssrc=1 << 32)
    with pytest.raises(ValueError):
        RtxPacketizer(payload_type=RTX_PT, ssrc=1, initial_sequence=65536)
    packetizer = RtxPacketizer(payload_type=RTX_PT, ssrc=1, initial_sequence=0)
    for size in (0, 256):
        with pytest.raises(ValueError):
            packetizer.padding(size)
