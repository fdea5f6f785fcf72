"""One sweep point: N concurrent sessions fed by the replay process.

Timeline of a point::

    start the sender (it packetizes everything, then says "ready")
    start N sessions concurrently, add 4 streams each (or a room's), set the active speaker
    CPU snapshot A (workers, this process)       ─┐
    hand the ports to the sender; it sends for S s │ replay window
    wait out the playout delay, then snapshot B  ─┘
    stop every session concurrently (flush, close the file)

RSS of the workers and of this process is sampled every 0.5 s throughout;
the workers' lag is read from their 1 s stats events, the active speaker
every 0.5 s. The room-size benchmark runs the same timeline with one session
of a :class:`~edge_recorder.bench.rooms.Room`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from typing import Any, Callable

import psutil
import trio

from edge_recorder.bench.inputs import ACTIVE_SPEAKER, Inputs
from edge_recorder.bench.measure import RssPeaks, cpu_seconds, sample_rss
from edge_recorder.bench.report import PointResult, SessionResult
from edge_recorder.bench.rooms import Room
from edge_recorder.config import Settings
from edge_recorder.media.layout import LayoutName
from edge_recorder.session.manager import SessionManager
from edge_recorder.session.session import OutputOptions, RecordingSession
from edge_recorder.session.stream import StreamSpec

__all__ = ["run_point"]

SENDER_READY_TIMEOUT_S = 60.0
SESSIONS_START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
LAG_SAMPLE_INTERVAL_S = 0.5
# Receiver "drops" that lose no incoming media: duplicates, and errors from our
# own RTCP sends (ICMP unreachable once the sender has gone, surfacing on send
# or on the next recvfrom).
NOT_INGEST_DROPS = frozenset({"duplicate", "rtcp-send-error", "socket-error"})


class _Lines:
    """JSON lines from a child's stdout."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def next(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            data = await self._stream.receive_some(65536)
            if not data:
                raise RuntimeError("the replay process exited early")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return dict(json.loads(line))


@dataclass
class _Watch:
    session: RecordingSession
    process: psutil.Process
    cpu_at_send: float = 0.0
    cpu_before_stop: float = 0.0
    max_lag_s: float = 0.0
    speaker: str | None = None
    speaker_switches: int = 0
    # The worker's stats just before stop (the "finished" event replaces them).
    stats_before_stop: dict[str, Any] | None = None


async def _watch_lag(watches: list[_Watch]) -> None:
    for w in watches:
        w.speaker = w.session.active_speaker
    while True:
        for w in watches:
            w.max_lag_s = max(w.max_lag_s, float(w.session.worker_stats.get("lag_s", 0.0)))
            if w.session.active_speaker != w.speaker:
                w.speaker = w.session.active_speaker
                w.speaker_switches += 1
        await trio.sleep(LAG_SAMPLE_INTERVAL_S)


def _cpu_or(process: psutil.Process, default: float) -> float:
    try:
        return cpu_seconds(process)
    except psutil.NoSuchProcess:
        return default


