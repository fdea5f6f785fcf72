"""The benchmark's pure report code: figures, verdicts, table, marked section."""

from __future__ import annotations

import math

from edge_recorder.bench.report import (
    BEGIN_MARKER,
    END_MARKER,
    Baseline,
    PointResult,
    Report,
    SessionResult,
    format_table,
    largest_realtime,
    ratio,
    render_markdown,
    replace_marked_section,
    targets_rows,
)


def _session(*, cpu: float = 6.0, media: float = 20.0, dropped: int = 0, lag: float = 0.05, status: str = "COMPLETED") -> SessionResult:
    frames = round(media * 30)
    return SessionResult(
        status=status,
        worker_cpu_s=cpu,
        window_cpu_s=cpu - 1.0,
        media_s=media,
        frames_encoded=frames - dropped,
        frames_dropped=dropped,
        ingest_drops=0,
        keyframe_requests=0,
        max_lag_s=lag,
        peak_rss_bytes=120 << 20,
        first_frame_s=0.31,
    )


def _point(n: int, *sessions: SessionResult, parent_cpu: float = 2.0) -> PointResult:
    return PointResult(
        n=n,
        sessions=sessions or tuple(_session() for _ in range(n)),
        parent_cpu_s=parent_cpu,
        parent_window_cpu_s=parent_cpu / 2,
        window_s=20.0,
        parent_peak_rss_bytes=100 << 20,
        sender_cpu_s=1.0,
        sender_late_max_s=0.001,
        logical_cores=2,
    )


BASELINE = Baseline(cpu_s=4.0, media_s=20.0, wall_s=4.0, peak_rss_bytes=90 << 20, command="ffmpeg -i x")


def _report(*points: PointResult) -> Report:
    return Report(
        date="2024-01-01 00:00 UTC",
        seconds=20.0,
        machine={"cpu_model": "Test CPU", "logical_cores": 2, "physical_cores": 1, "memory_gib": 4.0, "kernel": "6", "python": "3.11", "pyav": "1", "libav": "x", "ffmpeg_cli": "5.1", "load_average": (0.1, 0.1, 0.1)},
        settings={"width": 1280, "height": 720, "fps": 30, "video_bitrate_kbps": 2500, "audio_bitrate_kbps": 128, "x264_preset": "veryfast", "keyframe_interval_s": 2.0, "x264_threads": 1, "overlay_width_pct": 25, "overlay_margin_px": 24, "overlay_corner": "bottom-right"},
        inputs=[{"key": "screen", "codec": "vp8", "width": 1280, "height": 720, "fps": 15, "kbps": 1400.0}, {"key": "mic-a", "codec": "opus", "width": 0, "height": 0, "fps": 0, "kbps": 60.0}],
        baseline=BASELINE,
        points=points,
        sweep=tuple(p.n for p in points),
    )


def test_cpu_per_media_second_shares_the_parent_between_sessions() -> None:
    point = _point(2, _session(cpu=6.0), _session(cpu=8.0), parent_cpu=4.0)
    # ((6 + 4/2) / 20 + (8 + 4/2) / 20) / 2
    assert math.isclose(point.cpu_per_media_s, 0.45)
    assert math.isclose(ratio(point, BASELINE), 0.45 / 0.2)
    # window: ((5 + 1) / 20 + (7 + 1) / 20) / 2
    assert math.isclose(point.window_cpu_per_media_s, 0.35)


def test_realtime_needs_few_drops_small_lag_and_completion() -> None:
    assert _session(dropped=6).realtime  # exactly 1 % of 600
    assert not _session(dropped=7).realtime
    assert not _session(lag=1.0).realtime
    assert not _session(status="FAILED").realtime
    assert not _point(2, _session()).realtime  # a session missing


def test_largest_realtime_stops_at_the_first_failure() -> None:
    ok, bad = _point(1), _point(2, _session(), _session(dropped=100))
    assert largest_realtime([ok, bad], [1, 2, 3]) == (1, True)
    assert largest_realtime([ok], [1]) == (1, False)
    assert largest_realtime([_point(1, _session(lag=3.0))], [1, 2]) == (0, True)


def test_targets_report_what_was_reached() -> None:
    rows = {what: (reached, met) for what, _, reached, met in targets_rows(_report(_point(1), _point(2, _session(), _session(dropped=100))))}
    assert rows["concurrent 720p30 sessions in real time"] == ("1", "**no**")
    assert rows["first packet → first composited frame (worst, real-time N)"] == ("310", "yes")
    assert rows["peak RSS per session (worker, worst)"] == ("120 MiB", "yes")
    reached, met = rows["CPU ratio vs ffmpeg, same settings (N=1)"]
    assert reached == "2.00" and met == "**no**"


def test_table_and_markdown_show_every_point() -> None:
    report = _report(_point(1), _point(2))
    table = format_table(report)
    assert table.splitlines()[0].split()[0] == "N"
    assert "0.200 CPU-s/media-s" in table
    markdown = render_markdown(report)
    assert markdown.count("\n| 1 | yes |") == 1 and markdown.count("\n| 2 | yes |") == 1
    assert "Test CPU" in markdown and "ffmpeg -i x" in markdown


