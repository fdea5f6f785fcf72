"""Settings: built-in defaults < a TOML file < environment variables.

One vocabulary: the TOML file's keys are the environment variable names
themselves (``RECORDING_PORT_MIN = 40000``), so an operator moves a setting
between the file and the environment without translating it. The environment
wins (12-factor): a container's ``-e`` overrides what the image ships.

The file is found from the ``config_file`` argument, else the environment
variable ``RECORDING_CONFIG_FILE``, else there is none.

Every value is checked at load, so a bad setting stops the process at start-up
with :class:`~edge_recorder.errors.ConfigError` naming the variable, the value
(never a secret's) and what is allowed, rather than failing mid-recording.
Unknown keys in the file are an error (a typo must not pass silently); unknown
``RECORDING_*`` environment variables only log a warning, because the
environment is shared with other programs and older deployments.

Loading is pure apart from reading the file and the host name: it creates no
directory and opens no socket.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import difflib
import hmac
import ipaddress
import logging
import math
import os
import re
import socket
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args

from edge_recorder.errors import ConfigError

__all__ = [
    "KNOWN_VARIABLES",
    "ControlSettings",
    "IngestSettings",
    "LifecycleSettings",
    "OutputSettings",
    "OverlaySettings",
    "S3Settings",
    "Secret",
    "StateSettings",
    "Settings",
    "load_settings",
]

logger = logging.getLogger(__name__)

Layout = Literal["pip", "grid"]
Corner = Literal["top-left", "top-right", "bottom-left", "bottom-right"]
SseMode = Literal["none", "AES256", "aws:kms", "SSE-C"]
UploadMode = Literal["multipart", "chunks"]
X264Preset = Literal[
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
]

CONFIG_FILE_VARIABLE = "RECORDING_CONFIG_FILE"
FFMPEG_PATH_VARIABLE = "RECORDING_FFMPEG_PATH"
FFMPEG_PATH_WARNING = (
    "RECORDING_FFMPEG_PATH no longer applies: edge-recorder encodes in-process with PyAV"
)

# Every key the TOML file may hold; each is also read from the environment.
# RECORDING_CONFIG_FILE is environment-only (a file cannot name itself).
KNOWN_VARIABLES: tuple[str, ...] = (
    "RECORDING_ENABLED",
    "RECORDING_TMP_DIR",
    "RECORDING_LAYOUT",
    "RECORDING_BIND_IP",
    "RECORDING_PORT_MIN",
    "RECORDING_PORT_MAX",
    "RECORDING_SERVER_ID",
    "RECORDING_MAX_SESSIONS",
    "RECORDING_OUTPUT_WIDTH",
    "RECORDING_OUTPUT_HEIGHT",
    "RECORDING_OUTPUT_FPS",
    "RECORDING_VIDEO_BITRATE_KBPS",
    "RECORDING_AUDIO_BITRATE_KBPS",
    "RECORDING_X264_PRESET",
    "RECORDING_KEYFRAME_INTERVAL_S",
    "RECORDING_X264_THREADS",
    "RECORDING_OVERLAY_WIDTH_PCT",
    "RECORDING_OVERLAY_CORNER",
    "RECORDING_OVERLAY_MARGIN_PX",
    "RECORDING_SPEAKER_HOLD_MS",
    "RECORDING_AUDIO_SILENCE_DBOV",
    "RECORDING_SPEAKER_EXPLICIT_HOLD_MS",
    "RECORDING_PLAYOUT_DELAY_MS",
    "RECORDING_JITTER_VIDEO_MS",
    "RECORDING_JITTER_AUDIO_MS",
    "RECORDING_KEYFRAME_REQUEST_INTERVAL_MS",
    "RECORDING_UDP_RCVBUF_BYTES",
    "RECORDING_STREAM_QUEUE_PACKETS",
    "RECORDING_RTP_MAX_DATAGRAM_BYTES",
    "RECORDING_MAX_FRAME_BYTES",
    "RECORDING_RTP_SOURCE_MOVE_ANY_HOST",
    "RECORDING_RTP_SOURCE_NETWORKS",
    "RECORDING_S3_BUCKET",
    "RECORDING_S3_PREFIX",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "RECORDING_S3_ENDPOINT",
    "RECORDING_S3_SSE",
    "RECORDING_S3_SSE_KMS_KEY_ID",
    "RECORDING_CONTROL_HOST",
    "RECORDING_CONTROL_PORT",
    "RECORDING_CONTROL_PATH",
    "RECORDING_CONTROL_TOKEN",
    "RECORDING_CONTROL_ALLOW_INSECURE",
    "RECORDING_CONTROL_DIAL_URL",
    "RECORDING_CONTROL_RATE_LIMIT",
    "RECORDING_CONTROL_MAX_CONNECTIONS",
    "RECORDING_CONTROL_MAX_CONNECTIONS_PER_IP",
    "RECORDING_CONTROL_HANDSHAKE_TIMEOUT_S",
    "RECORDING_METRICS_MAX_CONNECTIONS",
    "RECORDING_METRICS_REQUEST_TIMEOUT_S",
    "RECORDING_METRICS_HOST",
    "RECORDING_METRICS_PORT",
    "RECORDING_MEDIA_TIMEOUT_S",
    "RECORDING_ROOM_EMPTY_GRACE_S",
    "RECORDING_CONTROLLER_GRACE_S",
    "RECORDING_MAX_DURATION_S",
    "RECORDING_DRAIN_TIMEOUT_S",
    "RECORDING_MIN_FREE_DISK_MIB",
    "RECORDING_S3_SSE_C_KEY",
    "RECORDING_S3_PART_SIZE_MIB",
    "RECORDING_S3_UPLOAD_MODE",
    "RECORDING_UPLOAD_RETRY_S",
    "RECORDING_S3_PRESIGN_EXPIRY_S",
    "RECORDING_S3_PRESIGN_IN_STATE",
    "RECORDING_DATABASE_URL",
    "RECORDING_REDIS_URL",
    "RECORDING_LEASE_TTL_S",
    "RECORDING_HEARTBEAT_INTERVAL_S",
    "RECORDING_WEBHOOK_URLS",
    "RECORDING_WEBHOOK_SECRET",
    "RECORDING_CLEANUP_OLDER_THAN_S",
    FFMPEG_PATH_VARIABLE,
)

_SECRET_VARIABLES = frozenset(
    {
        "AWS_SECRET_ACCESS_KEY",
        "RECORDING_CONTROL_TOKEN",
        "RECORDING_S3_SSE_C_KEY",
        "RECORDING_DATABASE_URL",  # may carry a password
        "RECORDING_REDIS_URL",  # may carry a password
        "RECORDING_WEBHOOK_SECRET",
    }
)


class Secret:
    """A string that never shows itself in ``repr``, ``str``, f-strings or logs.

    Call :meth:`reveal` at the one place that hands it to a client library.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret value itself."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant time, as anything comparing credentials should be.
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class OutputSettings:
    """The composite MP4 the encoder produces."""

    # Output frame width in pixels; even (4:2:0 chroma), 160..3840.
    width_px: int = 1280
    # Output frame height in pixels; even (4:2:0 chroma), 90..2160.
    height_px: int = 720
    # Output frame rate in frames per second, 1..60; the compositor ticks at this rate.
    fps: int = 30
    # H.264 target bitrate in kbit/s.
    video_bitrate_kbps: int = 2500
    # AAC target bitrate in kbit/s.
    audio_bitrate_kbps: int = 128
    # x264 speed/quality preset (ultrafast .. placebo); slower costs CPU per session.
    x264_preset: X264Preset = "veryfast"
    # Seconds between forced keyframes; also the fMP4 fragment length, so the
    # most a crash can lose and the granularity of the streamed upload.
    keyframe_interval_s: float = 2.0
    # x264 worker threads per session; 0 lets x264 choose (one per core).
    x264_threads: int = 1


