"""What is decoded follows what is shown; the overlay follows who speaks; the
timeline survives streams that stop, restart and change SSRC.

Senders are our synthetic SFU's producers (real libvpx/libopus output, RFC 6464
audio levels and Sender Reports on the wire); outputs are decoded with PyAV.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import av
import numpy as np
import pytest
import trio

from edge_recorder.demo.sfu import SyntheticProducer, run_producer
from edge_recorder.media.composite import CARD_RGB
from edge_recorder.demo.sources import CameraSource, ScreenSource, ToneSource
from edge_recorder.session.manager import SessionManager
from edge_recorder.session.session import RecordingSession
from edge_recorder.session.state import SessionStatus
from edge_recorder.session.stream import StreamSpec

pytestmark = pytest.mark.integration

COLOURS = [(220, 60, 50), (40, 90, 220), (40, 180, 60), (200, 180, 40)]


def _camera(i: int, **kw: Any) -> SyntheticProducer:
    return SyntheticProducer(
        f"p{i}-cam", f"p{i}", f"P{i}", "video", "camera", "vp8", CameraSource(f"P{i}", COLOURS[i]), fps=15, bitrate_kbps=300, **kw
    )


def _mic(i: int, amplitude: float) -> SyntheticProducer:
    return SyntheticProducer(f"p{i}-mic", f"p{i}", f"P{i}", "audio", "microphone", "opus", ToneSource(300.0 + 100 * i, amplitude=amplitude))


def _share() -> SyntheticProducer:
    return SyntheticProducer("share", "p0", "P0", "video", "screen", "vp8", ScreenSource(), fps=10, bitrate_kbps=600)


async def _add(session: RecordingSession, producer: SyntheticProducer, senders: trio.Nursery) -> trio.CancelScope:
    ports = await session.add_stream(StreamSpec.from_params(producer.add_stream_params(session.session_id)))
    scope = trio.CancelScope()

    async def send() -> None:
        with scope:
            await run_producer(producer, (ports["ip"], ports["port"]))

    senders.start_soon(send)
    return scope


def _frames(path: Any) -> list[tuple[float, np.ndarray]]:
    with av.open(str(path)) as container:
        return [(float(f.time or 0.0), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def _at(frames: list[tuple[float, np.ndarray]], t: float) -> np.ndarray:
    chosen = frames[0][1]
    for time, frame in frames:
        if time > t:
            break
        chosen = frame
    return chosen


def _near(pixel: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(int(a) - b) <= tol for a, b in zip(pixel, rgb))


def _overlay_point(settings: Any) -> tuple[int, int]:
    w, h = settings.output.width_px, settings.output.height_px
    ow = w * settings.overlay.width_pct // 100
    oh = ow * 9 // 16
    m = settings.overlay.margin_px
    return h - m - oh // 2, w - m - ow // 2


async def _eventually(check: Any, timeout_s: float) -> None:
    """Wait until ``check()`` holds; the machine may be slow, the rule may not be."""
    with trio.move_on_after(timeout_s):
        while not check():
            await trio.sleep(0.1)
    assert check()


def _decoding(session: RecordingSession) -> set[str]:
    return {key for key, s in session.worker_stats.get("streams", {}).items() if s.get("decoding")}


def _receiver(session: RecordingSession, producer_id: str) -> Any:
    return next(r for r in session.streams if r.spec.producer_id == producer_id)


async def test_only_what_is_shown_is_decoded_and_the_overlay_follows_the_loudest(manager: SessionManager, settings: Any) -> None:
    session = await manager.start("room-visible", layout="pip")
    mics = [_mic(i, 0.3 if i == 1 else 0.0) for i in range(4)]
    async with trio.open_nursery() as senders:
        await _add(session, _share(), senders)
        for i in range(4):
            await _add(session, _camera(i), senders)
            await _add(session, mics[i], senders)
        # P1 speaks: the share and P1's camera are decoded, nobody else's.
        await _eventually(lambda: session.active_speaker == "p1" and _decoding(session) == {"share", "p1-cam"}, 10.0)
        await trio.sleep(2.0)
        assert _decoding(session) == {"share", "p1-cam"}
        for i in (0, 2, 3):
            idle = _receiver(session, f"p{i}-cam")
            assert not idle.visible and idle.stats.packets_not_shown > 0
            assert session.worker_stats["streams"][f"p{i}-cam"]["decoded"] == 0
        # P3 takes over; after the hold time the overlay switches.
        mics[1].media.amplitude = 0.0
        mics[3].media.amplitude = 0.3
        switch_at = session.duration_s
        await _eventually(lambda: session.active_speaker == "p3" and _decoding(session) == {"share", "p3-cam"}, 10.0)
        await trio.sleep(2.0)
        await session.stop("host")
        senders.cancel_scope.cancel()
    assert session.status is SessionStatus.COMPLETED, session.error
    frames = _frames(session.path)
    point = _overlay_point(settings)
    assert _near(_at(frames, switch_at - 0.5)[point], COLOURS[1]), "P1's camera expected in the overlay"
    assert _near(frames[-1][1][point], COLOURS[3]), "P3's camera expected in the overlay"
    # The switch happened once and stuck: no flicker back and forth.
    owners = [next((i for i, c in enumerate(COLOURS) if _near(f[point], c)), None) for t, f in frames if t > 2.0]
    changes = sum(1 for a, b in zip(owners, owners[1:]) if a != b and None not in (a, b))
    assert changes == 1, owners


async def test_share_stops_and_restarts_and_a_muted_camera_returns_with_a_new_ssrc(manager: SessionManager, settings: Any) -> None:
    session = await manager.start("room-change", layout="pip")
    await session.set_active_speaker("p0")
    cam = _camera(0)
    async with trio.open_nursery() as senders:
        await _add(session, _mic(0, 0.3), senders)
        camera_sending = await _add(session, cam, senders)
        share = await _add(session, _share(), senders)
        await trio.sleep(3.0)
        # The share stops (producer closed), the camera fills the frame.
        await session.remove_stream("share")
        share.cancel()
        await trio.sleep(3.0)
        # The share comes back as a new producer.
        await _add(session, dataclasses.replace(_share(), producer_id="share-2", ssrc=random.getrandbits(32)), senders)
        await trio.sleep(2.0)
        # The camera mutes for 10 s (no packets at all) ...
        camera_sending.cancel()
        muted_at = session.duration_s
        await trio.sleep(10.0)
        # ... and comes back from a restarted sender with a new SSRC: the
        # documented path, a new addStream under the same producerId (an
        # undeclared SSRC on the old port is a stranger's and is dropped).
        back = dataclasses.replace(cam, ssrc=random.getrandbits(32))
        await _add(session, back, senders)
        receiver = _receiver(session, "p0-cam")
        await trio.sleep(4.0)
        await session.stop("host")
        senders.cancel_scope.cancel()
    assert session.status is SessionStatus.COMPLETED, session.error
    assert receiver.expected_ssrc == back.ssrc and receiver.stats.packets > 0
    assert receiver.stats.ssrc_changes == 0 and receiver.stats.drops["unknown-ssrc"] == 0
    frames = _frames(session.path)
    times = [t for t, _ in frames]
    # Continuous: no hole in the timeline, and as long as the wall clock. A
    # picture that does not change is not encoded again (the frame before
    # lasts longer), but never past a keyframe interval.
    assert max(b - a for a, b in zip(times, times[1:])) <= settings.output.keyframe_interval_s + 2 / settings.output.fps
    assert abs(times[-1] - session.duration_s) < 0.2
    w, h = settings.output.width_px, settings.output.height_px
    middle = (h // 2 + h // 8, w // 2 + w // 4)
    point = _overlay_point(settings)
    assert _near(_at(frames, 2.5)[point], COLOURS[0]) and not _near(_at(frames, 2.5)[middle], COLOURS[0])
    assert _near(_at(frames, 5.0)[middle], COLOURS[0]), "camera full frame while nobody shares"
    assert not _near(_at(frames, 7.5)[middle], COLOURS[0]), "the share is back"
    # While muted the overlay holds the last picture (identical frames) ...
    def overlay(frame: np.ndarray) -> np.ndarray:
        # The camera's top rows carry its moving marker.
        ow = settings.output.width_px * settings.overlay.width_pct // 100
        oh = ow * 9 // 16
        r, c = point
        return frame[r - oh // 2 : r + oh // 2, c - ow // 2 : c + ow // 2].astype(np.int16)

    def moved(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(overlay(a) - overlay(b)).mean())

    def marker_moved(a: np.ndarray, b: np.ndarray) -> float:
        # The marker is a small dot in the top rows: measured there, where
        # it is not averaged away by the rest of the picture.
        band = overlay(a).shape[0] // 8
        return float(np.abs(overlay(a)[:band] - overlay(b)[:band]).mean())

    # Once the camera has been silent for the receiver's idle time (2 s) it
    # is off: the speaker is their name card in the overlay, a still picture
    # (so not encoded again), never a frozen camera nor someone else's.
    ow = settings.output.width_px * settings.overlay.width_pct // 100
    oh = ow * 9 // 16
    card_corner = (point[0] - oh // 2 + 8, point[1] - ow // 2 + 8)
    held = [f for t, f in frames if muted_at + 4.0 < t < muted_at + 9.0]
    assert held and max(moved(held[0], f) for f in held) < 1.0, "a held picture, not a moving one"
    assert all(_near(f[card_corner], CARD_RGB, tol=16) for f in held), "P0's name card in the overlay"
    # ... and after the return it moves again, in P0's colour.
    after = [f for t, f in frames if t > muted_at + 12.0]
    assert _near(after[-1][point], COLOURS[0])
    assert max(marker_moved(after[0], f) for f in after) > 2.0, "the camera moves again"
