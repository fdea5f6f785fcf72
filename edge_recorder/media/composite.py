"""The compositor: draws a :class:`~edge_recorder.media.layout.Scene` into a yuv420p frame.

Everything happens on yuv420p planes with numpy (notes §2.3): RGB round trips
cost 1.6 ms or more per 720p frame, plane copies a fraction of that. Scaling and
pixel-format conversion go through one ``VideoReformatter`` per input, reused
frame after frame, because ``VideoFrame.reformat()`` builds a new SwsContext on
every decoded frame in PyAV 18 (2.05 ms instead of 0.16 ms, notes §2.2).

Text (name labels, the slate) is rendered once with Pillow and cached as
premultiplied Y/U/V planes plus alpha, so a frame with labels costs a few small
integer blends.

Participants choose their names, so a name is hostile input: it is cleaned
(:func:`~edge_recorder.media.layout.clean_display_name`) and drawn inside a
guard. A name Pillow or numpy cannot draw (whatever the string) is left out
of the picture, counted in :attr:`Compositor.label_failures` and reported once
per name; a label never ends a recording.

A :class:`Compositor` is confined to one thread at a time: the scaler cache is
not locked.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt
from av.video.reformatter import ColorRange, Interpolation, VideoReformatter
from PIL import Image, ImageDraw, ImageFont

from edge_recorder.errors import MediaError
from edge_recorder.media.layout import Card, Rect, Scene, clean_display_name

__all__ = ["CARD_RGB", "Compositor", "DEFAULT_FONT_PATH", "rgb_to_yuv"]

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
F32 = npt.NDArray[np.float32]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

DEFAULT_FONT_PATH = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"

_BORDER_RGB = (230, 230, 230)
CARD_RGB = (58, 64, 78)  # a name card: lighter than the canvas, so it reads as a tile
_BORDER_PX = 2  # even, so the chroma border is exactly one sample wide
_LABEL_BOX_RGBA = (0, 0, 0, 170)
_TEXT_RGBA = (255, 255, 255, 255)
_TITLE = "Waiting for video"
# Slates are rebuilt only when the room's names change; a few cached tuples
# cover people joining and leaving around the start of a recording.
_SLATE_CACHE_SIZE = 4
# Labels: one entry per (text, font size, max width); bounded so a long room
# with many joins cannot grow memory without limit.
_LABEL_CACHE_SIZE = 256
# Names already reported as undrawable; bounded like the label cache.
_WARNED_NAMES_KEPT = 256
# How much of an undrawable name a warning quotes.
_WARNING_NAME_CHARS = 80

log = logging.getLogger(__name__)


def rgb_to_yuv(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Convert an 8-bit RGB colour to limited-range BT.601 Y'CbCr.

    BT.601 limited range is what x264 assumes for untagged yuv420p input and
    what WebRTC decoders produce, so solid colours survive the round trip.

    Args:
        rgb: red, green, blue in 0..255.

    Returns:
        (Y, U, V) in 16..235 / 16..240.
    """
    y, u, v = _rgb_to_yuv_arrays(np.asarray(rgb, dtype=np.float32).reshape(1, 1, 3))
    return int(y[0, 0]), int(u[0, 0]), int(v[0, 0])


def _rgb_to_yuv_arrays(rgb: npt.NDArray[np.float32]) -> tuple[F32, F32, F32]:
    """BT.601 limited-range conversion of an (h, w, 3) float array in 0..255."""
    r, g, b = rgb[..., 0] / 255.0, rgb[..., 1] / 255.0, rgb[..., 2] / 255.0
    y = 16.0 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128.0 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128.0 + 112.0 * r - 93.786 * g - 18.214 * b
    return (
        np.rint(y).astype(np.float32),
        np.rint(u).astype(np.float32),
        np.rint(v).astype(np.float32),
    )