@dataclass(frozen=True)
class OverlaySettings:
    """Geometry of the picture-in-picture overlay (the speaker's camera)."""

    # Overlay width as a percentage of the output width, 5..50.
    width_pct: int = 25
    # Corner of the output the overlay sits in.
    corner: Corner = "bottom-right"
    # Gap in pixels between the overlay and the output's edges.
    margin_px: int = 24
    # Shortest time one speaker stays in the overlay before audio levels may
    # switch to another (hysteresis: the overlay never flickers).
    speaker_hold_ms: int = 2000
    # How long an explicit recording.setActiveSpeaker wins over audio levels.
    speaker_explicit_hold_ms: int = 3000


@dataclass(frozen=True)
class IngestSettings:
    """RTP receive, jitter buffering and playout."""

    # How far behind real time the compositor runs, in milliseconds, so late
    # packets still make it into the frame they belong to.
    playout_delay_ms: int = 300
    # Longest a video frame waits in the jitter buffer for missing packets, ms.
    video_jitter_ms: int = 150
    # Longest an audio packet waits in the jitter buffer for a gap to fill, ms.
    audio_jitter_ms: int = 60
    # Minimum milliseconds between two keyframe requests (RTCP PLI/FIR) per stream.
    keyframe_request_interval_ms: int = 500
    # SO_RCVBUF requested for each RTP socket, in bytes (the kernel may cap it
    # at net.core.rmem_max).
    udp_receive_buffer_bytes: int = 4 * 1024 * 1024
    # Packets queued between a socket reader and its jitter buffer before
    # packets are dropped (and counted).
    stream_queue_packets: int = 512
    # Audio whose RFC 6464 level stays below this many dBov (voice flag off)
    # is not decoded or mixed; -127 mixes everything.
    audio_silence_dbov: int = -55
    # Largest UDP datagram (RTP or RTCP) a stream's socket accepts, bytes;
    # anything longer is dropped unparsed and counted (near the path MTU: an
    # SFU never sends more; 1500 leaves room for RTX and header extensions).
    max_datagram_bytes: int = 1500
    # Largest assembled video frame, bytes; a frame that grows past it is
    # dropped (counted) and a keyframe requested. Also bounds each jitter
    # buffer (a few frames' worth) and the worker pipe's messages.
    max_frame_bytes: int = 4 * 1024 * 1024
    # Allow a stream's latched source to move to another host (the same SSRC
    # after RECORDING_JITTER-long silence); false: only another port of the
    # same host (NAT rebinding, an SFU worker restart).
    source_move_any_host: bool = False
    # Networks RTP may come from (the SFU hosts), as CIDRs; empty: any. A
    # stream then cannot even be latched by a sender elsewhere.
    source_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


