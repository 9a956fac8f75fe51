"""Crash-safe writes: whole files or nothing, and the permissions a plain write would give."""

import os
import stat

import numpy as np
import pytest

from components.fileio import atomic_directory, atomic_write_bytes, atomic_write_json
from components.metrics.fid import FeatureStatistics


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_file_gets_the_umask_mode_not_the_temporary_files_0600(tmp_path, umask_022):
    out = atomic_write_json(tmp_path / "deploy" / "manifest.json", {"a": 1})
    assert mode(out) == 0o644  # what open() gives under umask 022; mkstemp's own file is 0o600
    assert [p.name for p in out.parent.iterdir()] == ["manifest.json"]  # no temporary file left


def test_a_replaced_file_keeps_its_mode(tmp_path, umask_022):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and mode(target) == 0o640


def test_a_failed_directory_build_leaves_the_old_one_and_new_ones_are_readable(tmp_path, umask_022):
    target = tmp_path / "bundle"
    with atomic_directory(target) as tmp:
        (tmp / "model.onnx").write_bytes(b"v1")
    assert mode(target) == 0o755
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "model.onnx").write_bytes(b"half")
        raise RuntimeError("crash while exporting")
    assert (target / "model.onnx").read_bytes() == b"v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_fid_statistics_save_atomically_with_the_plain_mode(tmp_path, umask_022):
    stats = FeatureStatistics(4, extractor="test")
    stats.update(np.random.default_rng(0).normal(size=(8, 4)))
    path = stats.save(tmp_path / "ref.npz", dataset_version="md5")
    assert mode(path) == 0o644
    loaded = FeatureStatistics.load(path)
    assert loaded.count == 8 and np.array_equal(loaded.mean, stats.mean)
