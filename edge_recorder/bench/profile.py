"""Where one session's CPU goes, by library (issue #15: "profile first").

``just bench --profile`` records one session of the sweep's room (N=1) and,
while it runs, samples its media worker and the receiving process with
Linux ``perf`` (``perf record -F 499 -g -p PID``: CPU cycles, so a waiting
thread costs nothing, unlike a wall-clock sampler). The samples are added up
by the shared object they fell in: ``libx264`` and ``libavcodec`` are work
the ffmpeg CLI does too, ``libpython`` is our interpreter, ``libc`` mostly
copies (``memmove``), ``[kernel]`` system calls and wake-ups.

perf comes from Debian's ``linux-perf``; without it the benchmark says so and
measures nothing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import trio

from edge_recorder.bench.inputs import prepare_inputs
from edge_recorder.bench.sweep import run_point
from edge_recorder.config import Settings

__all__ = ["PROFILE_BEGIN", "PROFILE_END", "Profile", "dso_shares", "grouped", "profile_session", "render_markdown", "sample_count"]

PROFILE_BEGIN = "<!-- profile:begin -->"
PROFILE_END = "<!-- profile:end -->"
#: Media seconds of the profiled session, and how long perf samples it (after the start-up).
SESSION_S = 40.0
SAMPLE_S = 20.0
START_WAIT_S = 5.0

_LINE = re.compile(r"^\s*([0-9.]+)%\s+(\S.*?)\s*$")
# The libraries grouped as the reader thinks of them.
_GROUPS = (
    ("x264 (H.264 encode)", ("libx264",)),
    ("libavcodec (VP8/Opus decode, AAC encode)", ("libavcodec",)),
    ("libswscale (scaling)", ("libswscale",)),
    ("Python interpreter", ("libpython",)),
    ("numpy", ("_multiarray", "numpy")),
    ("libc (copies, malloc, locks)", ("libc.so", "libm.so")),
    ("kernel (syscalls, wake-ups)", ("[kernel",)),
)


@dataclass(frozen=True, slots=True)
class Profile:
    """One process's CPU samples, by group, in percent of its samples."""

    process: str
    samples: int
    shares: tuple[tuple[str, float], ...]


def dso_shares(report: str) -> list[tuple[str, float]]:
    """``perf report --sort dso --stdio -g none`` lines as (object, percent), as printed (pure)."""
    shares = []
    for line in report.splitlines():
        if line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match:
            shares.append((match.group(2), float(match.group(1))))
    return shares


def grouped(shares: Sequence[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    """The objects' percentages added up into :data:`_GROUPS`, the rest as "other" (pure)."""
    totals = {name: 0.0 for name, _ in _GROUPS}
    other = 0.0
    for dso, percent in shares:
        for name, needles in _GROUPS:
            if any(needle in dso for needle in needles):
                totals[name] += percent
                break
        else:
            other += percent
    return (*((name, round(value, 1)) for name, value in totals.items()), ("other", round(other, 1)))


def _perf(pid: int, seconds: float, out: Path) -> Profile | None:
    data = out / f"perf-{pid}.data"
    try:
        name = " ".join(psutil.Process(pid).cmdline()[1:4])
    except psutil.Error:
        return None
    subprocess.run(
        ["perf", "record", "-F", "499", "-g", "-p", str(pid), "-o", str(data), "--", "sleep", str(seconds)],
        capture_output=True,
        timeout=seconds + 60,
    )
    if not data.exists():
        return None
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--no-children", "--sort", "dso", "--stdio", "-g", "none"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return Profile(name, sample_count(report), grouped(dso_shares(report)))


def sample_count(report: str) -> int:
    """The ``# Samples: 3K of event ...`` header as a number (pure; perf rounds to K or M)."""
    match = re.search(r"# Samples: ([0-9.]+)([KM]?)", report)
    if match is None:
        return 0
    return round(float(match.group(1)) * {"": 1, "K": 1000, "M": 1_000_000}[match.group(2)])


def profile_session(settings: Settings, *, say: Callable[[str], None] = print) -> list[Profile]:
    """Record one session of the sweep's room; perf the worker and the receiving process meanwhile."""
    if shutil.which("perf") is None:
        say("profile: perf is not installed (Debian: apt install linux-perf); nothing measured")
        return []
    inputs = prepare_inputs(SESSION_S)
    me = psutil.Process()
    profiles: list[Profile] = []
    with tempfile.TemporaryDirectory(prefix="edge-recorder-profile-") as work:

        def sample() -> None:
            deadline = time.monotonic() + 60
            worker = None
            while worker is None and time.monotonic() < deadline:
                worker = next((c for c in me.children(recursive=True) if "edge_recorder.media.worker" in " ".join(c.cmdline())), None)
                time.sleep(0.2)
            if worker is None:
                return
            time.sleep(START_WAIT_S)
            # The receiving process is this one: perf both at once.
            results: list[Profile | None] = [None, None]
            threads = [
                threading.Thread(target=lambda: results.__setitem__(0, _perf(worker.pid, SAMPLE_S, Path(work)))),
                threading.Thread(target=lambda: results.__setitem__(1, _perf(me.pid, SAMPLE_S, Path(work)))),
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            profiles.extend(p for p in results if p is not None)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        trio.run(lambda: run_point(settings, inputs, 1, SESSION_S, say=say))
        sampler.join(timeout=120)
    for profile in profiles:
        say(f"profile of {profile.process} ({profile.samples} samples):")
        for name, share in profile.shares:
            say(f"  {share:5.1f} %  {name}")
    return profiles


def render_markdown(profiles: Sequence[Profile], *, date: str, machine: str) -> str:
    """The benchmarks.md section: a column per process."""
    if not profiles:
        return f"Not measured {date}: perf was not installed."
    names = [name for name, _ in profiles[0].shares]
    header = "| CPU samples in | " + " | ".join(("media worker" if "worker" in p.process else "receiving process") for p in profiles) + " |"
    rows = [header, "|---|" + "---|" * len(profiles)]
    for name in names:
        rows.append(f"| {name} | " + " | ".join(f"{dict(p.shares)[name]:.1f} %" for p in profiles) + " |")
    rows.append("| samples | " + " | ".join(str(p.samples) for p in profiles) + " |")
    return (
        f"Measured {date} on {machine}: one 720p30 pip session of the sweep's room (N=1, {SESSION_S:g} media-s), "
        f"`perf record -F 499` on each process for {SAMPLE_S:g} s after the first {START_WAIT_S:g} s.\n\n" + "\n".join(rows)
    )
