"""Issue #14 after a crash: every track and the manifest are recovered, not only the composite.

* The recorder and its media worker SIGKILLed mid-recording with
  ``outputs: ["composite", "tracks"]``: at restart each track is cut to its
  last complete cluster, a manifest (``"recovered": true``) is written beside
  them, and the session is COMPLETED with an asset row for each (local
  destination: the files stay as the artifacts). Every track decodes to its
  end with PyAV, its frames as the manifest counts them.
* Recovery itself on tracks torn mid-cluster (WebM and fragmented MP4, as
  :class:`~edge_recorder.media.stems.TrackWriter` leaves them), with a bucket
  (moto): each track and the manifest uploaded, asset entries for the
  bookkeeper, the local copies removed; and a manifest already written at
  stop is delivered as it is, never written over.
"""

from __future__ import annotations

import json
import os
import signal
from functools import partial
from pathlib import Path
from typing import Any, Literal

import av
import psutil
import pytest
import trio

from edge_recorder.config import Settings, load_settings
from edge_recorder.demo.sfu import demo_producers, run_producer
from edge_recorder.media.stems import TrackWriter
from edge_recorder.metadata import MetadataRepository, default_database_url
from edge_recorder.recovery import last_complete_fragment_end, recover_session
from edge_recorder.session.destination import bucket_destination
from edge_recorder.session.state import Mover
from edge_recorder.sink.s3 import AsyncObjectStore, ObjectStore
from edge_recorder.spool import NodeSpool
from tests.integration.redis_support import RedisServer, redis_server  # noqa: F401 - fixture
from tests.integration.s3_support import S3Target, moto, s3_settings  # noqa: F401 - fixture
from tests.integration.sfu_client import SfuClient, connect_when_listening, open_client, start_serve
from tests.unit.media.test_stems import FPS, _opus_packets, _video_packets

pytestmark = pytest.mark.integration


def _decode(path: Path) -> tuple[str, str, int, float, float]:
    """Kind, codec, frames decoded, first and last frame time: every frame of the file (errors fail the test)."""
    with av.open(str(path)) as container:
        stream = container.streams[0]
        times = [
            float(f.time) for f in container.decode(stream) if isinstance(f, av.VideoFrame | av.AudioFrame) and f.time is not None
        ]
        return stream.type, stream.codec_context.name, len(times), times[0], times[-1]


def _process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


