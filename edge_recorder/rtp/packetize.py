"""RTP packetizers: our own sender side, for tests, the demo and the benchmark.

Each packetizer turns encoded frames into :class:`~edge_recorder.rtp.packet.RtpPacket`
objects the way a browser or mediasoup would send them:

- :class:`Vp8Packetizer` — RFC 7741, a 4-byte descriptor with a 15-bit PictureID.
- :class:`Vp9Packetizer` — RFC 9628 non-flexible mode, a 3-byte descriptor with a
  15-bit PictureID (plus the scalability structure on key frames).
- :class:`H264Packetizer` — RFC 6184 packetization-mode 1: single NAL units,
  STAP-A for runs of small NAL units (SPS/PPS/SEI), FU-A for large ones; or
  packetization-mode 0: one single NAL unit packet per NAL unit.
- :class:`OpusPacketizer` — RFC 7587, one Opus packet per RTP packet.

``mtu`` is the largest RTP packet (12-byte header plus payload) we produce; the
packets carry no CSRCs or header extensions.
"""

from __future__ import annotations

import random

from edge_recorder.errors import DepacketizeError
from edge_recorder.rtp.depacketize.vp9 import parse_vp9_frame_header_untrusted
from edge_recorder.rtp.packet import RtpPacket

__all__ = ["H264Packetizer", "OpusPacketizer", "Vp8Packetizer", "Vp9Packetizer", "split_annex_b"]

RTP_HEADER_SIZE = 12  # RFC 3550 §5.1, without CSRCs or extensions


