import pytest
from hypothesis import given
from hypothesis import strategies as st

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


def _good(n: int) -> bytes:
    return wire.encode_control("stop", n=n) + wire.encode_media(n, n / 10, n % 2 == 0, bytes([n]) * 100)


def _feed_in_pieces(reader: wire.MessageReader, stream: bytes, piece: int) -> list[wire.PipeItem]:
    out: list[wire.PipeItem] = []
    for start in range(0, len(stream), piece):
        out += reader.feed(stream[start : start + piece])
    return out


def _without_drops(items: list[wire.PipeItem]) -> list[wire.PipeItem]:
    return [i for i in items if not isinstance(i, wire.DroppedMessage)]


@pytest.mark.parametrize("piece", [1 << 16, 7777, 1 << 30])
def test_oversize_message_is_skipped_and_reported_and_the_pipe_carries_on(piece: int) -> None:
    # 17 MiB of media: bigger than any frame; it must cost only itself.
    big = wire.encode_media(3, 1.0, True, b"\xab" * (17 * 1024 * 1024))
    stream = _good(1) + big + _good(2) + big + _good(3)
    reader = wire.MessageReader()
    out = _feed_in_pieces(reader, stream, piece)
    drops = [i for i in out if isinstance(i, wire.DroppedMessage)]
    assert [d.reason for d in drops] == ["oversize", "oversize"]
    assert drops[0].size == len(big) - 4
    expected = _feed_in_pieces(wire.MessageReader(), _good(1) + _good(2) + _good(3), 1 << 20)
    assert _without_drops(out) == expected and len(expected) == 6
    # The order is kept: the drop sits where the message was.
    assert isinstance(out[2], wire.DroppedMessage)


def test_oversize_message_is_never_buffered() -> None:
    reader = wire.MessageReader()
    length = wire.MAX_MESSAGE_BYTES + 1
    out = reader.feed(length.to_bytes(4, "big") + bytes([wire.MEDIA]))
    assert [d.reason for d in out if isinstance(d, wire.DroppedMessage)] == ["oversize"]
    chunk = b"\x00" * (1 << 20)
    for _ in range(length // len(chunk)):
        assert reader.feed(chunk) == []
        assert len(reader._buffer) == 0
    rest = length - 1 - (length // len(chunk)) * len(chunk)
    assert reader.feed(b"\x00" * rest + _good(9)) == _feed_in_pieces(wire.MessageReader(), _good(9), 1 << 16)


@pytest.mark.parametrize(
    ("bad", "detail"),
    [
        (b"\x00\x00\x00\x05\x09abcd", "unknown message type 9"),
        (b"\x00\x00\x00\x03\x01{x", "bad control JSON"),
        (b"\x00\x00\x00\x06\x01[1,2]", "without op"),
        (b"\x00\x00\x00\x0a\x01{\"op\": 5}", "without op"),
        (b"\x00\x00\x00\x03\x02ab", "truncated media header"),
        (b"\x00\x00\x00\x00", "zero-length"),
        (b"\x00\x00\x00\x05\x01\xff\xfe\x00\x01", "bad control JSON"),
    ],
)
def test_malformed_message_is_dropped_between_good_ones(bad: bytes, detail: str) -> None:
    out = wire.MessageReader().feed(_good(1) + bad + _good(2))
    drops = [i for i in out if isinstance(i, wire.DroppedMessage)]
    assert len(drops) == 1 and drops[0].reason == "malformed" and detail in drops[0].detail
    assert _without_drops(out) == wire.MessageReader().feed(_good(1) + _good(2))


@given(st.binary(max_size=200), st.lists(st.integers(0, 400), max_size=5))
def test_any_bytes_never_raise(garbage: bytes, cuts: list[int]) -> None:
    reader = wire.MessageReader()
    stream = garbage + _good(1)
    prev = 0
    for cut in sorted(cuts) + [len(stream)]:
        reader.feed(stream[prev:cut])
        prev = max(prev, cut)


def test_event_lines() -> None:
    reader = wire.EventReader()
    line = wire.encode_event("fragment", bytes=10, media_end_s=2.0)
    assert reader.feed(line[:5]) == []
    assert reader.feed(line[5:] + b"\n") == [{"event": "fragment", "bytes": 10, "media_end_s": 2.0}]


def test_bad_event_lines_become_warnings_and_keep_the_good_ones() -> None:
    reader = wire.EventReader()
    ok = wire.encode_event("stats", n=1)
    out = reader.feed(ok + b"[1,2]\n" + b"{nope\n" + ok)
    assert [e["event"] for e in out] == ["stats", "warning", "warning", "stats"]
    assert reader.dropped_lines == 2


@pytest.mark.parametrize("piece", [100, 1 << 20])
def test_overlong_event_line_is_skipped_without_buffering(piece: int) -> None:
    reader = wire.EventReader(max_line_bytes=1000)
    ok = wire.encode_event("fragment", bytes=1, media_end_s=0.5)
    stream = ok + b'{"event":"x","pad":"' + b"y" * 50_000 + b'"}\n' + ok
    out = []
    for start in range(0, len(stream), piece):
        out += reader.feed(stream[start : start + piece])
        assert len(reader._buffer) <= 1000 + piece
    assert [e["event"] for e in out] == ["fragment", "warning", "fragment"]
    assert "longer than 1000 bytes" in out[1]["message"]
