"""Frame assembler: ordering, completeness, gaps, keyframe gating, memory bound.

Virtual time throughout: arrival times are numbers, and :func:`drive` plays the
I/O loop, calling ``poll`` at each ``next_deadline`` before the next arrival.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_recorder.rtp.assembler import AssembledFrame, FrameAssembler
from edge_recorder.rtp.depacketize import depacketizer_for
from edge_recorder.rtp.packet import RtpPacket
from edge_recorder.rtp.packetize import (
    H264Packetizer,
    OpusPacketizer,
    Vp8Packetizer,
    split_annex_b,
)
from tests.fakes import EncodedFrame, decode_all, encode_opus, encode_video
from tests.fakes.lossy import LossyNetwork

FRAME_INTERVAL_S = 1 / 30
VIDEO_TICKS = 3000  # 90 kHz / 30 fps


def drive(
    assembler: FrameAssembler,
    arrivals: Iterable[tuple[float, RtpPacket]],
    *,
    max_packets: int | None = None,
    flush: bool = True,
) -> list[AssembledFrame]:
    """Play the I/O loop: poll at each deadline, push each packet at its arrival."""
    out: list[AssembledFrame] = []
    last = 0.0
    for arrival, packet in arrivals:
        while (deadline := assembler.next_deadline()) is not None and deadline <= arrival:
            out += assembler.poll(deadline)
        out += assembler.push(packet, arrival)
        last = arrival
        if max_packets is not None:
            assert assembler.buffered_packets <= max_packets
    if flush:
        out += assembler.poll(last + 10.0)
    return out


def in_order(
    packets: Sequence[RtpPacket], start: float = 0.0, step: float = 0.001
) -> list[tuple[float, RtpPacket]]:
    return [(start + i * step, p) for i, p in enumerate(packets)]


# -- synthetic VP8 frames (valid frame tags, RFC 6386 §9.1) ------------------------


def vp8_frame(index: int, *, key: bool, size: int = 100) -> bytes:
    body = bytes((index % 256,)) * size
    tag = (0 if key else 1) | (1 << 4) | (len(body) << 5)
    header = tag.to_bytes(3, "little")
    if key:
        header += b"\x9d\x01\x2a\x40\x01\xf0\x00"
    return header + body


def vp8_stream(
    keys: Sequence[bool], *, initial_sequence: int = 0, mtu: int = 60, initial_timestamp: int = 0
) -> list[list[RtpPacket]]:
    """Packets per frame; with mtu 60 a 100-byte frame takes 3 packets."""
    packetizer = Vp8Packetizer(payload_type=96, ssrc=1, mtu=mtu, initial_sequence=initial_sequence)
    return [
        packetizer.packetize(vp8_frame(i, key=k), initial_timestamp + i * VIDEO_TICKS)
        for i, k in enumerate(keys)
    ]


def vp8_assembler(*, max_wait_s: float = 0.15, max_packets: int = 2048) -> FrameAssembler:
    return FrameAssembler(
        depacketizer_for("video/VP8"), max_wait_s=max_wait_s, max_packets=max_packets
    )


def frame_indexes(
    frames: Sequence[AssembledFrame], initial_timestamp: int = 0, ticks: int = VIDEO_TICKS
) -> list[int]:
    return [((f.timestamp - initial_timestamp) % (1 << 32)) // ticks for f in frames]


# -- basics ---------------------------------------------------------------------------


def test_in_order_frames_are_emitted_on_their_marker() -> None:
    stream = vp8_stream([True, False, False])
    asm = vp8_assembler()
    assert asm.waiting_for_keyframe
    emitted: list[list[AssembledFrame]] = []
    # The stream's first packet waits max_wait_s once for reordered predecessors.
    for packet in stream[0]:
        assert asm.push(packet, 0.0) == []
    assert asm.next_deadline() == pytest.approx(0.15)
    assert asm.poll(0.149) == []
    emitted.append(asm.poll(0.15))
    t = 0.2
    for frame_packets in stream[1:]:
        for packet in frame_packets:
            emitted.append(asm.push(packet, t))
            t += 0.001
    # Then each frame comes out with its marker packet, not one frame later.
    sizes = [len(e) for e in emitted]
    assert sizes == [1, 0, 0, 1, 0, 0, 1]
    frames = [f for e in emitted for f in e]
    assert [f.keyframe for f in frames] == [True, False, False]
    assert [f.data for f in frames] == [vp8_frame(i, key=i == 0) for i in range(3)]
    assert [(f.first_seq, f.last_seq) for f in frames] == [(0, 2), (3, 5), (6, 8)]
    assert frames[1].arrival == pytest.approx(0.202)
    assert not asm.waiting_for_keyframe
    assert asm.next_deadline() is None
    assert asm.stats.frames == 3 and asm.stats.keyframes == 1
    assert asm.take_keyframe_request()  # the initial gate asks once...
    assert not asm.take_keyframe_request()  # ...and only once


def test_sequence_wraparound_with_reorder_and_duplicates() -> None:
    stream = vp8_stream(
        [True] + [False] * 9, initial_sequence=65530, initial_timestamp=(1 << 32) - 4 * VIDEO_TICKS
    )
    packets = [p for frame in stream for p in frame]
    # Swap neighbours and send every third packet twice.
    shuffled: list[RtpPacket] = []
    for i in range(0, len(packets) - 1, 2):
        shuffled += [packets[i + 1], packets[i]]
    shuffled += packets[len(shuffled) :]
    shuffled += packets[::3]
    asm = vp8_assembler()
    frames = drive(asm, in_order(shuffled))
    assert frame_indexes(frames, (1 << 32) - 4 * VIDEO_TICKS) == list(range(10))
    assert all(b.timestamp > a.timestamp for a, b in pairwise(frames))
    assert all(b.first_seq == a.last_seq + 1 for a, b in pairwise(frames))
    assert frames[-1].last_seq == 65530 + len(packets) - 1  # extended past 65535
    assert asm.stats.duplicates == len(packets[::3])
    assert asm.stats.late == 0


def test_starts_gated_until_a_keyframe() -> None:
    stream = vp8_stream([False, False, True, False])
    asm = vp8_assembler()
    frames = drive(asm, in_order([p for f in stream for p in f]))
    assert frame_indexes(frames) == [2, 3]
    assert asm.stats.frames_dropped_awaiting_keyframe == 2


def test_reordered_first_packet_at_startup_is_not_lost() -> None:
    stream = vp8_stream([True, False])
    packets = [p for f in stream for p in f]
    asm = vp8_assembler()
    frames = drive(asm, in_order([packets[1], packets[2], packets[0]] + packets[3:]))
    assert frame_indexes(frames) == [0, 1]


def test_gap_waits_then_gives_up_and_gates() -> None:
    stream = vp8_stream([True, False, False, False, True, False])
    packets = [p for f in stream for p in f]
    lost = packets[4]  # middle of frame 1
    asm = vp8_assembler(max_wait_s=0.1)
    assert asm.take_keyframe_request()
    out = asm.push(packets[0], 0.0) + asm.push(packets[1], 0.0) + asm.push(packets[2], 0.0)
    out += asm.poll(0.1)  # the start-up wait (max_wait_s once)
    assert frame_indexes(out) == [0]
    asm.push(packets[3], 1.01)
    assert asm.push(packets[5], 1.02) == []  # reveals the gap at seq 4
    assert asm.missing_sequence_numbers() == [lost.sequence_number]
    assert asm.next_deadline() == pytest.approx(1.12)
    for t, p in enumerate(packets[6:12]):
        assert asm.push(p, 1.03 + t * 0.001) == []  # frames 2, 3 wait behind the gap
    assert asm.poll(1.11) == []
    assert not asm.take_keyframe_request()
    deadline = asm.next_deadline()
    assert deadline is not None
    out = asm.poll(deadline)
    assert out == []  # frames 2 and 3 are P frames: dropped while gated
    assert asm.waiting_for_keyframe
    assert asm.take_keyframe_request() and not asm.take_keyframe_request()
    assert asm.stats.frames_incomplete_dropped == 1
    assert asm.stats.frames_dropped_awaiting_keyframe == 2
    assert asm.missing_sequence_numbers() == []
    assert asm.next_deadline() is None
    assert asm.push(lost, 1.2) == []  # the retransmission comes too late
    assert asm.stats.late == 1
    out = drive(asm, [(1.3, p) for p in packets[12:]])
    assert frame_indexes(out) == [4, 5]
    assert not asm.waiting_for_keyframe
    assert asm.stats.keyframe_requests == 2


def test_retransmission_within_the_wait_fills_the_gap() -> None:
    stream = vp8_stream([True, False, False])
    packets = [p for f in stream for p in f]
    asm = vp8_assembler(max_wait_s=0.1)
    arrivals = [(i * 0.001, p) for i, p in enumerate(packets) if i != 4] + [(0.09, packets[4])]
    frames = drive(asm, arrivals)
    assert frame_indexes(frames) == [0, 1, 2]
    assert asm.stats.frames_incomplete_dropped == 0 and asm.stats.late == 0


def test_lost_marker_packet_gives_up_on_that_frame_only_after_the_wait() -> None:
    stream = vp8_stream([True, False, True])
    packets = [p for f in stream for p in f]
    asm = vp8_assembler(max_wait_s=0.1)
    frames = drive(asm, [(i * 0.001, p) for i, p in enumerate(packets) if i != 5])
    assert frame_indexes(frames) == [0, 2]
    assert asm.stats.frames_incomplete_dropped == 1


def test_request_keyframe_drops_until_the_next_keyframe() -> None:
    stream = vp8_stream([True, False, False, True])
    packets = [p for f in stream for p in f]
    asm = vp8_assembler()
    asm.take_keyframe_request()
    frames = drive(asm, in_order(packets[:3]))
    asm.request_keyframe()
    asm.request_keyframe()  # already waiting: one request only
    assert asm.waiting_for_keyframe
    assert asm.take_keyframe_request() and not asm.take_keyframe_request()
    frames += drive(asm, in_order(packets[3:], start=1.0))
    assert frame_indexes(frames) == [0, 3]
    assert asm.stats.keyframe_requests == 2


def test_depacketize_error_drops_the_frame_and_gates() -> None:
    stream = vp8_stream([True, False, True])
    packets = [p for f in stream for p in f]
    broken = RtpPacket(
        96, packets[4].sequence_number, packets[4].timestamp, 1, payload=b"\x80\x80\x80"
    )
    asm = vp8_assembler()
    frames = drive(asm, in_order(packets[:4] + [broken] + packets[5:]))
    assert frame_indexes(frames) == [0, 2]
    assert asm.stats.depacketize_errors == 1


def test_huge_forward_jump_resyncs_on_a_keyframe() -> None:
    first = vp8_stream([True, False])
    later = vp8_stream([False, True], initial_sequence=20000)
    asm = vp8_assembler(max_packets=64)
    frames = drive(asm, in_order([p for f in first + later for p in f], step=0.1), max_packets=64)
    assert [f.keyframe for f in frames] == [True, False, True]
    assert asm.stats.frames_dropped_awaiting_keyframe == 1


def test_sender_restart_backwards_is_accepted_after_two_packets() -> None:
    first = vp8_stream([True, False], initial_sequence=40000)
    restarted = vp8_stream([True, False], initial_sequence=30000)  # 10000 back
    asm = vp8_assembler()
    frames = drive(asm, in_order([p for f in first + restarted for p in f], step=0.1))
    assert [f.keyframe for f in frames] == [True, False, True, False]
    assert asm.stats.late == 0  # the packet that announced the restart is replayed


def test_memory_bound_drops_oldest_and_gates() -> None:
    stream = vp8_stream([True] + [False] * 20 + [True, False])
    packets = [p for f in stream for p in f]
    asm = vp8_assembler(max_packets=16, max_wait_s=10.0)
    # Packet 4 never comes and the wait is long: the window must slide instead.
    frames = drive(asm, in_order([p for i, p in enumerate(packets) if i != 4]), max_packets=16)
    assert frame_indexes(frames) == [0, 21, 22]
    assert asm.stats.keyframe_requests == 2


def test_missing_sequence_numbers_are_16_bit() -> None:
    packets = [p for f in vp8_stream([True, False], initial_sequence=65534) for p in f]
    asm = vp8_assembler()
    asm.push(packets[0], 0.0)
    asm.push(packets[4], 0.0)
    assert asm.missing_sequence_numbers() == [65535, 0, 1]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        vp8_assembler(max_wait_s=-1.0)
    with pytest.raises(ValueError):
        vp8_assembler(max_packets=1)


# -- H.264 frame starts -------------------------------------------------------------


def h264_two_slice_frames(
    keys: Sequence[bool], *, initial_sequence: int = 0
) -> list[list[RtpPacket]]:
    """Each frame: two single-NAL slices (the second has first_mb_in_slice != 0)."""
    packetizer = H264Packetizer(
        payload_type=102, ssrc=1, mtu=100, initial_sequence=initial_sequence
    )
    out = []
    for i, key in enumerate(keys):
        nal_type = 5 if key else 1
        first = bytes((0x60 | nal_type, 0x88)) + bytes((i,)) * 60
        second = bytes((0x60 | nal_type, 0x08)) + bytes((i,)) * 60
        prefix = [b"\x67\x42\xc0\x1f\x11", b"\x68\xce\x3c\x80"] if key else []
        au = b"".join(b"\x00\x00\x00\x01" + n for n in prefix + [first, second])
        out.append(packetizer.packetize(au, i * VIDEO_TICKS))
    return out


def test_h264_multi_slice_frames_and_loss_of_a_first_slice() -> None:
    stream = h264_two_slice_frames([True, False, False, True, False])
    packets = [p for f in stream for p in f]
    asm = FrameAssembler(depacketizer_for("video/H264", {"packetization-mode": 1}), max_wait_s=0.1)
    all_frames = drive(asm, in_order(packets))
    assert frame_indexes(all_frames) == [0, 1, 2, 3, 4]
    assert [len(split_annex_b(f.data)) for f in all_frames] == [4, 2, 2, 4, 2]
    # Lose the first slice of frame 1: its second slice is an orphan (first_mb != 0).
    first_slice_of_1 = len(stream[0])
    asm = FrameAssembler(depacketizer_for("video/H264"), max_wait_s=0.1)
    frames = drive(asm, [(i * 0.001, p) for i, p in enumerate(packets) if i != first_slice_of_1])
    assert frame_indexes(frames) == [0, 3, 4]
    assert asm.stats.frames_incomplete_dropped == 1
    assert asm.stats.frames_dropped_awaiting_keyframe == 1  # frame 2 (P) after the loss


def test_h264_frame_without_marker_ends_at_timestamp_change() -> None:
    stream = h264_two_slice_frames([True, False, False])
    packets = [p for f in stream for p in f]
    unmarked = [
        RtpPacket(
            p.payload_type, p.sequence_number, p.timestamp, p.ssrc, payload=p.payload, marker=False
        )
        for p in packets
    ]
    asm = FrameAssembler(depacketizer_for("video/H264"))
    emitted = [asm.push(p, i * 0.2) for i, p in enumerate(unmarked)]  # past the start-up wait
    # Frame n comes out when frame n+1's first packet shows a new timestamp.
    firsts = {sum(len(f) for f in stream[:n]) for n in range(1, len(stream))}
    assert [len(e) for e in emitted] == [int(i in firsts) for i in range(len(packets))]
    assert frame_indexes([f for e in emitted for f in e]) == [0, 1]


# -- Opus ------------------------------------------------------------------------


def test_opus_every_packet_is_a_frame_and_loss_is_skipped() -> None:
    frames = encode_opus(50)
    packetizer = OpusPacketizer(payload_type=111, ssrc=2, initial_sequence=65500)
    packets = [packetizer.packetize(f.data, f.index * 960)[0] for f in frames[:10]]
    asm = FrameAssembler(depacketizer_for("audio/opus"), max_wait_s=0.06)
    assert not asm.waiting_for_keyframe and not asm.take_keyframe_request()
    assert asm.push(packets[0], 0.0) == []  # the first packet waits for reordered ones
    assert asm.next_deadline() == pytest.approx(0.06)
    out = asm.poll(0.07)
    assert len(out) == 1 and out[0].keyframe
    assert asm.push(packets[1], 0.08)[0].timestamp == 960  # then no delay
    arrivals = [(i * 0.02, p) for i, p in enumerate(packets) if i not in (0, 1, 3)]
    out = drive(asm, arrivals, flush=False)
    assert frame_indexes(out, 0, 960) == [2, 4, 5, 6, 7, 8, 9]
    assert not asm.waiting_for_keyframe and not asm.take_keyframe_request()
    assert asm.stats.keyframe_requests == 0
    asm.request_keyframe()
    assert not asm.waiting_for_keyframe


# -- a seeded lossy network carrying real encoder output ------------------------------


AUD = b"\x09\xf0"  # access unit delimiter, primary_pic_type 7 (H.264 §7.3.2.4)


class GstLikeH264Packetizer:
    """Packetize like GStreamer's rtph264pay: an AUD alone first, one NAL per packet.

    NAL units too big for the mtu go in FU-A (RFC 6184 §5.8); nothing is aggregated.
    """

    def __init__(self, *, initial_sequence: int, mtu: int = 500) -> None:
        self._seq = initial_sequence
        self._limit = mtu - 12

    def packetize(self, frame: bytes, timestamp: int, *, keyframe: bool = False) -> list[RtpPacket]:
        payloads: list[bytes] = []
        for nal in split_annex_b(frame):
            if len(nal) <= self._limit:
                payloads.append(nal)
                continue
            body = nal[1:]
            chunks = [body[i : i + self._limit - 2] for i in range(0, len(body), self._limit - 2)]
            for k, chunk in enumerate(chunks):
                s_e = (0x80 if k == 0 else 0) | (0x40 if k == len(chunks) - 1 else 0)
                payloads.append(bytes(((nal[0] & 0xE0) | 28, s_e | (nal[0] & 0x1F))) + chunk)
        packets = []
        for k, payload in enumerate(payloads):
            packets.append(
                RtpPacket(
                    102,
                    self._seq,
                    timestamp & 0xFFFFFFFF,
                    3,
                    payload=payload,
                    marker=k == len(payloads) - 1,
                )
            )
            self._seq = (self._seq + 1) & 0xFFFF
        return packets


def source_frames(codec: str) -> tuple[EncodedFrame, ...]:
    """Real encoder output per test codec; "h264-gst" is x264 output with AUDs."""
    if codec == "opus":
        return encode_opus(50)
    if codec == "vp8":
        return encode_video("libvpx", 60, 15)
    frames = encode_video("libx264", 60, 15)
    if codec == "h264-gst":
        frames = tuple(
            EncodedFrame(b"\x00\x00\x00\x01" + AUD + f.data, f.keyframe, f.index) for f in frames
        )
    return frames


def packetize_stream(
    codec: str, frames: Sequence[EncodedFrame], *, initial_sequence: int, initial_timestamp: int
) -> list[tuple[float, RtpPacket]]:
    """(send time, packet) for every packet; each frame's packets leave 1 ms apart."""
    packetizer: Vp8Packetizer | H264Packetizer | OpusPacketizer | GstLikeH264Packetizer
    if codec == "h264-gst":
        packetizer = GstLikeH264Packetizer(initial_sequence=initial_sequence)
    elif codec == "vp8":
        packetizer = Vp8Packetizer(
            payload_type=96, ssrc=3, mtu=500, initial_sequence=initial_sequence
        )
    elif codec == "h264":
        packetizer = H264Packetizer(
            payload_type=102, ssrc=3, mtu=500, initial_sequence=initial_sequence
        )
    else:
        packetizer = OpusPacketizer(payload_type=111, ssrc=3, initial_sequence=initial_sequence)
    interval, ticks = (0.02, 960) if codec == "opus" else (FRAME_INTERVAL_S, VIDEO_TICKS)
    sent: list[tuple[float, RtpPacket]] = []
    for f in frames:
        packets = packetizer.packetize(
            f.data, initial_timestamp + f.index * ticks, keyframe=f.keyframe
        )
        sent += [(f.index * interval + k * 0.001, p) for k, p in enumerate(packets)]
    return sent


