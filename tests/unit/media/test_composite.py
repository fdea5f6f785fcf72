"""Compositor: render scenes from PyAV-generated solid frames and check pixels."""

from __future__ import annotations

import time

import av
import numpy as np
import numpy.typing as npt
import pytest
from av.video.reformatter import VideoReformatter
from PIL import ImageDraw

from edge_recorder.media import composite
from edge_recorder.media.composite import Compositor
from edge_recorder.media.layout import LayoutSettings, Placement, Rect, Scene, VideoInput, compute_scene

BG = (24, 26, 33)
RED = (220, 30, 30)
BLUE = (30, 60, 220)
GREEN = (40, 200, 60)


def solid(width: int, height: int, rgb: tuple[int, int, int], fmt: str = "yuv420p") -> av.VideoFrame:
    """A solid-colour frame in ``fmt``, built the way a decoder hands them over."""
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[:] = rgb
    frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
    return VideoReformatter().reformat(frame, format=fmt, threads=1)


def to_rgb(frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
    return np.asarray(frame.to_ndarray(format="rgb24"))


def close_to(pixel: npt.NDArray[np.uint8], rgb: tuple[int, int, int], tol: int = 12) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(rgb)) <= tol))


def pip_scene() -> tuple[Scene, dict[str, av.VideoFrame]]:
    settings = LayoutSettings()  # 1280x720, overlay 25 % bottom-right, margin 24
    inputs = [
        VideoInput("cam", "alice", "camera", "Alice", 640, 360),
        # 4:3 share on a 16:9 canvas: pillarboxed, bars left and right.
        VideoInput("share", "bob", "screen", "Bob", 1440, 1080),
    ]
    scene = compute_scene("pip", inputs, "alice", ["Alice", "Bob"], settings)
    frames = {"cam": solid(640, 360, RED), "share": solid(1440, 1080, BLUE, "yuvj420p")}
    return scene, frames


def test_pip_overlay_share_and_letterbox_colours() -> None:
    scene, frames = pip_scene()
    compositor = Compositor(1280, 720, background=BG)
    out = compositor.render(scene, frames)
    assert (out.width, out.height, out.format.name, out.pts) == (1280, 720, "yuv420p", None)
    rgb = to_rgb(out)
    # Overlay 320x180 at the bottom-right corner (x 936..1256, y 516..696);
    # sample its upper-right interior, clear of the border and the label.
    assert close_to(rgb[540, 1200], RED)
    # The share fills the middle 960 px; everywhere else it shows.
    assert close_to(rgb[100, 640], BLUE)
    assert close_to(rgb[700, 300], BLUE)
    # Pillarbox bars: background colour.
    assert close_to(rgb[360, 40], BG)
    assert close_to(rgb[360, 1270], BG)
    # The overlay's border is light.
    assert rgb[516, 1100].min() > 180
    # The label (white text on a dark box) sits at the overlay's bottom-left.
    label = rgb[640:690, 944:1060]
    assert label.max() > 200 and label.min() < 100


def test_render_never_writes_into_input_frames() -> None:
    scene, frames = pip_scene()
    before = {k: to_rgb(f).copy() for k, f in frames.items()}
    Compositor(1280, 720).render(scene, frames)
    for key, frame in frames.items():
        assert np.array_equal(to_rgb(frame), before[key])


def test_each_render_returns_a_new_frame() -> None:
    scene, frames = pip_scene()
    compositor = Compositor(1280, 720)
    first = compositor.render(scene, frames)
    snapshot = to_rgb(first).copy()
    compositor.render(Scene((), ("X",)), {})
    assert np.array_equal(to_rgb(first), snapshot)


def test_missing_frame_leaves_background() -> None:
    scene, frames = pip_scene()
    rgb = to_rgb(Compositor(1280, 720, background=BG).render(scene, {"cam": frames["cam"]}))
    assert close_to(rgb[100, 640], BG)
    assert close_to(rgb[540, 1200], RED)


def test_slate_is_not_black_and_shows_text() -> None:
    compositor = Compositor(640, 360, background=BG)
    rgb = to_rgb(compositor.render(Scene((), ("Alice", "Bob")), {}))
    assert rgb.mean() > 15
    assert close_to(rgb[5, 5], BG)
    centre = rgb[120:240, 160:480]
    assert centre.max() > 200, "title and names are drawn in light text"


