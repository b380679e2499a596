"""An S3 upload is read from the store once; its raw copy is still verified.

Measured on a real ``rclone serve s3`` of this module's own, started with its remote control
(``--rc``): ``core/transferred`` lists the transfers the server made (every object it read
for a GET or a server-side copy, every object written), with their bytes, so that the test
counts the reads the server really made rather than the calls sclake meant to make. rclone
keeps the last 100 only, so a process of its own (``tests/rclone_poll.py``, at a higher
priority where it may) collects the list while the ingest runs; the test fails rather than
count short when the list rolled over between two polls, or when the bytes of the transfers
collected differ from the server's own total.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import pytest

from pipelines.dataset import open_dataset
from pipelines.errors import InputError
from pipelines.ingest import ingest, raw
from pipelines.lake import PATHS, Lake
from pipelines.sample import write_sample
from pipelines.settings import Settings
from tests.conftest import free_port, rclone_binary
from tests.rclone_poll import record_key, transferred

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass(frozen=True)
class Server:
    endpoint: str
    rc: str
    key: str
    secret: str

    def call(self, method: str) -> dict:
        req = urllib.request.Request(f"{self.rc}/{method}", data=b"{}", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)


class Transfers:
    """The server's transfers from entering the ``with`` block to leaving it, collected by
    ``tests/rclone_poll.py`` in a process of its own."""

    def __init__(self, server: Server, folder: Path) -> None:
        self.server = server
        self.path = folder / f"transfers-{secrets.token_hex(4)}.jsonl"
        self.seen: dict[str, dict] = {}
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> Transfers:
        self.server.call("core/stats-reset")
        nice = ["nice", "-n", "-10"] if os.geteuid() == 0 else []
        cmd = [*nice, sys.executable, "-m", "tests.rclone_poll", self.server.rc, str(self.path)]
        self._proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1])
        deadline = time.monotonic() + 30
        while '"ready"' not in (self.path.read_text() if self.path.exists() else ""):
            assert self._proc.poll() is None and time.monotonic() < deadline, "the transfer poller did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.terminate()
        assert self._proc.wait(30) == 0, "the transfer poller failed"
        lines = [json.loads(line) for line in self.path.read_text().splitlines()]
        assert {"missed": True} not in lines, "more transfers ended between two polls than rclone lists"
        for t in lines:
            if "name" in t:
                self.seen[record_key(t)] = t
        # The server counts a transfer when it ends, which may come just after the client's
        # last response: ask again for a while until the totals agree. Bytes, not transfers:
        # rclone's count of transfers leaves out some of those that read one object at the
        # same time (the identity pass's ranged GETs), its count of bytes does not.
        deadline = time.monotonic() + 10
        while True:
            for t in transferred(self.server.rc):
                self.seen[record_key(t)] = t
            moved = sum(int(t["bytes"]) for t in self.seen.values() if t.get("what") == "transferring")
            total = int(self.server.call("core/stats")["bytes"])
            if moved >= total or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert moved == total, f"collected {moved:,} of the {total:,} bytes the server moved"

    def bytes_read(self, name: str) -> int:
        """Bytes the server read of object ``name`` (``bucket/key``): GETs and copies from it."""
        return sum(
            int(t["bytes"])
            for t in self.seen.values()
            if t["name"] == name and t.get("what") == "transferring" and t.get("srcFs") and not t.get("dstFs")
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("s3-rc")
    (root / "lake").mkdir()
    port, rc_port = free_port(), free_port()
    key, secret = "sclake" + secrets.token_hex(8), secrets.token_hex(20)
    log = open(root.parent / f"rclone-rc-{port}.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [rclone_binary(), "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}", "--auth-key", f"{key},{secret}"]
        + ["--rc", "--rc-addr", f"127.0.0.1:{rc_port}", "--rc-no-auth"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            socket.create_connection(("127.0.0.1", rc_port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"rclone serve s3 did not start: see {log.name}")
            time.sleep(0.1)
    yield Server(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{rc_port}", key, secret)
    proc.terminate()
    proc.wait(10)
    log.close()


def lake_settings(server: Server, tmp_path: Path, prefix: str) -> Settings:
    return Settings(
        home=tmp_path / "home",
        lake_uri=f"s3://lake/{prefix}",
        s3_endpoint_url=server.endpoint,
        s3_access_key=server.key,
        s3_secret_key=server.secret,
        pushgateway_url=None,
        part_cells=256,
        shard_cells=64,
        dask_workers=1,
    )


def own_spool_files() -> list[Path]:
    folders = (Path(raw.tempfile.gettempdir()) / raw.SPOOL_DIR, raw.SHM / raw.SPOOL_DIR)
    return sorted(f for folder in folders if folder.is_dir() for f in folder.glob(f"{os.getpid()}-*"))


def test_an_s3_upload_is_read_once(server: Server, tmp_path: Path) -> None:
    """The identity pass's ranged GETs (hashed into the spool) and the raw copy's server-side read: twice the
    upload's size in all. Before the spool, the hash, the inspection and every part task
    each read the object again (at least three times its size with the copy)."""
    settings = lake_settings(server, tmp_path, "once")
    lake = Lake(settings)
    path = write_sample(tmp_path / "once.h5ad", cells=1024, genes=800, seed=41)
    lake.put(path, "incoming/once.h5ad")
    size = path.stat().st_size
    with Transfers(server, tmp_path) as log:
        result = ingest(settings, lake.url("incoming/once.h5ad"))
    assert result.n_parts == 4 and not result.already
    assert log.bytes_read("lake/once/incoming/once.h5ad") == 2 * size
    assert log.bytes_read(f"lake/once/{PATHS.raw(result.dataset_id)}") == 0  # checked by its ETag, not read
    assert result.dataset_id == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert lake.read_bytes(PATHS.raw(result.dataset_id)) == path.read_bytes()
    assert not lake.exists("incoming/once.h5ad")
    back = open_dataset(lake, result.dataset_id).to_anndata()
    assert (back.X != ad.read_h5ad(path).X).nnz == 0
    assert own_spool_files() == []


def test_a_damaged_raw_copy_is_found_and_replaced(server: Server, tmp_path: Path) -> None:
    """A raw/ object of the upload's size but other bytes (one byte flipped) is read back,
    found wrong by the XXH3 of the spooled stream, and copied again."""
    settings = lake_settings(server, tmp_path, "damaged")
    lake = Lake(settings)
    path = write_sample(tmp_path / "damaged.h5ad", cells=600, genes=700, seed=42)
    data = path.read_bytes()
    dataset_id = hashlib.sha256(data).hexdigest()[:16]
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0xFF
    lake.write_bytes(PATHS.raw(dataset_id), bytes(damaged))
    lake.put(path, "incoming/damaged.h5ad")
    with Transfers(server, tmp_path) as log:
        result = ingest(settings, lake.url("incoming/damaged.h5ad"))
    assert result.dataset_id == dataset_id
    assert lake.read_bytes(PATHS.raw(dataset_id)) == data
    assert log.bytes_read(f"lake/damaged/{PATHS.raw(dataset_id)}") == len(data)  # the damaged copy, read back
    assert log.bytes_read("lake/damaged/incoming/damaged.h5ad") == 2 * len(data)
    assert lake.is_published(PATHS.zarr(dataset_id))
    assert own_spool_files() == []


def test_spool_files_of_dead_processes_are_removed(settings_s3: Settings, tmp_path: Path) -> None:
    lake = Lake(settings_s3)
    path = write_sample(tmp_path / "s.h5ad", cells=40, genes=200, seed=43)
    lake.put(path, "incoming/s.h5ad")
    up = raw.resolve_upload(lake, "incoming/s.h5ad")
    folder = Path(raw.tempfile.gettempdir()) / raw.SPOOL_DIR
    folder.mkdir(exist_ok=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = folder / f"{dead.pid}-0123456789abcdef.h5ad"  # a killed ingest's
    stale.write_bytes(b"x")
    spool = raw.spool_for(lake, up)
    assert spool is not None and spool.name.startswith(f"{os.getpid()}-")
    assert not stale.exists()
    fp = raw.fingerprint(lake, up, spool)
    assert spool.read_bytes() == path.read_bytes() and fp.size == path.stat().st_size
    raw.drop_spool(spool)
    assert not spool.exists()
    # Local files are read where they are; a lake on file:// has no spool either.
    assert raw.spool_for(lake, raw.resolve_upload(lake, str(path))) is None


def test_an_s3_upload_is_found_and_hashed_without_s3fs(settings_s3: Settings, tmp_path: Path) -> None:
    # One HEAD finds the upload and gives its size; the identity pass reads it with the
    # synchronous client: the lake's s3fs filesystem is not made until something lists.
    lake = Lake(settings_s3)
    path = write_sample(tmp_path / "h.h5ad", cells=40, genes=200, seed=45)
    Lake(settings_s3).put(path, "incoming/h.h5ad")
    up = raw.resolve_upload(lake, "incoming/h.h5ad")
    assert up.size == path.stat().st_size == raw.size(lake, up)
    fp = raw.fingerprint(lake, up)
    assert fp.size == up.size and fp.etag == lake.head(lake.path("incoming/h.h5ad"))[1]
    assert lake._fs is None
    # A folder holds no object: not found, as a missing key is.
    for key in ("incoming", "incoming/missing.h5ad"):
        with pytest.raises(InputError, match="does not exist") as e:
            raw.resolve_upload(lake, key)
        assert e.value.code == "not_found"
    with pytest.raises(FileNotFoundError):
        lake.etag(lake.path("incoming/missing.h5ad"))
    assert lake.ls("incoming") == ["incoming/h.h5ad"]  # the filesystem, made on first use


def test_a_spool_goes_to_memory_only_where_it_fits_in_a_small_share_of_it(
    settings_s3: Settings, tmp_path: Path, monkeypatch
) -> None:
    lake = Lake(settings_s3)
    path = write_sample(tmp_path / "m.h5ad", cells=40, genes=200, seed=44)
    lake.put(path, "incoming/m.h5ad")
    up = raw.resolve_upload(lake, "incoming/m.h5ad")
    n = path.stat().st_size
    on_disk = Path(raw.tempfile.gettempdir()) / raw.SPOOL_DIR
    if not raw._is_tmpfs(raw.SHM):
        assert raw.spool_for(lake, up).parent == on_disk
        pytest.skip("/dev/shm is no memory file system here")
    monkeypatch.setattr(raw, "memory_at_hand", lambda: n * raw.SHM_SHARE)
    spool = raw.spool_for(lake, up)
    assert spool.parent == raw.SHM / raw.SPOOL_DIR
    fp = raw.fingerprint(lake, up, spool)
    assert spool.read_bytes() == path.read_bytes() and fp.size == n
    raw.drop_spool(spool)
    monkeypatch.setattr(raw, "memory_at_hand", lambda: n * raw.SHM_SHARE - 1)
    assert raw.spool_for(lake, up).parent == on_disk


def test_memory_at_hand_is_bounded_by_the_memory_cgroup() -> None:
    from benchmarks.memory_cgroup import MemoryCgroup, available

    reason = available()
    if reason:
        pytest.skip(reason)
    limit = 768 * 2**20
    code = "from pipelines.ingest import raw; print(raw.memory_at_hand())"
    with MemoryCgroup(f"sclake-test-shm-{os.getpid()}", limit) as cg:
        r = subprocess.run(cg.wrap([sys.executable, "-c", code]), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 0 < int(r.stdout) <= limit
    assert raw.memory_at_hand() > limit  # outside it: the machine's available memory


def _can_hide_folders() -> bool:
    """Whether this machine lets a process mount over a folder in a private mount namespace."""
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", "mount -t tmpfs none /mnt"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


@pytest.fixture
def stack_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A scheduler and one worker of the embedded stack, in their own folder; with ``hide``, the worker
    runs in a mount namespace where the folder ``hide`` is an empty tmpfs (another host's view)."""
    from pipelines.stack.dask import scheduler_address, scheduler_service, worker_service
    from pipelines.stack.process import ProcessManager

    hide: Path | None = getattr(request, "param", None)
    home = tmp_path / "cluster-home"
    (home / "tmp").mkdir(parents=True)
    settings = Settings(home=home, stack_dask_scheduler_port=free_port(), stack_dask_dashboard_port=free_port())
    worker = worker_service(settings, "dask-worker", 1, "2GiB")
    if hide is not None:
        hide.mkdir(parents=True, exist_ok=True)
        mount = 'mount -t tmpfs none "$0" && exec "$@"'
        worker.argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, str(hide), *worker.argv]
    services = [scheduler_service(settings), worker]
    pm = ProcessManager(home)
    for svc in services:
        svc.env["TMPDIR"] = str(home / "tmp")
        pm.start(svc)
    yield scheduler_address(settings)
    for svc in reversed(services):
        pm.stop(svc.name)


