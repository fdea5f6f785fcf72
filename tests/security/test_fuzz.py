"""A bounded fuzz run against a real service (issue #9, "Proof").

One ``edge-recorder serve`` process records one session with a VP8 camera
(RTCP on its own port) and an Opus microphone (RTCP muxed), fed real media by
a sender on host "sfu". Meanwhile:

* that same sender interleaves mutated RTP/RTCP of its own streams *from its
  latched sockets* (about half of the datagrams);
* a stranger on host "stranger" sends random and mutated datagrams from other
  sockets (the other half);
* a control fuzzer sends malformed JSON-RPC over authenticated WebSockets, and
  unauthenticated, wrong-path, garbage and silent handshakes;
* the test asks ``recorder.info`` / ``recording.get`` every 50 ms on its own
  connection and scrapes ``/metrics`` every second.

Then it stops the recording and checks: the session COMPLETED, the file
decodes with both tracks and a duration near the recording's, every
legitimate request was answered (worst under 1 s; the real p50/p99/max are
figures, not asserts), the service's RSS grew by less than 100 MiB, and the
drop counters by reason are nonzero and account for what was sent.

Hosts are network namespaces (``tests/security/netns.py``) when this runs as
root, so the stranger has another address than the SFU; otherwise both send
from loopback (other ports), which still exercises the source latch.

Set ``FUZZ_FIGURES=/path/figures.json`` to keep the figures, then
``python -m tests.security.fuzz --report /path/figures.json`` writes them into
``docs/security.md``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import httpx
import psutil
import pytest
import trio

from edge_recorder.demo.sfu import AUDIO_LEVEL_ID, demo_producers
from tests.integration.sfu_client import SfuClient, open_client
from tests.security import fuzz

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TOKEN = "fuzz-token-0123456789abcdef"
SESSION = "fuzz-session-1"
DATAGRAMS_PER_ORIGIN = 100_000  # two origins: 200 000 hostile datagrams
CONTROL_MESSAGES = 10_000
WARMUP_S = 2.0  # real media only, so the sender is latched before the fuzz
FUZZ_S = 22.0
SEEDS = {"source": 9001, "stranger": 9002, "control": 9003}


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _can_make_hosts() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


@contextlib.contextmanager
def _hosts() -> Any:
    """Two hosts (sfu, stranger) as namespaces, or None for both on loopback."""
    if not _can_make_hosts():
        yield None
        return
    from tests.security.netns import hosts

    with hosts(2, tag="fz") as made:
        yield made


def _stream_specs(ports: dict[str, dict[str, Any]], producers: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, p in producers.items():
        out.append(
            {
                "kind": p.kind,
                "port": ports[name]["port"],
                "rtcpPort": ports[name]["rtcpPort"],
                "payloadType": p.payload_type,
                "ssrc": p.ssrc,
                "clockRate": 90000 if p.kind == "video" else 48000,
                "audioLevelId": AUDIO_LEVEL_ID if p.kind == "audio" else None,
            }
        )
    return out


class Sampler:
    """RSS and CPU of the service and its media worker, every half second."""

    def __init__(self, pid: int) -> None:
        self.service = psutil.Process(pid)
        self.service_rss: list[int] = []
        self.worker_rss: list[int] = []
        self.worker: psutil.Process | None = None

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.service_rss.append(self.service.memory_info().rss)
        with contextlib.suppress(psutil.Error):
            if self.worker is None or not self.worker.is_running():
                kids = [c for c in self.service.children(recursive=True) if "edge_recorder.media.worker" in " ".join(c.cmdline())]
                self.worker = kids[0] if kids else None
            if self.worker is not None:
                self.worker_rss.append(self.worker.memory_info().rss)

    def worker_cpu_s(self) -> float:
        with contextlib.suppress(psutil.Error):
            if self.worker is not None:
                t = self.worker.cpu_times()
                return float(t.user + t.system)
        return 0.0

    async def run(self) -> None:
        while True:
            self.sample()
            await trio.sleep(0.5)


async def _metrics(client: httpx.AsyncClient, url: str) -> tuple[float, dict[str, dict[str, float]]]:
    t = time.perf_counter()
    body = (await client.get(url, timeout=5)).text
    return time.perf_counter() - t, fuzz.parse_prometheus(body)


def _total(metrics: dict[str, dict[str, float]], name: str) -> float:
    return sum(metrics.get(name, {}).values())


def _decode(path: Path) -> dict[str, Any]:
    with av.open(str(path)) as container:
        video = sum(1 for _ in container.decode(video=0))
    with av.open(str(path)) as container:
        audio = sum(1 for _ in container.decode(audio=0))
        duration = float(container.duration or 0) / av.time_base
        kinds = sorted({s.type for s in container.streams})
    return {"video_frames": video, "audio_frames": audio, "duration_s": round(duration, 2), "streams": kinds}


async def _run_json(argv: list[str], log: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run a fuzz sub-command to its end; returns the JSON it printed."""
    with log.open("wb") as err:
        proc = await trio.run_process(argv, capture_stdout=True, stderr=err, env=env, cwd=str(REPO), check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{argv[:6]}... exited {proc.returncode}: {log.read_text()[-3000:]}")
    return dict(json.loads(proc.stdout.decode().strip().splitlines()[-1]))


async def test_a_bounded_fuzz_run_leaves_the_recording_and_the_service_intact(tmp_path: Path, nursery: trio.Nursery) -> None:
    with _hosts() as hosts:
        await _fuzz_run(tmp_path, nursery, hosts)


async def _fuzz_run(tmp_path: Path, nursery: trio.Nursery, hosts: Any) -> None:
    bind_ip = hosts[0].gateway if hosts else "127.0.0.1"
    control_port, metrics_port = _free_tcp_port(), _free_tcp_port()
    port_min = 46000 + (os.getpid() % 40) * 40
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        RECORDING_ENABLED="true",
        RECORDING_TMP_DIR=str(tmp_path / "recordings"),
        RECORDING_PORT_MIN=str(port_min),
        RECORDING_PORT_MAX=str(port_min + 39),
        RECORDING_BIND_IP=bind_ip,
        RECORDING_SERVER_ID="fuzz-node",
        RECORDING_OUTPUT_WIDTH="640",
        RECORDING_OUTPUT_HEIGHT="360",
        RECORDING_X264_PRESET="ultrafast",
        RECORDING_KEYFRAME_INTERVAL_S="1",
        RECORDING_CONTROL_HOST="127.0.0.1",
        RECORDING_CONTROL_PORT=str(control_port),
        RECORDING_CONTROL_TOKEN=TOKEN,
        RECORDING_METRICS_HOST="127.0.0.1",
        RECORDING_METRICS_PORT=str(metrics_port),
        RECORDING_MIN_FREE_DISK_MIB="0",
    )
    service_log = tmp_path / "service.log"
    with service_log.open("wb") as log:
        service = await trio.lowlevel.open_process([sys.executable, "-m", "edge_recorder", "serve"], env=env, cwd=str(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    try:
        await _with_service(tmp_path, nursery, hosts, env, service, control_port, metrics_port, bind_ip)
    finally:
        if service.returncode is None:
            service.send_signal(signal.SIGINT)  # finalise now (SIGTERM would drain live recordings)
            with trio.move_on_after(30, shield=True):
                await service.wait()
            if service.returncode is None:
                service.kill()
                await service.wait()


async def _with_service(
    tmp_path: Path, nursery: trio.Nursery, hosts: Any, env: dict[str, str], service: trio.Process,
    control_port: int, metrics_port: int, bind_ip: str,
) -> None:  # fmt: skip
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    url = f"ws://127.0.0.1:{control_port}/control"
    http = httpx.AsyncClient()
    with trio.fail_after(30):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2)).status_code == 200:
                    break
            assert service.returncode is None, (tmp_path / "service.log").read_text()[-3000:]
            await trio.sleep(0.2)

    sfu = await open_client(nursery, url, [(b"Authorization", f"Bearer {TOKEN}".encode())])
    started = await sfu.call("recording.start", {"roomId": "room-fuzz", "sessionId": SESSION})
    assert started["status"] == "RECORDING"
    t_start = time.monotonic()
    demo = demo_producers()
    cam, mic = demo["alice-cam"], demo["alice-mic"]
    cam.ssrc, mic.ssrc = 0x1111_2222, 0x3333_4444
    producers = {"cam": cam, "mic": mic}
    ports: dict[str, dict[str, Any]] = {}
    cam_params = cam.add_stream_params(SESSION)
    cam_params["rtpParameters"]["rtcp"]["mux"] = False  # the camera's RTCP on a port of its own
    ports["cam"] = await sfu.call("recording.addStream", cam_params)
    ports["mic"] = await sfu.call("recording.addStream", mic.add_stream_params(SESSION))
    assert ports["cam"]["rtcpPort"] != ports["cam"]["port"]
    specs = _stream_specs(ports, producers)
    session_ports = sorted({s["port"] for s in specs} | {s["rtcpPort"] for s in specs})

    def udp(role: str, host: Any) -> list[str]:
        argv = [
            sys.executable, "-m", "tests.security.fuzz", "udp", "--role", role, "--ip", bind_ip,
            "--bind", host.address if host else "127.0.0.1", "--streams", json.dumps(specs),
            "--count", str(DATAGRAMS_PER_ORIGIN), "--duration", str(FUZZ_S),
            "--warmup", str(WARMUP_S), "--seed", str(SEEDS[role]),
        ]  # fmt: skip
        return host.command(argv) if host else argv

    control_argv = [
        sys.executable, "-m", "tests.security.fuzz", "control", "--url", url, "--token", TOKEN,
        "--session-id", SESSION, "--stream-params", json.dumps(demo["bob-cam"].add_stream_params(SESSION)),
        "--count", str(CONTROL_MESSAGES), "--duration", str(FUZZ_S - 2), "--connections", "4",
        "--handshakes", "24", "--seed", str(SEEDS["control"]), "--metrics", f"127.0.0.1:{metrics_port}",
    ]  # fmt: skip

    sampler = Sampler(service.pid)
    results: dict[str, dict[str, Any]] = {}
    latencies: list[float] = []
    quiet: list[float] = []  # before the fuzz starts: the same load minus the fuzz
    loud: list[float] = []
    fuzz_from = time.monotonic() + WARMUP_S
    failures: list[str] = []
    metrics_latencies: list[float] = []
    baseline: dict[str, int] = {}

    async def legit_requests(cancel: trio.CancelScope) -> None:
        # What a well-behaved SFU asks meanwhile: one request every 50 ms.
        with cancel:
            k = 0
            while True:
                method, params = ("recorder.info", None) if k % 2 else ("recording.get", {"sessionId": SESSION})
                t = time.perf_counter()
                try:
                    with trio.fail_after(5):
                        reply = await sfu.call_raw(method, params)
                except trio.TooSlowError:
                    failures.append(f"{method}: no answer in 5 s")
                else:
                    latencies.append(time.perf_counter() - t)
                    (quiet if time.monotonic() < fuzz_from else loud).append(latencies[-1])
                    if "error" in reply:
                        failures.append(f"{method}: {reply['error']}")
                    elif method == "recording.get" and reply["result"]["status"] != "RECORDING":
                        failures.append(f"status {reply['result']['status']} during the run")
                k += 1
                await trio.sleep(max(0.0, 0.05 - (time.perf_counter() - t)))

    async def scrape(cancel: trio.CancelScope) -> None:
        with cancel:
            while True:
                elapsed, _ = await _metrics(http, metrics_url)
                metrics_latencies.append(elapsed)
                await trio.sleep(1.0)

    async def run(name: str, argv: list[str], delay: float = 0.0) -> None:
        await trio.sleep(delay)
        results[name] = await _run_json(argv, tmp_path / f"{name}.log", env)

    async def baseline_after_warmup() -> None:
        # RSS "before": the session is recording real media, no fuzz yet.
        await trio.sleep(WARMUP_S - 0.2)
        sampler.sample()
        baseline["service"] = sampler.service_rss[-1]
        baseline["worker"] = sampler.worker_rss[-1] if sampler.worker_rss else 0
        t = sampler.service.cpu_times()
        baseline["service_cpu_ms"] = int((t.user + t.system) * 1000)
        baseline["worker_cpu_ms"] = int(sampler.worker_cpu_s() * 1000)

    side = trio.CancelScope()
    legit_scope, scrape_scope = trio.CancelScope(), trio.CancelScope()
    async with trio.open_nursery() as background:
        background.start_soon(legit_requests, legit_scope)
        background.start_soon(scrape, scrape_scope)
        background.start_soon(_cancellable, side, sampler.run)
        with trio.fail_after(FUZZ_S + WARMUP_S + 45):
            async with trio.open_nursery() as blasters:
                blasters.start_soon(baseline_after_warmup)
                blasters.start_soon(run, "source", udp("source", hosts[0] if hosts else None))
                blasters.start_soon(run, "stranger", udp("stranger", hosts[1] if hosts else None))
                blasters.start_soon(run, "control", control_argv, WARMUP_S)
        await trio.sleep(0.5)  # the last datagrams reach the sockets
        legit_scope.cancel()
        scrape_scope.cancel()
        sampler.sample()
        side.cancel()

    # Before stop: the sockets (and their kernel drop counts) still exist.
    _, during = await _metrics(http, metrics_url)
    kernel = fuzz.kernel_udp_drops(service.pid, session_ports)
    rss_after = sampler.service_rss[-1]
    service_cpu = sampler.service.cpu_times()
    worker_cpu_s = sampler.worker_cpu_s()
    stopped = await sfu.call("recording.stop", {"sessionId": SESSION, "reason": "host"})
    recording_s = time.monotonic() - t_start
    record = await sfu.call("recording.get", {"sessionId": SESSION})
    info = await sfu.call("recorder.info")
    await sfu.aclose()
    await http.aclose()
    assert service.returncode is None, "the service died"

    path = Path(record["asset"]["url"].removeprefix("file://")) if record.get("asset") else None
    output: dict[str, Any] = _decode(path) if path is not None and path.exists() else {"video_frames": 0, "audio_frames": 0, "duration_s": 0.0, "streams": []}

    src, strg, ctl = results["source"], results["stranger"], results["control"]
    legit = sum(src["legit_per_port"].values())
    fuzz_total = src["fuzz_sent"] + strg["fuzz_sent"]
    sent = fuzz_total + legit
    drops = fuzz.drops_by_reason(during)
    rtp_accepted = int(_total(during, "edge_recorder_rtp_packets_received_total"))
    rtcp_accepted = int(_total(during, "edge_recorder_rtcp_packets_received_total"))
    # "duplicate" counts packets already counted as accepted.
    dropped = int(sum(v for k, v in drops.items() if k != "duplicate"))
    kernel_drops = sum(kernel.values())
    accounted = rtp_accepted + rtcp_accepted + dropped + kernel_drops
    lat = fuzz.latency_summary(latencies)
    mib = 1 / (1 << 20)
    figures = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, Linux {os.uname().release}",
        "tree": "working tree of issue #9",
        "seeds": SEEDS,
        "hosts": f"network namespaces (sfu {hosts[0].address}, stranger {hosts[1].address}, recorder {bind_ip})" if hosts else "loopback only",
        "recording_s": recording_s,
        "status": stopped["status"],
        "output": output,
        "datagrams": {"fuzz_total": fuzz_total, "source": src["fuzz_sent"], "stranger": strg["fuzz_sent"], "legit": legit,
                      "source_by_kind": src["fuzz_by_kind"], "stranger_by_kind": strg["fuzz_by_kind"],
                      "send_errors": src["send_errors"] + strg["send_errors"],
                      "per_port": {port: {"source": src["fuzz_per_port"].get(str(port), 0), "stranger": strg["fuzz_per_port"].get(str(port), 0),
                                          "legit": src["legit_per_port"].get(str(port), 0)} for port in session_ports},
                      "ports": {"cam": ports["cam"], "mic": ports["mic"]}},
        "accounting": {"sent": sent, "accounted": accounted, "ratio": accounted / sent, "rtp_accepted": rtp_accepted,
                       "rtcp_accepted": rtcp_accepted, "dropped": dropped, "kernel_drops": kernel_drops, "kernel_per_port": kernel},
        "drops": drops,
        "feedback": src["feedback_received"],
        "control": {**ctl, "connections": 4},
        "latency": lat,
        "latency_before_fuzz": fuzz.latency_summary(quiet),
        "latency_under_fuzz": fuzz.latency_summary(loud),
        "failures": failures[:20],
        "metrics_latency": fuzz.latency_summary(metrics_latencies),
        "rss": {
            "service_before_mib": baseline["service"] * mib, "service_after_mib": rss_after * mib,
            "service_peak_mib": max(sampler.service_rss) * mib,
            "worker_first_mib": baseline["worker"] * mib, "worker_last_mib": (sampler.worker_rss[-1] if sampler.worker_rss else 0) * mib,
            "worker_peak_mib": max(sampler.worker_rss or [0]) * mib,
        },
        "cpu": {"service_s": service_cpu.user + service_cpu.system - baseline["service_cpu_ms"] / 1000,
                "worker_s": worker_cpu_s - baseline["worker_cpu_ms"] / 1000},
        "active_after": info["capacity"]["activeSessions"],
    }  # fmt: skip
    print("\nFUZZ FIGURES " + json.dumps(figures, indent=1, default=str))
    if os.environ.get("FUZZ_FIGURES"):
        Path(os.environ["FUZZ_FIGURES"]).write_text(json.dumps(figures, indent=1, default=str))

    # The service and the session survived, and the recording completed.
    assert stopped["status"] == "COMPLETED", (record, (tmp_path / "service.log").read_text()[-3000:])
    assert record["status"] == "COMPLETED"
    assert info["capacity"]["activeSessions"] == 0
    # The fuzz really ran.
    assert src["fuzz_sent"] >= DATAGRAMS_PER_ORIGIN and strg["fuzz_sent"] >= DATAGRAMS_PER_ORIGIN
    assert ctl["sent"] >= CONTROL_MESSAGES
    # The output is playable, with both tracks, for about as long as it recorded.
    assert output["streams"] == ["audio", "video"], output
    assert output["video_frames"] > 0 and output["audio_frames"] > 0
    assert abs(output["duration_s"] - recording_s) < max(3.0, 0.2 * recording_s), (output, recording_s)
    # Every legitimate request was answered; the worst within a generous 1 s.
    assert not failures, failures[:5]
    assert lat["count"] >= 0.5 * (WARMUP_S + FUZZ_S) / 0.05
    assert lat["max_ms"] < 1000, lat
    # Every malformed control message got an answer.
    assert ctl["unanswered"] == 0, ctl
    # Memory stayed bounded.
    assert rss_after - baseline["service"] < 100 * (1 << 20), figures["rss"]
    # Drops are counted by reason, and the counts account for what was sent.
    for reason in ("malformed", "foreign-source", "unknown-ssrc", "unknown-payload-type", "malformed-rtcp"):
        assert drops.get(reason, 0) > 0, (reason, drops)
    assert 0.9 * sent <= accounted <= 1.01 * sent, figures["accounting"]


async def _cancellable(scope: trio.CancelScope, fn: Any) -> None:
    with scope:
        await fn()


async def test_a_stream_removed_before_its_receiver_runs_leaves_the_session_recording(manager: Any) -> None:
    """addStream then removeStream (or a replacing addStream) with no checkpoint between.

    Over the control WebSocket the window is while addStream waits on a full
    worker pipe: a removeStream for that producer arriving then closes the
    sockets before the receiver task starts. The fuzz run hit it at about
    15 s (hostile display names added and removed 50 ms apart).
    """
    from edge_recorder.session.state import SessionStatus
    from edge_recorder.session.stream import StreamSpec

    session = await manager.start("room-race")
    spec = StreamSpec.from_params(demo_producers()["bob-cam"].add_stream_params(session.session_id))
    await session.add_stream(spec)
    await session.remove_stream(spec.producer_id)  # no checkpoint in between
    await trio.sleep(0.5)
    assert session.status is SessionStatus.RECORDING, session.error
    await session.stop("host")
    assert session.status.value == "COMPLETED", session.error
