"""``python -m edge_recorder.bench --upload``: stop → COMPLETED upload latency, three designs, one run.

The question (the upload-latency issue): how long after stop is a 10-minute
recording in the store as ``composite.mp4``, with this project's designs (the
spool streamed while recording, by one
:class:`~edge_recorder.sink.streamer.SpoolStreamer` with either target:
parts of one multipart upload completed at stop, the default, or chunk
objects composed server-side at stop: docs/storage.md) against the runbook's
(upload the whole file after stop)? Target: ≤ 2 s.

What runs, against a ``moto_server`` started here on a free port (the same
server the integration tests use; no real S3 is touched):

1. **A spool file the size of a 10-minute recording.** Its first bytes are a
   real fragmented MP4: a few seconds encoded by
   :class:`~edge_recorder.media.encode.FragmentedMp4Writer` with the recorder's
   output settings, whose ``ftyp``+``moov`` init segment (and its trailer) are
   kept; the time its ``close()`` takes (encoder flush, last fragment,
   trailer) is reported as the media finalisation. After the init segment come
   **synthetic fragments**: one ``moof`` + ``mdat`` pair per GOP (2 s), with
   valid box headers and random payload, sized for the output's nominal bitrate
   (video + audio, ±15 % per GOP). The upload path only sees bytes and
   fragment offsets, so this is what it would see from a real recording, at a
   fraction of the encoding time.
2. **Chunks design** (``RECORDING_S3_UPLOAD_MODE=chunks``): the file grows
   fragment by fragment, *faster than real time* (10 minutes in about
   :data:`WRITE_WALL_S` seconds), each fragment reported with
   ``SpoolStreamer.fragment_written`` while ``run()`` uploads chunks
   (:class:`~edge_recorder.sink.compose.ComposeTarget`) in the background, as a
   session does. Before the last fragment the
   benchmark waits until ``run()`` has stored every chunk that was due (a
   real-time recording gives it 2 s per fragment; the wait is reported), and
   until it has done every roll-up that was due (chunks rolled up server-side,
   ``ROLLUP_FANOUT`` at a time: docs/storage.md). Then
   the last fragment and the trailer land, ``run()`` is cancelled and
   ``upload(total)`` runs: tail upload, compose, size check, SHA-256, chunk
   delete. Its wall time, from "stop" to the verified object, is the figure.
   stop → COMPLETED is that plus the media finalisation.
2b. **Multipart design** (``RECORDING_S3_UPLOAD_MODE=multipart``, the
   default): the same growing spool, uploaded by
   the same streamer with a :class:`~edge_recorder.sink.multipart.MultipartTarget`,
   as the parts of one multipart upload; at stop ``upload(total)`` sends the tail as the
   last part and completes the upload (no server-side copy), checks the size
   and hashes the spool. ``--upload-mode`` picks which streaming designs run
   (default both).
3. **Runbook design:** the finished file is uploaded with minio's
   ``fput_object`` (multipart, 16 MiB parts, 3 parallel uploads, the same SSE)
   and timed.

Both designs reach moto through :class:`ShapedLink`, a Trio proxy that
behaves like an uplink to a regional S3 (:data:`LINK_MBPS` Mbit/s shared per
direction, :data:`LINK_RTT_MS` ms round trip): on bare loopback moto takes a
whole 190 MB file in about a second, which says nothing about a real store.
The whole-file upload straight to moto is timed too, as the local store's own
speed. What the link cannot model: S3's own time per ``UploadPartCopy``
(moto copies in memory), so the compose figure is a lower bound; and moto
shares the 2 cores with the benchmark.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import trio
from minio import Minio
from minio.sse import SseS3

from edge_recorder.bench.report import replace_marked_section
from edge_recorder.config import S3Settings, Secret
from edge_recorder.media.encode import EncoderSettings, FragmentedMp4Writer
from edge_recorder.media.mp4 import Mp4BoxScanner
from edge_recorder.sink.compose import ROLLUP_FANOUT, ComposeTarget, compose_uploader
from edge_recorder.sink.multipart import MultipartTarget, multipart_uploader
from edge_recorder.sink.plan import COMPOSITE_ASSET, Chunk
from edge_recorder.sink.s3 import AsyncObjectStore, ObjectInfo, ObjectStore
from edge_recorder.sink.streamer import SpoolStreamer

__all__ = [
    "FPUT_PARALLEL",
    "FPUT_PART_BYTES",
    "UPLOAD_MODES",
    "MultipartFigures",
    "TARGET_S",
    "UPLOAD_BEGIN",
    "UPLOAD_END",
    "UploadReport",
    "format_upload_table",
    "fragment_sizes",
    "make_fragment",
    "render_upload_markdown",
    "replace_upload_section",
    "run_upload_bench",
]

# The stop → COMPLETED target from the issue, seconds.
TARGET_S = 2.0
# Recording length measured by default (the 10 minutes).
RECORDING_S = 600.0
# Wall time over which the spool grows (faster than real time), seconds.
WRITE_WALL_S = 24.0
# Real media encoded for the init segment and the finalisation figure, seconds.
REAL_ENCODE_S = 4.0
# The runbook design's upload: minio fput_object, 16 MiB parts, 3 in parallel.
FPUT_PART_BYTES = 16 * 1024 * 1024
FPUT_PARALLEL = 3
# SSE on both designs (moto implements SSE-S3 headers).
SSE_MODE = "AES256"
# The link both designs reach the store through: an uplink to a regional S3.
LINK_MBPS = 100.0
LINK_RTT_MS = 20.0
# Each GOP's size varies by up to this fraction around the mean.
FRAGMENT_JITTER = 0.15

# The streaming designs --upload-mode can pick (RECORDING_S3_UPLOAD_MODE values).
UPLOAD_MODES = ("multipart", "chunks")

UPLOAD_BEGIN = "<!-- upload:begin -->"
UPLOAD_END = "<!-- upload:end -->"

_MIB = 1024 * 1024
_MOOF_BYTES = 1536  # a moof for 60 video + ~94 AAC samples is about this size


# ----------------------------------------------------------------------------- pure: the synthetic spool


def fragment_sizes(recording_s: float, gop_s: float, kbps: float, *, seed: int = 1, jitter: float = FRAGMENT_JITTER) -> list[int]:
    """Byte sizes of the ``moof``+``mdat`` fragments of a recording (pure, deterministic).

    One fragment per GOP; each is the mean (``kbps`` × ``gop_s``) scaled by a
    uniform factor in [1 - jitter, 1 + jitter], and the last is shortened to
    the remaining media time.
    """
    if recording_s <= 0 or gop_s <= 0 or kbps <= 0:
        raise ValueError("recording_s, gop_s and kbps must be positive")
    rng = random.Random(seed)
    sizes: list[int] = []
    t = 0.0
    while t < recording_s - 1e-9:
        span = min(gop_s, recording_s - t)
        mean = kbps * 1000 / 8 * span
        sizes.append(max(_MOOF_BYTES + 16, round(mean * rng.uniform(1 - jitter, 1 + jitter))))
        t += span
    return sizes


def make_fragment(size: int, payload: bytes | memoryview) -> bytes:
    """A ``moof`` + ``mdat`` pair of exactly ``size`` bytes with valid box headers (pure).

    The ``moof`` is :data:`_MOOF_BYTES` long; both bodies are cut from
    ``payload``, which must hold at least ``size`` bytes. Box structure only:
    the bodies are not parsable track fragments.
    """
    if size < _MOOF_BYTES + 8:
        raise ValueError(f"a fragment needs at least {_MOOF_BYTES + 8} bytes")
    if len(payload) < size:
        raise ValueError("payload shorter than the fragment")
    mdat = size - _MOOF_BYTES
    body = memoryview(payload)
    return b"".join(
        (
            struct.pack(">I4s", _MOOF_BYTES, b"moof"),
            body[: _MOOF_BYTES - 8],
            struct.pack(">I4s", mdat, b"mdat"),
            body[_MOOF_BYTES - 8 : size - 16],
        )
    )


# ----------------------------------------------------------------------------- pure: the report


@dataclass(frozen=True)
class MultipartFigures:
    """The multipart design's run (RECORDING_S3_UPLOAD_MODE=multipart). Seconds, bytes."""

    catch_up_s: float
    parts_during_recording: int
    part_put_bytes: int
    part_put_busy_s: float
    tail_bytes: int
    parts_total: int
    finish_s: float  # stop → verified composite.mp4 (SpoolStreamer.upload, multipart target)
    finish_tail_s: float  # the last part(s)
    finish_complete_s: float  # CompleteMultipartUpload

    @property
    def finish_other_s(self) -> float:
        """The rest of finish(): HEAD, SHA-256 of the spool, sidecar delete, scheduling."""
        return max(0.0, self.finish_s - self.finish_tail_s - self.finish_complete_s)