DRIVER_TMP = Path(raw.tempfile.gettempdir()) / "sclake-driver-tmp"


@pytest.mark.parametrize(
    ("stack_cluster", "workers_see_spool"), [(None, True), (DRIVER_TMP, False)], indirect=["stack_cluster"]
)
def test_a_clusters_workers_read_the_spool_only_where_they_can(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stack_cluster: str, workers_see_spool: bool
) -> None:
    """Workers of another cluster on this host read the driver's spool file (the upload is read
    from the store once, as with a local cluster); workers that cannot see it (here: the driver's
    temporary folder hidden from them) read the object from the store, with the same result."""
    if not workers_see_spool and not _can_hide_folders():
        pytest.skip("this machine does not allow private mount namespaces (unshare --mount)")
    DRIVER_TMP.mkdir(exist_ok=True)
    monkeypatch.setattr(raw.tempfile, "tempdir", str(DRIVER_TMP))
    monkeypatch.setattr(raw, "memory_at_hand", lambda: 0)  # the spool in the temporary folder, not /dev/shm
    name = "seen" if workers_see_spool else "hidden"
    settings = lake_settings(server, tmp_path, name).model_copy(update={"dask_address": stack_cluster})
    lake = Lake(settings)
    path = write_sample(tmp_path / f"{name}.h5ad", cells=1024, genes=800, seed=44)
    lake.put(path, f"incoming/{name}.h5ad")
    size = path.stat().st_size
    with Transfers(server, tmp_path) as log:
        result = ingest(settings, lake.url(f"incoming/{name}.h5ad"))
    read = log.bytes_read(f"lake/{name}/incoming/{name}.h5ad")
    if workers_see_spool:
        assert read == 2 * size  # the hash pass's stream and the raw copy's server-side read
    else:
        assert read > 2 * size  # the part tasks read the object too
    back = open_dataset(lake, result.dataset_id).to_anndata()
    assert result.n_parts == 4 and (back.X != ad.read_h5ad(path).X).nnz == 0
    assert own_spool_files() == []