def check_invariants(
    codec: str,
    frames: Sequence[EncodedFrame],
    emitted: Sequence[AssembledFrame],
    initial_timestamp: int,
) -> list[int]:
    """The properties every run must have, whatever the network did."""
    decoder = codec.split("-")[0]
    ticks = 960 if codec == "opus" else VIDEO_TICKS
    indexes = frame_indexes(emitted, initial_timestamp, ticks)
    # Decode order: strictly increasing timestamps and sequence numbers.
    assert all(b.timestamp > a.timestamp for a, b in pairwise(emitted))
    assert all(b.first_seq > a.last_seq for a, b in pairwise(emitted))
    seen_aud = False
    for frame, index in zip(emitted, indexes, strict=True):
        original = frames[index]
        # Complete: exactly what the encoder produced (H.264 start codes normalised).
        if decoder == "h264":
            nals, expected = split_annex_b(frame.data), split_annex_b(original.data)
            if expected[0] == AUD and nals[0] != AUD and not seen_aud:
                # Until the stream has shown an AUD, an SPS is taken as a frame start,
                # so an AUD delayed past the wait can be missing (harmless to decoders).
                expected = expected[1:]
            seen_aud = seen_aud or nals[0] == AUD
            assert nals == expected
        else:
            assert frame.data == original.data
        assert frame.keyframe == original.keyframe
    if codec != "opus":
        # Never past a hole without a keyframe: nothing emitted while gated.
        assert not emitted or emitted[0].keyframe
        for (_, previous), (frame, index) in pairwise(zip(emitted, indexes, strict=True)):
            assert frame.keyframe or index == previous + 1
    # And the decoder agrees.
    assert decode_all(decoder, [f.data for f in emitted]) == len(emitted)
    return indexes


