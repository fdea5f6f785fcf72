"""Issue #12, a full disk mid-recording: ENOSPC fails that session alone.

The session whose spool fills stops with an error that names the full disk and
the kept file; the file is cut at its last complete fragment and plays to its
end; a session on another disk goes on recording and completes; the node still
starts recordings on the healthy disk.

The small disk is a tmpfs of this test's own (root, as on CI). The floor half of
the issue (``/readyz`` not ready and ``recording.start`` refused below
``RECORDING_MIN_FREE_DISK_MIB``) is proven by
``tests/security/test_data_loss.py::test_a_full_disk_is_said_plainly_and_refuses_new_starts``
and ``tests/unit/session/test_manager_rules.py``; it is not repeated here.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import av
import pytest
import trio

from edge_recorder.demo.sfu import demo_producers, run_producer
from edge_recorder.session.manager import SessionManager
from edge_recorder.session.session import RecordingSession
from edge_recorder.session.state import SessionStatus
from edge_recorder.session.stream import StreamSpec

pytestmark = pytest.mark.integration

SMALL_DISK_MIB = 16


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of :data:`SMALL_DISK_MIB` MiB mounted for this test, unmounted after it."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("mounting a tmpfs needs root, and CI is set")
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK_MIB}m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        # Root without CAP_SYS_ADMIN (an unprivileged container): nothing to test on.
        pytest.skip(f"mount -t tmpfs is not permitted here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        # Lazily if a file is still open (a worker being reaped): never leave the mount behind.
        if subprocess.run(["umount", str(mount)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def _on(settings: Any, tmp_dir: Path, port_min: int, port_max: int, min_free_disk_mib: int) -> Any:
    """The test's settings on their own spool disk and their own half of the test's port block."""
    return dataclasses.replace(
        settings,
        tmp_dir=tmp_dir,
        port_min=port_min,
        port_max=port_max,
        lifecycle=dataclasses.replace(settings.lifecycle, min_free_disk_mib=min_free_disk_mib),
    )


async def _record(session: RecordingSession, peer: str, senders: trio.Nursery) -> None:
    """Send ``peer``'s demo camera and microphone to ``session``."""
    producers = demo_producers()
    for name in (f"{peer}-cam", f"{peer}-mic"):
        producer = producers[name]
        ports = await session.add_stream(StreamSpec.from_params(producer.add_stream_params(session.session_id)))
        senders.start_soon(partial(run_producer, producer, (ports["ip"], ports["port"])))


def _fill(path: Path, leave_bytes: int, free_bytes: Callable[[], int]) -> None:
    """Write ``path`` until the disk has at most ``leave_bytes`` free (blocking).

    The recording goes on writing meanwhile: a write that meets ENOSPC first
    means the disk is full already, which is what is wanted.
    """
    chunk = b"\0" * (64 << 10)
    with path.open("wb", buffering=0) as ballast:
        while (left := free_bytes() - leave_bytes) > 0:
            try:
                ballast.write(chunk[: min(left, len(chunk))])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return