@dataclass(frozen=True)
class S3Settings:
    """Where finished recordings go (used by the S3 sink)."""

    # Target bucket; None keeps recordings in tmp_dir only.
    bucket: str | None = None
    # Key prefix for every object; "" or ends with "/".
    prefix: str = "recordings/"
    # AWS region of the bucket; None lets the client library decide.
    region: str | None = None
    # Explicit access key id; None uses the default credential chain.
    access_key_id: str | None = None
    # Explicit secret access key, set exactly when access_key_id is.
    secret_access_key: Secret | None = None
    # S3-compatible endpoint URL (e.g. MinIO at http://127.0.0.1:9000); None for AWS.
    endpoint: str | None = None
    # Server-side encryption: "none", "AES256" (SSE-S3) or "aws:kms" (SSE-KMS).
    sse: SseMode = "none"
    # KMS key for "aws:kms"; None uses the bucket's (or AWS-managed) default key.
    sse_kms_key_id: str | None = None
    # Customer key for "SSE-C": 32 bytes, given base64-encoded. Needs https.
    sse_customer_key: Secret | None = None
    # Size of each uploaded piece while recording, MiB (S3's minimum part is 5).
    part_size_mib: int = 8
    # How the spool reaches the bucket while recording: "multipart" (one S3
    # multipart upload, completed at stop) or "chunks" (chunk objects composed
    # server-side at stop). docs/storage.md compares them.
    upload_mode: UploadMode = "multipart"
    # How long an upload is retried (with backoff) before the session fails
    # with the artifact kept on disk, seconds.
    upload_retry_s: float = 300.0
    # Lifetime of presigned GET URLs, seconds (S3 allows up to 7 days).
    presign_expiry_s: int = 3600
    # Put a presigned URL in recording.get / the state record's asset.url.
    presign_in_state: bool = False


@dataclass(frozen=True)
class StateSettings:
    """Metadata (SQL), shared state (Redis), webhooks and housekeeping."""

    # SQLAlchemy URL of the metadata database; None: SQLite at
    # <RECORDING_TMP_DIR>/edge-recorder.sqlite3.
    database_url: Secret | None = None
    # Redis URL for shared state (redis://host:port/db); None: in-memory, this node only.
    redis_url: Secret | None = None
    # Seconds a node's lease on a recording lasts without renewal.
    lease_ttl_s: float = 15.0
    # Seconds between heartbeats (node registration, lease renewal).
    heartbeat_interval_s: float = 5.0
    # URLs that receive every state change as signed JSON.
    webhook_urls: tuple[str, ...] = ()
    # HMAC-SHA256 key for the webhook signature header.
    webhook_secret: Secret | None = None
    # Local artifacts older than this are removed by the scheduled cleanup
    # (never unless safely uploaded), seconds; 0 disables the schedule.
    cleanup_older_than_s: float = 7 * 86_400.0


@dataclass(frozen=True)
class ControlSettings:
    """The control plane: the SFU's WebSocket and the HTTP health/metrics endpoint."""

    # Address the control WebSocket listens on.
    host: str = "127.0.0.1"
    # TCP port of the control WebSocket; 0 picks a free one (tests).
    port: int = 8765
    # URL path of the control WebSocket.
    path: str = "/control"
    # Bearer token every control handshake must carry; None accepts any.
    token: Secret | None = None
    # Allow a non-loopback control address without a token (explicit opt-out).
    allow_insecure: bool = False
    # ws:// or wss:// URL of an SFU to dial out to (edge boxes behind NAT).
    dial_url: str | None = None
    # Requests per second one connection may send (burst twice that) before
    # getting "rate limited" errors.
    rate_limit_per_s: int = 50
    # Control connections open at once (handshaking or established), in all
    # and from one IP address; more are refused before any parsing.
    max_connections: int = 64
    max_connections_per_ip: int = 16
    # Seconds a new control connection has to complete its WebSocket handshake.
    handshake_timeout_s: float = 5.0
    # Address and port of /metrics, /healthz and /readyz; port 0 picks one.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    # Connections the /metrics listener serves at once (at most a quarter of
    # them from one IP address), and seconds a client has to send a request (head and body).
    metrics_max_connections: int = 64
    metrics_request_timeout_s: float = 5.0


@dataclass(frozen=True)
class LifecycleSettings:
    """When sessions stop by themselves, and how long stopping may take."""

    # Stop (reason media-timeout) when no stream has delivered a packet for
    # this many seconds; 0 disables.
    media_timeout_s: float = 30.0
    # Stop (reason room-empty) this many seconds after the last stream was
    # removed, unless one is added meanwhile.
    room_empty_grace_s: float = 10.0
    # Stop (reason controller-lost) when every control connection that drove
    # a session has been gone this long.
    controller_grace_s: float = 30.0
    # Stop (reason max-duration) after this many seconds; 0 means no limit.
    max_duration_s: float = 0.0
    # Longest a graceful stop may take to finalise one session, and the
    # service's drain deadline on SIGTERM.
    drain_timeout_s: float = 30.0
    # Free space RECORDING_TMP_DIR must keep, MiB: below it /readyz says not
    # ready and recording.start is refused (a spool that fills the disk loses
    # the recording being written, not only the new one).
    min_free_disk_mib: int = 256


