"""Our RTP sender side: sequence numbers, marker bits, MTU, payload formats."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_recorder.rtp.depacketize import H264Depacketizer
from edge_recorder.rtp.depacketize.vp8 import parse_vp8_descriptor_untrusted
from edge_recorder.rtp.packet import parse_rtp_untrusted, serialize_rtp
from edge_recorder.rtp.packetize import (
    H264Packetizer,
    OpusPacketizer,
    Vp8Packetizer,
    split_annex_b,
)

Packetizer = Vp8Packetizer | H264Packetizer | OpusPacketizer

NAL = st.binary(min_size=1, max_size=3000).map(
    lambda b: bytes((0x41,)) + b.replace(b"\x00", b"\x01")
)


@pytest.mark.parametrize("cls", [Vp8Packetizer, H264Packetizer, OpusPacketizer])
def test_sequence_numbers_continue_and_wrap(cls: type[Packetizer]) -> None:
    packetizer = cls(payload_type=100, ssrc=0xDEADBEEF, mtu=200, initial_sequence=65533)
    frame = b"\x00\x00\x00\x01\x41" + b"\x07" * 150  # one packet for every codec here
    seqs = [p.sequence_number for i in range(5) for p in packetizer.packetize(frame, i)]
    assert seqs == [65533, 65534, 65535, 0, 1]


@pytest.mark.parametrize("cls", [Vp8Packetizer, H264Packetizer, OpusPacketizer])
def test_header_fields_and_timestamp_modulo(cls: type[Packetizer]) -> None:
    packetizer = cls(payload_type=111, ssrc=1234, initial_sequence=7)
    (packet,) = packetizer.packetize(b"\x00\x00\x01\x41\x01\x02", (1 << 32) + 5)
    assert (packet.payload_type, packet.ssrc, packet.timestamp) == (111, 1234, 5)


def test_random_initial_sequence_in_range() -> None:
    seqs = {
        Vp8Packetizer(payload_type=96, ssrc=1).packetize(b"\x01" * 4, 0)[0].sequence_number
        for _ in range(20)
    }
    assert all(0 <= s <= 0xFFFF for s in seqs)
    assert len(seqs) > 1  # RFC 3550 §5.1: random initial value


@pytest.mark.parametrize("cls", [Vp8Packetizer, H264Packetizer])
def test_video_marker_on_last_packet_only(cls: type[Packetizer]) -> None:
    packetizer = cls(payload_type=96, ssrc=1, mtu=300, initial_sequence=0)
    packets = packetizer.packetize(b"\x00\x00\x00\x01\x65" + b"\x11" * 2000, 0, keyframe=True)
    assert len(packets) > 1
    assert [p.marker for p in packets] == [False] * (len(packets) - 1) + [True]
    assert len({p.timestamp for p in packets}) == 1


def test_opus_marker_false() -> None:
    packetizer = OpusPacketizer(payload_type=111, ssrc=1, initial_sequence=0)
    assert [p.marker for i in range(3) for p in packetizer.packetize(b"\xf8\x00", i * 960)] == [
        False
    ] * 3


@pytest.mark.parametrize("cls", [Vp8Packetizer, H264Packetizer, OpusPacketizer])
def test_bad_arguments(cls: type[Packetizer]) -> None:
    with pytest.raises(ValueError):
        cls(payload_type=128, ssrc=1)
    with pytest.raises(ValueError):
        cls(payload_type=96, ssrc=1 << 32)
    with pytest.raises(ValueError):
        cls(payload_type=96, ssrc=1, initial_sequence=65536)
    with pytest.raises(ValueError):
        cls(payload_type=96, ssrc=1, mtu=12)
    with pytest.raises(ValueError):
        cls(payload_type=96, ssrc=1).packetize(b"", 0)


def test_opus_too_big_for_mtu() -> None:
    with pytest.raises(ValueError, match="mtu"):
        OpusPacketizer(payload_type=111, ssrc=1, mtu=100).packetize(b"\xf8" * 100, 0)


def test_vp8_descriptor_picture_id_increments_and_wraps() -> None:
    packetizer = Vp8Packetizer(
        payload_type=96, ssrc=1, mtu=100, initial_sequence=0, initial_picture_id=0x7FFE
    )
    ids = []
    for i in range(3):
        packets = packetizer.packetize(bytes(range(200)), i * 3000)
        descriptors = [parse_vp8_descriptor_untrusted(p.payload) for p in packets]
        assert [d.start for d in descriptors] == [True] + [False] * (len(packets) - 1)
        assert {d.partition_id for d in descriptors} == {0}
        assert {d.size for d in descriptors} == {4}
        assert all(p.payload[2] & 0x80 for p in packets)  # M=1: 15-bit PictureID
        (picture_id,) = {d.picture_id for d in descriptors}
        ids.append(picture_id)
    assert ids == [0x7FFE, 0x7FFF, 0]


def test_split_annex_b_start_codes_and_trailing_zeros() -> None:
    stream = b"\x00\x00\x00\x01\x67\x01\x00\x00\x01\x68\x02\x00\x00\x00\x00\x01\x65\x03\x00"
    assert split_annex_b(stream) == [b"\x67\x01", b"\x68\x02", b"\x65\x03"]
    assert split_annex_b(b"") == []
    assert split_annex_b(b"\x00\x00\x01") == []


def test_h264_aggregates_small_nals_into_stap_a() -> None:
    packetizer = H264Packetizer(payload_type=102, ssrc=1, initial_sequence=0)
    au = b"".join(
        b"\x00\x00\x00\x01" + n for n in (b"\x67\x42\x00\x1f", b"\x68\xce", b"\x65" + b"\x22" * 50)
    )
    (packet,) = packetizer.packetize(au, 0)
    assert packet.payload[0] == 0x78  # F=0, NRI=3 (the maximum of the units'), type 24
    assert packet.marker


@given(
    nals=st.lists(NAL, min_size=1, max_size=6),
    mtu=st.integers(min_value=15, max_value=1500),
    start=st.integers(min_value=0, max_value=0xFFFF),
)
def test_h264_round_trip_and_mtu(nals: list[bytes], mtu: int, start: int) -> None:
    packetizer = H264Packetizer(payload_type=102, ssrc=5, mtu=mtu, initial_sequence=start)
    au = b"".join(b"\x00\x00\x01" + n for n in nals)
    packets = packetizer.packetize(au, 90000)
    for packet in packets:
        wire = serialize_rtp(packet)
        assert len(wire) <= mtu
        assert parse_rtp_untrusted(wire) == packet
    assert [(p.sequence_number - start) % 65536 for p in packets] == list(range(len(packets)))
    assert split_annex_b(H264Depacketizer().depacketize([p.payload for p in packets])) == nals


@given(frame=st.binary(min_size=1, max_size=6000), mtu=st.integers(min_value=17, max_value=1500))
def test_vp8_mtu_and_reassembly(frame: bytes, mtu: int) -> None:
    packets = Vp8Packetizer(payload_type=96, ssrc=1, mtu=mtu, initial_sequence=0).packetize(
        frame, 0
    )
    assert all(len(serialize_rtp(p)) <= mtu for p in packets)
    sizes = [len(p.payload) for p in packets]
    assert max(sizes) - min(sizes) <= 1  # split evenly: no runt last packet
    assert b"".join(p.payload[4:] for p in packets) == frame