async def run_point(
    settings: Settings,
    inputs: Inputs,
    n: int,
    seconds: float,
    *,
    say: Callable[[str], None],
    room: Room | None = None,
    tracks: bool = False,
) -> PointResult:
    """Record N sessions of the replayed room and measure them.

    Args:
        settings: the recorder's settings.
        inputs: the pre-encoded streams (``ROOM_INPUTS`` when ``room`` is given).
        n: concurrent sessions.
        seconds: media seconds to replay.
        say: progress lines.
        room: record this room's streams and speaker instead of the sweep's
            four streams with Alice speaking.
        tracks: keep every stream's own track too (``outputs: ["composite", "tracks"]``).

    Raises:
        RuntimeError: the sender or a session could not start.
    """
    me = psutil.Process()
    label = f"N={n}" if room is None else room.name
    streams = [(s.definition.key, s.definition) for s in inputs.streams] if room is None else [(s.key, s.definition) for s in room.streams]
    speaker = ACTIVE_SPEAKER if room is None else room.active_speaker
    layout: LayoutName = "pip" if room is None else room.layout
    command = [sys.executable, "-m", "edge_recorder.bench.replay", str(inputs.root), "--sessions", str(n), "--seconds", str(seconds)]
    if room is not None:
        command += ["--room", room.name]
    sender = await trio.lowlevel.open_process(command, stdin=-1, stdout=-1)
    try:
        assert sender.stdout is not None and sender.stdin is not None
        lines = _Lines(sender.stdout)
        with trio.fail_after(SENDER_READY_TIMEOUT_S):
            ready = await lines.next()
        say(f"  {label}: sender ready ({ready.get('packets')} packets); starting {n} session(s) of {len(streams)} streams")
        manager = SessionManager(settings)
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            parent_cpu_0 = cpu_seconds(me)
            sessions: list[RecordingSession | None] = [None] * n
            targets: list[dict[str, tuple[str, int]]] = [{} for _ in range(n)]

            async def start_one(i: int) -> None:
                output = dataclasses.replace(OutputOptions.from_settings(settings), tracks=True) if tracks else None
                session = await manager.start(f"bench-room-{i}", layout=layout, output=output)
                sessions[i] = session
                if session.status.terminal:
                    raise RuntimeError(f"session {i} failed to start: {session.error}")
                for key, definition in streams:
                    producer = definition.producer()
                    ports = await session.add_stream(StreamSpec.from_params(producer.add_stream_params(session.session_id)))
                    targets[i][key] = (ports["ip"], ports["port"])
                await session.set_active_speaker(speaker)

            with trio.fail_after(SESSIONS_START_TIMEOUT_S):
                async with trio.open_nursery() as starters:
                    for i in range(n):
                        starters.start_soon(start_one, i)
            started = [s for s in sessions if s is not None]
            watches = [_Watch(s, psutil.Process(s.worker_pid)) for s in started if s.worker_pid is not None]
            peaks = RssPeaks()
            processes = {str(i): w.process for i, w in enumerate(watches)} | {"parent": me}
            async with trio.open_nursery() as samplers:
                samplers.start_soon(sample_rss, processes, peaks)
                lag_scope = trio.CancelScope()

                async def watch_lag() -> None:
                    with lag_scope:
                        await _watch_lag(watches)

                samplers.start_soon(watch_lag)

                for w in watches:
                    w.cpu_at_send = _cpu_or(w.process, 0.0)
                parent_cpu_send = cpu_seconds(me)
                system_0 = psutil.cpu_times()
                sender_process = psutil.Process(sender.pid)
                window_start = trio.current_time()
                await sender.stdin.send_all((json.dumps({"targets": targets}) + "\n").encode())
                while (event := await lines.next()).get("event") != "done":
                    pass
                sender_cpu = _cpu_or(sender_process, 0.0)
                # Let the last frames through the playout delay and the jitter buffers.
                await trio.sleep(settings.ingest.playout_delay_ms / 1000 + 0.3)
                for w in watches:
                    w.cpu_before_stop = _cpu_or(w.process, w.cpu_at_send)
                    w.stats_before_stop = dict(w.session.worker_stats)
                parent_cpu_stop = cpu_seconds(me)
                system_1 = psutil.cpu_times()
                window_s = trio.current_time() - window_start
                # The "finished" event's lag includes the flush: not a real-time lag.
                lag_scope.cancel()

                say(f"  {label}: replay done ({event.get('packets')} packets, sender late by ≤ {event.get('late_max_s')} s); stopping")
                with trio.fail_after(STOP_TIMEOUT_S):
                    async with trio.open_nursery() as stoppers:
                        for s in started:
                            stoppers.start_soon(s.stop, "host")
                samplers.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(5, shield=True):
            if sender.returncode is None:
                sender.kill()
            await sender.wait()

    results = tuple(
        _session_result(w, peaks.peaks.get(str(i), 0), settings.output.fps) for i, w in enumerate(watches)
    )
    return PointResult(
        n=n,
        sessions=results,
        parent_cpu_s=parent_cpu_stop - parent_cpu_0,
        parent_window_cpu_s=parent_cpu_stop - parent_cpu_send,
        window_s=window_s,
        parent_peak_rss_bytes=peaks.peaks.get("parent", 0),
        sender_cpu_s=sender_cpu,
        sender_late_max_s=float(event.get("late_max_s", 0.0)),
        logical_cores=psutil.cpu_count() or 1,
        system_busy_fraction=_busy_fraction(system_0, system_1),
    )


def _busy_fraction(before: Any, after: Any) -> float:
    """Share of all CPUs' time that was not idle between two ``psutil.cpu_times()``."""
    total = sum(after) - sum(before)
    idle = (after.idle - before.idle) + (getattr(after, "iowait", 0.0) - getattr(before, "iowait", 0.0))
    return (total - idle) / total if total > 0 else float("nan")


def _session_result(w: _Watch, peak_rss: int, fps: int) -> SessionResult:
    s = w.session
    stats = s.worker_stats
    before = w.stats_before_stop or stats
    # The worker reports "decoding" for video streams only.
    videos = [v for v in (before.get("streams") or {}).values() if isinstance(v, dict) and "decoding" in v]
    encoded = int(stats.get("frames_encoded", 0))
    dropped = int(stats.get("frames_dropped", 0))
    receiver = s.receiver_stats()
    ingest = sum(v for r in receiver for k, v in r.drops.items() if k not in NOT_INGEST_DROPS)
    ingest += sum(r.frames_dropped_queue_full for r in receiver)
    ingest += sum(int(v.get("queue_drops", 0)) for v in stats.get("streams", {}).values())
    return SessionResult(
        status=s.status.value,
        worker_cpu_s=w.cpu_before_stop,
        window_cpu_s=w.cpu_before_stop - w.cpu_at_send,
        media_s=(encoded + dropped) / fps,
        frames_encoded=encoded,
        frames_dropped=dropped,
        ingest_drops=ingest,
        keyframe_requests=sum(r.keyframe_requests for r in receiver),
        max_lag_s=w.max_lag_s,
        peak_rss_bytes=peak_rss,
        first_frame_s=s.first_frame_latency_s,
        error=s.error,
        streams=len(receiver),
        packets_received=sum(r.packets + r.rtcp_packets for r in receiver),
        video_frames_decoded=sum(int(v.get("decoded", 0)) for v in videos),
        videos_decoding=sum(1 for v in videos if v.get("decoding")),
        packets_not_shown=sum(int(getattr(r, "packets_not_shown", 0)) for r in receiver),
        speaker_switches=w.speaker_switches,
        active_speaker=w.speaker,
        frames_repeated=None if stats.get("frames_repeated") is None else int(stats["frames_repeated"]),
    )
