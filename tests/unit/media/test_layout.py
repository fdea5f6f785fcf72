"""Layout geometry: Hypothesis invariants plus the pip and grid rules."""

from __future__ import annotations

import math
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_recorder.media.layout import (
    CORNERS,
    LAYOUTS,
    LayoutSettings,
    Placement,
    Rect,
    Scene,
    VideoInput,
    clean_display_name,
    compute_scene,
    fit_rect,
)

even = st.integers(min_value=8, max_value=1200).map(lambda v: v * 2)
sizes = st.integers(min_value=16, max_value=4096)


@st.composite
def settings_st(draw: st.DrawFn) -> LayoutSettings:
    width = draw(st.integers(min_value=80, max_value=1960).map(lambda v: v // 2 * 2))
    height = draw(st.integers(min_value=80, max_value=1080).map(lambda v: v // 2 * 2))
    return LayoutSettings(
        width=width,
        height=height,
        overlay_width_pct=draw(st.integers(min_value=5, max_value=60)),
        overlay_corner=draw(st.sampled_from(CORNERS)),
        overlay_margin_px=draw(st.integers(min_value=0, max_value=min(width, height) // 4)),
        strip_height_pct=draw(st.integers(min_value=5, max_value=50)),
    )


@st.composite
def inputs_st(draw: st.DrawFn) -> list[VideoInput]:
    count = draw(st.integers(min_value=0, max_value=12))
    inputs = []
    for index in range(count):
        decoded = draw(st.booleans()) or index == 0
        inputs.append(
            VideoInput(
                key=f"k{index}",
                peer_id=f"p{draw(st.integers(min_value=0, max_value=5))}",
                source=draw(st.sampled_from(["camera", "camera", "screen"])),
                display_name=draw(st.sampled_from(["", "Alice", "Bob", "Zoë Ñandú"])),
                width=draw(sizes) if decoded else 0,
                height=draw(sizes) if decoded else 0,
            )
        )
    return inputs


def is_even(rect: Rect) -> bool:
    return all(v % 2 == 0 for v in (rect.x, rect.y, rect.w, rect.h))


def aspect_ok(src_w: int, src_h: int, dst: Rect) -> bool:
    """Within 1 px of the source aspect, measured along the shorter fitted side."""
    if dst.w == 2 or dst.h == 2:  # clamped to the 2 px minimum: absurd aspect
        return True
    return min(abs(dst.h - dst.w * src_h / src_w), abs(dst.w - dst.h * src_w / src_h)) <= 1.0


def by_key(scene: Scene) -> dict[str, Placement]:
    return {p.key: p for p in scene.placements}


# -- fit_rect ------------------------------------------------------------------


@given(sizes, sizes, even, even, st.integers(0, 500), st.integers(0, 500))
def test_fit_rect_is_even_inside_and_keeps_aspect(src_w: int, src_h: int, w: int, h: int, x: int, y: int) -> None:
    cell = Rect(x * 2, y * 2, w, h)
    dst = fit_rect(src_w, src_h, cell)
    assert is_even(dst)
    assert cell.contains(dst)
    assert aspect_ok(src_w, src_h, dst)
    # Fills the cell along at least one axis.
    assert dst.w == cell.w or dst.h == cell.h
    # Centred (to the even pixel).
    assert abs((dst.x - cell.x) - (cell.right - dst.right)) <= 2
    assert abs((dst.y - cell.y) - (cell.bottom - dst.bottom)) <= 2


def test_fit_rect_same_aspect_fills_cell_exactly() -> None:
    assert fit_rect(1920, 1080, Rect(0, 0, 1280, 720)) == Rect(0, 0, 1280, 720)


def test_fit_rect_rejects_empty_source() -> None:
    with pytest.raises(ValueError):
        fit_rect(0, 10, Rect(0, 0, 100, 100))


# -- invariants over both layouts ---------------------------------------------------


@given(st.sampled_from(LAYOUTS), inputs_st(), st.none() | st.sampled_from(["p0", "p1", "p9"]), settings_st())
def test_scene_invariants(layout: str, inputs: list[VideoInput], speaker: str | None, settings: LayoutSettings) -> None:
    scene = compute_scene(layout, inputs, speaker, ["Alice", "Bob"], settings)
    canvas = settings.canvas
    sources = {i.key: i for i in inputs}
    zs = [p.z for p in scene.placements]
    assert zs == sorted(zs)
    assert len({p.key for p in scene.placements}) == len(scene.placements)
    for placement in scene.placements:
        video = sources[placement.key]
        assert video.width > 0 and video.height > 0, "undecoded inputs are never shown"
        assert is_even(placement.dst) and is_even(placement.cell)
        assert canvas.contains(placement.cell)
        assert placement.cell.contains(placement.dst)
        assert aspect_ok(video.width, video.height, placement.dst)
    shown = [i for i in inputs if i.width and i.height]
    if shown:
        assert scene.placements and scene.slate_names == ()
    else:
        assert scene.placements == () and scene.slate_names == ("Alice", "Bob")


@given(inputs_st(), settings_st())
def test_grid_cells_do_not_overlap(inputs: list[VideoInput], settings: LayoutSettings) -> None:
    scene = compute_scene("grid", inputs, None, [], settings)
    cells = [p.cell for p in scene.placements]
    for i, a in enumerate(cells):
        for b in cells[i + 1 :]:
            assert not a.overlaps(b)


@given(inputs_st(), st.none() | st.sampled_from(["p0", "p1", "p2"]), st.none() | st.sampled_from(["p0", "p3"]), settings_st())
def test_speaker_rules(
    inputs: list[VideoInput], speaker: str | None, spotlight: str | None, settings: LayoutSettings
) -> None:
    scene = compute_scene("speaker", inputs, speaker, [], settings, spotlight=spotlight)
    shown = [i for i in inputs if i.width and i.height]
    screens = [i for i in shown if i.source == "screen"]
    cameras = [i for i in shown if i.source == "camera"]
    wanted = [c for peer in (spotlight, speaker) for c in cameras if peer is not None and c.peer_id == peer]
    expected = (wanted or cameras)[0] if cameras else None
    placements = scene.placements
    cells = [p.cell for p in placements]
    for i, a in enumerate(cells):
        for b in cells[i + 1 :]:
            assert not a.overlaps(b), "a strip never covers the speaker"
    if expected is None:
        assert [p.key for p in placements] == ([screens[-1].key] if screens else [])
        return
    main = placements[0]
    assert main.key == expected.key and main.label == (expected.display_name or None)
    others = len(cameras) - 1 + (1 if screens else 0)
    if others == 0:
        assert len(placements) == 1 and main.cell == settings.canvas
        return
    # The speaker's area is the biggest; the share, if any, leads the strip.
    assert main.cell.w * main.cell.h >= max(p.cell.w * p.cell.h for p in placements)
    strip = placements[1:]
    assert 1 <= len(strip) <= others
    assert all(p.cell.y == main.cell.bottom for p in strip)
    if screens:
        assert strip[0].key == screens[-1].key
        assert strip[0].label == (f"{screens[-1].display_name} (screen)" if screens[-1].display_name else None)


def test_speaker_layout_puts_the_speaker_on_top_and_the_rest_below() -> None:
    cams = [VideoInput(f"c{i}", f"p{i}", "camera", f"P{i}", 640, 360) for i in range(3)]
    share = VideoInput("s", "p0", "screen", "P0", 1920, 1080)
    scene = compute_scene("speaker", [*cams, share], "p2", [], LayoutSettings(1280, 720))
    assert [p.key for p in scene.placements] == ["c2", "s", "c0", "c1"]
    top = scene.placements[0]
    assert top.cell == Rect(0, 0, 1280, 576) and top.label == "P2"
    assert [p.label for p in scene.placements[1:]] == ["P0 (screen)", "P0", "P1"]


@given(inputs_st(), st.none() | st.sampled_from(["p0", "p1", "p2"]), settings_st())
def test_pip_rules(inputs: list[VideoInput], speaker: str | None, settings: LayoutSettings) -> None:
    scene = compute_scene("pip", inputs, speaker, [], settings)
    shown = [i for i in inputs if i.width and i.height]
    screens = [i for i in shown if i.source == "screen"]
    cameras = [i for i in shown if i.source == "camera"]
    speaker_cams = [c for c in cameras if c.peer_id == speaker]
    expected_cam = (speaker_cams or cameras)[0] if cameras else None
    placements = scene.placements
    if screens:
        share = placements[0]
        assert share.key == screens[-1].key, "the newest share wins"
        assert share.cell == settings.canvas and share.label is None and not share.border
        if expected_cam is None:
            assert len(placements) == 1
            return
        overlay = placements[1]
        assert overlay.key == expected_cam.key and overlay.border and overlay.z > share.z
        assert overlay.label == (expected_cam.display_name or None)
        margin = settings.overlay_margin_px // 2 * 2
        dst, w, h = overlay.dst, settings.width, settings.height
        if settings.overlay_corner.endswith("left"):
            assert dst.x == margin
        else:
            assert dst.right == w - margin
        if settings.overlay_corner.startswith("top"):
            assert dst.y == margin
        else:
            assert dst.bottom == h - margin
        target_w = round(w * settings.overlay_width_pct / 100)
        assert dst.w <= target_w + 2
    elif expected_cam is not None:
        assert len(placements) == 1
        only = placements[0]
        assert only.key == expected_cam.key and only.cell == settings.canvas
        assert only.label == (expected_cam.display_name or None)
    else:
        assert placements == ()


# -- concrete cases ----------------------------------------------------------


def cam(key: str, peer: str, name: str = "", w: int = 640, h: int = 360) -> VideoInput:
    return VideoInput(key, peer, "camera", name or key, w, h)


def screen(key: str, peer: str, name: str = "", w: int = 1920, h: int = 1080) -> VideoInput:
    return VideoInput(key, peer, "screen", name or key, w, h)


def test_pip_share_with_speaker_overlay_bottom_right() -> None:
    settings = LayoutSettings()
    scene = compute_scene(
        "pip", [cam("a", "pa", "Alice"), cam("b", "pb", "Bob"), screen("s", "pa", "Alice")], "pb", [], settings
    )
    placements = by_key(scene)
    assert placements["s"].dst == Rect(0, 0, 1280, 720)
    assert placements["b"].dst == Rect(1280 - 24 - 320, 720 - 24 - 180, 320, 180)
    assert placements["b"].label == "Bob"
    assert "a" not in placements


def test_pip_without_speaker_falls_back_to_first_decoded_camera() -> None:
    inputs = [VideoInput("x", "px", "camera", "X", 0, 0), cam("a", "pa"), cam("b", "pb")]
    scene = compute_scene("pip", inputs, "nobody", [], LayoutSettings())
    assert [p.key for p in scene.placements] == ["a"]


def test_pip_portrait_overlay_fits_the_canvas() -> None:
    settings = LayoutSettings(overlay_width_pct=60)
    scene = compute_scene("pip", [screen("s", "p"), cam("c", "p", w=360, h=1280)], None, [], settings)
    overlay = by_key(scene)["c"]
    assert overlay.dst.h <= 720 - 2 * 24


def test_grid_with_share_puts_cameras_in_bottom_strip() -> None:
    settings = LayoutSettings(strip_height_pct=20)
    inputs = [cam("a", "pa", "Alice"), screen("s", "pb", "Bob"), cam("b", "pb", "Bob")]
    placements = by_key(compute_scene("grid", inputs, None, [], settings))
    assert placements["s"].cell == Rect(0, 0, 1280, 576)
    assert placements["s"].label == "Bob (screen)"
    for key in ("a", "b"):
        assert placements[key].cell.y == 576 and placements[key].cell.bottom == 720
    assert placements["a"].label == "Alice"


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 9, 10, 17])
def test_grid_is_near_square(n: int) -> None:
    inputs = [cam(f"c{i}", f"p{i}") for i in range(n)]
    scene = compute_scene("grid", inputs, None, [], LayoutSettings())
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    assert len(scene.placements) == n
    assert len({p.cell.y for p in scene.placements}) == rows
    assert max(sum(1 for p in scene.placements if p.cell.y == y) for y in {p.cell.y for p in scene.placements}) == cols


def test_slate_when_nothing_decoded() -> None:
    scene = compute_scene("grid", [VideoInput("a", "p", "camera", "A", 0, 0)], None, ["A", "B"], LayoutSettings())
    assert scene == Scene((), ("A", "B"))


def test_rejects_unknown_layout_and_bad_settings() -> None:
    with pytest.raises(ValueError):
        compute_scene("mosaic", [], None, [], LayoutSettings())
    with pytest.raises(ValueError):
        LayoutSettings(width=1281)
    with pytest.raises(ValueError):
        LayoutSettings(overlay_corner="middle")


# -- what to decode -----------------------------------------------------------

from edge_recorder.media.layout import inputs_to_decode  # noqa: E402


def _cam(i: int, picture: bool = True, source: str = "camera") -> VideoInput:
    size = (640, 360) if picture else (0, 0)
    return VideoInput(f"{source}-{i}", f"p{i}", source, f"P{i}", *size)


SETTINGS = LayoutSettings(width=1280, height=720)


def test_twenty_cameras_under_a_share_decode_two_streams() -> None:
    share = VideoInput("share", "p0", "screen", "P0", 1280, 720)
    cams = [_cam(i, picture=(i == 7)) for i in range(20)]
    keys = inputs_to_decode("pip", [share, *cams], [share, cams[7]], "p7", SETTINGS)
    assert keys == {"share", "camera-7"}


def test_a_new_speaker_is_fetched_while_the_old_one_plays_on() -> None:
    cams = [_cam(0), _cam(1, picture=False)]
    # P1 speaks but has no picture yet: decode both until it has one.
    assert inputs_to_decode("pip", cams, [cams[0]], "p1", SETTINGS) == {"camera-0", "camera-1"}
    # P1's picture arrived: P0 is no longer needed.
    cams[1] = _cam(1)
    assert inputs_to_decode("pip", cams, cams, "p1", SETTINGS) == {"camera-1"}


def test_a_paused_camera_keeps_its_picture_but_is_not_a_candidate() -> None:
    paused, live = _cam(0), _cam(1, picture=False)
    # The speaker paused: its last picture stays on screen, and nothing else is fetched
    # for it; the live camera is fetched because the layout would show it next.
    assert inputs_to_decode("pip", [live], [paused], "p0", SETTINGS) == {"camera-0", "camera-1"}
    assert inputs_to_decode("pip", [], [paused], "p0", SETTINGS) == {"camera-0"}


def test_grid_decodes_every_tile() -> None:
    cams = [_cam(i, picture=False) for i in range(5)]
    assert inputs_to_decode("grid", cams, [], None, SETTINGS) == {c.key for c in cams}


@given(
    n=st.integers(min_value=0, max_value=25),
    pictures=st.sets(st.integers(min_value=0, max_value=24)),
    speaker=st.integers(min_value=0, max_value=30),
    share=st.booleans(),
)
def test_pip_never_decodes_more_than_what_two_scenes_show(n: int, pictures: set[int], speaker: int, share: bool) -> None:
    cams = [_cam(i, picture=i in pictures) for i in range(n)]
    live = ([VideoInput("share", "px", "screen", "PX", 1280, 720)] if share else []) + cams
    shown = [c for c in live if c.has_picture]
    keys = inputs_to_decode("pip", live, shown, f"p{speaker}", SETTINGS)
    # At most: the share, the wanted overlay and the one still on screen.
    assert len(keys) <= (1 if share else 0) + 2
    assert keys <= {c.key for c in live}


@given(st.text(max_size=300))
def test_clean_display_name_is_one_trimmed_line_and_idempotent(text: str) -> None:
    name = clean_display_name(text)
    assert clean_display_name(name) == name
    assert name == name.strip() and "  " not in name
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") or (ch.isspace() and ch != " ") for ch in name)


def test_a_spotlight_wins_over_the_active_speaker() -> None:
    settings = LayoutSettings()
    cams = [cam("a", "pa"), cam("b", "pb"), cam("c", "pc")]
    assert [p.key for p in compute_scene("pip", cams, "pb", [], settings, spotlight="pc").placements] == ["c"]
    # With a share the share stays the main picture; the overlay is the spotlight.
    scene = compute_scene("pip", [*cams, screen("s", "pa")], "pb", [], settings, spotlight="pc")
    assert [p.key for p in scene.placements] == ["s", "c"]
    # A spotlight on someone without a camera changes nothing.
    assert [p.key for p in compute_scene("pip", cams, "pb", [], settings, spotlight="zz").placements] == ["b"]
    # In a grid the spotlight takes the first cell.
    grid = compute_scene("grid", cams, None, [], settings, spotlight="pc")
    assert grid.placements[0].key == "c" and grid.placements[0].cell.x == 0
    assert inputs_to_decode("pip", cams, cams, "pb", settings, spotlight="pa") == {"a"}


# -- a speaker whose camera is off: their name card ---------------------------------


@given(
    inputs_st(),
    st.sampled_from(["p0", "p1", "p2"]),
    st.none() | st.sampled_from(["p0", "p3"]),
    st.sampled_from(["Ann", " \n", "Zoë\u200b Ñandú", ""]),
    settings_st(),
)
def test_pip_shows_a_speaker_without_a_camera_by_name_never_by_someone_elses_camera(
    inputs: list[VideoInput], speaker: str, spotlight: str | None, name: str, settings: LayoutSettings
) -> None:
    scene = compute_scene("pip", inputs, speaker, ["Everyone"], settings, spotlight=spotlight, speaker_name=name)
    shown = [i for i in inputs if i.width and i.height]
    screens = [i for i in shown if i.source == "screen"]
    spotlit = [c for c in shown if c.source == "camera" and c.peer_id == spotlight]
    if spotlit or not clean_display_name(name) or not shown:
        # As without a name: a spotlit camera wins, an empty name changes
        # nothing, and with no video at all the slate names everyone.
        assert scene == compute_scene("pip", inputs, speaker, ["Everyone"], settings, spotlight=spotlight)
        return
    (card,) = scene.cards
    assert card.name == clean_display_name(name)
    assert scene.slate_names == ()
    assert is_even(card.dst) and settings.canvas.contains(card.dst)
    assert all(p.key in {s.key for s in screens} for p in scene.placements), "no camera in the speaker's place"
    if screens:
        assert [p.key for p in scene.placements] == [screens[-1].key]
        assert card.border and card.z > scene.placements[0].z
        # Where the overlay goes, with a camera's 16:9 shape.
        camera = compute_scene("pip", [screens[-1], cam("c", speaker)], speaker, [], settings).placements[1]
        assert card.dst == camera.dst
    else:
        assert scene.placements == () and card.dst == settings.canvas and not card.border


def test_a_speaker_shown_by_name_needs_no_camera_decoded() -> None:
    settings = LayoutSettings()
    inputs = [cam("a", "pa", "Alice"), cam("b", "pb", "Bob"), screen("s", "pc", "Carol")]
    # Carol talks with her camera off: before, Alice's camera took her place.
    assert inputs_to_decode("pip", inputs, inputs, "pc", settings) == {"s", "a"}
    assert inputs_to_decode("pip", inputs, inputs, "pc", settings, speaker_name="Carol") == {"s"}
    scene = compute_scene("pip", inputs, "pc", [], settings, speaker_name="Carol")
    assert [p.key for p in scene.placements] == ["s"] and [c.name for c in scene.cards] == ["Carol"]
    # A spotlit camera still wins over the card.
    assert inputs_to_decode("pip", inputs, inputs, "pc", settings, spotlight="pb", speaker_name="Carol") == {"s", "b"}
