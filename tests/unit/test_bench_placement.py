"""The placement-latency benchmark's pure parts: order, the nodes' environment, figures, table, Markdown."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edge_recorder.bench.placement import (
    PLACEMENT_BEGIN,
    PLACEMENT_END,
    PlacementReport,
    Request,
    Scenario,
    format_table,
    node_environment,
    render_markdown,
    replace_placement_section,
    scenario_order,
    summarize,
)
from edge_recorder.config import load_settings


def test_scenarios_alternate_and_each_goes_first_as_often_as_the_other() -> None:
    L, F = Scenario.LOCAL, Scenario.FORWARDED
    assert scenario_order(2) == (L, F, F, L)
    order = scenario_order(30)
    assert order.count(L) == order.count(F) == 30
    firsts = order[::2]
    assert firsts.count(L) == firsts.count(F) == 15


def test_summary_is_median_nearest_rank_p90_and_max_in_ms() -> None:
    samples = [i / 1000 for i in range(10, 0, -1)]  # 10..1 ms, unsorted
    s = summarize(samples)
    assert s.count == 10
    assert s.median_ms == pytest.approx(5.5)
    assert s.p90_ms == pytest.approx(9.0)  # 9 of 10 samples at or below it
    assert s.max_ms == pytest.approx(10.0)
    one = summarize([0.25])
    assert (one.median_ms, one.p90_ms, one.max_ms) == (250.0, 250.0, 250.0)
    # One slow outlier moves max, not the median or (with 20 samples) the p90.
    twenty = summarize([0.010] * 19 + [2.0])
    assert twenty.median_ms == pytest.approx(10.0) and twenty.p90_ms == pytest.approx(10.0) and twenty.max_ms == 2000.0
    with pytest.raises(ValueError):
        summarize([])


def _report() -> PlacementReport:
    return PlacementReport(
        date="2026-12-02 05:00 UTC",
        machine="a test machine",
        order=scenario_order(2),
        gets_per_round=3,
        samples={
            (Request.START, Scenario.LOCAL): (0.600, 0.620),
            (Request.START, Scenario.FORWARDED): (0.630, 0.650),
            (Request.GET, Scenario.LOCAL): (0.002, 0.002, 0.002, 0.002, 0.002, 0.002),
            (Request.GET, Scenario.FORWARDED): (0.006, 0.007, 0.008, 0.008, 0.009, 0.030),
        },
        outcomes={"COMPLETED": 6},
    )


def test_ratio_and_added_time_are_of_medians_forwarded_over_local() -> None:
    report = _report()
    assert report.rounds == 2
    assert report.ratio(Request.START) == pytest.approx(640 / 610)
    assert report.added_ms(Request.START) == pytest.approx(30.0)
    assert report.ratio(Request.GET) == pytest.approx(4.0)
    assert report.summary(Request.GET, Scenario.FORWARDED).max_ms == pytest.approx(30.0)


def test_table_and_markdown_carry_every_row_and_the_method() -> None:
    report = _report()
    table = format_table(report)
    assert len(table.splitlines()) == 1 + 4
    assert "1.05× (+30.0 ms)" in table and "4.00× (+6.0 ms)" in table and "`" not in table
    markdown = render_markdown(report)
    assert "a test machine" in markdown and "A B B A" in markdown and "6 COMPLETED" in markdown
    assert markdown.count("\n| ") == 1 + 4  # header + 2 requests x 2 scenarios
    assert "Method:" in markdown and "RECORDING_ENABLED=false" in markdown
    assert "| `recording.get` | `bench-entry` (forwarded) | 6 | 8.0 | 30.0 | 30.0 | 4.00× (+6.0 ms) |" in markdown
    # A long run shows the pattern, not 60 letters.
    long_run = render_markdown(dataclasses.replace(report, order=scenario_order(30)))
    assert "30 rounds per scenario, alternating A B B A A B B A … (A local" in long_run


def test_the_section_goes_between_its_markers_and_nowhere_else() -> None:
    document = f"# Benchmarks\n\n<!-- upload:begin -->\nu\n<!-- upload:end -->\n\n{PLACEMENT_BEGIN}\nold\n{PLACEMENT_END}\ntail\n"
    updated = replace_placement_section(document, "new figures")
    assert f"{PLACEMENT_BEGIN}\nnew figures\n{PLACEMENT_END}\ntail\n" in updated
    assert "old" not in updated and "<!-- upload:begin -->\nu\n<!-- upload:end -->" in updated


def test_the_nodes_environment_is_a_valid_configuration_and_drops_the_callers_settings(tmp_path: Path) -> None:
    base = {
        "PATH": "/usr/bin",
        "RECORDING_S3_BUCKET": "someones-bucket",
        "RECORDING_CONFIG_FILE": "/etc/edge-recorder.toml",
        "AWS_SECRET_ACCESS_KEY": "not-for-the-bench",
    }
    env = node_environment(
        base,
        server_id="bench-entry",
        recording=False,
        tmp_dir=tmp_path / "spool",
        control_port=50001,
        metrics_port=50002,
        udp=range(44000, 44020),
        redis_url="redis://127.0.0.1:50003/0",
    )
    assert env["PATH"] == "/usr/bin"
    assert not any(k.startswith("AWS_") for k in env)
    assert "RECORDING_S3_BUCKET" not in env and "RECORDING_CONFIG_FILE" not in env
    settings = load_settings(environ=env, config_file=None)
    assert settings.recording_enabled is False
    assert settings.server_id == "bench-entry"
    assert (settings.port_min, settings.port_max) == (44000, 44019)
    assert (settings.control.port, settings.control.metrics_port) == (50001, 50002)
    assert settings.s3.bucket is None  # local files: no bucket
    assert settings.max_sessions > 2 and (settings.output.width_px, settings.output.height_px) == (640, 360)
    recording = node_environment(
        base, server_id="bench-recorder", recording=True, tmp_dir=tmp_path, control_port=1, metrics_port=2,
        udp=range(44020, 44040), redis_url="redis://127.0.0.1:50003/0",
    )  # fmt: skip
    assert recording["RECORDING_ENABLED"] == "true"


def test_the_flags_run_it_alone_skip_it_or_leave_it_to_a_full_run() -> None:
    from edge_recorder.bench.__main__ import _parse

    full = _parse([])
    assert not full.placement and not full.no_placement and full.placement_rounds == 30
    alone = _parse(["--placement", "--placement-rounds", "4"])
    assert alone.placement and alone.placement_rounds == 4
    assert _parse(["--no-placement"]).no_placement
    assert _parse(["--quick"]).no_placement  # a smoke test only when asked for
    quick = _parse(["--quick", "--placement"])
    assert quick.placement and not quick.no_placement and quick.placement_rounds == 3 and quick.no_doc
    with pytest.raises(SystemExit):
        _parse(["--placement", "--no-placement"])
    with pytest.raises(SystemExit):
        _parse(["--placement-rounds", "0"])
