"""What the DAG files share: the datasets asset, step runners and operator builders per execution mode.

``SCLAKE_EXECUTION_MODE`` picks how a step runs:

- ``local``: a TaskFlow task calls the step function in the Airflow worker's environment.
- ``docker``: a ``DockerOperator`` runs ``sclake step <name>`` in the worker image, with the
  GPU requested from the model's resource profile and the model cache and data mounted.
- ``kubernetes``: a ``KubernetesPodOperator`` runs the same command with requests/limits and
  GPUs from the profile.

Container steps read their input from the upstream task's XCom (templated) and push the
step's JSON result as their own XCom, so the three modes produce the same manifests.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, XComArg, task

from pipelines.outcomes import refusal_message

__all__ = ["refusal_message"]  # re-exported for the DAG files

DATASETS = Asset("sclake_datasets")
MODES = ("local", "docker", "kubernetes")

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "sclake",
    "retries": 0,
}
TRANSIENT_RETRIES: dict[str, Any] = {
    "retries": 4,
    "retry_delay": timedelta(seconds=15),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}


def execution_mode() -> str:
    mode = os.environ.get("SCLAKE_EXECUTION_MODE", "local")
    if mode not in MODES:
        raise ValueError(f"SCLAKE_EXECUTION_MODE={mode!r} is not one of {MODES}")
    return mode


def task_settings():
    """The settings DAG parsing and tasks use: the environment and the stack's env file, never a
    ``./.env`` of whatever folder the Airflow process was started in."""
    from pipelines.settings import load_settings

    return load_settings(cwd_env=False)


def configured_models() -> list[str]:
    return task_settings().model_list


def run_step(name: str, **kwargs: Any) -> Any:
    """Run a step in this process with the settings of the environment (local mode)."""
    from pipelines.logs import setup_logging
    from pipelines.orchestration.steps import STEPS

    settings = task_settings()
    setup_logging(settings.log_level, stream=False)  # Airflow's own handlers write the task log
    return STEPS[name](settings, **kwargs)


def as_manifest(value: Any) -> Any:
    """Container steps push their result as a JSON line; local steps push the object itself."""
    if isinstance(value, str | bytes):
        return json.loads(value)
    return value


def step_command(step: str, *, manifest: str | None = None, **values: str) -> list[str]:
    """The worker-image command of a step: ``sclake step NAME [--manifest JSON] [--set k=v ...]``.

    ``manifest`` and the values may be Jinja templates (rendered by Airflow before the
    container starts), e.g. :func:`upstream_manifest`.
    """
    cmd = ["sclake", "step", step]
    if manifest is not None:
        cmd += ["--manifest", manifest]
    for k, v in values.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


def upstream_manifest(task_id: str) -> str:
    """Template: the XCom of ``task_id`` at this task's map index (a container step's JSON line)."""
    return "{{ ti.xcom_pull(task_ids='" + task_id + "', map_indexes=ti.map_index) }}"


def map_index_from(task: Any) -> str:
    """``map_index_template``: name a mapped task instance by element ``map_index`` of the list
    ``task`` (a task, its output, or its id) returned."""
    task_id = task if isinstance(task, str) else _task_id(task)
    return "{{ ti.xcom_pull(task_ids='" + task_id + "')[ti.map_index] }}"


def mapped_item(task_id: str) -> str:
    """Template: element ``map_index`` of the list ``task_id`` returned (the input of a mapped group)."""
    return "{{ ti.xcom_pull(task_ids='" + task_id + "')[ti.map_index] }}"


def profile_for(model: str | None):
    if not model:
        return None
    from pipelines.profiles import get_profile

    return get_profile(model)


def container_step(
    task_id: str, command: list[str], *, model: str | None = None, mode: str | None = None, **op_kwargs: Any
):
    """A docker or kubernetes operator running ``command`` in the worker image (see the module docstring)."""
    mode = mode or execution_mode()
    if mode == "docker":
        from pipelines.orchestration.containers import docker_operator

        return docker_operator(task_id, command, profile=profile_for(model), **op_kwargs)
    if mode == "kubernetes":
        from pipelines.orchestration.containers import kubernetes_operator

        return kubernetes_operator(task_id, command, profile=profile_for(model), **op_kwargs)
    raise ValueError(f"container steps need SCLAKE_EXECUTION_MODE docker or kubernetes, not {mode!r}")


# The argument through which each step takes what its upstream gives it: the mapped item (an
# upload key, a dataset id) or the previous step's manifest.
STEP_INPUT = {"ingest_upload": "key", "validate_upload": "manifest", "embed": "dataset_id"}


@task
def _local_step(step: str, value: Any, fixed: dict[str, Any]) -> Any:
    """A step in the Airflow worker's own environment (local mode)."""
    name = STEP_INPUT[step]
    return run_step(step, **{name: as_manifest(value) if name == "manifest" else value}, **fixed)


def step_task(
    step: str,
    value: Any,
    *,
    items_from: Any,
    task_id: str,
    model: str | None = None,
    fixed: dict[str, str] | None = None,
    **task_kwargs: Any,
) -> XComArg:
    """Step ``step`` of :mod:`pipelines.orchestration.steps` as a task of the execution mode.

    Parameters
    ----------
    value
        What the step takes: the item of the mapped task group (an upload key, a dataset id),
        or the output of the previous ``step_task`` (its manifest).
    items_from
        The task whose list the group is mapped over. Container steps read their item from
        its XCom at their map index, and the previous step's manifest from that step's XCom
        (:func:`mapped_item`, :func:`upstream_manifest`); the task ids come from the tasks
        themselves, so the DAG files hold no task-id strings.
    task_id, task_kwargs
        The task's id in its group, pool, queue, retries, ``map_index_template``.
    model
        Whose resource profile sets a container's limits (container modes).
    fixed
        Further step arguments that are the same for every mapped task (e.g. the model).

    Returns
    -------
    XComArg
        The step's manifest, for the next ``step_task`` or a TaskFlow task (which reads it
        with :func:`as_manifest`).
    """
    fixed = dict(fixed or {})
    if execution_mode() == "local":
        return _local_step.override(task_id=task_id, **task_kwargs)(step, value, fixed)
    upstream = value.operator if isinstance(value, XComArg) else None
    if upstream is not None:  # the previous step: its manifest at this map index
        command = step_command(step, manifest=upstream_manifest(upstream.task_id), **fixed)
    else:  # the group's item
        command = step_command(step, **{STEP_INPUT[step]: mapped_item(_task_id(items_from))}, **fixed)
    op = container_step(task_id, command, model=model, **task_kwargs)
    if upstream is not None:
        upstream >> op
    return op.output


def _task_id(task_or_output: Any) -> str:
    return task_or_output.operator.task_id if isinstance(task_or_output, XComArg) else task_or_output.task_id
