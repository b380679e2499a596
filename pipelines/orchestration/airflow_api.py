"""A small client of Airflow 3's REST API (``/api/v2``) for the demo and the tests."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import requests

from pipelines.errors import SclakeError


class AirflowError(SclakeError):
    """Airflow cannot be reached or a DAG run failed."""


@dataclass
class AirflowClient:
    base_url: str
    username: str
    password: str
    timeout: float = 30.0

    def __post_init__(self) -> None:
        self._token: str | None = None
        self._session = requests.Session()

    def _auth(self) -> dict[str, str]:
        if self._token is None:
            r = self._session.post(
                f"{self.base_url}/auth/token",
                json={"username": self.username, "password": self.password},
                timeout=self.timeout,
            )
            if r.status_code >= 400:
                raise AirflowError(f"Airflow at {self.base_url} refused the login of {self.username!r}: {r.text[:200]}")
            self._token = r.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def get(self, path: str, **params: Any) -> Any:
        r = self._session.get(
            f"{self.base_url}/api/v2{path}", headers=self._auth(), params=params, timeout=self.timeout
        )
        if r.status_code == 401:  # token expired
            self._token = None
            r = self._session.get(
                f"{self.base_url}/api/v2{path}", headers=self._auth(), params=params, timeout=self.timeout
            )
        if r.status_code >= 400:
            raise AirflowError(f"GET {path} answered {r.status_code}: {r.text[:300]}")
        return r.json() if "json" in r.headers.get("content-type", "") else r.text

    def dag_runs(self, dag_id: str, limit: int = 50) -> list[dict[str, Any]]:
        return self.get(f"/dags/{dag_id}/dagRuns", order_by="-start_date", limit=limit)["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=1000)["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, key: str = "return_value") -> Any:
        """A task's XCom value, or ``None`` when it has none (yet)."""
        try:
            data = self.get(
                f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
                map_index=map_index,
                deserialize="true",
            )
        except AirflowError as e:
            if " 404" in str(e) or "answered 404" in str(e):
                return None
            raise
        return data.get("value") if isinstance(data, dict) else data

    def task_log(self, dag_id: str, run_id: str, ti: dict[str, Any], lines: int = 30) -> str:
        try_number = max(int(ti.get("try_number") or 1), 1)
        data = self.get(
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/{try_number}",
            map_index=ti.get("map_index", -1),
            full_content="true",
        )
        content = data.get("content", data) if isinstance(data, dict) else data
        if isinstance(content, list):
            text = "\n".join(c.get("event", str(c)) if isinstance(c, dict) else str(c) for c in content)
        else:
            text = str(content)
        return "\n".join(text.splitlines()[-lines:])

    def wait_for_run(self, dag_id: str, accept, timeout: float, poll: float = 3.0) -> dict[str, Any]:
        """Wait until a run of ``dag_id`` for which ``accept(run, tis)`` is true finishes; returns it.

        Raises ``AirflowError`` naming the failing task and the tail of its log when that run fails.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for run in self.dag_runs(dag_id):
                tis = self.task_instances(dag_id, run["dag_run_id"])
                if not accept(run, tis):
                    continue
                if run["state"] == "success":
                    return run
                if run["state"] == "failed":
                    failed = [t for t in tis if t["state"] in ("failed", "upstream_failed")]
                    first = next((t for t in failed if t["state"] == "failed"), failed[0] if failed else None)
                    detail = ""
                    if first:
                        name = first["task_id"] + (f"[{first['map_index']}]" if first.get("map_index", -1) >= 0 else "")
                        detail = f"; task {name} failed:\n{self.task_log(dag_id, run['dag_run_id'], first)}"
                    raise AirflowError(f"DAG run {dag_id}/{run['dag_run_id']} failed{detail}")
            time.sleep(poll)
        raise AirflowError(f"no finished run of {dag_id} matched within {timeout:.0f}s")
