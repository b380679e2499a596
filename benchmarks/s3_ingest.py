"""Benchmark: ingest from and into an S3 lake (``rclone serve s3`` over a local folder).

The same synthetic sample as ``benchmarks/ingest.py`` (``sclake sample``) is uploaded to
an S3 server started here. The ingest commands are alternated ``--repeats`` times on the
same server, and the reads repeated as often:

* **Ingest**: ``sclake ingest s3://…/incoming/x.h5ad --json`` into an ``s3://`` lake (one
  read of the upload that hashes it into a local spool file, server-side raw copy and its
  verification, conversion by the local Dask cluster from the spool, publish), against
  plain anndata reading the same object through s3fs (``read_h5ad(fs.open(…))``) and
  writing Zarr v3 to the same server (``write_zarr(FsspecStore)``). Whole commands, started
  fresh; wall seconds (median and every run), cells/s and their ratio, peak RSS of each
  command's process tree, the CPU seconds of the command's processes and of the S3
  server during the command, the bytes the server moved (its ``core/stats``: reads,
  writes and copies), and the load average before each run.
* **Ingest on the stack's cluster**: the same ``sclake ingest`` with ``SCLAKE_DASK_ADDRESS``
  set to a Dask scheduler and workers of the embedded stack (``pipelines.stack.dask``'s
  services, started once before the runs, in a folder of their own), as the stack's
  Airflow tasks run it: no cluster is started per command. The cluster's processes are
  not in the command's process tree, so their CPU seconds and their largest summed RSS
  during each command are recorded beside it (``cluster_cpu_seconds``,
  ``cluster_peak_rss_bytes``).
* **Identity pass**: the upload's SHA-256 and XXH3 with its bytes spooled to a local file,
  as an ingest's first step does (``raw.fingerprint``: ranged GETs of 8 MiB made ahead of
  the hash by ``S3Stream``'s threads), against one GET whose answer a thread reads 8 MiB
  at a time ahead of the hash; seconds and the S3 server's CPU seconds, alternated.
* **Reads**: the source's counts read in part-sized row blocks by h5py in this process,
  through an s3fs file (fsspec's read-ahead, requests made by fsspec's I/O thread) and
  through sclake's ``S3RangeFile`` (ranged GETs in the calling thread; see
  ``docs/ingest.md``, "Remote sources and h5py's lock").

The rclone server shares the machine's cores with the commands it serves, so these
figures are lower than a separate object store would give. The result goes to
``benchmarks/results/s3_ingest.json``.

Usage::

    .venv/bin/python benchmarks/s3_ingest.py [--cells 50000] [--genes 20000] [--repeats 3] [--workdir /tmp/sclake-bench]
        [--no-stack-cluster]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import Measured, gib, run_measured, write_result  # noqa: E402
from benchmarks.ingest import make_sample  # noqa: E402

BIN = Path(sys.executable).parent
BUCKET = "lake"
ANNDATA_CODE = """
import sys, anndata as ad, s3fs, zarr
from zarr.storage import FsspecStore
endpoint, key, secret, src, dst = sys.argv[1:6]
opts = dict(key=key, secret=secret, endpoint_url=endpoint,
            config_kwargs={"request_checksum_calculation": "when_required",
                           "response_checksum_validation": "when_required"})
fs = s3fs.S3FileSystem(**opts)
with fs.open(src, "rb", block_size=8 << 20) as f:
    adata = ad.read_h5ad(f)
