"""A DVC remote that is missing or unwritable: `dvc push` fails naming the remote's path and the setting
to fix, and nothing is lost (a push to a fixed remote sends everything). A real DVC repo, real pushes."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestration.dvc_pipeline import DvcPipeline, DvcRemoteError
from tests.orchestration.conftest import make_tiny_repo


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """A tiny repo whose `generate` stage has run: its output is in the local cache, not yet pushed."""
    root = make_tiny_repo(tmp_path_factory.mktemp("dvc-faults") / "repo")
    DvcPipeline(root).reproduce("generate")
    return root


def set_remote_url(root: Path, url: Path) -> None:
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "remote", "modify", "local", "url", str(url)], cwd=root, check=True)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` refuses writes: mode 0555, or for root (whom modes do not stop) a read-only tmpfs on it."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             check=False, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"root cannot mount a read-only tmpfs here ({mounted.stderr.strip()}): no way to make a folder unwritable")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def assert_nothing_lost(root: Path, remote: Path) -> None:
    """The failed push kept the data: pushed to a working remote, everything arrives."""
    set_remote_url(root, remote)
    pipeline = DvcPipeline(root)
    assert pipeline.push("generate") > 0
    assert pipeline.cloud_status("generate") == {}


@pytest.mark.integration
def test_an_unwritable_remote_is_named_and_the_data_stays_in_the_cache(generated, tmp_path):
    remote = tmp_path / "readonly-remote"
    set_remote_url(generated, remote)
    with read_only(remote):
        with pytest.raises(DvcRemoteError) as error:
            DvcPipeline(generated).push("generate")
        assert not any(remote.iterdir())
    message = str(error.value)
    assert f"DVC remote 'local' at {remote}" in message and "is not writable" in message
    assert f"in {generated / '.dvc' / 'config'}" in message and "dvc remote modify local url" in message
    assert f"local cache {generated / '.dvc' / 'cache'}" in message
    assert_nothing_lost(generated, tmp_path / "remote")


@pytest.mark.integration
def test_a_remote_on_a_missing_volume_is_named_and_nothing_is_written(generated, tmp_path):
    remote = tmp_path / "unmounted-volume" / "dvc-remote"
    set_remote_url(generated, remote)
    with pytest.raises(DvcRemoteError, match=re.escape(f"DVC remote 'local' at {remote}") + ".*does not exist"):
        DvcPipeline(generated).push("generate")
    assert not (tmp_path / "unmounted-volume").exists(), "DVC created the missing volume's folder"
    assert_nothing_lost(generated, tmp_path / "remote")


@pytest.mark.integration
def test_a_remote_name_not_in_the_config_names_the_setting(generated):
    with pytest.raises(DvcRemoteError, match=r"remote 'minio', chosen by GENOPS_DVC_REMOTE.*not defined in .*\.dvc/config "
                                             r"\(remotes there: local\)"):
        DvcPipeline(generated, remote="minio").push("generate")


@pytest.mark.integration
def test_a_failed_upload_names_the_remote_and_keeps_the_data(generated, tmp_path):
    # The folder takes the probe file but not DVC's objects: its `files` subfolder is a plain file.
    remote = Path(tempfile.mkdtemp(dir=tmp_path))
    (remote / "files").write_text("not a folder")
    set_remote_url(generated, remote)
    with pytest.raises(DvcRemoteError, match=re.escape(f"dvc push to DVC remote 'local' at {remote}") + ".*failed.*local cache"):
        DvcPipeline(generated).push("generate")
    assert_nothing_lost(generated, tmp_path / "remote")
