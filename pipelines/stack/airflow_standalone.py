"""``airflow standalone`` as the embedded stack runs it: the same components, no log servers.

The scheduler and the triggerer each start a log server on every interface (Airflow sets
no host for it: ``0.0.0.0`` and ``[::]``), for API servers on other machines to fetch task
logs from. On one machine the API server reads the log files directly, so the embedded
stack starts both with ``--skip-serve-logs`` and every port it opens is on
``SCLAKE_STACK_HOST``.

Run as ``python -m pipelines.stack.airflow_standalone`` with the stack's Airflow environment.
"""

from __future__ import annotations

LOCAL_ONLY = ("scheduler", "triggerer")


def main() -> None:
    from airflow.cli.commands import standalone_command as standalone

    class LocalSubCommand(standalone.SubCommand):
        def __init__(self, parent, name: str, command: list[str], env: dict[str, str]) -> None:
            if name in LOCAL_ONLY and "--skip-serve-logs" not in command:
                command = [*command, "--skip-serve-logs"]
            super().__init__(parent, name, command, env)

    standalone.SubCommand = LocalSubCommand
    standalone.StandaloneCommand().run()


if __name__ == "__main__":
    main()
