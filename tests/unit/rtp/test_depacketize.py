"""Depacketizers: RFC 7741 (VP8), RFC 6184 (H.264), RFC 7587 (Opus)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_recorder.errors import DepacketizeError, UnsupportedCodecError
from edge_recorder.rtp.depacketize import (
    Depacketizer,
    H264Depacketizer,
    OpusDepacketizer,
    Vp8Depacketizer,
    depacketizer_for,
)
from edge_recorder.rtp.depacketize.h264 import START_CODE
from edge_recorder.rtp.depacketize.vp8 import parse_vp8_descriptor_untrusted
from edge_recorder.rtp.packetize import (
    H264Packetizer,
    OpusPacketizer,
    Vp8Packetizer,
    split_annex_b,
)
from tests.fakes import decode_all, encode_opus, encode_video

# -- depacketizer_for ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("mime", "codec", "kind"),
    [
        ("video/VP8", "vp8", "video"),
        ("VIDEO/vp8", "vp8", "video"),
        ("video/H264", "h264", "video"),
        ("video/h264", "h264", "video"),
        ("audio/opus", "opus", "audio"),
        ("audio/OPUS", "opus", "audio"),
    ],
)
def test_depacketizer_for_known_codecs(mime: str, codec: str, kind: str) -> None:
    dep = depacketizer_for(mime, {"packetization-mode": 1})
    assert dep.codec == codec
    assert dep.kind == kind
    assert isinstance(dep, Depacketizer)


@pytest.mark.parametrize("mime", ["video/AV1", "video/H265", "audio/PCMU", "opus", ""])
def test_depacketizer_for_unsupported_names_the_codec(mime: str) -> None:
    with pytest.raises(UnsupportedCodecError, match=repr(mime).replace("/", ".")):
        depacketizer_for(mime)


@pytest.mark.parametrize(
    ("parameters", "mode"),
    [
        (None, 0),
        ({}, 0),
        ({"packetization-mode": 1}, 1),
        ({"packetization-mode": "0"}, 0),
        ({"profile-level-id": "42e01f", "packetization-mode": "1"}, 1),
    ],
)
def test_h264_packetization_mode(parameters: dict[str, object] | None, mode: int) -> None:
    dep = depacketizer_for("video/H264", parameters)
    assert isinstance(dep, H264Depacketizer)
    assert dep.packetization_mode == mode


@pytest.mark.parametrize("value", [2, "2", "x"])
def test_h264_interleaved_or_bad_mode_is_unsupported(value: object) -> None:
    with pytest.raises(UnsupportedCodecError, match="packetization-mode"):
        depacketizer_for("video/H264", {"packetization-mode": value})


# -- VP8 ----------------------------------------------------------------------------


def vp8_frame(*, key: bool, body: bytes = b"\x00" * 20) -> bytes:
    """A VP8 frame whose frame tag (RFC 6386 §9.1) matches its length."""
    header = 10 if key else 3
    size = len(body)
    tag = (0 if key else 1) | (1 << 4) | (size << 5)  # show_frame=1
    out = tag.to_bytes(3, "little")
    if key:
        out += b"\x9d\x01\x2a" + (320).to_bytes(2, "little") + (240).to_bytes(2, "little")
    assert len(out) == header
    return out + body


@pytest.mark.parametrize(
    ("descriptor", "size", "start", "pid", "picture_id"),
    [
        (b"\x10", 1, True, 0, None),  # no extension
        (b"\x03", 1, False, 3, None),
        (b"\x90\x80\x05", 3, True, 0, 5),  # I, 7-bit PictureID
        (b"\x90\x80\x81\x02", 4, True, 0, 0x102),  # I, M=1: 15-bit PictureID
        (b"\x90\x40\x07", 3, True, 0, None),  # L: TL0PICIDX
        (b"\x90\x20\x00", 3, True, 0, None),  # T: TID|Y|KEYIDX
        (b"\x90\x10\x00", 3, True, 0, None),  # K alone also carries the octet
        (b"\x90\xf0\xff\xff\x01\x02", 6, True, 0, 0x7FFF),  # I(15) L T K
    ],
)
def test_vp8_descriptor_fields(
    descriptor: bytes, size: int, start: bool, pid: int, picture_id: int | None
) -> None:
    d = parse_vp8_descriptor_untrusted(descriptor + b"\xaa")
    assert (d.size, d.start, d.partition_id, d.picture_id) == (size, start, pid, picture_id)


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x90", b"\x90\x80", b"\x90\x80\x81", b"\x90\xc0\x05", b"\x10", b"\x90\x80\x05"],
)
def test_vp8_truncated_descriptor_raises(payload: bytes) -> None:
    with pytest.raises(DepacketizeError):
        parse_vp8_descriptor_untrusted(payload)
    assert not Vp8Depacketizer().is_frame_start(payload)
    assert not Vp8Depacketizer().is_keyframe(payload)


def test_vp8_frame_start_and_keyframe_bits() -> None:
    dep = Vp8Depacketizer()
    key = b"\x90\x80\x00" + vp8_frame(key=True)
    inter = b"\x90\x80\x01" + vp8_frame(key=False)
    middle = b"\x80\x80\x00" + b"\x01\x02"
    other_partition = b"\x11" + b"\x00\x00"  # S=1 but PID=1
    assert dep.is_frame_start(key) and dep.is_keyframe(key)
    assert dep.is_frame_start(inter) and not dep.is_keyframe(inter)
    assert not dep.is_frame_start(middle) and not dep.is_keyframe(middle)
    assert not dep.is_frame_start(other_partition) and not dep.is_keyframe(other_partition)


def test_vp8_depacketize_rejects_bad_frames() -> None:
    dep = Vp8Depacketizer()
    frame = vp8_frame(key=False, body=bytes(range(40)))
    with pytest.raises(DepacketizeError, match="first packet"):
        dep.depacketize([b"\x80\x80\x01" + frame])
    with pytest.raises(DepacketizeError, match="new frame"):
        dep.depacketize([b"\x10" + frame, b"\x10" + frame])
    with pytest.raises(DepacketizeError, match="PictureID"):
        dep.depacketize([b"\x90\x80\x01" + frame[:10], b"\x80\x80\x02" + frame[10:]])
    with pytest.raises(DepacketizeError, match="shorter"):
        dep.depacketize([b"\x10" + frame[:20]])  # the tail packet is missing
    with pytest.raises(DepacketizeError, match="start code"):
        dep.depacketize([b"\x10" + b"\x00\x00\x00" + b"\x00" * 10])
    with pytest.raises(DepacketizeError):
        dep.depacketize([])


@given(
    body=st.binary(min_size=1, max_size=5000),
    key=st.booleans(),
    mtu=st.integers(min_value=17, max_value=1500),
    picture_id=st.integers(min_value=0, max_value=0x7FFF),
)
def test_vp8_round_trip(body: bytes, key: bool, mtu: int, picture_id: int) -> None:
    frame = vp8_frame(key=key, body=body)
    packetizer = Vp8Packetizer(
        payload_type=96, ssrc=1, mtu=mtu, initial_sequence=0, initial_picture_id=picture_id
    )
    packets = packetizer.packetize(frame, 0)
    dep = Vp8Depacketizer()
    assert dep.is_frame_start(packets[0].payload)
    assert dep.is_keyframe(packets[0].payload) == key
    assert not any(dep.is_frame_start(p.payload) for p in packets[1:])
    assert dep.depacketize([p.payload for p in packets]) == frame


def test_vp8_real_encoder_round_trip_and_keyframes() -> None:
    frames = encode_video("libvpx", 30, 10)
    packetizer = Vp8Packetizer(payload_type=96, ssrc=1, mtu=400, initial_sequence=65530)
    dep = Vp8Depacketizer()
    out: list[bytes] = []
    for f in frames:
        packets = packetizer.packetize(f.data, f.index * 3000)
        assert dep.is_keyframe(packets[0].payload) == f.keyframe
        out.append(dep.depacketize([p.payload for p in packets]))
    assert out == [f.data for f in frames]
    assert frames[0].keyframe and not frames[1].keyframe
    assert decode_all("vp8", out) == len(frames)


# -- H.264 --------------------------------------------------------------------------

SPS = bytes((0x67, 0x42, 0xC0, 0x1F)) + b"\x11" * 10
PPS = bytes((0x68, 0xCE, 0x3C, 0x80))


def slice_nal(nal_type: int, size: int, *, nri: int = 0x60) -> bytes:
    """A slice NAL unit (first_mb_in_slice == 0: the top bit after the header is set)."""
    return bytes((nri | nal_type, 0x88)) + b"\x5a" * (size - 2)


def annex_b(*nals: bytes) -> bytes:
    return b"".join(START_CODE + n for n in nals)


def h264_payloads(access_unit: bytes, mtu: int = 1200) -> list[bytes]:
    packetizer = H264Packetizer(payload_type=102, ssrc=1, mtu=mtu, initial_sequence=0)
    return [p.payload for p in packetizer.packetize(access_unit, 0)]


def test_h264_single_nal_path() -> None:
    au = annex_b(slice_nal(1, 800))
    payloads = h264_payloads(au)
    assert len(payloads) == 1 and payloads[0][0] & 0x1F == 1
    dep = H264Depacketizer()
    assert not dep.is_keyframe(payloads[0])
    assert dep.depacketize(payloads) == au


def test_h264_stap_a_path() -> None:
    idr = slice_nal(5, 300)
    au = annex_b(SPS, PPS, idr)
    payloads = h264_payloads(au)
    assert len(payloads) == 1 and payloads[0][0] & 0x1F == 24
    assert payloads[0][0] & 0x60 == 0x60  # NRI is the maximum of the units' (§5.7.1)
    dep = H264Depacketizer()
    assert dep.is_frame_start(payloads[0]) and dep.is_keyframe(payloads[0])
    assert dep.depacketize(payloads) == au


def test_h264_fu_a_path() -> None:
    idr = slice_nal(5, 5000)
    au = annex_b(SPS, PPS, idr)
    payloads = h264_payloads(au, mtu=1000)
    assert payloads[0][0] & 0x1F == 24  # SPS+PPS aggregated
    fus = payloads[1:]
    assert len(fus) == 6 and all(p[0] & 0x1F == 28 for p in fus)
    assert fus[0][1] & 0xC0 == 0x80 and fus[-1][1] & 0xC0 == 0x40
    assert all(p[1] & 0xC0 == 0 for p in fus[1:-1])
    dep = H264Depacketizer()
    assert dep.is_frame_start(payloads[0])
    assert dep.is_keyframe(fus[0]) and not dep.is_keyframe(fus[1])
    assert not dep.is_frame_start(fus[0]) and not dep.is_frame_start(fus[1])
    assert dep.depacketize(payloads) == au


def test_h264_context_free_frame_start_is_aud_or_sps() -> None:
    """Without the previous packet, only an AUD or SPS surely begins an access unit."""
    dep = H264Depacketizer()
    assert dep.is_frame_start(SPS)
    assert dep.is_frame_start(bytes((0x18, 0, len(SPS))) + SPS)  # STAP-A, SPS first
    assert dep.is_frame_start(bytes((0x7C, 0x87)) + SPS[1:])  # FU-A S=1 of an SPS
    assert not dep.is_frame_start(bytes((0x7C, 0x07)) + SPS[1:])  # FU-A S=0
    # The packet in front of an IDR slice (SPS/PPS/SEI) may be the lost one.
    assert not dep.is_frame_start(slice_nal(5, 10))
    assert not dep.is_frame_start(slice_nal(1, 10))
    assert not dep.is_frame_start(bytes((0x06, 0x05, 0x01)))  # SEI
    assert not dep.is_frame_start(b"\x67")  # too short
    second_slice_fu = bytes((0x7C, 0x85, 0x08, 0x00))  # FU-A S=1 IDR, first_mb != 0
    assert dep.is_keyframe(second_slice_fu)
    # Once the stream has shown an AUD, only an AUD proves a start: the SPS may
    # follow a lost AUD packet (GStreamer's rtph264pay sends the AUD alone).
    assert dep.is_frame_start(bytes((0x09, 0xF0)))
    assert not dep.is_frame_start(SPS)
    dep = H264Depacketizer()
    dep.depacketize([bytes((0x18, 0, 2, 0x09, 0xF0, 0, len(SPS))) + SPS])  # AUD in a STAP-A
    assert not dep.is_frame_start(SPS)


@pytest.mark.parametrize(
    ("payloads", "message"),
    [
        ([b""], "empty"),
        ([bytes((0x80 | 1, 0x88))], "forbidden"),
        ([bytes((0x19, 0, 0, 0, 2, 0x67, 0))], "STAP-B"),
        ([bytes((0x1A, 0, 0))], "MTAP16"),
        ([bytes((0x1B, 0, 0))], "MTAP24"),
        ([bytes((0x1D, 0x85, 0))], "FU-B"),
        ([bytes((0x00, 0))], "reserved"),
        ([bytes((0x1E, 0))], "reserved"),
        ([bytes((0x1F, 0))], "reserved"),
        ([bytes((0x18,))], "empty STAP-A"),
        ([bytes((0x18, 0x00))], "truncated"),
        ([bytes((0x18, 0x00, 0x00))], "size 0"),
        ([bytes((0x18, 0x00, 0x05, 0x67))], "overruns"),
        ([bytes((0x18, 0x00, 0x02, 0x7C, 0x00))], "STAP-A contains"),
        ([bytes((0x7C, 0x85))], "shorter"),
        ([bytes((0x7C, 0xC5, 0x00))], "both S and E"),
        ([bytes((0x7C, 0x85, 0x00))], "no E fragment"),
        ([bytes((0x7C, 0x45, 0x00))], "without a start"),
        ([bytes((0x7C, 0x85, 0x00)), bytes((0x7C, 0x85, 0x00))], "before the previous"),
        ([bytes((0x7C, 0x85, 0x00)), bytes((0x7C, 0x41, 0x00))], "type changes"),
        ([bytes((0x7C, 0x85, 0x00)), bytes((0x65, 0x88))], "interrupted"),
        ([bytes((0x7C, 0x98, 0x00))], "FU-A carries"),
        ([], "no payloads"),
    ],
)
def test_h264_rejects_malformed(payloads: list[bytes], message: str) -> None:
    with pytest.raises(DepacketizeError, match=message):
        H264Depacketizer().depacketize(payloads)


def test_h264_real_encoder_round_trip_and_keyframes() -> None:
    frames = encode_video("libx264", 30, 10)
    packetizer = H264Packetizer(payload_type=102, ssrc=1, mtu=1200, initial_sequence=65000)
    dep = H264Depacketizer()
    out: list[bytes] = []
    kinds: set[int] = set()
    for f in frames:
        packets = packetizer.packetize(f.data, f.index * 3000)
        kinds.update(p.payload[0] & 0x1F for p in packets)
        assert dep.is_frame_start(packets[0].payload) == f.keyframe  # x264: SPS first
        assert dep.is_keyframe(packets[0].payload) == f.keyframe
        data = dep.depacketize([p.payload for p in packets])
        assert split_annex_b(data) == split_annex_b(f.data)
        out.append(data)
    assert {24, 28} <= kinds  # x264 output exercises STAP-A and FU-A
    assert frames[0].keyframe and not frames[1].keyframe
    assert decode_all("h264", out) == len(frames)


def test_h264_mode0_stream_of_single_nals_decodes() -> None:
    """A mode-0 sender puts each NAL unit in its own packet (RFC 6184 §6.2)."""
    frames = encode_video("libx264", 30, 10)
    dep = depacketizer_for("video/H264")  # mode 0 by default
    out = [dep.depacketize(split_annex_b(f.data)) for f in frames]
    assert decode_all("h264", out) == len(frames)


# -- Opus ---------------------------------------------------------------------------


def test_opus_real_encoder_round_trip() -> None:
    frames = encode_opus(50)
    packetizer = OpusPacketizer(payload_type=111, ssrc=1, initial_sequence=0)
    dep = OpusDepacketizer()
    out = []
    for f in frames:
        (packet,) = packetizer.packetize(f.data, f.index * 960)
        assert dep.is_frame_start(packet.payload) and dep.is_keyframe(packet.payload)
        out.append(dep.depacketize([packet.payload]))
    assert out == [f.data for f in frames]
    assert decode_all("opus", out) == len(frames)


@pytest.mark.parametrize(
    ("payloads", "message"),
    [
        ([], "one packet"),
        ([b"\xf8", b"\xf8"], "one packet"),
        ([b""], "R1"),
        ([b"\xf8" + b"\x00" * 1276], "R2"),
        ([b"\xf9\x00\x00\x00"], "R3"),  # code 1, odd length
        ([b"\xfa"], "truncated"),  # code 2 without a length
        ([b"\xfa\x05\x00"], "R4"),
        ([b"\xfb"], "frame count"),
        ([b"\xfb\x00"], "zero frames"),
        ([b"\xfb\x07"], "120 ms"),  # 7 x 20 ms
        ([b"\xfb\x02\x00\x00\x00"], "R6"),  # CBR, 3 bytes / 2 frames
        ([b"\xfb\x42"], "padding"),
        ([b"\xfb\x41\x09\x00"], "padding overruns"),
        ([b"\xfb\x82\x09\x00"], "R7"),
    ],
)
def test_opus_rejects_malformed(payloads: list[bytes], message: str) -> None:
    with pytest.raises(DepacketizeError, match=message):
        OpusDepacketizer().depacketize(payloads)


@pytest.mark.parametrize(
    "packet",
    [
        b"\xf8",
        b"\xf8\x01\x02",
        b"\xf9\x01\x02",
        b"\xfa\x01\x01\x02",
        b"\xfb\x03\x01\x02\x03",
        b"\xfb\x83\x01\x01\x01\x02\x03",
        b"\xfb\x43\x02\x01\x02\x03\x00\x00",
    ],
)
def test_opus_accepts_valid_framings(packet: bytes) -> None:
    assert OpusDepacketizer().depacketize([packet]) == packet


# -- fuzzing: untrusted payloads raise only DepacketizeError ---------------------------

DEPACKETIZERS: list[Depacketizer] = [Vp8Depacketizer(), H264Depacketizer(), OpusDepacketizer()]


@settings(max_examples=300)
@given(
    index=st.integers(min_value=0, max_value=len(DEPACKETIZERS) - 1),
    payloads=st.lists(st.binary(max_size=64), max_size=6),
)
def test_fuzz_depacketize_raises_only_depacketize_error(index: int, payloads: list[bytes]) -> None:
    dep = DEPACKETIZERS[index]
    for payload in payloads:
        assert isinstance(dep.is_frame_start(payload), bool)
        assert isinstance(dep.is_keyframe(payload), bool)
    try:
        data = dep.depacketize(payloads)
    except DepacketizeError:
        return
    assert isinstance(data, bytes)


@settings(max_examples=200)
@given(
    header=st.sampled_from([0x18, 0x1C, 0x7C, 0x65, 0x41, 0x67, 0x19, 0x1D]),
    rest=st.lists(st.binary(max_size=40), min_size=1, max_size=5),
)
def test_fuzz_h264_structured_headers(header: int, rest: list[bytes]) -> None:
    """Most random bytes die on the first check; start from plausible NAL headers."""
    payloads = [bytes((header,)) + r for r in rest]
    dep = H264Depacketizer()
    dep.is_frame_start(payloads[0])
    dep.is_keyframe(payloads[0])
    with contextlib.suppress(DepacketizeError):
        dep.depacketize(payloads)