def test_replace_marked_section_keeps_the_prose_around_it() -> None:
    doc = f"# Benchmarks\n\nintro\n\n{BEGIN_MARKER}\nold\n{END_MARKER}\n\noutro\n"
    new = replace_marked_section(doc, "new table\n")
    assert new == f"# Benchmarks\n\nintro\n\n{BEGIN_MARKER}\nnew table\n{END_MARKER}\n\noutro\n"
    assert replace_marked_section(new, "new table") == new


def test_replace_marked_section_appends_markers_when_missing() -> None:
    assert replace_marked_section("# B\n", "x") == f"# B\n\n{BEGIN_MARKER}\nx\n{END_MARKER}\n"
    assert replace_marked_section("", "x") == f"{BEGIN_MARKER}\nx\n{END_MARKER}\n"


def test_the_ffmpeg_baseline_takes_the_sessions_encoder_settings_whatever_else_outputs_hold() -> None:
    from edge_recorder.bench.ffmpeg import BaselineSettings
    from edge_recorder.config import load_settings

    settings = load_settings(environ={"RECORDING_OUTPUT_WIDTH": "640", "RECORDING_OUTPUT_HEIGHT": "360"}, config_file=None)
    baseline = BaselineSettings.from_settings(settings)
    assert (baseline.width, baseline.height, baseline.x264_preset) == (640, 360, settings.output.x264_preset)


def test_a_perf_report_is_added_up_by_library() -> None:
    from edge_recorder.bench.profile import Profile, dso_shares, grouped, render_markdown, sample_count

    report = """# Samples: 3K of event 'cpu-clock'
#
    55.38%  libx264-d6533a8d.so.165
    17.03%  libavcodec-5e6b81c2.so.62.28.102
    13.18%  libpython3.11.so.1.0
     5.10%  libc.so.6
     4.21%  [kernel.kallsyms]
     1.46%  _multiarray_umath.cpython-311-x86_64-linux-gnu.so
     0.60%  libavutil-5809ad29.so.60.26.102
"""
    assert sample_count(report) == 3000 and sample_count("# Samples: 245  of event") == 245
    shares = dso_shares(report)
    assert shares[0] == ("libx264-d6533a8d.so.165", 55.38) and len(shares) == 7
    groups = dict(grouped(shares))
    assert groups["x264 (H.264 encode)"] == 55.4 and groups["Python interpreter"] == 13.2
    assert groups["kernel (syscalls, wake-ups)"] == 4.2 and groups["other"] == 0.6
    markdown = render_markdown([Profile("-m edge_recorder.media.worker", 3000, grouped(shares))], date="d", machine="m")
    assert "| x264 (H.264 encode) | 55.4 % |" in markdown and "| samples | 3000 |" in markdown


def test_the_still_benchmark_reports_both_sides_and_their_ratio() -> None:
    from edge_recorder.bench.still import StillResult, render_markdown

    result = StillResult(off=0.166, on=0.060, repeated=0.93, rounds=2)
    assert round(result.ratio, 2) == 0.36
    markdown = render_markdown(result, date="d", machine="m")
    assert "| false | 0.166 | 0 % |" in markdown and "| true | 0.060 | 93 % |" in markdown and "| ratio | 0.36 | |" in markdown


def test_the_targets_judge_the_largest_real_time_n_the_parent_per_datagram_and_the_meeting() -> None:
    import dataclasses

    def sessions(n: int, packets: int) -> tuple[SessionResult, ...]:
        return tuple(dataclasses.replace(_session(), packets_received=packets) for _ in range(n))

    # parent window CPU 1.0 s over 20 000 datagrams = 50 µs; N=2 is the largest real time.
    points = (_point(1, *sessions(1, 20_000)), _point(2, *sessions(2, 20_000)), _point(3, _session(), _session(), _session(lag=2.0)))
    report = dataclasses.replace(_report(*points), sweep=(1, 2, 3), meeting_ratio=0.42, meeting_clean=True)
    rows = {what: (reached, met) for what, _, reached, met in targets_rows(report)}
    assert rows["CPU ratio vs ffmpeg at the largest real-time N (2)"] == ("1.75", "**no**")  # (6 + 2/2) / 20 over 0.2
    assert rows["… of them with 0 frames dropped"] == ("2", "**no**")
    parent = next(v for k, v in rows.items() if k.startswith("parent CPU per received datagram"))
    assert parent == ("50 µs", "yes")
    assert rows["realistic meeting: CPU ratio vs ffmpeg (real time, 0 dropped)"] == ("0.42", "yes")
    # A meeting that dropped frames is not met, however cheap.
    dirty = {w: m for w, _, _, m in targets_rows(dataclasses.replace(report, meeting_clean=False))}
    assert dirty["realistic meeting: CPU ratio vs ffmpeg (real time, 0 dropped)"] == "**no**"
    # Without a meeting there is no meeting row.
    assert not any("meeting" in w for w, *_ in targets_rows(_report(_point(1))))