ad.settings.zarr_write_format = 3
adata.write_zarr(FsspecStore.from_url("s3://" + dst, storage_options=opts))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``rclone serve s3`` over ``root`` with a random key pair, bucket ``lake`` created."""

    def __init__(self, root: Path) -> None:
        shutil.rmtree(root, ignore_errors=True)
        (root / BUCKET).mkdir(parents=True)
        port, rc_port = free_port(), free_port()
        self.key, self.secret = "bench" + secrets.token_hex(6), secrets.token_hex(20)
        self.endpoint = f"http://127.0.0.1:{port}"
        self.rc = f"http://127.0.0.1:{rc_port}"  # rclone's remote control: transfer statistics
        self.root = root
        self.proc = subprocess.Popen(
            [str(BIN / "rclone"), "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}"]
            + ["--auth-key", f"{self.key},{self.secret}"]
            + ["--rc", "--rc-addr", f"127.0.0.1:{rc_port}", "--rc-no-auth"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("rclone serve s3 did not start") from None
                time.sleep(0.1)

    def counters(self) -> tuple[float, int]:
        """(CPU seconds of the server process, bytes it has moved: reads, writes and copies)."""
        t = psutil.Process(self.proc.pid).cpu_times()
        req = urllib.request.Request(f"{self.rc}/core/stats", data=b"{}", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            moved = int(json.load(r)["bytes"])
        return t.user + t.system, moved

    def settings(self, prefix: str):
        from pipelines.settings import Settings

        return Settings(
            home=self.root.parent / "s3-bench-home",
            lake_uri=f"s3://{BUCKET}/{prefix}",
            s3_endpoint_url=self.endpoint,
            s3_access_key=self.key,
            s3_secret_key=self.secret,
            pushgateway_url=None,
        )

    def env(self, prefix: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCLAKE_")}
        env.update(
            SCLAKE_LAKE_URI=f"s3://{BUCKET}/{prefix}",
            SCLAKE_HOME=str(self.root.parent / "s3-bench-home"),
            SCLAKE_S3_ENDPOINT_URL=self.endpoint,
            SCLAKE_S3_ACCESS_KEY=self.key,
            SCLAKE_S3_SECRET_KEY=self.secret,
        )
        return env

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class StackCluster:
    """The embedded stack's Dask scheduler and CPU workers, started as its services are (own
    folder, own process groups), for the commands to use through ``SCLAKE_DASK_ADDRESS``."""

    def __init__(self, home: Path) -> None:
        from pipelines.settings import Settings
        from pipelines.stack.dask import WORKER, scheduler_address, scheduler_service, worker_service, worker_sizing
        from pipelines.stack.process import ProcessManager

        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        settings = Settings(home=home, stack_dask_scheduler_port=free_port(), stack_dask_dashboard_port=free_port())
        n, memory = worker_sizing(settings, gpus=0)
        self.services = [scheduler_service(settings), worker_service(settings, WORKER, n, memory)]
        self.address = scheduler_address(settings)
        self.workers = n
        self.pm = ProcessManager(home)
        saved = dict(os.environ)
        for key in [k for k in os.environ if k.startswith(("SCLAKE_", "DASK_"))]:
            del os.environ[key]  # the services get the stack's settings only, not this process's
        try:
            for svc in self.services:
                self.pm.start(svc)
        except BaseException:
            self.close()
            raise
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def processes(self) -> list[psutil.Process]:
        out = []
        for svc in self.services:
            pid = self.pm.pid(svc.name)
            if pid is None:
                continue
            try:
                root = psutil.Process(pid)
                out += [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
        return out

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system
        return total

    def rss_bytes(self) -> int:
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def close(self) -> None:
        for svc in reversed(self.services):
            self.pm.stop(svc.name)


def run_sclake(server: Server, sample: Path, i: int, cluster: StackCluster | None = None) -> tuple[Measured, dict]:
    from pipelines.lake import Lake

    prefix = f"sclake-{'stack-' if cluster else ''}{i}"
    lake = Lake(server.settings(prefix))
    lake.put(sample, "incoming/x.h5ad")
    os.sync()
    env = server.env(prefix)
    if cluster is not None:
        env["SCLAKE_DASK_ADDRESS"] = cluster.address
    m, extra = measured(server, [str(BIN / "sclake"), "ingest", lake.url("incoming/x.h5ad"), "--json"], env, cluster)
    if m.returncode != 0:
        raise SystemExit(f"sclake ingest failed:\n{m.stderr[-4000:]}")
    shutil.rmtree(server.root / BUCKET / prefix, ignore_errors=True)
    return m, {**extra, "timings": json.loads(m.stdout).get("timings", {})}  # sclake's split: hash, raw_copy, convert


def run_anndata(server: Server, sample: Path, i: int) -> tuple[Measured, dict]:
    from pipelines.lake import Lake

    prefix = f"anndata-{i}"
    Lake(server.settings(prefix)).put(sample, "x.h5ad")
    os.sync()
    m, extra = measured(
        server,
        [sys.executable, "-c", ANNDATA_CODE, server.endpoint, server.key, server.secret]
        + [f"{BUCKET}/{prefix}/x.h5ad", f"{BUCKET}/{prefix}/out.zarr"],
    )
    if m.returncode != 0:
        raise SystemExit(f"anndata failed:\n{m.stderr[-4000:]}")
    shutil.rmtree(server.root / BUCKET / prefix, ignore_errors=True)
    return m, extra


def measured(
    server: Server, cmd: list[str], env: dict[str, str] | None = None, cluster: StackCluster | None = None
) -> tuple[Measured, dict]:
    """Run ``cmd``; besides :func:`run_measured`'s figures, the load average before it, what
    the S3 server spent on it (its CPU seconds and the bytes it moved) and, with ``cluster``,
    the cluster's CPU seconds and largest summed RSS meanwhile."""
    load = [round(x, 2) for x in os.getloadavg()]
    cpu0, moved0 = server.counters()
    if cluster is None:
        m = run_measured(cmd, env=env)
    else:
        cluster_cpu0, peak = cluster.cpu_seconds(), [cluster.rss_bytes()]
        stop = threading.Event()

        def sample_cluster() -> None:
            while not stop.wait(0.05):
                peak[0] = max(peak[0], cluster.rss_bytes())

        sampler = threading.Thread(target=sample_cluster, daemon=True)
        sampler.start()
        try:
            m = run_measured(cmd, env=env)
        finally:
            stop.set()
            sampler.join()
    cpu1, moved1 = server.counters()
    extra = {
        "load_average_before": load,
        "cpu_seconds": round(m.cpu_seconds, 2),
        "server_cpu_seconds": round(cpu1 - cpu0, 2),
        "server_bytes_moved": moved1 - moved0,
    }
    if cluster is not None:
        extra["cluster_cpu_seconds"] = round(cluster.cpu_seconds() - cluster_cpu0, 2)
        extra["cluster_peak_rss_bytes"] = peak[0]
    return m, extra