def _even(value: float) -> int:
    return max(0, int(value) // 2 * 2)


def _plane_view(frame: av.VideoFrame, index: int) -> U8:
    """A writable (rows, line_size) view of one plane, padding included.

    The padding columns (``line_size`` > visible width) are kept in the view so
    that whole-plane copies are one contiguous memcpy; slice ``[:, :width]``
    for the visible part.
    """
    plane = frame.planes[index]
    rows = plane.height
    return np.frombuffer(memoryview(plane), dtype=np.uint8, count=plane.line_size * rows).reshape(rows, plane.line_size)


@dataclass(slots=True)
class _Sprite:
    """Pre-rendered text: premultiplied planes and inverse alpha (0..256 scale).

    A blend is ``out = (out * inv + premul) >> 8``: two multiplies and an add
    per sample, in uint16.
    """

    w: int
    h: int
    y_premul: U16
    y_inv: U16
    u_premul: U16
    v_premul: U16
    c_inv: U16


@dataclass(slots=True)
class _Scaler:
    """One input's reformatter and the geometry it was built for."""

    reformatter: VideoReformatter
    src: tuple[int, int, str]  # width, height, pixel format name
    dst: tuple[int, int]


def _sprite_from_rgba(image: Image.Image) -> _Sprite:
    """Convert an RGBA Pillow image with even size into a blendable sprite."""
    rgba = np.asarray(image, dtype=np.float32)
    alpha = rgba[..., 3] / 255.0
    y, u, v = _rgb_to_yuv_arrays(rgba[..., :3])
    h, w = alpha.shape
    # Chroma is one sample per 2x2 block: average alpha, and average U/V
    # weighted by alpha, so a white glyph edge does not bleed box colour.
    a4 = alpha.reshape(h // 2, 2, w // 2, 2)
    ca = a4.mean(axis=(1, 3))
    weight = np.maximum(a4.sum(axis=(1, 3)), 1e-6)
    cu = (u.reshape(h // 2, 2, w // 2, 2) * a4).sum(axis=(1, 3)) / weight
    cv = (v.reshape(h // 2, 2, w // 2, 2) * a4).sum(axis=(1, 3)) / weight
    ya = np.rint(alpha * 256.0)
    cua = np.rint(ca * 256.0)
    return _Sprite(
        w=w,
        h=h,
        y_premul=np.rint(y * ya).astype(np.uint16),
        y_inv=(256.0 - ya).astype(np.uint16),
        u_premul=np.rint(cu * cua).astype(np.uint16),
        v_premul=np.rint(cv * cua).astype(np.uint16),
        c_inv=(256.0 - cua).astype(np.uint16),
    )


def _blend(planes: tuple[U8, U8, U8], sprite: _Sprite, x: int, y: int) -> None:
    """Alpha-blend ``sprite`` at even (x, y); the caller ensures it fits."""
    py, pu, pv = planes
    region = py[y : y + sprite.h, x : x + sprite.w]
    region[...] = (region * sprite.y_inv + sprite.y_premul) >> 8
    cx, cy, cw, ch = x // 2, y // 2, sprite.w // 2, sprite.h // 2
    for plane, premul in ((pu, sprite.u_premul), (pv, sprite.v_premul)):
        region = plane[cy : cy + ch, cx : cx + cw]
        region[...] = (region * sprite.c_inv + premul) >> 8


class Compositor:
    """Renders scenes into new yuv420p frames of a fixed canvas size.

    Args:
        width: canvas width (even).
        height: canvas height (even).
        background: canvas colour, RGB 0..255 (letterbox bars, empty cells, slate).
        font_path: a TrueType font for labels and the slate; defaults to
            DejaVu Sans Bold when installed, else Pillow's built-in font.
        on_warning: called (in the rendering thread) once per name that
            cannot be drawn; defaults to this module's logger.

    Attributes:
        label_failures: names (labels or slate lines) that could not be
            drawn and were left out.

    Raises:
        ValueError: odd or non-positive canvas size.
    """

    def __init__(
        self,
        width: int,
        height: int,
        *,
        background: tuple[int, int, int] = (24, 26, 33),
        font_path: str | None = None,
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        if width < 16 or height < 16 or width % 2 or height % 2:
            raise ValueError(f"canvas must be even and >= 16x16, got {width}x{height}")
        self.width = width
        self.height = height
        self._bg_yuv = rgb_to_yuv(background)
        self._border_yuv = rgb_to_yuv(_BORDER_RGB)
        self._card_yuv = rgb_to_yuv(CARD_RGB)
        self._font_path = font_path if font_path is not None else DEFAULT_FONT_PATH
        self._fonts: dict[int, Font] = {}
        self._scalers: dict[str, _Scaler] = {}
        # None: the label cannot be drawn (remembered, so it is tried once).
        self._labels: OrderedDict[tuple[str, int, int], _Sprite | None] = OrderedDict()
        self._warn = on_warning if on_warning is not None else log.warning
        self._warned: OrderedDict[str, None] = OrderedDict()
        self.label_failures = 0
        self._slates: OrderedDict[tuple[str, ...], tuple[U8, U8, U8]] = OrderedDict()
        # Background planes padded to the frame's line sizes, so each frame
        # starts with three contiguous copies; built on first use because
        # line_size depends on FFmpeg's alignment for this size.
        self._bg_planes: tuple[U8, U8, U8] | None = None
        self._label_px = max(10, _even(height / 30))

    # -- public API ----------------------------------------------------------

    def render(self, scene: Scene, frames: Mapping[str, av.VideoFrame]) -> av.VideoFrame:
        """Draw ``scene`` into a new frame.

        Inputs of the scene missing from ``frames`` leave their area as
        background. Decoded frames are only read, never written (they may be
        reference frames held by a decoder).

        Args:
            scene: what to draw, from :func:`~edge_recorder.media.layout.compute_scene`.
            frames: latest decoded frame per input key, any pixel format.

        Returns:
            A new yuv420p frame ``width`` x ``height`` with ``pts`` None.

        Raises:
            MediaError: scaling an input failed.
        """
        out = av.VideoFrame(self.width, self.height, "yuv420p")
        planes = (_plane_view(out, 0), _plane_view(out, 1), _plane_view(out, 2))
        if not scene.placements and not scene.cards:
            source = self._slate(scene.slate_names, planes)
            for dst, src in zip(planes, source, strict=True):
                np.copyto(dst, src)
            return out
        for dst, src in zip(planes, self._background(planes), strict=True):
            np.copyto(dst, src)
        for placement in scene.placements:
            frame = frames.get(placement.key)
            if frame is None:
                continue
            self._paste(planes, self._scale(placement.key, frame, placement.dst), placement.dst)
            if placement.border:
                self._border(planes, placement.dst)
            if placement.label:
                self._draw_label(planes, placement.label, placement.dst)
        for card in scene.cards:
            self._draw_card(planes, card)
        return out

    def forget(self, key: str) -> None:
        """Drop the cached scaler of an input that left.

        Args:
            key: the input's key; unknown keys are ignored.
        """
        self._scalers.pop(key, None)

    # -- pictures ------------------------------------------------------------

    def _background(self, like: tuple[U8, U8, U8]) -> tuple[U8, U8, U8]:
        if self._bg_planes is None or any(b.shape != p.shape for b, p in zip(self._bg_planes, like, strict=True)):
            self._bg_planes = tuple(  # type: ignore[assignment]
                np.full(p.shape, value, dtype=np.uint8) for p, value in zip(like, self._bg_yuv, strict=True)
            )
        assert self._bg_planes is not None
        return self._bg_planes

    def _scale(self, key: str, frame: av.VideoFrame, dst: Rect) -> av.VideoFrame:
        """Convert and scale ``frame`` to ``dst``'s size in one swscale pass."""
        src_geometry = (frame.width, frame.height, frame.format.name)
        scaler = self._scalers.get(key)
        if scaler is None or scaler.src != src_geometry or scaler.dst != (dst.w, dst.h):
            # A new reformatter only when the geometry changes (simulcast layer
            # switch, share resize, layout change), not per frame.
            scaler = _Scaler(VideoReformatter(), src_geometry, (dst.w, dst.h))
            self._scalers[key] = scaler
        try:
            return scaler.reformatter.reformat(
                frame,
                dst.w,
                dst.h,
                "yuv420p",
                interpolation=Interpolation.BILINEAR,
                src_color_range=frame.color_range,
                dst_color_range=ColorRange.MPEG,
                threads=1,  # auto = every core: oversubscribes a shared box (notes §2.2)
            )
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(f"scaling input {key!r} {frame.width}x{frame.height} to {dst.w}x{dst.h} failed") from exc

    @staticmethod
    def _paste(planes: tuple[U8, U8, U8], picture: av.VideoFrame, dst: Rect) -> None:
        for index, plane in enumerate(planes):
            shift = 0 if index == 0 else 1
            w, h = dst.w >> shift, dst.h >> shift
            x, y = dst.x >> shift, dst.y >> shift
            src = _plane_view(picture, index)
            plane[y : y + h, x : x + w] = src[:h, :w]

    def _border(self, planes: tuple[U8, U8, U8], dst: Rect) -> None:
        """A light frame drawn over the picture's outer pixels (stays inside dst)."""
        b = _BORDER_PX
        for index, plane in enumerate(planes):
            shift = 0 if index == 0 else 1
            x, y, w, h = dst.x >> shift, dst.y >> shift, dst.w >> shift, dst.h >> shift
            t = b >> shift
            value = self._border_yuv[index]
            region = plane[y : y + h, x : x + w]
            region[:t, :] = value
            region[h - t :, :] = value
            region[:, :t] = value
            region[:, w - t :] = value

    def _draw_card(self, planes: tuple[U8, U8, U8], card: Card) -> None:
        """A participant's name card: a flat tile, the name centred on it, the overlay's border."""
        d = card.dst
        for index, plane in enumerate(planes):
            shift = 0 if index == 0 else 1
            plane[d.y >> shift : (d.y + d.h) >> shift, d.x >> shift : (d.x + d.w) >> shift] = self._card_yuv[index]
        size = max(10, min(_even(self.height / 12), _even(d.h / 5)))
        max_w = d.w - 2 * _even(size / 2)
        sprite = self._label_sprite(card.name, size, max_w) if max_w >= size else None
        if sprite is not None and sprite.h <= d.h:
            x = d.x + _even((d.w - sprite.w) / 2)
            y = d.y + _even((d.h - sprite.h) / 2)
            try:
                _blend(planes, sprite, x, y)
            except Exception as exc:  # noqa: BLE001 - a name never ends a recording
                self._labels[(card.name, size, max_w)] = None
                self._undrawable(card.name, exc)
        if card.border:
            self._border(planes, d)

    # -- text ----------------------------------------------------------------

    def _font(self, size: int) -> Font:
        font = self._fonts.get(size)
        if font is None:
            if os.path.exists(self._font_path):
                font = ImageFont.truetype(self._font_path, size)
            else:
                # No DejaVu on this box: Pillow's bundled font keeps labels
                # readable instead of failing the recording.
                font = ImageFont.load_default(size=size)
            self._fonts[size] = font
        return font

    def _undrawable(self, text: str, exc: Exception) -> None:
        """Count a name that cannot be drawn; report it the first time."""
        self.label_failures += 1
        if text in self._warned:
            return
        self._warned[text] = None
        if len(self._warned) > _WARNED_NAMES_KEPT:
            self._warned.popitem(last=False)
        self._warn(
            f"cannot draw the name {text[:_WARNING_NAME_CHARS]!r} ({len(text)} characters): "
            f"{type(exc).__name__}: {exc}; it is left out of the picture"
        )

    def _draw_label(self, planes: tuple[U8, U8, U8], text: str, dst: Rect) -> None:
        # Small tiles (big grids) get a smaller font so the label stays a label.
        size = max(8, min(self._label_px, _even(dst.h / 6)))
        margin = _even(size / 2)
        max_w = dst.w - 2 * margin
        if max_w < size:
            return
        sprite = self._label_sprite(text, size, max_w)
        if sprite is None or sprite.h + 2 * margin > dst.h:
            return
        try:
            _blend(planes, sprite, dst.x + margin, dst.bottom - margin - sprite.h)
        except Exception as exc:  # noqa: BLE001 - a label never ends a recording
            self._labels[(text, size, max_w)] = None
            self._undrawable(text, exc)

    def _label_sprite(self, text: str, size: int, max_w: int) -> _Sprite | None:
        """The label's sprite, cached; None when there is nothing (drawable) to show."""
        key = (text, size, max_w)
        if key in self._labels:
            self._labels.move_to_end(key)
            return self._labels[key]
        try:
            sprite = self._render_label(clean_display_name(text), size, max_w)
        except Exception as exc:  # noqa: BLE001 - whatever Pillow raises for a name, draw none
            sprite = None
            self._undrawable(text, exc)
        self._labels[key] = sprite
        if len(self._labels) > _LABEL_CACHE_SIZE:
            self._labels.popitem(last=False)
        return sprite

    def _render_label(self, text: str, size: int, max_w: int) -> _Sprite | None:
        if not text:
            return None
        font = self._font(size)
        pad = _even(size * 0.5) or 2
        text = self._fit_text(text, font, max_w - 2 * pad)
        left, top, right, bottom = font.getbbox(text)
        w = min(max_w, _even(right - left + 2 * pad + 1))
        h = _even(size + 2 * pad * 0.6 + 1)
        box = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        ImageDraw.Draw(box).rounded_rectangle((0, 0, w - 1, h - 1), radius=max(2, size // 3), fill=_LABEL_BOX_RGBA)
        glyphs = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        # Centre the ink box vertically; bbox offsets differ per font.
        ImageDraw.Draw(glyphs).text((pad - left, (h - (bottom - top)) / 2 - top), text, font=font, fill=_TEXT_RGBA)
        return _sprite_from_rgba(Image.alpha_composite(box, glyphs))

    @staticmethod
    def _fit_text(text: str, font: Font, max_w: int) -> str:
        """``text``, cut with an ellipsis to at most ``max_w`` pixels."""
        if font.getlength(text) <= max_w:
            return text
        low, high = 0, len(text)
        while low < high:  # longest prefix that fits with the ellipsis
            mid = (low + high + 1) // 2
            if font.getlength(text[:mid] + "…") <= max_w:
                low = mid
            else:
                high = mid - 1
        return text[:low] + "…"

    def _slate(self, names: tuple[str, ...], like: tuple[U8, U8, U8]) -> tuple[U8, U8, U8]:
        """Background with a centred title and the participants' names, cached per names."""
        cached = self._slates.get(names)
        if cached is not None and cached[0].shape == like[0].shape:
            self._slates.move_to_end(names)
            return cached
        planes = tuple(p.copy() for p in self._background(like))
        try:
            image = self._slate_image(names)
            x = _even((self.width - image.width) / 2)
            y = _even((self.height - image.height) / 2)
            _blend(planes, _sprite_from_rgba(image), x, y)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - a name never ends a recording: a bare slate
            planes = tuple(p.copy() for p in self._background(like))
            self._undrawable(" | ".join(names), exc)
        self._slates[names] = planes  # type: ignore[assignment]
        if len(self._slates) > _SLATE_CACHE_SIZE:
            self._slates.popitem(last=False)
        return planes  # type: ignore[return-value]

    def _slate_image(self, names: tuple[str, ...]) -> Image.Image:
        title_font = self._font(max(12, _even(self.height / 16)))
        name_font = self._font(self._label_px)
        line_h = int(self._label_px * 1.5)
        title_h = int(title_font.size * 1.6) if isinstance(title_font, ImageFont.FreeTypeFont) else line_h * 2
        max_w = _even(self.width * 0.9)
        max_lines = max(0, (self.height - title_h - 2 * line_h) // line_h)
        lines = []
        for name in names:
            try:
                cleaned = clean_display_name(name)
                if cleaned:
                    # Measured here so a name Pillow cannot lay out is left
                    # out alone, not the whole slate with it.
                    line = self._fit_text(cleaned, name_font, max_w)
                    name_font.getbbox(line, anchor="mm")
                    lines.append(line)
            except Exception as exc:  # noqa: BLE001 - whatever Pillow raises for a name
                self._undrawable(name, exc)
        if len(lines) > max_lines:
            # Too many people to list: show the first ones and a count.
            keep = max(0, max_lines - 1)
            lines = [*lines[:keep], f"and {len(lines) - keep} more"]
        h = min(_even(self.height), _even(title_h + line_h * len(lines) + 2))
        w = max_w
        image = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        draw = ImageDraw.Draw(image)
        draw.text((w / 2, title_h / 2), _TITLE, font=title_font, fill=_TEXT_RGBA, anchor="mm")
        for index, line in enumerate(lines):
            draw.text(
                (w / 2, title_h + line_h * index + line_h / 2),
                line,
                font=name_font,
                fill=(200, 204, 214, 255),
                anchor="mm",
            )
        return image