async def test_sigkill_mid_recording_recovers_every_track_and_the_manifest(
    settings: Settings, tmp_path: Path, nursery: trio.Nursery, redis_server: RedisServer  # noqa: F811
) -> None:
    env = dict(os.environ)
    env.update(
        # Shared state outlives the recorder: the restart learns the streams and outputs from it.
        RECORDING_REDIS_URL=redis_server.url,
        RECORDING_ENABLED="true",
        RECORDING_TMP_DIR=str(tmp_path / "svc"),
        RECORDING_PORT_MIN=str(settings.port_min),
        RECORDING_PORT_MAX=str(settings.port_max),
        RECORDING_CONTROL_PORT=str(settings.port_min),
        RECORDING_METRICS_PORT=str(settings.port_min + 1),
        RECORDING_OUTPUT_WIDTH="640",
        RECORDING_OUTPUT_HEIGHT="360",
        RECORDING_X264_PRESET="ultrafast",
        RECORDING_KEYFRAME_INTERVAL_S="1",
        RECORDING_SERVER_ID="crash-node",
    )

    async def start() -> trio.Process:
        return await start_serve(env)

    async def connect() -> SfuClient:
        return await connect_when_listening(nursery, f"ws://127.0.0.1:{settings.port_min}/control")

    sid = "crashed-tracks"
    tracks_dir = Path(env["RECORDING_TMP_DIR"]) / "crash-node" / f"{sid}.tracks"
    proc = await start()
    try:
        sfu = await connect()
        await sfu.call("recording.start", {"roomId": "room-crash", "sessionId": sid, "outputs": ["composite", "tracks", "audio"]})
        async with trio.open_nursery() as senders:
            for key in ("alice-cam", "alice-mic"):
                producer = demo_producers()[key]
                ports = await sfu.call("recording.addStream", producer.add_stream_params(sid))
                senders.start_soon(partial(run_producer, producer, (ports["ip"], ports["port"])))
            await trio.sleep(4.0)
            # The recorder and its media worker at once, mid-cluster: nothing is finalised.
            for process in _process_tree(proc.pid):
                process.send_signal(signal.SIGKILL)
            senders.cancel_scope.cancel()
        await proc.wait()
        await sfu.aclose()
    finally:
        if proc.returncode is None:
            proc.kill()
    sizes = {p.name: p.stat().st_size for p in tracks_dir.iterdir()}
    assert set(sizes) == {"alice-cam.webm", "alice-mic.webm"}, sizes  # no manifest: the stop never came
    assert (tracks_dir.parent / f"{sid}.session.json").exists(), "what the recovery needs to name the tracks"
    proc = await start()
    try:
        sfu = await connect()
        with trio.fail_after(30):
            while True:
                record = await sfu.call("recording.get", {"sessionId": sid})
                if record["status"] in ("COMPLETED", "FAILED"):
                    break
                await trio.sleep(0.3)
        assert record["status"] == "COMPLETED" and record["reason"] == "recovered", record
        assert sorted(t["name"] for t in record["tracks"]) == ["tracks/alice-cam.webm", "tracks/alice-mic.webm"], record
        assert record["manifest"]["url"] == (tracks_dir / "manifest.json").as_uri()
        manifest = json.loads((tracks_dir / "manifest.json").read_text())
        assert manifest["recovered"] is True and manifest["sessionId"] == sid and manifest["composite"] == "composite.mp4"
        by_file = {t["file"]: t for t in manifest["tracks"]}
        assert set(by_file) == {"tracks/alice-cam.webm", "tracks/alice-mic.webm"}
        expected = {"tracks/alice-cam.webm": ("video", "vp8", "alice-cam"), "tracks/alice-mic.webm": ("audio", "opus", "alice-mic")}
        for name, (kind, codec, producer_id) in expected.items():
            entry = by_file[name]
            path = tracks_dir / name.removeprefix("tracks/")
            assert (entry["kind"], entry["codec"], entry["producerId"]) == (kind, codec, producer_id), entry
            assert entry["sizeBytes"] == path.stat().st_size <= sizes[path.name]
            got_kind, got_codec, frames, first, last = _decode(path)  # plays to its (cut) end
            assert (got_kind, got_codec) == (kind, codec)
            # Every frame the manifest counts decodes, on the recording's timeline.
            assert frames == entry["frames"], (name, frames, entry)
            slack = 0.008 if kind == "audio" else 0.002  # Opus's pre-skip
            assert abs(first - entry["startS"]) <= slack and abs(last - entry["endS"]) <= slack, (name, first, last, entry)
        # About a second of each is lost at most: 4 s were sent.
        assert by_file["tracks/alice-cam.webm"]["frames"] >= (4.0 - 2.0) * 30, by_file
        assert by_file["tracks/alice-mic.webm"]["frames"] >= (4.0 - 2.0) * 50, by_file
        assert manifest["video"] == {"width": 640, "height": 360, "fps": 30}, manifest["video"]
        # The session sidecar kept the streams: each track names its peer, name and source.
        assert {(t["peerId"], t["displayName"], t["source"]) for t in manifest["tracks"]} == {
            ("alice", "Alice", "camera"),
            ("alice", "Alice", "microphone"),
        }
        assert not (tracks_dir.parent / f"{sid}.session.json").exists()
        # The audio-only mix, made again from the recovered composite.
        assert record["outputs"] == ["composite", "tracks", "audio"] and record["audio"]["name"] == "audio.m4a"
        with av.open(record["audio"]["url"].removeprefix("file://")) as container:
            assert [s.type for s in container.streams] == ["audio"]
            assert sum(f.samples for f in container.decode(audio=0)) >= (4.0 - 2.0) * 48000
        # A RecordingAsset row each, local paths.
        repository = MetadataRepository(default_database_url(load_settings(environ=env)))
        with trio.fail_after(10):
            while len(assets := repository.assets(sid)) < 5:
                await trio.sleep(0.1)
        assert [(a["kind"], a["name"]) for a in assets] == [
            ("audio", "audio.m4a"),
            ("composite", "composite.mp4"),
            ("manifest", "manifest.json"),
            ("track", "tracks/alice-cam.webm"),
            ("track", "tracks/alice-mic.webm"),
        ], assets
        assert {a["name"]: a["localPath"] for a in assets if a["kind"] != "composite"} == {
            "audio.m4a": str(tracks_dir.parent / f"{sid}.audio.m4a"),
            "manifest.json": str(tracks_dir / "manifest.json"),
            "tracks/alice-cam.webm": str(tracks_dir / "alice-cam.webm"),
            "tracks/alice-mic.webm": str(tracks_dir / "alice-mic.webm"),
        }
        await sfu.aclose()
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- recovery on torn tracks, with a bucket --------------------------------------------