def test_slate_with_no_names_and_many_names() -> None:
    compositor = Compositor(320, 180)
    compositor.render(Scene((), ()), {})
    rgb = to_rgb(compositor.render(Scene((), tuple(f"Person {i}" for i in range(200))), {}))
    assert rgb.max() > 200


def test_odd_sized_input_and_size_change_rebuilds_scaler() -> None:
    compositor = Compositor(320, 240, background=BG)
    placement = Placement("k", Rect(0, 0, 320, 240), Rect(0, 0, 320, 240), None, 0, False)
    scene = Scene((placement,), ())
    assert close_to(to_rgb(compositor.render(scene, {"k": solid(333, 251, GREEN)}))[120, 160], GREEN)
    # The camera switches simulcast layer: new size, new format.
    assert close_to(to_rgb(compositor.render(scene, {"k": solid(160, 120, RED, "yuv444p")}))[120, 160], RED)
    compositor.forget("k")
    compositor.forget("never-seen")


def test_grid_labels_render_with_fallback_font() -> None:
    compositor = Compositor(640, 360, font_path="/nonexistent/font.ttf")
    inputs = [VideoInput(f"c{i}", f"p{i}", "camera", f"A rather long display name {i}", 320, 240) for i in range(5)]
    scene = compute_scene("grid", inputs, None, [], LayoutSettings(width=640, height=360))
    frames = {f"c{i}": solid(320, 240, GREEN) for i in range(5)}
    rgb = to_rgb(compositor.render(scene, frames))
    assert rgb.max() > 200  # white label text


def test_rejects_odd_canvas() -> None:
    with pytest.raises(ValueError):
        Compositor(641, 360)


def test_timing_per_720p_frame() -> None:
    """Prints the per-frame cost; not asserted (CI machines vary)."""
    scene, frames = pip_scene()
    compositor = Compositor(1280, 720)
    for _ in range(5):
        compositor.render(scene, frames)
    runs = 100
    start = time.perf_counter()
    for _ in range(runs):
        compositor.render(scene, frames)
    total_ms = (time.perf_counter() - start) * 1000 / runs
    # The same scene with pre-scaled inputs, so the reformatter returns its
    # input untouched: the compositing cost alone.
    prescaled = {p.key: solid(p.dst.w, p.dst.h, RED) for p in scene.placements}
    for _ in range(5):
        compositor.render(scene, prescaled)
    start = time.perf_counter()
    for _ in range(runs):
        compositor.render(scene, prescaled)
    composite_ms = (time.perf_counter() - start) * 1000 / runs
    print(
        f"\ncomposite 720p pip: {total_ms:.3f} ms/frame incl. scaling (1440x1080 share + 640x360 cam), "
        f"{composite_ms:.3f} ms/frame excluding scaling"
    )


# -- hostile names: participants choose them, and no name may end a recording --

HOSTILE_NAMES = [
    "Evil\nName",
    "\r\n",
    "tab\there",
    "nul\x00byte",
    "\x1b[31mred\x1b[0m",
    "\u202eevil override\u202c",
    "\u2066isolate\u2069 \u200f",
    "line\u2028para\u2029sep",
    "😀" * 60 + "👨\u200d👩\u200d👧\u200d👦",
    "x" * 10_000,
    "e" + "\u0301" * 2_000,
    "\ufeffbom",
    "\ud800 lone surrogate",
    "\U0010ffff\ue000 private",
    "",
    "   ",
    "\x00\x01\x02",
]


@pytest.mark.parametrize("font_path", [None, "/nonexistent/font.ttf"])
@pytest.mark.parametrize("layout", ["pip", "grid"])
def test_hostile_names_never_raise_in_labels_or_slate(font_path: str | None, layout: str) -> None:
    compositor = Compositor(640, 360, font_path=font_path)
    settings = LayoutSettings(width=640, height=360)
    for name in HOSTILE_NAMES:
        inputs = [VideoInput("cam", "p1", "camera", name, 320, 240), VideoInput("cam2", "p2", "camera", "Bob", 320, 240)]
        scene = compute_scene(layout, inputs, "p1", [name, "Bob"], settings)
        out = compositor.render(scene, {"cam": solid(320, 240, GREEN), "cam2": solid(320, 240, RED)})
        assert (out.width, out.height) == (640, 360)
        compositor.render(Scene((), (name, "Bob")), {})  # the slate


