"""Receive cost per datagram, for the SFU's media and for hostile traffic.

``python -m edge_recorder.bench.hostile`` feeds pre-built datagrams straight
into one VP8 stream's receiver (``StreamReceiver.handle_datagram``, the code
every datagram from the socket goes through) and prints the cost per datagram
of each class:

* ``media-shown`` / ``media-hidden``: real VP8 from the latched source (the
  PyAV-encoded demo camera, packetized as the SFU would send it) for a stream
  the layout shows (assembled into frames) and one it does not (held as raw
  packets), which the trust checks of issue #9 must not make dearer;
* ``stranger``: the same packets from another host;
* ``garbage``: 1,200 random bytes from the source's address;
* ``rtcp-64k``: a 64 KiB RTCP compound of receiver reports on the muxed port
  (the review measured 40-50 ms of parsing for one before the fix);
* ``rtp-64k``: a 64 KiB datagram with the stream's SSRC and payload type.

It only uses calls that existed before issue #9, so the same file measures an
older tree: ``--baseline REV`` checks REV out in a temporary ``git worktree``
and alternates rounds of the two trees (A B B A ...) in fresh processes, one
machine, one run, so the ratio is what to read. Figures go to
``docs/benchmarks.md`` through ``python -m edge_recorder.bench --hostile``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CLASSES = ("media-shown", "media-hidden", "stranger", "garbage", "rtcp-64k", "rtp-64k")
SOURCE = ("198.18.0.2", 40000)
STRANGER = ("198.18.9.9", 40000)


def _media_packets(ssrc: int, payload_type: int, count: int) -> list[bytes]:
    from edge_recorder.demo.sources import CameraSource, VideoEncoder
    from edge_recorder.rtp.packet import serialize_rtp
    from edge_recorder.rtp.packetize import Vp8Packetizer

    camera = CameraSource("bench", (40, 120, 200), 640, 360)
    encoder = VideoEncoder("vp8", 640, 360, 30, 800)
    packetizer = Vp8Packetizer(payload_type=payload_type, ssrc=ssrc)
    packets: list[bytes] = []
    k = 0
    while len(packets) < count:
        t = k / 30
        for data, keyframe in encoder.encode(camera.frame(t)):
            for packet in packetizer.packetize(data, round(t * 90000) % (1 << 32), keyframe=keyframe):
                packets.append(serialize_rtp(packet))
        k += 1
    return packets[:count]


def _rtcp_receiver_reports(size: int) -> bytes:
    """An RTCP compound of RR packets, each with 31 report blocks, ``size`` bytes or so."""
    block = struct.pack("!IIIIII", 0x11111111, 0, 0, 0, 0, 0)
    rr_body = struct.pack("!I", 0x22222222) + block * 31
    rr = struct.pack("!BBH", 0x80 | 31, 201, len(rr_body) // 4) + rr_body
    return rr * max(1, size // len(rr))


def _receiver(spec_params: dict[str, Any], sock: Any) -> Any:
    from edge_recorder.session.stream import StreamReceiver, StreamSpec

    spec = StreamSpec.from_params(spec_params)
    return StreamReceiver(
        spec,
        0,
        sock,
        None,
        t0_monotonic=time.monotonic(),
        deliver=lambda receiver, media_time, frame: True,
        max_wait_s=0.15,
    )


def _measure(repeats: int, per_class: int, seed: int) -> dict[str, float]:
    """Nanoseconds per datagram of each class (median of ``repeats`` rounds)."""
    import trio

    from edge_recorder.demo.sfu import demo_producers

    rng = random.Random(seed)
    producer = demo_producers()["alice-cam"]
    params = producer.add_stream_params("bench")
    media = _media_packets(producer.ssrc, producer.payload_type, per_class + 64)
    warmup, media = media[:64], media[64:]
    header = struct.pack("!BBHII", 0x80, producer.payload_type, 1, 1, producer.ssrc)
    traffic = {
        "media-shown": [(p, SOURCE) for p in media],
        "media-hidden": [(p, SOURCE) for p in media],
        "stranger": [(p, STRANGER) for p in media],
        "garbage": [(rng.randbytes(1200), SOURCE) for _ in range(per_class)],
        "rtcp-64k": [(_rtcp_receiver_reports(65_000), SOURCE)] * max(1, per_class // 50),
        "rtp-64k": [(header + rng.randbytes(65_000), SOURCE)] * max(1, per_class // 50),
    }
    results: dict[str, list[float]] = {name: [] for name in CLASSES}

    async def run() -> None:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        with sock:
            for _ in range(repeats):
                for name in CLASSES:
                    receiver = _receiver(params, sock)
                    receiver.set_visible(name == "media-shown")
                    now = 0.0
                    for data in warmup:  # latch, pass probation, open the GOP
                        now += 0.001
                        receiver.handle_datagram(data, SOURCE, now)
                    datagrams = traffic[name]
                    start = time.perf_counter_ns()
                    for data, address in datagrams:
                        now += 0.0001
                        receiver.handle_datagram(data, address, now)
                    results[name].append((time.perf_counter_ns() - start) / len(datagrams))

    trio.run(run)
    return {name: statistics.median(values) for name, values in results.items()}


def _run_tree(tree: Path | None, repeats: int, per_class: int, seed: int) -> dict[str, float]:
    """One round in a fresh process, on ``tree`` (None: this one)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    code = (
        "import json, sys, importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('hostile_bench', {str(Path(__file__).resolve())!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        f"print(json.dumps(m._measure({repeats}, {per_class}, {seed})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=600,
        cwd=str(tree) if tree is not None else None,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def compare(baseline: str | None, *, rounds: int = 4, repeats: int = 3, per_class: int = 2000, seed: int = 7) -> dict[str, Any]:
    """Measure this tree (and ``baseline``, alternating A B B A ...).

    Returns:
        ``{"current": {class: ns}, "baseline": {class: ns} | None, "rev": str | None, "rounds": n}``,
        each figure the median over rounds.
    """
    current: list[dict[str, float]] = []
    base: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tree: Path | None = None
        if baseline is not None:
            tree = Path(tmp) / "baseline"
            repo = Path(__file__).resolve().parents[2]
            subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), baseline], check=True, capture_output=True)
        try:
            for i in range(rounds):
                order = [False, True] if i % 2 == 0 else [True, False]
                for use_baseline in order:
                    if use_baseline and tree is None:
                        continue
                    target = base if use_baseline else current
                    target.append(_run_tree(tree if use_baseline else None, repeats, per_class, seed))
        finally:
            if tree is not None:
                subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[2]), "worktree", "remove", "--force", str(tree)], capture_output=True)

    def median(rows: list[dict[str, float]]) -> dict[str, float]:
        return {name: statistics.median(row[name] for row in rows) for name in CLASSES}

    return {"current": median(current), "baseline": median(base) if base else None, "rev": baseline, "rounds": rounds}


