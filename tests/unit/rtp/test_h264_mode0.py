"""H.264 packetization-mode 0 (RFC 6184 §6.2): single NAL unit packets only."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from edge_recorder.rtp.depacketize import H264Depacketizer, depacketizer_for
from edge_recorder.rtp.depacketize.h264 import START_CODE
from edge_recorder.rtp.packetize import H264Packetizer, split_annex_b
from edge_recorder.rtp.parameters import recorder_rtp_capabilities
from tests.fakes import VIDEO_FPS, decode_all

MTU = 1200


def _encode_sliced(count: int = 30, max_slice: int = 1000) -> list[tuple[bytes, bool]]:
    """x264 with slices capped under the mtu, as a mode-0 sender must configure it."""
    cc = av.CodecContext.create("libx264", "w")
    cc.width, cc.height, cc.pix_fmt = 640, 360, "yuv420p"
    cc.time_base = fractions.Fraction(1, VIDEO_FPS)
    cc.gop_size = 10
    cc.options = {"tune": "zerolatency", "preset": "ultrafast", "x264-params": f"slice-max-size={max_slice}"}
    yy, xx = np.mgrid[0:360, 0:640]
    out: list[tuple[bytes, bool]] = []
    for i in range(count):
        # Moving gradients and a checkerboard: unsliced, a keyframe would be
        # several times the mtu.
        img = np.empty((360, 640, 3), np.uint8)
        img[..., 0] = (xx + 4 * i) % 256
        img[..., 1] = (yy + 2 * i) % 256
        img[..., 2] = ((xx // 16 + yy // 16) % 2) * 200
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        out += [(bytes(p), bool(p.is_keyframe)) for p in cc.encode(frame)]
    out += [(bytes(p), bool(p.is_keyframe)) for p in cc.encode(None)]
    return out


def test_mode0_packetizer_sends_each_nal_unit_alone_and_round_trips() -> None:
    frames = _encode_sliced()
    packetizer = H264Packetizer(payload_type=102, ssrc=1, mtu=MTU, initial_sequence=65530, packetization_mode=0)
    dep = depacketizer_for("video/H264", {"packetization-mode": 0})
    assert isinstance(dep, H264Depacketizer) and dep.packetization_mode == 0
    out: list[bytes] = []
    for index, (data, keyframe) in enumerate(frames):
        packets = packetizer.packetize(data, index * 3000)
        nals = split_annex_b(data)
        assert [p.payload for p in packets] == nals  # one packet per NAL unit, as is
        assert all(1 <= p.payload[0] & 0x1F <= 23 for p in packets)  # no STAP-A, no FU-A
        assert all(len(p.payload) <= MTU - 12 for p in packets)
        assert [p.marker for p in packets] == [False] * (len(packets) - 1) + [True]
        assert dep.is_keyframe(packets[0].payload) == keyframe  # x264 puts the SPS first
        out.append(dep.depacketize([p.payload for p in packets]))
        assert split_annex_b(out[-1]) == nals
    # The keyframes really needed slicing: their slices add up to several mtus.
    idr_bytes = sum(len(n) for n in split_annex_b(frames[0][0]) if n[0] & 0x1F == 5)
    assert frames[0][1] and idr_bytes > 3 * MTU
    assert decode_all("h264", out) == len(frames)


def test_mode0_packetizer_refuses_a_nal_unit_over_the_mtu() -> None:
    packetizer = H264Packetizer(payload_type=102, ssrc=1, mtu=200, packetization_mode=0)
    big = START_CODE + bytes((0x65, 0x88)) + b"\x5a" * 300
    with pytest.raises(ValueError, match="packetization-mode 0"):
        packetizer.packetize(big, 0)
    # Mode 1 fragments the same access unit into FU-A instead.
    fu = H264Packetizer(payload_type=102, ssrc=1, mtu=200).packetize(big, 0)
    assert len(fu) > 1 and all(p.payload[0] & 0x1F == 28 for p in fu)


@pytest.mark.parametrize("mode", [2, -1])
def test_packetizer_refuses_other_modes(mode: int) -> None:
    with pytest.raises(ValueError, match="packetization_mode"):
        H264Packetizer(payload_type=102, ssrc=1, packetization_mode=mode)


def test_mode0_depacketizer_still_accepts_stap_a_and_fu_a() -> None:
    """RFC 6184 §6.2 binds the sender; we stay lenient (see H264Depacketizer)."""
    sps = bytes((0x67, 0x42, 0xC0, 0x1F)) + b"\x11" * 10
    idr = bytes((0x65, 0x88)) + b"\x5a" * 3000
    au = START_CODE + sps + START_CODE + idr
    mode1 = [p.payload for p in H264Packetizer(payload_type=102, ssrc=1, mtu=1000).packetize(au, 0)]
    assert {p[0] & 0x1F for p in mode1} == {7, 28}
    assert depacketizer_for("video/H264").depacketize(mode1) == au  # absent = mode 0


def test_capabilities_offer_mode0_next_to_mode1() -> None:
    h264 = [c for c in recorder_rtp_capabilities()["codecs"] if c["mimeType"] == "video/H264"]
    modes = {(c["parameters"]["profile-level-id"], c["parameters"]["packetization-mode"]) for c in h264}
    assert modes == {("42e01f", 0), ("42e01f", 1), ("4d001f", 0), ("4d001f", 1)}
    for codec in h264:
        assert codec["clockRate"] == 90000
        assert {"type": "nack", "parameter": "pli"} in codec["rtcpFeedback"]
