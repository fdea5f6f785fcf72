"""VP9 over RTP (RFC 9628): descriptor parsing, packetizer, depacketizer, assembly."""

from __future__ import annotations

import contextlib

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_recorder.errors import DepacketizeError
from edge_recorder.media.decode import VideoDecoder
from edge_recorder.rtp.assembler import FrameAssembler
from edge_recorder.rtp.depacketize import Depacketizer, Vp9Depacketizer, depacketizer_for
from edge_recorder.rtp.depacketize.vp9 import (
    build_superframe,
    parse_vp9_descriptor_untrusted,
    parse_vp9_frame_header_untrusted,
    split_superframe,
)
from edge_recorder.rtp.packet import RtpPacket
from edge_recorder.rtp.packetize import Vp9Packetizer
from edge_recorder.rtp.parameters import recorder_rtp_capabilities
from tests.fakes import VIDEO_CLOCK_HZ, VIDEO_FPS, decode_all, encode_video

TICKS = VIDEO_CLOCK_HZ // VIDEO_FPS  # RTP timestamp step per frame

# -- bitstream helpers ----------------------------------------------------------------


def _bits(*fields: tuple[int, int]) -> bytes:
    """Pack (value, width) fields MSB first, zero-padded to whole octets."""
    text = "".join(format(value, f"0{width}b") for value, width in fields)
    text += "0" * (-len(text) % 8)
    return int(text, 2).to_bytes(len(text) // 8, "big")


def key_header(width: int = 320, height: int = 240, profile: int = 0) -> bytes:
    """The start of a VP9 key frame's uncompressed header (VP9 spec §6.2)."""
    fields = [(2, 2), (profile & 1, 1), (profile >> 1, 1)]
    if profile == 3:
        fields.append((0, 1))  # reserved_zero
    fields += [(0, 1), (0, 1), (1, 1), (0, 1), (0x498342, 24)]  # !show_existing, KEY, show, !error_res
    if profile >= 2:
        fields.append((0, 1))  # ten_or_twelve_bit
    fields += [(1, 3), (0, 1)]  # color_space BT.601, color_range
    if profile in (1, 3):
        fields.append((0, 3))  # subsampling_x, subsampling_y, reserved_zero
    fields += [(width - 1, 16), (height - 1, 16)]
    return _bits(*fields)


INTER = b"\x86"  # frame_marker 2, profile 0, frame_type NON_KEY, show_frame 1


def descriptor(
    *,
    b: bool = True,
    e: bool = True,
    p: bool = False,
    pid: int | None = 7,
    sid: int | None = None,
    tid: int = 0,
    tl0: int = 0,
    v: bytes = b"",
) -> bytes:
    """A non-flexible VP9 payload descriptor (RFC 9628 §4.2)."""
    first = (0x80 if pid is not None else 0) | (0x40 if p else 0) | (0x20 if sid is not None else 0)
    first |= (0x08 if b else 0) | (0x04 if e else 0) | (0x02 if v else 0)
    out = bytes((first,))
    if pid is not None:
        out += bytes((0x80 | (pid >> 8), pid & 0xFF))
    if sid is not None:
        out += bytes(((tid << 5) | (sid << 1) | (1 if sid else 0), tl0))
    return out + v


# -- registration and capabilities ------------------------------------------------------


@pytest.mark.parametrize("mime", ["video/VP9", "VIDEO/vp9", " video/VP9 "])
def test_depacketizer_for_vp9(mime: str) -> None:
    dep = depacketizer_for(mime, {"profile-id": 0})
    assert isinstance(dep, Vp9Depacketizer) and isinstance(dep, Depacketizer)
    assert (dep.codec, dep.kind) == ("vp9", "video")
    VideoDecoder(dep.codec).close()  # the worker can open a decoder for it


def test_capabilities_offer_vp9_profile_0() -> None:
    (vp9,) = [c for c in recorder_rtp_capabilities()["codecs"] if c["mimeType"] == "video/VP9"]
    assert (vp9["kind"], vp9["clockRate"], vp9["parameters"]) == ("video", 90000, {"profile-id": 0})
    assert {"type": "nack", "parameter": "pli"} in vp9["rtcpFeedback"]


# -- the payload descriptor ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fields"),
    [
        (b"\x0c", {"size": 1, "begin": True, "end": True, "picture_id": None}),
        (b"\x88\x7f", {"size": 2, "picture_id": 0x7F, "begin": True, "end": False}),
        (b"\xc4\xff\xff", {"size": 3, "picture_id": 0x7FFF, "inter_picture": True, "end": True}),
        # L=1 non-flexible: TID 2, U, SID 1, D, then TL0PICIDX 17.
        (b"\x20\x53\x11", {"size": 3, "temporal_id": 2, "switching_up": True, "spatial_id": 1,
                           "inter_layer": True, "tl0_pic_idx": 17}),
        # L=1 flexible: no TL0PICIDX.
        (b"\x38\x50", {"size": 2, "flexible": True, "temporal_id": 2, "spatial_id": 0, "tl0_pic_idx": None}),
        # Flexible with three P_DIFFs (17, 18, 127); N chains them.
        (b"\xd8\x80\x11\x23\x25\xfe", {"size": 6, "picture_id": 17, "reference_diffs": (17, 18, 127)}),
        (b"\xd8\x05\x02", {"size": 3, "reference_diffs": (1,)}),
        (b"\x05", {"not_upper_reference": True, "end": True, "begin": False}),
    ],
)  # fmt: skip
def test_descriptor_fields(raw: bytes, fields: dict[str, object]) -> None:
    d = parse_vp9_descriptor_untrusted(raw + b"\xaa")
    for name, value in fields.items():
        assert getattr(d, name) == value, name