MIME = {"vp8": "video/VP8", "h264": "video/H264", "h264-gst": "video/H264", "opus": "audio/opus"}


@pytest.mark.parametrize("codec", ["vp8", "h264", "h264-gst", "opus"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    duplicate=st.floats(min_value=0.0, max_value=0.2),
    reorder=st.floats(min_value=0.0, max_value=0.3),
    initial_sequence=st.integers(min_value=65400, max_value=65535),
)
def test_lossless_network_delivers_every_frame(
    codec: str, seed: int, duplicate: float, reorder: float, initial_sequence: int
) -> None:
    frames = source_frames(codec)
    initial_timestamp = (1 << 32) - 10 * 3000  # the RTP timestamp wraps too
    sent = packetize_stream(
        codec, frames, initial_sequence=initial_sequence, initial_timestamp=initial_timestamp
    )
    network: LossyNetwork[RtpPacket] = LossyNetwork(
        seed, duplicate=duplicate, reorder=reorder, jitter_s=0.01, reorder_delay_s=0.08
    )
    asm = FrameAssembler(depacketizer_for(MIME[codec]), max_wait_s=0.15)
    arrivals = network.transmit(sent)
    emitted = drive(asm, arrivals, max_packets=2048, flush=False)  # no final poll needed
    assert check_invariants(codec, frames, emitted, initial_timestamp) == list(range(len(frames)))
    assert asm.stats.duplicates == network.stats.duplicated
    assert asm.stats.late == 0 and asm.stats.frames_incomplete_dropped == 0
    assert asm.buffered_packets == 0 and asm.next_deadline() is None


@pytest.mark.parametrize("codec", ["vp8", "h264", "h264-gst", "opus"])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    loss=st.floats(min_value=0.0, max_value=0.15),
    duplicate=st.floats(min_value=0.0, max_value=0.1),
    reorder=st.floats(min_value=0.0, max_value=0.3),
    reorder_delay_s=st.floats(min_value=0.0, max_value=0.4),
    max_packets=st.sampled_from([8, 32, 2048]),
    initial_sequence=st.integers(min_value=0, max_value=65535),
)
def test_lossy_network_invariants(
    codec: str,
    seed: int,
    loss: float,
    duplicate: float,
    reorder: float,
    reorder_delay_s: float,
    max_packets: int,
    initial_sequence: int,
) -> None:
    frames = source_frames(codec)
    initial_timestamp = 12345
    sent = packetize_stream(
        codec, frames, initial_sequence=initial_sequence, initial_timestamp=initial_timestamp
    )
    network: LossyNetwork[RtpPacket] = LossyNetwork(
        seed,
        loss=loss,
        duplicate=duplicate,
        reorder=reorder,
        jitter_s=0.005,
        reorder_delay_s=reorder_delay_s,
    )
    asm = FrameAssembler(depacketizer_for(MIME[codec]), max_wait_s=0.1, max_packets=max_packets)
    emitted = drive(asm, network.transmit(sent), max_packets=max_packets)
    check_invariants(codec, frames, emitted, initial_timestamp)
    stats = asm.stats
    assert stats.frames == len(emitted)
    assert stats.keyframes == sum(f.keyframe for f in emitted)
    assert stats.packets == len(sent) - network.stats.dropped + network.stats.duplicated
    assert asm.missing_sequence_numbers() == [] and asm.next_deadline() is None
    if codec == "opus":
        assert stats.keyframe_requests == 0 and not asm.waiting_for_keyframe
    elif network.stats.dropped == 0 and reorder_delay_s + 0.005 < 0.1 and max_packets == 2048:
        assert len(emitted) == len(frames)


