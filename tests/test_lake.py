"""Lake paths, storage access and atomic publish on file:// and s3://."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.errors import LakeError
from pipelines.lake import COMMIT_MARKER, PATHS, Lake, check_dataset_id, part_name

DID = "0123456789abcdef"


def test_paths_are_built_from_ids() -> None:
    assert PATHS.raw(DID) == f"raw/{DID}.h5ad"
    assert PATHS.zarr(DID) == f"zarr/{DID}.zarr"
    assert PATHS.embedding_part("gf-6L-10M-i2048", DID, 3) == (
        f"embeddings/model=gf-6L-10M-i2048/dataset_id={DID}/part-00003.parquet"
    )
    assert PATHS.quarantine(DID) == f"quarantine/{DID}"
    assert part_name(12) == "part-00012"
    with pytest.raises(ValueError, match="16 lowercase hex"):
        check_dataset_id("ABC")
    with pytest.raises(ValueError, match="may only hold"):
        PATHS.embeddings("../etc", DID)


def test_read_write_list_copy(any_settings) -> None:
    lake = Lake(any_settings)
    lake.write_bytes("incoming/sub/a.h5ad", b"abc")
    lake.write_json("reports/x.json", {"k": 1})
    assert lake.ls("", recursive=True) == ["incoming/sub/a.h5ad", "reports/x.json"]
    assert lake.ls("incoming", recursive=True, suffix=".h5ad") == ["incoming/sub/a.h5ad"]
    lake.copy("incoming/sub/a.h5ad", f"raw/{DID}.h5ad")
    assert lake.read_bytes(f"raw/{DID}.h5ad") == b"abc"
    assert lake.read_json("reports/x.json") == {"k": 1}
    assert lake.size(f"raw/{DID}.h5ad") == 3
    assert lake.sha256(f"raw/{DID}.h5ad") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    lake.rm("incoming/sub/a.h5ad")
    assert not lake.exists("incoming/sub/a.h5ad")
    with pytest.raises(LakeError, match="does not exist"):
        lake.read_bytes("nope/missing.bin")


def test_put_and_get(any_settings, tmp_path) -> None:
    lake = Lake(any_settings)
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1000)
    lake.put(src, "incoming/f.bin")
    lake.get("incoming/f.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()


def test_publish_makes_everything_visible_at_once(any_settings) -> None:
    lake = Lake(any_settings)
    final = PATHS.zarr(DID)
    with lake.publishing(final, info={"rows": 2}) as stage:
        lake.write_bytes(f"{stage}/a/0", b"0")
        lake.write_bytes(f"{stage}/b", b"1")
        assert not lake.is_published(final)
        assert lake.ls("zarr", recursive=True) == []
    assert lake.is_published(final)
    assert lake.commit_info(final) == {"rows": 2}
    assert lake.ls(final, recursive=True) == [f"{final}/{COMMIT_MARKER}", f"{final}/a/0", f"{final}/b"]
    lake.unpublish(final)
    assert not lake.is_published(final)


def test_crashed_publish_leaves_nothing_visible_and_can_resume(any_settings) -> None:
    lake = Lake(any_settings)
    final = PATHS.embeddings("m", DID)
    with pytest.raises(RuntimeError, match="crash"):
        with lake.publishing(final) as stage:
            lake.write_bytes(f"{stage}/part-00000.parquet", b"p0")
            raise RuntimeError("crash")
    assert not lake.is_published(final)
    assert lake.ls("embeddings", recursive=True) == []
    # A resumed run finds what was staged and finishes.
    with lake.publishing(final, resume=True) as stage:
        assert lake.exists(f"{stage}/part-00000.parquet")
        lake.write_bytes(f"{stage}/part-00001.parquet", b"p1")
    assert lake.ls(final, suffix=".parquet") == [f"{final}/part-00000.parquet", f"{final}/part-00001.parquet"]
    # A fresh (non-resumed) run starts from nothing.
    final2 = PATHS.embeddings("m2", DID)
    with pytest.raises(RuntimeError):
        with lake.publishing(final2) as stage:
            lake.write_bytes(f"{stage}/part-00000.parquet", b"old")
            raise RuntimeError("crash")
    with lake.publishing(final2) as stage:
        assert not lake.exists(f"{stage}/part-00000.parquet")


def test_published_output_is_immutable(any_settings) -> None:
    lake = Lake(any_settings)
    final = PATHS.zarr(DID)
    with lake.publishing(final) as stage:
        lake.write_bytes(f"{stage}/x", b"1")
    with pytest.raises(LakeError, match="immutable"):
        with lake.publishing(final) as stage:
            lake.write_bytes(f"{stage}/x", b"2")


def test_in_place_publish_writes_at_the_final_path_on_s3_only(any_settings) -> None:
    """``in_place``: on S3 the store is written where it ends up and the marker alone commits it
    (no copy); on ``file://`` it is staged and renamed as before. Unpublished either way until
    the marker, resumable after a crash, and a published output is never written into."""
    lake = Lake(any_settings)
    final = PATHS.zarr(DID)
    expected = final if lake.protocol == "s3" else PATHS.staging(final)
    assert lake.stage_path(final, in_place=True) == expected
    assert lake.stage_path(final) == PATHS.staging(final)
    with pytest.raises(RuntimeError, match="crash"):
        with lake.publishing(final, in_place=True, resume=True) as stage:
            assert stage == expected
            lake.write_bytes(f"{stage}/parts/00000/c", b"0")
            raise RuntimeError("crash")
    assert not lake.is_published(final)
    with lake.publishing(final, in_place=True, resume=True, info={"rows": 2}) as stage:
        assert lake.read_bytes(f"{stage}/parts/00000/c") == b"0"  # kept for the resumed run
        lake.write_bytes(f"{stage}/parts/00001/c", b"1")
        assert not lake.is_published(final)
    assert lake.commit_info(final) == {"rows": 2}
    assert lake.ls(final, recursive=True) == [
        f"{final}/{COMMIT_MARKER}",
        f"{final}/parts/00000/c",
        f"{final}/parts/00001/c",
    ]
    assert not lake.exists(PATHS.staging(final))
    with pytest.raises(LakeError, match="immutable"):
        with lake.publishing(final, in_place=True) as stage:
            lake.write_bytes(f"{stage}/parts/00000/c", b"other")
    assert lake.read_bytes(f"{final}/parts/00000/c") == b"0"
    # A fresh (non-resumed) writer starts from nothing; discarding leaves a published output alone.
    other = PATHS.zarr(DID[::-1])
    with pytest.raises(RuntimeError):
        with lake.publishing(other, in_place=True) as stage:
            lake.write_bytes(f"{stage}/old", b"old")
            raise RuntimeError("crash")
    with lake.publishing(other, in_place=True) as stage:
        assert not lake.exists(f"{stage}/old")
    lake.discard_unpublished(final, in_place=True)
    assert lake.is_published(final)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("limit", [None, 64 * 2**20])
def test_large_objects_are_copied_on_s3(settings_s3, tmp_path, monkeypatch, limit) -> None:
    """Beyond 150 MiB s3fs copies in parts, and rclone's part answers carry no ETag: a large
    upload must still reach raw/ or quarantine/. With ``limit`` the object is over the single
    request limit too, and goes through the multipart copy or its streamed fallback."""
    import hashlib

    import numpy as np

    import pipelines.lake

    if limit is not None:
        monkeypatch.setattr(pipelines.lake, "COPY_OBJECT_LIMIT", limit)
    lake = Lake(settings_s3)
    data = np.random.default_rng(1).integers(0, 256, size=160 * 2**20, dtype=np.uint8).tobytes()
    (tmp_path / "big").write_bytes(data)
    lake.put(tmp_path / "big", "incoming/big.h5ad")
    lake.copy("incoming/big.h5ad", "raw/big.h5ad")
    assert lake.size("raw/big.h5ad") == len(data)
    assert lake.sha256("raw/big.h5ad") == hashlib.sha256(data).hexdigest()
    # The same for a published tree with a large object in it.
    with lake.publishing("zarr/big.zarr") as stage:
        lake.copy("incoming/big.h5ad", f"{stage}/c/0")
        lake.write_bytes(f"{stage}/zarr.json", b"{}")
    assert lake.is_published("zarr/big.zarr")
    assert lake.size("zarr/big.zarr/c/0") == len(data)
    assert lake.read_bytes("zarr/big.zarr/zarr.json") == b"{}"


@pytest.mark.integration
def test_copy_object_checks_the_source_etag_and_waits_as_long_as_the_size_needs(settings_s3) -> None:
    """A copy asked for from an ETag the source no longer has is refused (``CopySourceIfMatch``)
    or, where the server ignores the condition (rclone's does), answers the copy's other ETag,
    which the raw copy's check compares; a missing source is FileNotFoundError; the request's
    read timeout grows with the object (a CopyObject answers once the server has copied it)."""
    import pipelines.lake
    from pipelines.errors import LakeError
    from pipelines.lake_store import s3_client

    lake = Lake(settings_s3)
    lake.write_bytes("incoming/e.bin", b"first")
    etag = lake.etag(lake.path("incoming/e.bin"))
    assert lake.copy_in(lake.path("incoming/e.bin"), "raw/e.bin", 5, if_match=etag) == etag
    lake.write_bytes("incoming/e.bin", b"second")
    try:
        copied = lake.copy_in(lake.path("incoming/e.bin"), "raw/e2.bin", 6, if_match=etag)
    except LakeError as e:
        assert "changed" in str(e) and not lake.exists("raw/e2.bin")
    else:
        assert copied != etag and lake.read_bytes("raw/e2.bin") == b"second"
    with pytest.raises(FileNotFoundError):
        lake.copy_in(lake.path("incoming/none.bin"), "raw/none.bin", 1)
    size = 2 * 2**30
    want = size / pipelines.lake.COPY_TIMEOUT_RATE
    assert want > pipelines.lake.COPY_TIMEOUT_FLOOR
    assert s3_client(lake.storage_options, read_timeout=want).meta.config.read_timeout == want
    assert s3_client(lake.storage_options).meta.config.read_timeout != want


@pytest.mark.integration
def test_s3_commit_copies_subtrees_at_once_but_never_two_writes_into_one_new_folder(settings_s3, monkeypatch) -> None:
    """A commit on S3 copies objects several at a time, but two copies run together only when
    they belong to different subtrees (``parts/00000``, ``parts/00001``, ...) whose folders the
    first copy of each made before; every object arrives intact (on rclone's server, which
    fails concurrent writes that create files in one new folder)."""
    import threading
    import time

    import pipelines.lake

    lake = Lake(settings_s3)
    final = PATHS.zarr(DID)
    stage = lake.open_stage(final)
    objects = {"zarr.json": b"{}", "var/zarr.json": b"{}", "var/_index/c/0": b"genes"}
    for part in range(4):
        for name in ("zarr.json", "X/data/c/0", "X/data/c/1", "X/indices/c/0", "obs/_index/c/0", "obs/zarr.json"):
            objects[f"parts/{part:05d}/{name}"] = f"{part}:{name}".encode() * 100
    for tail, data in objects.items():
        lake.write_bytes(f"{stage}/{tail}", data)

    running: dict[str, str] = {}  # copies under way: destination -> its subtree
    overlaps: list[tuple[str, str]] = []
    lock = threading.Lock()
    copy_object = pipelines.lake.Lake.copy_object

    def traced(self, src, dst, size=None, **kw):
        tail = dst.split(f"{final}/", 1)[1]
        group = "/".join(tail.split("/")[:-1][:2])
        with lock:
            overlaps.extend((group, other) for other in running.values())
            running[dst] = group
        time.sleep(0.02)  # long enough for the threads to meet
        try:
            return copy_object(self, src, dst, size, **kw)
        finally:
            with lock:
                del running[dst]

    monkeypatch.setattr(pipelines.lake.Lake, "copy_object", traced)
    lake.commit(stage, final, {"n": 1})
    assert overlaps, "no two copies ran at once"
    assert all(a != b for a, b in overlaps), overlaps  # never two copies in one subtree at once
    assert {a for a, _ in overlaps} | {b for _, b in overlaps} <= {f"parts/{p:05d}" for p in range(4)}
    assert lake.is_published(final)
    assert sorted(lake.ls(final, recursive=True)) == sorted(
        [f"{final}/{COMMIT_MARKER}", *(f"{final}/{t}" for t in objects)]
    )
    for tail, data in objects.items():
        assert lake.read_bytes(f"{final}/{tail}") == data
    assert lake.ls(PATHS.staging(final), recursive=True) == []


def test_commits_leave_no_empty_staging_folders(settings_file, tmp_path) -> None:
    lake = Lake(settings_file)
    root = Path(lake.path(""))
    local = tmp_path / "x.bin"
    local.write_bytes(b"x")
    lake.put(local, "raw/deep/x.bin")
    with lake.publishing(PATHS.zarr(DID)) as stage:
        lake.write_bytes(f"{stage}/a/0", b"0")
    with lake.publishing("embeddings/model=m/dataset_id=" + DID) as stage:
        lake.write_bytes(f"{stage}/part-00000.parquet", b"p")
    # Only the shared first level stays (other writers create their folders under it at any moment).
    left = sorted(str(p.relative_to(root)) for p in (root / "_staging").rglob("*"))
    assert left == ["_staging/embeddings", "_staging/raw", "_staging/zarr"], left
    # A folder another writer is filling stays.
    other = root / "_staging" / "embeddings" / "model=m" / "dataset_id=other"
    other.mkdir(parents=True)
    (other / "part-00000.parquet").write_bytes(b"q")
    with lake.publishing("embeddings/model=m/dataset_id=" + DID[::-1]) as stage:
        lake.write_bytes(f"{stage}/part-00000.parquet", b"p")
    assert (other / "part-00000.parquet").read_bytes() == b"q"


def test_resumable_stage_keeps_parts_and_clears_partial_writes(any_settings) -> None:
    lake = Lake(any_settings)
    final = PATHS.embeddings("m", DID)
    stage = lake.open_stage(final)
    assert stage == PATHS.staging(final)
    record = lake.put_atomic(f"{stage}/part-00000.parquet", b"abc")
    assert record == {
        "path": f"{stage}/part-00000.parquet",
        "bytes": 3,
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    }
    lake.put_atomic(f"{stage}/notes.txt", b"n")
    if lake.protocol == "file":  # what a writer killed inside put_atomic leaves
        partial = Path(lake.path(f"{stage}/.part-00001.parquet.tmp-0123456789ab"))
        partial.write_bytes(b"half")
    # A rerun opens the same stage: complete parts stay, partial writes go.
    assert lake.open_stage(final) == stage
    if lake.protocol == "file":
        assert not partial.exists()
    assert lake.staged_parts(stage) == [f"{stage}/part-00000.parquet"]
    assert lake.staged_parts(stage, suffix=".txt") == []
    assert lake.staged_parts(PATHS.staging(PATHS.embeddings("m", DID[::-1]))) == []
    assert lake.commit(stage, final, {"rows": 1}) is True
    assert lake.read_bytes(f"{final}/part-00000.parquet") == b"abc"
    # Published meanwhile by another run: exist_ok says so; without it the output is immutable.
    again = lake.open_stage(final)
    assert lake.commit(again, final, exist_ok=True) is False
    with pytest.raises(LakeError, match="already published"):
        lake.commit(again, final)
    assert lake.commit_info(final) == {"rows": 1}


def test_lake_locations(any_settings, tmp_path) -> None:
    lake = Lake(any_settings)
    rel = f"incoming/{DID}.h5ad"
    assert lake.key_of(lake.url(rel)) == rel
    assert lake.key_of(lake.url("")) is None
    assert lake.key_of("s3://elsewhere-bucket/x.h5ad") is None
    assert lake.key_of(str(tmp_path / "outside.h5ad")) is None
    assert lake.key_of(rel) is None  # a key is not a location
    if lake.protocol == "file":
        assert lake.key_of(lake.path(rel)) == rel
        assert lake.reader_location(rel) == lake.path(rel)
        assert lake.etag(lake.path(rel)) is None
    else:
        assert lake.reader_location(rel) == lake.url(rel)
        lake.write_bytes(rel, b"abc")
        assert lake.etag(lake.path(rel))
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "index.html").write_text("i")
    (docs / "sub" / "a.html").write_text("a")
    assert lake.put_tree(docs, "reports/x/docs") == 2
    assert lake.ls("reports/x/docs", recursive=True) == ["reports/x/docs/index.html", "reports/x/docs/sub/a.html"]
