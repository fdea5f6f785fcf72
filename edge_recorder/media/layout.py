"""Layout geometry of the composited picture: pure, no PyAV, no numpy.

``compute_scene`` turns "who sends video, who speaks, which layout" into a
:class:`Scene`: a z-ordered list of rectangles that the compositor fills. Keeping
this pure means the rules (which share wins, where the overlay goes, how the
grid tiles) are tested exhaustively with Hypothesis without decoding a pixel.

Every coordinate and size is even because the canvas is yuv420p: chroma is
subsampled 2x2, so an odd luma edge would split a chroma sample between two
pictures and smear a coloured fringe along it.

Three layouts:

``pip``
    The newest screen share fills the canvas (letterboxed); the active
    speaker's camera floats in a corner. Without a share the speaker's camera
    fills the canvas. A speaker whose camera is off is shown by a name card
    in the camera's place (``speaker_name``), never by someone else's
    camera: the overlay says who is talking. Without any video: a slate
    (naming everyone, card or not).
``grid``
    Cameras tiled in a near-square grid (``cols = ceil(sqrt(n))``). With a
    share, the share takes the top of the canvas and the cameras sit in a strip
    along the bottom.
``speaker``
    The active speaker's camera (or the spotlighted one) takes the top of the
    canvas; everyone else's camera, after the newest screen share if any,
    sits in a strip along the bottom. People first: for interviews and
    panels, where the share is a side matter. With one camera and no share
    it fills the canvas; with no camera the share does.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, TypeAlias, get_args

__all__ = [
    "CARD_ASPECT",
    "CORNERS",
    "Card",
    "LAYOUTS",
    "LayoutName",
    "LayoutSettings",
    "Placement",
    "Rect",
    "Scene",
    "VideoInput",
    "clean_display_name",
    "compute_scene",
    "fit_rect",
    "inputs_to_decode",
]

#: The layouts :func:`compute_scene` draws (the worker pipe's ``layout`` fields take these).
LayoutName: TypeAlias = Literal["pip", "grid", "speaker"]
LAYOUTS: tuple[LayoutName, ...] = get_args(LayoutName)
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
SOURCES = ("camera", "screen")

# Strip tiles never get wider than 16:9 of the strip height: with one or two
# cameras under a share, full-width cells would only add side bars.
_STRIP_TILE_ASPECT = 16 / 9

# A grid of more tiles than this stops being a picture of anyone; beyond it the
# surplus cameras are dropped (and a 16x16 canvas still gets 2x2 px cells).
_MAX_TILES = 64


# What a name may not carry onto the picture: controls (Cc: NUL, ESC, the
# newline that makes Pillow's text layout raise), formats (Cf: bidi overrides,
# zero-width characters, soft hyphens) and line and paragraph separators
# (Zl, Zp). None of them draws anything a viewer needs.
_UNDRAWABLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def clean_display_name(text: str) -> str:
    """A participant's name as it may be drawn: one line of visible text.

    Participants choose their names. Whitespace of any kind (newline, tab,
    line separator, no-break space) becomes one ordinary space, other
    control and format characters are removed, runs of spaces collapse and
    the ends are trimmed.

    Args:
        text: the name as given.

    Returns:
        The cleaned name; ``""`` when nothing drawable is left (no name).
    """
    kept = "".join(
        " " if ch.isspace() else ch
        for ch in text
        if ch.isspace() or unicodedata.category(ch) not in _UNDRAWABLE_CATEGORIES
    )
    return " ".join(kept.split())


def _even_floor(value: float) -> int:
    """Largest even integer <= ``value`` (0 for negatives)."""
    return max(0, int(math.floor(value)) // 2 * 2)


def _even_round(value: float) -> int:
    """Nearest even integer to ``value`` (ties go up)."""
    return int(math.floor(value / 2 + 0.5)) * 2


@dataclass(frozen=True, slots=True)
class Rect:
    """An axis-aligned rectangle on the canvas, in pixels; all fields even.

    Attributes:
        x: left edge.
        y: top edge.
        w: width.
        h: height.
    """

    x: int
    y: int
    w: int
    h: int

    @property
    def right(self) -> int:
        """One past the last column."""
        return self.x + self.w

    @property
    def bottom(self) -> int:
        """One past the last row."""
        return self.y + self.h

    def contains(self, other: Rect) -> bool:
        """Whether ``other`` lies entirely inside this rectangle."""
        return (
            other.x >= self.x
            and other.y >= self.y
            and other.right <= self.right
            and other.bottom <= self.bottom
        )

    def overlaps(self, other: Rect) -> bool:
        """Whether the two rectangles share at least one pixel."""
        return (
            self.x < other.right
            and other.x < self.right
            and self.y < other.bottom
            and other.y < self.bottom
        )


@dataclass(frozen=True, slots=True)
class VideoInput:
    """One incoming video stream, as the layout sees it.

    Attributes:
        key: unique id of the stream (the compositor's frame key).
        peer_id: the participant who sends it (matched against the active speaker).
        source: ``"camera"`` or ``"screen"``.
        display_name: the participant's name, used for labels.
        width: width of its latest decoded frame; 0 if none decoded yet.
        height: height of its latest decoded frame; 0 if none decoded yet.
            An input without a decoded size is not shown.
    """

    key: str
    peer_id: str
    source: str
    display_name: str
    width: int
    height: int

    @property
    def has_picture(self) -> bool:
        """Whether a frame has been decoded, i.e. whether it can be shown."""
        return self.width > 0 and self.height > 0


@dataclass(frozen=True, slots=True)
class LayoutSettings:
    """Canvas size and layout knobs.

    Attributes:
        width: canvas width in pixels (even).
        height: canvas height in pixels (even).
        overlay_width_pct: pip overlay width, percent of the canvas width (1..100).
        overlay_corner: pip overlay corner, one of :data:`CORNERS`.
        overlay_margin_px: distance of the pip overlay from the canvas edges, pixels.
        strip_height_pct: grid with a share: camera strip height, percent of the
            canvas height (1..90).

    Raises:
        ValueError: a field is out of range (odd canvas size, unknown corner...).
    """

    width: int = 1280
    height: int = 720
    overlay_width_pct: int = 25
    overlay_corner: str = "bottom-right"
    overlay_margin_px: int = 24
    strip_height_pct: int = 20

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise ValueError(f"canvas must be even and >= 16x16, got {self.width}x{self.height}")
        if not 1 <= self.overlay_width_pct <= 100:
            raise ValueError(f"overlay_width_pct must be 1..100, got {self.overlay_width_pct}")
        if self.overlay_corner not in CORNERS:
            raise ValueError(f"overlay_corner must be one of {CORNERS}, got {self.overlay_corner!r}")
        if not 0 <= self.overlay_margin_px * 2 < min(self.width, self.height):
            raise ValueError(f"overlay_margin_px out of range: {self.overlay_margin_px}")
        if not 1 <= self.strip_height_pct <= 90:
            raise ValueError(f"strip_height_pct must be 1..90, got {self.strip_height_pct}")

    @property
    def canvas(self) -> Rect:
        """The whole canvas as a rectangle."""
        return Rect(0, 0, self.width, self.height)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one input's picture goes.

    Attributes:
        key: the input's key.
        dst: where the scaled picture goes (aspect kept, inside ``cell``).
        cell: the area reserved for this input; ``dst`` is centred in it.
        label: text drawn at the bottom-left of ``dst``, or None.
        z: stacking order; higher is drawn later (on top).
        border: draw a thin border around ``dst`` (the pip overlay).
    """

    key: str
    dst: Rect
    cell: Rect
    label: str | None
    z: int
    border: bool


#: A name card has a camera's usual shape (16:9), so the overlay keeps its size when a camera goes off.
CARD_ASPECT = (640, 360)


@dataclass(frozen=True, slots=True)
class Card:
    """A participant shown by name where their camera would be (pip: the speaker with the camera off).

    Attributes:
        name: the display name written on it (cleaned, non-empty).
        dst: the card's rectangle.
        z: stacking order, as :attr:`Placement.z`.
        border: draw the overlay's thin border around it.
    """

    name: str
    dst: Rect
    z: int
    border: bool


@dataclass(frozen=True, slots=True)
class Scene:
    """What to draw for one output frame.

    Attributes:
        placements: pictures to draw, sorted by ``z`` (stable).
        slate_names: participant names for the slate; non-empty only when
            ``placements`` and ``cards`` are empty.
        cards: name cards, drawn after the placements.
    """

    placements: tuple[Placement, ...]
    slate_names: tuple[str, ...]
    cards: tuple[Card, ...] = ()


def fit_rect(src_w: int, src_h: int, cell: Rect) -> Rect:
    """Largest rectangle of aspect ``src_w:src_h`` centred in ``cell``.

    The result is even in every field, lies inside ``cell`` and its aspect is
    within one pixel of the source's (two only when a side clamps to the 2 px
    minimum, for absurd aspects).

    Args:
        src_w: source width, > 0.
        src_h: source height, > 0.
        cell: the (even) rectangle to fit into, at least 2x2.

    Returns:
        The destination rectangle.

    Raises:
        ValueError: a size is not positive.
    """
    if src_w <= 0 or src_h <= 0 or cell.w < 2 or cell.h < 2:
        raise ValueError(f"cannot fit {src_w}x{src_h} into {cell}")
    # Compare aspects in integers so a source of exactly the cell's aspect
    # fills the cell with no rounding bars.
    if src_w * cell.h >= src_h * cell.w:
        w = cell.w
        h = min(cell.h, max(2, _even_round(cell.w * src_h / src_w)))
    else:
        h = cell.h
        w = min(cell.w, max(2, _even_round(cell.h * src_w / src_h)))
    return Rect(cell.x + _even_floor((cell.w - w) / 2), cell.y + _even_floor((cell.h - h) / 2), w, h)


def _label(text: str) -> str | None:
    """Empty names get no label rather than an empty box."""
    return text or None


def _pick_share(shown: Sequence[VideoInput]) -> VideoInput | None:
    """The newest screen share: the last one in input order."""
    shares = [i for i in shown if i.source == "screen"]
    return shares[-1] if shares else None


def _pick_speaker_camera(
    cameras: Sequence[VideoInput], active_speaker: str | None, spotlight: str | None = None
) -> VideoInput | None:
    """The spotlighted peer's camera, else the active speaker's, else the first camera, else None."""
    for peer in (spotlight, active_speaker):
        for cam in cameras:
            if peer is not None and cam.peer_id == peer:
                return cam
    return cameras[0] if cameras else None


def _spotlight_first(cameras: Sequence[VideoInput], spotlight: str | None) -> list[VideoInput]:
    """``cameras`` with the spotlighted peer's first (stable otherwise)."""
    if spotlight is None:
        return list(cameras)
    return sorted(cameras, key=lambda cam: cam.peer_id != spotlight)


def _overlay_cell(width: int, height: int, settings: LayoutSettings) -> Rect:
    """The pip overlay rectangle: the picture's aspect, configured width and corner."""
    margin = _even_floor(settings.overlay_margin_px)
    max_w = settings.width - 2 * margin
    max_h = settings.height - 2 * margin
    w = max(2, min(max_w, _even_round(settings.width * settings.overlay_width_pct / 100)))
    h = max(2, _even_round(w * height / width))
    if h > max_h:
        # A portrait camera at the configured width would not fit: keep the
        # aspect and shrink to the canvas height instead.
        h = max_h
        w = max(2, min(max_w, _even_round(h * width / height)))
    x = margin if settings.overlay_corner.endswith("left") else settings.width - margin - w
    y = margin if settings.overlay_corner.startswith("top") else settings.height - margin - h
    return Rect(x, y, w, h)


def _overlay_dst(width: int, height: int, settings: LayoutSettings) -> tuple[Rect, Rect]:
    """The pip overlay's (dst, cell) for a picture of this size."""
    cell = _overlay_cell(width, height, settings)
    fitted = fit_rect(width, height, cell)
    # The cell already has the picture's aspect; when even rounding still
    # leaves a sliver, hug the corner rather than centre, so the margin to
    # the edges stays exactly as configured.
    x = cell.x if settings.overlay_corner.endswith("left") else cell.right - fitted.w
    y = cell.y if settings.overlay_corner.startswith("top") else cell.bottom - fitted.h
    return Rect(x, y, fitted.w, fitted.h), cell


def _pip(
    shown: Sequence[VideoInput],
    active_speaker: str | None,
    spotlight: str | None,
    settings: LayoutSettings,
    speaker_name: str | None = None,
) -> tuple[list[Placement], list[Card]]:
    canvas = settings.canvas
    share = _pick_share(shown)
    # The share is what people read: full canvas, no label covering it.
    placements = [] if share is None else [Placement(share.key, fit_rect(share.width, share.height, canvas), canvas, None, 0, False)]
    cameras = [i for i in shown if i.source == "camera"]
    card_name = clean_display_name(speaker_name) if speaker_name is not None and active_speaker is not None else ""
    if card_name and shown and not any(spotlight is not None and c.peer_id == spotlight for c in cameras):
        # The speaker's camera is off: their card, not someone else's camera
        # (nor their own last picture) in the speaker's place. A spotlit
        # camera still wins, as it does over a speaker's camera; with no
        # video at all the slate names everyone instead.
        if share is None:
            return [], [Card(card_name, canvas, 0, False)]
        dst, _ = _overlay_dst(*CARD_ASPECT, settings)
        return placements, [Card(card_name, dst, 1, True)]
    camera = _pick_speaker_camera(cameras, active_speaker, spotlight)
    if share is not None:
        if camera is not None:
            dst, cell = _overlay_dst(camera.width, camera.height, settings)
            placements.append(
                Placement(
                    camera.key,
                    dst,
                    cell,
                    _label(camera.display_name),
                    1,
                    True,
                )
            )
    elif camera is not None:
        placements.append(
            Placement(
                camera.key,
                fit_rect(camera.width, camera.height, canvas),
                canvas,
                _label(camera.display_name),
                0,
                False,
            )
        )
    return placements, []


def _tile(cameras: Sequence[VideoInput], area: Rect) -> list[Placement]:
    """Tile cameras in ``area``: ``ceil(sqrt(n))`` columns, incomplete last row centred."""
    n = len(cameras)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    cell_w = _even_floor(area.w / cols)
    cell_h = _even_floor(area.h / rows)
    y0 = area.y + _even_floor((area.h - rows * cell_h) / 2)
    placements = []
    for index, cam in enumerate(cameras):
        row, col = divmod(index, cols)
        in_row = min(cols, n - row * cols)
        x0 = area.x + _even_floor((area.w - in_row * cell_w) / 2)
        cell = Rect(x0 + col * cell_w, y0 + row * cell_h, cell_w, cell_h)
        placements.append(
            Placement(cam.key, fit_rect(cam.width, cam.height, cell), cell, _label(cam.display_name), 0, False)
        )
    return placements


def _strip(cameras: Sequence[VideoInput], area: Rect) -> list[Placement]:
    """One row of cameras along ``area``, centred, tiles at most 16:9."""
    n = len(cameras)
    cell_w = min(_even_floor(area.w / n), max(2, _even_floor(area.h * _STRIP_TILE_ASPECT)))
    x0 = area.x + _even_floor((area.w - n * cell_w) / 2)
    placements = []
    for index, cam in enumerate(cameras):
        cell = Rect(x0 + index * cell_w, area.y, cell_w, area.h)
        placements.append(
            Placement(cam.key, fit_rect(cam.width, cam.height, cell), cell, _label(cam.display_name), 0, False)
        )
    return placements


def _top_and_strip(settings: LayoutSettings) -> tuple[Rect, Rect]:
    """The canvas split into a main area and a strip along the bottom (``strip_height_pct``)."""
    top_h = _even_round(settings.height * (100 - settings.strip_height_pct) / 100)
    top_h = min(settings.height - 2, max(2, top_h))
    return Rect(0, 0, settings.width, top_h), Rect(0, top_h, settings.width, settings.height - top_h)


def _grid(shown: Sequence[VideoInput], spotlight: str | None, settings: LayoutSettings) -> list[Placement]:
    canvas = settings.canvas
    share = _pick_share(shown)
    cameras = _spotlight_first([i for i in shown if i.source == "camera"], spotlight)
    if share is None:
        return _tile(cameras[:_MAX_TILES], canvas) if cameras else []
    share_label = _label(f"{share.display_name} (screen)" if share.display_name else "")
    if not cameras:
        return [Placement(share.key, fit_rect(share.width, share.height, canvas), canvas, share_label, 0, False)]
    top, strip = _top_and_strip(settings)
    # More cameras than 2 px columns cannot be drawn; the surplus is dropped.
    visible = cameras[: max(1, strip.w // 2)]
    return [
        Placement(share.key, fit_rect(share.width, share.height, top), top, share_label, 0, False),
        *_strip(visible, strip),
    ]


def _speaker(
    shown: Sequence[VideoInput], active_speaker: str | None, spotlight: str | None, settings: LayoutSettings
) -> list[Placement]:
    canvas = settings.canvas
    share = _pick_share(shown)
    cameras = [i for i in shown if i.source == "camera"]
    main = _pick_speaker_camera(cameras, active_speaker, spotlight)
    if main is None:
        if share is None:
            return []
        return [Placement(share.key, fit_rect(share.width, share.height, canvas), canvas, None, 0, False)]
    others = [cam for cam in cameras if cam.key != main.key]
    if share is not None:
        # In the strip the share is a tile like the others: say whose it is.
        label = f"{share.display_name} (screen)" if share.display_name else ""
        others.insert(0, replace(share, display_name=label))
    main_label = _label(main.display_name)
    if not others:
        return [Placement(main.key, fit_rect(main.width, main.height, canvas), canvas, main_label, 0, False)]
    top, strip = _top_and_strip(settings)
    visible = others[: max(1, strip.w // 2)]
    return [
        Placement(main.key, fit_rect(main.width, main.height, top), top, main_label, 0, False),
        *_strip(visible, strip),
    ]


def compute_scene(
    layout: str,
    inputs: Sequence[VideoInput],
    active_speaker: str | None,
    participants: Sequence[str],
    settings: LayoutSettings,
    *,
    spotlight: str | None = None,
    speaker_name: str | None = None,
) -> Scene:
    """Decide what goes where on the canvas.

    A spotlight pins one peer's camera, winning over the active speaker. In
    pip it is the main picture, or with a screen share the overlay (the share
    stays what people read); in grid it takes the first cell (of the strip,
    under a share), so it is never the one a full grid leaves out. A
    spotlighted peer without a camera shown changes nothing.

    Args:
        layout: one of :data:`LAYOUTS`.
        inputs: every video input in arrival order (later = newer); inputs
            without a decoded size are ignored.
        active_speaker: peer id of the active speaker, or None.
        participants: display names of everyone in the room, for the slate.
        settings: canvas size and layout knobs.
        spotlight: the peer id pinned as the main picture, or None.
        speaker_name: the active speaker's display name when the speaker has
            no camera on (none, or one that stopped sending); None otherwise.
            In pip the speaker is then a name card in the camera's place (a
            spotlit camera still wins; with no video at all, the slate). An
            empty name changes nothing.

    Returns:
        The scene; ``placements`` sorted by ``z``, and ``slate_names`` set to
        ``participants`` only when neither a picture nor a card is shown.

    Raises:
        ValueError: unknown layout or input source.
    """
    for video in inputs:
        if video.source not in SOURCES:
            raise ValueError(f"input {video.key!r}: unknown source {video.source!r}")
    shown = [i for i in inputs if i.has_picture]
    cards: list[Card] = []
    if layout == "pip":
        placements, cards = _pip(shown, active_speaker, spotlight, settings, speaker_name)
    elif layout == "grid":
        placements = _grid(shown, spotlight, settings)
    elif layout == "speaker":
        placements = _speaker(shown, active_speaker, spotlight, settings)
    else:
        raise ValueError(f"unknown layout {layout!r}, expected one of {LAYOUTS}")
    placements.sort(key=lambda p: p.z)
    slate = () if placements or cards else tuple(participants)
    return Scene(tuple(placements), slate, tuple(cards))


def inputs_to_decode(
    layout: str,
    live: Sequence[VideoInput],
    shown: Sequence[VideoInput],
    active_speaker: str | None,
    settings: LayoutSettings,
    *,
    spotlight: str | None = None,
    speaker_name: str | None = None,
) -> frozenset[str]:
    """Which video inputs must be decoded now: what the layout shows or is about to.

    Decoding is most of a recording's cost, and a room of twenty cameras shows
    one of them in picture-in-picture. The scene is computed twice:

    - *desired*: every live input as if it had a picture (an input without one
      gets a nominal size: the layout needs an aspect, not pixels);
    - *actual*: the inputs that have a picture, live or not (a paused camera
      keeps its last picture), i.e. what is rendered now.

    Both sets are decoded. The desired one so a camera about to be shown gets
    its keyframe; the actual one so the outgoing camera keeps playing until the
    incoming one has a picture ("switch on arrival": no blank overlay, no frozen
    frame of someone who stopped talking while another one is being fetched).

    Args:
        layout: one of :data:`LAYOUTS`.
        live: video inputs currently receiving media, in arrival order.
        shown: video inputs that have a picture (decoded now, or held from
            before they paused), in arrival order.
        active_speaker: the active speaker's peer id.
        settings: canvas and layout knobs.
        spotlight: the pinned peer id (see :func:`compute_scene`).
        speaker_name: as :func:`compute_scene`'s: a speaker shown by a card
            needs no camera decoded.

    Returns:
        Keys of the inputs to decode.
    """
    nominal = [
        i if i.has_picture else replace(i, width=1280 if i.source == "screen" else 640, height=720 if i.source == "screen" else 360)
        for i in live
    ]
    desired = compute_scene(layout, nominal, active_speaker, (), settings, spotlight=spotlight, speaker_name=speaker_name)
    actual = compute_scene(
        layout, [i for i in shown if i.has_picture], active_speaker, (), settings, spotlight=spotlight, speaker_name=speaker_name
    )
    return frozenset(p.key for p in desired.placements) | frozenset(p.key for p in actual.placements)
