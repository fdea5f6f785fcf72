"""VP9 RTP depacketizer (RFC 9628).

Each RTP payload is a VP9 payload descriptor (RFC 9628 §4.2) followed by a chunk
of one *layer frame* (one spatial layer of one picture). B=1 marks a layer frame's
first packet and E=1 its last; all layer frames of a picture share the RTP
timestamp, and the marker bit ends the picture (RFC 9628 §4.1).

Spatial layers. The assembler hands us one picture: every packet from a frame
start to the marker. With spatial scalability (SVC) that is several layer frames.
Simply joining them is not enough: FFmpeg's native ``vp9`` decoder, the one we
use, decodes only the first frame of a packet and silently ignores the rest, so
the upper layers' references would never be decoded and their pictures would
drift (measured with PyAV 18; libvpx would cope, it falls back to parsing frames
back to back). So a picture of several layer frames is returned as a VP9
superframe (VP9 bitstream specification, Annex B): the frames back to back plus
a superframe index, which both decoders split. FFmpeg then outputs one picture per
shown layer frame, the largest last; the worker shows the last picture of each
timestamp, so the recording gets the highest layer the SFU forwarded.
mediasoup forwards layers up to the consumer's preferred spatial layer (the
highest by default) plus the lower ones it needs, so SVC producers do produce
this case. A picture of one layer frame (no SVC, or temporal layers only) is
passed through unchanged, including a superframe the encoder made itself
(libvpx's hidden alt-ref frames).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge_recorder.errors import DepacketizeError

__all__ = [
    "Vp9Depacketizer",
    "Vp9Descriptor",
    "Vp9FrameHeader",
    "Vp9ScalabilityStructure",
    "build_superframe",
    "parse_vp9_descriptor_untrusted",
    "parse_vp9_frame_header_untrusted",
    "split_superframe",
]

# RFC 9628 §4.2, first octet: |I|P|L|F|B|E|V|Z|
_I_BIT = 0x80  # PictureID present
_P_BIT = 0x40  # inter-picture predicted
_L_BIT = 0x20  # layer indices present
_F_BIT = 0x10  # flexible mode
_B_BIT = 0x08  # start of a layer frame
_E_BIT = 0x04  # end of a layer frame
_V_BIT = 0x02  # scalability structure (SS) present
_Z_BIT = 0x01  # not a reference for upper spatial layers
_M_BIT = 0x80  # PictureID first octet: M=1 means 15 bits
_N_BIT = 0x01  # P_DIFF octet: another P_DIFF follows
_MAX_REFERENCES = 3  # RFC 9628 §4.2: "up to 3 times"
# SS first octet: |N_S|Y|G|-|-|-|
_SS_Y_BIT = 0x10
_SS_G_BIT = 0x08

# VP9 bitstream specification §7.2: frame_marker is 2, the key frame sync code
# follows error_resilient_mode; Annex B: superframe index marker 0b110xxxxx.
_FRAME_MARKER = 2
_SYNC_CODE = 0x498342
_CS_RGB = 7
_SUPERFRAME_MARKER_MASK = 0xE0
_SUPERFRAME_MARKER = 0xC0
_MAX_SUPERFRAME_FRAMES = 8


@dataclass(frozen=True, slots=True)
class Vp9ScalabilityStructure:
    """The scalability structure (SS) of RFC 9628 §4.2.1.

    Attributes:
        spatial_layers: N_S + 1.
        resolutions: (width, height) per spatial layer when Y=1, else empty.
        picture_group: per picture of the group (G=1): (TID, U, P_DIFFs).
    """

    spatial_layers: int
    resolutions: tuple[tuple[int, int], ...]
    picture_group: tuple[tuple[int, bool, tuple[int, ...]], ...]


@dataclass(frozen=True, slots=True)
class Vp9Descriptor:
    """A parsed VP9 payload descriptor (RFC 9628 §4.2).

    Attributes:
        size: length of the descriptor in bytes (where the VP9 data begins).
        picture_id: the 7- or 15-bit PictureID, or None (I=0).
        inter_picture: P, the layer frame uses inter-picture prediction.
        flexible: F, flexible mode (references in P_DIFF) vs non-flexible.
        begin: B, first packet of a layer frame.
        end: E, last packet of a layer frame.
        not_upper_reference: Z.
        temporal_id: TID, or None without layer indices (L=0).
        switching_up: U.
        spatial_id: SID, or None without layer indices (L=0).
        inter_layer: D, inter-layer dependency.
        tl0_pic_idx: TL0PICIDX (non-flexible mode with L=1), else None.
        reference_diffs: the P_DIFFs of flexible mode (at most 3).
        ss: the scalability structure when V=1, else None.
    """

    size: int
    picture_id: int | None
    inter_picture: bool
    flexible: bool
    begin: bool
    end: bool
    not_upper_reference: bool
    temporal_id: int | None
    switching_up: bool
    spatial_id: int | None
    inter_layer: bool
    tl0_pic_idx: int | None
    reference_diffs: tuple[int, ...]
    ss: Vp9ScalabilityStructure | None

    @property
    def starts_picture(self) -> bool:
        """B=1 on the base spatial layer (or on a stream without layer indices)."""
        return self.begin and (self.spatial_id is None or self.spatial_id == 0)


class _Reader:
    """Octets of an untrusted buffer with bounds checks that raise DepacketizeError."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def octet(self, what: str) -> int:
        if self.pos >= len(self.data):
            raise DepacketizeError(f"VP9: truncated descriptor ({what})")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uint16(self, what: str) -> int:
        return (self.octet(what) << 8) | self.octet(what)


