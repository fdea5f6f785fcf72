"""Benchmark figures, the real-time verdict and their presentation (pure: no I/O).

Definitions (docs/benchmarks.md repeats them for readers):

* **CPU-s per media-s, session** = (the worker process's CPU time just before
  stop + the bench process's CPU over the run / N) / media seconds recorded.
  The bench process is the recorder's parent: RTP receive, jitter buffers,
  the pipe to the worker. Media seconds = output timeline length, i.e.
  (frames encoded + frames dropped) / fps. The *replay-window* variant counts
  only the CPU spent while the sender was sending, over that window's length,
  so start-up (imports, encoder set-up, slate frames before the first packet)
  is left out.
* **Real time**: every session completed, dropped frames ≤ 1 % of its frames,
  and the worker's lag stayed under 1 s.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = [
    "BEGIN_MARKER",
    "END_MARKER",
    "Baseline",
    "PointResult",
    "Report",
    "SessionResult",
    "Targets",
    "format_table",
    "format_targets",
    "largest_realtime",
    "render_markdown",
    "replace_marked_section",
]

BEGIN_MARKER = "<!-- bench:begin -->"
END_MARKER = "<!-- bench:end -->"
MIB = 1 << 20
DROP_LIMIT_FRACTION = 0.01
LAG_LIMIT_S = 1.0


# Parent CPU per received RTP packet of a visible stream when issue #15 was filed (its figure).
PARENT_US_PER_PACKET_BEFORE = 150.0


@dataclass(frozen=True)
class Targets:
    """What the issues ask for (#4's sweep, #15's same-work and meeting targets)."""

    max_ratio: float = 1.0
    min_sessions: int = 6
    max_first_frame_s: float = 1.0
    max_rss_mib: float = 150.0
    max_parent_us_per_packet: float = PARENT_US_PER_PACKET_BEFORE / 3
    max_meeting_ratio: float = 0.5


@dataclass(frozen=True)
class SessionResult:
    """One session of one sweep point."""

    status: str
    worker_cpu_s: float  # worker CPU just before stop (start-up included)
    window_cpu_s: float  # worker CPU while the sender was sending
    media_s: float
    frames_encoded: int
    frames_dropped: int
    ingest_drops: int  # receiver drops (not duplicates) + worker queue drops
    keyframe_requests: int
    max_lag_s: float
    peak_rss_bytes: int
    first_frame_s: float | None
    error: str | None = None
    # What the room cost the worker and the receivers (the room-size benchmark
    # reports them; the sweep's sessions fill them in too).
    streams: int = 0
    packets_received: int = 0  # receivers: RTP and RTCP datagrams, every stream
    video_frames_decoded: int = 0  # worker: video frames decoded, every stream
    videos_decoding: int = 0  # worker: video streams it was decoding just before stop
    packets_not_shown: int = 0  # receivers: packets of streams not shown (held, not decoded)
    speaker_switches: int = 0  # active-speaker changes seen after the explicit choice
    active_speaker: str | None = None  # the active speaker just before stop
    frames_repeated: int | None = None  # ticks not encoded again (unchanged picture); None: skipping off

    @property
    def realtime(self) -> bool:
        frames = self.frames_encoded + self.frames_dropped
        return (
            self.status.lower() == "completed"
            and frames > 0
            and self.frames_dropped <= DROP_LIMIT_FRACTION * frames
            and self.max_lag_s < LAG_LIMIT_S
        )


@dataclass(frozen=True)
class PointResult:
    """N concurrent sessions."""

    n: int
    sessions: tuple[SessionResult, ...]
    parent_cpu_s: float  # bench process, sessions' start to just before stop
    parent_window_cpu_s: float  # bench process, while sending
    window_s: float  # wall time the sender was sending (plus the playout tail)
    parent_peak_rss_bytes: int
    sender_cpu_s: float
    sender_late_max_s: float
    logical_cores: int
    system_busy_fraction: float = math.nan  # every process on the machine, during the window

    @property
    def realtime(self) -> bool:
        return len(self.sessions) == self.n and all(s.realtime for s in self.sessions)

    @property
    def cpu_per_media_s(self) -> float:
        """Mean over sessions of (worker CPU + parent CPU / N) / media seconds."""
        return _mean([(s.worker_cpu_s + self.parent_cpu_s / self.n) / s.media_s for s in self.sessions if s.media_s > 0])

    @property
    def parent_us_per_packet(self) -> float:
        """The parent's CPU while the sender sent, per datagram received (RTP and RTCP, every stream), in µs."""
        packets = sum(s.packets_received for s in self.sessions)
        return self.parent_window_cpu_s / packets * 1e6 if packets else math.nan

    @property
    def parent_cpu_per_media_s(self) -> float:
        """The parent's share of :attr:`cpu_per_media_s` (RTP receive, pipe to the worker)."""
        media = _mean([s.media_s for s in self.sessions if s.media_s > 0])
        return self.parent_cpu_s / self.n / media if media and not math.isnan(media) else math.nan

    @property
    def window_cpu_per_media_s(self) -> float:
        if self.window_s <= 0:
            return math.nan
        return _mean([(s.window_cpu_s + self.parent_window_cpu_s / self.n) / self.window_s for s in self.sessions])

    @property
    def machine_busy_fraction(self) -> float:
        """All cores' use during the window: workers + parent + sender."""
        if self.window_s <= 0:
            return math.nan
        total = sum(s.window_cpu_s for s in self.sessions) + self.parent_window_cpu_s + self.sender_cpu_s
        return total / self.window_s / self.logical_cores

    @property
    def other_busy_fraction(self) -> float:
        """What other processes (other people's tests, say) took during the window."""
        return max(0.0, self.system_busy_fraction - self.machine_busy_fraction)

    @property
    def frames_dropped(self) -> int:
        return sum(s.frames_dropped for s in self.sessions)

    @property
    def frames(self) -> int:
        return sum(s.frames_encoded + s.frames_dropped for s in self.sessions)

    @property
    def ingest_drops(self) -> int:
        return sum(s.ingest_drops for s in self.sessions)

    @property
    def max_lag_s(self) -> float:
        return max((s.max_lag_s for s in self.sessions), default=math.nan)

    @property
    def peak_rss_bytes(self) -> int:
        """The largest worker's peak RSS."""
        return max((s.peak_rss_bytes for s in self.sessions), default=0)

    @property
    def first_frame_s(self) -> list[float]:
        return sorted(s.first_frame_s for s in self.sessions if s.first_frame_s is not None)


@dataclass(frozen=True)
class Baseline:
    """The ffmpeg CLI run, as the report needs it."""

    cpu_s: float
    media_s: float
    wall_s: float
    peak_rss_bytes: int
    command: str

    @property
    def cpu_per_media_s(self) -> float:
        return self.cpu_s / self.media_s if self.media_s > 0 else math.nan


@dataclass(frozen=True)
class Report:
    """Everything one run measured."""

    date: str
    seconds: float
    machine: dict[str, Any]
    settings: dict[str, Any]
    inputs: list[dict[str, Any]]  # key, codec, size, fps, kbps
    baseline: Baseline
    points: tuple[PointResult, ...]
    sweep: tuple[int, ...]  # the N that were asked for
    targets: Targets = field(default_factory=Targets)
    # The realistic meeting (bench/meeting.py) when it ran: the recorder's CPU over
    # the ffmpeg CLI's, and whether the session kept real time with 0 frames dropped.
    meeting_ratio: float | None = None
    meeting_clean: bool = False


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def ratio(point: PointResult, baseline: Baseline, *, window: bool = False) -> float:
    """Session CPU per media second over ffmpeg's (< 1: the recorder is cheaper)."""
    ours = point.window_cpu_per_media_s if window else point.cpu_per_media_s
    theirs = baseline.cpu_per_media_s
    return ours / theirs if theirs and not math.isnan(theirs) else math.nan


def largest_realtime(points: Sequence[PointResult], sweep: Sequence[int]) -> tuple[int, bool]:
    """The largest N that stayed real time, and whether a larger N was seen to fail.

    Returns:
        ``(n, bounded)``: ``n`` is 0 when even the smallest N failed;
        ``bounded`` is False when every N tried was real time, i.e. the
        machine may take more than ``n`` (the sweep ran out).
    """
    best = 0
    bounded = False
    for point in sorted(points, key=lambda p: p.n):
        if point.realtime:
            best = max(best, point.n)
        else:
            bounded = True
            break
    if not bounded and sweep and best < max(sweep):
        bounded = True  # stopped for another reason (should not happen)
    return best, bounded


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:.0f}"


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _pct(value: float) -> str:
    return "–" if math.isnan(value) else f"{value * 100:.0f} %"