def test_lossy_network_counts_are_plausible_for_a_fixed_seed() -> None:
    frames = encode_video("libvpx", 60, 15)
    sent = packetize_stream("vp8", frames, initial_sequence=65000, initial_timestamp=0)
    network: LossyNetwork[RtpPacket] = LossyNetwork(
        7, loss=0.05, reorder=0.1, duplicate=0.05, jitter_s=0.005
    )
    asm = FrameAssembler(depacketizer_for("video/VP8"), max_wait_s=0.1)
    emitted = drive(asm, network.transmit(sent))
    indexes = check_invariants("vp8", frames, emitted, 0)
    assert network.stats.dropped > 0
    assert 0 < len(emitted) < len(frames)
    assert asm.stats.keyframe_requests >= 2
    assert asm.stats.frames_dropped_awaiting_keyframe + asm.stats.frames_incomplete_dropped > 0
    assert not math.isnan(emitted[-1].arrival) and indexes[0] == 0


def test_missing_since_is_a_read_only_view_of_gaps_and_when_seen() -> None:
    packets = [p for f in vp8_stream([True, False], initial_sequence=65534) for p in f]
    asm = vp8_assembler(max_wait_s=0.1)
    view = asm.missing_since()
    assert dict(view) == {}
    asm.push(packets[0], 1.0)
    asm.push(packets[4], 1.5)  # reveals 65535, 0, 1 (extended: 65535, 65536, 65537)
    assert dict(view) == {65535: 1.5, 65536: 1.5, 65537: 1.5}
    assert [seq & 0xFFFF for seq in sorted(view)] == asm.missing_sequence_numbers()
    with pytest.raises(TypeError):
        view[0] = 0.0  # type: ignore[index]
    asm.push(packets[2], 1.55)  # seq 0 arrives
    assert dict(view) == {65535: 1.5, 65537: 1.5}
    asm.poll(1.6)  # max_wait_s after the gap was seen: given up
    assert dict(asm.missing_since()) == {}


