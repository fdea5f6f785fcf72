"""Tests for edge_recorder.rtp.parameters: mediasoup rtpParameters and our capabilities."""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_recorder.errors import RtpParametersError
from edge_recorder.rtp.parameters import (
    RtcpFeedback,
    RtcpParameters,
    RtpCodecParameters,
    RtpEncodingParameters,
    RtpHeaderExtensionParameters,
    RtpParameters,
    recorder_rtp_capabilities,
)

# consumer.rtpParameters as mediasoup v3 returns them for a VP8 producer consumed
# with our capabilities plus video/rtx (PTs are the router's, SSRCs random).
VIDEO_CONSUMER: dict[str, Any] = {
    "codecs": [
        {
            "mimeType": "video/VP8",
            "payloadType": 101,
            "clockRate": 90000,
            "parameters": {},
            "rtcpFeedback": [
                {"type": "nack", "parameter": ""},
                {"type": "nack", "parameter": "pli"},
                {"type": "ccm", "parameter": "fir"},
            ],
        },
        {
            "mimeType": "video/rtx",
            "payloadType": 102,
            "clockRate": 90000,
            "parameters": {"apt": 101},
            "rtcpFeedback": [],
        },
    ],
    "headerExtensions": [
        {"uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "id": 1, "encrypt": False, "parameters": {}},
        {
            "uri": "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time",
            "id": 13,
            "encrypt": False,
            "parameters": {},
        },
    ],
    "encodings": [{"ssrc": 876543210, "rtx": {"ssrc": 123456789}, "scalabilityMode": "L1T3"}],
    "rtcp": {"cname": "Ff2LZ9zOqJdOKDdQ", "reducedSize": True, "mux": True},
    "mid": "1",
}

AUDIO_CONSUMER: dict[str, Any] = {
    "codecs": [
        {
            "mimeType": "audio/opus",
            "payloadType": 100,
            "clockRate": 48000,
            "channels": 2,
            "parameters": {"minptime": 10, "useinbandfec": 1, "sprop-stereo": 1},
            "rtcpFeedback": [{"type": "nack", "parameter": ""}],
        }
    ],
    "headerExtensions": [
        {"uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "id": 1, "encrypt": False, "parameters": {}},
        {
            "uri": "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "id": 10,
            "encrypt": False,
            "parameters": {},
        },
    ],
    "encodings": [{"ssrc": 4000000000, "dtx": False}],
    "rtcp": {"cname": "Ff2LZ9zOqJdOKDdQ", "reducedSize": True, "mux": True},
    "mid": "0",
}


# ----------------------------------------------------------------- conveniences


def test_video_consumer() -> None:
    params = RtpParameters.from_mediasoup(VIDEO_CONSUMER)
    assert params.media_codec == RtpCodecParameters(
        "video/VP8",
        101,
        90000,
        None,
        {},
        (RtcpFeedback("nack"), RtcpFeedback("nack", "pli"), RtcpFeedback("ccm", "fir")),
    )
    assert params.rtx_payload_type == 102
    assert params.ssrc == 876543210
    assert params.rtx_ssrc == 123456789
    assert params.extension_id("urn:ietf:params:rtp-hdrext:sdes:mid") == 1
    assert params.extension_id("urn:ietf:params:rtp-hdrext:ssrc-audio-level") is None
    assert params.has_feedback("nack")
    assert params.has_feedback("nack", "pli")
    assert params.has_feedback("ccm", "fir")
    assert not params.has_feedback("transport-cc")
    assert params.rtcp == RtcpParameters("Ff2LZ9zOqJdOKDdQ", True, True)
    assert params.mid == "1"
    assert params.encodings[0].scalability_mode == "L1T3"


def test_audio_consumer() -> None:
    params = RtpParameters.from_mediasoup(AUDIO_CONSUMER)
    assert params.media_codec.mime_type == "audio/opus"
    assert params.media_codec.channels == 2
    assert params.media_codec.parameters == {"minptime": 10, "useinbandfec": 1, "sprop-stereo": 1}
    assert params.rtx_payload_type is None
    assert params.rtx_ssrc is None
    assert params.ssrc == 4000000000
    assert params.extension_id("urn:ietf:params:rtp-hdrext:ssrc-audio-level") == 10
    assert params.encodings[0].dtx is False


def test_rtx_first_in_the_list_is_skipped_for_media_codec() -> None:
    obj = copy.deepcopy(VIDEO_CONSUMER)
    obj["codecs"].reverse()
    params = RtpParameters.from_mediasoup(obj)
    assert params.media_codec.payload_type == 101
    assert params.rtx_payload_type == 102


def test_rtx_for_another_codec_is_not_ours() -> None:
    obj = copy.deepcopy(VIDEO_CONSUMER)
    obj["codecs"][1]["parameters"]["apt"] = 99
    assert RtpParameters.from_mediasoup(obj).rtx_payload_type is None


def test_minimal_parameters_get_defaults() -> None:
    params = RtpParameters.from_mediasoup(
        {"codecs": [{"mimeType": "video/H264", "payloadType": 96, "clockRate": 90000}]}
    )
    assert params.header_extensions == ()
    assert params.encodings == ()
    assert params.rtcp == RtcpParameters()
    assert params.mid is None
    assert params.ssrc is None
    assert params.rtx_ssrc is None
    assert params.media_codec.rtcp_feedback == ()


def test_feedback_without_parameter_and_null_fields_normalise() -> None:
    params = RtpParameters.from_mediasoup(
        {
            "codecs": [
                {
                    "mimeType": "video/VP8",
                    "payloadType": 96,
                    "clockRate": 90000,
                    "parameters": None,
                    "rtcpFeedback": [{"type": "nack"}, {"type": "nack", "parameter": None}],
                }
            ],
            "headerExtensions": None,
            "rtcp": None,
            "mid": None,
        }
    )
    assert params.media_codec.rtcp_feedback == (RtcpFeedback("nack"), RtcpFeedback("nack"))


def test_media_codec_of_a_hand_built_object_without_one() -> None:
    params = RtpParameters(
        codecs=(RtpCodecParameters("video/rtx", 97, 90000, parameters={"apt": 96}),)
    )
    with pytest.raises(ValueError, match="no media codec"):
        _ = params.media_codec


# ------------------------------------------------------------------ round trip


@pytest.mark.parametrize("obj", [VIDEO_CONSUMER, AUDIO_CONSUMER], ids=["video", "audio"])
def test_to_mediasoup_round_trips_mediasoup_output(obj: dict[str, Any]) -> None:
    params = RtpParameters.from_mediasoup(obj)
    assert params.to_mediasoup() == obj
    assert json.loads(json.dumps(params.to_mediasoup())) == obj
    assert RtpParameters.from_mediasoup(params.to_mediasoup()) == params


# ---------------------------------------------------------------- validation


def _with(obj: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """A deep copy of ``obj`` with ``path`` set to ``value`` (``...`` deletes)."""
    result = copy.deepcopy(obj)
    target: Any = result
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return result


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("codecs",), ..., "codecs"),
        (("codecs",), {}, "codecs"),
        (("codecs",), [], "codecs"),
        (("codecs", 0), "VP8", "codecs[0]"),
        (("codecs", 0, "mimeType"), ..., "codecs[0].mimeType"),
        (("codecs", 0, "mimeType"), "VP8", "codecs[0].mimeType"),
        (("codecs", 0, "mimeType"), "text/plain", "codecs[0].mimeType"),
        (("codecs", 0, "payloadType"), "101", "codecs[0].payloadType"),
        (("codecs", 0, "payloadType"), True, "codecs[0].payloadType"),
        (("codecs", 0, "payloadType"), 128, "codecs[0].payloadType"),
        (("codecs", 1, "payloadType"), 101, "codecs[1].payloadType"),  # duplicate
        (("codecs", 0, "clockRate"), ..., "codecs[0].clockRate"),
        (("codecs", 0, "clockRate"), 90000.5, "codecs[0].clockRate"),
        (("codecs", 0, "clockRate"), 0, "codecs[0].clockRate"),
        (("codecs", 0, "channels"), 0, "codecs[0].channels"),
        (("codecs", 0, "parameters"), [], "codecs[0].parameters"),
        (("codecs", 0, "parameters"), {"x": True}, "codecs[0].parameters.x"),
        (("codecs", 0, "parameters"), {"x": [1]}, "codecs[0].parameters.x"),
        (("codecs", 0, "parameters"), {"x": float("nan")}, "codecs[0].parameters.x"),
        (("codecs", 0, "rtcpFeedback"), {}, "codecs[0].rtcpFeedback"),
        (("codecs", 0, "rtcpFeedback", 1), "pli", "codecs[0].rtcpFeedback[1]"),
        (("codecs", 0, "rtcpFeedback", 1, "type"), "", "codecs[0].rtcpFeedback[1].type"),
        (("codecs", 0, "rtcpFeedback", 1, "parameter"), 1, "codecs[0].rtcpFeedback[1].parameter"),
        (("codecs", 1, "parameters", "apt"), ..., "codecs[1].parameters.apt"),
        (("codecs", 1, "parameters", "apt"), "101", "codecs[1].parameters.apt"),
        (
            ("codecs", 0),
            {"mimeType": "video/rtx", "payloadType": 1, "clockRate": 1, "parameters": {"apt": 102}},
            "codecs",
        ),
        (("headerExtensions",), {}, "headerExtensions"),
        (("headerExtensions", 1, "id"), 0, "headerExtensions[1].id"),
        (("headerExtensions", 1, "id"), 256, "headerExtensions[1].id"),
        (("headerExtensions", 1, "id"), 1, "headerExtensions[1].id"),  # duplicate
        (("headerExtensions", 1, "uri"), None, "headerExtensions[1].uri"),
        (("headerExtensions", 0, "encrypt"), "no", "headerExtensions[0].encrypt"),
        (("encodings",), "x", "encodings"),
        (("encodings", 0, "ssrc"), "876543210", "encodings[0].ssrc"),
        (("encodings", 0, "ssrc"), -1, "encodings[0].ssrc"),
        (("encodings", 0, "ssrc"), 1 << 32, "encodings[0].ssrc"),
        (("encodings", 0, "rtx"), 5, "encodings[0].rtx"),
        (("encodings", 0, "rtx"), {}, "encodings[0].rtx.ssrc"),
        (("encodings", 0, "rtx", "ssrc"), 1.5, "encodings[0].rtx.ssrc"),
        (("encodings", 0, "rid"), 5, "encodings[0].rid"),
        (("encodings", 0, "dtx"), 1, "encodings[0].dtx"),
        (("encodings", 0, "codecPayloadType"), 300, "encodings[0].codecPayloadType"),
        (("rtcp",), [], "rtcp"),
        (("rtcp", "cname"), 7, "rtcp.cname"),
        (("rtcp", "reducedSize"), "true", "rtcp.reducedSize"),
        (("rtcp", "mux"), 1, "rtcp.mux"),
        (("mid",), 1, "mid"),
    ],
)
def test_invalid_fields_name_their_path(
    path: tuple[str | int, ...], value: Any, field: str
) -> None:
    with pytest.raises(RtpParametersError) as info:
        RtpParameters.from_mediasoup(_with(VIDEO_CONSUMER, path, value))
    assert info.value.field == field