def reads(server: Server, sample: Path, repeats: int) -> dict:
    """Seconds to read every row of the counts in part-sized blocks, per reader."""
    import h5py
    from fsspec.core import url_to_fs

    from pipelines.ingest.remote import S3RangeFile
    from pipelines.ingest.source import READ_BLOCK_BYTES, inspect_source, read_csr_rows
    from pipelines.lake import Lake

    lake = Lake(server.settings("reads"))
    lake.put(sample, "x.h5ad")
    url, opts = lake.url("x.h5ad"), lake.storage_options
    spec = inspect_source(url, opts)
    block = -(-spec.n_obs // 4)

    def fsspec_file():
        fs, path = url_to_fs(url, **opts)
        return fs.open(path, "rb", block_size=READ_BLOCK_BYTES)

    openers = {"fsspec": fsspec_file, "sclake": lambda: S3RangeFile(url, opts, block_size=READ_BLOCK_BYTES)}
    seconds: dict[str, list[float]] = {name: [] for name in openers}
    for _ in range(repeats):
        for name, opener in openers.items():
            t = time.perf_counter()
            with opener() as fobj, h5py.File(fobj, "r") as f:
                for a in range(0, spec.n_obs, block):
                    read_csr_rows(f, spec, a, min(a + block, spec.n_obs))
            seconds[name].append(round(time.perf_counter() - t, 2))
    out = {
        name: {
            "seconds": statistics.median(s),
            "seconds_runs": s,
            "cells_per_second": round(spec.n_obs / statistics.median(s), 1),
        }
        for name, s in seconds.items()
    }
    out["speedup"] = round(out["fsspec"]["seconds"] / out["sclake"]["seconds"], 2)
    return out


def _one_get_digests(lake, url: str, out: Path) -> str:
    """The identity pass as one GET: a thread reads the answer 8 MiB at a time, up to 4
    blocks ahead of the SHA-256 and XXH3 of the blocks, which are also written to ``out``."""
    import hashlib
    import queue

    import xxhash

    from pipelines.ingest.remote import s3_client, split_s3_url
    from pipelines.lake import HASH_BLOCK

    bucket, key = split_s3_url(url)
    body = s3_client(lake.storage_options).get_object(Bucket=bucket, Key=key)["Body"]
    closing = contextlib.closing(body)
    blocks: queue.Queue[bytes] = queue.Queue(4)

    def read() -> None:
        while block := body.read(HASH_BLOCK):
            blocks.put(block)
        blocks.put(b"")

    reader = threading.Thread(target=read)
    reader.start()
    sha, xxh = hashlib.sha256(), xxhash.xxh3_128()
    with closing, open(out, "wb") as f:
        while block := blocks.get():
            sha.update(block)
            xxh.update(block)
            f.write(block)
    reader.join()
    return sha.hexdigest()


def hash_passes(server: Server, sample: Path, repeats: int) -> dict:
    """The identity pass over the upload (SHA-256, XXH3, the spool file in /dev/shm or the
    temporary folder), alternated: sclake's (``raw.fingerprint``: ranged GETs of 8 MiB by
    ``S3Stream``'s threads) and one GET read 8 MiB at a time; seconds and the server's CPU."""
    import hashlib
    import tempfile

    from pipelines.ingest import raw
    from pipelines.lake import Lake

    lake = Lake(server.settings("hash"))
    lake.put(sample, "incoming/x.h5ad")
    up = raw.resolve_upload(lake, lake.url("incoming/x.h5ad"))
    spool = Path("/dev/shm" if Path("/dev/shm").is_dir() else tempfile.gettempdir()) / f"sclake-bench-{os.getpid()}"
    with open(sample, "rb") as f:
        want = hashlib.file_digest(f, "sha256").hexdigest()
    passes = {
        "ranged_gets": lambda: raw.fingerprint(lake, up, spool).sha256,
        "one_get": lambda: _one_get_digests(lake, lake.url("incoming/x.h5ad"), spool),
    }
    runs: dict[str, dict[str, list[float]]] = {name: {"seconds": [], "server_cpu_seconds": []} for name in passes}
    try:
        for _ in range(repeats):
            for name, run in passes.items():
                cpu0, _ = server.counters()
                t = time.perf_counter()
                if run() != want:
                    raise SystemExit(f"the {name} pass hashed other bytes than the sample's")
                runs[name]["seconds"].append(round(time.perf_counter() - t, 2))
                runs[name]["server_cpu_seconds"].append(round(server.counters()[0] - cpu0, 2))
    finally:
        spool.unlink(missing_ok=True)
    out: dict = {
        name: {
            "seconds": statistics.median(r["seconds"]),
            "seconds_runs": r["seconds"],
            "server_cpu_seconds": statistics.median(r["server_cpu_seconds"]),
            "server_cpu_seconds_runs": r["server_cpu_seconds"],
        }
        for name, r in runs.items()
    }
    out["speedup"] = round(out["one_get"]["seconds"] / out["ranged_gets"]["seconds"], 2)
    return out


def side(runs: list[tuple[Measured, dict]], cells: int) -> dict:
    seconds = [m.seconds for m, _ in runs]
    median = statistics.median(seconds)
    out = {
        "seconds": round(median, 2),
        "cells_per_second": round(cells / median, 1),
        "seconds_runs": [round(x, 2) for x in seconds],
        "peak_rss_tree_bytes": max(m.peak_rss_tree_bytes for m, _ in runs),
    }
    for key in ("cpu_seconds", "server_cpu_seconds", "server_bytes_moved", "cluster_cpu_seconds"):
        if key in runs[0][1]:
            out[key] = statistics.median(extra[key] for _, extra in runs)
    if "cluster_peak_rss_bytes" in runs[0][1]:
        out["cluster_peak_rss_bytes"] = max(extra["cluster_peak_rss_bytes"] for _, extra in runs)
    out["load_average_before_runs"] = [extra["load_average_before"] for _, extra in runs]
    if any("timings" in extra for _, extra in runs):
        out["timings_runs"] = [extra["timings"] for _, extra in runs]
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=50_000)
    p.add_argument("--genes", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/sclake-bench"))
    p.add_argument(
        "--no-stack-cluster",
        dest="stack_cluster",
        action="store_false",
        help="skip the runs on the embedded stack's Dask cluster",
    )
    return p.parse_args()


def ingest_runs(server: Server, sample: Path, args: argparse.Namespace) -> dict[str, list[tuple[Measured, dict]]]:
    """Each side once per repeat, alternated, on one server; the stack's cluster started first."""
    cluster = StackCluster(args.workdir / "stack-cluster-home") if args.stack_cluster else None
    sides = {"sclake": run_sclake}
    if cluster is not None:
        print(f"stack cluster: {cluster.address}, {cluster.workers} worker(s)", flush=True)
        sides["sclake_stack_cluster"] = functools.partial(run_sclake, cluster=cluster)
    sides["anndata"] = run_anndata
    runs: dict[str, list[tuple[Measured, dict]]] = {name: [] for name in sides}
    try:
        for i in range(args.repeats):
            for name, func in sides.items():
                m, extra = func(server, sample, i)
                runs[name].append((m, extra))
                cluster_cpu = f" + cluster {extra['cluster_cpu_seconds']} s" if "cluster_cpu_seconds" in extra else ""
                print(
                    f"{name} run {i + 1}: {m.seconds:.2f} s, peak RSS {gib(m.peak_rss_tree_bytes)}, "
                    f"CPU {extra['cpu_seconds']} s + server {extra['server_cpu_seconds']} s{cluster_cpu}, "
                    f"load {extra['load_average_before']}",
                    flush=True,
                )
    finally:
        if cluster is not None:
            cluster.close()
    return runs


def main() -> None:
    args = parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    sample, _ = make_sample(args.workdir, args.cells, args.genes)
    server = Server(args.workdir / "s3-bench")
    try:
        print(f"reading {sample.name} from {server.endpoint} ...", flush=True)
        read_result = reads(server, sample, args.repeats)
        print(json.dumps(read_result), flush=True)
        hash_result = hash_passes(server, sample, args.repeats)
        print(json.dumps(hash_result), flush=True)
        runs = ingest_runs(server, sample, args)
    finally:
        server.close()
        shutil.rmtree(server.root, ignore_errors=True)
    ingest = {name: side(r, args.cells) for name, r in runs.items()}
    for name in [n for n in ingest if n.startswith("sclake")]:
        ratio = ingest[name]["cells_per_second"] / ingest["anndata"]["cells_per_second"]
        ingest["throughput_ratio" + name.removeprefix("sclake")] = round(ratio, 2)
    result = {
        "benchmark": "S3 lake on rclone serve s3: sclake ingest vs anndata read_h5ad(s3fs) + write_zarr(FsspecStore)",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "file": {"name": sample.name, "bytes": sample.stat().st_size, "cells": args.cells, "genes": args.genes},
        "repeats": args.repeats,
        "ingest": ingest,
        "reads": read_result,
        "hash_pass": hash_result,
    }
    path = write_result("s3_ingest", result)
    print(json.dumps(result["ingest"], indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
