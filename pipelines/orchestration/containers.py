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
    """A ``DockerOperator`` for the compose stack (names from :mod:`pipelines.deploy`)."""
    from airflow.providers.docker.operators.docker import DockerOperator

    from pipelines import deploy

    settings = load_settings()
    kwargs = deploy.docker_operator_kwargs(settings, gpus=_gpus(profile))
    if profile is not None:
        kwargs["mem_limit"] = int(profile.container.memory)
        kwargs["cpus"] = float(profile.container.cpus)
        kwargs["shm_size"] = min(int(profile.container.memory) // 4, 8 << 30)
    return DockerOperator(
        task_id=task_id,
        command=command,
        do_xcom_push=True,
        xcom_all=False,
        tty=False,
        **kwargs,
        **op_kwargs,
    )


def kubernetes_operator(task_id: str, command: list[str], *, profile: Any = None, **op_kwargs: Any):
    """A ``KubernetesPodOperator`` with requests/limits and GPUs from the resource profile."""
    import os

    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    from pipelines import deploy

    settings = load_settings()
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