def test_descriptor_scalability_structure() -> None:
    # N_S=1 (two layers), Y=1 with 640x360 and 1280x720, G=1 with two pictures:
    # TID 0 U=1 no refs; TID 2 one P_DIFF of 33 (the layout libwebrtc tests).
    ss = bytes((0x38,)) + bytes.fromhex("02800168" "050002d0") + bytes((2, 0x10, 0x44, 33))
    d = parse_vp9_descriptor_untrusted(bytes((0x0A,)) + ss + b"\xaa")
    assert d.size == 1 + len(ss)
    assert d.ss is not None
    assert d.ss.spatial_layers == 2
    assert d.ss.resolutions == ((640, 360), (1280, 720))
    assert d.ss.picture_group == ((0, True, ()), (2, False, (33,)))
    bare = parse_vp9_descriptor_untrusted(b"\x0a\x00\xaa")  # one layer, no Y, no G
    assert bare.ss is not None and (bare.ss.spatial_layers, bare.ss.resolutions) == (1, ())


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x0c",  # no data after the descriptor
        b"\x80",  # I without PictureID
        b"\x88\x81",  # M=1 without the second octet
        b"\x28",  # L without the layer octet
        b"\x28\x00",  # non-flexible L without TL0PICIDX
        b"\x58\x06\xaa",  # flexible P_DIFF without a PictureID
        b"\xd8\x05\x03\x03\x03\x02\xaa",  # four P_DIFFs
        b"\xd8\x05\x03",  # N=1 and the next P_DIFF missing
        b"\x0a",  # V without SS
        b"\x0a\x10\x01\x40",  # SS resolution truncated
        b"\x0a\x08\x02\x00",  # SS picture group truncated
        b"\x0a\x08\x01\x04",  # SS P_DIFF truncated
    ],
)
def test_truncated_or_inconsistent_descriptor_raises(payload: bytes) -> None:
    with pytest.raises(DepacketizeError):
        parse_vp9_descriptor_untrusted(payload)
    dep = Vp9Depacketizer()
    assert not dep.is_frame_start(payload)
    assert not dep.is_keyframe(payload)


# -- the uncompressed header ---------------------------------------------------------------


@pytest.mark.parametrize("profile", [0, 1, 2, 3])
def test_frame_header_reads_key_frames_and_their_size(profile: int) -> None:
    h = parse_vp9_frame_header_untrusted(key_header(1280, 720, profile) + b"\x00")
    assert (h.profile, h.keyframe, h.show_frame, h.size) == (profile, True, True, (1280, 720))


def test_frame_header_inter_show_existing_and_bad_input() -> None:
    h = parse_vp9_frame_header_untrusted(INTER)
    assert (h.keyframe, h.show_frame, h.show_existing_frame) == (False, True, False)
    assert parse_vp9_frame_header_untrusted(b"\x88").show_existing_frame  # 10 0 0 1 ...
    assert parse_vp9_frame_header_untrusted(key_header()[:4]).size is None  # truncated: size unknown
    with pytest.raises(DepacketizeError, match="frame_marker"):
        parse_vp9_frame_header_untrusted(b"\x46")
    with pytest.raises(DepacketizeError, match="sync code"):
        parse_vp9_frame_header_untrusted(b"\x82\x49\x83\x43")
    with pytest.raises(DepacketizeError, match="truncated"):
        parse_vp9_frame_header_untrusted(b"")


