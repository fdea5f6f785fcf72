"""Settings: precedence, validation, secrets, and the documents generated from the declarations."""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import pickle
import re
import socket
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_recorder.config import (
    available_cpus,
    KNOWN_VARIABLES,
    REGENERATE_COMMAND,
    SETTINGS,
    Choice,
    Entry,
    Float,
    Int,
    IngestSettings,
    OutputSettings,
    OverlaySettings,
    S3Settings,
    Secret,
    Settings,
    load_settings,
    readme_table,
    render_markdown,
    render_toml,
)
from edge_recorder.config import main as config_main
from edge_recorder.errors import ConfigError

EXAMPLE_FILE = Path(__file__).resolve().parents[2] / "config" / "edge-recorder.toml"
README = Path(__file__).resolve().parents[2] / "README.md"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge-recorder.toml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- defaults


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})

    assert settings == Settings(
        recording_enabled=False,
        tmp_dir=tmp_path / "tmp" / "recordings",
        layout="pip",
        bind_ip="127.0.0.1",
        port_min=40000,
        port_max=40999,
        server_id=socket.gethostname(),
        max_sessions=4,
        cpu_budget=available_cpus(),
        output=OutputSettings(
            width_px=1280,
            height_px=720,
            fps=30,
            video_bitrate_kbps=2500,
            audio_bitrate_kbps=128,
            x264_preset="veryfast",
            keyframe_interval_s=2.0,
            x264_threads=1,
        ),
        overlay=OverlaySettings(width_pct=25, corner="bottom-right", margin_px=24),
        ingest=IngestSettings(
            playout_delay_ms=300,
            video_jitter_ms=150,
            audio_jitter_ms=60,
            keyframe_request_interval_ms=500,
            udp_receive_buffer_bytes=4194304,
            stream_queue_packets=512,
        ),
        s3=S3Settings(
            bucket=None,
            prefix="recordings/",
            region=None,
            access_key_id=None,
            secret_access_key=None,
            endpoint=None,
            sse="none",
            sse_kms_key_id=None,
        ),
        config_file=None,
    )
    assert settings.tmp_dir.is_absolute()


