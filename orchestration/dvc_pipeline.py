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
import tempfile
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


class DvcRemoteError(RuntimeError):
    """`dvc push` could not use its remote; the data is still in the local cache."""


@dataclass(frozen=True)
class DvcRemote:
    """The remote a push goes to and the config file that defines it."""

    name: str
    url: str
    defined_in: Path
    cache: Path

    def __str__(self) -> str:
        return f"DVC remote {self.name!r} at {self.url} (`url` of remote {self.name!r} in {self.defined_in})"

    @property
    def kept(self) -> str:
        return (f"Nothing was lost: the data stays in the local cache {self.cache}; fix the remote "
                f"(`dvc remote modify {self.name} url <folder>`) and push again (`dvc push`)")

    def check_local_folder(self) -> None:
        """A folder remote must exist (or its parent, DVC then creates it) and take a file."""
        folder = Path(self.url)
        if not folder.exists() and not folder.parent.is_dir():
            raise DvcRemoteError(f"{self} does not exist, nor does its parent folder {folder.parent}: an unmounted "
                                 f"volume or a wrong path. {self.kept}")
        try:
            with tempfile.NamedTemporaryFile(dir=folder if folder.exists() else folder.parent, prefix=".genops-probe-"):
                pass
        except OSError as exc:
            raise DvcRemoteError(f"{self} is not writable ({exc.strerror or exc}). {self.kept}") from exc


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
        """Push the outputs of the named stages to the remote; returns the number of files pushed.

        A remote that is not configured, not there (a local folder whose parent is missing: an unmounted
        volume, a typo) or not writable raises `DvcRemoteError` naming the remote, its path and the
        setting to fix, before anything is written; any other failed upload raises it too. The data
        stays in the local cache either way, and a later push sends it.
        """
        from dvc.exceptions import DvcException

        with self._locked() as repo:
            remote = self._remote(repo)
            if "://" not in remote.url:
                remote.check_local_folder()
            try:
                return repo.push(targets=list(stages) or None, remote=remote.name)
            except (DvcException, OSError) as exc:  # DVC lets some I/O errors of the remote through unwrapped
                raise DvcRemoteError(f"dvc push to {remote} failed: {type(exc).__name__}: {exc}. {remote.kept}") from exc

    def _remote(self, repo) -> DvcRemote:
        """The remote a push goes to, with where it is configured; raises naming the setting when there is none."""
        config_file = self.root / ".dvc" / "config"
        cache = Path(repo.cache.local.path)
        name = self.remote or repo.config["core"].get("remote")
        chosen_by = "GENOPS_DVC_REMOTE (the DvcResource's `remote`)" if self.remote else f"core.remote in {config_file}"
        if not name:
            raise DvcRemoteError(
                f"dvc push: no DVC remote configured (core.remote in {config_file} is unset and GENOPS_DVC_REMOTE "
                f"names none); add one with `dvc remote add -d <name> <url>`. Nothing was pushed; the data stays in "
                f"the local cache {cache}"
            )
        remotes = repo.config.get("remote", {})
        if name not in remotes:
            raise DvcRemoteError(
                f"dvc push: DVC remote {name!r}, chosen by {chosen_by}, is not defined in {config_file} (remotes "
                f"there: {', '.join(sorted(remotes)) or 'none'}); define it with `dvc remote add {name} <url>` or "
                f"choose another. Nothing was pushed; the data stays in the local cache {cache}"
            )
        defined_in = next((Path(repo.config.files[level]) for level in ("local", "repo", "global", "system")
                           if name in repo.config.load_one(level).get("remote", {})), config_file)
        return DvcRemote(name=name, url=str(remotes[name]["url"]), defined_in=defined_in, cache=cache)

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
