"""Operators that run a step in the worker image: DockerOperator (compose) and KubernetesPodOperator.

Both run ``sclake step <name> ...`` (see :func:`pipelines.orchestration.dagkit.step_command`)
with the model's resource profile turned into GPU requests and limits, and push the step's
JSON result (the command's last stdout line) as their XCom.
"""

from __future__ import annotations

from typing import Any

from pipelines.settings import load_settings

K8S_NAMESPACE_ENV = "SCLAKE_K8S_NAMESPACE"
K8S_MODELS_PVC = "sclake-models"
GPU_RESOURCE = "nvidia.com/gpu"


def _gpus(profile: Any) -> int:
    return int(profile.container.gpus) if profile is not None and profile.device_class == "gpu" else 0


def docker_operator(task_id: str, command: list[str], *, profile: Any = None, **op_kwargs: Any):
    """A :class:`StepDockerOperator` with the layout of ``SCLAKE_DOCKER_STACK`` and the profile's limits."""
    from pipelines import deploy

    settings = load_settings(cwd_env=False)
    kwargs = deploy.docker_operator_kwargs(settings, gpus=_gpus(profile))
    if profile is not None:
        kwargs["mem_limit"] = int(profile.container.memory)
        kwargs["cpus"] = float(profile.container.cpus)
        kwargs["shm_size"] = min(int(profile.container.memory) // 4, 8 << 30)
    return step_docker_operator_class()(
        task_id=task_id,
        command=command,
        profile_name=profile.name if profile is not None else None,
        labels={
            STEP_LABEL: command[2] if len(command) > 2 else task_id,
            PROFILE_LABEL: profile.name if profile is not None else "",
        },
        do_xcom_push=True,
        tty=False,
        **kwargs,
        **op_kwargs,
    )


STEP_LABEL = "io.sclake.step"
PROFILE_LABEL = "io.sclake.profile"
EXIT_OOM = 137


def step_docker_operator_class():
    """``StepDockerOperator``, defined on first use so that DAG parsing imports no Docker provider."""
    global _STEP_OPERATOR
    if _STEP_OPERATOR is None:
        _STEP_OPERATOR = _define_step_operator()
    return _STEP_OPERATOR


_STEP_OPERATOR: Any = None


def _define_step_operator():
    from airflow.providers.docker.exceptions import DockerContainerFailedException
    from airflow.providers.docker.operators.docker import DockerOperator
    from airflow.sdk.exceptions import AirflowFailException

    class StepDockerOperator(DockerOperator):
        """``DockerOperator`` for ``sclake step`` containers.

        Beyond the provider's operator:

        - ``cpus`` is a hard limit (``NanoCpus``, like ``docker run --cpus``), not only a share;
        - the XCom is the step's JSON result (its last JSON line), whatever was logged after it;
        - a container killed for memory fails the task without retry, naming the profile
          setting to raise; any other failure names the exit status and the last log line;
        - the container is removed in every case, also when it could not start.
        """

        def __init__(self, *, profile_name: str | None = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.profile_name = profile_name

        def execute(self, context: Any) -> Any:
            if not self.force_pull and not self.cli.images(name=self.image):
                try:
                    self.cli.pull(self.image)
                except Exception as e:  # noqa: BLE001 - any failure to pull means the same to the user
                    raise AirflowFailException(
                        f"image {self.image!r} is not on this Docker host and could not be pulled ({e}); "
                        "build it with `make images` (docs/deployment.md) or set SCLAKE_WORKER_IMAGE"
                    ) from e
            return super().execute(context)

        @property
        def cli(self):  # the APIClient, with hard CPU limits on the containers it creates
            return _HardCpuLimit(self.hook.api_client, self.cpus)

        def _run_image_with_mounts(self, target_mounts, add_tmp_variable: bool):
            self.xcom_all = True
            self.container = None
            # The provider would remove the container before its state can be read: remove it here.
            removal, self.auto_remove = self.auto_remove, "never"
            try:
                lines = super()._run_image_with_mounts(target_mounts, add_tmp_variable)
            except DockerContainerFailedException as e:
                raise self._failure(e) from e
            finally:
                self.auto_remove = removal
                if removal != "never":
                    self._remove()
            return _result_line(lines or [])

        def _failure(self, error: Exception) -> Exception:
            state = self._state()
            logs = [line for line in (getattr(error, "logs", None) or []) if line.strip()]
            code = state.get("ExitCode")
            if state.get("OOMKilled") or (code == EXIT_OOM and self.mem_limit):
                limit = _gib(self.mem_limit)
                where = (
                    f"raise `container.memory` of profile {self.profile_name!r} in {_profiles_file()}"
                    if self.profile_name
                    else "raise the container's memory limit"
                )
                return AirflowFailException(
                    f"step container ran out of memory: killed at its limit of {limit} (exit {code}); {where}"
                )
            last = logs[-1] if logs else "no output"
            return AirflowFailException(f"step container failed with exit status {code}: {last}")

        def _state(self) -> dict[str, Any]:
            if not self.container:
                return {}
            try:
                return self.cli.inspect_container(self.container["Id"]).get("State", {})
            except Exception:  # noqa: BLE001 - the state only improves the message
                return {}

        def _remove(self) -> None:
            if self.container:
                try:
                    self.cli.remove_container(self.container["Id"], force=True)
                except Exception as e:  # noqa: BLE001 - already gone (auto-removed or killed)
                    self.log.debug("container %s not removed: %s", self.container["Id"][:12], e)

    return StepDockerOperator


class _HardCpuLimit:
    """An ``APIClient`` whose ``create_host_config`` also sets ``nano_cpus`` from the operator's ``cpus``."""

    def __init__(self, client: Any, cpus: float) -> None:
        self._client, self._cpus = client, cpus

    def create_host_config(self, **kwargs: Any):
        if self._cpus:
            kwargs.setdefault("nano_cpus", int(self._cpus * 1e9))
        return self._client.create_host_config(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _result_line(lines: list[str]) -> str | None:
    """The step's JSON result: the last line that is a JSON object (``sclake step`` prints it last)."""
    import json

    for line in reversed(lines):
        text = line.strip()
        if text.startswith("{") and text.endswith("}"):
            try:
                json.loads(text)
            except ValueError:
                continue
            return text
    return None


def _gib(size: Any) -> str:
    return f"{int(size) / 2**30:.2f} GiB" if isinstance(size, int | float) else str(size)


def _profiles_file() -> str:
    from pipelines.profiles import profiles_path

    return str(profiles_path())


def kubernetes_operator(task_id: str, command: list[str], *, profile: Any = None, **op_kwargs: Any):
    """A ``KubernetesPodOperator`` with requests/limits and GPUs from the resource profile."""
    import os

    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    from pipelines import deploy

    settings = load_settings(cwd_env=False)
    gpus = _gpus(profile)
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if profile is not None:
        requests = {"cpu": str(profile.container.cpus), "memory": str(int(profile.container.memory))}
        limits = {"memory": str(int(profile.container.memory))}
    if gpus:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(gpus)
    env = deploy.step_environment(settings, 0)  # the scheduler assigns GPUs: no claim needed
    secret_env = [
        k8s.V1EnvVar(
            name=name,
            value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name="sclake-s3", key=name.lower())),
        )
        for name in ("SCLAKE_S3_ACCESS_KEY", "SCLAKE_S3_SECRET_KEY")
    ]
    return KubernetesPodOperator(
        task_id=task_id,
        name=task_id.replace("_", "-").replace(".", "-"),
        namespace=os.environ.get(K8S_NAMESPACE_ENV, "sclake"),
        image=settings.worker_image,
        cmds=command[:1],
        arguments=command[1:],
        env_vars=[k8s.V1EnvVar(name=k, value=v) for k, v in env.items()] + secret_env,
        container_resources=k8s.V1ResourceRequirements(requests=requests, limits=limits),
        volumes=[
            k8s.V1Volume(
                name="models",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                    claim_name=K8S_MODELS_PVC, read_only=True
                ),
            )
        ],
        volume_mounts=[k8s.V1VolumeMount(name="models", mount_path=deploy.MODEL_CACHE_PATH, read_only=True)],
        tolerations=[k8s.V1Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")] if gpus else None,
        do_xcom_push=True,
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
        **op_kwargs,
    )