@pytest.mark.parametrize("obj", [None, [], "codecs", 5, {1: 2}])
def test_root_must_be_an_object(obj: object) -> None:
    with pytest.raises(RtpParametersError) as info:
        RtpParameters.from_mediasoup(obj)
    assert info.value.field == "(root)"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_arbitrary_json_raises_only_rtp_parameters_error(obj: object) -> None:
    with contextlib.suppress(RtpParametersError):
        RtpParameters.from_mediasoup(obj)


@given(st.data())
def test_mutated_consumer_raises_only_rtp_parameters_error(data: st.DataObject) -> None:
    obj = copy.deepcopy(data.draw(st.sampled_from([VIDEO_CONSUMER, AUDIO_CONSUMER])))
    # Replace one random node of the tree with arbitrary JSON.
    target: Any = obj
    while True:
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        if not keys:
            break
        key = data.draw(st.sampled_from(keys))
        child = target[key]
        if isinstance(child, (dict, list)) and child and data.draw(st.booleans()):
            target = child
            continue
        target[key] = data.draw(json_values)
        break
    try:
        params = RtpParameters.from_mediasoup(obj)
    except RtpParametersError:
        return
    assert RtpParameters.from_mediasoup(params.to_mediasoup()) == params


# Hypothesis strategy of valid typed parameters.
u32 = st.integers(0, 0xFFFF_FFFF)
names = st.text(min_size=1, max_size=12)
param_values = (
    st.text(max_size=8)
    | st.integers(-1000, 1000)
    | st.floats(allow_nan=False, allow_infinity=False)
)
feedback = st.builds(RtcpFeedback, type=names, parameter=st.text(max_size=8))