def _parse_ss(reader: _Reader) -> Vp9ScalabilityStructure:
    """Parse a scalability structure (RFC 9628 §4.2.1).

    Args:
        reader: positioned at the SS's first octet.

    Returns:
        The structure.

    Raises:
        DepacketizeError: the SS is truncated.
    """
    first = reader.octet("SS")
    spatial_layers = (first >> 5) + 1
    resolutions: list[tuple[int, int]] = []
    if first & _SS_Y_BIT:
        for _ in range(spatial_layers):
            width = reader.uint16("SS width")
            height = reader.uint16("SS height")
            resolutions.append((width, height))
    group: list[tuple[int, bool, tuple[int, ...]]] = []
    if first & _SS_G_BIT:
        for _ in range(reader.octet("SS N_G")):
            entry = reader.octet("SS picture group")
            refs = tuple(reader.octet("SS P_DIFF") for _ in range((entry >> 2) & 0x03))
            group.append((entry >> 5, bool(entry & 0x10), refs))
    return Vp9ScalabilityStructure(spatial_layers, tuple(resolutions), tuple(group))


def parse_vp9_descriptor_untrusted(payload: bytes) -> Vp9Descriptor:
    """Parse the VP9 payload descriptor at the start of an RTP payload.

    Args:
        payload: one RTP payload (untrusted).

    Returns:
        The parsed descriptor.

    Raises:
        DepacketizeError: the descriptor is truncated or inconsistent (P_DIFFs
            without a PictureID, more than 3 P_DIFFs), or no VP9 data follows it.
    """
    reader = _Reader(payload)
    b0 = reader.octet("first octet")
    picture_id: int | None = None
    if b0 & _I_BIT:
        pid = reader.octet("PictureID")
        if pid & _M_BIT:
            pid = ((pid & 0x7F) << 8) | reader.octet("15-bit PictureID")
        picture_id = pid
    flexible = bool(b0 & _F_BIT)
    temporal_id: int | None = None
    spatial_id: int | None = None
    switching_up = inter_layer = False
    tl0_pic_idx: int | None = None
    if b0 & _L_BIT:
        # |TID|U|SID|D|; TL0PICIDX follows in non-flexible mode only.
        layer = reader.octet("layer indices")
        temporal_id = layer >> 5
        switching_up = bool(layer & 0x10)
        spatial_id = (layer >> 1) & 0x07
        inter_layer = bool(layer & 0x01)
        if not flexible:
            tl0_pic_idx = reader.octet("TL0PICIDX")
    diffs: list[int] = []
    if flexible and b0 & _P_BIT:
        # P_DIFF is relative to the PictureID, so it needs one (libwebrtc refuses
        # the packet too); N=1 means another P_DIFF follows, at most 3.
        if picture_id is None:
            raise DepacketizeError("VP9: flexible-mode P_DIFF without a PictureID")
        while True:
            octet = reader.octet("P_DIFF")
            diffs.append(octet >> 1)
            if not octet & _N_BIT:
                break
            if len(diffs) == _MAX_REFERENCES:
                raise DepacketizeError("VP9: more than 3 P_DIFF reference indices")
    ss = _parse_ss(reader) if b0 & _V_BIT else None
    if reader.pos >= len(payload):
        raise DepacketizeError("VP9: payload has no data after the descriptor")
    return Vp9Descriptor(
        size=reader.pos,
        picture_id=picture_id,
        inter_picture=bool(b0 & _P_BIT),
        flexible=flexible,
        begin=bool(b0 & _B_BIT),
        end=bool(b0 & _E_BIT),
        not_upper_reference=bool(b0 & _Z_BIT),
        temporal_id=temporal_id,
        switching_up=switching_up,
        spatial_id=spatial_id,
        inter_layer=inter_layer,
        tl0_pic_idx=tl0_pic_idx,
        reference_diffs=tuple(diffs),
        ss=ss,
    )


