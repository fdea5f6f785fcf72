"""``edge-recorder check``'s core: each probe's facts → ok/warn/fail/skip with a fix; the renderings; the shell's bounds."""

from __future__ import annotations

import dataclasses
import errno
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from edge_recorder import doctor
from edge_recorder.config import Secret, Settings
from edge_recorder.doctor import (
    BucketOutcome,
    BucketTarget,
    DatabaseFacts,
    DiskFacts,
    MigrationLevel,
    PortOutcome,
    ProbeResult,
    ProbeStatus,
    RedisOutcome,
    StorageFailure,
)
from edge_recorder.metadata import default_database_url, upgrade_to_head

OK, WARN, FAIL, SKIP = ProbeStatus.OK, ProbeStatus.WARN, ProbeStatus.FAIL, ProbeStatus.SKIP
TARGET = BucketTarget("rec-bucket", "recordings/", "none", "multipart")


def _failure(step: str, code: str | None, *, destination: bool = True, action: str = "s3:PutObject") -> StorageFailure:
    return StorageFailure(step, action, code, destination, f"{step}: {code}: refused")


# -- renderings and the exit code


def test_a_line_has_status_probe_detail_and_fix() -> None:
    line = doctor.render_line(ProbeResult("redis", FAIL, "ping failed", "check RECORDING_REDIS_URL"))
    assert line == "fail  redis               ping failed — fix: check RECORDING_REDIS_URL"
    assert doctor.render_line(ProbeResult("disk", OK, "plenty")) == "ok    disk                plenty"


def test_json_is_one_object_per_line_with_the_four_keys() -> None:
    text = doctor.render_json(ProbeResult("font", WARN, "missing", "install it"))
    assert "\n" not in text
    assert json.loads(text) == {"probe": "font", "status": "warn", "detail": "missing", "fix": "install it"}
    assert json.loads(doctor.render_json(ProbeResult("font", OK, "fine")))["fix"] is None


def test_exit_code_is_1_only_when_a_probe_failed() -> None:
    fine = [ProbeResult("a", OK, ""), ProbeResult("b", WARN, ""), ProbeResult("c", SKIP, "")]
    assert doctor.exit_code(fine) == 0
    broken = [*fine, ProbeResult("bucket", FAIL, ""), ProbeResult("redis", FAIL, "")]
    assert doctor.exit_code(broken) == 1
    assert doctor.failed_probes(broken) == ["bucket", "redis"]
    assert doctor.summary_line(broken) == "5 probes: 1 ok, 1 warn, 2 fail, 1 skip; failed: bucket, redis"
    assert doctor.summary_line(fine) == "3 probes: 1 ok, 1 warn, 0 fail, 1 skip"


# -- bucket and multipart


def test_a_missing_bucket_fails_and_names_the_setting() -> None:
    result = doctor.judge_bucket(TARGET, BucketOutcome("k", _failure("write", "NoSuchBucket")))
    assert result.status is FAIL
    assert "write of a probe object in rec-bucket refused" in result.detail
    assert result.fix == "create the bucket rec-bucket, or set RECORDING_S3_BUCKET to one that exists"