@st.composite
def rtp_parameters(draw: st.DrawFn) -> RtpParameters:
    mux = draw(st.booleans())
    # RFC 5761 §4: 64-95 collide with RTCP on a muxed port (refused).
    pt_values = st.integers(0, 127) if not mux else st.integers(0, 63) | st.integers(96, 127)
    pts = draw(st.lists(pt_values, min_size=1, max_size=4, unique=True))
    media_kind = draw(st.sampled_from(["audio", "video"]))
    codecs = [
        RtpCodecParameters(
            mime_type=f"{media_kind}/{draw(st.sampled_from(['opus', 'VP8', 'H264']))}",
            payload_type=pts[0],
            clock_rate=draw(st.integers(1, 0xFFFF_FFFF)),
            channels=draw(st.none() | st.integers(1, 8)),
            parameters=draw(st.dictionaries(names, param_values, max_size=3)),
            rtcp_feedback=tuple(draw(st.lists(feedback, max_size=3))),
        )
    ]
    for pt in pts[1:]:
        codecs.append(
            RtpCodecParameters(
                f"{media_kind}/rtx", pt, 90000, None, {"apt": draw(st.integers(0, 127))}
            )
        )
    ids = draw(st.lists(st.integers(1, 255), max_size=4, unique=True))
    extensions = tuple(
        RtpHeaderExtensionParameters(draw(names), ext_id, draw(st.booleans())) for ext_id in ids
    )
    encodings = tuple(
        draw(
            st.lists(
                st.builds(
                    RtpEncodingParameters,
                    ssrc=st.none() | u32,
                    rtx_ssrc=st.none() | u32,
                    rid=st.none() | st.text(max_size=4),
                    codec_payload_type=st.none() | st.integers(0, 127),
                    dtx=st.none() | st.booleans(),
                    scalability_mode=st.none() | st.sampled_from(["L1T3", "S3T3"]),
                    max_bitrate=st.none() | st.integers(0, 10**9),
                ),
                max_size=2,
            )
        )
    )
    rtcp = draw(
        st.builds(
            RtcpParameters,
            cname=st.none() | st.text(max_size=16),
            reduced_size=st.booleans(),
            mux=st.just(mux),
        )
    )
    mid = draw(st.none() | st.text(max_size=4))
    return RtpParameters(tuple(codecs), extensions, encodings, rtcp, mid)


