"""A temporary DVC + git repository with the project's data pipeline on the tiny profile."""

import shutil
import subprocess
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


def make_tiny_repo(root: Path) -> Path:
    """dvc.yaml + tiny params + the code its stages depend on, in a fresh git repo with a local remote."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(PROJECT / "training_jobs" / "configs" / "data" / "tiny.yaml", root / "params.yaml")
    shutil.copytree(PROJECT / "components", root / "components", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc = str(Path(shutil.which("dvc") or PROJECT / ".venv" / "bin" / "dvc"))
    subprocess.run([dvc, "init", "-q"], cwd=root, check=True)
    subprocess.run([dvc, "remote", "add", "-q", "-d", "local", str(root.parent / f"{root.name}-remote")], cwd=root, check=True)
    return root


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> Path:
    return make_tiny_repo(tmp_path_factory.mktemp("dvc") / "repo")
