"""Issue #13 in the media worker: pause/resume into one file, live layout, exclusion.

The worker runs in this process (``MediaWorker.run`` over an in-memory pipe),
so a recording with a pause costs its media time plus the playout delay.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import trio
import trio.testing

from edge_recorder.demo.sources import CameraSource, OpusEncoder, ToneSource, VideoEncoder
from edge_recorder.media import wire
from edge_recorder.media.worker import MediaWorker

WIDTH, HEIGHT, FPS, RATE = 160, 96, 10, 48000


def _worker(path: Path, events: list[dict[str, Any]]) -> MediaWorker:
    config = wire.Configure(
        path=str(path),
        encoder={"width": WIDTH, "height": HEIGHT, "fps": FPS, "x264_preset": "ultrafast", "keyframe_interval_s": 1},
        playout_delay_s=0.1,
    )
    return MediaWorker(config, lambda line: events.append(json.loads(line)))


def _video(encoder: VideoEncoder, camera: CameraSource, start_s: float, end_s: float) -> list[bytes]:
    out = []
    for n in range(round(start_s * FPS), round(end_s * FPS)):
        for data, keyframe in encoder.encode(camera.frame(n / FPS)):
            out.append(wire.encode_media(0, n / FPS, keyframe, data))
    return out


def _audio(encoder: OpusEncoder, tone: ToneSource, start_s: float, end_s: float) -> list[bytes]:
    out = []
    for k in range(round(start_s * 50), round(end_s * 50)):
        for data in encoder.encode(tone.block(k * 960)):
            out.append(wire.encode_media(1, k / 50, False, data))
    return out


async def test_a_pause_is_cut_out_of_one_file(tmp_path: Path) -> None:
    path = tmp_path / "paused.mp4"
    events: list[dict[str, Any]] = []
    worker = _worker(path, events)
    send, receive = trio.testing.memory_stream_one_way_pair()
    camera = CameraSource("Alice", (220, 60, 50), WIDTH, HEIGHT)
    video, opus, tone = VideoEncoder("vp8", WIDTH, HEIGHT, FPS, 200, keyframe_interval_s=1), OpusEncoder(), ToneSource(440.0)
    pause_s, resume_s, stop_s = 0.4, 1.4, 1.8
    messages = [
        wire.encode_control(wire.Start(t0_monotonic=time.monotonic())),
        wire.encode_control(wire.AddStream(0, "cam", "video", "vp8", peer_id="alice", live=True)),
        wire.encode_control(wire.AddStream(1, "mic", "audio", "opus", peer_id="alice")),
        *_video(video, camera, 0, pause_s),
        *_audio(opus, tone, 0, pause_s),
        wire.encode_control(wire.Pause(at_s=pause_s)),
        wire.encode_control(wire.Pause(at_s=pause_s + 0.2)),  # paused already: nothing changes
        wire.encode_control(wire.Resume(at_s=resume_s)),
    ]
    video.force_keyframe = True  # the receivers gate on a keyframe after a pause
    messages += [*_video(video, camera, resume_s, stop_s), *_audio(opus, tone, resume_s, stop_s)]
    messages.append(wire.encode_control(wire.Stop(at_s=stop_s)))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run, receive, wire.MessageReader(), [])
            await send.send_all(b"".join(messages))
            await send.aclose()
    finished = [e for e in events if e["event"] == "finished"]
    expected = stop_s - (resume_s - pause_s)
    assert len(finished) == 1 and abs(finished[0]["duration_s"] - expected) <= 1 / FPS
    assert finished[0]["cut_s"] == 1.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        base = stream.time_base
        assert base is not None
        keys = [round(float(p.pts * base) * FPS) for p in container.demux(stream) if p.is_keyframe and p.pts is not None]
    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(path)) as container:
        pcm = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    audio_samples = pcm.shape[1]
    # The tone plays on after the cut (the mixer followed the jump in media time).
    assert np.abs(pcm[:, int(0.5 * RATE) : int(0.7 * RATE)]).max() > 0.1
    assert round(pause_s * FPS) in keys  # the first frame after the cut is a keyframe
    assert abs(frames / FPS - expected) <= 1 / FPS
    assert abs(audio_samples / RATE - frames / FPS) <= 1024 / RATE


async def test_stop_while_paused_ends_the_file_at_the_pause(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    worker = _worker(tmp_path / "stopped.mp4", events)
    send, receive = trio.testing.memory_stream_one_way_pair()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run, receive, wire.MessageReader(), [])
            await send.send_all(wire.encode_control(wire.Start(t0_monotonic=time.monotonic())))
            await send.send_all(wire.encode_control(wire.Pause(at_s=0.3)))
            await trio.sleep(0.6)  # the clocks wait in the pause, past its instant
            assert worker.frames_encoded == 3 and worker.timeline.paused
            await send.send_all(wire.encode_control(wire.Stop(at_s=5.0)))
            await send.aclose()
    assert [e["duration_s"] for e in events if e["event"] == "finished"] == [0.3]


async def test_layout_spotlight_and_exclusion_are_applied(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    worker = _worker(tmp_path / "never.mp4", events)
    async with trio.open_nursery() as nursery:
        worker._decoders = nursery
        worker.handle_control(wire.AddStream(0, "cam-a", "video", "vp8", peer_id="a", display_name="Alice", live=True))
        worker.handle_control(wire.AddStream(1, "mic-a", "audio", "opus", peer_id="a"))
        worker.handle_control(wire.AddStream(2, "cam-b", "video", "vp8", peer_id="b", display_name="Bob", live=True))
        worker.handle_control(wire.Layout("grid", spotlight="b", overlay_corner="middle", overlay_width_pct=40))
        assert (worker.layout, worker.spotlight) == ("grid", "b")
        assert worker.layout_settings.overlay_width_pct == 40  # the good value stays,
        assert worker.layout_settings.overlay_corner == "bottom-right"  # the bad one is ignored
        assert [e["event"] for e in events] == ["warning"] and "overlay_corner" in events[0]["message"]
        worker.handle_control(wire.Layout("pip"))  # an old message: the pin is released
        assert worker.spotlight is None and worker.layout_settings.overlay_width_pct == 40

        worker.handle_media(wire.MediaMessage(0, 0.0, True, b"frame"))
        worker.mixer.write("mic-a", 0, np.full((100, 2), 0.5, dtype=np.float32))
        worker.handle_control(wire.ExcludePeer(peer_id="a", excluded=True))
        assert worker.streams[0].receive.statistics().current_buffer_used == 0  # queued frames dropped
        assert float(abs(worker.mixer.mix(0, 100)).max()) == 0.0  # buffered audio dropped
        worker._update_wanted(worker._speaker_card_name())
        assert worker._wanted == {2}
        _, _, names = worker._scene_inputs(0.0)
        assert names == ["Bob"]
        worker.handle_control(wire.ExcludePeer(peer_id="a", excluded=True))  # again: nothing changes
        events.clear()
        worker.handle_control(wire.ExcludePeer(peer_id="a", excluded=False))
        assert events == [{"event": "keyframe_needed", "index": 0, "why": "included"}]
        worker._update_wanted(worker._speaker_card_name())
        assert 0 in worker._wanted
        nursery.cancel_scope.cancel()