@dataclass(frozen=True)
class Settings:
    """Everything edge-recorder reads from its configuration, validated."""

    # Master switch: when False the service refuses to start recordings.
    recording_enabled: bool = False
    # Absolute scratch directory for fragments being written and spooled.
    tmp_dir: Path = Path("tmp/recordings")
    # Composite layout: "pip" (screen share full frame, speaker overlay) or "grid".
    layout: Layout = "pip"
    # IP literal (v4 or v6) the RTP sockets bind to.
    bind_ip: str = "127.0.0.1"
    # Lowest UDP port handed to an RTP socket (inclusive), 1024..65535.
    port_min: int = 40000
    # Highest UDP port handed to an RTP socket (inclusive), >= port_min.
    port_max: int = 40999
    # Name of this recorder instance in metrics labels and shared state.
    server_id: str = ""
    # Concurrent recordings this instance accepts before refusing new ones.
    max_sessions: int = 4
    # Encoder and container output.
    output: OutputSettings = dataclasses.field(default_factory=OutputSettings)
    # Picture-in-picture overlay geometry.
    overlay: OverlaySettings = dataclasses.field(default_factory=OverlaySettings)
    # RTP receive and playout timing.
    ingest: IngestSettings = dataclasses.field(default_factory=IngestSettings)
    # Upload destination.
    s3: S3Settings = dataclasses.field(default_factory=S3Settings)
    # Control WebSocket and HTTP endpoints.
    control: ControlSettings = dataclasses.field(default_factory=ControlSettings)
    # Auto-stop rules and drain deadlines.
    lifecycle: LifecycleSettings = dataclasses.field(default_factory=LifecycleSettings)
    # Metadata database, shared state, webhooks, cleanup.
    state: StateSettings = dataclasses.field(default_factory=StateSettings)
    # The TOML file these settings were loaded from, if any (for the start-up log).
    config_file: Path | None = None

    def describe(self) -> dict[str, Any]:
        """All values as a JSON-friendly nested dict, secrets shown as ``"***"``.

        Meant for one structured log line at start-up.
        """
        return cast(dict[str, Any], _describe(self))