@given(rtp_parameters())
def test_round_trip_through_json(params: RtpParameters) -> None:
    obj = json.loads(json.dumps(params.to_mediasoup()))
    assert RtpParameters.from_mediasoup(obj) == params


# ------------------------------------------------------------------ capabilities


def test_capabilities_never_enable_congestion_control() -> None:
    text = json.dumps(recorder_rtp_capabilities())
    for forbidden in ("transport-cc", "goog-remb", "transport-wide-cc", "abs-send-time"):
        assert forbidden not in text


def test_capabilities_codecs() -> None:
    caps = recorder_rtp_capabilities()
    codecs = {
        (c["mimeType"], c["parameters"].get("profile-level-id")): c
        for c in caps["codecs"]
        if c["mimeType"] != "video/rtx"  # test_capabilities_offer_rtx_per_video_codec
        and c["parameters"].get("packetization-mode") != 0  # tests/unit/rtp/test_h264_mode0.py
    }
    assert set(codecs) == {
        ("audio/opus", None),
        ("video/VP8", None),
        ("video/VP9", None),  # tests/unit/rtp/test_vp9.py
        ("video/H264", "42e01f"),
        ("video/H264", "4d001f"),
    }
    opus = codecs["audio/opus", None]
    assert (opus["kind"], opus["clockRate"], opus["channels"], opus["preferredPayloadType"]) == (
        "audio",
        48000,
        2,
        100,
    )
    assert opus["rtcpFeedback"] == [{"type": "nack", "parameter": ""}]
    video_feedback = [
        {"type": "nack", "parameter": ""},
        {"type": "nack", "parameter": "pli"},
        {"type": "ccm", "parameter": "fir"},
    ]
    for key in [("video/VP8", None), ("video/H264", "42e01f"), ("video/H264", "4d001f")]:
        codec = codecs[key]
        assert codec["kind"] == "video"
        assert codec["clockRate"] == 90000
        assert "channels" not in codec
        assert codec["rtcpFeedback"] == video_feedback
    for profile in ("42e01f", "4d001f"):
        assert codecs["video/H264", profile]["parameters"] == {
            "packetization-mode": 1,
            "level-asymmetry-allowed": 1,
            "profile-level-id": profile,
        }
    pts = [c["preferredPayloadType"] for c in caps["codecs"]]
    assert len(set(pts)) == len(pts)
    assert all(96 <= pt <= 127 for pt in pts)  # dynamic range (RFC 3551 §6)


