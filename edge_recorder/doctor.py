"""``edge-recorder check``: probes of what a recorder needs, each with a verdict and what to do.

A pure core and a thin shell:

* **The core** imports no Trio and does no I/O: :class:`ProbeStatus`,
  :class:`ProbeResult`, one ``judge_*`` function per probe that turns what the
  shell found (a frozen dataclass of facts) into a result with its fix, and
  the renderings (:func:`render_line`, :func:`render_json`,
  :func:`summary_line`, :func:`exit_code`).
* **The shell** runs one async function per probe, its blocking work in a
  worker thread, each bounded by :data:`PROBE_TIMEOUT_S` (:func:`_bounded`);
  :func:`run_probes` runs them all at once and returns the results in
  :data:`PROBES` order. :func:`log_startup_probes` is the same for ``serve``,
  logging one line per probe.

The probes (``probe`` is the name in the output and in the JSON)::

    bucket              PUT a 32-byte probe object under RECORDING_S3_PREFIX with RECORDING_S3_SSE,
                        HEAD it (the store's SSE header), GET it back (same bytes), DELETE it
    multipart           CreateMultipartUpload (SSE headers), UploadPart, ListParts, AbortMultipartUpload
    redis               PING, SET a probe key with a 10 s TTL, GET it back, DEL
    database            connect; the Alembic revision stored against the newest this version knows
    udp-ports           bind RECORDING_PORT_MIN, +1, RECORDING_PORT_MAX-1, RECORDING_PORT_MAX on RECORDING_BIND_IP
    udp-receive-buffer  net.core.rmem_max (the kernel's SO_RCVBUF cap) against RECORDING_UDP_RCVBUF_BYTES
    codecs              PyAV's encoders libx264, aac and decoders opus, vp8, vp9, h264
    font                the label font (DejaVu Sans Bold, as media/composite.py looks for it)
    disk                free space under RECORDING_TMP_DIR against RECORDING_MIN_FREE_DISK_MIB

A probe that does not apply (no bucket, no Redis) is ``skip`` with the reason.
``warn`` works but will hurt (the fix says how to avoid it); ``fail`` is
something the recorder cannot do, and ``check`` exits 1 naming it.

What the probes leave behind: nothing, when they finish. The probe object is
a chunk key of a session id no recording uses (``edge-recorder-check-<hex>``),
stored exactly as recordings' chunks are (the ``edge-recorder-object=chunk``
tag), so a probe cut short is expired by the bucket's stray-chunk lifecycle
rule and its multipart upload by the AbortIncompleteMultipartUpload rule
(docs/storage.md). The Redis key expires by itself. The database is only read:
a SQLite file that does not exist yet is not created.

Cancellation and timeouts: the S3, database and local probes run in threads
that are abandoned when their time runs out (minio's and the database
driver's own timeouts end them shortly after); the Redis probe waits for its
thread, whose socket timeouts (1 s) bound it.
"""

from __future__ import annotations

import enum
import errno
import json
import logging
import os
import secrets
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import trio

from edge_recorder.errors import MetadataError, SharedStateError, StorageError

if TYPE_CHECKING:
    from edge_recorder.config import Settings
    from edge_recorder.sink.s3 import ObjectStore

__all__ = [
    "PROBES",
    "PROBE_TIMEOUT_S",
    "BucketOutcome",
    "BucketTarget",
    "DatabaseFacts",
    "DiskFacts",
    "MigrationLevel",
    "PortOutcome",
    "ProbeResult",
    "ProbeStatus",
    "RedisOutcome",
    "StorageFailure",
    "exit_code",
    "failed_probes",
    "judge_bucket",
    "judge_codecs",
    "judge_database",
    "judge_disk",
    "judge_font",
    "judge_multipart",
    "judge_ports",
    "judge_receive_buffer",
    "judge_redis",
    "log_startup_probes",
    "read_migration_level",
    "render_json",
    "render_line",
    "run_probes",
    "summary_line",
]

log = logging.getLogger(__name__)

# Every probe, in the order of the output.
PROBES: Final = (
    "bucket",
    "multipart",
    "redis",
    "database",
    "udp-ports",
    "udp-receive-buffer",
    "codecs",
    "font",
    "disk",
)
# Seconds one probe may take before it is reported as failed. Long enough for
# a store across a WAN (each probe is a few requests), short enough that
# `check` answers within seconds and `serve`'s start-up log is not held up.
PROBE_TIMEOUT_S: Final = 10.0
# The Redis probe key's lifetime: it is deleted at once, this is the backstop.
REDIS_PROBE_TTL_MS: Final = 10_000
# minio's timeouts inside a probe (the recorder's own are 10 s / 120 s, with retries).
_S3_CONNECT_TIMEOUT_S: Final = 5.0
_S3_READ_TIMEOUT_S: Final = 8.0
# redis-py's connect and per-reply timeout inside the probe.
_REDIS_SOCKET_TIMEOUT_S: Final = 1.0
_PROBE_OBJECT_BYTES: Final = 32
_RMEM_MAX_PATH: Final = Path("/proc/sys/net/core/rmem_max")
# What PyAV must provide: (codec, "w" encoder | "r" decoder). media/encode.py
# writes libx264 and aac; media/decode.py reads vp8, vp9, h264 and opus with
# FFmpeg's native decoders.
REQUIRED_CODECS: Final[tuple[tuple[str, Literal["r", "w"]], ...]] = (("libx264", "w"), ("aac", "w"), ("opus", "r"), ("vp8", "r"), ("vp9", "r"), ("h264", "r"))
_MIB: Final = 1 << 20


