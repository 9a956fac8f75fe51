"""Checkpoint faults: a corrupted file and a full disk each fail with the path named, and a failed write
leaves no half-written checkpoint that a resume could load."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from torch import nn

from training_jobs.loop import TrainConfig, TrainState, build_lr_scheduler, build_optimizer

PROJECT = Path(__file__).resolve().parents[2]


def parts():
    model = nn.Linear(256, 256)
    cfg = TrainConfig(steps=4)
    optimizer = build_optimizer(model.parameters(), cfg)
    return model, optimizer, build_lr_scheduler(optimizer, cfg)


def test_a_corrupted_checkpoint_file_is_named(tmp_path):
    model, optimizer, scheduler = parts()
    TrainState.save(tmp_path / "ckpt", 3, model, optimizer, scheduler, None)
    assert TrainState.load(tmp_path / "ckpt", *parts(), None) == 3
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated mid-write
    with pytest.raises(RuntimeError, match=rf"checkpoint {tmp_path / 'ckpt'} is corrupted"):
        TrainState.load(tmp_path / "ckpt", *parts(), None)


def test_a_garbled_state_file_is_named(tmp_path):
    model, optimizer, scheduler = parts()
    TrainState.save(tmp_path / "ckpt", 3, model, optimizer, scheduler, None)
    (tmp_path / "ckpt" / "state.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(RuntimeError, match="corrupted or incomplete"):
        TrainState.load(tmp_path / "ckpt", *parts(), None)


def test_a_full_disk_leaves_no_partial_checkpoint(tmp_path):
    # A size-limited write: RLIMIT_FSIZE makes the kernel refuse bytes past 64 KiB (EFBIG), as a full
    # disk refuses them (ENOSPC); a 256x256 fp32 Linear is 257 KiB of weights, so the write fails midway.
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(PROJECT)!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        from tests.training_jobs.test_checkpoint_faults import parts
        from training_jobs.loop import TrainState
        model, optimizer, scheduler = parts()
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
        try:
            TrainState.save({str(tmp_path / 'ckpt')!r}, 3, model, optimizer, scheduler, None)
        except OSError as exc:
            print("ERROR:", exc)
            sys.exit(3)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 3, result.stderr[-2000:]
    assert f"writing checkpoint {tmp_path / 'ckpt'} failed" in result.stdout
    assert not (tmp_path / "ckpt").exists()