def _play(path: Path) -> tuple[int, float, float]:
    """Demux and decode the whole file (a corrupt packet or box raises).

    Returns:
        ``(video frames, end of the last video frame s, seconds of audio)``.
    """
    frames = 0
    video_end = 0.0
    audio_s = 0.0
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        # Strict: a broken bitstream is an error here, not a logged warning.
        video.codec_context.options = {"err_detect": "explode"}
        for packet in container.demux(video, audio):
            if packet.stream is video and packet.pts is not None and packet.time_base is not None:
                # Where the frame ends: its own duration (an unchanged picture is
                # not encoded again, so the frame before lasts longer).
                video_end = max(video_end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    frames += 1
                    assert frame.time is not None
                elif isinstance(frame, av.AudioFrame):
                    audio_s += frame.samples / frame.sample_rate
    return frames, video_end, audio_s


async def test_a_full_disk_fails_its_session_alone_and_keeps_the_file_to_its_last_fragment(
    settings: Any, small_disk: Path, tmp_path: Path, nursery: trio.Nursery
) -> None:
    half = (settings.port_min + settings.port_max + 1) // 2
    # The small disk's floor is off, so the start is allowed; the healthy one keeps its default.
    full_manager = SessionManager(_on(settings, small_disk, settings.port_min, half - 1, min_free_disk_mib=0))
    healthy_manager = SessionManager(_on(settings, tmp_path / "healthy", half, settings.port_max, settings.lifecycle.min_free_disk_mib))
    await nursery.start(full_manager.run)
    await nursery.start(healthy_manager.run)

    victim = await full_manager.start("room-small-disk")
    survivor = await healthy_manager.start("room-healthy-disk")
    async with trio.open_nursery() as survivor_senders:
        await _record(survivor, "bob", survivor_senders)
        async with trio.open_nursery() as victim_senders:
            await _record(victim, "alice", victim_senders)
            with trio.fail_after(20):
                while victim.complete_media_s < 2.0:
                    await trio.sleep(0.1)
            # Something else on the disk takes all but half a fragment, so the
            # next fragment is cut short by ENOSPC part way through its write.
            fragment_bytes = victim.complete_bytes // max(1, victim.worker_stats.get("fragments", 2))
            await trio.to_thread.run_sync(_fill, small_disk / "ballast", fragment_bytes // 2, full_manager.spool.free_bytes)
            # The parent's loop stalls (a busy node) while the worker meets
            # ENOSPC and exits, so its exit and its last words (the error
            # event) are seen at once: the error must still name the cause.
            time.sleep(3.0)
            with trio.fail_after(20):
                await victim.wait_finished()
            victim_senders.cancel_scope.cancel()

        # The full disk's session failed, saying so plainly and naming the kept file.
        assert victim.status is SessionStatus.FAILED
        assert victim.error is not None
        error = victim.error
        assert "no space left on device" in error.lower() and "RECORDING_TMP_DIR" in error, error
        assert f"kept up to its last complete fragment ({victim.complete_media_s:.1f} s, {victim.complete_bytes} bytes) at {victim.path}" in error
        assert "PyAV callback" not in error and "ExceptionGroup" not in error.split("; worker stderr:")[0]
        # Its ports went back to its range.
        assert not full_manager.ports.in_use

        # The other session never noticed, and goes on recording.
        assert survivor.status is SessionStatus.RECORDING, survivor.error
        media_before = survivor.complete_media_s
        await trio.sleep(1.5)
        assert survivor.status is SessionStatus.RECORDING
        assert survivor.complete_media_s > media_before
        survivor_senders.cancel_scope.cancel()
    await survivor.stop("host")
    assert survivor.status is SessionStatus.COMPLETED, survivor.error

    # The kept file ends at its last complete fragment (the partial one was
    # cut) and plays cleanly to that end, video and audio.
    assert victim.complete_bytes > 0 and victim.path.stat().st_size == victim.complete_bytes
    assert victim.size_bytes == victim.complete_bytes
    frames, video_end_s, audio_s = _play(victim.path)
    assert frames > 0
    assert abs(video_end_s - victim.complete_media_s) < 0.5, (video_end_s, victim.complete_media_s)
    assert abs(audio_s - victim.complete_media_s) < 0.5, (audio_s, victim.complete_media_s)

    # The survivor's file plays past the instant the other disk filled.
    survivor_frames, survivor_end_s, survivor_audio_s = _play(survivor.path)
    encoded = survivor.worker_stats["frames_encoded"] - (survivor.worker_stats.get("frames_repeated") or 0)
    assert survivor_frames >= 0.9 * encoded
    assert survivor_end_s > media_before and survivor_audio_s > media_before, (survivor_end_s, survivor_audio_s, media_before)

    # The healthy disk still takes new recordings.
    ready, checks = healthy_manager.readiness()
    assert ready, checks
    again = await healthy_manager.start("room-after-the-full-disk")
    assert again.status is SessionStatus.RECORDING
    await again.stop("host")
    assert again.status is SessionStatus.COMPLETED, again.error