def test_settings_are_frozen() -> None:
    settings = load_settings(environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port_min = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.output.fps = 1  # type: ignore[misc]


def test_settings_pickle_round_trip() -> None:
    # Media workers run in other processes and receive the settings pickled.
    settings = load_settings(
        environ={"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": SECRET}
    )
    assert pickle.loads(pickle.dumps(settings)) == settings


# --------------------------------------------------------------------------- precedence


def test_file_overrides_defaults(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
        RECORDING_ENABLED = true
        RECORDING_PORT_MIN = 41000
        RECORDING_PORT_MAX = "41999"          # strings are accepted too
        RECORDING_KEYFRAME_INTERVAL_S = 1     # an int where a float is expected
        RECORDING_OVERLAY_CORNER = "top-left"
        RECORDING_TMP_DIR = "/var/tmp/rec"
        """,
    )
    settings = load_settings(environ={}, config_file=path)
    assert settings.recording_enabled is True
    assert (settings.port_min, settings.port_max) == (41000, 41999)
    assert settings.output.keyframe_interval_s == 1.0
    assert settings.overlay.corner == "top-left"
    assert settings.tmp_dir == Path("/var/tmp/rec")
    assert settings.config_file == path
    # Untouched keys keep their defaults.
    assert settings.output.fps == 30


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'RECORDING_PORT_MIN = 41000\nRECORDING_LAYOUT = "grid"\nRECORDING_S3_BUCKET = "from-file"\n',
    )
    settings = load_settings(
        environ={"RECORDING_PORT_MIN": "40500", "RECORDING_S3_BUCKET": ""},
        config_file=path,
    )
    assert settings.port_min == 40500
    assert settings.layout == "grid"  # only in the file
    assert settings.s3.bucket is None  # an empty variable clears an optional value


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "RECORDING_MAX_SESSIONS = 9\n")
    settings = load_settings(environ={"RECORDING_CONFIG_FILE": str(path)})
    assert settings.max_sessions == 9
    assert settings.config_file == path


def test_config_file_argument_beats_environment(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "RECORDING_MAX_SESSIONS = 9\n")
    settings = load_settings(
        environ={"RECORDING_CONFIG_FILE": str(tmp_path / "missing.toml")}, config_file=path
    )
    assert settings.max_sessions == 9


def test_relative_tmp_dir_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={"RECORDING_TMP_DIR": "spool/../rec"})
    assert settings.tmp_dir == tmp_path / "rec"
    assert not settings.tmp_dir.exists()  # loading creates nothing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("On", True),
        (" true ", True),
        ("false", False),
        ("0", False),
        ("No", False),
        ("off", False),
    ],
)
def test_boolean_spellings(text: str, expected: bool) -> None:
    assert load_settings(environ={"RECORDING_ENABLED": text}).recording_enabled is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("recordings", "recordings/"),
        ("recordings/", "recordings/"),
        ("a/b", "a/b/"),
        ("", ""),
    ],
)
def test_s3_prefix_gets_a_trailing_slash(text: str, expected: str) -> None:
    assert load_settings(environ={"RECORDING_S3_PREFIX": text}).s3.prefix == expected


@pytest.mark.parametrize(
    ("variable", "text", "attribute", "expected"),
    [
        ("RECORDING_S3_SSE", "aes256", ("s3", "sse"), "AES256"),
        ("RECORDING_S3_SSE", "AWS:KMS", ("s3", "sse"), "aws:kms"),
        ("RECORDING_LAYOUT", "GRID", ("layout",), "grid"),
        ("RECORDING_X264_PRESET", "Medium", ("output", "x264_preset"), "medium"),
        ("RECORDING_BIND_IP", "0:0::1", ("bind_ip",), "::1"),
        ("RECORDING_BIND_IP", "0.0.0.0", ("bind_ip",), "0.0.0.0"),
        ("RECORDING_S3_ENDPOINT", "http://127.0.0.1:9000/", ("s3", "endpoint"), "http://127.0.0.1:9000"),
        ("RECORDING_S3_ENDPOINT", "https://s3.example.com", ("s3", "endpoint"), "https://s3.example.com"),
        ("RECORDING_S3_ENDPOINT", "", ("s3", "endpoint"), None),
        ("RECORDING_X264_THREADS", "0", ("output", "x264_threads"), 0),
        ("RECORDING_KEYFRAME_INTERVAL_S", "0.5", ("output", "keyframe_interval_s"), 0.5),
    ],
)
def test_values_are_normalised(
    variable: str, text: str, attribute: tuple[str, ...], expected: object
) -> None:
    # Binding every interface needs the address the SFU is told (tested below).
    announced = {"RECORDING_ANNOUNCED_IP": "10.0.0.7"} if variable == "RECORDING_BIND_IP" else {}
    value: object = load_settings(environ={variable: text, **announced})
    for name in attribute:
        value = getattr(value, name)
    assert value == expected


def test_kms_key_with_kms_mode() -> None:
    s3 = load_settings(
        environ={"RECORDING_S3_SSE": "aws:kms", "RECORDING_S3_SSE_KMS_KEY_ID": "alias/rec"}
    ).s3
    assert (s3.sse, s3.sse_kms_key_id) == ("aws:kms", "alias/rec")


# --------------------------------------------------------------------------- invalid values

INVALID = [
    ("RECORDING_ENABLED", "maybe"),
    ("RECORDING_ENABLED", ""),
    ("RECORDING_TMP_DIR", ""),
    ("RECORDING_LAYOUT", "mosaic"),
    ("RECORDING_BIND_IP", "localhost"),
    ("RECORDING_BIND_IP", "256.0.0.1"),
    ("RECORDING_PORT_MIN", "80"),
    ("RECORDING_PORT_MIN", "forty"),
    ("RECORDING_PORT_MAX", "65536"),
    ("RECORDING_PORT_MAX", "4e4"),
    ("RECORDING_SERVER_ID", "has space"),
    ("RECORDING_SERVER_ID", ""),
    ("RECORDING_MAX_SESSIONS", "0"),
    ("RECORDING_MAX_SESSIONS", "1.5"),
    ("RECORDING_OUTPUT_WIDTH", "1281"),
    ("RECORDING_OUTPUT_WIDTH", "158"),
    ("RECORDING_OUTPUT_WIDTH", "3842"),
    ("RECORDING_OUTPUT_HEIGHT", "721"),
    ("RECORDING_OUTPUT_HEIGHT", "88"),
    ("RECORDING_OUTPUT_HEIGHT", "2162"),
    ("RECORDING_OUTPUT_FPS", "0"),
    ("RECORDING_OUTPUT_FPS", "61"),
    ("RECORDING_OUTPUT_FPS", "29.97"),
    ("RECORDING_VIDEO_BITRATE_KBPS", "-1"),
    ("RECORDING_VIDEO_BITRATE_KBPS", "2.5M"),
    ("RECORDING_AUDIO_BITRATE_KBPS", "0"),
    ("RECORDING_X264_PRESET", "turbo"),
    ("RECORDING_KEYFRAME_INTERVAL_S", "0"),
    ("RECORDING_KEYFRAME_INTERVAL_S", "nan"),
    ("RECORDING_KEYFRAME_INTERVAL_S", "inf"),
    ("RECORDING_KEYFRAME_INTERVAL_S", "two"),
    ("RECORDING_X264_THREADS", "-1"),
    ("RECORDING_OVERLAY_WIDTH_PCT", "4"),
    ("RECORDING_OVERLAY_WIDTH_PCT", "51"),
    ("RECORDING_OVERLAY_CORNER", "center"),
    ("RECORDING_OVERLAY_MARGIN_PX", "-2"),
    ("RECORDING_OVERLAY_MARGIN_PX", "400"),  # twice that does not fit in 720 px
    ("RECORDING_PLAYOUT_DELAY_MS", "-1"),
    ("RECORDING_PLAYOUT_DELAY_MS", "100"),  # below the default video jitter delay
    ("RECORDING_JITTER_VIDEO_MS", "301"),  # above the default playout delay
    ("RECORDING_JITTER_AUDIO_MS", "301"),
    ("RECORDING_JITTER_AUDIO_MS", "soon"),
    ("RECORDING_KEYFRAME_REQUEST_INTERVAL_MS", "0"),
    ("RECORDING_UDP_RCVBUF_BYTES", "1024"),
    ("RECORDING_UDP_RCVBUF_BYTES", "4M"),
    ("RECORDING_STREAM_QUEUE_PACKETS", "0"),
    ("RECORDING_S3_BUCKET", "My_Bucket"),
    ("RECORDING_S3_BUCKET", "ab"),
    ("RECORDING_S3_PREFIX", "/recordings/"),
    ("AWS_REGION", "eu west 1"),
    ("RECORDING_S3_ENDPOINT", "127.0.0.1:9000"),
    ("RECORDING_S3_ENDPOINT", "ftp://127.0.0.1:9000"),
    ("RECORDING_S3_ENDPOINT", "http://127.0.0.1:9000/bucket"),
    ("RECORDING_S3_ENDPOINT", "http://user:pw@127.0.0.1:9000"),
    ("RECORDING_S3_ENDPOINT", "http://127.0.0.1:99999"),
    ("RECORDING_S3_SSE", "SSE-C"),
    ("RECORDING_S3_SSE_KMS_KEY_ID", "alias/rec"),  # without RECORDING_S3_SSE=aws:kms
]


@pytest.mark.parametrize(("variable", "text"), INVALID)
def test_invalid_environment_value_names_variable_and_value(variable: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={variable: text})
    assert info.value.variable == variable
    message = str(info.value)
    assert message.startswith(f"{variable}: ")
    assert repr(text) in message
    assert "allowed:" in message


@pytest.mark.parametrize(("variable", "text"), INVALID)
def test_invalid_file_value_names_variable_and_file(
    tmp_path: Path, variable: str, text: str
) -> None:
    path = write_toml(tmp_path, f"{variable} = {json.dumps(text)}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(environ={}, config_file=path)
    assert info.value.variable == variable
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("variable", "toml_value"),
    [
        ("RECORDING_PORT_MIN", "40000.0"),  # a float where an integer belongs
        ("RECORDING_PORT_MIN", "true"),
        ("RECORDING_ENABLED", "1.0"),
        ("RECORDING_LAYOUT", "false"),
        ("RECORDING_KEYFRAME_INTERVAL_S", "true"),
        ("RECORDING_S3_BUCKET", "1970-01-01T00:00:00Z"),
    ],
)
def test_wrong_toml_type(tmp_path: Path, variable: str, toml_value: str) -> None:
    path = write_toml(tmp_path, f"{variable} = {toml_value}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(environ={}, config_file=path)
    assert info.value.variable == variable


def test_port_min_above_port_max_names_both() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"RECORDING_PORT_MIN": "41000", "RECORDING_PORT_MAX": "40000"})
    assert info.value.variable == "RECORDING_PORT_MIN"
    assert "RECORDING_PORT_MAX" in str(info.value)


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE"}, "AWS_SECRET_ACCESS_KEY"),
        ({"AWS_SECRET_ACCESS_KEY": SECRET}, "AWS_ACCESS_KEY_ID"),
    ],
)
def test_half_a_credential_pair_names_both(given: dict[str, str], missing: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ=given)
    assert info.value.variable == missing
    assert "AWS_ACCESS_KEY_ID" in str(info.value)
    assert "AWS_SECRET_ACCESS_KEY" in str(info.value)
    assert SECRET not in str(info.value)


def test_invalid_secret_is_not_shown() -> None:
    bad = "not a valid secret"
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": bad})
    assert info.value.variable == "AWS_SECRET_ACCESS_KEY"
    assert bad not in str(info.value)


# --------------------------------------------------------------------------- secrets


def test_secret_never_shown() -> None:
    settings = load_settings(
        environ={"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": SECRET}
    )
    secret = settings.s3.secret_access_key
    assert secret is not None
    assert secret.reveal() == SECRET
    for shown in (repr(settings), str(settings), repr(settings.s3), str(secret), f"{secret}"):
        assert SECRET not in shown
    description = settings.describe()
    assert SECRET not in json.dumps(description)
    assert description["s3"]["secret_access_key"] == "set"  # whether it is set, never what it is
    assert description["s3"]["session_token"] == "unset"
    assert description["s3"]["access_key_id"] == "AKIAEXAMPLE"


def test_secret_equality() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert repr(Secret("a")) == "Secret('***')"


def test_describe_is_json_and_complete() -> None:
    settings = load_settings(environ={})
    description = settings.describe()
    json.dumps(description)  # one structured log line
    assert description["output"]["width_px"] == 1280
    assert description["ingest"]["playout_delay_ms"] == 300
    assert description["tmp_dir"] == str(settings.tmp_dir)
    assert description["s3"]["secret_access_key"] == "unset"
    assert description["control"]["token"] == "unset"


# --------------------------------------------------------------------------- the file


def test_shipped_example_loads_to_the_defaults(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        from_file = load_settings(environ={}, config_file=EXAMPLE_FILE)
    assert caplog.records == []
    assert from_file.config_file == EXAMPLE_FILE
    assert dataclasses.replace(from_file, config_file=None) == load_settings(environ={})


def test_shipped_example_documents_every_key() -> None:
    text = EXAMPLE_FILE.read_text()
    for variable in KNOWN_VARIABLES:
        assert re.search(rf"^(# )?{variable} = ", text, re.MULTILINE), variable


def test_shipped_example_with_everything_uncommented_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The commented-out examples must be valid values too.
    text = re.sub(r"^# ([A-Z0-9_]+ = )", r"\1", EXAMPLE_FILE.read_text(), flags=re.MULTILINE)
    # The KMS key id example is only valid with SSE-KMS switched on, and the
    # SSE-C key only with SSE-C: one file cannot have both.
    text = text.replace('RECORDING_S3_SSE = "none"', 'RECORDING_S3_SSE = "aws:kms"')
    text = re.sub(r"^RECORDING_S3_SSE_C_KEY = .*$", "", text, flags=re.MULTILINE)
    path = write_toml(tmp_path, text)
    with caplog.at_level(logging.WARNING):
        settings = load_settings(environ={}, config_file=path)
    assert settings.s3.bucket == "my-recordings"
    assert settings.s3.endpoint == "http://127.0.0.1:9000"
    assert settings.s3.secret_access_key is not None
    assert [r.getMessage() for r in caplog.records] == [
        "RECORDING_FFMPEG_PATH no longer applies: edge-recorder encodes in-process with PyAV"
    ]


# --------------------------------------------------------------------------- unknown keys


def test_unknown_file_key_fails_with_suggestion(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "RECORDING_PORT_MINIMUM = 40000\n")
    with pytest.raises(ConfigError) as info:
        load_settings(environ={}, config_file=path)
    assert info.value.variable == "RECORDING_PORT_MINIMUM"
    assert "unknown key" in str(info.value)
    assert "RECORDING_PORT_MIN?" in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "[recording]\nENABLED = true\n",
        "RECORDING_PORT_MIN = [40000]\n",
        'RECORDING_CONFIG_FILE = "other.toml"\n',
        "RECORDING_PORT_MIN = \n",
    ],
)
def test_malformed_file_fails(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(environ={}, config_file=write_toml(tmp_path, text))


def test_missing_file_fails(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"RECORDING_CONFIG_FILE": str(tmp_path / "nope.toml")})
    assert info.value.variable == "RECORDING_CONFIG_FILE"
    assert "nope.toml" in str(info.value)


def test_unknown_recording_env_var_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edge_recorder.config"):
        settings = load_settings(
            environ={"RECORDING_PORTMIN": "1", "HOME": "/root", "AWS_PROFILE": "dev"}
        )
    assert settings.port_min == 40000
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "ignoring unknown environment variable RECORDING_PORTMIN (did you mean RECORDING_PORT_MIN?)"
    ]


def test_ffmpeg_path_is_accepted_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edge_recorder.config"):
        settings = load_settings(environ={"RECORDING_FFMPEG_PATH": "/usr/bin/ffmpeg"})
    assert settings == load_settings(environ={})
    assert [r.getMessage() for r in caplog.records] == [
        "RECORDING_FFMPEG_PATH no longer applies: edge-recorder encodes in-process with PyAV"
    ]


@pytest.mark.parametrize(
    "variable,value",
    [
        ("RECORDING_CONTROL_PORT", "70000"),
        ("RECORDING_CONTROL_HOST", "localhost"),
        ("RECORDING_CONTROL_PATH", "control"),
        ("RECORDING_CONTROL_TOKEN", "short"),
        ("RECORDING_CONTROL_DIAL_URL", "http://sfu.example.com/"),
        ("RECORDING_CONTROL_ALLOW_INSECURE", "maybe"),
        ("RECORDING_METRICS_PORT", "-1"),
        ("RECORDING_MEDIA_TIMEOUT_S", "-5"),
        ("RECORDING_DRAIN_TIMEOUT_S", "0"),
        ("RECORDING_MAX_DURATION_S", "forever"),
    ],
)
def test_control_and_lifecycle_values_are_checked(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={variable: value}, config_file=None)
    assert info.value.variable == variable


def test_control_token_is_a_secret() -> None:
    token = "s3cr3t-token-0123456789"
    settings = load_settings(environ={"RECORDING_CONTROL_TOKEN": token}, config_file=None)
    assert settings.control.token is not None and settings.control.token.reveal() == token
    assert token not in repr(settings) and token not in str(settings.describe())
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"RECORDING_CONTROL_TOKEN": "x y"}, config_file=None)
    assert "x y" not in str(info.value)


def test_storage_and_state_settings() -> None:
    import base64

    key = base64.b64encode(bytes(range(32))).decode()
    s = load_settings(
        environ={
            "RECORDING_S3_SSE": "SSE-C",
            "RECORDING_S3_SSE_C_KEY": key,
            "RECORDING_S3_ENDPOINT": "https://s3.example.com",
            "RECORDING_DATABASE_URL": "postgresql+psycopg://u:pw@db/rec",
            "RECORDING_REDIS_URL": "redis://:pw@127.0.0.1:6379/0",
            "RECORDING_WEBHOOK_URLS": "https://a.example/hook, http://b.example/x",
            "RECORDING_WEBHOOK_SECRET": "0123456789abcdef0123",
        },
        config_file=None,
    )
    assert s.s3.sse_customer_key is not None and s.s3.sse_customer_key.reveal() == key
    assert s.state.webhook_urls == ("https://a.example/hook", "http://b.example/x")
    for secret in (key, "u:pw", ":pw@", "0123456789abcdef0123"):
        assert secret not in repr(s) and secret not in str(s.describe())


@pytest.mark.parametrize(
    "env,variable",
    [
        ({"RECORDING_S3_SSE": "SSE-C"}, "RECORDING_S3_SSE"),
        ({"RECORDING_S3_SSE_C_KEY": "AAAA"}, "RECORDING_S3_SSE_C_KEY"),
        ({"RECORDING_S3_SSE": "SSE-C", "RECORDING_S3_SSE_C_KEY": "c2hvcnQ="}, "RECORDING_S3_SSE_C_KEY"),
        ({"RECORDING_S3_PART_SIZE_MIB": "4"}, "RECORDING_S3_PART_SIZE_MIB"),
        ({"RECORDING_S3_PRESIGN_EXPIRY_S": "700000"}, "RECORDING_S3_PRESIGN_EXPIRY_S"),
        ({"RECORDING_REDIS_URL": "http://x"}, "RECORDING_REDIS_URL"),
        ({"RECORDING_WEBHOOK_URLS": "ftp://x"}, "RECORDING_WEBHOOK_URLS"),
        ({"RECORDING_HEARTBEAT_INTERVAL_S": "10", "RECORDING_LEASE_TTL_S": "15"}, "RECORDING_HEARTBEAT_INTERVAL_S"),
    ],
)
def test_invalid_storage_combinations_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ=env, config_file=None)
    assert info.value.variable == variable


# --------------------------------------------------------------------------- hostile-input bounds (issue #9)


def test_hostile_input_bounds_parse_and_validate() -> None:
    import ipaddress

    settings = load_settings(
        environ={
            "RECORDING_SERVER_ID": "n",
            "RECORDING_RTP_SOURCE_NETWORKS": "10.0.0.7/24, fd00::/64",
            "RECORDING_RTP_MAX_DATAGRAM_BYTES": "9000",
            "RECORDING_CONTROL_MAX_CONNECTIONS": "8",
            "RECORDING_CONTROL_MAX_CONNECTIONS_PER_IP": "8",
            "RECORDING_MIN_FREE_DISK_MIB": "0",
        },
        config_file=None,
    )
    assert settings.ingest.source_networks == (ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::/64"))
    assert settings.ingest.max_datagram_bytes == 9000 and settings.lifecycle.min_free_disk_mib == 0
    assert load_settings(environ={"RECORDING_SERVER_ID": "n"}, config_file=None).ingest.source_networks == ()
    for name, value in (
        ("RECORDING_RTP_SOURCE_NETWORKS", "10.0.0.0/33"),
        ("RECORDING_RTP_MAX_DATAGRAM_BYTES", "100"),
        ("RECORDING_MAX_FRAME_BYTES", str(16 * 1024 * 1024)),
        ("RECORDING_CONTROL_HANDSHAKE_TIMEOUT_S", "0"),
    ):
        with pytest.raises(ConfigError, match=name):
            load_settings(environ={"RECORDING_SERVER_ID": "n", name: value}, config_file=None)
    with pytest.raises(ConfigError, match="RECORDING_CONTROL_MAX_CONNECTIONS_PER_IP"):
        load_settings(
            environ={"RECORDING_SERVER_ID": "n", "RECORDING_CONTROL_MAX_CONNECTIONS": "4", "RECORDING_CONTROL_MAX_CONNECTIONS_PER_IP": "5"},
            config_file=None,
        )


# --------------------------------------------------------------------------- declared once (issue #10)


def _drift(committed: str, generated: str, name: str) -> str | None:
    """None when ``committed`` is the generated text, else a diff and how to regenerate."""
    if committed == generated:
        return None
    diff = "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            generated.splitlines(keepends=True),
            f"{name} (committed)",
            f"{name} (generated from edge_recorder/config.py)",
        )
    )
    return f"{name} differs from the settings declarations; regenerate with `{REGENERATE_COMMAND}`\n{diff}"


def test_committed_toml_is_the_generated_one() -> None:
    drift = _drift(EXAMPLE_FILE.read_text(), render_toml(), "config/edge-recorder.toml")
    if drift is not None:
        pytest.fail(drift, pytrace=False)


def test_readme_settings_table_is_the_generated_one() -> None:
    drift = _drift(readme_table(README.read_text()), render_markdown(), "README.md settings table")
    if drift is not None:
        pytest.fail(drift, pytrace=False)


def test_drift_check_can_fail() -> None:
    # The two checks above compare text: an edited copy must show up as a diff.
    edited = render_toml().replace("RECORDING_MAX_SESSIONS = 4", "RECORDING_MAX_SESSIONS = 5")
    drift = _drift(edited, render_toml(), "config/edge-recorder.toml")
    assert drift is not None
    assert "-RECORDING_MAX_SESSIONS = 5" in drift and "+RECORDING_MAX_SESSIONS = 4" in drift
    assert REGENERATE_COMMAND in drift
    table = render_markdown()
    assert _drift(table.replace("`4`", "`5`"), table, "README") is not None
    with pytest.raises(ValueError, match="markers"):
        readme_table("no markers here")


def test_generator_command_prints_the_documents(capsys: pytest.CaptureFixture[str]) -> None:
    assert config_main(["--toml"]) == 0
    assert capsys.readouterr().out == render_toml()
    assert config_main(["--markdown"]) == 0
    assert capsys.readouterr().out == render_markdown()


def test_every_setting_is_declared_once_with_a_doc() -> None:
    names = [entry.env for entry in SETTINGS]
    assert len(names) == len(set(names))
    assert set(KNOWN_VARIABLES) == {*names, "RECORDING_FFMPEG_PATH"}
    table = render_markdown()
    for entry in SETTINGS:
        declared = entry.declared
        assert declared.doc and "\n" not in declared.doc, entry.env
        assert f"| `{entry.env}` |" in table, entry.env
        # The attribute path reaches a field of Settings of the declared default.
        value: object = Settings()
        for name in entry.path:
            value = getattr(value, name)
        assert value == declared.default, entry.env


def test_every_default_and_example_reads_back() -> None:
    # What the generated documents show must be what the loader accepts.
    for entry in SETTINGS:
        kind, default = entry.declared.kind, entry.declared.default
        if entry.declared.example is None and not isinstance(default, Path):  # written as a literal
            assert kind.read(tomllib.loads(f"x = {kind.toml(default)}")["x"]) == default, entry.env
        if entry.declared.example is not None:
            kind.read(entry.declared.example)  # raises if the example is invalid


def test_all_invalid_settings_are_reported_at_once(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'RECORDING_LAYOUT = "mosaic"\nRECORDING_PORT_MINIMUM = 40000\nRECORDING_OUTPUT_FPS = 61\n',
    )
    with pytest.raises(ConfigError) as info:
        load_settings(
            environ={
                "RECORDING_MAX_SESSIONS": "0",
                "RECORDING_BIND_IP": "localhost",
                "RECORDING_HEARTBEAT_INTERVAL_S": "10",  # a rule: more than half the 15 s lease
                "AWS_SECRET_ACCESS_KEY": "not a valid secret",
                "RECORDING_SERVER_ID": "n",
            },
            config_file=path,
        )
    lines = str(info.value).splitlines()
    expected = {
        "RECORDING_LAYOUT": ("'mosaic'", "pip | grid"),
        "RECORDING_PORT_MINIMUM": ("unknown key", "RECORDING_PORT_MIN?"),
        "RECORDING_OUTPUT_FPS": ("61", "an integer 1..60"),
        "RECORDING_MAX_SESSIONS": ("'0'", "an integer 1..256"),
        "RECORDING_BIND_IP": ("'localhost'", "an IPv4 or IPv6 address literal"),
        "RECORDING_HEARTBEAT_INTERVAL_S": ("'10'", "at most half of RECORDING_LEASE_TTL_S"),
        "AWS_SECRET_ACCESS_KEY": ("the value", "1..256 characters without spaces"),
    }
    assert len(lines) == len(expected), lines
    for variable, (value, allowed) in expected.items():
        (line,) = [line for line in lines if line.startswith(f"{variable}: ")]
        assert value in line and allowed in line, line
    assert "not a valid secret" not in str(info.value)
    assert info.value.variable == lines[0].split(":")[0]
    assert str(info.value).startswith(f"{info.value.variable}: ")


def test_rules_are_skipped_when_their_settings_are_invalid() -> None:
    # An invalid port is reported once, not again as an empty range.
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"RECORDING_PORT_MIN": "80", "RECORDING_PORT_MAX": "1000"})
    lines = str(info.value).splitlines()
    assert [line.split(":")[0] for line in lines] == ["RECORDING_PORT_MIN", "RECORDING_PORT_MAX"]
    assert not any("empty range" in line for line in lines)


# Every variable of the runbook of the recorder we replace
# (server-side-recording-runbook.md, "Environment Variables"), with its
# default where it gives one. RECORDING_FFMPEG_PATH is accepted and ignored:
# a deliberate difference, declared in config.RETIRED.
_NO_DEFAULT = object()  # the runbook gives none
# variable: (a value, the attribute it sets, what it becomes, the runbook's default)
RUNBOOK_VARIABLES: dict[str, tuple[str, tuple[str, ...], object, object]] = {
    "RECORDING_ENABLED": ("true", ("recording_enabled",), True, False),
    "RECORDING_TMP_DIR": ("/var/rec", ("tmp_dir",), Path("/var/rec"), "./tmp/recordings"),
    "RECORDING_LAYOUT": ("grid", ("layout",), "grid", _NO_DEFAULT),
    "RECORDING_BIND_IP": ("0.0.0.0", ("bind_ip",), "0.0.0.0", "127.0.0.1"),
    "RECORDING_PORT_MIN": ("40100", ("port_min",), 40100, _NO_DEFAULT),
    "RECORDING_PORT_MAX": ("40900", ("port_max",), 40900, _NO_DEFAULT),
    "AWS_REGION": ("eu-west-1", ("s3", "region"), "eu-west-1", _NO_DEFAULT),
    "RECORDING_S3_BUCKET": ("my-recordings", ("s3", "bucket"), "my-recordings", _NO_DEFAULT),
    "RECORDING_S3_PREFIX": ("rec", ("s3", "prefix"), "rec/", "recordings/"),  # trailing slash enforced
    "RECORDING_S3_SSE": ("AES256", ("s3", "sse"), "AES256", _NO_DEFAULT),
}


@pytest.mark.parametrize("variable", [*RUNBOOK_VARIABLES, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RECORDING_FFMPEG_PATH"])
def test_runbook_variables_are_known(variable: str) -> None:
    assert variable in KNOWN_VARIABLES


@pytest.mark.parametrize(("variable", "case"), RUNBOOK_VARIABLES.items())
def test_runbook_variables_are_accepted_with_the_runbook_defaults(
    variable: str, case: tuple[str, tuple[str, ...], object, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    text, path, expected, runbook_default = case
    announced = {"RECORDING_ANNOUNCED_IP": "10.0.0.7"} if variable == "RECORDING_BIND_IP" else {}
    given: object = load_settings(environ={variable: text, **announced})
    default: object = load_settings(environ={})
    for name in path:
        given, default = getattr(given, name), getattr(default, name)
    assert given == expected
    if runbook_default is not _NO_DEFAULT:
        if variable == "RECORDING_TMP_DIR":  # made absolute from the working directory
            assert default == tmp_path / "tmp" / "recordings"
        else:
            assert default == runbook_default


def test_runbook_credentials_are_accepted_in_pairs() -> None:
    s3 = load_settings(environ={"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": SECRET}).s3
    assert s3.access_key_id == "AKIAEXAMPLE"
    assert s3.secret_access_key == Secret(SECRET)


def test_every_sse_mode_the_sink_applies_is_accepted_and_documented() -> None:
    import base64

    key = base64.b64encode(bytes(32)).decode()
    for mode, extra in (
        ("none", {}),
        ("AES256", {}),
        ("aws:kms", {}),
        ("SSE-C", {"RECORDING_S3_SSE_C_KEY": key, "RECORDING_S3_ENDPOINT": "https://s3.example.com"}),
    ):
        assert load_settings(environ={"RECORDING_S3_SSE": mode, **extra}).s3.sse == mode
        (row,) = [r for r in render_markdown().splitlines() if r.startswith("| `RECORDING_S3_SSE` |")]
        assert mode in row
    toml_lines = render_toml().split("RECORDING_S3_SSE = ")[0].rsplit("\n\n", 1)[1]
    assert "SSE-C" in toml_lines and "SSE-KMS" in toml_lines


def test_stream_queue_description_says_what_it_bounds() -> None:
    # session.py sizes the session -> media worker pipe with it, in frames.
    (entry,) = [e for e in SETTINGS if e.env == "RECORDING_STREAM_QUEUE_PACKETS"]
    assert entry.path == ("ingest", "stream_queue_packets")
    text = f"{entry.declared.doc} {entry.declared.notes}"
    assert "media worker" in text and "frames" in text and "per session" in text


@given(st.data())
def test_numbers_round_trip_through_their_written_form(data: st.DataObject) -> None:
    # parse(write(x)) == x for every declared integer and number setting, from
    # the environment (text) and from TOML (a literal); one step past either
    # end of the range is refused.
    entry = data.draw(st.sampled_from([e for e in SETTINGS if isinstance(e.declared.kind, (Int, Float))]))
    kind = entry.declared.kind
    assert isinstance(kind, (Int, Float))
    if isinstance(kind, Int):
        value: float = data.draw(st.integers(kind.lo, kind.hi).filter(lambda v: not (kind.even and v % 2)))
        outside: float = data.draw(st.sampled_from([kind.lo - 1, kind.hi + 1]))
    else:
        value = data.draw(st.floats(kind.lo, kind.hi, allow_nan=False))
        outside = data.draw(st.sampled_from([math.nextafter(kind.lo, -math.inf), math.nextafter(kind.hi, math.inf)]))
    assert kind.read(kind.text(value)) == value  # type: ignore[arg-type]
    assert kind.read(tomllib.loads(f"x = {kind.toml(value)}")["x"]) == value  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=entry.env):
        load_settings(environ={entry.env: kind.text(outside), "RECORDING_SERVER_ID": "n"})  # type: ignore[arg-type]


@given(st.sampled_from([e for e in SETTINGS if isinstance(e.declared.kind, Choice)]), st.data())
def test_choices_match_in_any_case(entry: Entry, data: st.DataObject) -> None:
    kind = entry.declared.kind
    assert isinstance(kind, Choice)
    choice = data.draw(st.sampled_from(kind.choices))
    spelled = "".join(c.upper() if data.draw(st.booleans()) else c.lower() for c in choice)
    assert kind.read(f" {spelled} ") == choice


def test_the_command_line_prints_every_invalid_setting_and_exits_2(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECORDING_", "AWS_"))}
    env.update({"RECORDING_OUTPUT_FPS": "0", "RECORDING_LAYOUT": "mosaic", "RECORDING_CONTROL_TOKEN": "x y"})
    result = subprocess.run(
        [sys.executable, "-m", "edge_recorder", "serve"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("edge-recorder: invalid configuration: RECORDING_")
    named = sorted(line.removeprefix("edge-recorder: invalid configuration: ").split(":")[0] for line in lines)
    assert named == ["RECORDING_CONTROL_TOKEN", "RECORDING_LAYOUT", "RECORDING_OUTPUT_FPS"]
    assert "x y" not in result.stderr


_SSE_C_KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
# For every setting that declares a rule against others: an environment that breaks it.
RULE_BREAKERS: dict[str, dict[str, str]] = {
    "AWS_SESSION_TOKEN": {"AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLE"},
    "RECORDING_OVERLAY_MARGIN_PX": {"RECORDING_OVERLAY_MARGIN_PX": "400"},
    "RECORDING_PLAYOUT_DELAY_MS": {"RECORDING_PLAYOUT_DELAY_MS": "100"},
    "RECORDING_JITTER_VIDEO_MS": {"RECORDING_JITTER_VIDEO_MS": "301"},
    "RECORDING_JITTER_AUDIO_MS": {"RECORDING_JITTER_AUDIO_MS": "301"},
    "RECORDING_PORT_MIN": {"RECORDING_PORT_MIN": "41000"},
    "RECORDING_PORT_MAX": {"RECORDING_PORT_MAX": "39000"},
    "RECORDING_ANNOUNCED_IP": {"RECORDING_BIND_IP": "0.0.0.0"},
    "RECORDING_HEARTBEAT_INTERVAL_S": {"RECORDING_HEARTBEAT_INTERVAL_S": "10"},
    "RECORDING_CONTROL_MAX_CONNECTIONS_PER_IP": {"RECORDING_CONTROL_MAX_CONNECTIONS_PER_IP": "65"},
    "RECORDING_S3_SSE_KMS_KEY_ID": {"RECORDING_S3_SSE_KMS_KEY_ID": "alias/rec"},
    "RECORDING_S3_SSE_C_KEY": {"RECORDING_S3_SSE_C_KEY": _SSE_C_KEY},
    "RECORDING_S3_SSE": {"RECORDING_S3_SSE": "SSE-C", "RECORDING_S3_SSE_C_KEY": _SSE_C_KEY, "RECORDING_S3_ENDPOINT": "http://127.0.0.1:9000"},
    "AWS_ACCESS_KEY_ID": {"AWS_SECRET_ACCESS_KEY": SECRET},
    "AWS_SECRET_ACCESS_KEY": {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE"},
}


def test_every_declared_rule_has_a_breaking_case() -> None:
    assert {e.env for e in SETTINGS if e.declared.rule} == set(RULE_BREAKERS)


@pytest.mark.parametrize(("variable", "env"), RULE_BREAKERS.items())
def test_declared_rules_are_enforced(variable: str, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"RECORDING_SERVER_ID": "n", **env})
    assert info.value.variable == variable
    (entry,) = [e for e in SETTINGS if e.env == variable]
    if variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # the pair's own words: which one is missing
        assert "or neither" in str(info.value)
    else:
        assert entry.declared.rule in str(info.value)  # the documented rule is the message's


@pytest.mark.parametrize("bind", ["0.0.0.0", "::"])
def test_binding_every_interface_without_an_announced_address_is_refused_naming_both(bind: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"RECORDING_BIND_IP": bind})
    assert info.value.variable == "RECORDING_ANNOUNCED_IP"
    assert "RECORDING_BIND_IP" in str(info.value) and bind in str(info.value)


@pytest.mark.parametrize("announced", ["0.0.0.0", "::"])
def test_an_announced_address_of_every_interface_is_refused(announced: str) -> None:
    with pytest.raises(ConfigError, match="RECORDING_ANNOUNCED_IP"):
        load_settings(environ={"RECORDING_BIND_IP": "0.0.0.0", "RECORDING_ANNOUNCED_IP": announced})


def test_the_sfu_is_told_the_announced_address_else_the_bind_address() -> None:
    assert load_settings(environ={"RECORDING_BIND_IP": "0.0.0.0", "RECORDING_ANNOUNCED_IP": "10.0.0.7"}).rtp_address == "10.0.0.7"
    assert load_settings(environ={"RECORDING_BIND_IP": "10.0.0.8"}).rtp_address == "10.0.0.8"
    assert load_settings(environ={"RECORDING_ANNOUNCED_IP": ""}).announced_ip is None


def test_the_cpu_budget_defaults_to_the_cpus_this_process_may_use() -> None:
    assert load_settings(environ={}).cpu_budget == available_cpus() > 0
    assert load_settings(environ={"RECORDING_CPU_BUDGET": "1.5"}).cpu_budget == 1.5


def test_log_level_and_format_are_choices() -> None:
    settings = load_settings(environ={"RECORDING_LOG_LEVEL": "WARNING", "RECORDING_LOG_FORMAT": "Text"})
    assert (settings.log_level, settings.log_format) == ("warning", "text")
    assert (load_settings(environ={}).log_level, load_settings(environ={}).log_format) == ("info", "auto")
    with pytest.raises(ConfigError, match="RECORDING_LOG_FORMAT"):
        load_settings(environ={"RECORDING_LOG_FORMAT": "xml"})


def test_temporary_credentials_need_the_key_pair(tmp_path: Path) -> None:
    pair = {"AWS_ACCESS_KEY_ID": "ASIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": SECRET}
    s3 = load_settings(environ={**pair, "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLE"}).s3
    assert s3.session_token == Secret("FwoGZXIvYXdzEXAMPLE")
    with pytest.raises(ConfigError, match="AWS_SESSION_TOKEN"):
        load_settings(environ={"AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLE"})


def test_the_ca_bundle_must_be_a_file_and_wins_over_ssl_cert_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_recorder.sink.s3 import ca_bundle

    pem = tmp_path / "internal-ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    other = tmp_path / "other.pem"
    other.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="RECORDING_S3_CA_BUNDLE"):
        load_settings(environ={"RECORDING_S3_CA_BUNDLE": str(tmp_path / "missing.pem")})
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    assert ca_bundle(load_settings(environ={"RECORDING_S3_CA_BUNDLE": str(pem)}).s3) == str(pem)
    assert ca_bundle(load_settings(environ={}).s3) == str(other)
    monkeypatch.delenv("SSL_CERT_FILE")
    import certifi

    assert ca_bundle(load_settings(environ={}).s3) == certifi.where()