# --------------------------------------------------------------------------- the core (pure)


class ProbeStatus(enum.Enum):
    """A probe's verdict."""

    OK = "ok"  # works as the recorder needs it
    WARN = "warn"  # works, but will hurt: the fix says how to avoid it
    FAIL = "fail"  # the recorder cannot do this: check exits 1
    SKIP = "skip"  # does not apply to these settings (the detail says why)


@dataclass(frozen=True)
class ProbeResult:
    """One probe's verdict.

    Attributes:
        probe: its name (one of :data:`PROBES`).
        status: the verdict.
        detail: what was found, one sentence.
        fix: what to do about it (None when there is nothing to do).
    """

    probe: str
    status: ProbeStatus
    detail: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        """``{"probe", "status", "detail", "fix"}`` (fix null when there is none)."""
        return {"probe": self.probe, "status": self.status.value, "detail": self.detail, "fix": self.fix}


_NAME_WIDTH = max(len(name) for name in PROBES)


def render_line(result: ProbeResult) -> str:
    """One human line: ``status  probe  detail — fix: ...``."""
    text = f"{result.status.value:<4}  {result.probe:<{_NAME_WIDTH}}  {result.detail}"
    return f"{text} — fix: {result.fix}" if result.fix else text


def render_json(result: ProbeResult) -> str:
    """One JSON line (an object with probe, status, detail, fix)."""
    return json.dumps(result.to_json(), ensure_ascii=False)


def failed_probes(results: Sequence[ProbeResult]) -> list[str]:
    """The names of the probes that failed, in order."""
    return [r.probe for r in results if r.status is ProbeStatus.FAIL]


def exit_code(results: Sequence[ProbeResult]) -> int:
    """0 when no probe failed, else 1."""
    return 1 if failed_probes(results) else 0


def summary_line(results: Sequence[ProbeResult]) -> str:
    """``9 probes: 7 ok, 1 warn, 0 fail, 1 skip`` (and which failed)."""
    counts = {status: sum(1 for r in results if r.status is status) for status in ProbeStatus}
    text = f"{len(results)} probes: " + ", ".join(f"{counts[s]} {s.value}" for s in ProbeStatus)
    failed = failed_probes(results)
    return f"{text}; failed: {', '.join(failed)}" if failed else text


# -- the object store


@dataclass(frozen=True)
class BucketTarget:
    """What the bucket probes write to (from ``settings.s3``)."""

    bucket: str
    prefix: str
    sse_mode: str  # RECORDING_S3_SSE
    upload_mode: str  # RECORDING_S3_UPLOAD_MODE


@dataclass(frozen=True)
class StorageFailure:
    """The step of a bucket probe that the store refused.

    Attributes:
        step: what was being done ("write", "head", "read back", "delete",
            "create", "upload a part", "list parts", "abort"; "connect" for a
            client that could not be built).
        action: the IAM action that step needs (``s3:PutObject``).
        code: the S3 error code, when the store sent one.
        destination: the store's side refused (StorageError.destination).
        message: the error's text.
    """

    step: str
    action: str
    code: str | None
    destination: bool
    message: str

    @classmethod
    def of(cls, step: str, action: str, exc: StorageError) -> StorageFailure:
        return cls(step, action, exc.code, exc.destination, str(exc))


@dataclass(frozen=True)
class BucketOutcome:
    """What the write/head/read/delete round trip found.

    Attributes:
        key: the probe object's key.
        failure: the first step refused, or None.
        sse_seen: the store's encryption header on HEAD (``x-amz-server-side-encryption``,
            or the SSE-C algorithm header), None when absent or not reached.
        read_back_matches: the GET returned the bytes written (None: not reached).
    """

    key: str
    failure: StorageFailure | None = None
    sse_seen: str | None = None
    read_back_matches: bool | None = None


def storage_fix(failure: StorageFailure, target: BucketTarget) -> str:
    """What to do about a refused bucket step (pure)."""
    code = failure.code or ""
    where = f"arn:aws:s3:::{target.bucket}/{target.prefix}*"
    if code == "NoSuchBucket":
        return f"create the bucket {target.bucket}, or set RECORDING_S3_BUCKET to one that exists"
    if code in ("AccessDenied", "AllAccessDisabled", "AccountProblem"):
        return f"allow {failure.action} on {where} for these credentials (bucket policy or IAM)"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AuthorizationHeaderMalformed"):
        return "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_REGION)"
    if code in ("ExpiredToken", "InvalidToken", "TokenRefreshRequired"):
        return "the credentials have expired: renew them"
    if code == "NoCredentials":
        return "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give the default chain credentials (~/.aws, an IAM role)"
    if code == "PermanentRedirect":
        return "set AWS_REGION to the bucket's region"
    if code.startswith("KMS") or "kms" in failure.message.lower():
        return "check RECORDING_S3_SSE_KMS_KEY_ID and allow kms:GenerateDataKey and kms:Decrypt on it for these credentials"
    if code in ("QuotaExceeded", "ServiceQuotaExceeded", "XMinioAdminBucketQuotaExceeded", "XMinioStorageFull"):
        return "the store is full or over quota: free space or raise the bucket's quota"
    if code == "BadEndpoint":
        return "set RECORDING_S3_ENDPOINT to an http(s)://host[:port] URL"
    if not failure.destination:
        return "check that RECORDING_S3_ENDPOINT is right and the store is reachable from this host"
    if target.sse_mode != "none" and ("encrypt" in failure.message.lower() or code == "InvalidRequest"):
        return f"the store refuses RECORDING_S3_SSE={target.sse_mode}: enable it on the store, or choose another mode"
    return f"the store refused {failure.action}: check the bucket policy for {where}"