# -- byte bounds and huge gaps (issue #9) ------------------------------------------


def test_a_frame_over_max_frame_bytes_is_dropped_and_a_keyframe_requested() -> None:
    asm = FrameAssembler(depacketizer_for("video/VP8"), max_wait_s=0.0, max_frame_bytes=1000, max_buffer_bytes=10_000)
    big = Vp8Packetizer(payload_type=96, ssrc=1, mtu=400).packetize(vp8_frame(0, key=True, size=2000), 0)
    small = Vp8Packetizer(payload_type=96, ssrc=1, mtu=400, initial_sequence=big[-1].sequence_number + 1)
    frames = drive(asm, in_order(big + small.packetize(vp8_frame(1, key=True, size=100), VIDEO_TICKS)))
    assert [f.timestamp for f in frames] == [VIDEO_TICKS]
    assert asm.stats.frames_oversize == 1 and asm.stats.keyframe_requests == 2


def test_held_bytes_are_bounded_and_the_oldest_are_dropped() -> None:
    asm = FrameAssembler(depacketizer_for("video/VP8"), max_wait_s=10.0, max_frame_bytes=1000)
    packets = [p for f in vp8_stream([True] + [False] * 40, mtu=200) for p in f]
    for arrival, packet in in_order(packets[:1] + packets[2:]):  # the second never comes: nothing leaves
        asm.push(packet, arrival)
        assert asm.buffered_bytes <= 2000
    assert asm.stats.packets_dropped_bytes > 0 and asm.waiting_for_keyframe


def test_a_huge_forward_jump_is_loss_not_hundreds_of_gaps() -> None:
    asm = FrameAssembler(depacketizer_for("audio/opus"), max_wait_s=1.0, max_gap=300)
    asm.push(RtpPacket(111, 10, 0, 1, b"\x00"), 0.0)
    asm.push(RtpPacket(111, 10 + 200, 960, 1, b"\x00"), 0.1)  # a gap to repair
    assert len(asm.missing_since()) == 199
    asm.push(RtpPacket(111, 10 + 200 + 302, 1920, 1, b"\x00"), 0.2)  # past max_gap
    assert len(asm.missing_since()) == 0 and asm.stats.gap_jumps == 1
    assert asm.stats.lost >= 301
    video = vp8_assembler()
    video.push(vp8_stream([True])[0][0], 0.0)
    far = vp8_stream([False], initial_sequence=5000)[0][0]
    video.push(far, 0.1)
    assert not video.missing_since() and video.waiting_for_keyframe
