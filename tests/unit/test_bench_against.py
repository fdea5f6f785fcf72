"""The A/B-against-a-revision benchmark's pure parts: order and figures."""

from __future__ import annotations

from edge_recorder.bench.against import SCENARIOS, AgainstResult, format_table, render_markdown, round_order


def _figures(cpu: float, parent: float) -> dict[str, object]:
    return {"cpu_per_media_s": cpu, "parent_cpu_per_media_s": parent, "realtime": True, "completed": 1, "frames_dropped": 0, "frames": 600}


def test_each_side_goes_first_as_often_as_the_other() -> None:
    assert round_order(1) == ("A", "B")
    assert round_order(3) == ("A", "B", "B", "A", "A", "B")
    order = round_order(4)
    firsts = [order[i] for i in range(0, len(order), 2)]
    assert firsts.count("A") == firsts.count("B") == 2


def test_ratio_is_of_medians_this_tree_over_the_revision() -> None:
    name = SCENARIOS[0][0]
    other = SCENARIOS[1][0]
    result = AgainstResult(
        rev="abc123",
        seconds=20,
        order=round_order(3),
        # One slow round on each side must not move the median.
        current={name: [_figures(0.50, 0.10), _figures(0.52, 0.11), _figures(0.90, 0.30)], other: [_figures(1.0, 0.2)] * 3},
        baseline={name: [_figures(0.40, 0.10), _figures(0.80, 0.20), _figures(0.41, 0.10)], other: [_figures(1.0, 0.25)] * 3},
    )
    assert result.ratio(name) == 0.52 / 0.41
    assert result.ratio(other, "parent_cpu_per_media_s") == 0.2 / 0.25
    table = format_table(result)
    assert f"{0.52 / 0.41:.3f}" in table and "0.800" in table
    markdown = render_markdown(result, date="2026-12-02 05:00 UTC", machine="a test machine")
    assert "`abc123`" in markdown and "A B B A A B" in markdown
    assert markdown.count("\n| ") == 1 + len(SCENARIOS)
