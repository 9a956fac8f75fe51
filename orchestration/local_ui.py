"""`genops ui`: the Dagster webserver + daemon (`dagster dev`) and the MLflow UI against the embedded stores.

Each server runs in its own process group (session), so Ctrl-C reaches only `genops ui`, which then
stops each group: SIGINT first (what `dagster dev` handles: it stops its webserver, daemon and code
server), SIGTERM after a grace period, SIGKILL last (`dagster dev` can ignore SIGTERM for a long time).
The embedded Dagster instance gets a `dagster.yaml` with telemetry off: nothing here reaches the internet.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from components.fileio import atomic_write_text

EMBEDDED_DAGSTER_YAML = """\
# The embedded Dagster instance of `genops demo` / `genops ui` (SQLite storage in this folder, the
# default). Production: infra/dagster/dagster.yaml (Postgres). Nothing here reaches the internet.
telemetry:
  enabled: false
"""


def ensure_dagster_yaml(home: Path) -> Path:
    """Write DAGSTER_HOME/dagster.yaml (telemetry off) unless the folder already has one."""
    path = Path(home) / "dagster.yaml"
    if not path.is_file():
        atomic_write_text(path, EMBEDDED_DAGSTER_YAML)
    return path


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def ui_commands(dagster_port: int, mlflow_port: int, tracking_uri: str, artifact_root: Path, host: str = "127.0.0.1") -> dict[str, list[str]]:
    return {
        "dagster": [_bin("dagster"), "dev", "-m", "orchestration.definitions", "-h", host, "-p", str(dagster_port)],
        "mlflow": [_bin("mlflow"), "ui", "--backend-store-uri", tracking_uri, "--default-artifact-root",
                   Path(artifact_root).as_uri(), "--host", host, "--port", str(mlflow_port),
                   # one worker: uvicorn's supervisor of several kills any worker that misses its 5 s
                   # health ping, which on a busy laptop (all cores training) restarts them forever
                   "--workers", "1"],
    }


def wait_for_http(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers (any HTTP status); raise naming the URL on timeout or if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with code {process.returncode} before answering")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


@dataclass
class UiStack:
    """The UI servers, each in its own process group."""

    commands: dict[str, list[str]]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, env: dict[str, str] | None = None) -> None:
        for name, command in self.commands.items():
            self.processes[name] = subprocess.Popen(command, start_new_session=True, env=env)

    def stop(self, grace: float = 20.0) -> dict[str, int | None]:
        """Stop every group (SIGINT, then SIGTERM, then SIGKILL); returns each leader's exit code."""
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            alive = [p for p in self.processes.values() if _group_alive(p)]
            for process in alive:
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while alive and time.monotonic() < deadline:
                alive = [p for p in alive if _group_alive(p)]
                time.sleep(0.2)
            if not alive:
                break
        return {name: p.poll() for name, p in self.processes.items()}


def _group_alive(process: subprocess.Popen) -> bool:
    """Whether any process of the group `process` leads still exists (the leader is reaped first)."""
    process.poll()
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