def test_real_encoder_headers_agree_with_the_encoder() -> None:
    for f in encode_video("libvpx-vp9", 30, 10):
        h = parse_vp9_frame_header_untrusted(f.data)
        assert h.keyframe == f.keyframe
        assert h.size == ((320, 240) if f.keyframe else None)


# -- frame start and keyframe ------------------------------------------------------------


def test_frame_start_and_keyframe_bits() -> None:
    dep = Vp9Depacketizer()
    key = descriptor(p=False) + key_header()
    inter = descriptor(p=True) + INTER
    middle = descriptor(b=False, p=False) + key_header()
    assert dep.is_frame_start(key) and dep.is_keyframe(key)
    assert dep.is_frame_start(inter) and not dep.is_keyframe(inter)
    assert not dep.is_frame_start(middle) and not dep.is_keyframe(middle)
    # P=0 but the header says NON_KEY (an intra-only frame): not a keyframe.
    assert dep.is_frame_start(descriptor(p=False) + INTER)
    assert not dep.is_keyframe(descriptor(p=False) + INTER)
    # P=0 and garbage where the VP9 header should be: not a keyframe either.
    assert not dep.is_keyframe(descriptor(p=False) + b"\x00\x00\x00\x00")
    # A tiny first packet holds only the header's first octet: P and frame_type decide.
    assert dep.is_keyframe(descriptor(p=False) + b"\x82")


def test_spatial_layers_only_the_base_layer_starts_a_picture() -> None:
    dep = Vp9Depacketizer()
    base = descriptor(sid=0) + key_header()
    upper = descriptor(sid=1) + key_header(640, 480)  # P=0 too: inter-layer predicted
    assert dep.is_frame_start(base) and dep.is_keyframe(base)
    assert not dep.is_frame_start(upper) and not dep.is_keyframe(upper)


# -- depacketize --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payloads", "message"),
    [
        ([], "no payloads"),
        ([descriptor(b=False) + INTER], "first packet"),
        ([descriptor(e=False) + INTER, descriptor(e=True) + INTER], "before the previous one ended"),
        ([descriptor() + INTER, descriptor(b=False) + b"\x00"], "without B"),
        ([descriptor(e=False) + INTER], "no E packet"),
        ([descriptor(e=False, pid=1) + INTER, descriptor(b=False, pid=2) + b"\x00"], "PictureID"),
        ([descriptor() + b"\x00\x01"], "frame_marker"),
        ([descriptor(sid=i % 8) + INTER for i in range(9)], "max 8"),
    ],
)
def test_depacketize_rejects_bad_pictures(payloads: list[bytes], message: str) -> None:
    with pytest.raises(DepacketizeError, match=message):
        Vp9Depacketizer().depacketize(payloads)


def test_depacketize_passes_one_layer_frame_through_even_a_superframe() -> None:
    inner = build_superframe([INTER + b"\x01", INTER + b"\x02"])  # an encoder's alt-ref pair
    payloads = [descriptor(e=False) + inner[:3], descriptor(b=False) + inner[3:]]
    assert Vp9Depacketizer().depacketize(payloads) == inner


def test_superframe_index_round_trip_and_invalid_indexes() -> None:
    frames = [INTER + b"\x01" * 5, INTER + b"\x02" * 300]
    joined = build_superframe(frames)
    assert split_superframe(joined) == frames
    assert split_superframe(INTER) == [INTER]
    assert split_superframe(b"") == [b""]
    assert split_superframe(joined[:-1] + b"\xc1") == [joined[:-1] + b"\xc1"]  # markers differ
    assert split_superframe(b"\x00" * 3 + bytes((0xC0, 5, 0xC0))) == [b"\x00" * 3 + bytes((0xC0, 5, 0xC0))]