@dataclass(frozen=True)
class UploadReport:
    """One run of the upload benchmark. Times in seconds, sizes in bytes."""

    date: str
    machine: str
    software: str
    recording_s: float
    bitrate_kbps: float  # nominal: video + audio
    spool_bytes: int
    fragments: int
    part_size_bytes: int
    sse: str
    write_wall_s: float  # wall time the spool took to grow
    catch_up_s: float  # wait for run() to store every due chunk before the last fragment
    chunks_during_recording: int
    chunk_put_bytes: int
    chunk_put_busy_s: float  # summed wall time of the chunk PUTs while recording
    tail_bytes: int  # uploaded by finish()
    chunks_total: int
    finish_s: float  # stop → verified composite.mp4 (SpoolStreamer.upload, compose target)
    finish_tail_s: float
    finish_compose_s: float
    finish_delete_s: float
    media_finalise_s: float  # FragmentedMp4Writer.close() of a real encode
    whole_file_s: float  # fput_object of the finished file, through the link
    whole_file_loopback_s: float  # the same, straight to the store (its raw speed)
    link_mbps: float  # the shaped link both designs go through (0: none)
    link_rtt_ms: float
    fput_part_bytes: int = FPUT_PART_BYTES
    fput_parallel: int = FPUT_PARALLEL
    rollup_fanout: int = 0  # objects joined per roll-up while recording (0: none)
    rollups: int = 0  # roll-ups done while recording
    rollup_busy_s: float = 0.0  # summed wall time of those roll-ups (compose + delete of the sources)
    chunks_ran: bool = True  # whether the fields above describe a run of the chunks design
    multipart: MultipartFigures | None = None  # the multipart design, when it ran

    @property
    def multipart_stop_to_completed_s(self) -> float:
        """Multipart design: media finalisation + finish() (NaN when it did not run)."""
        return self.media_finalise_s + self.multipart.finish_s if self.multipart is not None else float("nan")

    @property
    def finish_other_s(self) -> float:
        """The rest of finish(): SHA-256 of the spool, size check, cancelling run(), scheduling."""
        return max(0.0, self.finish_s - self.finish_tail_s - self.finish_compose_s - self.finish_delete_s)

    @property
    def stop_to_completed_s(self) -> float:
        """Streaming design: media finalisation + finish()."""
        return self.media_finalise_s + self.finish_s

    @property
    def runbook_stop_to_completed_s(self) -> float:
        """Runbook design: media finalisation + uploading the whole file."""
        return self.media_finalise_s + self.whole_file_s

    @property
    def whole_file_bytes_per_s(self) -> float:
        """The local store's own speed: the whole-file upload on loopback, no shaping."""
        return self.spool_bytes / self.whole_file_loopback_s if self.whole_file_loopback_s > 0 else float("nan")

    @property
    def chunk_put_bytes_per_s(self) -> float:
        return self.chunk_put_bytes / self.chunk_put_busy_s if self.chunk_put_busy_s > 0 else float("nan")

    @property
    def speedup(self) -> float:
        """Whole-file upload time ÷ streaming finish time."""
        return self.whole_file_s / self.finish_s if self.finish_s > 0 else float("nan")

    @property
    def target_met(self) -> bool:
        """The default design's target: multipart when it ran, else chunks."""
        if self.multipart is not None:
            return self.multipart_stop_to_completed_s <= TARGET_S
        return self.stop_to_completed_s <= TARGET_S


