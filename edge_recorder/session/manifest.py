"""The manifest of a recording's tracks: what each file is and where it sits on the timeline (pure).

Issue #14: beside ``composite.mp4`` every stream may be kept as a track of
its own (``tracks/<file>``), and ``manifest.json`` says what each one is. The
schema (``version`` :data:`MANIFEST_VERSION`) is documented in
docs/control-protocol.md ("The tracks manifest"). All times are seconds on the
**recording's timeline**: the composite's, with pauses cut out, which is also
what each track's own timestamps say (a track's first frame at 12.3 s is at
12.3 s in the composite too).

Nothing here does I/O; the session gathers the pieces and writes the JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge_recorder.media import wire

__all__ = ["MANIFEST_NAME", "MANIFEST_VERSION", "MAX_SPEAKER_SWITCHES", "TrackSource", "build_manifest", "output_time_s"]

MANIFEST_VERSION = 1
#: The manifest's name beside the composite (and the tracks' directory on the node).
MANIFEST_NAME = "manifest.json"
#: Active-speaker switches a manifest lists (the last ones; a long meeting has thousands).
MAX_SPEAKER_SWITCHES = 5000


@dataclass(frozen=True, slots=True)
class TrackSource:
    """What the session knows of the stream behind a track (the worker knows only its key)."""

    producer_id: str
    peer_id: str
    display_name: str
    kind: str
    source: str
    ssrc_changes: int = 0


def output_time_s(media_s: float, pauses: Iterable[Mapping[str, Any]]) -> float:
    """Session media time ``media_s`` on the recording's timeline: the pauses before it cut out.

    ``pauses`` are the state record's intervals (``mediaStartS``,
    ``mediaEndS``; an open one has ``mediaEndS`` null). An instant inside a
    pause maps to the cut's boundary.
    """
    cut = 0.0
    for pause in pauses:
        start = float(pause.get("mediaStartS") or 0.0)
        end_value = pause.get("mediaEndS")
        end = media_s if end_value is None else float(end_value)
        if media_s <= start:
            continue
        cut += max(0.0, min(media_s, end) - start)
    return max(0.0, media_s - cut)


def _event_entry(event: Mapping[str, Any], pauses: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    media = event.get("mediaS")
    return {
        "atS": None if media is None else round(output_time_s(float(media), pauses), 3),
        "action": event.get("action"),
        "params": event.get("params", {}),
        "at": event.get("at"),
    }


def build_manifest(
    *,
    session_id: str,
    room_id: str,
    started_at: str,
    stopped_at: str | None,
    composite: str | None,
    tracks: Sequence[tuple[wire.Track, TrackSource | None]],
    controls: Mapping[str, Any],
    speaker_switches: Sequence[tuple[float, str | None]],
    track_prefix: str = "tracks/",
    layout: Mapping[str, Any] | None = None,
    video: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest's JSON object.

    Args:
        composite: the composite's name beside the manifest (``composite.mp4``), None without one.
        tracks: each track's last ``track`` event and its stream (None: removed and unknown).
        controls: the state record's control keys (``pauses``, ``events``...).
        speaker_switches: (session media time, peer id or None), oldest first.
        track_prefix: where the track files are, relative to the manifest.
        layout: the layout the recording started with (``layoutState``'s
            form); the ``updateLayout`` events change it from there.
        video: the composite's ``{width, height, fps}``.
    """
    pauses = list(controls.get("pauses") or [])
    entries = []
    for event, source in tracks:
        entry: dict[str, Any] = {
            "file": f"{track_prefix}{event.file}",
            "producerId": source.producer_id if source else event.key,
            "peerId": source.peer_id if source else None,
            "displayName": source.display_name if source else None,
            "kind": event.kind,
            "source": source.source if source else None,
            "codec": event.codec,
            "startS": event.first_s,
            "endS": event.last_s,
            "frames": event.frames,
            "skippedFrames": event.skipped,
            "sizeBytes": event.complete_bytes,
            "ssrcChanges": source.ssrc_changes if source else 0,
            "gaps": [{"startS": g.start_s, "endS": g.end_s, "reason": g.reason} for g in event.gaps],
        }
        entries.append(entry)
    switches = [
        {"atS": round(output_time_s(media_s, pauses), 3), "peerId": peer}
        for media_s, peer in list(speaker_switches)[-MAX_SPEAKER_SWITCHES:]
    ]
    return {
        "version": MANIFEST_VERSION,
        "sessionId": session_id,
        "roomId": room_id,
        "startedAt": started_at,
        "stoppedAt": stopped_at,
        "timeline": "seconds on the recording's timeline (the composite's, pauses cut out)",
        "composite": composite,
        "layout": dict(layout) if layout is not None else None,
        "video": dict(video) if video is not None else None,
        "tracks": entries,
        "pauses": [
            {
                "atS": round(output_time_s(float(p.get("mediaStartS") or 0.0), pauses), 3),
                "mediaStartS": p.get("mediaStartS"),
                "mediaEndS": p.get("mediaEndS"),
                "startedAt": p.get("startedAt"),
                "endedAt": p.get("endedAt"),
            }
            for p in pauses
        ],
        "activeSpeaker": switches,
        "events": [_event_entry(e, pauses) for e in controls.get("events") or []],
    }
