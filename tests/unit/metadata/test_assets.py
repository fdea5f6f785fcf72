"""Asset kinds and names (issue #14): the pure rules the repository applies before writing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import CheckConstraint, UniqueConstraint

from edge_recorder.errors import MetadataError
from edge_recorder.metadata.models import ASSET_KIND_COMPOSITE, ASSET_KINDS, ASSET_NAME_COMPOSITE, RecordingAsset
from edge_recorder.metadata.repository import MAX_ASSET_NAME_BYTES, check_asset


def test_the_kinds_are_the_tables_check_and_names_its_key() -> None:
    assert ASSET_KINDS == ("composite", "track", "manifest", "audio")
    assert ASSET_KIND_COMPOSITE in ASSET_KINDS and ASSET_NAME_COMPOSITE == "composite.mp4"
    table = RecordingAsset.__table__
    (check,) = [c for c in table.constraints if isinstance(c, CheckConstraint)]
    assert check.name == "RecordingAsset_kind_check"
    assert str(check.sqltext) == "kind IN ('composite', 'track', 'manifest', 'audio')"
    (unique,) = [c for c in table.constraints if isinstance(c, UniqueConstraint)]
    assert unique.name == "RecordingAsset_sessionId_name_key"
    assert [c.name for c in unique.columns] == ["sessionId", "name"]
    assert table.c.name.nullable is False


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("composite", "composite.mp4"),
        ("track", "tracks/alice-cam.webm"),
        ("track", "tracks/Zoë 2-mic.webm"),
        ("manifest", "manifest.json"),
        ("audio", "audio.m4a"),
        ("track", "..hidden/a..b.webm"),  # dots inside a segment are a name, not a step up
        ("track", "t" * MAX_ASSET_NAME_BYTES),
    ],
)
def test_accepted(kind: str, name: str) -> None:
    check_asset("s1", kind, name)


@pytest.mark.parametrize(
    ("kind", "name", "match"),
    [
        ("thumbnail", "thumb.jpg", "unknown kind 'thumbnail'"),
        ("Composite", "composite.mp4", "unknown kind"),
        ("track", "", "relative path"),
        ("track", "/etc/passwd", "relative path"),
        ("track", "tracks/../../other-session/composite.mp4", "relative path"),
        ("track", "tracks/./a.webm", "relative path"),
        ("track", "tracks//a.webm", "relative path"),
        ("track", "tracks/", "relative path"),
        ("track", "tracks\\..\\a.webm", "backslash"),
        ("track", "tracks/a\x00.webm", "control character"),
        ("track", "tracks/a\n.webm", "control character"),
        ("track", "tracks/a\x7f.webm", "control character"),
        ("track", "t" * (MAX_ASSET_NAME_BYTES + 1), f"{MAX_ASSET_NAME_BYTES + 1} bytes"),
        ("track", "é" * (MAX_ASSET_NAME_BYTES // 2 + 1), "bytes, over"),  # UTF-8 bytes, not characters
        ("track", "tracks/\udc00.webm", "not valid Unicode"),
    ],
)
def test_refused(kind: str, name: str, match: str) -> None:
    with pytest.raises(MetadataError, match=match) as info:
        check_asset("s1", kind, name)
    assert info.value.retryable is False


@given(st.text(max_size=80), st.sampled_from(ASSET_KINDS))
def test_any_text_is_accepted_or_refused_with_a_metadata_error(name: str, kind: str) -> None:
    try:
        check_asset("s1", kind, name)
    except MetadataError:
        return
    # Whatever passes stays under the session's prefix and fits an S3 key.
    segments = name.split("/")
    assert name and ".." not in segments and "" not in segments and not name.startswith("/")
    assert len(name.encode()) <= MAX_ASSET_NAME_BYTES and "\\" not in name
    assert all(ord(ch) >= 0x20 and ord(ch) != 0x7F for ch in name)
