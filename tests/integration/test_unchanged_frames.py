"""An unchanged picture is not encoded again (issue #15, ``RECORDING_SKIP_UNCHANGED_FRAMES``), from a real sender.

A GStreamer camera sends 5 frames a second to a 30 fps composite: 25 ticks
of 30 would draw the picture the tick before drew. They are not given to
x264; the frame before lasts longer (variable frame rate). The file is
checked as a player sees it: it decodes, its video lasts as long as its
audio, every frame sits on the 1/30 s grid, a seek lands, and a fragment (what
a crash can lose) still comes every keyframe interval however still the picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import pytest
import trio

from edge_recorder.media.mp4 import Mp4BoxScanner, fragment_media_end_s, parse_moov_tracks
from edge_recorder.session.manager import SessionManager
from edge_recorder.session.state import SessionStatus
from edge_recorder.session.stream import StreamSpec
from tests.integration.peers import Producer, gst_opus, gst_video, start_processes, stop_processes
from tests.integration.sync_media import GST

pytestmark = pytest.mark.integration

SEND_S = 5.0


def _fragment_ends(path: Path) -> list[float]:
    scanner = Mp4BoxScanner(keep=("moov", "moof"))
    tracks: dict[int, Any] = {}
    ends = []
    for kind, start, _end in scanner.feed(path.read_bytes()):
        body = scanner.pop_body(start)
        if kind == "moov" and body is not None:
            tracks = parse_moov_tracks(body)
        elif kind == "moof" and body is not None:
            ends.append(fragment_media_end_s(body, tracks))
    return ends


@pytest.mark.skipif(GST is None, reason="GStreamer is installed by scripts/dev")
async def test_a_still_picture_is_encoded_once_and_the_file_still_plays_seeks_and_fragments(
    manager: SessionManager[Any], settings: Any
) -> None:
    assert settings.output.skip_unchanged_frames, "the default"
    cam = Producer("vic-cam", "vic", "video", "camera", "video/VP8", 96, 0x7E0001, display_name="Vic")
    mic = Producer("vic-mic", "vic", "audio", "microphone", "audio/opus", 111, 0x7E0002, display_name="Vic")
    session = await manager.start("room-still", layout="pip")
    ports = {p.producer_id: await session.add_stream(StreamSpec.from_params(p.add_stream_params(session.session_id))) for p in (cam, mic)}
    procs = await start_processes(
        (
            gst_video(cam, "127.0.0.1", ports["vic-cam"]["port"], ports["vic-cam"]["rtcpPort"], rgb=(40, 90, 200), width=320, height=180, fps=5),
            gst_opus(mic, "127.0.0.1", ports["vic-mic"]["port"], frequency_hz=500),
        )
    )
    try:
        await trio.sleep(SEND_S)
    finally:
        await stop_processes(procs)
    await session.stop("host")
    assert session.status is SessionStatus.COMPLETED, session.error
    stats = session.worker_stats
    fps = settings.output.fps
    ticks = stats["frames_encoded"]
    # At 5 new pictures a second, about 5 of every 30 ticks are encoded (and a keyframe each interval).
    print(f"\n{ticks} ticks, {stats['frames_repeated']} repeated")
    assert stats["frames_repeated"] >= ticks * 0.6, stats
    with av.open(str(session.path)) as container:
        video_times = [float(f.time) for f in container.decode(video=0) if f.time is not None]
    with av.open(str(session.path)) as container:
        audio = [f for f in container.decode(audio=0)]
        assert audio[-1].time is not None
        audio_end = float(audio[-1].time) + audio[-1].samples / 48000
        video = container.streams.video[0]
        assert video.time_base is not None
        video_end = float((video.start_time or 0) * video.time_base) + float((video.duration or 0) * video.time_base)
    assert len(video_times) <= ticks - stats["frames_repeated"] + 1, (len(video_times), stats)
    assert all(abs(t * fps - round(t * fps)) < 0.01 for t in video_times), "every frame on the 1/fps grid"
    assert abs(video_end - audio_end) <= 2 / fps, (video_end, audio_end)
    # A seek lands on a keyframe before the instant, and the picture is there.
    with av.open(str(session.path)) as container:
        stream = container.streams.video[0]
        assert stream.time_base is not None
        container.seek(int(2.5 / stream.time_base), stream=stream, backward=True)
        first = next(iter(container.decode(stream)))
        assert first.time is not None and 0.0 <= 2.5 - float(first.time) <= settings.output.keyframe_interval_s + 0.1
    # Fragments every keyframe interval, however still the picture: what a crash can lose stays bounded.
    ends = _fragment_ends(session.path)
    gaps = [b - a for a, b in zip([0.0, *ends], ends)]
    assert len(ends) >= 2 and max(gaps) <= settings.output.keyframe_interval_s + 2 / fps, ends