def judge_bucket(target: BucketTarget, outcome: BucketOutcome) -> ProbeResult:
    """The verdict of the write, head, read back and delete round trip (pure).

    A refused delete fails only in the chunks upload mode (it deletes its
    chunks at stop); in the multipart mode nothing is deleted, so it warns.
    An SSE mode the store does not confirm on HEAD warns.
    """
    sse = f"RECORDING_S3_SSE={target.sse_mode}"
    failure = outcome.failure
    if failure is not None:
        detail = f"{failure.step} of a probe object in {target.bucket} refused: {failure.message}"
        if failure.step == "delete" and target.upload_mode != "chunks":
            return ProbeResult(
                "bucket",
                ProbeStatus.WARN,
                f"wrote, read back ({sse}) but could not delete {outcome.key}: {failure.message}; "
                "the multipart upload mode deletes nothing, the chunks mode would fail",
                f"allow s3:DeleteObject on arn:aws:s3:::{target.bucket}/{target.prefix}* "
                "(the stray-chunk lifecycle rule expires the probe object)",
            )
        return ProbeResult("bucket", ProbeStatus.FAIL, detail, storage_fix(failure, target))
    if outcome.read_back_matches is False:
        return ProbeResult(
            "bucket",
            ProbeStatus.FAIL,
            f"read back other bytes than were written to {outcome.key}",
            "something between here and the store alters objects: check RECORDING_S3_ENDPOINT and any proxy",
        )
    done = f"wrote, read back and deleted a probe object in {target.bucket} under {target.prefix or '(the root)'!r}"
    if target.sse_mode == "none":
        extra = f" (the bucket encrypts by default: {outcome.sse_seen})" if outcome.sse_seen else ""
        return ProbeResult("bucket", ProbeStatus.OK, f"{done}, {sse}{extra}")
    expected = "AES256" if target.sse_mode in ("AES256", "SSE-C") else "aws:kms"
    if outcome.sse_seen is None:
        return ProbeResult(
            "bucket",
            ProbeStatus.WARN,
            f"{done} with {sse}, but the store did not confirm the encryption (no SSE header on HEAD)",
            f"check that the store applies {target.sse_mode} (MinIO needs a KMS for SSE-S3 and SSE-KMS)",
        )
    if outcome.sse_seen != expected:
        return ProbeResult(
            "bucket",
            ProbeStatus.WARN,
            f"{done}, but asked for {sse} the store reports {outcome.sse_seen}",
            "check the bucket's default encryption and RECORDING_S3_SSE",
        )
    return ProbeResult("bucket", ProbeStatus.OK, f"{done}, {sse} confirmed by the store")


def judge_multipart(target: BucketTarget, failure: StorageFailure | None, parts_listed: int | None) -> ProbeResult:
    """The verdict of create, upload a part, list parts, abort (pure)."""
    if failure is not None:
        return ProbeResult(
            "multipart",
            ProbeStatus.FAIL,
            f"{failure.step} of a multipart upload in {target.bucket} refused: {failure.message}",
            storage_fix(failure, target),
        )
    if parts_listed != 1:
        return ProbeResult(
            "multipart",
            ProbeStatus.FAIL,
            f"ListParts showed {parts_listed} parts after one was uploaded",
            "the store does not keep multipart parts: set RECORDING_S3_UPLOAD_MODE=chunks, or use another store",
        )
    return ProbeResult(
        "multipart",
        ProbeStatus.OK,
        f"created, uploaded a part to, listed and aborted a multipart upload in {target.bucket} "
        f"(RECORDING_S3_SSE={target.sse_mode})",
    )


# -- Redis


@dataclass(frozen=True)
class RedisOutcome:
    """What the Redis probe found.

    Attributes:
        where: ``host:port/db`` (never the password).
        step: the step that failed ("ping", "write", "read back", "delete"), or None.
        message: that step's error.
        read_back_matches: the GET returned what was SET (None: not reached).
    """

    where: str
    step: str | None = None
    message: str = ""
    read_back_matches: bool | None = None


def redis_fix(message: str) -> str:
    """What to do about a Redis error, from its text (pure)."""
    text = message.upper()
    if "NOAUTH" in text or "WRONGPASS" in text or "AUTHENTICATION" in text:
        return "put the user and password in RECORDING_REDIS_URL (redis://user:password@host:6379/0)"
    if "READONLY" in text:
        return "RECORDING_REDIS_URL points at a read-only replica: point it at the primary"
    if "NOPERM" in text:
        return "allow this Redis user to read and write the edge:* keys (ACL: ~edge:* +@read +@write +@pubsub +@scripting)"
    if "OOM" in text:
        return "Redis is at its maxmemory: raise it, or free memory (the recorder's keys are small)"
    return "check RECORDING_REDIS_URL and that Redis is reachable from this host"


def judge_redis(outcome: RedisOutcome) -> ProbeResult:
    """The verdict of ping and a keyed write (pure)."""
    if outcome.step is not None:
        return ProbeResult(
            "redis", ProbeStatus.FAIL, f"{outcome.step} at {outcome.where} failed: {outcome.message}", redis_fix(outcome.message)
        )
    if outcome.read_back_matches is False:
        return ProbeResult(
            "redis",
            ProbeStatus.FAIL,
            f"a key written at {outcome.where} read back different",
            "another client rewrites keys: give the recorder its own Redis database (the /N of RECORDING_REDIS_URL)",
        )
    return ProbeResult("redis", ProbeStatus.OK, f"{outcome.where} answers PING; wrote, read back and deleted a probe key")