def _link(r: UploadReport) -> str:
    return _link_text(r.link_mbps, r.link_rtt_ms)


def _link_text(mbps: float, rtt_ms: float) -> str:
    return f"{mbps:g} Mbit/s, {rtt_ms:g} ms RTT" if mbps > 0 else "loopback, no shaping"


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _rate(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 1e6:.0f} MB/s" if bytes_per_s == bytes_per_s else "n/a"


def table_rows(r: UploadReport) -> list[tuple[str, str, str, str]]:
    """(design, after stop, bytes sent after stop, stop → COMPLETED) rows."""
    rows: list[tuple[str, str, str, str]] = []
    m = r.multipart
    if m is not None:
        rows.append(
            (
                f"streaming one multipart upload + Complete ({m.parts_total} parts; default)",
                f"{m.finish_s:.2f} s",
                _mb(m.tail_bytes),
                f"{r.multipart_stop_to_completed_s:.2f} s",
            )
        )
    if r.chunks_ran:
        rows.append(
            (
                (
                    f"streaming chunks + roll-ups (fanout {r.rollup_fanout}) + compose ({r.chunks_total} objects at stop)"
                    if r.rollups
                    else f"streaming chunks + compose ({r.chunks_total} chunks)"
                ),
                f"{r.finish_s:.2f} s",
                _mb(r.tail_bytes),
                f"{r.stop_to_completed_s:.2f} s",
            )
        )
    rows.append(
        (
            f"whole file after stop (fput_object, {r.fput_part_bytes // _MIB} MiB × {r.fput_parallel})",
            f"{r.whole_file_s:.2f} s",
            _mb(r.spool_bytes),
            f"{r.runbook_stop_to_completed_s:.2f} s",
        )
    )
    return rows