def _describe(value: object) -> object:
    if isinstance(value, Secret):
        return "***"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _describe(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------- loading


def load_settings(
    environ: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> Settings:
    """Load and validate settings.

    Args:
        environ: the environment to read; ``os.environ`` when None.
        config_file: a TOML file; when None, ``RECORDING_CONFIG_FILE`` from
            ``environ`` names it, and without that no file is read.

    Returns:
        The validated, frozen settings.

    Raises:
        ConfigError: the file is missing, unreadable, not TOML or has an unknown
            key, or any value is invalid. ``variable`` names the culprit.
    """
    env = os.environ if environ is None else environ
    path = _config_path(env, config_file)
    raw: dict[str, _Raw] = {}
    if path is not None:
        for name, value in _read_toml(path).items():
            raw[name] = _Raw(value, f"config file {path}")
    for name, value in env.items():
        if name in KNOWN_VARIABLES:
            raw[name] = _Raw(value, "environment")
        elif name.startswith("RECORDING_") and name != CONFIG_FILE_VARIABLE:
            logger.warning(
                "ignoring unknown environment variable %s%s", name, _did_you_mean(name)
            )
    if FFMPEG_PATH_VARIABLE in raw:
        logger.warning(FFMPEG_PATH_WARNING)
    return _build(_Reader(raw), path)


def _config_path(
    env: Mapping[str, str], config_file: str | os.PathLike[str] | None
) -> Path | None:
    if config_file is not None:
        given: str = os.fspath(config_file)
    else:
        given = env.get(CONFIG_FILE_VARIABLE, "").strip()
        if not given:
            return None
    return Path(os.path.abspath(os.path.expanduser(given)))


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(CONFIG_FILE_VARIABLE, f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(CONFIG_FILE_VARIABLE, f"{path}: cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(CONFIG_FILE_VARIABLE, f"{path}: not valid TOML: {exc}") from exc
    for key, value in data.items():
        if key == CONFIG_FILE_VARIABLE:
            raise ConfigError(
                key, f"{path}: only the environment or the command line can name the config file"
            )
        if key not in KNOWN_VARIABLES:
            raise ConfigError(
                key,
                f"{path}: unknown key{_did_you_mean(key)}; keys are the environment "
                "variable names, see config/edge-recorder.toml",
            )
        if isinstance(value, (dict, list)):
            raise ConfigError(key, f"{path}: must be a single value, not a table or array")
    return data


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, KNOWN_VARIABLES, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


@dataclass(frozen=True)
class _Raw:
    value: object  # str from the environment; str/int/float/bool from TOML
    source: str  # "environment" or "config file /path"


_T = TypeVar("_T")
_S = TypeVar("_S", bound=str)

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


class _Reader:
    """Typed look-ups over the merged raw values, failing with ConfigError."""

    def __init__(self, raw: Mapping[str, _Raw]) -> None:
        self._raw = raw

    def is_set(self, name: str) -> bool:
        return name in self._raw

    def fail(self, name: str, problem: str, allowed: str) -> ConfigError:
        """An error naming the variable, its value (unless secret) and source."""
        raw = self._raw.get(name)
        if raw is None:  # a default that conflicts with another setting
            return ConfigError(name, f"the default {problem}; allowed: {allowed}")
        shown = "the value" if name in _SECRET_VARIABLES else repr(raw.value)
        return ConfigError(name, f"{shown} (from {raw.source}) {problem}; allowed: {allowed}")

    def _text(self, name: str, allowed: str) -> str | None:
        """The raw value as stripped text, None when unset."""
        raw = self._raw.get(name)
        if raw is None:
            return None
        if isinstance(raw.value, bool) or not isinstance(raw.value, (str, int, float)):
            raise self.fail(name, "has the wrong type", allowed)
        return str(raw.value).strip()

    def boolean(self, name: str, default: bool) -> bool:
        allowed = "true/false, 1/0, yes/no, on/off"
        raw = self._raw.get(name)
        if raw is None:
            return default
        if isinstance(raw.value, bool):
            return raw.value
        if isinstance(raw.value, str):
            word = raw.value.strip().lower()
            if word in _TRUE:
                return True
            if word in _FALSE:
                return False
        raise self.fail(name, "is not a boolean", allowed)

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        allowed = f"an integer {lo}..{hi}"
        raw = self._raw.get(name)
        if raw is None:
            return default
        value = raw.value
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise self.fail(name, "is not an integer", allowed)
        if isinstance(value, str):
            try:
                # Plain decimal only: int() would also take "1_000" and " +5 ".
                if not re.fullmatch(r"[+-]?[0-9]+", value.strip()):
                    raise ValueError(value)
                value = int(value.strip())
            except ValueError:
                raise self.fail(name, "is not an integer", allowed) from None
        if not lo <= value <= hi:
            raise self.fail(name, "is out of range", allowed)
        return value

    def even_integer(self, name: str, default: int, lo: int, hi: int) -> int:
        value = self.integer(name, default, lo, hi)
        if value % 2:
            raise self.fail(name, "is odd (4:2:0 video needs even sizes)", f"an even integer {lo}..{hi}")
        return value

    def number(self, name: str, default: float, lo: float, hi: float) -> float:
        allowed = f"a number {lo:g}..{hi:g}"
        raw = self._raw.get(name)
        if raw is None:
            return default
        value = raw.value
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise self.fail(name, "is not a number", allowed)
        try:
            number = float(value)
        except ValueError:
            raise self.fail(name, "is not a number", allowed) from None
        if not math.isfinite(number) or not lo <= number <= hi:
            raise self.fail(name, "is out of range", allowed)
        return number

    def choice(self, name: str, default: _S, choices: tuple[_S, ...]) -> _S:
        allowed = " | ".join(choices)
        text = self._text(name, allowed)
        if text is None:
            return default
        for choice in choices:  # case-insensitive, returned in canonical spelling
            if text.lower() == choice.lower():
                return choice
        raise self.fail(name, "is not one of the choices", allowed)

    def string(self, name: str, default: str, pattern: str, allowed: str) -> str:
        text = self._text(name, allowed)
        if text is None:
            return default
        if not re.fullmatch(pattern, text):
            raise self.fail(name, "is not valid", allowed)
        return text

    def optional(self, name: str, pattern: str, allowed: str) -> str | None:
        """An optional string: unset or empty gives None (empty overrides the file)."""
        text = self._text(name, allowed)
        if not text:
            return None
        if not re.fullmatch(pattern, text):
            raise self.fail(name, "is not valid", allowed)
        return text

    def parsed(
        self, name: str, default: _T, parse: Callable[[str], _T], allowed: str
    ) -> _T:
        """A string turned into a value by ``parse``, which raises ValueError."""
        text = self._text(name, allowed)
        if text is None:
            return default
        try:
            return parse(text)
        except ValueError:
            raise self.fail(name, "is not valid", allowed) from None


# S3 bucket naming rules (also MinIO's): 3..63 of a-z 0-9 . -, starting and
# ending with a letter or digit.
_BUCKET_RE = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
_BUCKET_ALLOWED = "3..63 characters of a-z, 0-9, '.', '-', starting and ending with a letter or digit"
_SERVER_ID_RE = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
_SERVER_ID_ALLOWED = "1..128 characters of A-Z a-z 0-9 . _ : -, starting with a letter or digit"
_TOKEN_RE = r"\S{1,256}"
_TOKEN_ALLOWED = "1..256 characters without spaces"


def _absolute_dir(text: str) -> Path:
    if not text:
        raise ValueError("empty")
    # abspath, not resolve(): keep symlinks the operator chose (e.g. /tmp on macOS).
    return Path(os.path.abspath(os.path.expanduser(text)))


def _ip_literal(text: str) -> str:
    return str(ipaddress.ip_address(text))  # normalised, e.g. "::1" for "0:0::1"


def _endpoint_url(text: str) -> str | None:
    if not text:
        return None
    parts = urllib.parse.urlsplit(text)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or "@" in parts.netloc
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ValueError(text)
    parts.port  # noqa: B018 - raises ValueError for a bad port
    return f"{parts.scheme}://{parts.netloc}"


def _s3_prefix(text: str) -> str:
    if text.startswith("/"):
        raise ValueError(text)
    if text and not text.endswith("/"):
        text += "/"  # trailing slash enforced (runbook)
    return text


def _build(r: _Reader, config_file: Path | None) -> Settings:
    hostname = socket.gethostname()
    output = OutputSettings(
        width_px=r.even_integer("RECORDING_OUTPUT_WIDTH", 1280, 160, 3840),
        height_px=r.even_integer("RECORDING_OUTPUT_HEIGHT", 720, 90, 2160),
        fps=r.integer("RECORDING_OUTPUT_FPS", 30, 1, 60),
        video_bitrate_kbps=r.integer("RECORDING_VIDEO_BITRATE_KBPS", 2500, 100, 50_000),
        audio_bitrate_kbps=r.integer("RECORDING_AUDIO_BITRATE_KBPS", 128, 16, 512),
        x264_preset=r.choice("RECORDING_X264_PRESET", "veryfast", get_args(X264Preset)),
        keyframe_interval_s=r.number("RECORDING_KEYFRAME_INTERVAL_S", 2.0, 0.5, 10.0),
        x264_threads=r.integer("RECORDING_X264_THREADS", 1, 0, 64),
    )
    overlay = OverlaySettings(
        width_pct=r.integer("RECORDING_OVERLAY_WIDTH_PCT", 25, 5, 50),
        corner=r.choice("RECORDING_OVERLAY_CORNER", "bottom-right", get_args(Corner)),
        margin_px=r.integer("RECORDING_OVERLAY_MARGIN_PX", 24, 0, 512),
        speaker_hold_ms=r.integer("RECORDING_SPEAKER_HOLD_MS", 2000, 0, 60_000),
        speaker_explicit_hold_ms=r.integer("RECORDING_SPEAKER_EXPLICIT_HOLD_MS", 3000, 0, 600_000),
    )
    if 2 * overlay.margin_px >= min(output.width_px, output.height_px):
        raise r.fail(
            "RECORDING_OVERLAY_MARGIN_PX",
            f"leaves no room: twice RECORDING_OVERLAY_MARGIN_PX={overlay.margin_px} must be "
            f"smaller than the output's {output.width_px}x{output.height_px}",
            "a margin below half the output's smaller side",
        )
    ingest = IngestSettings(
        playout_delay_ms=r.integer("RECORDING_PLAYOUT_DELAY_MS", 300, 0, 10_000),
        video_jitter_ms=r.integer("RECORDING_JITTER_VIDEO_MS", 150, 0, 5_000),
        audio_jitter_ms=r.integer("RECORDING_JITTER_AUDIO_MS", 60, 0, 5_000),
        keyframe_request_interval_ms=r.integer(
            "RECORDING_KEYFRAME_REQUEST_INTERVAL_MS", 500, 50, 10_000
        ),
        udp_receive_buffer_bytes=r.integer(
            "RECORDING_UDP_RCVBUF_BYTES", 4 * 1024 * 1024, 64 * 1024, 256 * 1024 * 1024
        ),
        stream_queue_packets=r.integer("RECORDING_STREAM_QUEUE_PACKETS", 512, 16, 65_536),
        audio_silence_dbov=r.integer("RECORDING_AUDIO_SILENCE_DBOV", -55, -127, 0),
        max_datagram_bytes=r.integer("RECORDING_RTP_MAX_DATAGRAM_BYTES", 1500, 576, 65_507),
        max_frame_bytes=r.integer("RECORDING_MAX_FRAME_BYTES", 4 * 1024 * 1024, 64 * 1024, 15 * 1024 * 1024),
        source_move_any_host=r.boolean("RECORDING_RTP_SOURCE_MOVE_ANY_HOST", False),
        source_networks=r.parsed(
            "RECORDING_RTP_SOURCE_NETWORKS", (), _networks, "comma-separated CIDRs such as 10.0.0.0/24,fd00::/64, or empty"
        ),
    )
    # A jitter buffer that holds a frame longer than the playout delay releases
    # it after the compositor has already moved past its timestamp.
    for name, jitter_ms in (
        ("RECORDING_JITTER_VIDEO_MS", ingest.video_jitter_ms),
        ("RECORDING_JITTER_AUDIO_MS", ingest.audio_jitter_ms),
    ):
        if jitter_ms > ingest.playout_delay_ms:
            culprit = name if r.is_set(name) else "RECORDING_PLAYOUT_DELAY_MS"
            raise r.fail(
                culprit,
                f"is inconsistent: {name}={jitter_ms} exceeds "
                f"RECORDING_PLAYOUT_DELAY_MS={ingest.playout_delay_ms}",
                "jitter buffer delays no longer than the playout delay",
            )

    s3 = _build_s3(r)

    port_min = r.integer("RECORDING_PORT_MIN", 40000, 1024, 65535)
    port_max = r.integer("RECORDING_PORT_MAX", 40999, 1024, 65535)
    if port_min > port_max:
        culprit = "RECORDING_PORT_MIN" if r.is_set("RECORDING_PORT_MIN") else "RECORDING_PORT_MAX"
        raise r.fail(
            culprit,
            f"makes an empty range: RECORDING_PORT_MIN={port_min} > RECORDING_PORT_MAX={port_max}",
            "RECORDING_PORT_MIN <= RECORDING_PORT_MAX",
        )

    if r.is_set("RECORDING_SERVER_ID"):
        server_id = r.string(
            "RECORDING_SERVER_ID", hostname, _SERVER_ID_RE, _SERVER_ID_ALLOWED
        )
    elif re.fullmatch(_SERVER_ID_RE, hostname):
        server_id = hostname
    else:
        raise ConfigError(
            "RECORDING_SERVER_ID",
            f"unset, and the host name {hostname!r} cannot stand in for it; "
            f"set it to {_SERVER_ID_ALLOWED}",
        )

    return Settings(
        recording_enabled=r.boolean("RECORDING_ENABLED", False),
        tmp_dir=r.parsed(
            "RECORDING_TMP_DIR",
            _absolute_dir("./tmp/recordings"),
            _absolute_dir,
            "a non-empty directory path (relative paths are taken from the working directory)",
        ),
        layout=r.choice("RECORDING_LAYOUT", "pip", get_args(Layout)),
        bind_ip=r.parsed("RECORDING_BIND_IP", "127.0.0.1", _ip_literal, "an IPv4 or IPv6 address literal"),
        port_min=port_min,
        port_max=port_max,
        server_id=server_id,
        max_sessions=r.integer("RECORDING_MAX_SESSIONS", 4, 1, 256),
        output=output,
        overlay=overlay,
        ingest=ingest,
        s3=s3,
        control=_build_control(r),
        state=_build_state(r),
        lifecycle=LifecycleSettings(
            media_timeout_s=r.number("RECORDING_MEDIA_TIMEOUT_S", 30.0, 0.0, 86_400.0),
            room_empty_grace_s=r.number("RECORDING_ROOM_EMPTY_GRACE_S", 10.0, 0.0, 86_400.0),
            controller_grace_s=r.number("RECORDING_CONTROLLER_GRACE_S", 30.0, 0.0, 86_400.0),
            max_duration_s=r.number("RECORDING_MAX_DURATION_S", 0.0, 0.0, 7 * 86_400.0),
            drain_timeout_s=r.number("RECORDING_DRAIN_TIMEOUT_S", 30.0, 1.0, 3_600.0),
            min_free_disk_mib=r.integer("RECORDING_MIN_FREE_DISK_MIB", 256, 0, 1_048_576),
        ),
        config_file=config_file,
    )


def _ws_url(text: str) -> str | None:
    if not text:
        return None
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(text)
    parts.port  # noqa: B018 - raises ValueError for a bad port
    return text


def _networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    # strict=False: 10.0.0.7/24 means its network, as an operator would mean it.
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def _sse_c_key(text: str) -> Secret:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if len(raw) != 32:
        raise ValueError("not 32 bytes")
    return Secret(text)


def _url_list(text: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in text.split(",") if u.strip())
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(url)
    return urls


def _build_state(r: _Reader) -> StateSettings:
    database = r.optional("RECORDING_DATABASE_URL", r"[a-z0-9+]+://\S*", "an SQLAlchemy URL such as postgresql+psycopg://user@host/db or sqlite:///path")
    redis = r.optional("RECORDING_REDIS_URL", r"(redis|rediss|unix)://\S+", "a redis:// or rediss:// URL")
    secret = r.optional("RECORDING_WEBHOOK_SECRET", r"\S{16,256}", "16..256 characters without spaces")
    lease = r.number("RECORDING_LEASE_TTL_S", 15.0, 2.0, 3600.0)
    heartbeat = r.number("RECORDING_HEARTBEAT_INTERVAL_S", 5.0, 0.5, 600.0)
    if heartbeat * 2 > lease:
        raise r.fail(
            "RECORDING_HEARTBEAT_INTERVAL_S",
            f"is too long for RECORDING_LEASE_TTL_S={lease:g}: a lease must survive a missed heartbeat",
            "at most half of RECORDING_LEASE_TTL_S",
        )
    return StateSettings(
        database_url=None if database is None else Secret(database),
        redis_url=None if redis is None else Secret(redis),
        lease_ttl_s=lease,
        heartbeat_interval_s=heartbeat,
        webhook_urls=r.parsed("RECORDING_WEBHOOK_URLS", (), _url_list, "comma-separated http(s) URLs"),
        webhook_secret=None if secret is None else Secret(secret),
        cleanup_older_than_s=r.number("RECORDING_CLEANUP_OLDER_THAN_S", 7 * 86_400.0, 0.0, 365 * 86_400.0),
    )


def _build_control(r: _Reader) -> ControlSettings:
    token = r.optional("RECORDING_CONTROL_TOKEN", r"[\x21-\x7e]{16,256}", "16..256 printable characters without spaces")
    max_connections = r.integer("RECORDING_CONTROL_MAX_CONNECTIONS", 64, 1, 4096)
    per_ip = r.integer("RECORDING_CONTROL_MAX_CONNECTIONS_PER_IP", 16, 1, 4096)
    if per_ip > max_connections:
        raise r.fail(
            "RECORDING_CONTROL_MAX_CONNECTIONS_PER_IP",
            f"exceeds RECORDING_CONTROL_MAX_CONNECTIONS={max_connections}",
            "at most RECORDING_CONTROL_MAX_CONNECTIONS",
        )
    return ControlSettings(
        host=r.parsed("RECORDING_CONTROL_HOST", "127.0.0.1", _ip_literal, "an IPv4 or IPv6 address literal"),
        port=r.integer("RECORDING_CONTROL_PORT", 8765, 0, 65535),
        path=r.string("RECORDING_CONTROL_PATH", "/control", r"/[A-Za-z0-9._~/-]{0,127}", "a URL path starting with /"),
        token=None if token is None else Secret(token),
        allow_insecure=r.boolean("RECORDING_CONTROL_ALLOW_INSECURE", False),
        dial_url=r.parsed("RECORDING_CONTROL_DIAL_URL", None, _ws_url, "a ws:// or wss:// URL, or empty"),
        rate_limit_per_s=r.integer("RECORDING_CONTROL_RATE_LIMIT", 50, 1, 100_000),
        max_connections=max_connections,
        max_connections_per_ip=per_ip,
        handshake_timeout_s=r.number("RECORDING_CONTROL_HANDSHAKE_TIMEOUT_S", 5.0, 0.5, 60.0),
        metrics_max_connections=r.integer("RECORDING_METRICS_MAX_CONNECTIONS", 64, 4, 4096),
        metrics_request_timeout_s=r.number("RECORDING_METRICS_REQUEST_TIMEOUT_S", 5.0, 0.5, 60.0),
        metrics_host=r.parsed("RECORDING_METRICS_HOST", "127.0.0.1", _ip_literal, "an IPv4 or IPv6 address literal"),
        metrics_port=r.integer("RECORDING_METRICS_PORT", 9464, 0, 65535),
    )


def _build_s3(r: _Reader) -> S3Settings:
    access_key_id = r.optional("AWS_ACCESS_KEY_ID", _TOKEN_RE, _TOKEN_ALLOWED)
    secret_text = r.optional("AWS_SECRET_ACCESS_KEY", _TOKEN_RE, _TOKEN_ALLOWED)
    if (access_key_id is None) != (secret_text is None):
        missing, present = (
            ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
            if secret_text is None
            else ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        )
        raise ConfigError(
            missing,
            f"is unset but {present} is set; set both AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or neither to use the default credential chain",
        )
    sse = r.choice("RECORDING_S3_SSE", "none", get_args(SseMode))
    kms_key_id = r.optional("RECORDING_S3_SSE_KMS_KEY_ID", _TOKEN_RE, _TOKEN_ALLOWED)
    if kms_key_id is not None and sse != "aws:kms":
        raise r.fail(
            "RECORDING_S3_SSE_KMS_KEY_ID",
            f"is set but RECORDING_S3_SSE is {sse!r}",
            "a KMS key id only with RECORDING_S3_SSE=aws:kms",
        )
    sse_c = r.parsed("RECORDING_S3_SSE_C_KEY", None, _sse_c_key, "32 random bytes, base64-encoded")
    if (sse == "SSE-C") != (sse_c is not None):
        culprit = "RECORDING_S3_SSE_C_KEY" if sse_c is not None else "RECORDING_S3_SSE"
        raise r.fail(
            culprit,
            f"does not match: RECORDING_S3_SSE={sse!r} with{'' if sse_c is not None else 'out'} a customer key",
            "RECORDING_S3_SSE=SSE-C together with RECORDING_S3_SSE_C_KEY, or neither",
        )
    endpoint = r.parsed(
        "RECORDING_S3_ENDPOINT",
        None,
        _endpoint_url,
        "an http:// or https:// URL with a host and optional port and no path, "
        "e.g. http://127.0.0.1:9000, or empty for AWS",
    )
    if sse == "SSE-C" and endpoint is not None and endpoint.startswith("http://"):
        raise r.fail(
            "RECORDING_S3_SSE",
            "is SSE-C over plain http: S3 refuses customer keys without TLS",
            "an https:// RECORDING_S3_ENDPOINT with SSE-C",
        )
    return S3Settings(
        bucket=r.optional("RECORDING_S3_BUCKET", _BUCKET_RE, _BUCKET_ALLOWED),
        prefix=r.parsed(
            "RECORDING_S3_PREFIX",
            "recordings/",
            _s3_prefix,
            "a key prefix not starting with '/' (a trailing '/' is added), or empty",
        ),
        region=r.optional("AWS_REGION", r"[A-Za-z0-9-]{1,64}", "a region name such as eu-west-1"),
        access_key_id=access_key_id,
        secret_access_key=None if secret_text is None else Secret(secret_text),
        endpoint=endpoint,
        sse=sse,
        sse_kms_key_id=kms_key_id,
        sse_customer_key=sse_c,
        part_size_mib=r.integer("RECORDING_S3_PART_SIZE_MIB", 8, 5, 5120),
        upload_mode=r.choice("RECORDING_S3_UPLOAD_MODE", "multipart", get_args(UploadMode)),
        upload_retry_s=r.number("RECORDING_UPLOAD_RETRY_S", 300.0, 0.0, 7 * 86_400.0),
        presign_expiry_s=r.integer("RECORDING_S3_PRESIGN_EXPIRY_S", 3600, 1, 7 * 86_400),
        presign_in_state=r.boolean("RECORDING_S3_PRESIGN_IN_STATE", False),
    )