# -- the database


@dataclass(frozen=True)
class MigrationLevel:
    """The database's Alembic revision against this version's.

    Attributes:
        current: the revision stored in the database; None: never migrated.
        head: the newest revision this version knows.
        known: ``current`` is one of this version's revisions (or None).
    """

    current: str | None
    head: str | None
    known: bool


@dataclass(frozen=True)
class DatabaseFacts:
    """What the database probe found.

    Attributes:
        where: the database, password hidden (a SQLite file's path).
        from_setting: RECORDING_DATABASE_URL is set (else the default SQLite file).
        missing_file: a SQLite file that does not exist yet.
        directory_writable: for a missing file, whether it can be created.
        level: the migration level, when the database answered.
        error: why it did not.
    """

    where: str
    from_setting: bool
    missing_file: bool = False
    directory_writable: bool = True
    level: MigrationLevel | None = None
    error: str | None = None


def judge_database(facts: DatabaseFacts) -> ProbeResult:
    """The verdict of connect and the migration level (pure).

    Behind (or never migrated) warns: ``serve`` migrates at start-up. A
    revision this version does not know fails: a newer edge-recorder migrated
    the database, and this one must not run against it.
    """
    setting = "RECORDING_DATABASE_URL" if facts.from_setting else "RECORDING_TMP_DIR (or set RECORDING_DATABASE_URL)"
    if facts.missing_file:
        if not facts.directory_writable:
            return ProbeResult(
                "database",
                ProbeStatus.FAIL,
                f"SQLite {facts.where} does not exist and its directory is not writable by this user",
                f"make the directory writable for the recorder's user, or change {setting}",
            )
        return ProbeResult(
            "database", ProbeStatus.OK, f"SQLite {facts.where} not created yet; serve creates and migrates it at start-up"
        )
    if facts.error is not None or facts.level is None:
        return ProbeResult(
            "database",
            ProbeStatus.FAIL,
            f"cannot read {facts.where}: {facts.error}",
            f"check {setting} and that the database is reachable and accepts these credentials",
        )
    level = facts.level
    if not level.known:
        return ProbeResult(
            "database",
            ProbeStatus.FAIL,
            f"{facts.where} is at revision {level.current}, which this edge-recorder does not know (newest {level.head})",
            "a newer edge-recorder migrated it: run that version, or point this one at its own database",
        )
    if level.current is None:
        return ProbeResult(
            "database",
            ProbeStatus.WARN,
            f"{facts.where} answers but has no tables yet",
            "none needed: serve creates them at start-up (edge-recorder serve)",
        )
    if level.current != level.head:
        return ProbeResult(
            "database",
            ProbeStatus.WARN,
            f"{facts.where} is at revision {level.current}, behind {level.head}",
            "serve upgrades it at start-up; every node of the fleet must run this version afterwards",
        )
    return ProbeResult("database", ProbeStatus.OK, f"{facts.where} answers, migrated to the newest revision ({level.head})")


# -- UDP ports and the receive buffer


class PortOutcome(enum.Enum):
    """What binding one UDP port gave."""

    FREE = "free"  # bound and released
    BUSY = "busy"  # EADDRINUSE: another socket holds it
    DENIED = "denied"  # EACCES: not allowed to bind it
    NO_ADDRESS = "no-address"  # EADDRNOTAVAIL: RECORDING_BIND_IP is not an address of this host
    ERROR = "error"  # anything else


def port_outcome(errno_value: int | None) -> PortOutcome:
    """A bind's errno (None: it worked) as a :class:`PortOutcome` (pure)."""
    if errno_value is None:
        return PortOutcome.FREE
    return {
        errno.EADDRINUSE: PortOutcome.BUSY,
        errno.EACCES: PortOutcome.DENIED,
        errno.EADDRNOTAVAIL: PortOutcome.NO_ADDRESS,
    }.get(errno_value, PortOutcome.ERROR)


def edge_ports(port_min: int, port_max: int) -> list[int]:
    """The ports the probe binds: both ends of the range and their neighbours inside it (pure)."""
    return sorted({p for p in (port_min, port_min + 1, port_max - 1, port_max) if port_min <= p <= port_max})


def judge_ports(bind_ip: str, port_min: int, port_max: int, outcomes: Mapping[int, PortOutcome]) -> ProbeResult:
    """The verdict of binding the range's edge ports (pure): warn when some are busy, fail when none binds."""
    free = sorted(p for p, o in outcomes.items() if o is PortOutcome.FREE)
    busy = sorted(p for p, o in outcomes.items() if o is PortOutcome.BUSY)
    tried = ", ".join(str(p) for p in sorted(outcomes))
    span = f"{port_min}-{port_max} on {bind_ip}"
    if any(o is PortOutcome.NO_ADDRESS for o in outcomes.values()):
        return ProbeResult(
            "udp-ports",
            ProbeStatus.FAIL,
            f"cannot bind {bind_ip}: it is not an address of this host",
            "set RECORDING_BIND_IP to an address of this host (0.0.0.0 for all, with RECORDING_ANNOUNCED_IP)",
        )
    if not free:
        if busy:
            fix = "stop what holds them (ss -ulpn), or move RECORDING_PORT_MIN/RECORDING_PORT_MAX to a free range"
        else:
            fix = "allow binding them (a port below 1024 needs privileges), or move RECORDING_PORT_MIN/RECORDING_PORT_MAX"
        states = ", ".join(f"{p} {o.value}" for p, o in sorted(outcomes.items()))
        return ProbeResult("udp-ports", ProbeStatus.FAIL, f"none of the ports tried in {span} binds ({states})", fix)
    if len(free) < len(outcomes):
        others = ", ".join(f"{p} {o.value}" for p, o in sorted(outcomes.items()) if o is not PortOutcome.FREE)
        return ProbeResult(
            "udp-ports",
            ProbeStatus.WARN,
            f"some ports of {span} are taken ({others}); the recorder skips them, with fewer streams to hand out",
            "find the holder with ss -ulpn, or move RECORDING_PORT_MIN/RECORDING_PORT_MAX to a range nothing else uses",
        )
    return ProbeResult(
        "udp-ports", ProbeStatus.OK, f"bound {tried} of {span} ({port_max - port_min + 1} ports in the range)"
    )


