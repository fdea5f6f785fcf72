"""What a re-render draws when (pure): the manifest read back, the live controls replayed.

``edge-recorder render`` (issue #14) re-composes a recording from its tracks
and ``manifest.json`` (:mod:`edge_recorder.session.manifest` writes it). This
module holds its decisions, with no PyAV and no I/O:

* :func:`parse_manifest` reads the manifest as hostile input: a size bound
  before parsing, every field type-checked, file names that can only name a
  file beside the manifest (``tracks/<safe name>``), at most
  :data:`MAX_TRACKS` tracks and :data:`MAX_EVENTS` events. Anything else is a
  :class:`~edge_recorder.errors.ManifestError`, never a traceback;
* :class:`ControlReplay` answers "which layout, spotlight, overlay and active
  speaker at time t" from the manifest's start layout, its ``updateLayout``
  events and its speaker switches, so the live recording's changes replay
  (``--layout`` overrides the layout name, nothing else);
* :meth:`RecordingPlan.showable` says whether a track may be in the picture
  at t: from its first frame to its last, never while its peer was excluded
  (the ``excludePeer``/``includePeer`` events and the track's ``excluded``
  gaps: a consent decision is kept even where a gap was too short to note).
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_recorder.errors import ManifestError
from edge_recorder.media.layout import CORNERS, LAYOUTS, LayoutName

__all__ = [
    "MAX_EVENTS",
    "MAX_MANIFEST_BYTES",
    "MAX_TRACKS",
    "ControlReplay",
    "LayoutAt",
    "ManifestTrack",
    "RecordingPlan",
    "parse_manifest",
    "render_window",
]

#: A manifest bigger than this is not one we wrote (5000 speaker switches and 1000 tracks fit in ~1 MiB).
MAX_MANIFEST_BYTES = 8 << 20
#: Tracks a manifest may list (the recorder keeps at most 1000 per recording).
MAX_TRACKS = 1000
#: Events and speaker switches read; more are ignored (the recorder writes at most 5000).
MAX_EVENTS = 20000
#: Gaps read per track (the recorder writes at most 1000).
MAX_GAPS = 1000
#: Longest recording a manifest may describe: a day, far beyond RECORDING_MAX_DURATION_S's uses.
MAX_TIME_S = 86400.0

MANIFEST_VERSIONS = (1,)
# What the recorder names track files: tracks/ and the safe characters only, so
# a manifest can never point a reader outside the recording's directory.
_TRACK_FILE = re.compile(r"tracks/[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
_KINDS = ("audio", "video")
_SOURCES = ("camera", "screen", "microphone", "screen-audio")


@dataclass(frozen=True, slots=True)
class ManifestTrack:
    """One track file, as the manifest describes it."""

    file: str
    producer_id: str
    peer_id: str
    display_name: str
    kind: str
    source: str
    codec: str
    start_s: float
    end_s: float
    excluded: tuple[tuple[float, float], ...] = ()
    # Stretches with no media (the manifest's "no-media" gaps: a camera off, a mute, loss).
    silent: tuple[tuple[float, float], ...] = ()

    @property
    def name(self) -> str:
        """The file's own name (the part after ``tracks/``)."""
        return self.file.removeprefix("tracks/")

    @property
    def key(self) -> str:
        """Unique per file (a replaced producer has two files): the compositor's and mixer's key."""
        return self.file

    @property
    def picture_source(self) -> str:
        """The layout's source: ``screen`` for a share, ``camera`` otherwise."""
        return "screen" if self.source == "screen" else "camera"


@dataclass(frozen=True, slots=True)
class LayoutAt:
    """The layout state at one instant."""

    layout: LayoutName = "pip"
    spotlight: str | None = None
    overlay_corner: str = "bottom-right"
    overlay_width_pct: int = 25


