"""``edge-recorder render`` as a user runs it: a process, its exit codes, its one-line errors, its progress bar."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import pytest

from edge_recorder.bench.inputs import prepare_inputs
from edge_recorder.bench.render import write_recording
from edge_recorder.cli import ExitCode
from edge_recorder.render.command import default_output, progress_line
from edge_recorder.render.renderer import RenderProgress


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECORDING_", "AWS_"))}
    env.update(RECORDING_TMP_DIR=str(tmp_path / "rec"), RECORDING_SERVER_ID="node-a")
    return env


def _render(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_recorder", "render", *argv],
        env=_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_progress_line_and_default_output_name() -> None:
    assert progress_line(RenderProgress(15.0, 60.0, 5.0), width=8) == "[##......]  25%  15.0/60.0 s  3.0x"
    assert progress_line(RenderProgress(0.0, 0.0, 0.0), width=4) == "[####] 100%  0.0/0.0 s  0.0x"
    assert default_output("room/../x", "grid") == Path("room_.._x.grid.mp4")
    assert default_output("s1", None) == Path("s1.replay.mp4")


def test_render_from_a_directory_from_the_spool_and_the_errors_a_user_sees(tmp_path: Path) -> None:
    inputs = prepare_inputs(2.0, tmp_path / "cache")
    tracks = tmp_path / "here.tracks"
    write_recording(inputs, tracks, session_id="s-cli")

    done = _render(tmp_path, "s-cli", "--tracks-dir", str(tracks), "--layout", "grid", "--to", "1", "--size", "640x360")
    assert done.returncode == ExitCode.OK, done.stderr
    assert done.stdout == "s-cli.grid.mp4\n" and done.stderr == "", "no progress bar when stderr is not a terminal"
    with av.open(str(tmp_path / "s-cli.grid.mp4")) as container:
        video = container.streams.video[0]
        assert (video.codec_context.width, video.codec_context.height) == (640, 360)
        assert sum(1 for _ in container.decode(video)) == 30

    again = _render(tmp_path, "s-cli", "--tracks-dir", str(tracks), "--layout", "grid", "--to", "1")
    assert again.returncode == ExitCode.FAILED
    assert again.stderr.startswith("edge-recorder: render failed: ") and "never writes over" in again.stderr
    assert again.stderr.count("\n") == 1, "one line, no traceback"

    # This node's spool: RECORDING_TMP_DIR/<serverId>/<sessionId>.tracks.
    spooled = tmp_path / "rec" / "node-a" / "s-cli.tracks"
    spooled.parent.mkdir(parents=True)
    tracks.rename(spooled)
    from_spool = _render(tmp_path, "s-cli", "--from", "0.5", "--to", "1.5", "--output", "part.mp4")
    assert from_spool.returncode == ExitCode.OK, from_spool.stderr
    assert (tmp_path / "part.mp4").exists()

    unknown = _render(tmp_path, "nope")
    assert unknown.returncode == ExitCode.NOT_FOUND
    assert "no tracks of session nope on this node" in unknown.stderr and "RECORDING_S3_BUCKET" in unknown.stderr

    (spooled / "manifest.json").write_text('{"version": 99}')
    bad = _render(tmp_path, "s-cli", "--output", "bad.mp4")
    assert bad.returncode == ExitCode.FAILED and "manifest version" in bad.stderr and "Traceback" not in bad.stderr

    backwards = _render(tmp_path, "s-cli", "--from", "5", "--to", "2")
    assert backwards.returncode == ExitCode.USAGE and "--to 2 is not after --from 5" in backwards.stderr


@pytest.mark.parametrize("argv", [["--layout", "mosaic"], ["--size", "641x360"], ["--fps", "0"], ["--from", "-1"]])
def test_bad_arguments_are_usage_errors(tmp_path: Path, argv: list[str]) -> None:
    result = _render(tmp_path, "s", *argv)
    assert result.returncode == ExitCode.USAGE, result.stderr


def test_a_terminal_gets_a_progress_bar(tmp_path: Path) -> None:
    import pty

    inputs = prepare_inputs(2.0, tmp_path / "cache")
    tracks = tmp_path / "t"
    write_recording(inputs, tracks, session_id="s-tty")
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "edge_recorder", "render", "s-tty", "--tracks-dir", str(tracks)],
            env=_env(tmp_path),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
            timeout=120,
        )
        os.close(follower)
        follower = -1
        seen = b""
        while True:
            try:
                piece = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not piece:
                break
            seen += piece
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert done.returncode == ExitCode.OK and done.stdout == "s-tty.replay.mp4\n"
    screen = seen.decode()
    assert "rendering 4 tracks from" in screen
    assert "\r[" in screen and "] 100%" in screen and "2.0/2.0 s" in screen, screen
