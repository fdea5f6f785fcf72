import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_recorder.errors import ParseError
from edge_recorder.media import wire

messages = st.one_of(
    st.builds(
        lambda op, n: ("c", op, n),
        st.sampled_from(["configure", "add_stream", "stop"]),
        st.integers(-(2**31), 2**31),
    ),
    st.builds(
        lambda i, t, k, d: ("m", i, t, k, d),
        st.integers(0, 65535),
        st.floats(allow_nan=False, allow_infinity=False, width=64),
        st.booleans(),
        st.binary(max_size=3000),
    ),
)


@given(st.lists(messages, max_size=20), st.data())
def test_messages_survive_any_split_of_the_pipe(items: list, data: st.DataObject) -> None:
    stream = b"".join(
        wire.encode_control(m[1], n=m[2]) if m[0] == "c" else wire.encode_media(m[1], m[2], m[3], m[4]) for m in items
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    reader = wire.MessageReader()
    out = []
    prev = 0
    for cut in cuts + [len(stream)]:
        out += reader.feed(stream[prev:cut])
        prev = cut
    assert len(out) == len(items)
    for got, want in zip(out, items):
        if want[0] == "c":
            assert got == wire.ControlMessage(want[1], {"n": want[2]})
        else:
            assert got == wire.MediaMessage(want[1], want[2], want[3], want[4])


def test_corrupt_pipe_raises_our_error() -> None:
    with pytest.raises(ParseError):
        wire.MessageReader().feed(b"\x00\x00\x00\x05\x09abcd")
    with pytest.raises(ParseError):
        wire.MessageReader().feed(b"\x00\x00\x00\x03\x01{x")


def test_event_lines() -> None:
    reader = wire.EventReader()
    line = wire.encode_event("fragment", bytes=10, media_end_s=2.0)
    assert reader.feed(line[:5]) == []
    assert reader.feed(line[5:] + b"\n") == [{"event": "fragment", "bytes": 10, "media_end_s": 2.0}]
    with pytest.raises(ParseError):
        reader.feed(b"[1,2]\n")