def test_capabilities_header_extensions() -> None:
    caps = recorder_rtp_capabilities()
    extensions = {(e["kind"], e["uri"]): e["preferredId"] for e in caps["headerExtensions"]}
    assert extensions == {
        ("audio", "urn:ietf:params:rtp-hdrext:sdes:mid"): 1,
        ("video", "urn:ietf:params:rtp-hdrext:sdes:mid"): 1,
        ("audio", "urn:ietf:params:rtp-hdrext:ssrc-audio-level"): 10,
        ("audio", "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time"): 13,
        ("video", "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time"): 13,
    }
    assert all(e["preferredEncrypt"] is False for e in caps["headerExtensions"])


def test_capabilities_are_fresh_copies() -> None:
    first = recorder_rtp_capabilities()
    first["codecs"].clear()
    assert recorder_rtp_capabilities()["codecs"]


def test_capabilities_offer_rtx_per_video_codec() -> None:
    # RFC 4588 §8.6: one video/rtx per video codec, apt = the codec's PT, so that
    # mediasoup keeps RTX in the consumer's rtpParameters.
    codecs = recorder_rtp_capabilities()["codecs"]
    media = [c for c in codecs if c["mimeType"] != "video/rtx"]
    rtx = [c for c in codecs if c["mimeType"] == "video/rtx"]
    video_pts = [c["preferredPayloadType"] for c in media if c["kind"] == "video"]
    assert video_pts
    assert sorted(c["parameters"]["apt"] for c in rtx) == sorted(video_pts)
    for entry in rtx:
        assert entry["kind"] == "video"
        assert entry["clockRate"] == 90000
        assert entry["rtcpFeedback"] == []
        assert set(entry["parameters"]) == {"apt"}
        assert type(entry["parameters"]["apt"]) is int  # mediasoup rejects a string apt
    assert not any(c["parameters"].get("apt") == 100 for c in rtx)  # none for Opus
    pts = [c["preferredPayloadType"] for c in codecs]
    assert len(set(pts)) == len(pts)


