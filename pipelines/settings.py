"""One typed settings object for every step (prefix ``SCLAKE_``).

Values come, in order of precedence, from keyword arguments, the process environment,
a ``.env`` file in the working directory (for the CLI only: Airflow's DAG parsing and tasks
read no file that depends on where their process was started), and
``$SCLAKE_HOME/stack.env`` (written by ``sclake stack up`` with the embedded services'
endpoints and generated credentials).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SCLAKE_"


def default_home() -> Path:
    """``$SCLAKE_HOME`` or ``./.sclake``, absolute."""
    return Path(os.environ.get(f"{ENV_PREFIX}HOME", ".sclake")).expanduser().resolve()


class Settings(BaseSettings):
    """Configuration of sclake. Every field maps to the environment variable ``SCLAKE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    home: Path = Field(default_factory=default_home, description="Where the embedded stack keeps its state.")
    lake_uri: str = Field(
        default="s3://lake",
        description="Root of the lake: `s3://bucket[/prefix]` or `file:///abs/path` (a plain path is accepted).",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint (MinIO, the embedded rclone server); empty: AWS defaults."
    )
    s3_access_key: str | None = Field(default=None, description="S3 access key id.")
    s3_secret_key: str | None = Field(default=None, description="S3 secret access key.")
    s3_region: str = Field(default="us-east-1", description="S3 region name sent with requests.")
    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking server; empty: a local store under `$SCLAKE_HOME/mlflow`."
    )
    dask_address: str | None = Field(
        default=None,
        description=(
            "Dask scheduler address (`tcp://host:port`; `sclake stack up` sets it to the embedded scheduler's);"
            " empty: a LocalCluster of worker processes per step."
        ),
    )
    dask_workers: int = Field(default=2, ge=1, description="Worker processes of the LocalCluster.")
    dask_worker_memory: str = Field(
        default="2GiB", description="Memory limit of each LocalCluster worker (the nanny restarts one beyond it)."
    )
    cpu_attention: Literal["auto", "fused", "blocks"] = Field(
        default="auto",
        description=(
            "How the embedding engine computes attention on the CPU: `auto` (fp32 in PyTorch's fused kernel;"
            " bf16 in that kernel on CPUs with AMX, else in blocks of query rows), `fused` or `blocks`."
        ),
    )
    pushgateway_url: str | None = Field(default=None, description="Prometheus Pushgateway; empty: no push.")
    models_dir: Path | None = Field(
        default=None,
        description="Helical cache prefix (`CACHE_DIR_HELICAL_PREFIX`); empty: that variable, else `$SCLAKE_HOME`.",
    )
    part_cells: int = Field(
        default=16384,
        ge=64,
        description="Most cells per Zarr part (the unit of parallel work); parts are of equal size.",
    )
    shard_cells: int = Field(default=4096, ge=16, description="Cells per Zarr shard inside a part.")
    models: str = Field(
        default="gf-6L-10M-i2048",
        description="Comma-separated models the embedding DAG runs for every dataset; the first is the default.",
    )
    execution_mode: Literal["local", "docker", "kubernetes"] = Field(
        default="local", description="How Airflow runs the steps: in its worker, in the worker image, or as pods."
    )
    worker_image: str = Field(
        default="sclake-worker:0.1.0-cpu", description="Image the docker/kubernetes modes run steps in (`make images`)."
    )
    docker_stack: Literal["embedded", "compose"] = Field(
        default="embedded",
        description=(
            "Where docker-mode steps run: `embedded` (the local Docker engine, host network, the models and a"
            " file:// lake bind-mounted) or `compose` (the compose stack's socket proxy, network and volumes)."
        ),
    )
    docker_url: str | None = Field(
        default=None,
        description="Docker API for docker-mode steps; empty: DOCKER_HOST, else the local socket (compose: the proxy).",
    )
    stack_host: str = Field(default="127.0.0.1", description="Interface the embedded services bind to.")
    stack_s3_port: int = Field(default=9000, description="Port of the embedded S3 server.")
    stack_mlflow_port: int = Field(default=5000, description="Port of the embedded MLflow server.")
    stack_airflow_port: int = Field(default=8080, description="Port of the embedded Airflow API server.")
    stack_prometheus_port: int = Field(default=9090, description="Port of the embedded Prometheus.")
    stack_pushgateway_port: int = Field(default=9091, description="Port of the embedded Pushgateway.")
    stack_node_exporter_port: int = Field(default=9100, description="Port of the embedded node-exporter.")
    stack_airflow_exporter_port: int = Field(
        default=9112, description="Port of the embedded Airflow exporter (task and DAG-run metrics for Prometheus)."
    )
    stack_dask_scheduler_port: int = Field(default=8786, description="Port of the embedded Dask scheduler.")
    stack_dask_dashboard_port: int = Field(
        default=8787, description="Port of the embedded Dask scheduler's dashboard and health endpoints."
    )
    stack_dask_workers: int | None = Field(
        default=None,
        ge=1,
        description="Worker processes of the embedded Dask cluster (one thread each); empty: one per core.",
    )
    stack_dask_worker_memory: str | None = Field(
        default=None,
        description=(
            "Memory limit of each embedded Dask worker (e.g. `4GiB`); empty: half of the machine's memory shared"
            " among the workers (the other half stays for Airflow, MLflow and the steps' own processes)."
        ),
    )
    stack_only: str | None = Field(
        default=None, description="Comma-separated service names: start only these (e.g. `s3,mlflow`)."
    )
    log_level: str = Field(default="INFO", description="Log level of the CLI and steps.")

    @property
    def model_list(self) -> list[str]:
        return [m.strip() for m in self.models.split(",") if m.strip()]

    @property
    def is_s3(self) -> bool:
        return self.lake_uri.startswith("s3://")

    def helical_prefix(self) -> Path:
        """The directory Helical's cache layout lives under (``<prefix>/.cache/helical/models``)."""
        if self.models_dir is not None:
            return self.models_dir.expanduser().resolve()
        env = os.environ.get("CACHE_DIR_HELICAL_PREFIX")
        return Path(env).resolve() if env else self.home

    def public_dict(self) -> dict[str, object]:
        """Settings without secrets, for logs and lineage."""
        data = self.model_dump(mode="json")
        for key in ("s3_secret_key", "s3_access_key"):
            if data.get(key):
                data[key] = "***"
        return data


def stack_env_file(home: Path | None = None) -> Path:
    """The env file the embedded stack writes its endpoints and credentials to."""
    return (home or default_home()) / "stack.env"


def load_settings(*, cwd_env: bool = True, **overrides: object) -> Settings:
    """Read settings from the environment, ``./.env`` (unless ``cwd_env`` is false) and the
    embedded stack's env file."""
    home = Path(str(overrides["home"])) if "home" in overrides else default_home()
    candidates = (stack_env_file(home), Path(".env")) if cwd_env else (stack_env_file(home),)
    env_files = tuple(str(p) for p in candidates if p.is_file())
    return Settings(_env_file=env_files or None, **overrides)  # type: ignore[call-arg]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (entry points only; library code takes a ``Settings`` argument)."""
    return load_settings()
