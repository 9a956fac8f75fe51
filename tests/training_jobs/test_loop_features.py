"""The shared training-loop features: schedules, EMA, accumulation, and checkpoints that resume exactly."""

import math

import pytest
import torch
from torch import nn

from training_jobs.loop import (
    ExponentialMovingAverage,
    MetricWindow,
    TrainConfig,
    TrainState,
    build_lr_scheduler,
    build_optimizer,
    due,
    lr_multiplier,
    seed_everything,
    train_step,
)


def test_warmup_then_cosine_to_the_floor():
    cfg = TrainConfig(steps=110, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    # Python floats (binary64): a few roundings of numbers <= 1 are ~1e-16, so approx's default rel=1e-6
    # only absorbs the formula being written another way, never a wrong step or ratio (>= 1e-3 here).
    assert lr_multiplier(0, cfg) == pytest.approx(0.1)
    assert lr_multiplier(9, cfg) == pytest.approx(1.0)
    assert lr_multiplier(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_multiplier(110, cfg) == pytest.approx(0.1)
    linear = TrainConfig(steps=20, warmup_steps=0, lr_schedule="linear", min_lr_ratio=0.0)
    assert lr_multiplier(10, linear) == pytest.approx(0.5)
    assert lr_multiplier(7, TrainConfig(steps=20, lr_schedule="constant")) == 1.0


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="train.grad_accum_steps"):
        TrainConfig(grad_accum_steps=0)
    with pytest.raises(ValueError, match="train.ema_decay"):
        TrainConfig(ema_decay=1.5)


def test_ema_follows_the_weights_and_is_applied_temporarily():
    model = nn.Linear(3, 3)
    ema = ExponentialMovingAverage(model, decay=0.5)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model)
    # lerp with weight 0.5 of values below 3 in fp32: a couple of roundings, ~2 * 2^-24 * 3 = 4e-7 absolute;
    # allclose's default rtol 1e-5 / atol 1e-8 covers that and nothing near a wrong decay (errors of 0.5).
    assert torch.allclose(ema.shadow["weight"], start + 1.0)
    trained = model.weight.detach().clone()
    with ema.applied(model) as module:
        assert torch.equal(module.weight, ema.shadow["weight"])  # the shadow copied in, not recomputed
    assert torch.equal(model.weight, trained)


def test_due():
    assert due(10, 5, 12) and not due(11, 5, 12) and due(12, 5, 12) and not due(3, 0, 12)


def _run(steps: int, resume_from: str | None, save_at: int | None, tmp_path, accum: int = 1):
    """Train a tiny regression for `steps` steps (optionally from / to a checkpoint); returns the weights."""
    seed_everything(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    cfg = TrainConfig(steps=steps, lr=0.05, warmup_steps=2, grad_accum_steps=accum, ema_decay=0.9)
    optimizer = build_optimizer(model.parameters(), cfg)
    scheduler = build_lr_scheduler(optimizer, cfg)
    ema = ExponentialMovingAverage(model, cfg.ema_decay)
    start = TrainState.load(tmp_path / resume_from, model, optimizer, scheduler, ema) if resume_from else 0

    def batches():
        while True:
            x = torch.randn(8, 4)  # drawn from the global RNG: a resumed run must continue its stream
            yield x, x.sum(dim=1, keepdim=True)

    stream = batches()
    window = MetricWindow(8)
    for step in range(start, steps):
        train_step(model, stream, lambda b: {"loss": nn.functional.mse_loss(model(b[0]), b[1])},
                   optimizer, scheduler, ema, cfg, torch.device("cpu"), window)
        if save_at == step + 1:
            TrainState.save(tmp_path / "ckpt", step + 1, model, optimizer, scheduler, ema)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), ema, window.flush()


def test_resumed_training_matches_uninterrupted_training(tmp_path):
    straight, ema_straight, _ = _run(6, None, save_at=3, tmp_path=tmp_path)
    resumed, ema_resumed, _ = _run(6, "ckpt", save_at=None, tmp_path=tmp_path)
    # Bit for bit (as the README promises): same seed, same RNG stream, weights and optimizer state
    # restored exactly (safetensors and torch.save keep every bit), same ops in the same order on one machine.
    assert torch.equal(straight, resumed)
    assert all(torch.equal(ema_straight.shadow[k], ema_resumed.shadow[k]) for k in ema_straight.shadow)


def test_checkpoint_files_are_safetensors_and_weights_only(tmp_path):
    _run(2, None, save_at=2, tmp_path=tmp_path)
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["ema.safetensors", "model.safetensors", "state.pt"]
    torch.load(tmp_path / "ckpt" / "state.pt", weights_only=True)  # nothing that needs unpickling code


def test_gradient_accumulation_logs_the_mean_loss(tmp_path):
    _, _, metrics = _run(2, None, save_at=None, tmp_path=tmp_path, accum=3)
    assert set(metrics) == {"train/loss", "train/samples_per_s"}
    assert metrics["train/loss"] > 0