@dataclass(frozen=True, slots=True)
class Vp9FrameHeader:
    """The start of a VP9 uncompressed header (VP9 bitstream specification §6.2).

    Attributes:
        profile: 0–3.
        show_existing_frame: the frame only re-shows a decoded one.
        keyframe: frame_type == KEY_FRAME (and the sync code checked out).
        show_frame: the frame is displayed.
        size: (width, height) for a key frame when the packet holds it, else None.
    """

    profile: int
    show_existing_frame: bool
    keyframe: bool
    show_frame: bool
    size: tuple[int, int] | None


class _BitReader:
    """MSB-first bits of an untrusted buffer (VP9 spec §4.9 f(n))."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) * 8 - self._pos

    def bits(self, count: int) -> int:
        if count > self.remaining:
            raise DepacketizeError("VP9: truncated uncompressed header")
        value = 0
        for _ in range(count):
            byte = self._data[self._pos >> 3]
            value = (value << 1) | ((byte >> (7 - (self._pos & 7))) & 1)
            self._pos += 1
        return value


def parse_vp9_frame_header_untrusted(frame: bytes) -> Vp9FrameHeader:
    """Read the first fields of a VP9 frame's uncompressed header.

    Enough to tell a key frame (frame_type 0 with the 0x49 0x83 0x42 sync code)
    and its size; the rest of the header is the decoder's business.

    Args:
        frame: the start of a VP9 frame (at least its first octet).

    Returns:
        The fields read. ``size`` is None when the buffer ends before it.

    Raises:
        DepacketizeError: the frame marker is wrong, the sync code of a key
            frame is wrong, or the buffer ends before frame_type is known.
    """
    r = _BitReader(frame)
    if r.bits(2) != _FRAME_MARKER:
        raise DepacketizeError("VP9: bad frame_marker in the uncompressed header")
    profile = r.bits(1)
    profile |= r.bits(1) << 1
    if profile == 3:
        r.bits(1)  # reserved_zero
    if r.bits(1):
        # show_existing_frame: a one-octet frame re-showing a reference.
        return Vp9FrameHeader(profile, True, False, True, None)
    keyframe = r.bits(1) == 0
    show_frame = bool(r.bits(1))
    r.bits(1)  # error_resilient_mode
    if not keyframe:
        return Vp9FrameHeader(profile, False, False, show_frame, None)
    size: tuple[int, int] | None = None
    if r.remaining >= 24:
        if r.bits(24) != _SYNC_CODE:
            raise DepacketizeError("VP9: key frame without the 49 83 42 sync code")
        try:
            # color_config() then frame_size() (VP9 spec §6.2.1, §6.2.3).
            if profile >= 2:
                r.bits(1)  # ten_or_twelve_bit
            color_space = r.bits(3)
            if color_space != _CS_RGB:
                r.bits(1)  # color_range
                if profile in (1, 3):
                    r.bits(3)  # subsampling_x, subsampling_y, reserved_zero
            elif profile in (1, 3):
                r.bits(1)  # reserved_zero
            size = (r.bits(16) + 1, r.bits(16) + 1)
        except DepacketizeError:
            size = None  # a tiny first packet: the size is in the next one
    return Vp9FrameHeader(profile, False, True, show_frame, size)


def split_superframe(data: bytes) -> list[bytes]:
    """Split a VP9 superframe into its frames (VP9 bitstream spec Annex B).

    Args:
        data: one VP9 frame or superframe.

    Returns:
        The frames of the superframe, or ``[data]`` if it carries no valid
        superframe index (an index whose sizes do not add up is not one).
    """
    if not data:
        return [data]
    marker = data[-1]
    if marker & _SUPERFRAME_MARKER_MASK != _SUPERFRAME_MARKER:
        return [data]
    count = (marker & 0x07) + 1
    size_bytes = ((marker >> 3) & 0x03) + 1
    index_size = 2 + size_bytes * count
    if len(data) < index_size or data[-index_size] != marker:
        return [data]
    pos = len(data) - index_size + 1
    sizes = []
    for _ in range(count):
        sizes.append(int.from_bytes(data[pos : pos + size_bytes], "little"))
        pos += size_bytes
    if 0 in sizes or sum(sizes) != len(data) - index_size:
        return [data]
    frames = []
    pos = 0
    for size in sizes:
        frames.append(data[pos : pos + size])
        pos += size
    return frames


def build_superframe(frames: Sequence[bytes]) -> bytes:
    """Join VP9 frames into a superframe with an index (VP9 bitstream spec Annex B).

    Args:
        frames: 2–8 non-empty VP9 frames, each under 2^32 bytes.

    Returns:
        The frames back to back, then the index (4-byte sizes).

    Raises:
        DepacketizeError: there are more than 8 frames.
    """
    if len(frames) > _MAX_SUPERFRAME_FRAMES:
        raise DepacketizeError(f"VP9: {len(frames)} layer frames do not fit a superframe (max 8)")
    marker = _SUPERFRAME_MARKER | (3 << 3) | (len(frames) - 1)  # 4-byte sizes
    index = bytes((marker,)) + b"".join(len(f).to_bytes(4, "little") for f in frames) + bytes((marker,))
    return b"".join(frames) + index


class Vp9Depacketizer:
    """Depacketizer for ``video/VP9`` (RFC 9628).

    Attributes:
        codec: ``"vp9"`` (PyAV decoder name).
        kind: ``"video"``.
    """

    codec: str = "vp9"
    kind: str = "video"

    def is_frame_start(self, payload: bytes) -> bool:
        """Tell whether the payload begins a picture: B=1 on spatial layer 0.

        B alone begins a layer frame (RFC 9628 §4.2); a picture begins with its
        lowest layer, SID 0 when layer indices are present. Without them the
        stream has one spatial layer and B is enough.

        Args:
            payload: one RTP payload (untrusted).

        Returns:
            True if it begins a picture; False otherwise or if malformed.
        """
        try:
            return parse_vp9_descriptor_untrusted(payload).starts_picture
        except DepacketizeError:
            return False

    def is_keyframe(self, payload: bytes) -> bool:
        """Tell whether the payload begins a key picture.

        RFC 9628 §4.2: P=0 on the first packet (B=1) of the base spatial layer
        means no inter-picture prediction. The VP9 uncompressed header is checked
        too when the packet holds it: frame_type must be KEY_FRAME, so an
        intra-only frame (P=0 too, but it keeps the decoder's other references)
        does not open the keyframe gate.

        Args:
            payload: an RTP payload of a picture (untrusted).

        Returns:
            True for a key picture; False otherwise or if malformed.
        """
        try:
            d = parse_vp9_descriptor_untrusted(payload)
            if not d.starts_picture or d.inter_picture:
                return False
            return parse_vp9_frame_header_untrusted(payload[d.size :]).keyframe
        except DepacketizeError:
            return False

    def depacketize(self, payloads: Sequence[bytes]) -> bytes:
        """Strip the descriptors and rebuild one picture.

        Args:
            payloads: the picture's RTP payloads in sequence-number order.

        Returns:
            The VP9 frame; a superframe when the picture has several layer frames
            (see the module docstring).

        Raises:
            DepacketizeError: a descriptor is malformed, the first packet does not
                begin a layer frame, a layer frame lacks its B or E packet, the
                PictureID changes inside the picture, a layer frame does not begin
                with a VP9 frame header, or there are more than 8 layer frames.
        """
        if not payloads:
            raise DepacketizeError("VP9: no payloads")
        layer_frames: list[bytes] = []
        chunks: list[bytes] | None = None  # the layer frame being gathered
        picture_id: int | None = None
        for index, payload in enumerate(payloads):
            d = parse_vp9_descriptor_untrusted(payload)
            if index == 0:
                if not d.begin:
                    raise DepacketizeError("VP9: first packet does not begin a layer frame (B=0)")
                picture_id = d.picture_id
            elif d.picture_id is not None and picture_id is not None and d.picture_id != picture_id:
                raise DepacketizeError("VP9: PictureID changes inside a picture")
            if d.begin:
                if chunks is not None:
                    raise DepacketizeError("VP9: a layer frame begins before the previous one ended (E=0)")
                chunks = []
            elif chunks is None:
                raise DepacketizeError("VP9: packet after a layer frame's end (E=1) without B")
            chunks.append(payload[d.size :])
            if d.end:
                frame = b"".join(chunks)
                parse_vp9_frame_header_untrusted(frame)  # a VP9 frame, not garbage
                layer_frames.append(frame)
                chunks = None
        if chunks is not None:
            raise DepacketizeError("VP9: the picture ends inside a layer frame (no E packet)")
        if len(layer_frames) == 1:
            return layer_frames[0]
        # Several spatial layers: one superframe; a layer frame that is itself a
        # superframe is flattened, as superframes do not nest (Annex B).
        return build_superframe([f for layer in layer_frames for f in split_superframe(layer)])