def test_consumer_with_rtx_for_each_video_codec_of_our_capabilities() -> None:
    # What mediasoup's getConsumerRtpParameters produces from our capabilities:
    # the router's media PT, its RTX PT with apt, and rtx.ssrc = ssrc + 1.
    for codec in recorder_rtp_capabilities()["codecs"]:
        if codec["kind"] != "video" or codec["mimeType"] == "video/rtx":
            continue
        obj = copy.deepcopy(VIDEO_CONSUMER)
        obj["codecs"] = [
            {
                "mimeType": "video/rtx",  # RTX listed first must not be taken as media
                "payloadType": 97,
                "clockRate": 90000,
                "parameters": {"apt": 96},
                "rtcpFeedback": [],
            },
            {
                "mimeType": codec["mimeType"],
                "payloadType": 96,
                "clockRate": 90000,
                "parameters": codec["parameters"],
                "rtcpFeedback": codec["rtcpFeedback"],
            },
        ]
        obj["encodings"] = [{"ssrc": 1000, "rtx": {"ssrc": 1001}}]
        params = RtpParameters.from_mediasoup(obj)
        assert params.media_codec.mime_type == codec["mimeType"]
        assert params.rtx_payload_type == 97
        assert (params.ssrc, params.rtx_ssrc) == (1000, 1001)
        assert params.has_feedback("nack")


def test_rtx_payload_type_follows_apt_among_several_rtx_codecs() -> None:
    obj = copy.deepcopy(VIDEO_CONSUMER)
    def rtx(payload_type: int, apt: int) -> dict[str, Any]:
        return {
            "mimeType": "video/rtx",
            "payloadType": payload_type,
            "clockRate": 90000,
            "parameters": {"apt": apt},
        }

    obj["codecs"].append(rtx(104, 99))
    obj["codecs"].insert(0, rtx(98, 7))
    params = RtpParameters.from_mediasoup(obj)
    assert params.media_codec.payload_type == 101
    assert params.rtx_payload_type == 102


@pytest.mark.parametrize("payload_type", [64, 72, 95])
def test_payload_types_colliding_with_rtcp_are_refused_when_muxed(payload_type: int) -> None:
    """RFC 5761 §4: on a muxed port, PT 64-95 with the marker bit reads as RTCP 192-223."""
    codec = {"mimeType": "video/VP8", "payloadType": payload_type, "clockRate": 90000}
    for rtcp in ({}, {"rtcp": {"mux": True}}):  # mux is the default
        with pytest.raises(RtpParametersError) as info:
            RtpParameters.from_mediasoup({"codecs": [codec], **rtcp})
        assert info.value.field == "codecs[0].payloadType"
    # An RTX codec in the range is refused too.
    media = {"mimeType": "video/VP8", "payloadType": 100, "clockRate": 90000}
    rtx = {"mimeType": "video/rtx", "payloadType": payload_type, "clockRate": 90000, "parameters": {"apt": 100}}
    with pytest.raises(RtpParametersError) as info:
        RtpParameters.from_mediasoup({"codecs": [media, rtx]})
    assert info.value.field == "codecs[1].payloadType"
    # With RTCP on its own port there is nothing to collide with.
    params = RtpParameters.from_mediasoup({"codecs": [codec, {**rtx, "payloadType": 101}], "rtcp": {"mux": False}})
    assert params.media_codec.payload_type == payload_type
