"""The router's pure rules: which refusals of a chosen node are worth another node, and remote connection names."""

from __future__ import annotations

import pytest

from edge_recorder.control.protocol import ErrorCode
from edge_recorder.errors import (
    AtCapacityError,
    EdgeRecorderError,
    InsufficientStorageError,
    JsonRpcError,
    NodeUnavailableError,
    PortsExhaustedError,
    RecordingDisabledError,
    RoomAlreadyRecordingError,
    ShuttingDownError,
    UnknownSessionError,
)
from edge_recorder.fleet.router import remote_connection, worth_another_node


@pytest.mark.parametrize(
    "refusal",
    [
        AtCapacityError(1, 1),
        ShuttingDownError("draining"),
        InsufficientStorageError("disk"),
        PortsExhaustedError("ports"),
        RecordingDisabledError("off"),
        NodeUnavailableError("n2", "silent"),
        JsonRpcError(int(ErrorCode.AT_CAPACITY), "at capacity"),  # the owner's error, forwarded
        JsonRpcError(int(ErrorCode.RATE_LIMITED), "the owning node is busy"),
        JsonRpcError(int(ErrorCode.NODE_UNAVAILABLE), "relayed silence"),
    ],
)
def test_a_node_s_own_state_is_worth_another_node(refusal: EdgeRecorderError) -> None:
    assert worth_another_node(refusal)


@pytest.mark.parametrize(
    "refusal",
    [
        RoomAlreadyRecordingError("room", "other"),
        UnknownSessionError("nope"),
        JsonRpcError(int(ErrorCode.INVALID_PARAMS), "bad output.width", {"field": "output.width"}),
        JsonRpcError(int(ErrorCode.ROOM_ALREADY_RECORDING), "taken", {"sessionId": "x"}),
        JsonRpcError(int(ErrorCode.INTERNAL_ERROR), "internal error"),
    ],
)
def test_a_bad_request_fails_everywhere_and_is_not_retried(refusal: EdgeRecorderError) -> None:
    assert not worth_another_node(refusal)


def test_a_remote_connection_is_named_by_its_node() -> None:
    assert remote_connection("fleet-1", "c3") == "fleet-1/c3"