def format_table(result: dict[str, Any]) -> str:
    """The figures as a Markdown table (µs per datagram)."""
    base = result["baseline"]
    head = "| datagram | this tree, µs | " + (f"before (`{result['rev']}`), µs | ratio |" if base else "") + "\n"
    head += "| --- | --- | " + ("--- | --- |" if base else "") + "\n"
    rows = []
    for name in CLASSES:
        now = result["current"][name] / 1000
        row = f"| {name} | {now:.2f} | "
        if base:
            before = base[name] / 1000
            row += f"{before:.2f} | {now / before:.2f} |"
        rows.append(row)
    return head + "\n".join(rows)


HOSTILE_BEGIN = "<!-- hostile:begin -->"
HOSTILE_END = "<!-- hostile:end -->"


def render_markdown(result: dict[str, Any], *, date: str, machine: str) -> str:
    """The doc section: when, where, and the table."""
    against = f", alternating rounds with `{result['rev']}`" if result["baseline"] else ""
    return (
        f"### Latest hostile-input run: {date}\n\n"
        f"{machine}; {result['rounds']} rounds{against}; each figure the median over rounds of the median of 3 "
        "passes of 2,000 datagrams (100 of the 64 KiB ones) through `StreamReceiver.handle_datagram`.\n\n"
        + format_table(result)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="a git revision to compare with (alternating rounds)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    result = compare(args.baseline, rounds=args.rounds)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