def format_upload_table(r: UploadReport) -> str:
    """The console table (pure)."""
    header = ("design", "upload after stop", "sent after stop", "stop → COMPLETED")
    rows = [header, *table_rows(r)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(
        f"{r.recording_s / 60:g} min at {r.bitrate_kbps:.0f} kbps = {_mb(r.spool_bytes)}, every design through a link of {_link(r)}; "
        f"media finalisation {r.media_finalise_s * 1000:.0f} ms (writer close only)"
    )
    m = r.multipart
    if m is not None:
        lines.append(
            f"multipart finish = last part {m.finish_tail_s:.2f} + complete {m.finish_complete_s:.2f} + HEAD/hash/other {m.finish_other_s:.2f} s"
        )
    if r.chunks_ran:
        lines.append(
            f"chunks finish = tail {r.finish_tail_s:.2f} + compose {r.finish_compose_s:.2f} + delete {r.finish_delete_s:.2f} + hash/other {r.finish_other_s:.2f} s"
        )
    lines.append(f"local store alone: whole file in {r.whole_file_loopback_s:.2f} s = {_rate(r.whole_file_bytes_per_s)}")
    default_s = r.multipart_stop_to_completed_s if m is not None else r.stop_to_completed_s
    speedup = r.whole_file_s / m.finish_s if m is not None and m.finish_s > 0 else r.speedup
    lines.append(
        f"streaming ({'multipart' if m is not None else 'chunks'}) {speedup:.1f}x faster after stop; "
        f"target stop → COMPLETED ≤ {TARGET_S:g} s: {'met' if r.target_met else 'NOT met'} ({default_s:.2f} s)"
    )
    return "\n".join(lines)


def render_upload_markdown(r: UploadReport) -> str:
    """The docs/benchmarks.md section between the upload markers (pure)."""
    rows = table_rows(r)
    m = r.multipart
    designs = "All designs" if m is not None and r.chunks_ran else "Both designs"
    lines = [
        f"### Latest upload run: {r.date}",
        "",
        f"- Machine: {r.machine}",
        f"- Software: {r.software}",
        f"- Recording: {r.recording_s / 60:g} min at {r.bitrate_kbps:.0f} kbps nominal (video + audio) = "
        f"{_mb(r.spool_bytes)} in {r.fragments} fragments; chunks of ≥ {r.part_size_bytes // _MIB} MiB; SSE {r.sse}",
        f"- {designs} reach the store through a shaped link: {_link(r)} (a Trio proxy; one shared link per direction)",
    ]
    if m is not None:
        lines.append(
            f"- Multipart mode: spool grown in {r.write_wall_s:.1f} s ({r.recording_s / r.write_wall_s:.0f}x real time); "
            f"{m.parts_during_recording} parts ({_mb(m.part_put_bytes)}) stored while recording; "
            f"wait for the upload to catch up before the last fragment: {m.catch_up_s:.2f} s"
        )
    if r.chunks_ran:
        lines.append(
            f"- {'Chunks mode: s' if m is not None else 'S'}pool grown in {r.write_wall_s:.1f} s ({r.recording_s / r.write_wall_s:.0f}x real time); "
            f"{r.chunks_during_recording} chunks ({_mb(r.chunk_put_bytes)}) stored while recording; "
            f"wait for the upload to catch up before the last fragment: {r.catch_up_s:.2f} s"
        )
        if r.rollups:
            lines.append(
                f"- Roll-ups while recording (fanout {r.rollup_fanout}): {r.rollups}, {r.rollup_busy_s:.2f} s of store time "
                f"in all ({r.rollup_busy_s / r.rollups:.2f} s each), so {r.chunks_total} objects were composed at stop"
            )
    lines += [
        "",
        "| design | upload after stop | sent after stop | stop → COMPLETED |",
        "|---|---:|---:|---:|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
        f"- stop → COMPLETED = media finalisation ({r.media_finalise_s * 1000:.0f} ms: `FragmentedMp4Writer.close()` of a real "
        f"{REAL_ENCODE_S:g} s encode, flush + last fragment + trailer; the worker process's shutdown is not in it) + the upload after stop.",
    ]
    if m is not None:
        speedup = r.whole_file_s / m.finish_s if m.finish_s > 0 else float("nan")
        rate = m.part_put_bytes / m.part_put_busy_s if m.part_put_busy_s > 0 else float("nan")
        lines += [
            f"- Multipart `finish()` = last part {m.finish_tail_s:.2f} s + CompleteMultipartUpload {m.finish_complete_s:.2f} s "
            f"+ HEAD, SHA-256 of the spool, sidecar delete and the rest {m.finish_other_s:.2f} s; **{speedup:.1f}x** faster "
            f"after stop than the whole file. Part uploads through the link ran at {_rate(rate)}.",
        ]
    if r.chunks_ran:
        lines += [
            f"- {'Chunks ' if m is not None else ''}`finish()` = tail upload {r.finish_tail_s:.2f} s + compose {r.finish_compose_s:.2f} s + chunk delete "
            f"{r.finish_delete_s:.2f} s + SHA-256 of the spool, size check and the rest {r.finish_other_s:.2f} s.",
            f"- {'Chunks mode' if m is not None else 'Streaming'} is **{r.speedup:.1f}x** faster after stop. The local store alone (moto, loopback, no shaping) "
            f"takes the whole file in {r.whole_file_loopback_s:.2f} s ({_rate(r.whole_file_bytes_per_s)}); chunk PUTs through the link "
            f"ran at {_rate(r.chunk_put_bytes_per_s)}.",
        ]
    else:
        lines.append(
            f"- The local store alone (moto, loopback, no shaping) takes the whole file in {r.whole_file_loopback_s:.2f} s "
            f"({_rate(r.whole_file_bytes_per_s)})."
        )
    lines += ["", "| target | wanted | reached | met |", "|---:|---:|---:|---:|"]
    if m is not None:
        met = r.multipart_stop_to_completed_s <= TARGET_S
        lines.append(
            f"| stop → COMPLETED, {r.recording_s / 60:g}-minute recording (multipart, the default) | ≤ {TARGET_S:g} s | "
            f"{r.multipart_stop_to_completed_s:.2f} s | {'yes' if met else '**no**'} |"
        )
    if r.chunks_ran:
        met = r.stop_to_completed_s <= TARGET_S
        lines.append(
            f"| stop → COMPLETED, {r.recording_s / 60:g}-minute recording ({'chunks' if m is not None else 'streaming'}) | ≤ {TARGET_S:g} s | "
            f"{r.stop_to_completed_s:.2f} s | {'yes' if met else '**no**'} |"
        )
    return "\n".join(lines)


def replace_upload_section(document: str, section: str) -> str:
    """Put ``section`` between the upload markers, keeping everything else (pure)."""
    return replace_marked_section(document, section, begin_marker=UPLOAD_BEGIN, end_marker=UPLOAD_END)


# ----------------------------------------------------------------------------- moto_server


@dataclass(frozen=True)
class LocalStore:
    """A running moto_server with a bucket."""

    endpoint: str
    host: str
    port: int
    access_key: str = "bench-access-key"
    secret_key: str = "bench-secret-key"
    bucket: str = "edge-recorder-bench"

    def settings(self, **overrides: object) -> S3Settings:
        base = S3Settings(
            bucket=self.bucket,
            prefix="recordings/",
            region="us-east-1",
            access_key_id=self.access_key,
            secret_access_key=Secret(self.secret_key),
            endpoint=self.endpoint,
        )
        return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for moto_server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def moto_binary() -> str | None:
    """``moto_server`` next to this Python (the venv), else on PATH; None if missing."""
    here = Path(sys.executable).parent / "moto_server"
    if here.exists():
        return str(here)
    return shutil.which("moto_server")


def wait_until_answers(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait until ``process`` answers HTTP at ``url`` (any status); RuntimeError if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except urllib.error.HTTPError:
            return  # it answered, with an error status: it is up
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not answer at {url} within {timeout_s} s") from None
            time.sleep(0.1)


@contextlib.contextmanager
def moto_process(log_dir: Path) -> Iterator[int]:
    """Run ``moto_server`` on a free 127.0.0.1 port until the block ends; yields the port.

    Its output goes to ``log_dir/moto_server.log``; it never sees real AWS
    credentials (the ``AWS_*`` variables are dropped). The tests start theirs
    with it too (``tests/integration/s3_support.py``).

    Raises:
        RuntimeError: moto_server is not installed (``pip install -e '.[test]'``) or did not start.
    """
    binary = moto_binary()
    if binary is None:
        raise RuntimeError("moto_server is not installed: pip install -e '.[test]' (moto[server])")
    port = free_port()
    with (log_dir / "moto_server.log").open("wb") as log:
        process = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            # Dummy credentials only: never let moto see real ones.
            env={**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, "AWS_DEFAULT_REGION": "us-east-1"},
        )
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/", process, timeout_s=30.0)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def moto_server(log_dir: Path) -> Iterator[LocalStore]:
    """Start ``moto_server`` on a free port (127.0.0.1), make the bucket, stop it afterwards.

    Raises:
        RuntimeError: moto_server is not installed (``pip install -e '.[test]'``) or did not start.
    """
    with moto_process(log_dir) as port:
        store = LocalStore(endpoint=f"http://127.0.0.1:{port}", host="127.0.0.1", port=port)
        ObjectStore(store.settings()).ensure_bucket()
        yield store


# ----------------------------------------------------------------------------- the shaped link


class ShapedLink:
    """A TCP proxy in front of the store that behaves like a WAN link (Trio).

    Each direction is one shared link of ``mbps`` Mbit/s (every connection
    queues on it, as on one uplink) and delays every piece of data by half of
    ``rtt_ms``. Both designs go through it, so they pay the same bandwidth and
    the same round trips. Start with ``port = await nursery.start(link.run)``.
    """

    def __init__(self, target: tuple[str, int], *, mbps: float, rtt_ms: float) -> None:
        self._target = target
        self._bytes_per_s = mbps * 1e6 / 8
        self._one_way_s = rtt_ms / 2000
        self._link_free = {"up": 0.0, "down": 0.0}
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        listener = listeners[0]
        assert isinstance(listener, trio.SocketListener)
        self.port = listener.socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._relay, [listener])

    async def _relay(self, client: trio.SocketStream) -> None:
        async with client:
            try:
                upstream = await trio.open_tcp_stream(*self._target)
            except OSError:
                return
            async with upstream, trio.open_nursery() as pipes:
                pipes.start_soon(self._pipe, client, upstream, "up", pipes.cancel_scope)
                pipes.start_soon(self._pipe, upstream, client, "down", pipes.cancel_scope)

    async def _pipe(self, source: trio.SocketStream, sink: trio.SocketStream, way: str, done: trio.CancelScope) -> None:
        send, receive = trio.open_memory_channel[tuple[float, bytes]](64)

        async def deliver() -> None:
            async for arrived, data in receive:
                await trio.sleep_until(arrived + self._one_way_s)
                start = max(trio.current_time(), self._link_free[way])
                self._link_free[way] = start + len(data) / self._bytes_per_s
                await trio.sleep_until(self._link_free[way])
                await sink.send_all(data)
            await sink.send_eof()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(deliver)
                async with send:
                    while data := await source.receive_some(65536):
                        await send.send((trio.current_time(), data))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            done.cancel()