@dataclass(frozen=True, slots=True)
class RecordingPlan:
    """A parsed manifest: the tracks and the live controls' history."""

    session_id: str
    tracks: tuple[ManifestTrack, ...]
    start_layout: LayoutAt
    # (at_s, changes) of every updateLayout event, in time order.
    layout_changes: tuple[tuple[float, Mapping[str, Any]], ...] = ()
    # (at_s, peer or None), in time order.
    speaker_switches: tuple[tuple[float, str | None], ...] = ()
    # peer -> [(from_s, to_s)] while excluded (to_s: inf for never included again).
    exclusions: Mapping[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    # The composite's (width, height, fps), when the manifest says.
    video: tuple[int, int, int] | None = None

    @property
    def duration_s(self) -> float:
        """Up to the last frame of any track."""
        return max((t.end_s for t in self.tracks), default=0.0)

    def excluded_at(self, peer_id: str, t: float) -> bool:
        """Whether ``peer_id`` was out of the recording at ``t``."""
        return any(start <= t < end for start, end in self.exclusions.get(peer_id, ()))

    def showable(self, track: ManifestTrack, t: float, *, slack_s: float = 0.0) -> bool:
        """Whether ``track`` may be in the picture (or the mix) at ``t``.

        From its first frame (``slack_s`` early: the frame nearest a tick may
        be half a frame after it) to its last; a camera muted in between
        holds its last picture, as the live composite does.
        """
        if not track.start_s - slack_s <= t <= track.end_s + slack_s:
            return False
        if self.excluded_at(track.peer_id, t):
            return False
        return not any(start <= t < end for start, end in track.excluded)

    def speaker_card_name(self, speaker: str | None, t: float) -> str | None:
        """The speaker's display name when none of their cameras has media at ``t`` (pip shows their card), else None.

        As the live worker decides: a speaker without a camera, or whose camera
        is in a ``no-media`` gap (turned off), is shown by name; an excluded
        speaker, or one the manifest has no track of, is not.
        """
        if speaker is None or self.excluded_at(speaker, t):
            return None
        name: str | None = None
        for track in self.tracks:
            if track.peer_id != speaker:
                continue
            if (
                track.kind == "video"
                and track.picture_source == "camera"
                and self.showable(track, t)
                and not any(start <= t < end for start, end in track.silent)
            ):
                return None
            name = name or track.display_name or None
        return name

    def participants_at(self, t: float) -> list[str]:
        """Names for the slate: whoever has a track at ``t`` and is not excluded."""
        names: list[str] = []
        for track in self.tracks:
            if track.display_name and track.display_name not in names and self.showable(track, t):
                names.append(track.display_name)
        return names


def render_window(plan: RecordingPlan, from_s: float | None, to_s: float | None) -> tuple[float, float]:
    """The ``[from, to)`` to render: clamped to the recording; ManifestError if empty."""
    start = 0.0 if from_s is None else from_s
    end = plan.duration_s if to_s is None else min(to_s, plan.duration_s)
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0:
        raise ManifestError(f"render window {from_s}..{to_s} is not a span of seconds")
    if end <= start:
        raise ManifestError(
            f"nothing to render between {start:.3f} s and {end:.3f} s (the recording lasts {plan.duration_s:.3f} s)"
        )
    return start, end


class ControlReplay:
    """The live controls, replayed: layout and active speaker at any instant.

    Args:
        plan: the parsed manifest.
        layout: a layout that overrides the recorded one (spotlight and
            overlay changes still replay); None replays the recorded one.
        speaker: a peer that overrides the recorded active speaker; None replays it.
    """

    def __init__(self, plan: RecordingPlan, *, layout: LayoutName | None = None, speaker: str | None = None) -> None:
        self._override = layout
        self._speaker_override = speaker
        states: list[LayoutAt] = [plan.start_layout]
        times: list[float] = [-math.inf]
        for at_s, change in plan.layout_changes:
            current = states[-1]
            overlay = _mapping(change.get("overlay"))
            states.append(
                LayoutAt(
                    layout=_layout_name(change.get("layout"), current.layout),
                    spotlight=_spotlight(change, current.spotlight),
                    overlay_corner=_corner(overlay.get("corner"), current.overlay_corner),
                    overlay_width_pct=_width_pct(overlay.get("widthPct"), current.overlay_width_pct),
                )
            )
            times.append(at_s)
        self._layout_times = times
        self._layouts = states
        self._speaker_times = [at for at, _ in plan.speaker_switches]
        self._speakers = [peer for _, peer in plan.speaker_switches]

    def layout_at(self, t: float) -> LayoutAt:
        """The layout state at ``t`` (the last change at or before it)."""
        state = self._layouts[bisect.bisect_right(self._layout_times, t) - 1]
        if self._override is not None and state.layout != self._override:
            state = LayoutAt(self._override, state.spotlight, state.overlay_corner, state.overlay_width_pct)
        return state

    def speaker_at(self, t: float) -> str | None:
        """The active speaker at ``t`` (None before the first switch)."""
        if self._speaker_override is not None:
            return self._speaker_override
        index = bisect.bisect_right(self._speaker_times, t) - 1
        return self._speakers[index] if index >= 0 else None


# --------------------------------------------------------------------------- parsing


def _layout_name(value: Any, default: LayoutName) -> LayoutName:
    for name in LAYOUTS:
        if value == name:
            return name
    return default


def _spotlight(change: Mapping[str, Any], default: str | None) -> str | None:
    if "spotlight" not in change:
        return default
    value = change["spotlight"]
    return value if isinstance(value, str) and len(value) <= 256 else None


def _corner(value: Any, default: str) -> str:
    return value if isinstance(value, str) and value in CORNERS else default


def _width_pct(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 100 else default


def _text(obj: Mapping[str, Any], key: str, *, where: str, limit: int = 256, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise ManifestError(f"{where}: {key!r} must be a string of at most {limit} characters")
    return value


def _seconds(value: Any, *, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_TIME_S:
        raise ManifestError(f"{where}: must be seconds between 0 and {MAX_TIME_S:.0f}")
    return float(value)


def _optional_seconds(value: Any) -> float | None:
    """An event's ``atS``: None (before the timeline started) counts as 0; junk is skipped."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_TIME_S:
        return None
    return float(value)


def _track(entry: Any, index: int) -> ManifestTrack:
    where = f"tracks[{index}]"
    if not isinstance(entry, Mapping):
        raise ManifestError(f"{where} must be an object")
    file = _text(entry, "file", where=where, limit=220)
    if not _TRACK_FILE.fullmatch(file) or ".." in file:
        raise ManifestError(f"{where}: file {file[:60]!r} is not a track's name (tracks/<name>)")
    kind = _text(entry, "kind", where=where)
    if kind not in _KINDS:
        raise ManifestError(f"{where}: kind must be audio or video")
    source = _text(entry, "source", where=where, required=False) or ("microphone" if kind == "audio" else "camera")
    if source not in _SOURCES:
        source = "microphone" if kind == "audio" else "camera"
    start = _seconds(entry.get("startS"), where=f"{where}.startS")
    end = _seconds(entry.get("endS"), where=f"{where}.endS")
    if end < start:
        raise ManifestError(f"{where}: endS is before startS")
    gaps = entry.get("gaps") or []
    if not isinstance(gaps, list):
        raise ManifestError(f"{where}.gaps must be a list")
    excluded: list[tuple[float, float]] = []
    silent: list[tuple[float, float]] = []
    for gap in gaps[:MAX_GAPS]:
        if isinstance(gap, Mapping) and gap.get("reason") in ("excluded", "no-media"):
            span = (_seconds(gap.get("startS"), where=f"{where}.gaps"), _seconds(gap.get("endS"), where=f"{where}.gaps"))
            (excluded if gap.get("reason") == "excluded" else silent).append(span)
    return ManifestTrack(
        file=file,
        producer_id=_text(entry, "producerId", where=where),
        peer_id=_text(entry, "peerId", where=where, required=False),
        display_name=_text(entry, "displayName", where=where, required=False),
        kind=kind,
        source=source,
        codec=_text(entry, "codec", where=where, limit=32).lower(),
        start_s=start,
        end_s=end,
        excluded=tuple(excluded),
        silent=tuple(silent),
    )


def _start_layout(value: Any) -> LayoutAt:
    if not isinstance(value, Mapping):
        return LayoutAt()
    overlay = _mapping(value.get("overlay"))
    base = LayoutAt()
    return LayoutAt(
        layout=_layout_name(value.get("layout"), base.layout),
        spotlight=_spotlight(value, None),
        overlay_corner=_corner(overlay.get("corner"), base.overlay_corner),
        overlay_width_pct=_width_pct(overlay.get("widthPct"), base.overlay_width_pct),
    )


def _video(value: Any) -> tuple[int, int, int] | None:
    if not isinstance(value, Mapping):
        return None
    w, h, fps = (_int(value.get(k)) for k in ("width", "height", "fps"))
    if w is None or h is None or fps is None:
        return None
    if 16 <= w <= 7680 and 16 <= h <= 4320 and w % 2 == 0 and h % 2 == 0 and 1 <= fps <= 120:
        return (w, h, fps)
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _exclusions(events: Sequence[tuple[float, str, Mapping[str, Any]]]) -> dict[str, tuple[tuple[float, float], ...]]:
    open_at: dict[str, float] = {}
    spans: dict[str, list[tuple[float, float]]] = {}
    for at_s, action, params in events:
        peer = params.get("peerId")
        if not isinstance(peer, str):
            continue
        if action == "excludePeer" and peer not in open_at:
            open_at[peer] = at_s
        elif action == "includePeer" and peer in open_at:
            spans.setdefault(peer, []).append((open_at.pop(peer), at_s))
    for peer, start in open_at.items():
        spans.setdefault(peer, []).append((start, math.inf))
    return {peer: tuple(s) for peer, s in spans.items()}


def parse_manifest(data: bytes) -> RecordingPlan:
    """Read a ``manifest.json`` (bytes, as downloaded or read) into a plan.

    Raises:
        ManifestError: too big, not JSON, a version this reader does not
            know, or a field that is not what the schema says.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"the manifest is {len(data)} bytes; a recording's is at most {MAX_MANIFEST_BYTES}")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ManifestError(f"the manifest is not JSON: {str(exc)[:120]}") from None
    if not isinstance(doc, Mapping):
        raise ManifestError("the manifest must be a JSON object")
    version = doc.get("version")
    if isinstance(version, bool) or version not in MANIFEST_VERSIONS:
        raise ManifestError(f"manifest version {str(version)[:20]!r} is not one this recorder reads ({MANIFEST_VERSIONS})")
    session_id = _text(doc, "sessionId", where="manifest")
    raw_tracks = doc.get("tracks")
    if not isinstance(raw_tracks, list) or len(raw_tracks) > MAX_TRACKS:
        raise ManifestError(f"manifest: tracks must be a list of at most {MAX_TRACKS}")
    tracks = tuple(_track(entry, index) for index, entry in enumerate(raw_tracks))
    if len({t.file for t in tracks}) != len(tracks):
        raise ManifestError("manifest: two tracks name the same file")
    events: list[tuple[float, str, Mapping[str, Any]]] = []
    raw_events = doc.get("events")
    for event in (raw_events if isinstance(raw_events, list) else [])[:MAX_EVENTS]:
        if not isinstance(event, Mapping) or not isinstance(event.get("action"), str):
            continue
        at_s = _optional_seconds(event.get("atS"))
        params = event.get("params")
        if at_s is not None and isinstance(params, Mapping):
            events.append((at_s, event["action"], params))
    events.sort(key=lambda e: e[0])  # stable: the order of changes at one instant stays
    switches: list[tuple[float, str | None]] = []
    raw_switches = doc.get("activeSpeaker")
    for switch in (raw_switches if isinstance(raw_switches, list) else [])[:MAX_EVENTS]:
        if not isinstance(switch, Mapping):
            continue
        at_s = _optional_seconds(switch.get("atS"))
        peer = switch.get("peerId")
        if at_s is not None and (peer is None or (isinstance(peer, str) and len(peer) <= 256)):
            switches.append((at_s, peer))
    switches.sort(key=lambda s: s[0])
    return RecordingPlan(
        session_id=session_id,
        tracks=tracks,
        start_layout=_start_layout(doc.get("layout")),
        layout_changes=tuple((at, params) for at, action, params in events if action == "updateLayout"),
        speaker_switches=tuple(switches),
        exclusions=_exclusions(events),
        video=_video(doc.get("video")),
    )
