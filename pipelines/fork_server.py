"""Imported by the fork server that local Dask workers are forked from (:mod:`pipelines.dask_cluster`).

When the process that started it exits, the fork server raises ``SystemExit`` and would
then shut its interpreter down module by module, every preloaded one included (anndata,
zarr, distributed, …): about half a second during which the stdout and stderr it
inherited stay open, so whoever reads the command's output (a shell pipeline,
``subprocess.run``) waits for it. The server holds nothing to flush, so it leaves at once
instead.

The exit handler is registered only when this module is imported by the fork server's
own ``main`` (its preload), and only acts in that process: workers forked from it end
through ``os._exit`` anyway (multiprocessing runs no ``atexit`` handlers in children).
"""

from __future__ import annotations

import atexit
import os
import sys


def _in_fork_server() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "main" and code.co_filename.endswith(os.path.join("multiprocessing", "forkserver.py")):
            return True
        frame = frame.f_back
    return False


def _leave(pid: int) -> None:
    if os.getpid() == pid:
        os._exit(0)


if _in_fork_server():
    atexit.register(_leave, os.getpid())
