"""The baseline: the ffmpeg CLI composes the same PiP from the same bitstreams.

This is the replaced design (one ffmpeg process per recording). It reads the
files :mod:`edge_recorder.bench.inputs` muxed from the very packets the replay
sends, and encodes with the recorder's settings: same canvas, fps, x264
preset, ``tune=zerolatency``, bitrate, fixed GOP, one x264 thread, AAC. It runs
as fast as it can (no ``-re``), so its CPU time is pure work; its CPU-seconds
per media-second compare directly with a real-time session's.

CPU and peak RSS come from ``wait4()``'s rusage of exactly that child.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import av

from edge_recorder.bench.inputs import Inputs
from edge_recorder.config import Settings
from edge_recorder.session.session import OutputOptions

__all__ = ["BaselineResult", "BaselineSettings", "even_round", "ffmpeg_command", "output_args", "overlay_geometry", "run_baseline", "run_ffmpeg"]


def even_round(value: float) -> int:
    return max(2, int(round(value / 2)) * 2)


@dataclass(frozen=True)
class BaselineSettings:
    """The output settings both contenders use."""

    width: int
    height: int
    fps: int
    video_bitrate_kbps: int
    audio_bitrate_kbps: int
    x264_preset: str
    keyframe_interval_s: float
    x264_threads: int
    overlay_width_pct: int
    overlay_margin_px: int
    overlay_corner: str

    @classmethod
    def from_settings(cls, settings: Settings) -> "BaselineSettings":
        # The same output options a session takes from these settings, so the
        # two contenders cannot drift apart.
        output = dataclasses.asdict(OutputOptions.from_settings(settings))
        ours = {f.name for f in dataclasses.fields(cls)}
        return cls(
            **{name: value for name, value in output.items() if name in ours},  # the encoder's, not which outputs
            overlay_width_pct=settings.overlay.width_pct,
            overlay_margin_px=settings.overlay.margin_px,
            overlay_corner=settings.overlay.corner,
        )

    @property
    def keyint(self) -> int:
        return max(1, round(self.fps * self.keyframe_interval_s))


def overlay_geometry(settings: BaselineSettings, camera_size: tuple[int, int]) -> tuple[int, int, str, str]:
    """The pip overlay's width, height and ``overlay`` filter x, y expressions, as the recorder places it (pure)."""
    s = settings
    ow = even_round(s.width * s.overlay_width_pct / 100)
    oh = even_round(ow * camera_size[1] / camera_size[0])
    m = s.overlay_margin_px
    x = str(m) if s.overlay_corner.endswith("left") else f"W-w-{m}"
    y = str(m) if s.overlay_corner.startswith("top") else f"H-h-{m}"
    return ow, oh, x, y


def ffmpeg_command(
    settings: BaselineSettings,
    *,
    screen: Path,
    camera: Path,
    camera_size: tuple[int, int],
    mics: tuple[Path, Path],
    output: Path,
    ffmpeg: str = "ffmpeg",
) -> list[str]:
    """The ffmpeg CLI invocation for the PiP (pure).

    The screen is fitted into the canvas (letterboxed, like the recorder's
    ``fit_rect``), the camera scaled to ``overlay_width_pct`` of the canvas
    width and put in the configured corner ``overlay_margin_px`` from the
    edges, the two microphones mixed. Decoders, filters and x264 all get one
    thread, as the recorder's worker uses.
    """
    s = settings
    ow, oh, x, y = overlay_geometry(s, camera_size)
    graph = ";".join(
        [
            f"[0:v]scale={s.width}:{s.height}:force_original_aspect_ratio=decrease:flags=bilinear,"
            f"pad={s.width}:{s.height}:(ow-iw)/2:(oh-ih)/2,fps={s.fps}[bg]",
            f"[1:v]scale={ow}:{oh}:flags=bilinear[pip]",
            f"[bg][pip]overlay=x={x}:y={y}:eof_action=pass,format=yuv420p[v]",
            "[2:a][3:a]amix=inputs=2:duration=longest[a]",
        ]
    )
    return [
        ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-filter_threads", "1", "-filter_complex_threads", "1",
        "-threads", "1", "-i", str(screen),
        "-threads", "1", "-i", str(camera),
        "-i", str(mics[0]),
        "-i", str(mics[1]),
        "-filter_complex", graph,
        "-map", "[v]", "-map", "[a]",
        *output_args(s, output),
    ]  # fmt: skip


