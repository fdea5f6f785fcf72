"""Whole recordings, this tree against an older revision, in alternating rounds.

``python -m edge_recorder.bench --against REV`` answers "did this change make a
recording dearer?" the way a noisy shared machine allows: REV is checked out in
a temporary ``git worktree`` and every round records in a fresh process on one
tree, A B B A A B ..., so slow minutes of the machine fall on both sides. Each
round runs the scenarios of :data:`SCENARIOS` through that tree's own
:func:`~edge_recorder.bench.sweep.run_point` (its receivers, its media worker),
so only calls that exist on both sides are used: ``load_settings``,
``prepare_inputs``, ``run_point`` and ``make_room``. What to read is the ratio
of medians (this tree / REV) of CPU seconds per media second, worker plus the
receiving process; a ratio under 1.05 is within what these machines wander
between two rounds of the same tree.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["SCENARIOS", "AgainstResult", "compare", "format_table", "render_markdown"]

AGAINST_BEGIN = "<!-- against:begin -->"
AGAINST_END = "<!-- against:end -->"

# (name, sessions, people in the room or 0 for the 4-stream benchmark room)
SCENARIOS: tuple[tuple[str, int, int], ...] = (("2 sessions, 4 streams each", 2, 0), ("1 session, 20-person room", 1, 20))

# Run inside the tree under test (PYTHONPATH and cwd point at it); prints one JSON line.
_ROUND = r"""
import json, sys, tempfile, shutil
from pathlib import Path
import trio
import edge_recorder
from edge_recorder.bench.__main__ import BENCH_ENV
from edge_recorder.bench.inputs import prepare_inputs
from edge_recorder.bench.rooms import ROOM_INPUTS, make_room
from edge_recorder.bench.sweep import run_point
from edge_recorder.config import load_settings

seconds, scenarios = json.loads(sys.argv[1])
work = Path(tempfile.mkdtemp(prefix="edge-recorder-against-"))
out = {"tree": str(Path(edge_recorder.__file__).resolve().parent.parent), "points": {}}
try:
    settings = load_settings(environ={**BENCH_ENV, "RECORDING_TMP_DIR": str(work / "recordings")}, config_file=None)
    for name, n, people in scenarios:
        room = make_room(people) if people else None
        inputs = prepare_inputs(seconds, streams=ROOM_INPUTS) if room else prepare_inputs(seconds)
        point = trio.run(lambda: run_point(settings, inputs, n, seconds, say=lambda *a, **k: None, room=room))
        out["points"][name] = {
            "cpu_per_media_s": point.cpu_per_media_s,
            "parent_cpu_per_media_s": point.parent_cpu_per_media_s,
            "realtime": point.realtime,
            "completed": sum(1 for s in point.sessions if s.status.lower() == "completed"),
            "frames_dropped": point.frames_dropped,
            "frames": point.frames,
        }
finally:
    shutil.rmtree(work, ignore_errors=True)
print(json.dumps(out))
"""


@dataclass(frozen=True)
class AgainstResult:
    rev: str
    seconds: float
    order: tuple[str, ...]  # "A" (this tree) / "B" (rev) per round
    current: dict[str, list[dict[str, Any]]]  # scenario -> its rounds
    baseline: dict[str, list[dict[str, Any]]]

    def median(self, side: dict[str, list[dict[str, Any]]], scenario: str, key: str) -> float:
        return float(statistics.median(float(r[key]) for r in side[scenario]))

    def ratio(self, scenario: str, key: str = "cpu_per_media_s") -> float:
        return self.median(self.current, scenario, key) / self.median(self.baseline, scenario, key)


def round_order(rounds: int) -> tuple[str, ...]:
    """A B B A A B ...: each side goes first as often as the other."""
    order: list[str] = []
    for i in range(rounds):
        order.extend(("A", "B") if i % 2 == 0 else ("B", "A"))
    return tuple(order)


def _run_round(tree: Path | None, seconds: float) -> dict[str, Any]:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    here = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", _ROUND, json.dumps([seconds, list(SCENARIOS)])],
        env=env, cwd=str(tree or here), capture_output=True, text=True, timeout=1800,
    )
    if out.returncode != 0:
        raise RuntimeError(f"a round on {tree or here} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    expected = (tree or here).resolve()
    if Path(result["tree"]) != expected:
        raise RuntimeError(f"the round meant for {expected} imported edge_recorder from {result['tree']}")
    return result


def compare(rev: str, *, rounds: int = 3, seconds: float = 20.0, say: Callable[[str], None] = print) -> AgainstResult:
    """Record :data:`SCENARIOS` on this tree and on ``rev``, alternating; see the module docstring."""
    repo = Path(__file__).resolve().parents[2]
    order = round_order(rounds)
    current: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in SCENARIOS}
    baseline: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in SCENARIOS}
    with tempfile.TemporaryDirectory(prefix="edge-recorder-against-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), rev], check=True, capture_output=True)
        try:
            for i, side in enumerate(order, 1):
                result = _run_round(tree if side == "B" else None, seconds)
                for name, figures in result["points"].items():
                    (baseline if side == "B" else current)[name].append(figures)
                say(
                    f"  round {i}/{len(order)} ({'this tree' if side == 'A' else rev}): "
                    + "; ".join(f"{name} {f['cpu_per_media_s']:.3f} CPU-s/media-s" for name, f in result["points"].items())
                )
        finally:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], capture_output=True)
    return AgainstResult(rev=rev, seconds=seconds, order=order, current=current, baseline=baseline)


def _rows(result: AgainstResult) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for name, _, _ in SCENARIOS:
        ok = all(r["realtime"] for r in result.current[name] + result.baseline[name])
        rows.append(
            (
                name,
                f"{result.median(result.current, name, 'cpu_per_media_s'):.3f}",
                f"{result.median(result.baseline, name, 'cpu_per_media_s'):.3f}",
                f"{result.ratio(name):.3f}",
                f"{result.ratio(name, 'parent_cpu_per_media_s'):.3f}",
                "yes" if ok else "no",
            )
        )
    return rows


_HEADER = ("scenario", "this tree CPU-s/media-s", "REV CPU-s/media-s", "ratio", "receiving process ratio", "all real time")


def format_table(result: AgainstResult) -> str:
    rows = [_HEADER] + _rows(result)
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def render_markdown(result: AgainstResult, *, date: str, machine: str) -> str:
    lines = [
        f"Measured {date} on {machine}: {len(result.order)} rounds of {result.seconds:g} media-s per scenario, "
        f"alternating {' '.join(result.order)} (A this tree, B `{result.rev}`), medians of the rounds.",
        "",
        "| " + " | ".join(_HEADER).replace("REV", f"`{result.rev}`") + " |",
        "|" + "---|" * len(_HEADER),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(result)]
    return "\n".join(lines)