def test_spatial_layers_become_a_superframe_that_ffmpeg_decodes_whole() -> None:
    """Two layer frames in one picture: FFmpeg's vp9 decoder must see both.

    Stand-ins for layer frames: two consecutive frames of a real stream (the
    second references the first), sent as SID 0 and SID 1 of one picture.
    Joined plainly, FFmpeg would decode the first and drop the second, and the
    third frame would then decode against a missing reference.
    """
    frames = [f.data for f in encode_video("libvpx-vp9", 30, 10)[:3]]
    packetizer_payloads = [
        descriptor(sid=0, e=False) + frames[0][:100],
        descriptor(sid=0, b=False) + frames[0][100:],
        descriptor(sid=1, p=True) + frames[1],
    ]
    dep = Vp9Depacketizer()
    picture = dep.depacketize(packetizer_payloads)
    assert split_superframe(picture) == frames[:2]
    second = dep.depacketize([descriptor(p=True, pid=8) + frames[2]])

    def decode(packets: list[bytes]) -> list[np.ndarray]:
        cc = av.CodecContext.create("vp9", "r")
        return [f.to_ndarray(format="gray") for p in packets for f in cc.decode(av.Packet(p))]

    expected = decode(frames)
    got = decode([picture, second])
    assert len(got) == 3
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))


# -- packetizer ----------------------------------------------------------------------------


def test_packetizer_descriptor_layout() -> None:
    packetizer = Vp9Packetizer(payload_type=98, ssrc=7, mtu=100, initial_sequence=0, initial_picture_id=0x7FFF)
    key = key_header(640, 360) + bytes(range(200))
    packets = packetizer.packetize(key, 3000)
    assert all(len(p.payload) <= 100 - 12 for p in packets)
    assert [p.marker for p in packets] == [False] * (len(packets) - 1) + [True]
    assert {p.timestamp for p in packets} == {3000}
    first = parse_vp9_descriptor_untrusted(packets[0].payload)
    assert (first.begin, first.end, first.inter_picture, first.flexible) == (True, False, False, False)
    assert first.picture_id == 0x7FFF and first.ss is not None
    assert first.ss.resolutions == ((640, 360),)
    rest = [parse_vp9_descriptor_untrusted(p.payload) for p in packets[1:]]
    assert all(d.ss is None and not d.begin and d.picture_id == 0x7FFF for d in rest)
    assert [d.end for d in rest] == [False] * (len(rest) - 1) + [True]
    (inter,) = packetizer.packetize(INTER + b"\x00" * 10, 6000)
    d = parse_vp9_descriptor_untrusted(inter.payload)
    assert (d.picture_id, d.inter_picture, d.begin, d.end, d.ss) == (0, True, True, True, None)
    assert inter.sequence_number == packets[-1].sequence_number + 1


def test_packetizer_refuses_what_is_not_vp9() -> None:
    packetizer = Vp9Packetizer(payload_type=98, ssrc=7)
    with pytest.raises(ValueError, match="empty"):
        packetizer.packetize(b"", 0)
    with pytest.raises(ValueError, match="not a VP9 frame"):
        packetizer.packetize(b"\x00\x01\x02", 0)
    with pytest.raises(ValueError, match="mtu"):
        Vp9Packetizer(payload_type=98, ssrc=7, mtu=20)


@given(
    body=st.binary(min_size=1, max_size=4000),
    key=st.booleans(),
    mtu=st.integers(min_value=21, max_value=1500),
    picture_id=st.integers(min_value=0, max_value=0x7FFF),
)
def test_round_trip(body: bytes, key: bool, mtu: int, picture_id: int) -> None:
    frame = (key_header() if key else INTER) + body
    packetizer = Vp9Packetizer(payload_type=98, ssrc=1, mtu=mtu, initial_sequence=0, initial_picture_id=picture_id)
    packets = packetizer.packetize(frame, 0)
    dep = Vp9Depacketizer()
    assert dep.is_frame_start(packets[0].payload)
    assert dep.is_keyframe(packets[0].payload) == key
    assert not any(dep.is_frame_start(p.payload) or dep.is_keyframe(p.payload) for p in packets[1:])
    assert dep.depacketize([p.payload for p in packets]) == frame


def test_real_encoder_round_trip_decodes_every_frame() -> None:
    frames = encode_video("libvpx-vp9", 30, 10)
    packetizer = Vp9Packetizer(payload_type=98, ssrc=1, mtu=400, initial_sequence=65530)
    dep = Vp9Depacketizer()
    out: list[bytes] = []
    sent = 0
    for f in frames:
        packets = packetizer.packetize(f.data, f.index * TICKS)
        sent += len(packets)
        assert dep.is_keyframe(packets[0].payload) == f.keyframe
        out.append(dep.depacketize([p.payload for p in packets]))
    assert sent > 2 * len(frames)  # B/E across packets, and the sequence wraps
    assert out == [f.data for f in frames]
    assert frames[0].keyframe and not frames[1].keyframe and frames[10].keyframe
    assert decode_all("vp9", out) == len(frames)
    decoder = VideoDecoder("vp9")
    pictures = [p for data in out for p in decoder.decode(data)]
    assert len(pictures) == len(frames)
    assert (pictures[0].width, pictures[0].height) == (320, 240)


