"""The media worker: one OS process per recording, run as ``python -m edge_recorder.media.worker``.

Why a process: libav runs on untrusted bitstreams, and a crash inside it (or a
runaway allocation) must end one recording, not the service. A process per
session also keeps one room's Python work from convoying another room's media
threads on the GIL (see docs/architecture.md). Inside the process, Trio
supervises and PyAV works in threads: every decode, composite and encode call
goes through :func:`_blocking`, one door with one ``CapacityLimiter``, and each
codec context is confined to the one task that owns it.

Stages and the policy on each edge::

    stdin reader ──(video: bounded 64, full → drop the frame, gate on a keyframe, ask for one)──► video decoder task (per stream)
                 ──(audio: bounded 100, full → drop the packet, counted)──────────────────────────► audio decoder task (per stream)
    video decoder (decodes just before each frame's playout time) → latest-frames slot (deque of 4)
    audio decoder → AudioMixer ring (bounded by seconds; late or overflowing samples counted)
    video clock (fps, ``playout_delay`` behind real time) → composite + x264 (one thread call per tick)
    audio clock (4 AAC frames per tick) → mix → AAC encoder       both → FragmentedMp4Writer (serialised mux)

No single message from the pipe can end the recording: an oversize or
malformed one, and a control message whose params do not fit its type
(:mod:`edge_recorder.media.wire`), are skipped by the parser, media for an
unknown stream is dropped here, all counted (``pipe_drops`` in the stats
events) and the first of each kind reported as a ``warning``; an unknown op
is a warning each time. Control messages are dispatched with ``match`` on
their types, exhaustively (mypy checks the ``assert_never``). A
participant's name that cannot be drawn is left out of the picture
(``label_failures``). When the worker does fail, its ``error`` event
names the root cause (never just "ExceptionGroup") and the whole traceback
goes to stderr, which the session logs at ERROR.

Thread hand-offs are counted, not free: each crosses the GIL twice. The
worker makes about one per input video frame, one per output frame, and a
dozen a second for audio (batched), measured against the benchmark.

The output timeline is the session's: tick ``n`` shows, per input, the latest
frame whose media time is ≤ ``(n + ½) / fps`` (the nearest to the tick), and is rendered at wall time
``t0 + n / fps + playout_delay``, so frames up to ``playout_delay`` late still
make it. Output pts come from counters, never from the network. When the
machine cannot keep up, whole ticks are skipped (counted as dropped frames)
rather than letting the lag grow without bound.

Pauses are cut out of the output (:mod:`edge_recorder.media.timeline`): the
clocks iterate output ticks and samples, map them to media time, and wait on
an event inside an open pause; the first frame after a cut is an IDR, the
audio ramps down and up over ``CUT_FADE_S`` on each side, and input media
inside a pause is dropped. Excluded peers (``exclude_peer``) are neither laid
out, named on the slate nor mixed.

With ``Configure.tracks_dir`` every stream's encoded frames are also copied,
as they arrive and without decoding, into a track of its own
(:mod:`edge_recorder.media.tracks`), stamped on the same output timeline;
pauses and exclusions apply to them as to the composite (``track`` events).

Stop is end-of-stream: the ``stop`` message gives the media instant to stop at;
both clocks run to it, the encoders are flushed and the file closed. If the
parent vanishes (stdin EOF without ``stop``), the worker stops at "now" and
finalises the file all the same.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar, assert_never

import trio

from edge_recorder.errors import DecodeError
from edge_recorder.media import wire
from edge_recorder.media.layout import LayoutName
from edge_recorder.media.levels import SILENCE_DBOV, dbov_of_pcm
from edge_recorder.media.timeline import OutputTimeline

T = TypeVar("T")

# Encoded frames wait in these queues for their playout time (the decoders
# decode just in time, so only a few decoded pictures are ever alive): they
# must hold a playout delay's worth (300 ms is 18 frames at 60 fps, 15 Opus
# packets) with room for bursts.
VIDEO_QUEUE_FRAMES = 64
AUDIO_QUEUE_PACKETS = 100
DECODED_FRAMES_KEPT = 4
# Decode this far ahead of a frame's playout tick so it is ready in time.
DECODE_LEAD_S = 0.05
AUDIO_BLOCK_SAMPLES = 1024  # one AAC frame
# The audio clock mixes and encodes four AAC frames (85 ms) per thread hand-off.
AUDIO_TICK_SAMPLES = 4 * AUDIO_BLOCK_SAMPLES
# Opus packets are gathered this long and decoded in one hand-off.
AUDIO_BATCH_S = 0.1
STATS_INTERVAL_S = 1.0
# Audio ramps down before a pause's cut and up after it, so the jump between
# two media instants does not click.
CUT_FADE_S = 0.005
# Tracks (issue #14): queued frames are muxed this often, and flushed (made
# durable, reported to the parent for upload) this often.
TRACK_WRITE_INTERVAL_S = 0.25
TRACK_FLUSH_INTERVAL_S = 1.0
# Decoded-energy levels (for streams without RFC 6464) go to the parent this often.
LEVELS_INTERVAL_S = 0.2


@dataclass
class _StreamSlot:
    """One input stream inside the worker."""

    index: int
    key: str
    kind: wire.MediaKind
    source: str
    peer_id: str
    display_name: str
    codec: str
    send: trio.MemorySendChannel[wire.MediaMessage]
    receive: trio.MemoryReceiveChannel[wire.MediaMessage]
    # video: decoded (media_time, frame), oldest first
    frames: collections.deque[tuple[float, Any]] = field(default_factory=lambda: collections.deque(maxlen=DECODED_FRAMES_KEPT))
    shown: Any = None
    # Video: the parent says whether media is flowing (a paused camera is
    # not a candidate for the layout); ``wanted`` is whether the layout
    # shows it, or is about to, so it is worth decoding.
    live: bool = False
    wanted: bool = False
    # Audio without the RFC 6464 extension: report decoded energy instead.
    report_levels: bool = False
    level_dbov: float = SILENCE_DBOV
    placer: Any = None
    awaiting_keyframe: bool = True
    # Video: counts the pictures ``shown`` has held: what makes a tick's picture new.
    shown_number: int = 0
    # Video: media time of the last frame decoded (a resume between it and
    # the next one breaks the reference chain).
    last_media_s: float | None = None
    decoded: int = 0
    decode_errors: int = 0
    queue_drops: int = 0


class MediaWorker:
    """The worker's state and its Trio tasks. Built from the ``configure`` message.

    Args:
        config: the first message.
        emit: writes one encoded event line to the parent (any thread).

    Raises:
        TypeError, ValueError: ``config``'s encoder or overlay settings do not fit.
    """

    def __init__(self, config: wire.Configure, emit: Callable[[bytes], None]) -> None:
        from edge_recorder.media.composite import Compositor
        from edge_recorder.media.encode import EncoderSettings
        from edge_recorder.media.layout import LayoutSettings
        from edge_recorder.media.mixer import AudioMixer

        self._emit = emit
        self.path: str = config.path
        # The timeline origin comes with the "start" message, once the parent
        # has seen "ready": worker start-up time is not recording time.
        self.t0: float = 0.0
        self.started = trio.Event()
        self.layout: LayoutName = config.layout
        # False: the audio mix alone (no composite asked for): no video decoded or encoded.
        self.composite = config.composite
        # An unchanged picture is not encoded again (wire.Configure.skip_unchanged).
        self.skip_unchanged = config.skip_unchanged
        self.frames_repeated = 0
        # What the last encoded tick drew: its scene and each picture's number.
        self._last_drawn: Any = None
        self._last_key_tick = 0
        self.delay_s: float = config.playout_delay_s
        self.max_lag_s: float = config.max_lag_s
        # The settings' own constructors check these (a key they lack is a TypeError).
        encoder: dict[str, Any] = dict(config.encoder)
        overlay: dict[str, Any] = dict(config.overlay)
        self.encoder_settings = EncoderSettings(**encoder)
        self.layout_settings = LayoutSettings(
            width=self.encoder_settings.width, height=self.encoder_settings.height, **overlay
        )
        self.fps = self.encoder_settings.fps
        self._half_frame_s = 0.5 / self.fps
        # A label Pillow cannot draw is left out, never fatal; say so once per name.
        self.compositor = Compositor(
            self.encoder_settings.width,
            self.encoder_settings.height,
            on_warning=lambda message: self._event(wire.WorkerWarning(message)),
        )
        self.mixer = AudioMixer(sample_rate=self.encoder_settings.sample_rate, channels=2)
        self.writer: Any = None
        self.limiter = trio.CapacityLimiter(config.threads)
        self.streams: dict[int, _StreamSlot] = {}
        self.active_speaker: str | None = None
        # A peer pinned as the main picture (wire.Layout.spotlight).
        self.spotlight: str | None = None
        # Peers taken out of the recording (consent): no picture, name or audio.
        self.excluded: set[str] = set()
        # Output ticks and samples to media time, with pauses cut out.
        self.timeline = OutputTimeline(self.fps, self.encoder_settings.sample_rate)
        # Set (and replaced) on pause, resume and stop: what a clock waiting
        # inside an open pause waits on.
        self._timeline_moved = trio.Event()
        # The first output tick and sample each clock has not produced yet:
        # a late pause cuts there, never behind what is already encoded.
        self._video_next_tick = 0
        self._audio_next_sample = 0
        self._audio_samples = 0
        self._keyed_cuts = 0
        self.stop_at_s: float | None = None
        self.stop_requested = trio.Event()
        self.frames_encoded = 0
        self.frames_dropped = 0
        self.audio_blocks = 0
        self.fragments = 0
        self.fragment_bytes = 0
        self.first_frame_sent = False
        # Pipe messages dropped instead of ending the recording, by reason:
        # "oversize" and "malformed" (framing or JSON), "bad_control" (a
        # control op whose params do not fit its type), all from the parser;
        # "unknown_stream" (media for an index not added or already removed).
        # An unknown op is a warning each time, not counted.
        self.pipe_drops: dict[str, int] = {"oversize": 0, "malformed": 0, "bad_control": 0, "unknown_stream": 0}
        self._decoders: trio.Nursery | None = None
        # Every stream's own track (issue #14), when asked for.
        self.tracks: Any = None
        if config.tracks_dir:
            from edge_recorder.media.tracks import TrackArchive

            self.tracks = TrackArchive(config.tracks_dir, warn=lambda message: self._event(wire.WorkerWarning(message)))
        self._wanted: frozenset[int] = frozenset()
        self._wanted_signature: Any = None

    # -- the one door to blocking work -------------------------------------------

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one PyAV (or file) call in a thread under the worker's limiter.

        Cancellation waits for the call to return (``abandon_on_cancel`` is
        off): a codec context must never be used by two threads at once.
        """
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    def _now_media_s(self) -> float:
        return time.monotonic() - self.t0

    async def _sleep_until_media(self, media_s: float) -> None:
        """Sleep until wall time ``t0 + media_s + delay``."""
        wait = (self.t0 + media_s + self.delay_s) - time.monotonic()
        if wait > 0:
            await trio.sleep(wait)

    # -- control -------------------------------------------------------------------

    def _event(self, event: wire.Event) -> None:
        self._emit(wire.encode_event(event))

    def _on_fragment(self, complete_bytes: int, media_end_s: float) -> None:
        # Called in the muxing thread; emit() is a non-blocking buffered write.
        self.fragments += 1
        self.fragment_bytes = complete_bytes
        self._event(wire.Fragment(complete_bytes=complete_bytes, media_end_s=round(media_end_s, 3)))

    def _count_drop(self, reason: str, detail: str) -> None:
        """Count a dropped pipe message; the first of each reason is also a warning."""
        self.pipe_drops[reason] += 1
        if self.pipe_drops[reason] == 1:
            self._event(wire.WorkerWarning(f"dropped a pipe message ({reason}): {detail[:200]}"))

    def _on_dropped(self, msg: wire.DroppedMessage) -> None:
        if msg.reason == "unknown_op":
            # A newer parent, or a typo: said every time, as it always was.
            self._event(wire.WorkerWarning(msg.detail))
        else:
            self._count_drop(msg.reason, msg.detail)

    def handle_control(self, msg: wire.Control) -> None:
        """Apply one control message (the parser already dropped those whose params do not fit)."""
        match msg:
            case wire.AddStream():
                self._add_stream(msg)
            case wire.RemoveStream(index=index):
                self._remove_stream(index)
            case wire.Start(t0_monotonic=t0):
                self.t0 = t0
                self.started.set()
            case wire.ActiveSpeaker(peer_id=peer_id):
                self.active_speaker = peer_id
            case wire.Layout():
                self._apply_layout(msg)
            case wire.Pause(at_s=at_s):
                self._pause(at_s)
            case wire.Resume(at_s=at_s):
                self._resume(at_s)
            case wire.ExcludePeer(peer_id=peer_id, excluded=excluded):
                self._set_excluded(peer_id, excluded)
            case wire.StreamLive(index=index, live=live):
                slot = self.streams.get(index)
                if slot is not None:
                    slot.live = live
            case wire.Stop(at_s=at_s):
                if at_s is None or math.isnan(at_s):
                    at_s = self._now_media_s()
                self.stop_at_s = min(max(0.0, at_s), 1e9)
                self.stop_requested.set()
                self.started.set()
                self._wake_clocks()
            case wire.Configure():
                # Only the first message configures; the recording goes on as it is.
                self._event(wire.WorkerWarning("configure again ignored: the worker is configured once"))
            case _:
                assert_never(msg)

    def _wake_clocks(self) -> None:
        self._timeline_moved.set()
        self._timeline_moved = trio.Event()

    def _apply_layout(self, msg: wire.Layout) -> None:
        """Layout, spotlight and overlay from the next tick; an overlay value that does not fit is ignored."""
        self.layout = msg.layout
        self.spotlight = msg.spotlight
        # Each separately, so a bad corner does not cost a good width.
        changes: list[dict[str, Any]] = []
        if msg.overlay_corner is not None:
            changes.append({"overlay_corner": msg.overlay_corner})
        if msg.overlay_width_pct is not None:
            changes.append({"overlay_width_pct": msg.overlay_width_pct})
        for change in changes:
            try:
                self.layout_settings = dataclasses.replace(self.layout_settings, **change)
            except ValueError as exc:
                self._event(wire.WorkerWarning(f"layout change ignored: {exc}"[:300]))

    def _pause(self, at_s: float) -> None:
        rate = self.encoder_settings.sample_rate
        floor = max(self._video_next_tick, -(-self._audio_next_sample * self.fps // rate))
        try:
            changed = self.timeline.pause(at_s, not_before_tick=floor)
        except ValueError as exc:
            self._event(wire.WorkerWarning(f"pause ignored: {exc}"))
            return
        if changed:
            self._drop_paused_frames()
            self._wake_clocks()

    def _resume(self, at_s: float) -> None:
        try:
            changed = self.timeline.resume(at_s)
        except ValueError as exc:
            self._event(wire.WorkerWarning(f"resume ignored: {exc}"))
            return
        if not changed:
            return
        boundary = round(self.timeline.cuts[-1].output_tick * self.encoder_settings.sample_rate / self.fps)
        resumed = self.timeline.media_sample(boundary)
        if resumed is not None and self._audio_next_sample >= boundary:
            # The audio clock waits at the cut: move the mixer there now, or
            # audio written for the resumed instant would land more than the
            # mixer's buffer ahead of a cursor left at the pause and be dropped.
            self.mixer.skip_to(resumed)
        self._drop_paused_frames()
        self._wake_clocks()

    def _drop_paused_frames(self) -> None:
        """Forget decoded pictures whose media time falls inside a pause: never shown."""
        for slot in self.streams.values():
            if slot.kind == "video" and any(self.timeline.in_pause(t) for t, _ in slot.frames):
                kept = [(t, f) for t, f in slot.frames if not self.timeline.in_pause(t)]
                slot.frames.clear()
                slot.frames.extend(kept)

    def _set_excluded(self, peer_id: str, excluded: bool) -> None:
        """Take a peer out of the recording, or put them back (their video then waits for a keyframe)."""
        if excluded == (peer_id in self.excluded):
            return
        slots = [slot for slot in self.streams.values() if slot.peer_id == peer_id]
        if excluded:
            self.excluded.add(peer_id)
            if self.tracks is not None:
                at = self.timeline.output_s(self._now_media_s())
                self.tracks.excluded([slot.key for slot in slots], at if at is not None else 0.0)
            for slot in slots:
                self._drain(slot)
                if slot.kind == "video":
                    slot.frames.clear()
                    slot.shown = None
                    slot.awaiting_keyframe = True
                    self.compositor.forget(slot.key)
                else:
                    self.mixer.clear_input(slot.key)
            return
        self.excluded.discard(peer_id)
        for slot in slots:
            if slot.kind == "video":
                slot.awaiting_keyframe = True
                self._event(wire.KeyframeNeeded(slot.index, why="included"))

    @staticmethod
    def _drain(slot: _StreamSlot) -> None:
        while True:
            try:
                slot.receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return

    def _add_stream(self, msg: wire.AddStream) -> None:
        index = msg.index
        if index in self.streams:
            self._remove_stream(index)
        capacity = VIDEO_QUEUE_FRAMES if msg.kind == "video" else AUDIO_QUEUE_PACKETS
        send, receive = trio.open_memory_channel[wire.MediaMessage](capacity)
        slot = _StreamSlot(
            index=index,
            key=msg.key,
            kind=msg.kind,
            source=msg.source,
            peer_id=msg.peer_id,
            display_name=msg.display_name or msg.peer_id,
            codec=msg.codec,
            send=send,
            receive=receive,
            awaiting_keyframe=msg.kind == "video",
            live=msg.live,
            report_levels=msg.report_levels,
        )
        self.streams[index] = slot
        if self.tracks is not None:
            self.tracks.open(slot.key, slot.kind, slot.codec)
        if slot.kind == "audio":
            self.mixer.add_input(slot.key)
        assert self._decoders is not None
        if slot.kind == "video":
            if self.composite:  # without one, video is only ever a track's
                self._decoders.start_soon(self._video_decoder, slot)
        else:
            self._decoders.start_soon(self._audio_decoder, slot)

    def _remove_stream(self, index: int) -> None:
        slot = self.streams.pop(index, None)
        if slot is None:
            return
        slot.send.close()
        if self.tracks is not None and not any(other.key == slot.key for other in self.streams.values()):
            self.tracks.close_stream(slot.key)
        if slot.kind == "audio":
            self.mixer.remove_input(slot.key)
        else:
            self.compositor.forget(slot.key)

    def handle_media(self, msg: wire.MediaMessage) -> None:
        slot = self.streams.get(msg.stream_index)
        if slot is None:
            self._count_drop("unknown_stream", f"media for stream index {msg.stream_index}")
            return
        if self.tracks is not None:
            self._keep_in_track(slot, msg)
        if slot.kind == "video" and not self.composite:
            return  # no picture to draw: nothing decodes it
        try:
            slot.send.send_nowait(msg)
        except trio.WouldBlock:
            # Policy: never block the reader (it also carries control). A video
            # frame lost here breaks the reference chain: gate and ask for a keyframe.
            slot.queue_drops += 1
            if slot.kind == "video" and not slot.awaiting_keyframe:
                slot.awaiting_keyframe = True
                self._event(wire.KeyframeNeeded(slot.index, why="queue-full"))
        except trio.ClosedResourceError:
            pass

    def _keep_in_track(self, slot: _StreamSlot, msg: wire.MediaMessage) -> None:
        """Queue a frame for its stream's own track: not when excluded, paused or past the stop."""
        if slot.peer_id in self.excluded:
            return
        if self.stop_at_s is not None and msg.media_time_s >= self.stop_at_s:
            return
        output_s = self.timeline.output_s(msg.media_time_s)
        if output_s is not None:
            self.tracks.offer(slot.key, msg.data, output_s, msg.keyframe)

    async def tracks_loop(self) -> None:
        """Mux the tracks' queued frames a few times a second; flush and report them once a second."""
        flushed = time.monotonic()
        while True:
            await trio.sleep(TRACK_WRITE_INTERVAL_S)
            if time.monotonic() - flushed >= TRACK_FLUSH_INTERVAL_S:
                flushed = time.monotonic()
                for event in await self._blocking(self.tracks.flush):
                    self._event(event)
            else:
                await self._blocking(self.tracks.write_pending)

    def _dispatch(self, messages: list[wire.PipeItem]) -> None:
        for msg in messages:
            match msg:
                case wire.MediaMessage():
                    self.handle_media(msg)
                case wire.DroppedMessage():
                    self._on_dropped(msg)
                case _:
                    self.handle_control(msg)

    async def reader(
        self,
        stdin: trio.abc.ReceiveStream,
        parser: wire.MessageReader,
        pending: list[wire.PipeItem],
    ) -> None:
        """Dispatch messages from the parent until EOF.

        Args:
            stdin: the pipe from the parent.
            parser: the parser that already read ``configure`` (it may hold a
                partial message).
            pending: messages parsed in the same read as ``configure``.
        """
        self._dispatch(pending)
        while True:
            data = await stdin.receive_some(1 << 16)
            if not data:
                break
            self._dispatch(parser.feed(data))
        if not self.stop_requested.is_set():
            # The parent is gone: finalise what we have rather than lose it.
            self.stop_at_s = self._now_media_s() if self.started.is_set() else 0.0
            self.stop_requested.set()
            self.started.set()
            self._wake_clocks()

    # -- decoders --------------------------------------------------------------

    async def _video_decoder(self, slot: _StreamSlot) -> None:
        from edge_recorder.media.decode import VideoDecoder

        decoder = await self._blocking(VideoDecoder, slot.codec)
        try:
            async for msg in slot.receive:
                if slot.peer_id in self.excluded or self.timeline.in_pause(msg.media_time_s):
                    continue  # never shown: taken out of the recording, or inside a pause
                if (
                    slot.last_media_s is not None
                    and not msg.keyframe
                    and self.timeline.cut_between(slot.last_media_s, msg.media_time_s)
                ):
                    # What came before the resume was never sent: the
                    # reference chain is broken.
                    if not slot.awaiting_keyframe:
                        slot.awaiting_keyframe = True
                        self._event(wire.KeyframeNeeded(slot.index, why="resume"))
                    continue
                if not slot.wanted or (slot.awaiting_keyframe and not msg.keyframe):
                    # In flight when the layout stopped showing it: not worth a decode.
                    continue
                # Just in time: a decoded 720p picture is 1.4 MB, an encoded
                # one a few KB, so the playout delay is spent in encoded form.
                await self._sleep_until_media(msg.media_time_s - DECODE_LEAD_S)
                if slot.peer_id in self.excluded or self.timeline.in_pause(msg.media_time_s):
                    continue  # excluded or paused while it waited
                slot.last_media_s = msg.media_time_s
                try:
                    frames = await self._blocking(decoder.decode, msg.data)
                except DecodeError as exc:
                    # Never show what follows a broken reference: hold the last
                    # good picture until the next keyframe.
                    slot.decode_errors += 1
                    slot.awaiting_keyframe = True
                    self._event(wire.KeyframeNeeded(slot.index, why=f"decode-error: {exc}"))
                    continue
                slot.awaiting_keyframe = False
                if not slot.wanted or slot.peer_id in self.excluded:
                    continue  # dropped from the layout during the decode
                for frame in frames:
                    slot.decoded += 1
                    slot.frames.append((msg.media_time_s, frame))
        finally:
            with trio.move_on_after(2, shield=True):
                await self._blocking(decoder.close)

    async def _audio_decoder(self, slot: _StreamSlot) -> None:
        from edge_recorder.media.decode import AudioDecoder
        from edge_recorder.media.drift import AudioPlacer

        decoder = await self._blocking(AudioDecoder, slot.codec, self.encoder_settings.sample_rate)
        rate = self.encoder_settings.sample_rate
        # Packets are laid end to end; the placer absorbs timestamp jitter and
        # the sender clock's drift by stretching or trimming a few samples.
        slot.placer = AudioPlacer(sample_rate=rate)

        def decode_batch(batch: list[wire.MediaMessage]) -> list[tuple[int, Any]]:
            out = []
            for msg in batch:
                try:
                    pcm = decoder.decode(msg.data)
                except DecodeError:
                    slot.decode_errors += 1
                    continue
                if slot.report_levels and len(pcm):
                    slot.level_dbov = max(slot.level_dbov, dbov_of_pcm(pcm))
                out.append(slot.placer.place(round(msg.media_time_s * rate), pcm))
            return out

        while True:
            try:
                batch = [await slot.receive.receive()]
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            # An Opus packet decodes in ~30 µs, less than a thread hand-off:
            # gather what arrives within AUDIO_BATCH_S (well inside the
            # playout delay) and decode it in one call.
            await trio.sleep(AUDIO_BATCH_S)
            while True:
                try:
                    batch.append(slot.receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            # Nothing of an excluded peer is mixed, nor anything inside a pause.
            batch = [m for m in batch if slot.peer_id not in self.excluded and not self.timeline.in_pause(m.media_time_s)]
            if not batch:
                continue
            for start, pcm in await self._blocking(decode_batch, batch):
                slot.decoded += 1
                if slot.index in self.streams and slot.peer_id not in self.excluded:
                    self.mixer.write(slot.key, start, pcm)

    # -- output clocks -----------------------------------------------------------

    def _update_wanted(self, speaker_name: str | None) -> None:
        """Decide which video streams to decode; tell the parent when that changes.

        ``speaker_name`` is this tick's :meth:`_speaker_card_name`.

        The parent forwards frames only of wanted streams (it keeps the rest
        back to their last keyframe), so a room of twenty cameras costs what
        the one or two on screen cost. A stream that stops being wanted
        forgets its picture: when it comes back it starts from a keyframe, and
        until then the layout never shows a stale picture of it.
        """
        from edge_recorder.media.layout import VideoInput, inputs_to_decode

        # Laying out forty inputs twice per tick costs more than the check:
        # recompute only when something the layout reads changed.
        signature = (
            self.layout,
            self.active_speaker,
            speaker_name,
            self.spotlight,
            self.layout_settings,
            tuple(
                (slot.index, slot.live, None if slot.shown is None else (slot.shown.width, slot.shown.height))
                for slot in self.streams.values()
                if slot.kind == "video" and slot.peer_id not in self.excluded
            ),
        )
        if signature == self._wanted_signature:
            return
        self._wanted_signature = signature
        videos = [
            (
                slot,
                VideoInput(
                    key=slot.key,
                    peer_id=slot.peer_id,
                    source=slot.source,
                    display_name=slot.display_name,
                    width=slot.shown.width if slot.shown is not None else 0,
                    height=slot.shown.height if slot.shown is not None else 0,
                ),
            )
            for slot in self.streams.values()
            if slot.kind == "video" and slot.peer_id not in self.excluded
        ]
        keys = inputs_to_decode(
            self.layout,
            [i for slot, i in videos if slot.live],
            [i for _, i in videos if i.has_picture],
            self.active_speaker,
            self.layout_settings,
            spotlight=self.spotlight,
            speaker_name=speaker_name,
        )
        wanted = frozenset(
            slot.index
            for slot in self.streams.values()
            if slot.kind == "video" and slot.key in keys and slot.peer_id not in self.excluded
        )
        if wanted == self._wanted:
            return
        for slot in self.streams.values():
            if slot.kind != "video":
                continue
            now_wanted = slot.index in wanted
            if slot.wanted and not now_wanted:
                slot.frames.clear()
                slot.shown = None
                slot.awaiting_keyframe = True
                self.compositor.forget(slot.key)
            if now_wanted and not slot.wanted and slot.awaiting_keyframe and self.tracks is not None:
                # With tracks the parent forwards every frame, shown or not,
                # and replays no GOP when one is shown: a keyframe that came
                # before the layout wanted the stream was not decoded, and
                # WebRTC senders send the next one only when asked.
                self._event(wire.KeyframeNeeded(slot.index, why="shown"))
            slot.wanted = now_wanted
        self._wanted = wanted
        self._event(wire.Visibility(visible=tuple(sorted(wanted))))

    def _speaker_card_name(self) -> str | None:
        """The active speaker's display name when none of their cameras is live, else None.

        pip then shows the speaker's name card where the camera would be
        (:func:`~edge_recorder.media.layout.compute_scene`), not a listener's
        camera: a stream that stopped sending (a camera turned off) is not
        live. A speaker we have no stream of, or an excluded one, gets no card.
        """
        speaker = self.active_speaker
        if speaker is None or speaker in self.excluded:
            return None
        name: str | None = None
        for slot in self.streams.values():
            if slot.peer_id != speaker:
                continue
            if slot.kind == "video" and slot.source == "camera" and slot.live:
                return None
            name = name or slot.display_name or None
        return name

    def _scene_inputs(self, tick_s: float) -> tuple[list[Any], dict[str, Any], list[str]]:
        from edge_recorder.media.layout import VideoInput

        inputs: list[VideoInput] = []
        frames: dict[str, Any] = {}
        names: list[str] = []
        for slot in self.streams.values():
            if slot.peer_id in self.excluded:
                continue  # not on the slate, not in the picture
            if slot.display_name and slot.display_name not in names:
                names.append(slot.display_name)
            if slot.kind != "video":
                continue
            # The frame nearest the tick, not the latest before it: the
            # picture is then within half a frame of its time (±17 ms at
            # 30 fps) instead of up to a whole frame late, which is what lip
            # sync is measured against.
            q = slot.frames
            due = tick_s + self._half_frame_s
            while len(q) > 1 and q[1][0] <= due:
                q.popleft()
            if q and q[0][0] <= due and q[0][1] is not slot.shown:
                slot.shown = q[0][1]
                slot.shown_number += 1  # a new picture (an id() could be reused, a count cannot)
            if slot.shown is None:
                continue
            frames[slot.key] = slot.shown
            inputs.append(
                VideoInput(
                    key=slot.key,
                    peer_id=slot.peer_id,
                    source=slot.source,
                    display_name=slot.display_name,
                    width=slot.shown.width,
                    height=slot.shown.height,
                )
            )
        return inputs, frames, names

    def _render_and_encode(self, scene: Any, frames: dict[str, Any], index: int, keyframe: bool = False) -> None:
        """Composite one tick and encode it: one thread hand-off per output frame.

        Compositing costs ~0.3 ms, less than what a second hand-off (and a
        channel between two tasks) costs in GIL traffic, measured in the
        benchmark; x264 does not start before the picture exists anyway.
        """
        picture = self.compositor.render(scene, frames)
        self.writer.encode_video(picture, index, force_keyframe=keyframe)

    async def video_clock(self) -> None:
        """Render output ticks until the stop instant, in media time with pauses cut out.

        Inside an open pause it waits for the resume (or the stop); the first
        tick after a cut is a keyframe, so it starts a fragment.
        """
        from edge_recorder.media.layout import compute_scene

        n = 0
        while True:
            self._video_next_tick = n
            if self.stop_at_s is not None and n >= self.timeline.output_ticks_until(self.stop_at_s):
                return
            media = self.timeline.media_tick(n)
            if media is None:
                await self._timeline_moved.wait()
                continue
            tick_s = media / self.fps
            behind = self._now_media_s() - self.delay_s - tick_s
            if behind > self.max_lag_s:
                # Cannot keep up: skip whole ticks instead of growing the lag
                # (never across a cut: past it the media times jump).
                skip = max(1, int(behind * self.fps))
                boundary = self.timeline.next_boundary_tick(n)
                if boundary is not None:
                    skip = min(skip, boundary - n)
                self.frames_dropped += skip
                n += skip
                continue
            await self._sleep_until_media(tick_s)
            if self.timeline.media_tick(n) != media:
                continue  # paused (or stopped) while it slept
            if self.stop_at_s is not None and n >= self.timeline.output_ticks_until(self.stop_at_s):
                return
            speaker_name = self._speaker_card_name()
            self._update_wanted(speaker_name)
            inputs, frames, names = self._scene_inputs(tick_s)
            scene = compute_scene(
                self.layout,
                inputs,
                self.active_speaker,
                names,
                self.layout_settings,
                spotlight=self.spotlight,
                speaker_name=speaker_name,
            )
            cuts = self.timeline.cuts_before_tick(n)
            keyframe = cuts > self._keyed_cuts
            drawn: Any = None
            if self.skip_unchanged:
                drawn = (scene, tuple((slot.key, slot.shown_number) for slot in self.streams.values() if slot.key in frames))
                if n - self._last_key_tick >= self.encoder_settings.keyint:
                    # By time, not by encoded frames: a fragment (what a crash
                    # can lose) stays keyframe_interval_s long however still the picture.
                    keyframe = True
                last = self.stop_at_s is not None and n + 1 >= self.timeline.output_ticks_until(self.stop_at_s)
                if drawn == self._last_drawn and not keyframe and not last:
                    self.frames_repeated += 1
                    self.frames_encoded += 1
                    n += 1
                    continue
            await self._blocking(self._render_and_encode, scene, frames, n, keyframe)
            if keyframe:
                self._last_key_tick = n
            self._last_drawn = drawn
            self._keyed_cuts = cuts
            self.frames_encoded += 1
            if scene.placements and not self.first_frame_sent:
                self.first_frame_sent = True
                self._event(wire.FirstFrame(monotonic=time.monotonic(), media_s=tick_s))
            n += 1

    async def audio_clock(self) -> None:
        """Mix and encode output samples until the stop instant; no block crosses a pause's cut.

        Output sample ``s`` plays media sample ``timeline.media_sample(s)``;
        the mixer, in media samples, skips the cut interval. The last
        :data:`CUT_FADE_S` before a cut ramp down, the first after it ramp up.
        """
        from edge_recorder.media.mixer import fade_edges

        rate = self.encoder_settings.sample_rate
        fade = max(1, round(CUT_FADE_S * rate))
        start = 0
        while True:
            self._audio_next_sample = start
            stop_sample = None if self.stop_at_s is None else self.timeline.output_samples_until(self.stop_at_s)
            if stop_sample is not None and start >= stop_sample:
                return
            media = self.timeline.media_sample(start)
            if media is None:
                await self._timeline_moved.wait()
                continue
            boundary = self.timeline.next_boundary_sample(start)
            # Whole AAC frames per call, and no further than the stop instant or a cut.
            count = AUDIO_TICK_SAMPLES
            for limit in (stop_sample, boundary):
                if limit is not None:
                    count = min(count, limit - start)
            block_end_s = (media + count) / rate
            behind = self._now_media_s() - self.delay_s - block_end_s
            if behind > self.max_lag_s:
                # Falling this far behind means the machine is starved; skip
                # rather than let the lag grow (the writer fills the gap with
                # silence, so the track stays continuous).
                skip = max(AUDIO_BLOCK_SAMPLES, int(behind * rate) // AUDIO_BLOCK_SAMPLES * AUDIO_BLOCK_SAMPLES)
                start = start + skip if boundary is None else min(start + skip, boundary)
                continue
            await self._sleep_until_media(block_end_s)
            if self.timeline.media_sample(start) != media or self.timeline.next_boundary_sample(start) != boundary:
                continue  # paused while it slept: plan the block again
            if self.stop_at_s is not None and self.timeline.output_samples_until(self.stop_at_s) != stop_sample:
                continue
            pcm = self.mixer.mix(media, count)
            fade_edges(
                pcm,
                fade_in=fade if self.timeline.is_cut_sample(start) else 0,
                fade_out=fade if boundary is not None and start + count == boundary else 0,
            )
            await self._blocking(self.writer.encode_audio, pcm, start)
            self._audio_samples += count
            self.audio_blocks = self._audio_samples // AUDIO_BLOCK_SAMPLES
            start += count

    async def stats_loop(self) -> None:
        while True:
            await trio.sleep(STATS_INTERVAL_S)
            self._event(self.stats())

    async def levels_loop(self) -> None:
        """Report the loudest decoded level of each stream without RFC 6464 levels."""
        while True:
            await trio.sleep(LEVELS_INTERVAL_S)
            levels = {}
            for slot in self.streams.values():
                if slot.report_levels:
                    levels[slot.index] = round(slot.level_dbov, 1)
                    slot.level_dbov = SILENCE_DBOV
            if levels:
                self._event(wire.Levels(levels))

    def _slot_stats(self, slot: _StreamSlot) -> wire.StreamStats:
        counts = wire.StreamStats(decoded=slot.decoded, decode_errors=slot.decode_errors, queue_drops=slot.queue_drops)
        if slot.kind == "video":
            return dataclasses.replace(counts, decoding=slot.wanted)
        if slot.placer is not None:
            placer = slot.placer
            return dataclasses.replace(
                counts,
                placement_error_s=round(placer.error_samples / self.encoder_settings.sample_rate, 4),
                samples_inserted=placer.stats.samples_inserted,
                samples_removed=placer.stats.samples_removed,
            )
        return counts

    def stats(self) -> wire.Stats:
        """The counters now, for a ``stats`` event."""
        media = self.timeline.media_tick(self._video_next_tick)
        lag = 0.0 if media is None else self._now_media_s() - self.delay_s - media / self.fps
        return wire.Stats(
            frames_encoded=self.frames_encoded,
            frames_dropped=self.frames_dropped,
            audio_blocks=self.audio_blocks,
            fragments=self.fragments,
            complete_bytes=self.fragment_bytes,
            lag_s=round(max(0.0, lag), 3),
            streams={s.key: self._slot_stats(s) for s in self.streams.values()},
            pipe_drops=dict(self.pipe_drops),
            label_failures=self.compositor.label_failures,
            cut_s=round(self.timeline.cut_s, 3) if self.timeline.cuts else None,
            frames_repeated=self.frames_repeated if self.skip_unchanged else None,
        )

    def finished(self) -> wire.Finished:
        """The last counters, once the file is closed."""
        stats = self.stats()
        counters = {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
        return wire.Finished(**counters, duration_s=round(self.frames_encoded / self.fps, 3))

    # -- the whole life ----------------------------------------------------------

    async def run(
        self,
        stdin: trio.abc.ReceiveStream,
        parser: wire.MessageReader,
        pending: list[wire.PipeItem],
    ) -> None:
        """Record until the stop instant, then finalise the file.

        On cancellation or failure the encoders are still flushed and the file
        closed (shielded, bounded), so it plays up to its last fragment.
        """
        from edge_recorder.media.encode import FragmentedMp4Writer

        self.writer = await self._blocking(
            lambda: FragmentedMp4Writer(
                self.path, self.encoder_settings, on_fragment=self._on_fragment, audio_only=not self.composite
            )
        )
        self._event(wire.Ready(pid=os.getpid()))
        try:
            async with trio.open_nursery() as outer:
                self._decoders = outer
                outer.start_soon(self.reader, stdin, parser, pending)
                await self.started.wait()
                outer.start_soon(self.stats_loop)
                outer.start_soon(self.levels_loop)
                if self.tracks is not None:
                    outer.start_soon(self.tracks_loop)
                async with trio.open_nursery() as pipeline:
                    if self.composite:
                        pipeline.start_soon(self.video_clock)
                    pipeline.start_soon(self.audio_clock)
                # Both clocks reached the stop instant: nothing more to read.
                outer.cancel_scope.cancel()
        finally:
            # Flush the encoders and close the file even on failure, so the
            # recording is playable up to its last fragment. Bounded: a wedged
            # encoder must not keep a dead session's process alive forever.
            with trio.move_on_after(30, shield=True):
                await self._blocking(self.writer.close)
            if self.tracks is not None:
                # The tracks too, each up to what arrived before the stop.
                with trio.move_on_after(30, shield=True):
                    for event in await self._blocking(self.tracks.close):
                        self._event(event)
        self._event(self.finished())


class _EventPipe:
    """Writes event lines to stdout without blocking the Trio loop for long.

    Events are small and few; a plain blocking write to a pipe the parent
    drains continuously returns at once. A broken pipe (parent gone) is
    ignored: the worker still finalises the file.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()  # the muxing thread emits "fragment" too
        self.broken = False

    def __call__(self, line: bytes) -> None:
        with self._lock:
            if self.broken:
                return
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError:
                self.broken = True


# The "error" event's message is one line for the session's error text;
# the whole traceback goes to stderr, which the parent logs.
ERROR_MESSAGE_CHARS = 2000
_CHAIN_DEPTH_MAX = 32


def _leaves(exc: BaseException) -> list[BaseException]:
    """``exc`` itself, or every leaf of it when it is an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _innermost(exc: BaseException, depth: int = 0) -> list[BaseException]:
    """Where ``exc`` started: the end of its ``raise ... from`` (or implicit) chain."""
    inner = exc.__cause__ if exc.__cause__ is not None else (None if exc.__suppress_context__ else exc.__context__)
    if inner is None or depth >= _CHAIN_DEPTH_MAX:
        return [exc]
    return [root for leaf in _leaves(inner) for root in _innermost(leaf, depth + 1)]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def describe_failure(exc: BaseException) -> str:
    """Name what really went wrong in ``exc``, for an operator, on one line.

    A Trio nursery reports a failed task as an ``ExceptionGroup (1
    sub-exception)``, and adapters re-raise foreign errors as ours with
    ``raise X from exc``; neither says what happened. This names the root of
    each failure (every leaf of every group, followed down its chain of
    causes) and the exception it surfaced as.

    Args:
        exc: what ended the worker.

    Returns:
        ``"Root: message (raised as Outer: message)"``, failures joined by
        ``"; "``, at most :data:`ERROR_MESSAGE_CHARS` characters.
    """
    parts: list[str] = []
    for leaf in _leaves(exc):
        for root in _innermost(leaf):
            text = _one_line(root)
            if root is not leaf:
                text += f" (raised as {_one_line(leaf)})"
            if text not in parts:
                parts.append(text)
    message = "; ".join(parts)
    if len(message) > ERROR_MESSAGE_CHARS:
        message = message[: ERROR_MESSAGE_CHARS - 1] + "…"
    return message


def _framing_drop(item: wire.PipeItem) -> bool:
    return isinstance(item, wire.DroppedMessage) and item.reason in ("oversize", "malformed")


async def _amain() -> int:
    emit = _EventPipe(sys.stdout.fileno())
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    parser = wire.MessageReader()
    pending: list[wire.PipeItem] = []
    # Messages skipped by their framing before "configure" are kept, to be
    # counted once the worker exists; the first message that parsed must be
    # a configure that fits.
    while not any(not _framing_drop(item) for item in pending):
        data = await stdin.receive_some(1 << 16)
        if not data:
            return 0
        pending += parser.feed(data)
    first_index = next(i for i, item in enumerate(pending) if not _framing_drop(item))
    first = pending.pop(first_index)
    if not isinstance(first, wire.Configure):
        why = f": {first.detail}" if isinstance(first, wire.DroppedMessage) else ""
        emit(wire.encode_event(wire.WorkerError(f"first message must be configure{why}")))
        return 2
    try:
        worker = MediaWorker(first, emit)
        await worker.run(stdin, parser, pending)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, then exit 1
        # The full traceback (groups drawn in full) goes to stderr, which the
        # parent logs at ERROR; the event names the root cause.
        trace = "".join(traceback.format_exception(exc))
        emit(wire.encode_event(wire.WorkerError(describe_failure(exc), traceback=trace[-4000:])))
        sys.stderr.write(trace)
        sys.stderr.flush()
        return 1
    return 0


def main() -> int:
    # Media threads cross the GIL 20-30 times a frame; a shorter switch interval
    # bounds how long each re-acquisition waits behind the Trio thread
    # (measured 2.6x → 1.7x worst case in the reference notes).
    sys.setswitchinterval(0.001)
    # Ctrl-C at a terminal signals the whole foreground process group, this
    # worker too: the session stops it through the pipe (flushing the file),
    # and on its own it would die mid-fragment. SIGTERM stays as it is: only
    # someone targeting this process sends it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return trio.run(_amain)


if __name__ == "__main__":
    sys.exit(main())