def _f(value: float, digits: int = 3) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


TABLE_HEADER = (
    "N",
    "real time",
    "CPU-s/media-s",
    "of which parent",
    "(replay window)",
    "ratio vs ffmpeg",
    "dropped frames",
    "ingest drops",
    "max lag s",
    "peak RSS/session MiB",
    "parent RSS MiB",
    "first frame p50/max ms",
    "machine busy",
    "others' load",
)


def table_rows(report: Report) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for p in report.points:
        first = p.first_frame_s
        rows.append(
            (
                str(p.n),
                "yes" if p.realtime else "NO",
                _f(p.cpu_per_media_s),
                _f(p.parent_cpu_per_media_s),
                _f(p.window_cpu_per_media_s),
                _f(ratio(p, report.baseline), 2),
                f"{p.frames_dropped}/{p.frames}",
                str(p.ingest_drops),
                _f(p.max_lag_s, 2),
                f"{p.peak_rss_bytes / MIB:.0f}",
                f"{p.parent_peak_rss_bytes / MIB:.0f}",
                f"{_ms(_median(first))}/{_ms(max(first) if first else None)}",
                _pct(p.machine_busy_fraction),
                _pct(p.other_busy_fraction),
            )
        )
    return rows


def format_table(report: Report) -> str:
    """A fixed-width table for the terminal."""
    rows = [TABLE_HEADER, *table_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEADER))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    b = report.baseline
    lines.append("")
    lines.append(
        f"ffmpeg CLI: {b.cpu_s:.2f} CPU-s for {b.media_s:.1f} media-s = {_f(b.cpu_per_media_s)} CPU-s/media-s "
        f"({b.media_s / b.wall_s if b.wall_s else math.nan:.1f}x real time), peak RSS {b.peak_rss_bytes / MIB:.0f} MiB"
    )
    return "\n".join(lines)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def targets_rows(report: Report) -> list[tuple[str, str, str, str]]:
    """(what, target, reached, met?) for the issue's four targets."""
    t = report.targets
    single = next((p for p in report.points if p.n == 1), report.points[0] if report.points else None)
    r = ratio(single, report.baseline) if single else math.nan
    n, bounded = largest_realtime(report.points, report.sweep)
    # Judged where the machine kept up: an overloaded point's first frame waits in the backlog.
    judged = [p for p in report.points if p.realtime] or list(report.points)
    firsts = [f for p in judged for f in p.first_frame_s]
    worst_first = max(firsts) if firsts else math.nan
    rss = max((p.peak_rss_bytes for p in report.points), default=0) / MIB
    n_text = f"{n}" if bounded else f"≥ {n} (every N tried was real time)"
    at_n = next((p for p in report.points if p.n == n), None)
    r_n = ratio(at_n, report.baseline) if at_n else math.nan
    clean = [p for p in report.points if p.realtime and p.frames_dropped == 0]
    n_clean = max((p.n for p in clean), default=0)
    per_packet = single.parent_us_per_packet if single else math.nan
    rows = [
        ("CPU ratio vs ffmpeg, same settings (N=1)", f"≤ {t.max_ratio:.1f}", _f(r, 2), _yes(r <= t.max_ratio)),
        (f"CPU ratio vs ffmpeg at the largest real-time N ({n})", f"≤ {t.max_ratio:.1f}", _f(r_n, 2), _yes(r_n <= t.max_ratio)),
        ("concurrent 720p30 sessions in real time", f"≥ {t.min_sessions}", n_text, _yes(n >= t.min_sessions)),
        ("… of them with 0 frames dropped", f"≥ {t.min_sessions}", str(n_clean), _yes(n_clean >= t.min_sessions)),
        ("first packet → first composited frame (worst, real-time N)", f"≤ {t.max_first_frame_s * 1000:.0f} ms", _ms(worst_first), _yes(worst_first <= t.max_first_frame_s)),
        ("peak RSS per session (worker, worst)", f"≤ {t.max_rss_mib:.0f} MiB", f"{rss:.0f} MiB", _yes(rss <= t.max_rss_mib)),
        (
            f"parent CPU per received datagram (N=1; {PARENT_US_PER_PACKET_BEFORE:.0f} µs before #15)",
            f"≤ {t.max_parent_us_per_packet:.0f} µs",
            f"{_f(per_packet, 0)} µs",
            _yes(per_packet <= t.max_parent_us_per_packet),
        ),
    ]
    if report.meeting_ratio is not None:
        m = report.meeting_ratio
        rows.append(
            ("realistic meeting: CPU ratio vs ffmpeg (real time, 0 dropped)", f"≤ {t.max_meeting_ratio:.1f}", _f(m, 2), _yes(m <= t.max_meeting_ratio and report.meeting_clean))
        )
    return rows


