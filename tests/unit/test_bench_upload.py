"""The upload benchmark's pure parts: synthetic fragments, the report and its doc section."""

from __future__ import annotations

import pytest

from edge_recorder.bench.report import BEGIN_MARKER, END_MARKER
from edge_recorder.bench.upload import (
    TARGET_S,
    UPLOAD_BEGIN,
    UPLOAD_END,
    UploadReport,
    format_upload_table,
    fragment_sizes,
    make_fragment,
    render_upload_markdown,
    replace_upload_section,
)
from edge_recorder.media.mp4 import Mp4BoxScanner


def report(**overrides: object) -> UploadReport:
    fields: dict[str, object] = dict(
        date="2026-01-01 00:00 UTC",
        machine="test machine",
        software="Python 3.11",
        recording_s=600.0,
        bitrate_kbps=2628.0,
        spool_bytes=197_100_000,
        fragments=300,
        part_size_bytes=8 * 1024 * 1024,
        sse="AES256",
        write_wall_s=24.0,
        catch_up_s=0.5,
        chunks_during_recording=23,
        chunk_put_bytes=193_000_000,
        chunk_put_busy_s=16.0,
        tail_bytes=4_100_000,
        chunks_total=24,
        finish_s=1.25,
        finish_tail_s=0.40,
        finish_compose_s=0.60,
        finish_delete_s=0.05,
        media_finalise_s=0.002,
        whole_file_s=16.5,
        whole_file_loopback_s=1.5,
        link_mbps=100.0,
        link_rtt_ms=20.0,
    )
    fields.update(overrides)
    return UploadReport(**fields)  # type: ignore[arg-type]


def test_fragment_sizes_match_the_bitrate_and_the_duration() -> None:
    sizes = fragment_sizes(600, 2.0, 2628)
    assert len(sizes) == 300
    assert sum(sizes) == pytest.approx(2628 * 1000 / 8 * 600, rel=0.02)
    mean = 2628 * 1000 / 8 * 2
    assert all(0.85 * mean - 1 <= s <= 1.15 * mean + 1 for s in sizes)
    assert fragment_sizes(600, 2.0, 2628) == sizes  # deterministic
    last = fragment_sizes(5, 2.0, 1000, jitter=0.0)
    assert last == [250_000, 250_000, 125_000]  # the last GOP is cut to the remaining second
    with pytest.raises(ValueError):
        fragment_sizes(0, 2.0, 1000)


def test_a_synthetic_fragment_is_a_moof_mdat_pair_of_the_exact_size() -> None:
    payload = bytes(range(256)) * 4000
    data = make_fragment(600_000, payload)
    assert len(data) == 600_000
    boxes = Mp4BoxScanner().feed(b"\x00\x00\x00\x10ftypisom\x00\x00\x00\x00" + data)
    assert [(kind, start, end) for kind, start, end in boxes] == [
        ("ftyp", 0, 16),
        ("moof", 16, 16 + 1536),
        ("mdat", 16 + 1536, 16 + 600_000),
    ]
    with pytest.raises(ValueError):
        make_fragment(100, payload)
    with pytest.raises(ValueError):
        make_fragment(600_000, payload[:1000])


def test_report_figures() -> None:
    r = report()
    assert r.stop_to_completed_s == pytest.approx(1.252)
    assert r.runbook_stop_to_completed_s == pytest.approx(16.502)
    assert r.finish_other_s == pytest.approx(0.20)
    assert r.speedup == pytest.approx(13.2)
    assert r.whole_file_bytes_per_s == pytest.approx(197_100_000 / 1.5)
    assert r.target_met
    assert not report(finish_s=TARGET_S).target_met  # media finalisation tips it over


def test_console_table() -> None:
    text = format_upload_table(report())
    lines = text.splitlines()
    assert "stop → COMPLETED" in lines[0]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert "streaming chunks + compose (24 chunks)" in lines[2] and "1.25 s" in lines[2] and "4.1 MB" in lines[2]
    assert "whole file after stop (fput_object, 16 MiB × 3)" in lines[3] and "16.50 s" in lines[3] and "197.1 MB" in lines[3]
    assert "100 Mbit/s, 20 ms RTT" in text and "media finalisation 2 ms" in text
    assert "13.2x faster" in text and "met (1.25 s)" in text
    assert "NOT met" in format_upload_table(report(finish_s=3.0))


def test_markdown_section() -> None:
    md = render_upload_markdown(report())
    assert md.startswith("### Latest upload run: 2026-01-01 00:00 UTC")
    assert "| streaming chunks + compose (24 chunks) | 1.25 s | 4.1 MB | 1.25 s |" in md
    assert "| whole file after stop (fput_object, 16 MiB × 3) | 16.50 s | 197.1 MB | 16.50 s |" in md
    assert "| stop → COMPLETED, 10-minute recording (streaming) | ≤ 2 s | 1.25 s | yes |" in md
    assert "| ≤ 2 s | 3.00 s | **no** |" in render_upload_markdown(report(finish_s=3.0))
    assert "loopback, no shaping" in render_upload_markdown(report(link_mbps=0.0, link_rtt_ms=0.0))


def test_the_upload_section_is_replaced_and_the_sweep_block_kept() -> None:
    sweep = f"{BEGIN_MARKER}\nsweep table\n{END_MARKER}\n"
    doc = f"# Benchmarks\n\n{sweep}\n## Upload\n\nprose\n"
    once = replace_upload_section(doc, "first")
    assert once == f"{doc}\n{UPLOAD_BEGIN}\nfirst\n{UPLOAD_END}\n"
    twice = replace_upload_section(once + "after\n", "second\n")
    assert twice == f"{doc}\n{UPLOAD_BEGIN}\nsecond\n{UPLOAD_END}\nafter\n"
    assert sweep in twice
    assert replace_upload_section("", "x") == f"{UPLOAD_BEGIN}\nx\n{UPLOAD_END}\n"
    # An end marker alone is not a section: append a fresh one.
    lone = f"text\n{UPLOAD_END}\n"
    assert replace_upload_section(lone, "x") == f"{lone}\n{UPLOAD_BEGIN}\nx\n{UPLOAD_END}\n"
