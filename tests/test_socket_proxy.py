"""The compose stack's Docker socket proxy: the repository's haproxy.cfg, run by a real HAProxy
in front of the real Docker engine.

Only the listening addresses are changed (free ports on 127.0.0.1, a temporary path for the
read-only socket). A step container as the StepDockerOperator creates it passes; every body
that asks for more (privileges, host namespaces, capabilities, host paths, devices, another
image, or the same under another spelling) gets 403 and creates nothing.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from pipelines import deploy
from tests.docker_support import require_docker

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[1]
PROXY_CFG = ROOT / "compose" / "docker-socket-proxy" / "haproxy.cfg"
RO_SOCKET = "/run/docker-read-only/docker.sock"
API = "/v1.41"  # the oldest API the engines here and in CI speak; docker-py negotiates the same
TEST_LABEL = "io.sclake.test-run"


def _haproxy() -> str:
    exe = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if exe is None:
        message = "haproxy is not installed (Debian package haproxy)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, check=check)


def local_config(text: str, port: int, ro_socket: Path) -> str:
    """haproxy.cfg with only its listening addresses moved (the Docker socket stays the real one)."""
    for needed in ("server docker /var/run/docker.sock", "bind :2375", f"bind {RO_SOCKET} "):
        assert text.count(needed) == 1, needed
    return text.replace("bind :2375", f"bind 127.0.0.1:{port}").replace(f"bind {RO_SOCKET} ", f"bind {ro_socket} ")


class Proxy:
    def __init__(self, port: int, ro_socket: Path, log: Path) -> None:
        self.port, self.ro_socket, self.log = port, ro_socket, log

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            r.read()
            return r.status
        finally:
            conn.close()

    def create(self, body: bytes, content_type: str = "application/json") -> int:
        return self.request("POST", f"{API}/containers/create", body, {"Content-Type": content_type})

    def read_only(self, method: str, path: str) -> int:
        conn = _UnixHTTPConnection(str(self.ro_socket))
        try:
            conn.request(method, path)
            r = conn.getresponse()
            r.read()
            return r.status
        finally:
            conn.close()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self._path)


def test_config_is_valid_for_haproxy(tmp_path: Path) -> None:
    """`haproxy -c` accepts the file as it is shipped (paths moved only so that it can bind here)."""
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(local_config(PROXY_CFG.read_text(), _free_port(), tmp_path / "ro.sock"))
    r = subprocess.run([_haproxy(), "-c", "-f", str(cfg)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory):
    haproxy = _haproxy()
    require_docker()
    work = tmp_path_factory.mktemp("socket-proxy")
    port = _free_port()
    ro_socket = work / "ro.sock"
    cfg = work / "haproxy.cfg"
    cfg.write_text(local_config(PROXY_CFG.read_text(), port, ro_socket))
    log = work / "haproxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                if ro_socket.exists():
                    break
            except OSError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "HAProxy did not listen within 15 s:\n" + log.read_text()
            time.sleep(0.1)
        yield Proxy(port, ro_socket, log)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def worker_image(tmp_path_factory: pytest.TempPathFactory):
    """A tiny image under a worker-image name of its own (imported from a one-file tar), removed afterwards."""
    require_docker()
    tag = f"sclake-worker:proxy-test-{uuid.uuid4().hex[:10]}"
    tar = tmp_path_factory.mktemp("image") / "rootfs.tar"
    marker = tar.with_name("README")
    marker.write_text("an image for tests/test_socket_proxy.py: nothing runs in it\n")
    with tarfile.open(tar, "w") as t:
        t.add(marker, arcname="README")
    _docker("import", "--change", f"LABEL {TEST_LABEL}=image", str(tar), tag)
    try:
        yield tag
    finally:
        _docker("rmi", tag, check=False)


@pytest.fixture(scope="module")
def stack_names():
    """The compose stack's network and volumes, which a step's create names: made if missing, and
    only what was made here is removed again (a compose stack may be using the engine too)."""
    require_docker()
    made_network = _docker("network", "inspect", deploy.NETWORK, check=False).returncode != 0
    if made_network:
        _docker("network", "create", "--label", f"{TEST_LABEL}=network", deploy.NETWORK)
    volumes = [volume for volume, _ in deploy.STEP_MOUNTS]
    missing = [v for v in volumes if _docker("volume", "inspect", v, check=False).returncode != 0]
    try:
        yield
    finally:
        for v in missing:
            _docker("volume", "rm", v, check=False)
        if made_network:
            _docker("network", "rm", deploy.NETWORK, check=False)


def _containers(run: str) -> list[str]:
    return _docker("ps", "-aq", "--filter", f"label={TEST_LABEL}={run}").stdout.split()


def _remove_containers(run: str) -> None:
    for cid in _containers(run):
        _docker("rm", "-f", cid, check=False)


def step_body(image: str, run: str, *, gpus: int = 1, command: list[str] | None = None) -> dict:
    """The create body docker-py sends for a step container (the DockerOperator's arguments from
    pipelines/deploy.py and a profile's limits), as a dict: tests alter it, then send it."""
    from docker import APIClient
    from pipelines.settings import Settings

    settings = Settings(
        docker_stack="compose",
        worker_image=image,
        lake_uri="s3://lake",
        s3_endpoint_url="http://minio:9000",
        s3_access_key="sclake",
        s3_secret_key="secret",
        pushgateway_url=None,
    )
    kwargs = deploy.docker_operator_kwargs(settings, gpus=gpus)
    cli = APIClient(base_url="tcp://127.0.0.1:1", version="1.41")  # builds the body only: no request
    host_config = cli.create_host_config(
        auto_remove=False,
        mounts=kwargs["mounts"],
        network_mode=kwargs["network_mode"],
        shm_size=1 << 30,
        cpu_shares=1024,
        mem_limit=6 << 30,
        nano_cpus=1_000_000_000,
        device_requests=kwargs["device_requests"],
    )
    config = cli.create_container_config(
        image=kwargs["image"],
        command=command or ["sclake", "step", "embed", "--manifest", json.dumps({"dataset_id": "0123456789abcdef"})],
        environment={**kwargs["environment"], **kwargs["private_environment"]},
        host_config=host_config,
        labels={"io.sclake.step": "embed", "io.sclake.profile": "gf-12L-40M-i2048", TEST_LABEL: run},
    )
    return {k: v for k, v in config.items() if v is not None}  # as docker-py's _post_json sends it


def encode(body: dict, **dumps) -> bytes:
    return json.dumps(body, **dumps).encode()


# ---------------------------------------------------------------- what passes


def test_step_operator_runs_through_the_proxy(proxy: Proxy, worker_image: str, stack_names, monkeypatch) -> None:
    """The StepDockerOperator itself (a GPU profile), through the proxy: image lookup, create (201),
    attach, start, inspect and remove all pass. The start fails inside Docker (no GPU here, and the
    test image holds no `sclake`), not at the proxy; the operator removes the container as always."""
    from docker.errors import APIError

    from pipelines.orchestration.containers import docker_operator
    from pipelines.profiles import get_profile

    run = uuid.uuid4().hex
    env = {
        "SCLAKE_DOCKER_STACK": "compose",
        "SCLAKE_DOCKER_URL": f"tcp://127.0.0.1:{proxy.port}",
        "SCLAKE_WORKER_IMAGE": worker_image,
        "SCLAKE_LAKE_URI": "s3://lake",
        "SCLAKE_S3_ENDPOINT_URL": "http://minio:9000",
        "SCLAKE_S3_ACCESS_KEY": "sclake",
        "SCLAKE_S3_SECRET_KEY": "secret",
        "SCLAKE_PUSHGATEWAY_URL": "",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    op = docker_operator(
        "embed",
        ["sclake", "step", "embed", "--set", "key=incoming/données.h5ad"],
        profile=get_profile("gf-12L-40M-i2048"),
    )
    op.labels[TEST_LABEL] = run  # to find what it might leave behind
    op.cpus = 1.0  # the profile's 4 CPUs: more than a small test machine has (Docker refuses the create)
    log_before = proxy.log.stat().st_size
    try:
        with pytest.raises(APIError) as err:
            op.execute({})
        # Docker's own refusal to start (no GPU driver here, or no `sclake` in the image), not the proxy's.
        assert err.value.response.status_code != 403, err.value
        assert "/start" in str(err.value), err.value
        log = proxy.log.read_bytes()[log_before:].decode(errors="replace")
        creates = [line for line in log.splitlines() if "/containers/create" in line]
        assert creates and all(" 201 " in line for line in creates), log
        assert _containers(run) == [], "the operator removes its container"
    finally:
        _remove_containers(run)


def test_step_create_is_allowed(proxy: Proxy, worker_image: str, stack_names) -> None:
    run = uuid.uuid4().hex
    try:
        for gpus in (0, 1):
            assert proxy.create(encode(step_body(worker_image, run, gpus=gpus))) == 201
        # Any JSON whitespace between tokens, as Go's decoder accepts it.
        assert proxy.create(encode(step_body(worker_image, run), indent="\t")) == 201
        assert proxy.create(encode(step_body(worker_image, run), separators=(" ,\r\n", " :  "))) == 201
        # Non-ASCII arguments (docker-py escapes them as \\u00e9) pass: they sit in free strings.
        body = step_body(worker_image, run, command=["sclake", "step", "ingest_upload", "--set", "key=données.h5ad"])
        assert b"\\u00e9" in encode(body)
        assert proxy.create(encode(body)) == 201
        assert len(_containers(run)) == 5
    finally:
        _remove_containers(run)


# ---------------------------------------------------------------- what is refused


def _hc(**extra) -> callable:
    def change(body: dict) -> None:
        body["HostConfig"].update(extra)

    return change


def _top(**extra) -> callable:
    def change(body: dict) -> None:
        body.update(extra)

    return change


def _mount(**fields) -> callable:
    def change(body: dict) -> None:
        body["HostConfig"]["Mounts"].append({"Target": "/host", "Source": "sclake-data", "Type": "volume", **fields})

    return change


def _device_request(**fields) -> callable:
    def change(body: dict) -> None:
        body["HostConfig"]["DeviceRequests"][0].update(fields)

    return change


REFUSED_CHANGES = {
    "privileged": _hc(Privileged=True),
    "host network": _hc(NetworkMode="host"),
    "another container's network": _hc(NetworkMode="container:postgres"),
    "host pid": _hc(PidMode="host"),
    "host ipc": _hc(IpcMode="host"),
    "host user namespace": _hc(UsernsMode="host"),
    "host uts": _hc(UTSMode="host"),
    "cap add": _hc(CapAdd=["SYS_ADMIN"]),
    "capabilities": _hc(Capabilities=["CAP_SYS_ADMIN"]),
    "security opt": _hc(SecurityOpt=["seccomp=unconfined"]),
    "binds": _hc(Binds=["/:/host"]),
    "bind mount of /": _mount(Type="bind", Source="/"),
    "tmpfs mount": _mount(Type="tmpfs", Source=""),
    "another volume": _mount(Source="postgres-data"),
    "volume with driver options": _mount(VolumeOptions={"DriverConfig": {"Name": "local", "Options": {"o": "bind"}}}),
    "devices": _hc(Devices=[{"PathOnHost": "/dev/sda", "PathInContainer": "/dev/sda", "CgroupPermissions": "rwm"}]),
    "device request of another driver": _device_request(Driver="cdi"),
    "device request with options": _device_request(Options={"x": "y"}),
    "device request for other capabilities": _device_request(Capabilities=[["gpu", "display"]]),
    "device ids": _device_request(DeviceIDs=["0"]),
    "unknown image": _top(Image="alpine:3.20"),
    "worker image from a registry": _top(Image="registry.example/sclake-worker:0.1.0-cpu"),
    "ports": _hc(PortBindings={"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}),
    "runtime": _hc(Runtime="runc"),
    "cgroup parent": _hc(CgroupParent="/"),
    "volumes from": _hc(VolumesFrom=["postgres"]),
}


@pytest.mark.parametrize("change", REFUSED_CHANGES.values(), ids=REFUSED_CHANGES.keys())
def test_create_asking_for_more_is_refused(proxy: Proxy, worker_image: str, stack_names, change) -> None:
    run = uuid.uuid4().hex
    body = step_body(worker_image, run)
    change(body)
    try:
        assert proxy.create(encode(body)) == 403
        assert _containers(run) == []
    finally:
        _remove_containers(run)


def _raw(text: str) -> callable:
    """A body spelled by hand: `{base}` is the allowed step body without its closing brace."""

    def make(base: bytes) -> bytes:
        return text.replace("{base}", base.decode()[:-1]).encode()

    return make


REFUSED_SPELLINGS = {
    # Go matches field names case-insensitively, decodes escapes, lets the last duplicate win.
    "lowercase privileged": _raw('{base}, "privileged": true}'),
    "lowercase in HostConfig": _raw('{base}, "hostconfig": {"privileged": true}}'),
    "whitespace around a refused field": _raw('{base}, "Privileged"  \n:\t true}'),
    "whitespace around a checked value": _raw('{base}, "HostConfig" : {"NetworkMode"\r\n :\t"host"}}'),
    "escaped key": _raw('{base}, "HostConfig": {"Privil\\u0065ged": true}}'),
    "escaped value": _raw('{base}, "HostConfig": {"NetworkMode": "\\u0068ost"}}'),
    "escaped backslash before escape": _raw('{base}, "HostConfig": {"NetworkMode": "\\\\\\u0068ost"}}'),
    "key folded from non-ASCII": _raw('{base}, "HostConfig": {"\u017fecurityOpt": ["seccomp=unconfined"]}}'),
    "duplicate key, last wins": _raw('{base}, "Image": "alpine:3.20"}'),
    "duplicate network mode": _raw('{base}, "HostConfig": {"NetworkMode": "host"}}'),
}


@pytest.mark.parametrize("make", REFUSED_SPELLINGS.values(), ids=REFUSED_SPELLINGS.keys())
def test_create_spelled_otherwise_is_refused(proxy: Proxy, worker_image: str, stack_names, make) -> None:
    run = uuid.uuid4().hex
    try:
        assert proxy.create(make(encode(step_body(worker_image, run)))) == 403
        assert _containers(run) == []
    finally:
        _remove_containers(run)


def test_create_without_json_or_whole_body_is_refused(proxy: Proxy, worker_image: str, stack_names) -> None:
    run = uuid.uuid4().hex
    body = encode(step_body(worker_image, run))
    try:
        assert proxy.create(body, content_type="text/plain") == 403
        assert proxy.create(body, content_type="") == 403
        # Larger than HAProxy buffers whole: a truncated body could hide a field past its end.
        big = step_body(worker_image, run)
        big["Env"].append("PAD=" + "x" * 20000)
        assert proxy.create(encode(big)) == 403
        # Chunked and compressed bodies are not checked: refused.
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        conn.request(
            "POST",
            f"{API}/containers/create",
            body=iter([body[:100], body[100:]]),
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        assert conn.getresponse().status == 403
        conn.close()
        headers = {"Content-Type": "application/json", "Content-Encoding": "identity"}
        assert proxy.request("POST", f"{API}/containers/create", body, headers) == 403
        # No body at all: no image, refused.
        assert proxy.create(b"") == 403
        assert _containers(run) == []
    finally:
        _remove_containers(run)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/containers/{id}/exec"),
        ("POST", "/exec/{id}/start"),
        ("POST", "/build"),
        ("POST", "/commit?container={id}"),
        ("GET", "/containers/{id}/archive?path=/"),
        ("PUT", "/containers/{id}/archive?path=/"),
        ("POST", "/containers/{id}/update"),
        ("POST", "/volumes/create"),
        ("POST", "/networks/create"),
        ("GET", "/info"),
        ("GET", "/containers/json"),
    ],
)
def test_other_endpoints_are_refused(proxy: Proxy, worker_image: str, stack_names, method: str, path: str) -> None:
    run = uuid.uuid4().hex
    try:
        assert proxy.create(encode(step_body(worker_image, run))) == 201
        (cid,) = _containers(run)
        assert proxy.request(method, API + path.format(id=cid), b"{}", {"Content-Type": "application/json"}) == 403
    finally:
        _remove_containers(run)


# ---------------------------------------------------------------- the read-only socket (cAdvisor)


def test_read_only_socket_reads_only(proxy: Proxy, worker_image: str, stack_names) -> None:
    run = uuid.uuid4().hex
    try:
        assert proxy.create(encode(step_body(worker_image, run))) == 201
        (cid,) = _containers(run)
        for path in ("/_ping", f"{API}/_ping", f"{API}/version", f"{API}/info", f"{API}/containers/json"):
            assert proxy.read_only("GET", path) == 200, path
        assert proxy.read_only("GET", f"{API}/images/json") == 200
        assert proxy.read_only("GET", f"{API}/containers/{cid}/json") == 200
        assert proxy.read_only("HEAD", "/_ping") == 200
        refused = [
            ("POST", f"{API}/containers/create"),
            ("POST", f"{API}/containers/{cid}/start"),
            ("POST", f"{API}/containers/{cid}/exec"),
            ("DELETE", f"{API}/containers/{cid}"),
            ("GET", f"{API}/containers/{cid}/logs?stdout=1"),
            ("GET", f"{API}/containers/{cid}/archive?path=/"),
            ("POST", f"{API}/images/create?fromImage=alpine"),
            ("GET", f"{API}/volumes"),
        ]
        for method, path in refused:
            assert proxy.read_only(method, path) == 403, (method, path)
        assert _containers(run) == [cid], "the refused DELETE removed nothing"
    finally:
        _remove_containers(run)