def judge_receive_buffer(cap_bytes: int | None, wanted_bytes: int) -> ProbeResult:
    """``net.core.rmem_max`` against ``RECORDING_UDP_RCVBUF_BYTES`` (pure); None: it could not be read."""
    if cap_bytes is None:
        return ProbeResult(
            "udp-receive-buffer",
            ProbeStatus.SKIP,
            f"{_RMEM_MAX_PATH} cannot be read here (not Linux, or hidden in this container)",
        )
    if cap_bytes < wanted_bytes:
        return ProbeResult(
            "udp-receive-buffer",
            ProbeStatus.WARN,
            f"the kernel caps SO_RCVBUF at net.core.rmem_max={cap_bytes} bytes, below "
            f"RECORDING_UDP_RCVBUF_BYTES={wanted_bytes}: keyframe bursts may be dropped by the kernel",
            f"sysctl -w net.core.rmem_max={wanted_bytes} (and keep it in /etc/sysctl.d/), "
            f"or lower RECORDING_UDP_RCVBUF_BYTES",
        )
    return ProbeResult(
        "udp-receive-buffer",
        ProbeStatus.OK,
        f"net.core.rmem_max={cap_bytes} allows RECORDING_UDP_RCVBUF_BYTES={wanted_bytes}",
    )


# -- codecs, font, disk


def judge_codecs(missing: Sequence[str], error: str | None = None) -> ProbeResult:
    """The verdict of the codec lookup (pure); ``missing`` as ``"libx264 encoder"``."""
    wanted = ", ".join(f"{name} {'encoder' if mode == 'w' else 'decoder'}" for name, mode in REQUIRED_CODECS)
    if error is not None:
        return ProbeResult(
            "codecs", ProbeStatus.FAIL, f"PyAV does not load: {error}", "reinstall the package's dependencies (pip install av)"
        )
    if missing:
        return ProbeResult(
            "codecs",
            ProbeStatus.FAIL,
            f"PyAV lacks {', '.join(missing)}: recordings that need them fail",
            "install a PyAV built with libx264 (the PyPI wheels are): pip install --force-reinstall av",
        )
    return ProbeResult("codecs", ProbeStatus.OK, f"PyAV has {wanted}")


def judge_font(path: str, exists: bool, load_error: str | None) -> ProbeResult:
    """The label font (pure): missing warns (Pillow's small built-in font stands in), unreadable fails."""
    if not exists:
        return ProbeResult(
            "font",
            ProbeStatus.WARN,
            f"{path} is missing: labels and the slate use Pillow's built-in font",
            "install the DejaVu fonts (Debian: apt-get install fonts-dejavu-core)",
        )
    if load_error is not None:
        return ProbeResult(
            "font",
            ProbeStatus.FAIL,
            f"{path} exists but does not load ({load_error}): compositing labels would fail",
            "reinstall the DejaVu fonts (Debian: apt-get install --reinstall fonts-dejavu-core)",
        )
    return ProbeResult("font", ProbeStatus.OK, f"label font {path}")


@dataclass(frozen=True)
class DiskFacts:
    """Free space where the spool goes.

    Attributes:
        path: ``RECORDING_TMP_DIR``.
        free_bytes: available to this user on its filesystem.
        floor_mib: ``RECORDING_MIN_FREE_DISK_MIB`` (0: no floor).
        hour_bytes: one hour of one recording at the configured bitrates.
        max_sessions: ``RECORDING_MAX_SESSIONS``.
    """

    path: str
    free_bytes: int
    floor_mib: int
    hour_bytes: int
    max_sessions: int