def _split_evenly(data: bytes, max_chunk: int) -> list[bytes]:
    """Split data into the fewest chunks of at most max_chunk bytes, sizes within 1.

    Even sizes (as libwebrtc does) avoid a tiny last packet.

    Args:
        data: bytes to split (non-empty).
        max_chunk: largest chunk size (positive).

    Returns:
        The chunks, in order.
    """
    count = -(-len(data) // max_chunk)
    base, extra = divmod(len(data), count)
    chunks: list[bytes] = []
    pos = 0
    for i in range(count):
        size = base + (1 if i < extra else 0)
        chunks.append(data[pos : pos + size])
        pos += size
    return chunks


class _RtpSequencer:
    """Sequence numbers and header fields shared by all packetizers."""

    def __init__(
        self,
        *,
        payload_type: int,
        ssrc: int,
        mtu: int,
        initial_sequence: int | None,
        initial_timestamp: int,
        min_payload: int,
    ) -> None:
        """Check the parameters and set up the sequence counter.

        Args:
            payload_type: RTP payload type, 0–127.
            ssrc: RTP SSRC, 0–2^32-1.
            mtu: largest RTP packet in bytes, header included.
            initial_sequence: first sequence number; None picks a random one
                (RFC 3550 §5.1: the initial value SHOULD be random).
            initial_timestamp: kept for callers that want the stream's origin.
            min_payload: the smallest payload this packetizer needs per packet.

        Raises:
            ValueError: a parameter is out of range or mtu is too small.
        """
        if not 0 <= payload_type <= 127:
            raise ValueError(f"payload_type must be 0..127, not {payload_type}")
        if not 0 <= ssrc <= 0xFFFFFFFF:
            raise ValueError(f"ssrc must be 0..2^32-1, not {ssrc}")
        if mtu < RTP_HEADER_SIZE + min_payload:
            raise ValueError(f"mtu {mtu} is too small (at least {RTP_HEADER_SIZE + min_payload})")
        if initial_sequence is None:
            initial_sequence = random.randrange(1 << 16)
        if not 0 <= initial_sequence <= 0xFFFF:
            raise ValueError(f"initial_sequence must be 0..65535, not {initial_sequence}")
        self.payload_type = payload_type
        self.ssrc = ssrc
        self.mtu = mtu
        self.max_payload = mtu - RTP_HEADER_SIZE
        self.initial_timestamp = initial_timestamp & 0xFFFFFFFF
        self._next_sequence = initial_sequence

    def make(self, payloads: list[bytes], timestamp: int, *, marker_last: bool) -> list[RtpPacket]:
        """Wrap payloads in RTP packets with consecutive sequence numbers.

        Args:
            payloads: the packets' payloads in order.
            timestamp: RTP timestamp (taken mod 2^32).
            marker_last: set the marker bit on the last packet (RFC 3550 §5.1:
                for video, the last packet of a frame).

        Returns:
            The packets.
        """
        ts = timestamp & 0xFFFFFFFF
        packets: list[RtpPacket] = []
        last = len(payloads) - 1
        for i, payload in enumerate(payloads):
            packets.append(
                RtpPacket(
                    payload_type=self.payload_type,
                    sequence_number=self._next_sequence,
                    timestamp=ts,
                    ssrc=self.ssrc,
                    payload=payload,
                    marker=marker_last and i == last,
                )
            )
            self._next_sequence = (self._next_sequence + 1) & 0xFFFF
        return packets


class _SimplePacketizer:
    """Shared constructor of the packetizers whose only state is the RTP sequencer."""

    _MIN_PAYLOAD = 1

    def __init__(
        self,
        *,
        payload_type: int,
        ssrc: int,
        mtu: int = 1200,
        initial_sequence: int | None = None,
        initial_timestamp: int = 0,
    ) -> None:
        """Create a packetizer.

        Args:
            payload_type: RTP payload type.
            ssrc: RTP SSRC.
            mtu: largest RTP packet, header included.
            initial_sequence: first sequence number, or None for a random one.
            initial_timestamp: the stream's first RTP timestamp (informational).

        Raises:
            ValueError: a parameter is out of range.
        """
        self._rtp = _RtpSequencer(
            payload_type=payload_type,
            ssrc=ssrc,
            mtu=mtu,
            initial_sequence=initial_sequence,
            initial_timestamp=initial_timestamp,
            min_payload=self._MIN_PAYLOAD,
        )


class _PictureIdPacketizer(_SimplePacketizer):
    """What the VP8 and VP9 packetizers share: the RTP sequencer and a 15-bit PictureID.

    Subclasses set ``_MIN_PAYLOAD``: the smallest payload a packet of theirs
    needs (descriptor plus one byte of frame, plus any structure they add).
    """

    def __init__(
        self,
        *,
        payload_type: int,
        ssrc: int,
        mtu: int = 1200,
        initial_sequence: int | None = None,
        initial_timestamp: int = 0,
        initial_picture_id: int = 0,
    ) -> None:
        """Create a packetizer.

        Args:
            payload_type: RTP payload type.
            ssrc: RTP SSRC.
            mtu: largest RTP packet, header included.
            initial_sequence: first sequence number, or None for a random one.
            initial_timestamp: the stream's first RTP timestamp (informational).
            initial_picture_id: the first frame's PictureID (taken mod 2^15).

        Raises:
            ValueError: a parameter is out of range.
        """
        super().__init__(
            payload_type=payload_type,
            ssrc=ssrc,
            mtu=mtu,
            initial_sequence=initial_sequence,
            initial_timestamp=initial_timestamp,
        )
        self._picture_id = initial_picture_id & 0x7FFF


class Vp8Packetizer(_PictureIdPacketizer):
    """Packetize VP8 frames (RFC 7741) like a browser: X=1, I=1, 15-bit PictureID.

    The descriptor is 4 bytes: ``|X|R|N|S|R|PID|``, ``|I|L|T|K|RSV|``, then
    ``|M|PictureID(15)|`` (RFC 7741 §4.2). The PictureID increments per frame.
    """

    _DESCRIPTOR_SIZE = 4
    _MIN_PAYLOAD = _DESCRIPTOR_SIZE + 1

    def packetize(self, frame: bytes, timestamp: int, *, keyframe: bool = False) -> list[RtpPacket]:
        """Split one VP8 frame into RTP packets.

        Args:
            frame: one encoded VP8 frame.
            timestamp: its RTP timestamp (90 kHz, taken mod 2^32).
            keyframe: accepted for a common API; VP8 signals keyframes in the
                frame itself (RFC 7741 §4.3), so it changes nothing.

        Returns:
            The packets; the marker bit is set on the last one.

        Raises:
            ValueError: the frame is empty.
        """
        if not frame:
            raise ValueError("empty VP8 frame")
        chunks = _split_evenly(frame, self._rtp.max_payload - self._DESCRIPTOR_SIZE)
        pid_hi = 0x80 | (self._picture_id >> 8)  # M=1: 15-bit PictureID
        pid_lo = self._picture_id & 0xFF
        payloads = [
            bytes(((0x90 if i == 0 else 0x80), 0x80, pid_hi, pid_lo)) + chunk
            for i, chunk in enumerate(chunks)
        ]  # 0x90 = X|S (PID 0) on the first packet, 0x80 = X on the rest
        self._picture_id = (self._picture_id + 1) & 0x7FFF
        return self._rtp.make(payloads, timestamp, marker_last=True)


class Vp9Packetizer(_PictureIdPacketizer):
    """Packetize VP9 frames (RFC 9628) in non-flexible mode, as libwebrtc does.

    Every packet carries ``|I|P|L|F|B|E|V|Z|`` then ``|M|PictureID(15)|``: I=1,
    M=1, L=0 and F=0 (one spatial and one temporal layer need neither layer
    indices nor reference lists, RFC 9628 §4.2), P=1 for an inter frame, B on a
    frame's first packet and E on its last. The first packet of a key frame also
    carries the scalability structure (V=1, RFC 9628 §4.2.1): one spatial layer
    with its resolution. The PictureID increments per frame.
    """

    _DESCRIPTOR_SIZE = 3
    _SS_SIZE = 5  # |N_S|Y|G|-|-|-| then WIDTH(16) HEIGHT(16)
    _MIN_PAYLOAD = _DESCRIPTOR_SIZE + _SS_SIZE + 1

    def packetize(self, frame: bytes, timestamp: int, *, keyframe: bool = False) -> list[RtpPacket]:
        """Split one VP9 frame (or encoder superframe) into RTP packets.

        Args:
            frame: one encoded VP9 frame, as libvpx outputs it.
            timestamp: its RTP timestamp (90 kHz, taken mod 2^32).
            keyframe: accepted for a common API; the P bit is set from the frame's
                own uncompressed header, which cannot disagree with the frame.

        Returns:
            The packets; the marker bit is set on the last one (RFC 9628 §4.1).

        Raises:
            ValueError: the frame is empty or does not begin with a VP9 header.
        """
        if not frame:
            raise ValueError("empty VP9 frame")
        try:
            header = parse_vp9_frame_header_untrusted(frame)
        except DepacketizeError as exc:
            raise ValueError(f"not a VP9 frame: {exc}") from exc
        b0 = 0x80  # I=1
        if not header.keyframe:
            b0 |= 0x40  # P=1: inter-picture predicted
        ss = b""
        if header.keyframe and header.size is not None:
            width, height = header.size
            ss = bytes((0x10,)) + width.to_bytes(2, "big") + height.to_bytes(2, "big")  # N_S=0, Y=1
        pid = bytes((0x80 | (self._picture_id >> 8), self._picture_id & 0xFF))  # M=1
        self._picture_id = (self._picture_id + 1) & 0x7FFF
        first_room = self._rtp.max_payload - self._DESCRIPTOR_SIZE - len(ss)
        room = self._rtp.max_payload - self._DESCRIPTOR_SIZE
        chunks = [frame[:first_room]]
        if len(frame) > first_room:
            chunks += _split_evenly(frame[first_room:], room)
        last = len(chunks) - 1
        payloads = []
        for i, chunk in enumerate(chunks):
            flags = b0 | (0x08 if i == 0 else 0) | (0x04 if i == last else 0)  # B, E
            if i == 0 and ss:
                payloads.append(bytes((flags | 0x02,)) + pid + ss + chunk)  # V=1
            else:
                payloads.append(bytes((flags,)) + pid + chunk)
        return self._rtp.make(payloads, timestamp, marker_last=True)


def split_annex_b(access_unit: bytes) -> list[bytes]:
    """Split an Annex-B byte stream into NAL units (ITU-T H.264 Annex B).

    Start codes are ``00 00 01`` or ``00 00 00 01``; trailing zero bytes before a
    start code (``trailing_zero_8bits``) are dropped.

    Args:
        access_unit: Annex-B bytes.

    Returns:
        The NAL units without start codes, empty ones skipped.
    """
    nals: list[bytes] = []
    start = access_unit.find(b"\x00\x00\x01")
    while start != -1:
        begin = start + 3
        nxt = access_unit.find(b"\x00\x00\x01", begin)
        end = len(access_unit) if nxt == -1 else nxt
        nal = access_unit[begin:end].rstrip(b"\x00")
        if nal:
            nals.append(nal)
        start = nxt
    return nals


class H264Packetizer(_SimplePacketizer):
    """Packetize H.264 access units, RFC 6184 packetization-mode 1 or 0."""

    # FU indicator + FU header + one byte (RFC 6184 §5.8).
    _MIN_PAYLOAD = 3

    def __init__(
        self,
        *,
        payload_type: int,
        ssrc: int,
        mtu: int = 1200,
        initial_sequence: int | None = None,
        initial_timestamp: int = 0,
        packetization_mode: int = 1,
    ) -> None:
        """Create a packetizer.

        Args:
            payload_type: RTP payload type.
            ssrc: RTP SSRC.
            mtu: largest RTP packet, header included.
            initial_sequence: first sequence number, or None for a random one.
            initial_timestamp: the stream's first RTP timestamp (informational).
            packetization_mode: 1 (single NAL, STAP-A, FU-A) or 0 (single NAL
                unit packets only, RFC 6184 §6.2).

        Raises:
            ValueError: a parameter is out of range.
        """
        if packetization_mode not in (0, 1):
            raise ValueError(f"packetization_mode must be 0 or 1, not {packetization_mode}")
        super().__init__(
            payload_type=payload_type,
            ssrc=ssrc,
            mtu=mtu,
            initial_sequence=initial_sequence,
            initial_timestamp=initial_timestamp,
        )
        self.packetization_mode = packetization_mode

    def packetize(self, frame: bytes, timestamp: int, *, keyframe: bool = False) -> list[RtpPacket]:
        """Split one Annex-B access unit into RTP packets.

        Mode 1: runs of NAL units that fit together go in one STAP-A (RFC 6184
        §5.7.1), a NAL unit that fits alone is a single NAL unit packet (§5.6),
        and a larger one is fragmented into FU-A packets (§5.8). Mode 0: each
        NAL unit is a single NAL unit packet (§6.2: STAP and FU MUST NOT be
        used), so the encoder must keep slices under the mtu (x264
        ``slice-max-size``).

        Args:
            frame: one access unit in Annex-B format.
            timestamp: its RTP timestamp (90 kHz, taken mod 2^32).
            keyframe: accepted for a common API; H.264 signals keyframes with
                the NAL unit types, so it changes nothing.

        Returns:
            The packets; the marker bit is set on the last one (RFC 6184 §5.1).

        Raises:
            ValueError: the access unit holds no NAL unit, or (mode 0) a NAL unit
                is larger than the mtu allows.
        """
        nals = split_annex_b(frame)
        if not nals:
            raise ValueError("access unit holds no NAL unit")
        limit = self._rtp.max_payload
        if self.packetization_mode == 0:
            for nal in nals:
                if len(nal) > limit:
                    raise ValueError(
                        f"packetization-mode 0: a NAL unit of {len(nal)} bytes exceeds the "
                        f"{limit}-byte payload the mtu allows (limit the encoder's slice size)"
                    )
            return self._rtp.make(nals, timestamp, marker_last=True)
        payloads: list[bytes] = []
        i = 0
        while i < len(nals):
            # Greedily aggregate the longest run starting at i that fits a STAP-A.
            size = 1 + 2 + len(nals[i])
            j = i + 1
            while j < len(nals) and size + 2 + len(nals[j]) <= limit:
                size += 2 + len(nals[j])
                j += 1
            if j - i >= 2:
                payloads.append(self._stap_a(nals[i:j]))
                i = j
                continue
            nal = nals[i]
            if len(nal) <= limit:
                payloads.append(nal)
            else:
                payloads.extend(self._fu_a(nal, limit))
            i += 1
        return self._rtp.make(payloads, timestamp, marker_last=True)

    @staticmethod
    def _stap_a(nals: list[bytes]) -> bytes:
        """Build a STAP-A payload (RFC 6184 §5.7.1).

        Args:
            nals: NAL units to aggregate (each under 65536 bytes).

        Returns:
            The STAP-A payload: F is the OR and NRI the maximum of the units'.
        """
        f_bit = 0
        nri = 0
        parts: list[bytes] = []
        for nal in nals:
            f_bit |= nal[0] & 0x80
            nri = max(nri, nal[0] & 0x60)
            parts.append(len(nal).to_bytes(2, "big"))
            parts.append(nal)
        return bytes((f_bit | nri | 24,)) + b"".join(parts)

    @staticmethod
    def _fu_a(nal: bytes, limit: int) -> list[bytes]:
        """Fragment one NAL unit into FU-A payloads (RFC 6184 §5.8).

        Args:
            nal: the NAL unit, header included.
            limit: largest payload.

        Returns:
            FU-A payloads; S on the first, E on the last.
        """
        indicator = (nal[0] & 0xE0) | 28
        nal_type = nal[0] & 0x1F
        fragments = _split_evenly(nal[1:], limit - 2)
        last = len(fragments) - 1
        out: list[bytes] = []
        for k, fragment in enumerate(fragments):
            fu_header = nal_type | (0x80 if k == 0 else 0) | (0x40 if k == last else 0)
            out.append(bytes((indicator, fu_header)) + fragment)
        return out


class OpusPacketizer(_SimplePacketizer):
    """Packetize Opus packets (RFC 7587): one per RTP packet, marker always False."""

    _MIN_PAYLOAD = 1

    def packetize(self, frame: bytes, timestamp: int, *, keyframe: bool = False) -> list[RtpPacket]:
        """Wrap one Opus packet in an RTP packet.

        Args:
            frame: one Opus packet.
            timestamp: its RTP timestamp (48 kHz, taken mod 2^32).
            keyframe: ignored (every Opus packet decodes alone).

        Returns:
            One packet. The marker bit stays False; RFC 7587 §4.1 reserves it for
            the first packet of a talkspurt after DTX, which we do not produce.

        Raises:
            ValueError: the packet is empty or does not fit the mtu.
        """
        if not frame:
            raise ValueError("empty Opus packet")
        if len(frame) > self._rtp.max_payload:
            raise ValueError(f"Opus packet of {len(frame)} bytes exceeds the mtu")
        return self._rtp.make([frame], timestamp, marker_last=False)
