"""Where the engine runs: in this process, or over the workers of a Dask cluster.

In this process every core goes to torch's threads. On a cluster there is one engine task
per worker (or per GPU, ``resources={"GPU": 1}`` on GPU clusters), the parts dealt
round-robin, with torch threads sized so that the workers of a host share its cores.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pipelines.embed.engine import EmbedJob, run_parts
from pipelines.errors import ConfigError
from pipelines.logs import get_logger

if TYPE_CHECKING:
    import numpy as np

    from pipelines.settings import Settings

log = get_logger(__name__)


def dispatch(
    settings: Settings,
    client: Any,
    job: EmbedJob,
    todo: list[int],
    keep: dict[int, np.ndarray] | None,
    resources: dict[str, float],
    progress: bool,
) -> list[dict[str, Any]]:
    """Run the engine on the parts ``todo``: on ``client``, the configured cluster, else in this process."""
    if not todo:
        return []
    if client is not None:
        return distribute(client, job, todo, keep, resources)
    if settings.dask_address:
        from pipelines.dask_cluster import dask_client

        with dask_client(settings) as remote:
            return distribute(remote, job, todo, keep, resources)
    in_process = replace(job, options=replace(job.options, threads=cpu_cores()))
    opts = job.options
    log.info(
        "embedding %d parts of %s with %s on %s (%s) in this process",
        len(todo),
        job.dataset_id,
        job.model,
        opts.device,
        opts.precision,
    )
    return [run_parts(in_process, todo, keep, progress=progress)]


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def distribute(client: Any, job: EmbedJob, todo: list[int], keep: Any, resources: dict[str, float]) -> list[dict]:
    """One engine task per worker (or per GPU), parts dealt round-robin."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    if resources:
        slots = [
            a for a, w in workers.items() if all(w.get("resources", {}).get(k, 0) >= v for k, v in resources.items())
        ]
        if not slots:
            raise ConfigError(
                f"no Dask worker offers the resources {resources} the profile asks for "
                "(start GPU workers with `dask worker --resources GPU=1`) or use --device cpu"
            )
    else:
        slots = list(workers)
    n_tasks = max(1, min(len(slots), len(todo)))
    groups = [todo[i::n_tasks] for i in range(n_tasks)]
    cores = client.run(cpu_cores)
    per_host: dict[str, int] = {}
    for a in slots[:n_tasks]:
        per_host[workers[a]["host"]] = per_host.get(workers[a]["host"], 0) + 1
    token = uuid.uuid4().hex[:8]  # task keys only: a rerun never meets an old result
    futures = []
    for addr, group in zip(slots[:n_tasks], groups, strict=True):
        threads = max(1, int(cores.get(addr, 1)) // per_host[workers[addr]["host"]])
        task_job = replace(job, options=replace(job.options, threads=None if resources else threads))
        sub = None if keep is None else {p: keep[p] for p in group}
        futures.append(
            client.submit(
                run_parts,
                task_job,
                group,
                sub,
                resources=resources or None,
                workers=None if resources else [addr],
                allow_other_workers=True,
                pure=False,
                retries=1,
                key=f"sclake-embed-{job.dataset_id}-{job.model}-{token}-{group[0]:05d}",
            )
        )
    log.info("embedding %d parts with %d Dask tasks%s", len(todo), n_tasks, f" ({resources})" if resources else "")
    return client.gather(futures)
