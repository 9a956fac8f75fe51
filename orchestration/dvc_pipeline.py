"""The DVC side of the data platform, through DVC's Python API, serialized.

DVC takes a repo-wide lock, so two stages reproduced at once (two Dagster steps, a user in a
terminal) would fail on each other's lock. Every call here first takes a process-wide lock and a
file lock in `.dvc/tmp/`, so genops callers queue instead of failing. The dataset version that
lineage carries everywhere is the md5 DVC records for a stage output in `dvc.lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from training_jobs.lineage import lock_outputs

log = logging.getLogger(__name__)
_PROCESS_LOCK = threading.Lock()


@dataclass(frozen=True)
class StageOutput:
    """One output of a reproduced stage: its path and the md5 DVC recorded for it."""

    path: str
    md5: str
    size: int | None
    nfiles: int | None


class DvcPipeline:
    """A DVC repository whose `dvc.yaml` holds the data stages (generate, validate, prepare, tokenizer)."""

    def __init__(self, root: str | Path, remote: str | None = None):
        self.root = Path(root).resolve()
        self.remote = remote
        if not (self.root / "dvc.yaml").is_file():
            raise FileNotFoundError(f"{self.root / 'dvc.yaml'} not found: set GENOPS_ROOT to the project checkout")
        if not (self.root / ".dvc").is_dir():
            raise FileNotFoundError(f"{self.root} is not a DVC repository (no .dvc/): run `dvc init` there")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[object]:
        from dvc.repo import Repo

        lock_dir = self.root / ".dvc" / "tmp"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with _PROCESS_LOCK, open(lock_dir / "genops.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            old_path, old_cwd = os.environ.get("PATH", ""), os.getcwd()
            # Stage commands call `genops`; make sure it is the one of this interpreter's environment.
            os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{old_path}"
            # DVC resolves stage paths against the working directory, whatever Repo(root) says.
            os.chdir(self.root)
            try:
                with Repo(str(self.root)) as repo:
                    yield repo
            finally:
                os.chdir(old_cwd)
                os.environ["PATH"] = old_path
                fcntl.flock(handle, fcntl.LOCK_UN)

    def reproduce(self, *stages: str) -> list[str]:
        """Reproduce the named stages (not their upstream); returns the names of stages that ran."""
        with self._locked() as repo:
            ran = []
            for stage in stages:
                done = repo.reproduce(stage, single_item=True)
                ran.extend(s.addressing for s in done)
            log.info("dvc reproduce %s: ran %s", stages, ran or "nothing (up to date)")
            return ran

    def push(self, *stages: str) -> int:
        """Push the outputs of the named stages to the remote; returns the number of files pushed."""
        with self._locked() as repo:
            return repo.push(targets=list(stages) or None, remote=self.remote)

    def status(self, *stages: str) -> dict:
        """`dvc status` of the named stages (empty dict: up to date)."""
        with self._locked() as repo:
            return repo.status(targets=list(stages) or None)

    def cloud_status(self, *stages: str) -> dict:
        """`dvc status --cloud`: what is not yet in the remote (empty dict: all pushed)."""
        with self._locked() as repo:
            return repo.status(targets=list(stages) or None, cloud=True, remote=self.remote)

    def outputs(self, stage: str) -> list[StageOutput]:
        """The outputs `dvc.lock` records for a stage (`name` or `name@item` for foreach stages)."""
        return [StageOutput(o["path"], o["md5"], o.get("size"), o.get("nfiles")) for o in lock_outputs(self.root, stage)]

    def version(self, stage: str) -> str:
        """The dataset version of a stage: the md5 of its (first) output, as DVC recorded it."""
        return self.outputs(stage)[0].md5