def judge_disk(facts: DiskFacts) -> ProbeResult:
    """Free space against the floor (pure).

    Below the floor fails (``/readyz`` is not ready, starts are refused).
    Less than an hour of ``RECORDING_MAX_SESSIONS`` recordings above the
    floor warns: a spool holds the whole recording until it stops.
    """
    free_mib = facts.free_bytes // _MIB
    floor = f"RECORDING_MIN_FREE_DISK_MIB={facts.floor_mib}"
    if facts.floor_mib and facts.free_bytes < facts.floor_mib * _MIB:
        return ProbeResult(
            "disk",
            ProbeStatus.FAIL,
            f"{free_mib} MiB free under {facts.path}, below {floor}: /readyz is not ready and recording.start is refused",
            "free space on that filesystem, or point RECORDING_TMP_DIR at a larger one",
        )
    room = facts.free_bytes - facts.floor_mib * _MIB
    hour = facts.hour_bytes * max(1, facts.max_sessions)
    if hour > 0 and room < hour:
        minutes = int(room * 60 // hour)
        return ProbeResult(
            "disk",
            ProbeStatus.WARN,
            f"{free_mib} MiB free under {facts.path}: above {floor} there is room for about {minutes} min of "
            f"RECORDING_MAX_SESSIONS={facts.max_sessions} recordings at the configured bitrates",
            "free space, or point RECORDING_TMP_DIR at a larger filesystem",
        )
    return ProbeResult("disk", ProbeStatus.OK, f"{free_mib} MiB free under {facts.path} ({floor})")


# --------------------------------------------------------------------------- the shell


async def _bounded(
    probe: str, timeout_s: float, run: Callable[[], Awaitable[ProbeResult]], timeout_fix: str
) -> ProbeResult:
    """``run()``, or a failure when it takes longer than ``timeout_s`` or raises.

    A probe reports; it never takes the command down: an exception of its own
    (a bug, or a library error the probe did not expect) is its failure.
    """
    with trio.move_on_after(timeout_s):
        try:
            return await run()
        except Exception as exc:  # noqa: BLE001 - reported as this probe's failure
            log.debug("probe %s raised", probe, exc_info=True)
            return ProbeResult(probe, ProbeStatus.FAIL, f"the probe failed: {type(exc).__name__}: {exc}", timeout_fix)
    return ProbeResult(probe, ProbeStatus.FAIL, f"no answer within {timeout_s:g} s", timeout_fix)


async def _in_thread(fn: Callable[[], Any]) -> Any:
    # Abandoned on timeout: the probe's result no longer matters, and the
    # client's own timeouts end the thread shortly after.
    return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


def _probe_session_id() -> str:
    """A session id no recording has: the probe object's key lives under it."""
    return f"edge-recorder-check-{secrets.token_hex(6)}"


def _bucket_target(settings: Settings) -> BucketTarget:
    assert settings.s3.bucket is not None
    return BucketTarget(settings.s3.bucket, settings.s3.prefix, settings.s3.sse, settings.s3.upload_mode)


def _open_store(settings: Settings) -> ObjectStore:
    from edge_recorder.sink.s3 import ObjectStore

    try:
        return ObjectStore(
            settings.s3,
            connect_timeout_s=_S3_CONNECT_TIMEOUT_S,
            read_timeout_s=_S3_READ_TIMEOUT_S,
            http_retries=0,
        )
    except ValueError as exc:
        raise StorageError(str(exc), destination=True, code="BadEndpoint") from exc


def _sse_header(headers: Mapping[str, str], sse_mode: str) -> str | None:
    if sse_mode == "SSE-C":
        return headers.get("x-amz-server-side-encryption-customer-algorithm")
    return headers.get("x-amz-server-side-encryption")


def bucket_round_trip(settings: Settings) -> BucketOutcome:
    """Write, head, read back and delete a probe object (blocking)."""
    session_id = _probe_session_id()
    try:
        store = _open_store(settings)
    except StorageError as exc:
        return BucketOutcome("", StorageFailure.of("connect", "s3:PutObject", exc))
    key = store.chunk_key(session_id, (0, _PROBE_OBJECT_BYTES))
    data = secrets.token_bytes(_PROBE_OBJECT_BYTES)
    steps: list[tuple[str, str]] = [("write", "s3:PutObject (and s3:PutObjectTagging)")]
    try:
        store.put_chunk(key, data)
        steps.append(("head", "s3:GetObject"))
        info = store.stat(key)
        steps.append(("read back", "s3:GetObject"))
        matches = store.get_bytes(key) == data
        steps.append(("delete", "s3:DeleteObject"))
        store.delete_chunks(session_id, [(0, _PROBE_OBJECT_BYTES)])
    except StorageError as exc:
        step, action = steps[-1]
        return BucketOutcome(key, StorageFailure.of(step, action, exc))
    return BucketOutcome(key, None, _sse_header(info.headers, settings.s3.sse), matches)


def multipart_round_trip(settings: Settings) -> tuple[StorageFailure | None, int | None]:
    """Create, upload a part to, list and abort a multipart upload (blocking); (failure, parts listed)."""
    try:
        store = _open_store(settings)
    except StorageError as exc:
        return StorageFailure.of("connect", "s3:PutObject", exc), None
    key = store.composite_key(_probe_session_id())
    multipart = store.multipart
    try:
        upload_id = multipart.create(key, content_type="application/octet-stream", kind="chunk")
    except StorageError as exc:
        return StorageFailure.of("create", "s3:PutObject", exc), None
    failure: StorageFailure | None = None
    listed: int | None = None
    step, action = "upload a part", "s3:PutObject"
    try:
        multipart.upload_part(key, upload_id, 1, secrets.token_bytes(_PROBE_OBJECT_BYTES))
        step, action = "list parts", "s3:ListMultipartUploadParts"
        listed = len(multipart.list_parts(key, upload_id))
    except StorageError as exc:
        failure = StorageFailure.of(step, action, exc)
    try:
        multipart.abort(key, upload_id)
    except StorageError as exc:
        failure = failure or StorageFailure.of("abort", "s3:AbortMultipartUpload", exc)
    return failure, listed


async def probe_bucket(settings: Settings) -> ProbeResult:
    """The ``bucket`` probe."""
    if settings.s3.bucket is None:
        return ProbeResult("bucket", ProbeStatus.SKIP, "RECORDING_S3_BUCKET is unset: recordings stay in RECORDING_TMP_DIR")
    outcome: BucketOutcome = await _in_thread(lambda: bucket_round_trip(settings))
    return judge_bucket(_bucket_target(settings), outcome)


async def probe_multipart(settings: Settings) -> ProbeResult:
    """The ``multipart`` probe."""
    if settings.s3.bucket is None:
        return ProbeResult("multipart", ProbeStatus.SKIP, "RECORDING_S3_BUCKET is unset: nothing is uploaded")
    failure, listed = await _in_thread(lambda: multipart_round_trip(settings))
    return judge_multipart(_bucket_target(settings), failure, listed)


def redis_where(url: str) -> str:
    """``host:port/db`` of a Redis URL, never its user or password (pure)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    db = parts.path.lstrip("/") or "0"
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}/{db}"


async def probe_redis(settings: Settings) -> ProbeResult:
    """The ``redis`` probe."""
    if settings.state.redis_url is None:
        return ProbeResult("redis", ProbeStatus.SKIP, "RECORDING_REDIS_URL is unset: shared state is kept in this process")
    from edge_recorder.state.redis import RedisStateStore

    url = settings.state.redis_url.reveal()
    where = redis_where(url)
    store = RedisStateStore(url, lease_ttl_s=settings.state.lease_ttl_s, socket_timeout_s=_REDIS_SOCKET_TIMEOUT_S)
    client = store.client
    key = f"edge:probe:{settings.server_id}:{secrets.token_hex(6)}"
    token = secrets.token_hex(8)
    step = "ping"
    try:
        await store.ping()
        step = "write"
        await store.blocking(lambda: client.set(key, token, px=REDIS_PROBE_TTL_MS), "probe write")
        step = "read back"
        stored = await store.blocking(lambda: client.get(key), "probe read")
        step = "delete"
        await store.blocking(lambda: client.delete(key), "probe delete")
    except SharedStateError as exc:
        return judge_redis(RedisOutcome(where, step, str(exc)))
    finally:
        with trio.move_on_after(2, shield=True):
            await store.close()
    return judge_redis(RedisOutcome(where, read_back_matches=stored == token))


def read_migration_level(url: str) -> MigrationLevel:
    """The database's Alembic revision and this version's newest (blocking; reads only).

    Raises:
        MetadataError: the database cannot be opened, reached or read.
    """
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.exc import SQLAlchemyError

    from edge_recorder.metadata import create_metadata_engine
    from edge_recorder.metadata.migrations import VERSION_TABLE, alembic_config

    script = ScriptDirectory.from_config(alembic_config(url))
    head = script.get_current_head()
    try:
        engine = create_metadata_engine(url)
    except OSError as exc:  # a SQLite file this user may not open (another user's 0600 file)
        raise MetadataError(f"cannot open the database: {exc}") from exc
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise MetadataError(f"{type(exc).__name__}: {detail[0] if detail else ''}", retryable=True) from exc
    finally:
        engine.dispose()
    known = current is None or current in {rev.revision for rev in script.walk_revisions()}
    return MigrationLevel(current, head, known)


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL, None for another database or an in-memory one (pure)."""
    from sqlalchemy.engine import make_url

    from edge_recorder.metadata import normalize_url

    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def database_where(url: str) -> str:
    """The database as an operator may see it: a SQLite path, else the URL with its password hidden (pure)."""
    from sqlalchemy.engine import make_url

    from edge_recorder.metadata import normalize_url

    path = sqlite_file(url)
    if path is not None:
        return str(path)
    return make_url(normalize_url(url)).render_as_string(hide_password=True)


def _writable_or_creatable(directory: Path) -> bool:
    target = directory
    while not target.exists() and target != target.parent:
        target = target.parent
    return os.access(target, os.W_OK | os.X_OK)


def database_facts(settings: Settings) -> DatabaseFacts:
    """Connect and read the migration level (blocking); a missing SQLite file is not created."""
    from edge_recorder.metadata import default_database_url

    url = default_database_url(settings)
    from_setting = settings.state.database_url is not None
    try:
        where = database_where(url)
    except MetadataError as exc:
        return DatabaseFacts("the metadata database", from_setting, error=str(exc))
    path = sqlite_file(url)
    if path is not None and not path.exists():
        return DatabaseFacts(where, from_setting, missing_file=True, directory_writable=_writable_or_creatable(path.parent))
    try:
        return DatabaseFacts(where, from_setting, level=read_migration_level(url))
    except MetadataError as exc:
        return DatabaseFacts(where, from_setting, error=str(exc))


async def probe_database(settings: Settings) -> ProbeResult:
    """The ``database`` probe."""
    facts: DatabaseFacts = await _in_thread(lambda: database_facts(settings))
    return judge_database(facts)


def bind_udp_port(bind_ip: str, port: int, receive_buffer_bytes: int) -> PortOutcome:
    """Bind one UDP port as the recorder does (SO_RCVBUF first), then release it (blocking, quick)."""
    family = socket.AF_INET6 if ":" in bind_ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
            sock.bind((bind_ip, port))
        except OSError as exc:
            return port_outcome(exc.errno)
    return PortOutcome.FREE


async def probe_ports(settings: Settings) -> ProbeResult:
    """The ``udp-ports`` probe."""
    wanted = settings.ingest.udp_receive_buffer_bytes

    def bind_all() -> dict[int, PortOutcome]:
        return {
            port: bind_udp_port(settings.bind_ip, port, wanted) for port in edge_ports(settings.port_min, settings.port_max)
        }

    outcomes: dict[int, PortOutcome] = await _in_thread(bind_all)
    return judge_ports(settings.bind_ip, settings.port_min, settings.port_max, outcomes)


def read_rmem_max(path: Path = _RMEM_MAX_PATH) -> int | None:
    """``net.core.rmem_max`` in bytes, None when it cannot be read (blocking, quick)."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


async def probe_receive_buffer(settings: Settings) -> ProbeResult:
    """The ``udp-receive-buffer`` probe."""
    cap: int | None = await _in_thread(read_rmem_max)
    return judge_receive_buffer(cap, settings.ingest.udp_receive_buffer_bytes)


def missing_codecs() -> list[str]:
    """The codecs of :data:`REQUIRED_CODECS` PyAV lacks, as ``"libx264 encoder"`` (blocking: loads PyAV)."""
    import av

    missing = []
    for name, mode in REQUIRED_CODECS:
        try:
            av.codec.Codec(name, mode)
        except ValueError:  # av.codec.codec.UnknownCodecError
            missing.append(f"{name} {'encoder' if mode == 'w' else 'decoder'}")
    return missing


async def probe_codecs(settings: Settings) -> ProbeResult:
    """The ``codecs`` probe."""
    try:
        missing: list[str] = await _in_thread(missing_codecs)
    except ImportError as exc:
        return judge_codecs([], error=str(exc))
    return judge_codecs(missing)


def font_facts() -> tuple[str, bool, str | None]:
    """The label font's path, whether it exists, and why it does not load (blocking)."""
    from PIL import ImageFont

    from edge_recorder.media.composite import DEFAULT_FONT_PATH

    if not os.path.exists(DEFAULT_FONT_PATH):
        return DEFAULT_FONT_PATH, False, None
    try:
        ImageFont.truetype(DEFAULT_FONT_PATH, 16)
    except OSError as exc:
        return DEFAULT_FONT_PATH, True, str(exc)
    return DEFAULT_FONT_PATH, True, None


async def probe_font(settings: Settings) -> ProbeResult:
    """The ``font`` probe."""
    path, exists, error = await _in_thread(font_facts)
    return judge_font(path, exists, error)


def disk_facts(settings: Settings) -> DiskFacts:
    """Free space on the spool's filesystem (blocking, quick)."""
    from edge_recorder.spool import NodeSpool

    kbps = settings.output.video_bitrate_kbps + settings.output.audio_bitrate_kbps
    return DiskFacts(
        path=str(settings.tmp_dir),
        free_bytes=NodeSpool(Path(settings.tmp_dir), settings.server_id).free_bytes(),
        floor_mib=settings.lifecycle.min_free_disk_mib,
        hour_bytes=kbps * 1000 // 8 * 3600,
        max_sessions=settings.max_sessions,
    )


async def probe_disk(settings: Settings) -> ProbeResult:
    """The ``disk`` probe."""
    facts: DiskFacts = await _in_thread(lambda: disk_facts(settings))
    return judge_disk(facts)


# Each probe's shell and what to do when it does not answer in time.
_SHELLS: Final[dict[str, tuple[Callable[[Settings], Awaitable[ProbeResult]], str]]] = {
    "bucket": (probe_bucket, "check that RECORDING_S3_ENDPOINT is right and the store is reachable from this host"),
    "multipart": (probe_multipart, "check that RECORDING_S3_ENDPOINT is right and the store is reachable from this host"),
    "redis": (probe_redis, "check RECORDING_REDIS_URL and that Redis is reachable from this host"),
    "database": (probe_database, "check RECORDING_DATABASE_URL and that the database is reachable from this host"),
    "udp-ports": (probe_ports, "check RECORDING_BIND_IP, RECORDING_PORT_MIN and RECORDING_PORT_MAX"),
    "udp-receive-buffer": (probe_receive_buffer, "check that /proc/sys/net/core/rmem_max is readable"),
    "codecs": (probe_codecs, "reinstall PyAV (pip install --force-reinstall av)"),
    "font": (probe_font, "install the DejaVu fonts (Debian: fonts-dejavu-core)"),
    "disk": (probe_disk, "check that RECORDING_TMP_DIR is on a local, responsive filesystem"),
}
assert tuple(_SHELLS) == PROBES, "every probe has a shell, in output order"


async def run_probes(settings: Settings) -> list[ProbeResult]:
    """Run every probe at once, each bounded by :data:`PROBE_TIMEOUT_S`; the results in :data:`PROBES` order.

    Never raises for a probe's failure (it is that probe's ``fail``). Takes
    about as long as the slowest probe, at most :data:`PROBE_TIMEOUT_S` (plus
    up to 4 s for Redis's socket timeouts when it does not answer).

    Cancellation: every probe stops; their abandoned threads end on their own.
    """
    results: dict[str, ProbeResult] = {}

    async def one(name: str) -> None:
        shell, timeout_fix = _SHELLS[name]
        results[name] = await _bounded(name, PROBE_TIMEOUT_S, lambda: shell(settings), timeout_fix)

    async with trio.open_nursery() as nursery:
        for name in PROBES:
            nursery.start_soon(one, name)
    return [results[name] for name in PROBES]


_LOG_LEVELS: Final = {
    ProbeStatus.OK: logging.INFO,
    ProbeStatus.SKIP: logging.INFO,
    ProbeStatus.WARN: logging.WARNING,
    ProbeStatus.FAIL: logging.ERROR,
}


async def log_startup_probes(settings: Settings) -> list[ProbeResult]:
    """:func:`run_probes`, logging one line per probe: ok/skip at INFO, warn at WARNING, fail at ERROR.

    For ``serve`` at start-up: it only reports (a failed probe does not stop
    the service; readiness and the sessions' own errors still apply). Never
    raises but ``trio.Cancelled``.
    """
    results = await run_probes(settings)
    for result in results:
        log.log(
            _LOG_LEVELS[result.status],
            "check %s: %s: %s",
            result.probe,
            result.status.value,
            result.detail,
            extra={"probe": result.probe, "status": result.status.value, "fix": result.fix},
        )
    return results
