"""``pipelines.lake.lake_key``: user-given lake keys, normalised and confined to a prefix."""

from __future__ import annotations

import pytest

from pipelines.errors import LakeError
from pipelines.lake import LakeKeyError, lake_key


@pytest.mark.parametrize(
    ("key", "prefix", "expected"),
    [
        ("incoming/x.h5ad", "incoming", "incoming/x.h5ad"),
        ("/incoming//lab/./x.h5ad", "incoming", "incoming/lab/x.h5ad"),
        ("incoming/lab/../x.h5ad", "incoming", "incoming/x.h5ad"),
        ("incoming/x.h5ad", "", "incoming/x.h5ad"),
        ("raw/0123456789abcdef.h5ad", "", "raw/0123456789abcdef.h5ad"),
        ("x.h5ad", "", "x.h5ad"),
    ],
)
def test_keys_are_normalised(key: str, prefix: str, expected: str) -> None:
    assert lake_key(key, prefix) == expected


@pytest.mark.parametrize(
    ("key", "prefix"),
    [
        ("incoming/../../escaped.h5ad", "incoming"),
        ("incoming/../raw/x.h5ad", "incoming"),
        ("raw/x.h5ad", "incoming"),
        ("incoming", "incoming"),
        ("incoming/.", "incoming"),
        ("incomingx/y.h5ad", "incoming"),
        ("../x.h5ad", ""),
        ("incoming/../../x.h5ad", ""),
        ("a/../..", ""),
        (".", ""),
        ("", ""),
        ("/", "incoming"),
        ("s3://lake/incoming/x.h5ad", ""),
        ("file:///etc/passwd", ""),
        ("incoming\\..\\..\\x.h5ad", "incoming"),
        ("incoming/x\0.h5ad", "incoming"),
    ],
)
def test_keys_outside_their_prefix_are_refused(key: str, prefix: str) -> None:
    with pytest.raises(LakeKeyError) as info:
        lake_key(key, prefix)
    assert repr(key) in str(info.value)
    assert isinstance(info.value, LakeError) and isinstance(info.value, ValueError)