# ----------------------------------------------------------------------------- the real init segment


@dataclass(frozen=True)
class RealEncode:
    """A short real fMP4: its init segment and trailer, and how long close() took."""

    init: bytes  # ftyp + moov, up to the first moof
    trailer: bytes  # after the last complete fragment
    close_s: float
    fragments: int


def encode_real(path: Path, settings: EncoderSettings, seconds: float = REAL_ENCODE_S) -> RealEncode:
    """Encode ``seconds`` of moving synthetic video + a tone (blocking); time ``close()``."""
    ends: list[int] = []
    rng = np.random.default_rng(5)
    h, w = settings.height, settings.width
    base = np.zeros((h, w, 3), dtype=np.uint8)
    base[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    base[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    grain = [rng.integers(0, 24, (h, w, 3), dtype=np.uint8) for _ in range(4)]
    frames = round(seconds * settings.fps)
    writer = FragmentedMp4Writer(path, settings, on_fragment=lambda n, _t: ends.append(n))
    try:
        for i in range(frames):
            if i % settings.fps == 0:
                second = i // settings.fps
                t = np.arange(settings.sample_rate, dtype=np.float32) / settings.sample_rate + second
                tone = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
                writer.encode_audio(np.repeat(tone[:, None], 2, axis=1), second * settings.sample_rate)
            image = np.roll(base, 8 * i, axis=1) + grain[i % 4]
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, settings.fps)
            writer.encode_video(frame, i)
        started = time.perf_counter()
    finally:
        writer.close()
    close_s = time.perf_counter() - started
    data = path.read_bytes()
    first_moof = next((start for kind, start, _end in Mp4BoxScanner().feed(data) if kind == "moof"), None)
    if first_moof is None or not ends:
        raise RuntimeError("the real encode produced no fragment")
    return RealEncode(init=data[:first_moof], trailer=data[ends[-1] :], close_s=close_s, fragments=len(ends))


# ----------------------------------------------------------------------------- the two designs


@dataclass
class _Call:
    name: str
    started: float
    ended: float
    nbytes: int = 0


class TimedStore(AsyncObjectStore):
    """The real store, timing each PUT, compose and delete (Trio clock)."""

    def __init__(self, store: ObjectStore) -> None:
        super().__init__(store)
        self.calls: list[_Call] = []

    async def put_chunk(self, key: str, data: bytes) -> str:
        started = trio.current_time()
        etag = await super().put_chunk(key, data)
        self.calls.append(_Call("put", started, trio.current_time(), len(data)))
        return etag

    async def compose(self, session_id: str, chunks: Sequence[Chunk], *, asset: str = COMPOSITE_ASSET) -> ObjectInfo:
        started = trio.current_time()
        info = await super().compose(session_id, chunks, asset=asset)
        self.calls.append(_Call("compose", started, trio.current_time()))
        return info

    async def roll_up(self, session_id: str, chunks: Sequence[Chunk], *, asset: str = COMPOSITE_ASSET) -> ObjectInfo:
        started = trio.current_time()
        info = await super().roll_up(session_id, chunks, asset=asset)
        self.calls.append(_Call("roll_up", started, trio.current_time()))
        return info

    async def delete_chunks(self, session_id: str, chunks: Sequence[Chunk], *, asset: str = COMPOSITE_ASSET) -> None:
        started = trio.current_time()
        await super().delete_chunks(session_id, chunks, asset=asset)
        self.calls.append(_Call("delete", started, trio.current_time()))

    async def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> str:
        started = trio.current_time()
        etag = await super().upload_part(key, upload_id, part_number, data)
        self.calls.append(_Call("part", started, trio.current_time(), len(data)))
        return etag

    async def complete_multipart_upload(self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> str:
        started = trio.current_time()
        etag = await super().complete_multipart_upload(key, upload_id, parts)
        self.calls.append(_Call("complete", started, trio.current_time()))
        return etag

    def busy_s(self, name: str, *, since: float = float("-inf"), before: float = float("inf")) -> float:
        return sum(c.ended - c.started for c in self.calls if c.name == name and since <= c.started < before)

    def put_bytes(self, *, since: float = float("-inf"), before: float = float("inf"), name: str = "put") -> int:
        return sum(c.nbytes for c in self.calls if c.name == name and since <= c.started < before)


@dataclass(frozen=True)
class _Streamed:
    write_wall_s: float
    catch_up_s: float
    chunks_during_recording: int
    chunk_put_bytes: int
    chunk_put_busy_s: float
    tail_bytes: int
    chunks_total: int
    finish_s: float
    finish_tail_s: float
    finish_compose_s: float
    finish_delete_s: float
    rollup_fanout: int
    rollups: int
    rollup_busy_s: float


async def _stream(
    store: TimedStore,
    spool: Path,
    part_size_bytes: int,
    real: RealEncode,
    sizes: Sequence[int],
    write_wall_s: float,
    rollup_fanout: int = ROLLUP_FANOUT,
    mode: str = "chunks",
) -> _Streamed:
    """One streaming design (``mode``: "chunks" or "multipart") over a growing spool; the multipart
    figures land in the chunk-named fields (part uploads as "puts", Complete as "compose")."""
    sid = f"bench-{uuid.uuid4().hex[:12]}"
    uploader: SpoolStreamer[MultipartTarget] | SpoolStreamer[ComposeTarget]
    compose: ComposeTarget | None = None
    if mode == "multipart":
        uploader = multipart_uploader(store, spool, sid, part_size_bytes, retry_s=120)
    else:
        uploader = compose_uploader(store, spool, sid, part_size_bytes, retry_s=120, rollup_fanout=rollup_fanout)
        compose = uploader.target
    put = "part" if mode == "multipart" else "put"
    merge = "complete" if mode == "multipart" else "compose"
    pool = np.random.default_rng(11).integers(0, 256, 2 * max(sizes) + 4 * _MIB, dtype=np.uint8).tobytes()
    offsets = random.Random(13)
    interval = write_wall_s / len(sizes)
    written = 0
    with spool.open("wb") as f:

        def append(data: bytes) -> None:
            nonlocal written
            f.write(data)
            f.flush()
            written += len(data)

        def fragment(size: int) -> bytes:
            at = offsets.randrange(0, len(pool) - size)
            return make_fragment(size, memoryview(pool)[at : at + size])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(uploader.run)
            append(real.init)
            t0 = trio.current_time()
            for i, size in enumerate(sizes[:-1]):
                append(fragment(size))
                uploader.fragment_written(written)
                await trio.sleep_until(t0 + (i + 1) * interval)
            write_wall_s = trio.current_time() - t0
            # A real-time recording gives run() 2 s per fragment; here it may lag
            # the accelerated writer, so let it store what is due, as it would have.
            caught = trio.current_time()
            while written - uploader.uploaded_bytes >= part_size_bytes or uploader.idle_work_waiting:
                await trio.sleep(0.01)
            catch_up_s = trio.current_time() - caught
            during = uploader.chunks_uploaded_during_recording
            stored = uploader.uploaded_bytes
            recording_put_bytes = store.put_bytes(name=put)
            recording_put_busy = store.busy_s(put)
            # 10:00: the last fragment and the trailer land, and the session stops.
            append(fragment(sizes[-1]))
            uploader.fragment_written(written)
            append(real.trailer)
            stop = trio.current_time()
            nursery.cancel_scope.cancel()
    total = written
    result = await uploader.upload(total)
    finish_s = trio.current_time() - stop
    if result.size != total:
        raise RuntimeError(f"composed {result.size} bytes, the spool has {total}")
    return _Streamed(
        write_wall_s=write_wall_s,
        catch_up_s=catch_up_s,
        chunks_during_recording=during,
        chunk_put_bytes=recording_put_bytes,
        chunk_put_busy_s=recording_put_busy,
        tail_bytes=total - stored,
        chunks_total=result.chunks,
        finish_s=finish_s,
        finish_tail_s=store.busy_s(put, since=stop),
        finish_compose_s=store.busy_s(merge, since=stop),
        finish_delete_s=store.busy_s("delete", since=stop),
        rollup_fanout=compose.rollup_fanout if compose is not None else 0,
        rollups=compose.rollups if compose is not None else 0,
        rollup_busy_s=store.busy_s("roll_up") + store.busy_s("delete", before=stop),
    )


def upload_whole_file(local: LocalStore, path: Path, key: str) -> float:
    """The runbook design: ``fput_object`` the finished file; returns its wall time (blocking)."""
    client = Minio(local.host + f":{local.port}", access_key=local.access_key, secret_key=local.secret_key, secure=False, region="us-east-1")
    started = time.perf_counter()
    client.fput_object(
        local.bucket,
        key,
        str(path),
        content_type="video/mp4",
        sse=SseS3(),
        part_size=FPUT_PART_BYTES,
        num_parallel_uploads=FPUT_PARALLEL,
    )
    elapsed = time.perf_counter() - started
    size = client.stat_object(local.bucket, key).size
    if size != path.stat().st_size:
        raise RuntimeError(f"fput_object stored {size} bytes of {path.stat().st_size}")
    return elapsed


def _software() -> str:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    return f"Python {sys.version.split()[0]}, minio {version('minio')}, moto_server {version('moto')} on 127.0.0.1"


def _chunk_fields(streamed: _Streamed | None, multipart: _Streamed | None) -> dict[str, Any]:
    """The report's chunks-design fields; without a chunks run, placeholders flagged ``chunks_ran=False``."""
    if streamed is not None:
        return dataclasses.asdict(streamed)
    if multipart is None:
        raise ValueError("no streaming design ran")
    return {**dataclasses.asdict(multipart), "chunks_ran": False}


def run_upload_bench(
    say: Callable[[str], None],
    *,
    machine: str,
    encoder: EncoderSettings | None = None,
    part_size_mib: int = 8,
    recording_s: float = RECORDING_S,
    write_wall_s: float = WRITE_WALL_S,
    link_mbps: float = LINK_MBPS,
    link_rtt_ms: float = LINK_RTT_MS,
    rollup_fanout: int = ROLLUP_FANOUT,
    modes: Sequence[str] = UPLOAD_MODES,
) -> UploadReport:
    """Run the streaming designs in ``modes`` (multipart, chunks) and the whole-file one against a fresh moto_server (blocking, about a minute for 10 minutes of media).

    ``link_mbps`` 0 sends both straight to the store (no shaped link).
    """
    encoder = encoder if encoder is not None else EncoderSettings()
    kbps = float(encoder.video_bitrate_kbps + encoder.audio_bitrate_kbps)
    sizes = fragment_sizes(recording_s, encoder.keyframe_interval_s, kbps)
    part_size_bytes = part_size_mib * _MIB
    work = Path(tempfile.mkdtemp(prefix="edge-recorder-bench-upload-"))
    try:
        t = time.monotonic()
        real = encode_real(work / "real.mp4", encoder)
        say(
            f"  real {REAL_ENCODE_S:g} s fMP4 for the init segment ({len(real.init)} bytes) encoded in {time.monotonic() - t:.1f} s; "
            f"close() (media finalisation) {real.close_s * 1000:.0f} ms"
        )
        with moto_server(work) as local:
            spool = work / "spool.mp4"

            async def both() -> tuple[_Streamed | None, _Streamed | None, float]:
                async with trio.open_nursery() as nursery:
                    via = local
                    if link_mbps > 0:
                        link = ShapedLink((local.host, local.port), mbps=link_mbps, rtt_ms=link_rtt_ms)
                        port = await nursery.start(link.run)
                        via = dataclasses.replace(local, endpoint=f"http://127.0.0.1:{port}", port=port)
                    say(f"  moto_server at {local.endpoint}; both designs through {via.endpoint} ({_link_text(link_mbps, link_rtt_ms)})")
                    store = TimedStore(
                        ObjectStore(via.settings(sse=SSE_MODE, part_size_mib=part_size_mib), connect_timeout_s=5, read_timeout_s=120)
                    )
                    streamed: _Streamed | None = None
                    multipart: _Streamed | None = None
                    if "multipart" in modes:
                        say(
                            f"  multipart: {recording_s / 60:g} min at {kbps:.0f} kbps ({len(sizes)} fragments) grown over ~{write_wall_s:g} s, "
                            f"parts of ≥ {part_size_mib} MiB uploaded meanwhile..."
                        )
                        multipart = await _stream(store, spool, part_size_bytes, real, sizes, write_wall_s, mode="multipart")
                        say(
                            f"  multipart: finish() {multipart.finish_s:.2f} s after stop ({_mb(multipart.tail_bytes)} last part, "
                            f"{multipart.chunks_total} parts; upload caught up {multipart.catch_up_s:.2f} s after the writer)"
                        )
                        store.calls.clear()
                    if "chunks" in modes:
                        say(
                            f"  chunks: {recording_s / 60:g} min at {kbps:.0f} kbps ({len(sizes)} fragments) grown over ~{write_wall_s:g} s, "
                            f"chunks of ≥ {part_size_mib} MiB uploaded meanwhile..."
                        )
                        streamed = await _stream(store, spool, part_size_bytes, real, sizes, write_wall_s, rollup_fanout)
                        say(
                            f"  chunks: finish() {streamed.finish_s:.2f} s after stop ({_mb(streamed.tail_bytes)} tail, "
                            f"{streamed.chunks_total} chunks composed after {streamed.rollups} roll-ups; "
                            f"upload caught up {streamed.catch_up_s:.2f} s after the writer)"
                        )
                    say(f"  whole file: fput_object of {_mb(spool.stat().st_size)} ({FPUT_PART_BYTES // _MIB} MiB parts × {FPUT_PARALLEL})...")
                    key = f"recordings/runbook-{uuid.uuid4().hex[:12]}/composite.mp4"
                    whole = await trio.to_thread.run_sync(upload_whole_file, via, spool, key)
                    say(f"  whole file: {whole:.2f} s")
                    nursery.cancel_scope.cancel()
                return streamed, multipart, whole

            streamed, multipart, whole_s = trio.run(both)
            size = spool.stat().st_size
            whole_loopback_s = upload_whole_file(local, spool, f"recordings/runbook-{uuid.uuid4().hex[:12]}/composite.mp4")
            say(f"  whole file straight to the store (its raw speed): {whole_loopback_s:.2f} s")
        return UploadReport(
            date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            machine=machine,
            software=_software(),
            recording_s=recording_s,
            bitrate_kbps=kbps,
            spool_bytes=size,
            fragments=len(sizes),
            part_size_bytes=part_size_bytes,
            sse=SSE_MODE,
            media_finalise_s=real.close_s,
            whole_file_s=whole_s,
            whole_file_loopback_s=whole_loopback_s,
            link_mbps=link_mbps if link_mbps > 0 else 0.0,
            link_rtt_ms=link_rtt_ms if link_mbps > 0 else 0.0,
            multipart=None if multipart is None else MultipartFigures(
                catch_up_s=multipart.catch_up_s,
                parts_during_recording=multipart.chunks_during_recording,
                part_put_bytes=multipart.chunk_put_bytes,
                part_put_busy_s=multipart.chunk_put_busy_s,
                tail_bytes=multipart.tail_bytes,
                parts_total=multipart.chunks_total,
                finish_s=multipart.finish_s,
                finish_tail_s=multipart.finish_tail_s,
                finish_complete_s=multipart.finish_compose_s,
            ),
            **_chunk_fields(streamed, multipart),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