# -- through the frame assembler: loss of a frame's first or last packet ---------------------


def _assemble(drop: set[tuple[int, str]]) -> list[int]:
    """Packetize the real stream, drop some packets, return the emitted frame indices.

    Args:
        drop: (frame index, "first" | "last") packets to lose.
    """
    frames = encode_video("libvpx-vp9", 30, 10)
    packetizer = Vp9Packetizer(payload_type=98, ssrc=1, mtu=400, initial_sequence=100)
    packets: list[RtpPacket] = []
    for f in frames:
        these = packetizer.packetize(f.data, f.index * TICKS)
        if (f.index, "first") in drop:
            these = these[1:]
        if (f.index, "last") in drop:
            these = these[:-1]
        packets.extend(these)
    assembler = FrameAssembler(Vp9Depacketizer(), max_wait_s=0.15)
    emitted = []
    for i, packet in enumerate(packets):
        emitted += assembler.push(packet, i * 0.001)
    emitted += assembler.poll(10.0)
    assert assembler.stats.depacketize_errors == 0
    assert decode_all("vp9", [f.data for f in emitted]) == len(emitted)
    return [f.timestamp // TICKS for f in emitted]


def test_assembler_without_loss_emits_every_frame() -> None:
    assert _assemble(set()) == list(range(30))


def test_losing_an_inter_frames_first_packet_waits_for_the_next_keyframe() -> None:
    # Frame 3's other packets are orphans (B=0): dropped, then 4..9 are gated.
    assert _assemble({(3, "first")}) == [0, 1, 2, *range(10, 30)]


def test_losing_a_keyframes_first_packet_waits_for_the_one_after() -> None:
    assert _assemble({(10, "first")}) == [*range(10), *range(20, 30)]


def test_after_losing_a_frames_last_packet_the_b_bit_finds_the_next_start() -> None:
    # The packet before keyframe 10 is lost, so only its payload (B=1) can say
    # that it begins a picture; without that, keyframe 10 would be an orphan.
    assert _assemble({(9, "last")}) == [*range(9), *range(10, 30)]


# -- fuzzing: untrusted payloads raise only DepacketizeError -------------------------------


@settings(max_examples=400)
@given(payloads=st.lists(st.binary(max_size=64), max_size=6))
def test_fuzz_raises_only_depacketize_error(payloads: list[bytes]) -> None:
    dep = Vp9Depacketizer()
    for payload in payloads:
        assert isinstance(dep.is_frame_start(payload), bool)
        assert isinstance(dep.is_keyframe(payload), bool)
    try:
        data = dep.depacketize(payloads)
    except DepacketizeError:
        return
    assert isinstance(data, bytes) and data


@settings(max_examples=400)
@given(
    flags=st.lists(st.integers(min_value=0, max_value=255), min_size=1, max_size=9),
    rest=st.lists(st.binary(max_size=24), min_size=9, max_size=9),
)
def test_fuzz_structured_descriptors(flags: list[int], rest: list[bytes]) -> None:
    """Random bytes mostly die on the first check; start from every flag combination."""
    payloads = [bytes((flag,)) + tail for flag, tail in zip(flags, rest)]
    dep = Vp9Depacketizer()
    for payload in payloads:
        dep.is_frame_start(payload)
        dep.is_keyframe(payload)
        with contextlib.suppress(DepacketizeError):
            parse_vp9_frame_header_untrusted(payload)
        split_superframe(payload)
    with contextlib.suppress(DepacketizeError):
        dep.depacketize(payloads)


@settings(max_examples=200)
@given(data=st.binary(max_size=40), marker=st.integers(min_value=0xC0, max_value=0xDF))
def test_fuzz_superframe_split_never_raises(data: bytes, marker: int) -> None:
    candidate = data + bytes((marker,))
    frames = split_superframe(candidate)
    assert b"".join(frames) == candidate or sum(map(len, frames)) < len(candidate)