def output_args(settings: BaselineSettings, output: Path) -> list[str]:
    """The encoders' and muxer's arguments both ffmpeg baselines end with: the recorder's settings (pure)."""
    s = settings
    return [
        "-c:v", "libx264", "-preset", s.x264_preset, "-tune", "zerolatency", "-threads", str(s.x264_threads),
        "-b:v", f"{s.video_bitrate_kbps}k", "-g", str(s.keyint), "-keyint_min", str(s.keyint), "-sc_threshold", "0",
        "-r", str(s.fps),
        "-c:a", "aac", "-b:a", f"{s.audio_bitrate_kbps}k", "-ar", "48000", "-ac", "2",
        "-movflags", "frag_keyframe+empty_moov+default_base_moof",
        "-f", "mp4", str(output),
    ]  # fmt: skip


@dataclass(frozen=True)
class BaselineResult:
    """One ffmpeg run."""

    command: list[str]
    cpu_s: float  # user + system of the ffmpeg process
    wall_s: float
    media_s: float  # video frames written / fps
    frames: int
    peak_rss_bytes: int
    returncode: int
    stderr: str

    @property
    def cpu_per_media_s(self) -> float:
        return self.cpu_s / self.media_s if self.media_s else float("nan")

    @property
    def speed(self) -> float:
        """Media seconds per wall second (ffmpeg's ``speed=``)."""
        return self.media_s / self.wall_s if self.wall_s else float("nan")


def _count_video_frames(path: Path) -> int:
    try:
        with av.open(str(path)) as container:
            return sum(1 for p in container.demux(video=0) if p.size)
    except (av.FFmpegError, OSError):
        return 0


def run_baseline(inputs: Inputs, settings: BaselineSettings, output: Path, *, ffmpeg: str = "ffmpeg") -> BaselineResult:
    """Run ffmpeg to completion (blocking) and measure it.

    Raises:
        OSError: ffmpeg cannot be started.
    """
    camera = inputs.stream("camera").definition
    command = ffmpeg_command(
        settings,
        screen=inputs.stream("screen").path,
        camera=inputs.stream("camera").path,
        camera_size=(camera.width, camera.height),
        mics=(inputs.stream("mic-a").path, inputs.stream("mic-b").path),
        output=output,
        ffmpeg=ffmpeg,
    )
    return run_ffmpeg(command, output, fps=settings.fps)


def run_ffmpeg(command: list[str], output: Path, *, fps: int) -> BaselineResult:
    """Run an ffmpeg CLI command to completion (blocking) and measure it; media seconds = video frames in ``output`` / ``fps``.

    Raises:
        OSError: ffmpeg cannot be started.
    """
    started = time.monotonic()
    with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as process:
        assert process.stderr is not None
        stderr = process.stderr.read().decode("utf-8", "replace")
        # wait4 reaps exactly this child and returns its own rusage (not the
        # sum over every child, as RUSAGE_CHILDREN would be).
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    frames = _count_video_frames(output)
    return BaselineResult(
        command=command,
        cpu_s=usage.ru_utime + usage.ru_stime,
        wall_s=wall,
        media_s=frames / fps,
        frames=frames,
        peak_rss_bytes=usage.ru_maxrss * 1024,  # Linux reports KiB
        returncode=process.returncode,
        stderr=stderr[-2000:],
    )