@pytest.mark.parametrize(
    ("code", "destination", "words"),
    [
        ("AccessDenied", True, "allow s3:PutObject on arn:aws:s3:::rec-bucket/recordings/*"),
        ("InvalidAccessKeyId", True, "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        ("SignatureDoesNotMatch", True, "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        ("ExpiredToken", True, "expired"),
        ("NoCredentials", True, "AWS_ACCESS_KEY_ID"),
        ("PermanentRedirect", True, "AWS_REGION"),
        ("KMS.NotFoundException", True, "RECORDING_S3_SSE_KMS_KEY_ID"),
        ("XMinioStorageFull", True, "quota"),
        (None, False, "RECORDING_S3_ENDPOINT"),
        ("BadEndpoint", True, "RECORDING_S3_ENDPOINT"),
        ("SomethingElse", True, "bucket policy"),
    ],
)
def test_each_refusal_gets_its_own_fix(code: str | None, destination: bool, words: str) -> None:
    result = doctor.judge_bucket(TARGET, BucketOutcome("k", _failure("write", code, destination=destination)))
    assert result.status is FAIL
    assert result.fix is not None and words in result.fix


def test_a_refused_delete_warns_in_multipart_mode_and_fails_in_chunks_mode() -> None:
    refused = BucketOutcome("recordings/x/chunks/0-32", _failure("delete", "AccessDenied", action="s3:DeleteObject"))
    multipart = doctor.judge_bucket(TARGET, refused)
    assert multipart.status is WARN and "recordings/x/chunks/0-32" in multipart.detail
    assert multipart.fix is not None and "s3:DeleteObject" in multipart.fix
    chunks = doctor.judge_bucket(dataclasses.replace(TARGET, upload_mode="chunks"), refused)
    assert chunks.status is FAIL and chunks.fix is not None and "s3:DeleteObject" in chunks.fix


def test_other_bytes_read_back_fail() -> None:
    result = doctor.judge_bucket(TARGET, BucketOutcome("k", None, None, read_back_matches=False))
    assert result.status is FAIL and "other bytes" in result.detail


@pytest.mark.parametrize(
    ("mode", "seen", "status"),
    [
        ("none", None, OK),
        ("none", "AES256", OK),
        ("AES256", "AES256", OK),
        ("aws:kms", "aws:kms", OK),
        ("SSE-C", "AES256", OK),
        ("AES256", None, WARN),
        ("SSE-C", None, WARN),
        ("aws:kms", "AES256", WARN),
    ],
)
def test_the_sse_mode_in_use_must_be_confirmed_by_the_store(mode: str, seen: str | None, status: ProbeStatus) -> None:
    result = doctor.judge_bucket(dataclasses.replace(TARGET, sse_mode=mode), BucketOutcome("k", None, seen, True))
    assert result.status is status
    assert f"RECORDING_S3_SSE={mode}" in result.detail
    if seen and mode == "none":
        assert "encrypts by default" in result.detail


def test_multipart_verdicts() -> None:
    assert doctor.judge_multipart(TARGET, None, 1).status is OK
    lost = doctor.judge_multipart(TARGET, None, 0)
    assert lost.status is FAIL and lost.fix is not None and "RECORDING_S3_UPLOAD_MODE=chunks" in lost.fix
    denied = doctor.judge_multipart(TARGET, _failure("list parts", "AccessDenied", action="s3:ListMultipartUploadParts"), None)
    assert denied.status is FAIL and "list parts of a multipart upload" in denied.detail
    assert denied.fix is not None and "s3:ListMultipartUploadParts" in denied.fix


# -- Redis


@pytest.mark.parametrize(
    ("message", "words"),
    [
        ("redis ping failed: Error 111 connecting to 127.0.0.1:6379. Connection refused.", "RECORDING_REDIS_URL"),
        ("redis ping failed: NOAUTH Authentication required.", "password in RECORDING_REDIS_URL"),
        ("redis probe write failed: READONLY You can't write against a read only replica.", "primary"),
        ("redis probe write failed: NOPERM this user has no permissions", "~edge:*"),
        ("redis probe write failed: OOM command not allowed", "maxmemory"),
    ],
)
def test_redis_failures_say_what_to_do(message: str, words: str) -> None:
    result = doctor.judge_redis(RedisOutcome("h:6379/0", "ping", message))
    assert result.status is FAIL and message in result.detail and "h:6379/0" in result.detail
    assert result.fix is not None and words in result.fix


def test_redis_verdicts_without_failure() -> None:
    assert doctor.judge_redis(RedisOutcome("h:6379/0", read_back_matches=True)).status is OK
    assert doctor.judge_redis(RedisOutcome("h:6379/0", read_back_matches=False)).status is FAIL


def test_the_redis_address_never_shows_the_password() -> None:
    assert doctor.redis_where("redis://user:s3cret@cache.internal:6380/2") == "cache.internal:6380/2"
    assert doctor.redis_where("rediss://:s3cret@cache") == "cache:6379/0"
    assert doctor.redis_where("unix:///run/redis.sock") == "unix:/run/redis.sock"


# -- the database


def test_database_verdicts() -> None:
    def judge(**facts: Any) -> ProbeResult:
        return doctor.judge_database(DatabaseFacts("db", from_setting=True, **facts))

    assert judge(missing_file=True).status is OK
    unwritable = judge(missing_file=True, directory_writable=False)
    assert unwritable.status is FAIL and unwritable.fix is not None and "RECORDING_DATABASE_URL" in unwritable.fix
    down = judge(error="OperationalError: connection refused")
    assert down.status is FAIL and "connection refused" in down.detail
    assert down.fix is not None and "RECORDING_DATABASE_URL" in down.fix
    assert judge(level=MigrationLevel("0001", "0001", True)).status is OK
    assert judge(level=MigrationLevel(None, "0001", True)).status is WARN
    behind = judge(level=MigrationLevel("0001", "0002", True))
    assert behind.status is WARN and "behind 0002" in behind.detail
    newer = judge(level=MigrationLevel("0009", "0001", False))
    assert newer.status is FAIL and "0009" in newer.detail and newer.fix is not None and "newer edge-recorder" in newer.fix
    default = doctor.judge_database(DatabaseFacts("db", from_setting=False, error="x"))
    assert default.fix is not None and "RECORDING_TMP_DIR" in default.fix


def test_a_database_url_is_shown_without_its_password() -> None:
    shown = doctor.database_where("postgresql://rec:s3cret@db.internal:5432/recordings")
    assert "s3cret" not in shown and "db.internal:5432/recordings" in shown
    assert doctor.database_where("sqlite:////var/lib/rec/db.sqlite3") == "/var/lib/rec/db.sqlite3"
    assert doctor.sqlite_file("sqlite:///:memory:") is None
    assert doctor.sqlite_file("postgresql://h/db") is None


# -- ports and the receive buffer


def test_the_probe_binds_the_edges_of_the_range() -> None:
    assert doctor.edge_ports(40000, 40999) == [40000, 40001, 40998, 40999]
    assert doctor.edge_ports(5000, 5001) == [5000, 5001]
    assert doctor.edge_ports(5000, 5000) == [5000]


def test_bind_errors_become_outcomes() -> None:
    assert doctor.port_outcome(None) is PortOutcome.FREE
    assert doctor.port_outcome(errno.EADDRINUSE) is PortOutcome.BUSY
    assert doctor.port_outcome(errno.EACCES) is PortOutcome.DENIED
    assert doctor.port_outcome(errno.EADDRNOTAVAIL) is PortOutcome.NO_ADDRESS
    assert doctor.port_outcome(errno.ENOBUFS) is PortOutcome.ERROR


def test_port_verdicts() -> None:
    free = {p: PortOutcome.FREE for p in (40000, 40001, 40998, 40999)}
    assert doctor.judge_ports("127.0.0.1", 40000, 40999, free).status is OK
    some = {**free, 40001: PortOutcome.BUSY}
    warned = doctor.judge_ports("127.0.0.1", 40000, 40999, some)
    assert warned.status is WARN and "40001 busy" in warned.detail
    assert warned.fix is not None and "RECORDING_PORT_MIN/RECORDING_PORT_MAX" in warned.fix
    none = {p: PortOutcome.BUSY for p in free}
    failed = doctor.judge_ports("127.0.0.1", 40000, 40999, none)
    assert failed.status is FAIL and failed.fix is not None and "ss -ulpn" in failed.fix
    denied = doctor.judge_ports("127.0.0.1", 1000, 1001, {1000: PortOutcome.DENIED, 1001: PortOutcome.DENIED})
    assert denied.status is FAIL and denied.fix is not None and "privileges" in denied.fix
    elsewhere = doctor.judge_ports("10.9.9.9", 40000, 40999, {40000: PortOutcome.NO_ADDRESS})
    assert elsewhere.status is FAIL and elsewhere.fix is not None and "RECORDING_BIND_IP" in elsewhere.fix


def test_a_receive_buffer_cap_below_the_setting_warns_with_the_sysctl() -> None:
    low = doctor.judge_receive_buffer(212_992, 4_194_304)
    assert low.status is WARN and "net.core.rmem_max=212992" in low.detail
    assert low.fix is not None and low.fix.startswith("sysctl -w net.core.rmem_max=4194304")
    assert doctor.judge_receive_buffer(4_194_304, 4_194_304).status is OK
    assert doctor.judge_receive_buffer(None, 4_194_304).status is SKIP


def test_rmem_max_is_read_or_none(tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("212992\n")
    bad.write_text("lots\n")
    assert doctor.read_rmem_max(good) == 212_992
    assert doctor.read_rmem_max(bad) is None
    assert doctor.read_rmem_max(tmp_path / "missing") is None


# -- codecs, font, disk


def test_codec_font_and_disk_verdicts() -> None:
    assert doctor.judge_codecs([]).status is OK
    missing = doctor.judge_codecs(["libx264 encoder"])
    assert missing.status is FAIL and "libx264 encoder" in missing.detail
    assert doctor.judge_codecs([], error="No module named 'av'").status is FAIL
    assert doctor.judge_font("/f.ttf", True, None).status is OK
    gone = doctor.judge_font("/f.ttf", False, None)
    assert gone.status is WARN and gone.fix is not None and "fonts-dejavu-core" in gone.fix
    assert doctor.judge_font("/f.ttf", True, "unknown file format").status is FAIL

    mib = 1 << 20
    hour = 1_000 * mib
    below = doctor.judge_disk(DiskFacts("/spool", 100 * mib, 256, hour, 4))
    assert below.status is FAIL and "100 MiB free under /spool, below RECORDING_MIN_FREE_DISK_MIB=256" in below.detail
    tight = doctor.judge_disk(DiskFacts("/spool", 256 * mib + 2 * hour, 256, hour, 4))
    assert tight.status is WARN and "about 30 min of RECORDING_MAX_SESSIONS=4" in tight.detail
    assert doctor.judge_disk(DiskFacts("/spool", 256 * mib + 5 * hour, 256, hour, 4)).status is OK
    assert doctor.judge_disk(DiskFacts("/spool", 10 * hour, 0, hour, 4)).status is OK


# -- the shell


async def test_a_probe_that_does_not_answer_fails_at_its_timeout(autojump_clock: trio.abc.Clock) -> None:
    async def hangs() -> ProbeResult:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    start = trio.current_time()
    result = await doctor._bounded("redis", 10.0, hangs, "check RECORDING_REDIS_URL")
    assert trio.current_time() - start == pytest.approx(10.0)
    assert result == ProbeResult("redis", FAIL, "no answer within 10 s", "check RECORDING_REDIS_URL")


async def test_a_probe_that_raises_is_that_probes_failure() -> None:
    async def breaks() -> ProbeResult:
        raise KeyError("surprise")

    result = await doctor._bounded("font", 5.0, breaks, "install the fonts")
    assert result.status is FAIL and "KeyError" in result.detail and result.fix == "install the fonts"


@pytest.fixture
def busy_udp(settings: Settings) -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for sock in held:
        sock.close()


def _hold(held: list[socket.socket], port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    held.append(sock)


async def test_probes_without_services_skip_what_does_not_apply(settings: Settings, busy_udp: list[socket.socket]) -> None:
    _hold(busy_udp, settings.port_max)
    results = {r.probe: r for r in await doctor.run_probes(settings)}
    assert list(results) == list(doctor.PROBES)
    assert results["bucket"].status is SKIP and "RECORDING_S3_BUCKET" in results["bucket"].detail
    assert results["multipart"].status is SKIP
    assert results["redis"].status is SKIP and "RECORDING_REDIS_URL" in results["redis"].detail
    # Read only: the SQLite file the settings point at is not created by the probe.
    assert results["database"].status is OK and "not created yet" in results["database"].detail
    assert not Path(default_database_url(settings).removeprefix("sqlite:///")).exists()
    assert results["udp-ports"].status is WARN and f"{settings.port_max} busy" in results["udp-ports"].detail
    assert results["codecs"].status is OK
    assert results["disk"].status in (OK, WARN)


async def test_every_edge_port_busy_fails(settings: Settings, busy_udp: list[socket.socket]) -> None:
    for port in doctor.edge_ports(settings.port_min, settings.port_max):
        _hold(busy_udp, port)
    result = await doctor.probe_ports(settings)
    assert result.status is FAIL and "none of the ports tried" in result.detail


async def test_the_database_probe_reads_the_migration_level(settings: Settings) -> None:
    url = default_database_url(settings)
    upgrade_to_head(url)
    result = await doctor.probe_database(settings)
    assert result.status is OK and "migrated to the newest revision (0003)" in result.detail

    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE edge_recorder_alembic_version SET version_num = '9999'"))
    engine.dispose()
    newer = await doctor.probe_database(settings)
    assert newer.status is FAIL and "revision 9999" in newer.detail


async def test_a_disk_below_the_floor_fails(settings: Settings) -> None:
    huge = dataclasses.replace(settings, lifecycle=dataclasses.replace(settings.lifecycle, min_free_disk_mib=1_048_576))
    result = await doctor.probe_disk(huge)
    assert result.status is FAIL and "RECORDING_MIN_FREE_DISK_MIB=1048576" in result.detail


async def test_redis_that_does_not_listen_fails_with_the_setting(settings: Settings) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens on it once closed
    down = dataclasses.replace(settings, state=dataclasses.replace(settings.state, redis_url=Secret(f"redis://:s3cretpw@127.0.0.1:{port}/0")))
    result = await doctor.probe_redis(down)
    assert result.status is FAIL and f"ping at 127.0.0.1:{port}/0 failed" in result.detail
    assert "s3cretpw" not in f"{result.detail} {result.fix}"
    assert result.fix is not None and "RECORDING_REDIS_URL" in result.fix


async def test_a_database_file_that_cannot_be_opened_fails_the_probe(settings: Settings, tmp_path: Path) -> None:
    # A path that is not a file stands in for another user's 0600 database
    # (file modes do not stop root, which the suite may run as): the open fails.
    unopenable = tmp_path / "db-is-a-directory"
    unopenable.mkdir()
    broken = dataclasses.replace(settings, state=dataclasses.replace(settings.state, database_url=Secret(f"sqlite:///{unopenable}")))
    result = await doctor.probe_database(broken)
    assert result.status is FAIL and "cannot open the database" in result.detail
    assert result.fix is not None and "RECORDING_DATABASE_URL" in result.fix
