"""Start-up warnings for settings that work but expose something (issue #9)."""

from __future__ import annotations

import dataclasses
import logging
from functools import partial
from typing import Any

import pytest
import trio

from edge_recorder.config import Secret, Settings
from edge_recorder.service import log_startup_warnings, serve

SECRET = Secret("webhook-secret-0123456789abcdef")
TOKEN = Secret("control-token-0123456789abcdef")


def _with(settings: Settings, *, urls: tuple[str, ...] = (), secret: Secret | None = None, **control: Any) -> Settings:
    return dataclasses.replace(
        settings,
        state=dataclasses.replace(settings.state, webhook_urls=urls, webhook_secret=secret),
        control=dataclasses.replace(settings.control, **control),
    )


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "edge_recorder.service"]


def test_unsigned_webhooks_are_warned_about(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        log_startup_warnings(_with(settings, urls=("https://hooks.example.com/rec",)))
    [text] = _warnings(caplog)
    assert "RECORDING_WEBHOOK_SECRET is unset" in text and "unsigned" in text


@pytest.mark.parametrize("url", ["http://hooks.example.com/rec", "http://198.18.0.9:8080/rec"])
def test_plain_http_webhooks_to_the_network_are_warned_about(url: str, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        log_startup_warnings(_with(settings, urls=(url,), secret=SECRET))
    [text] = _warnings(caplog)
    assert "plain http" in text and "https://" in text


def test_signed_https_or_loopback_webhooks_are_quiet(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    urls = ("https://hooks.example.com/rec", "http://127.0.0.1:9000/rec", "http://localhost/rec", "http://[::1]/rec")
    with caplog.at_level(logging.WARNING):
        assert log_startup_warnings(_with(settings, urls=urls, secret=SECRET)) == []
    assert _warnings(caplog) == []


def test_a_token_over_plain_ws_to_the_network_is_warned_about(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        log_startup_warnings(_with(settings, token=TOKEN, dial_url="ws://sfu.example.com:4443/recorder"))
    [text] = _warnings(caplog)
    assert "RECORDING_CONTROL_DIAL_URL" in text and "RECORDING_CONTROL_TOKEN" in text and "wss://" in text
    assert TOKEN.reveal() not in caplog.text


@pytest.mark.parametrize(
    ("url", "token"),
    [
        ("wss://sfu.example.com/recorder", TOKEN),
        ("ws://127.0.0.1:4443/recorder", TOKEN),
        ("ws://localhost:4443/recorder", TOKEN),
        ("ws://sfu.example.com/recorder", None),  # nothing secret to leak
    ],
)
def test_safe_dial_urls_are_quiet(url: str, token: Secret | None, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert log_startup_warnings(_with(settings, token=token, dial_url=url)) == []


async def test_the_service_warns_at_start_up(settings: Settings, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    # An unroutable benchmarking address: no delivery is attempted (nothing
    # records), and none could reach anything.
    svc = _with(settings, urls=("http://198.18.0.9/rec",), port=0, metrics_port=0)
    shutdown = trio.Event()
    with caplog.at_level(logging.WARNING):
        await nursery.start(partial(serve, svc, shutdown=shutdown))
        shutdown.set()
    texts = _warnings(caplog)
    assert any("RECORDING_WEBHOOK_SECRET is unset" in t for t in texts), texts
    assert any("plain http" in t for t in texts), texts