def test_a_name_with_a_newline_is_drawn_on_one_line() -> None:
    placement = Placement("k", Rect(0, 0, 640, 360), Rect(0, 0, 640, 360), "Evil\nName", 0, False)
    compositor = Compositor(640, 360, background=BG)
    rgb = to_rgb(compositor.render(Scene((placement,), ()), {"k": solid(640, 360, GREEN)}))
    label = rgb[300:350, 8:200]
    assert label.max() > 200 and label.min() < 100  # white text on the dark box


def test_any_failure_to_draw_a_label_draws_none_and_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bypass the cleaning: whatever Pillow raises for a string costs only its label."""

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("raqm_layout() failed")

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", broken)
    warnings: list[str] = []
    compositor = Compositor(640, 360, background=BG, on_warning=warnings.append)
    placement = Placement("k", Rect(0, 0, 640, 360), Rect(0, 0, 640, 360), "Alice", 0, False)
    for _ in range(5):
        rgb = to_rgb(compositor.render(Scene((placement,), ()), {"k": solid(640, 360, GREEN)}))
        assert close_to(rgb[330, 40], GREEN), "no label box: the picture shows through"
        compositor.render(Scene((), ("Alice", "Bob")), {})
    # One warning per name (the label's and the slate's), not one per frame.
    assert len(warnings) == len(set(warnings)) and 1 <= len(warnings) <= 3
    assert "'Alice'" in warnings[0] and "RuntimeError: raqm_layout() failed" in warnings[0]
    assert compositor.label_failures >= 1


def test_numpy_failure_in_a_label_draws_none(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_image: object) -> None:
        raise ValueError("cannot reshape array")

    monkeypatch.setattr(composite, "_sprite_from_rgba", broken)
    warnings: list[str] = []
    compositor = Compositor(320, 180, on_warning=warnings.append)
    placement = Placement("k", Rect(0, 0, 320, 180), Rect(0, 0, 320, 180), "Alice", 0, False)
    compositor.render(Scene((placement,), ()), {"k": solid(320, 180, GREEN)})
    out = compositor.render(Scene((), ("Alice",)), {})
    assert close_to(to_rgb(out)[90, 160], (24, 26, 33)), "a bare slate"
    # Reported once per name, counted per failure.
    assert len(warnings) == 1 and compositor.label_failures == 2


def test_a_name_card_is_a_tile_with_the_name_and_the_overlays_border() -> None:
    settings = LayoutSettings()
    share = VideoInput("share", "bob", "screen", "Bob", 1280, 720)
    scene = compute_scene("pip", [share], "carol", ["Bob", "Carol"], settings, speaker_name="Carol")
    (card,) = scene.cards
    compositor = Compositor(1280, 720, background=BG)
    rgb = to_rgb(compositor.render(scene, {"share": solid(1280, 720, BLUE)}))
    d = card.dst
    assert (d.w, d.h) == (320, 180)  # where a 640x360 camera's overlay goes
    assert close_to(rgb[d.y + 10, d.x + 10], composite.CARD_RGB)  # the tile
    assert rgb[d.y, d.x + d.w // 2].min() > 180  # the border
    middle = rgb[d.y + d.h // 2 - 12 : d.y + d.h // 2 + 12, d.x + 40 : d.x + d.w - 40]
    assert middle.max() > 200, "white text in the middle"
    assert close_to(rgb[100, 640], BLUE), "the share around it"
    # Without a share the card fills the canvas, in place of Bob's camera.
    bob = VideoInput("bcam", "bob", "camera", "Bob", 640, 360)
    alone = compute_scene("pip", [bob], "carol", ["Bob", "Carol"], settings, speaker_name="Carol")
    rgb = to_rgb(compositor.render(alone, {"bcam": solid(640, 360, RED)}))
    assert close_to(rgb[20, 20], composite.CARD_RGB) and close_to(rgb[700, 1260], composite.CARD_RGB)
    assert rgb[340:380, 500:780].max() > 200