def format_targets(report: Report) -> str:
    """The targets as terminal lines."""
    return "\n".join(f"  {'met    ' if met == 'yes' else 'NOT met'}  {what}: {reached} (want {wanted})" for what, wanted, reached, met in targets_rows(report))


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def render_markdown(report: Report) -> str:
    """The generated section of docs/benchmarks.md (between the markers)."""
    m = report.machine
    s = report.settings
    b = report.baseline
    load = m.get("load_average")
    lines = [
        f"### Latest run: {report.date}",
        "",
        f"- Machine: {m.get('cpu_model')}, {m.get('logical_cores')} logical cores"
        f" ({m.get('physical_cores')} physical), {m.get('memory_gib')} GiB RAM, Linux {m.get('kernel')}"
        + (f"; load average before the run {load[0]:.2f}" if load else ""),
        f"- Software: Python {m.get('python')}, PyAV {m.get('pyav')} ({m.get('libav')}), ffmpeg CLI {m.get('ffmpeg_cli')}",
        f"- Output (both contenders): {s['width']}x{s['height']}@{s['fps']}, libx264 preset {s['x264_preset']}, "
        f"tune zerolatency, {s['x264_threads']} x264 thread(s), {s['video_bitrate_kbps']} kbps, "
        f"keyframe every {s['keyframe_interval_s']} s (fixed GOP), AAC {s['audio_bitrate_kbps']} kbps; "
        f"overlay {s['overlay_width_pct']} % wide, {s['overlay_margin_px']} px from the {s['overlay_corner']} corner",
        "- Inputs, replayed for " + f"{report.seconds:g} s: "
        + "; ".join(
            f"{i['key']} {i['codec'].upper()} " + (f"{i['width']}x{i['height']}@{i['fps']} " if i.get("width") else "") + f"{i['kbps']:.0f} kbps"
            for i in report.inputs
        ),
        f"- Sweep: N = {', '.join(str(n) for n in report.sweep)}, stopping at the first N that is not real time",
        "",
        _markdown_table(TABLE_HEADER, table_rows(report)),
        "",
        f"ffmpeg CLI baseline: {b.cpu_s:.2f} CPU-s for {b.media_s:.1f} media-s = **{_f(b.cpu_per_media_s)} CPU-s/media-s**, "
        f"{b.media_s / b.wall_s if b.wall_s else math.nan:.1f}x real time, peak RSS {b.peak_rss_bytes / MIB:.0f} MiB.",
        "",
        "Targets:",
        "",
        _markdown_table(("target", "wanted", "reached", "met"), targets_rows(report)),
        "",
        "<details><summary>ffmpeg command</summary>",
        "",
        "```",
        b.command,
        "```",
        "",
        "</details>",
    ]
    return "\n".join(lines)


def replace_marked_section(
    document: str, section: str, *, begin_marker: str = BEGIN_MARKER, end_marker: str = END_MARKER
) -> str:
    """Put ``section`` between the markers, keeping everything around them.

    A document without both markers (in order) gets them, with the section,
    appended at its end. Other sections' markers are never touched.
    """
    block = f"{begin_marker}\n{section.rstrip()}\n{end_marker}"
    begin = document.find(begin_marker)
    end = document.find(end_marker, begin + len(begin_marker)) if begin != -1 else -1
    if begin == -1 or end == -1:
        sep = "" if not document or document.endswith("\n\n") else ("\n" if document.endswith("\n") else "\n\n")
        return f"{document}{sep}{block}\n"
    return document[:begin] + block + document[end + len(end_marker) :]