class Books:
    """The bookkeeper as recovery sees it: remembers what was submitted."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def submit(self, record: dict[str, Any], asset: dict[str, Any] | None = None, *, remove_after: Path | None = None) -> None:
        self.records.append(record)


def _torn_track(path: Path, codec: str) -> tuple[int, int]:
    """A track as a SIGKILL leaves it: written past its last flush, never closed. (complete bytes, size)."""
    kind: Literal["audio", "video"] = "audio" if codec == "opus" else "video"
    scratch = path.with_name(f".scratch-{path.name}")
    writer = TrackWriter(str(scratch), codec, kind)
    if kind == "audio":
        frames = [(d, 2.0 + i * 0.02, False) for i, d in enumerate(_opus_packets(150))]
    else:
        frames = [(d, 2.0 + i / FPS, k) for i, (d, k) in enumerate(_video_packets(codec, frames=90))]
    for data, t, key in frames:
        writer.write(data, t, key)
    complete = writer.flush()
    # What the file holds when the process dies (no close(), no last cluster),
    # then the open cluster or fragment half written (what the kernel had of it).
    data = scratch.read_bytes()
    writer.close()
    scratch.unlink()
    torn = data + b"\x1f\x43\xb6\x75\x4f\xff" + os.urandom(300) if codec != "h264" else data + b"\x00\x00\x10\x00moof" + os.urandom(200)
    path.write_bytes(torn)
    return complete, len(torn)


def _fragmented_mp4(path: Path) -> None:
    """A small composite as the worker writes it (fragmented MP4, H.264), for the spool."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}) as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": "15"}
        for i in range(45):
            frame = av.VideoFrame(320, 180, "yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


async def test_torn_tracks_are_cut_uploaded_and_described_and_a_stop_manifest_is_kept(
    settings: Settings, moto: S3Target, tmp_path: Path  # noqa: F811
) -> None:
    import dataclasses

    svc = dataclasses.replace(settings, s3=s3_settings(moto, upload_retry_s=3.0))
    store = AsyncObjectStore(ObjectStore(svc.s3))

    def uploader_for(session_id: str, path: Path, *, asset: str = "composite.mp4") -> Any:
        return bucket_destination(
            store, session_id, path, asset=asset, upload_mode="multipart", part_size_bytes=5 << 20, retry_s=3.0, sse_mode=svc.s3.sse
        )

    spool = NodeSpool(Path(svc.tmp_dir), svc.server_id)
    spool.ensure()
    sid = f"torn-{os.getpid()}-{trio.current_time():.0f}"
    _fragmented_mp4(spool.create(sid))
    tracks_dir = spool.create_tracks_dir(sid)
    cuts = {name: _torn_track(tracks_dir / name, codec) for name, codec in (("bob-cam.webm", "vp8"), ("bob-mic.webm", "opus"), ("sue-cam.mp4", "h264"))}
    (tracks_dir / "empty.webm").write_bytes(b"")  # a stream that never sent a keyframe
    for name, (complete, size) in cuts.items():
        assert 0 < complete < size, name
    last_record = {
        "streams": [{"producerId": "bob-mic", "peerId": "bob", "kind": "audio", "source": "microphone"}],
        "tracks": [{"name": "tracks/sue-cam.mp4", "producerId": "sue/cam", "kind": "video", "codec": "h264"}],
        "events": [],
    }
    row = {"sessionId": sid, "roomId": "r", "status": "RECORDING", "serverId": svc.server_id, "startedAt": "2026-01-01T09:00:00.000Z", "updatedAt": "2026-01-01T09:00:05.000Z", "paused": False, "pauses": [], "layoutState": None, "excludedPeers": []}
    books = Books()
    final = await recover_session(row, svc, bookkeeper=books, uploader_for=uploader_for, last_record=last_record)
    assert final["status"] == "COMPLETED" and final["reason"] == "recovered", final
    tracks = {t["name"]: t for t in final["tracks"]}
    assert set(tracks) == {"tracks/bob-cam.webm", "tracks/bob-mic.webm", "tracks/sue-cam.mp4"}, final
    prefix = f"{svc.s3.prefix}{sid}/"
    for name, (complete, _) in cuts.items():
        entry = tracks[f"tracks/{name}"]
        # Cut exactly to what the writer had completed; that is what the bucket holds.
        assert entry["sizeBytes"] == complete and entry["key"] == f"{prefix}tracks/{name}" and entry["sha256"], entry
        body = await store.get_bytes(entry["key"])
        assert len(body) == complete
        local = tmp_path / name
        local.write_bytes(body)
        kind, codec, frames, first, _ = _decode(local)
        assert frames > 0 and abs(first - 2.0) <= 0.008 and entry["startS"] == pytest.approx(first, abs=0.008)
    assert tracks["tracks/sue-cam.mp4"]["producerId"] == "sue/cam"  # as the state record named it
    manifest = json.loads(await store.get_bytes(final["manifest"]["key"]))
    assert final["manifest"]["key"] == prefix + "manifest.json" and manifest["recovered"] is True
    by_file = {t["file"]: t for t in manifest["tracks"]}
    assert by_file["tracks/bob-mic.webm"]["peerId"] == "bob" and by_file["tracks/bob-mic.webm"]["source"] == "microphone"
    assert by_file["tracks/bob-cam.webm"]["peerId"] is None and by_file["tracks/sue-cam.mp4"]["codec"] == "h264"
    # Everything uploaded and verified: the copies are gone; the track that
    # never had a frame stays (nothing was delivered of it), so does its directory.
    assert sorted(p.name for p in tracks_dir.iterdir()) == ["empty.webm"]
    assert last_complete_fragment_end(spool.path_for(sid)) > 0

    # A stop that wrote its manifest, then failed to upload: retry delivers that manifest as it is.
    sid2 = sid + "-stop"
    _fragmented_mp4(spool.create(sid2))
    dir2 = spool.create_tracks_dir(sid2)
    _torn_track(dir2 / "ann-mic.webm", "opus")
    written = json.dumps({"version": 1, "sessionId": sid2, "tracks": [{"file": "tracks/ann-mic.webm", "producerId": "ann-mic", "startS": 2.0, "endS": 4.9, "frames": 150}]}).encode()
    (dir2 / "manifest.json").write_bytes(written)
    failed_row = {**row, "sessionId": sid2, "status": "UPLOADING"}
    final = await recover_session(failed_row, svc, bookkeeper=Books(), uploader_for=uploader_for, by=Mover.OPERATOR_RETRY)
    assert final["status"] == "COMPLETED", final
    assert await store.get_bytes(f"{svc.s3.prefix}{sid2}/manifest.json") == written
    (entry,) = final["tracks"]
    assert entry["producerId"] == "ann-mic" and entry["endS"] == 4.9

    # An unreadable manifest is never written over: the recovery fails, naming the kept directory.
    sid3 = sid + "-bad"
    _fragmented_mp4(spool.create(sid3))
    dir3 = spool.create_tracks_dir(sid3)
    _torn_track(dir3 / "x.webm", "vp8")
    (dir3 / "manifest.json").write_bytes(b'{"version": 1, "tra')
    final = await recover_session({**row, "sessionId": sid3}, svc, bookkeeper=Books(), uploader_for=uploader_for)
    assert final["status"] == "FAILED" and final["reason"] == "recovery-failed", final
    assert str(dir3) in final["error"] and "retry-upload" in final["error"]
    assert (dir3 / "manifest.json").read_bytes() == b'{"version": 1, "tra'
