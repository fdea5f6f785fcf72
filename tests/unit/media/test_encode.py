"""Fragmented MP4 writer: decode the output with PyAV; the box scanner under random splits."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

from edge_recorder.errors import MediaError
from edge_recorder.media.encode import EncoderSettings, FragmentedMp4Writer
from edge_recorder.media.mp4 import Mp4BoxScanner, fragment_media_end_s, parse_moov_tracks
from tests.unit.media.test_mp4 import split

RATE = 48000
FPS = 30
SMALL = EncoderSettings(width=320, height=240, fps=FPS, video_bitrate_kbps=500, x264_preset="ultrafast")


def grey_frame(width: int, height: int, luma: int) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, "yuv420p")
    for index, plane in enumerate(frame.planes):
        np.frombuffer(memoryview(plane), dtype=np.uint8)[:] = luma if index == 0 else 128
    return frame


def tone(start: int, n: int, freq: float = 440.0, amplitude: float = 0.5) -> npt.NDArray[np.float32]:
    t = np.arange(start, start + n) / RATE
    mono = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([mono, mono], axis=1)


def write_clip(
    path: Path, seconds: float, *, flash_at_s: float | None = None, threaded: bool = False
) -> tuple[FragmentedMp4Writer, list[tuple[int, float]]]:
    """Write ``seconds`` of moving grey frames and a 440 Hz tone (or a beep at ``flash_at_s``)."""
    fragments: list[tuple[int, float]] = []
    writer = FragmentedMp4Writer(path, SMALL, on_fragment=lambda end, t: fragments.append((end, t)))
    n_frames = round(seconds * FPS)
    per_frame = RATE // FPS

    def video() -> None:
        for index in range(n_frames):
            luma = 40 + index % 120
            if flash_at_s is not None:
                luma = 235 if index == round(flash_at_s * FPS) else 16
            writer.encode_video(grey_frame(320, 240, luma), index)

    def audio() -> None:
        # 20 ms blocks, as the mixer produces them.
        block = RATE // 50
        for start in range(0, round(seconds * RATE), block):
            pcm = tone(start, block)
            if flash_at_s is not None:
                beep = round(flash_at_s * RATE)
                pcm = np.where(
                    ((np.arange(start, start + block) >= beep) & (np.arange(start, start + block) < beep + 960))[:, None],
                    pcm,
                    0,
                ).astype(np.float32)
            writer.encode_audio(pcm, start)

    if threaded:
        threads = [threading.Thread(target=video), threading.Thread(target=audio)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        video()
        audio()
    assert n_frames * per_frame > 0
    writer.close()
    writer.close()  # safe twice
    return writer, fragments


def decode_all(path: Path) -> tuple[list[float], npt.NDArray[np.float32], list[av.VideoFrame], int]:
    """Video frame times, all audio (float, interleaved→(n, ch)), frames and error count."""
    times: list[float] = []
    audio: list[npt.NDArray[np.float32]] = []
    frames: list[av.VideoFrame] = []
    errors = 0
    with av.open(str(path)) as container:
        for packet in container.demux():
            try:
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        assert frame.time is not None
                        times.append(frame.time)
                        frames.append(frame)
                    elif isinstance(frame, av.AudioFrame):
                        audio.append(frame.to_ndarray().T.astype(np.float32))
            except av.FFmpegError:
                errors += 1
    pcm = np.concatenate(audio) if audio else np.zeros((0, 2), dtype=np.float32)
    return times, pcm, frames, errors


def test_four_seconds_decode_back(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    started = time.perf_counter()
    writer, fragments = write_clip(path, 4.0)
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(f"\nencode 320x240 ultrafast + AAC, 4 s: {elapsed_ms / (4 * FPS):.2f} ms per video frame (incl. audio)")

    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
        assert (video.codec_context.width, video.codec_context.height) == (320, 240)
        assert audio.codec_context.sample_rate == RATE and audio.codec_context.channels == 2
        assert container.duration is not None
        assert abs(container.duration / av.time_base - 4.0) <= 0.2
    times, pcm, _, errors = decode_all(path)
    assert errors == 0
    assert len(times) == 120 and times[0] == 0.0
    assert abs(times[-1] + 1 / FPS - 4.0) <= 0.2
    assert abs(len(pcm) / RATE - 4.0) <= 0.2
    assert np.sqrt(np.mean(pcm[RATE : 3 * RATE] ** 2)) > 0.2, "audio is not silent"

    assert path.stat().st_size == writer.bytes_written
    assert writer.video_frames == 120 and writer.audio_frames == -(-4 * RATE // 1024)
    # GOP 2 s -> fragments end at 2 s and 4 s.
    assert len(fragments) >= 2 and writer.fragments == len(fragments)
    ends = [end for end, _ in fragments]
    assert ends == sorted(ends) and ends[-1] <= writer.bytes_written
    assert fragments[0][1] == pytest.approx(2.0, abs=0.05)

    # A copy cut at the end of fragment 1 plays, error-free, up to that time.
    cut = tmp_path / "cut.mp4"
    with path.open("rb") as src, cut.open("wb") as dst:
        dst.write(src.read(fragments[0][0]))
    cut_times, cut_pcm, _, cut_errors = decode_all(cut)
    assert cut_errors == 0
    assert len(cut_times) == 60
    assert abs(cut_times[-1] + 1 / FPS - fragments[0][1]) <= 1 / FPS
    assert abs(len(cut_pcm) / RATE - fragments[0][1]) <= 0.05


def test_flash_and_beep_stay_in_sync(tmp_path: Path) -> None:
    path = tmp_path / "sync.mp4"
    write_clip(path, 3.0, flash_at_s=1.0)
    times, pcm, frames, errors = decode_all(path)
    assert errors == 0
    lumas = [float(np.frombuffer(memoryview(f.planes[0]), dtype=np.uint8).mean()) for f in frames]
    flash_s = times[int(np.argmax(lumas))]
    beep_s = int(np.argmax(np.abs(pcm[:, 0]) > 0.1)) / RATE
    assert flash_s == pytest.approx(1.0, abs=0.001)
    assert abs(beep_s - flash_s) <= 0.005, f"A/V offset {1000 * (beep_s - flash_s):.1f} ms"


def test_video_and_audio_from_two_threads(tmp_path: Path) -> None:
    path = tmp_path / "threads.mp4"
    writer, fragments = write_clip(path, 3.0, threaded=True)
    times, pcm, _, errors = decode_all(path)
    assert errors == 0 and len(times) == 90
    assert abs(len(pcm) / RATE - 3.0) <= 0.1
    assert len(fragments) >= 1


def test_audio_gaps_and_overlaps_keep_a_continuous_track(tmp_path: Path) -> None:
    path = tmp_path / "gaps.mp4"
    writer = FragmentedMp4Writer(path, SMALL)
    for index in range(30):
        writer.encode_video(grey_frame(320, 240, 100), index)
    writer.encode_audio(tone(4800, 4800), 4800)  # starts 100 ms late: silence first
    writer.encode_audio(tone(9000, 4800), 9000)  # overlaps by 600 samples
    writer.encode_audio(tone(48000 - 960, 960), 48000 - 960)
    writer.close()
    assert writer.audio_samples_dropped == 600
    _, pcm, _, errors = decode_all(path)
    assert errors == 0
    assert abs(len(pcm) - 48000) <= 1024
    assert np.abs(pcm[: 4800 - 1024]).max() < 0.01


def test_rejects_non_increasing_index_and_use_after_close(tmp_path: Path) -> None:
    writer = FragmentedMp4Writer(tmp_path / "x.mp4", SMALL)
    writer.encode_video(grey_frame(320, 240, 50), 0)
    with pytest.raises(MediaError):
        writer.encode_video(grey_frame(320, 240, 50), 0)
    # A frame of another size is converted, not rejected.
    writer.encode_video(grey_frame(160, 120, 50), 1)
    writer.close()
    with pytest.raises(MediaError):
        writer.encode_video(grey_frame(320, 240, 50), 2)
    with pytest.raises(MediaError):
        writer.encode_audio(tone(0, 1024), 0)


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_callback_failure_surfaces_as_media_error(tmp_path: Path, exc_type: type[BaseException]) -> None:
    def explode(end: int, media_end_s: float) -> None:
        raise exc_type("boom")

    settings_1s = EncoderSettings(width=320, height=240, fps=FPS, x264_preset="ultrafast", keyframe_interval_s=0.5)
    writer = FragmentedMp4Writer(tmp_path / "x.mp4", settings_1s, on_fragment=explode)
    with pytest.raises(MediaError) as info:
        for index in range(60):
            writer.encode_video(grey_frame(320, 240, index), index)
        writer.close()
    assert isinstance(info.value.__cause__, exc_type)
    try:
        writer.close()
    except MediaError:
        pass


def test_unwritable_path_is_media_error(tmp_path: Path) -> None:
    with pytest.raises(MediaError):
        FragmentedMp4Writer(tmp_path / "missing-dir" / "x.mp4", SMALL)


def test_encode_cost_720p_veryfast(tmp_path: Path) -> None:
    """Prints the per-frame cost of the production settings; not asserted."""
    writer = FragmentedMp4Writer(tmp_path / "hd.mp4", EncoderSettings())
    rng = np.random.default_rng(1)
    base = rng.integers(16, 235, size=(720, 1280), dtype=np.uint8)
    frames = []
    for index in range(8):
        frame = grey_frame(1280, 720, 100)
        np.frombuffer(memoryview(frame.planes[0]), dtype=np.uint8).reshape(720, -1)[:, :1280] = np.roll(base, index * 4, axis=1)
        frames.append(frame)
    runs = 60
    started = time.perf_counter()
    for index in range(runs):
        writer.encode_video(frames[index % len(frames)], index)
    elapsed = (time.perf_counter() - started) * 1000 / runs
    writer.close()
    print(f"\nencode 1280x720 veryfast zerolatency threads=1: {elapsed:.2f} ms/frame (panning noise)")


# -- the box scanner on the writer's output (the pure tests are in test_mp4.py) --------


def test_scanner_on_real_output_under_random_splits(tmp_path: Path) -> None:
    path = tmp_path / "real.mp4"
    write_clip(path, 2.5)
    data = path.read_bytes()
    whole = Mp4BoxScanner().feed(data)
    kinds = [kind for kind, _, _ in whole]
    assert kinds[:2] == ["ftyp", "moov"] and kinds[-1] == "mfra"
    assert kinds.count("moof") == kinds.count("mdat") >= 2
    assert whole[-1][2] == len(data)
    rng = np.random.default_rng(3)
    for _ in range(5):
        scanner = Mp4BoxScanner()
        cuts = sorted(rng.integers(0, len(data), size=40).tolist())
        assert [b for piece in split(data, cuts) for b in scanner.feed(piece)] == whole
    # Each fragment ends later than the one before, the last at the clip's end.
    kept = Mp4BoxScanner(keep=("moov", "moof"))
    boxes = kept.feed(data)
    tracks = parse_moov_tracks(kept.pop_body(next(start for kind, start, _ in boxes if kind == "moov")) or b"")
    assert len(tracks) == 2 and RATE in {info.timescale for info in tracks.values()}
    ends = [fragment_media_end_s(kept.pop_body(start) or b"", tracks) for kind, start, _ in boxes if kind == "moof"]
    assert ends == sorted(ends) and ends[-1] == pytest.approx(2.5, abs=0.05)


def test_a_forced_keyframe_is_an_idr_mid_gop(tmp_path: Path) -> None:
    path = tmp_path / "forced.mp4"
    writer = FragmentedMp4Writer(path, SMALL)
    for index in range(12):
        writer.encode_video(grey_frame(320, 240, 40 + index), index, force_keyframe=index == 7)
    writer.close()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        base = stream.time_base
        assert base is not None
        keys = [round(float(p.pts * base) * FPS) for p in container.demux(stream) if p.is_keyframe and p.pts is not None]
    assert keys == [0, 7]
