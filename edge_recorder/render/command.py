"""``edge-recorder render``: find the recording, fetch it if it is in the bucket, render it in a thread.

The command's Trio shell: render/source.py finds the files, render/renderer.py
does the work (blocking, in one worker thread; Ctrl-C cancels it through an
event the renderer checks every frame), and :func:`progress_line` is the
terminal's progress bar (pure).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import trio

from edge_recorder.config import Settings
from edge_recorder.errors import UnknownSessionError
from edge_recorder.media.layout import LayoutName
from edge_recorder.render.renderer import RenderOptions, RenderProgress, RenderResult, render
from edge_recorder.render.source import RecordingFiles, download_recording, local_recording

__all__ = ["default_output", "options_from_settings", "progress_line", "render_session"]

#: How long a cancelled render is waited for to clean up its part file.
CANCEL_WAIT_S = 10.0
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def default_output(session_id: str, layout: str | None) -> Path:
    """``<sessionId>.<layout>.mp4`` in the working directory (``replay`` when the recorded layout replays)."""
    return Path(f"{_UNSAFE.sub('_', session_id)[:120]}.{layout or 'replay'}.mp4")


def options_from_settings(
    settings: Settings,
    *,
    layout: LayoutName | None = None,
    speaker: str | None = None,
    from_s: float | None = None,
    to_s: float | None = None,
    size: tuple[int, int] | None = None,
    fps: int | None = None,
) -> RenderOptions:
    """The encoder settings a live recording of this node uses, with the command's choices."""
    o = settings.output
    return RenderOptions(
        layout=layout,
        speaker=speaker,
        from_s=from_s,
        to_s=to_s,
        width=size[0] if size else None,
        height=size[1] if size else None,
        fps=fps,
        x264_preset=o.x264_preset,
        video_bitrate_kbps=o.video_bitrate_kbps,
        audio_bitrate_kbps=o.audio_bitrate_kbps,
        keyframe_interval_s=o.keyframe_interval_s,
        overlay_margin_px=settings.overlay.margin_px,
        skip_unchanged=o.skip_unchanged_frames,
    )


def progress_line(progress: RenderProgress, *, width: int = 30) -> str:
    """``[#########.....]  42%  12.0/30.0 s  3.4x`` (pure)."""
    fraction = min(1.0, progress.done_s / progress.total_s) if progress.total_s > 0 else 1.0
    filled = round(fraction * width)
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:3.0f}%  "
        f"{progress.done_s:.1f}/{progress.total_s:.1f} s  {progress.speed:.1f}x"
    )


async def render_session(
    settings: Settings,
    session_id: str,
    output: Path,
    options: RenderOptions,
    *,
    tracks_dir: Path | None = None,
    progress: Callable[[RenderProgress], None] | None = None,
    said: Callable[[str], None] | None = None,
) -> RenderResult:
    """Render ``session_id`` into ``output``: from ``tracks_dir``, this node's spool or the bucket.

    Raises:
        UnknownSessionError: no tracks for it anywhere this node can look.
        ManifestError, MediaError, StorageError: see render/source.py and render/renderer.py.
    """
    files = await trio.to_thread.run_sync(local_recording, settings, session_id, tracks_dir)
    scratch: Path | None = None
    try:
        if files is None:
            if not settings.s3.bucket:
                raise UnknownSessionError(
                    f"no tracks of session {session_id} on this node ({settings.tmp_dir}/{settings.server_id}/"
                    f"{session_id}.tracks) and no bucket to look in (RECORDING_S3_BUCKET); --tracks-dir names a directory"
                )
            from edge_recorder.sink.s3 import AsyncObjectStore, ObjectStore

            store = AsyncObjectStore(ObjectStore(settings.s3))
            scratch = Path(tempfile.mkdtemp(prefix=f"edge-recorder-render-{_UNSAFE.sub('_', session_id)[:40]}-"))
            if said is not None:
                said(f"downloading the tracks of {session_id} from bucket {store.bucket}")
            files = await download_recording(store, session_id, scratch)
        if said is not None:
            said(f"rendering {len(files.plan.tracks)} tracks from {files.where} into {output}")
        return await _render_in_thread(files, output, options, progress)
    finally:
        if scratch is not None:
            await trio.to_thread.run_sync(shutil.rmtree, scratch, True)


async def _render_in_thread(
    files: RecordingFiles, output: Path, options: RenderOptions, progress: Callable[[RenderProgress], None] | None
) -> RenderResult:
    """The render in a worker thread; cancelled (Ctrl-C), it is told to stop and waited for (bounded, shielded)."""
    cancelled = threading.Event()
    finished = threading.Event()
    token = trio.lowlevel.current_trio_token()

    def report(p: RenderProgress) -> None:
        if progress is not None:
            token.run_sync_soon(progress, p)

    def work() -> RenderResult:
        try:
            return render(files.plan, files.directory, output, options, progress=report, cancelled=cancelled)
        finally:
            finished.set()

    try:
        return await trio.to_thread.run_sync(work, abandon_on_cancel=True)
    except trio.Cancelled:
        # The renderer checks the event every frame, then removes its part file.
        cancelled.set()
        with trio.move_on_after(CANCEL_WAIT_S, shield=True):
            await trio.to_thread.run_sync(finished.wait, CANCEL_WAIT_S, abandon_on_cancel=True)
        raise
