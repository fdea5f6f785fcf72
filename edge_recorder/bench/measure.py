"""CPU and memory sampling of the processes under test, and what they ran on.

CPU is read as user + system seconds (``psutil.Process.cpu_times``) at chosen
instants; memory as RSS sampled every ``interval_s`` and kept at its peak
(a sampled peak can miss a spike shorter than the interval; x264 and the
decoders allocate their buffers up front, so the plateau is what counts).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field

import psutil
import trio

__all__ = ["MachineInfo", "RssPeaks", "cpu_seconds", "machine_info", "sample_rss"]


def cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU seconds of one process (its threads included, children not).

    Raises:
        psutil.NoSuchProcess: the process has exited.
    """
    times = process.cpu_times()
    return float(times.user + times.system)


@dataclass
class RssPeaks:
    """Peak RSS per watched process, in bytes."""

    peaks: dict[str, int] = field(default_factory=dict)

    def observe(self, name: str, rss_bytes: int) -> None:
        self.peaks[name] = max(self.peaks.get(name, 0), rss_bytes)


async def sample_rss(processes: dict[str, psutil.Process], peaks: RssPeaks, *, interval_s: float = 0.5) -> None:
    """Sample RSS of every process until cancelled; processes that exit are skipped.

    Cancellation: returns at the next sleep, with ``peaks`` up to date.
    """
    while True:
        for name, process in processes.items():
            try:
                peaks.observe(name, process.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        await trio.sleep(interval_s)


@dataclass(frozen=True)
class MachineInfo:
    """Where a benchmark ran, for the report."""

    cpu_model: str
    logical_cores: int
    physical_cores: int | None
    memory_gib: float
    kernel: str
    python: str
    pyav: str
    libav: str
    ffmpeg_cli: str
    load_average: tuple[float, float, float]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ffmpeg_version(ffmpeg: str) -> str:
    path = shutil.which(ffmpeg)
    if path is None:
        return "not found"
    try:
        first = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"
    match = re.match(r"ffmpeg version (\S+)", first)
    return match.group(1) if match else first


def machine_info(ffmpeg: str = "ffmpeg") -> MachineInfo:
    import av

    libav = av.library_versions.get("libavcodec", ())
    return MachineInfo(
        cpu_model=_cpu_model(),
        logical_cores=os.cpu_count() or 1,
        physical_cores=psutil.cpu_count(logical=False),
        memory_gib=round(psutil.virtual_memory().total / (1 << 30), 1),
        kernel=platform.release(),
        python=platform.python_version(),
        pyav=av.__version__,
        libav="libavcodec " + ".".join(str(v) for v in libav) if libav else "unknown",
        ffmpeg_cli=_ffmpeg_version(ffmpeg),
        load_average=os.getloadavg(),
    )
