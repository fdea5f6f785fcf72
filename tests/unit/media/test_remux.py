"""The audio-only mix (media/remux.py): the composite's AAC copied packet for packet into an M4A."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from edge_recorder.errors import MediaError
from edge_recorder.media.encode import EncoderSettings, FragmentedMp4Writer
from edge_recorder.media.remux import extract_audio


def _composite(path: Path, seconds: float = 1.0) -> None:
    settings = EncoderSettings(width=64, height=64, fps=10, x264_preset="ultrafast", keyframe_interval_s=0.5)
    writer = FragmentedMp4Writer(path, settings)
    frame = av.VideoFrame(64, 64, "yuv420p")
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    t = np.arange(int(48000 * seconds)) / 48000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    writer.encode_audio(np.stack([tone, tone], axis=1), 0)
    for index in range(int(10 * seconds)):
        writer.encode_video(frame, index)
    writer.close()


def _audio_packets(path: Path) -> list[tuple[bytes, float]]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return [(bytes(p), float(p.pts * p.time_base)) for p in container.demux(stream) if p.size and p.pts is not None and p.time_base is not None]


def test_the_mix_is_the_composites_audio_packet_for_packet(tmp_path: Path) -> None:
    composite, mix = tmp_path / "c.mp4", tmp_path / "a.m4a"
    _composite(composite)
    size = extract_audio(composite, mix)
    assert size == mix.stat().st_size and mix.read_bytes()[4:11] == b"ftypM4A"
    with av.open(str(mix)) as container:
        assert [s.type for s in container.streams] == ["audio"]
    assert _audio_packets(mix) == _audio_packets(composite)


def test_never_over_a_file_and_nothing_left_when_there_is_no_audio(tmp_path: Path) -> None:
    composite, mix = tmp_path / "c.mp4", tmp_path / "a.m4a"
    _composite(composite)
    mix.write_bytes(b"someone's")
    with pytest.raises(MediaError, match="exists"):
        extract_audio(composite, mix)
    assert mix.read_bytes() == b"someone's"
    silent = tmp_path / "video-only.mp4"
    with av.open(str(composite)) as source, av.open(str(silent), "w") as out:
        video = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = video
                out.mux(packet)
    with pytest.raises(MediaError, match="no audio"):
        extract_audio(silent, tmp_path / "b.m4a")
    assert not (tmp_path / "b.m4a").exists()
