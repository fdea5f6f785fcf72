import copy
from typing import Any

import pytest

from edge_recorder.demo.sfu import demo_producers
from edge_recorder.errors import RtpParametersError, UnsupportedCodecError
from edge_recorder.session.stream import StreamSpec


def _params() -> dict[str, Any]:
    return demo_producers()["alice-cam"].add_stream_params("s1")


def test_a_mediasoup_consumer_description_is_accepted() -> None:
    spec = StreamSpec.from_params(_params())
    assert (spec.producer_id, spec.peer_id, spec.kind, spec.source, spec.display_name) == (
        "alice-cam", "alice", "video", "camera", "Alice",
    )  # fmt: skip
    assert spec.codec_name == "vp8"
    assert spec.rtcp_mux


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda p: p.pop("producerId"), "producerId"),
        (lambda p: p.update(peerId=7), "peerId"),
        (lambda p: p.update(kind="data"), "kind"),
        (lambda p: p.update(source="window"), "source"),
        (lambda p: p.pop("rtpParameters"), "rtpParameters"),
        (lambda p: p["rtpParameters"]["codecs"][0].pop("clockRate"), "codecs[0].clockRate"),
        (lambda p: p["rtpParameters"]["codecs"][0].update(mimeType="audio/opus"), "rtpParameters.codecs[0].mimeType"),
    ],
)
def test_bad_params_name_the_field(mutate: Any, field: str) -> None:
    params = copy.deepcopy(_params())
    mutate(params)
    with pytest.raises(RtpParametersError) as info:
        StreamSpec.from_params(params)
    assert field in info.value.field


def test_an_unsupported_codec_is_refused_by_name() -> None:
    params = _params()
    params["rtpParameters"]["codecs"][0]["mimeType"] = "video/AV2"
    with pytest.raises(UnsupportedCodecError, match="AV2"):
        StreamSpec.from_params(params)
