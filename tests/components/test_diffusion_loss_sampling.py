"""The shared diffusion machinery: schedules, min-SNR weights, targets, condition dropout, the sampling loop."""

import math

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.training_utils import compute_snr as diffusers_compute_snr

from components.config import ConfigError, from_dict
from components.diffusion import (
    DiffusionConfig,
    compute_snr,
    condition_dropout_mask,
    denoising_loss,
    drop_captions,
    drop_conditioning,
    guided_prediction,
    make_noise_scheduler,
    make_sampling_scheduler,
    min_snr_weights,
    sample,
    training_target,
)


def ideal_denoiser(noise_scheduler, x0: torch.Tensor):
    """The exact predictor for data that is always `x0`: given x_t and t, eps (or v) follows in closed form."""
    alphas_cumprod = noise_scheduler.alphas_cumprod

    def denoise(latents, t, encoder_hidden_states):
        alpha_bar = alphas_cumprod[t].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        eps = (latents - alpha * x0) / sigma
        if noise_scheduler.config.prediction_type == "v_prediction":
            return alpha * eps - sigma * x0
        return eps

    return denoise


def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4,
    ).eval()


def unet_denoiser(unet):
    return lambda latents, t, cond: unet(latents, t, encoder_hidden_states=cond).sample


@pytest.mark.parametrize(
    "values, field",
    [
        ({"snr_gamma": 0.0}, "snr_gamma"),
        ({"condition_dropout": 1.0}, "condition_dropout"),
        ({"num_inference_steps": 2000}, "num_inference_steps"),
        ({"guidance_scale": 0.5}, "guidance_scale"),
        ({"beta_start": 0.02, "beta_end": 0.01}, "beta_start"),
    ],
)
def test_diffusion_config_errors_name_the_field(values, field):
    with pytest.raises(ValueError, match=field):
        DiffusionConfig(**values)


def test_diffusion_config_rejects_unknown_schedule():
    with pytest.raises(ConfigError, match="beta_schedule"):
        from_dict(DiffusionConfig, {"beta_schedule": "cosine"})


def test_snr_matches_diffusers_and_the_direct_formula():
    scheduler = make_noise_scheduler(DiffusionConfig())
    timesteps = torch.tensor([0, 10, 250, 500, 999])
    ours = compute_snr(scheduler, timesteps)
    alpha_bar = scheduler.alphas_cumprod[timesteps].double()
    assert torch.equal(ours, (alpha_bar / (1 - alpha_bar)).float())  # this very float64 formula, rounded once
    # diffusers works in fp32 from the same fp32 alpha_bar: sqrt (1 rounding), 1 - alpha_bar and its sqrt
    # (1.5), the ratio (1) and its square (2 x 3.5 + 1) make 8 roundings, ours 1 more: rtol 9 * 2^-24.
    torch.testing.assert_close(ours, diffusers_compute_snr(scheduler, timesteps), rtol=9 * 2.0**-24, atol=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_match_the_paper_formula(prediction_type):
    gamma = 5.0
    scheduler = make_noise_scheduler(DiffusionConfig(prediction_type=prediction_type))
    timesteps = torch.tensor([0, 50, 200, 400, 700, 999])
    weights = min_snr_weights(scheduler, timesteps, gamma)
    expected = []
    for t in timesteps.tolist():
        alpha_bar = float(scheduler.alphas_cumprod[t])
        snr = alpha_bar / (1 - alpha_bar)
        expected.append(min(snr, gamma) / (snr if prediction_type == "epsilon" else snr + 1))
    # fp32 weights from the float64 SNR: its rounding, (SNR + 1) and the division are 3 roundings, the
    # float64 expectation rounded to fp32 one more (the clamp is exact): rtol 5 * 2^-24 with one to spare.
    torch.testing.assert_close(weights, torch.tensor(expected), rtol=5 * 2.0**-24, atol=0)
    # high-noise steps (SNR < gamma) keep full weight for epsilon; low-noise steps are down-weighted
    if prediction_type == "epsilon":
        assert weights[-1] == 1.0 and weights[0] < 0.01  # SNR / SNR: exactly 1 in IEEE arithmetic


def test_v_target_matches_scheduler_get_velocity():
    scheduler = make_noise_scheduler(DiffusionConfig(prediction_type="v_prediction"))
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 4, 8, 8, generator=generator)
    noise = torch.randn(4, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([1, 300, 600, 999])
    # get_velocity evaluates the same fp32 formula, sqrt(alpha_bar) * noise - sqrt(1 - alpha_bar) * x0,
    # op for op: bit for bit equal, on any machine
    assert torch.equal(
        training_target(scheduler, latents, noise, timesteps), scheduler.get_velocity(latents, noise, timesteps)
    )
    epsilon = make_noise_scheduler(DiffusionConfig(prediction_type="epsilon"))
    assert torch.equal(training_target(epsilon, latents, noise, timesteps), noise)


@pytest.mark.parametrize("snr_gamma", [None, 5.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_denoising_loss_equals_the_weighted_mse_written_out(snr_gamma, prediction_type):
    scheduler = make_noise_scheduler(DiffusionConfig(prediction_type=prediction_type))
    unet = tiny_unet()
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        losses = denoising_loss(unet_denoiser(unet), scheduler, latents, cond, snr_gamma=snr_gamma,
                                generator=torch.Generator().manual_seed(3))
        # the same draws, in the same order, by hand
        generator = torch.Generator().manual_seed(3)
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, 1000, (3,), generator=generator)
        alpha_bar = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
        target = noise if prediction_type == "epsilon" else alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents
        per_example = ((unet(noisy, timesteps, encoder_hidden_states=cond).sample - target) ** 2).mean(dim=(1, 2, 3))
    snr = alpha_bar.flatten() / (1 - alpha_bar.flatten())
    if snr_gamma is None:
        weights = torch.ones(3)
    else:
        weights = torch.minimum(snr, torch.tensor(snr_gamma)) / (snr if prediction_type == "epsilon" else snr + 1)
    # Same draws, same UNet batch, same fp32 ops: the unweighted mean is bit for bit the one written out.
    assert torch.equal(losses["mse"], per_example.mean())
    # The weights come from a float64 SNR (3 fp32 roundings) here from an fp32 one (4), then a product and
    # a mean of 3 positive terms (3 more each side): at most 13 roundings apart, rtol 16 * 2^-24.
    torch.testing.assert_close(losses["loss"], (per_example * weights).mean(), rtol=16 * 2.0**-24, atol=0)


def test_condition_dropout_is_seeded_and_has_the_right_rate():
    first = condition_dropout_mask(20000, 0.1, torch.Generator().manual_seed(5))
    again = condition_dropout_mask(20000, 0.1, torch.Generator().manual_seed(5))
    other = condition_dropout_mask(20000, 0.1, torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert abs(first.float().mean().item() - 0.1) < 0.01
    assert not condition_dropout_mask(100, 0.0).any()
    with pytest.raises(ValueError, match="probability"):
        condition_dropout_mask(4, 1.5)


def test_drop_captions_and_drop_conditioning():
    captions = [f"caption {i}" for i in range(1000)]
    dropped = drop_captions(captions, 0.1, torch.Generator().manual_seed(0))
    mask = condition_dropout_mask(1000, 0.1, torch.Generator().manual_seed(0))
    assert [d == "" for d in dropped] == mask.tolist()
    assert all(d == c for d, c, m in zip(dropped, captions, mask.tolist()) if not m)

    cond = torch.arange(12.0).view(3, 2, 2) + 1  # (B, L, D)
    uncond = torch.zeros(1, 2, 2)
    mixed = drop_conditioning(cond, uncond, torch.tensor([False, True, False]))
    assert torch.equal(mixed[0], cond[0]) and torch.equal(mixed[2], cond[2]) and not mixed[1].any()
    with pytest.raises(ValueError, match="mask"):
        drop_conditioning(cond, uncond, torch.tensor([True]))


def test_guided_prediction_at_scale_one_is_the_conditional_prediction():
    # In float64: guided_prediction runs the UNet on a batch of 4, the expectation on batches of 2, and
    # in fp32 those round differently (1e-6 of outputs ~1 here); in float64 that difference is ~1e-15,
    # so atol 1e-9 is 10^5 above the rounding and 10^8 below a wrong guidance formula or swapped halves.
    unet = tiny_unet().double()
    denoise = unet_denoiser(unet)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64)
    cond = torch.randn(2, 5, 8, generator=generator, dtype=torch.float64)
    uncond = torch.randn(1, 5, 8, generator=generator, dtype=torch.float64)
    t = torch.tensor(500)
    with torch.no_grad():
        conditional = denoise(latents, t.expand(2), cond)
        unconditional = denoise(latents, t.expand(2), uncond.expand(2, -1, -1))
        torch.testing.assert_close(guided_prediction(denoise, latents, t, cond, uncond, 1.0), conditional,
                                   rtol=0, atol=1e-9)
        guided = guided_prediction(denoise, latents, t, cond, uncond, 4.0)
    torch.testing.assert_close(guided, unconditional + 4.0 * (conditional - unconditional), rtol=0, atol=1e-9)


@pytest.mark.parametrize("sampler", ["dpmsolver++", "ddim"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_sampling_with_the_ideal_denoiser_recovers_the_data(sampler, prediction_type):
    noise_scheduler = make_noise_scheduler(DiffusionConfig(prediction_type=prediction_type))
    x0 = torch.linspace(-1.5, 1.5, 4 * 4 * 4).view(1, 4, 4, 4)
    cond = torch.zeros(3, 2, 8)
    latents = sample(ideal_denoiser(noise_scheduler, x0), make_sampling_scheduler(noise_scheduler, sampler), cond, None,
                     latent_shape=(4, 4, 4), num_inference_steps=20, guidance_scale=1.0,
                     generator=torch.Generator().manual_seed(0))
    assert latents.shape == (3, 4, 4, 4)
    # The exact denoiser makes every x0 prediction x0 up to a few fp32 roundings of |x_t| / alpha_t
    # (<= 3 at the last steps, alpha_bar >= 0.94 there); both samplers end at sigma = 0 on a combination
    # of the last two predictions with weights <= 2: ~64 roundings of 3, 64 * 3 * 2^-24 = 1.1e-5.
    torch.testing.assert_close(latents, x0.expand(3, -1, -1, -1), rtol=0, atol=64 * 3 * 2.0**-24)


def test_sampling_is_deterministic_for_a_seed_and_guidance_changes_it():
    unet = tiny_unet()
    noise_scheduler = make_noise_scheduler(DiffusionConfig())
    cond = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1))
    uncond = torch.zeros(1, 5, 8)

    def run(seed, scale, sampler="dpmsolver++"):
        return sample(unet_denoiser(unet), make_sampling_scheduler(noise_scheduler, sampler), cond, uncond,
                      latent_shape=(4, 8, 8), num_inference_steps=4, guidance_scale=scale,
                      generator=torch.Generator().manual_seed(seed))

    first = run(0, 3.0)
    assert first.shape == (2, 4, 8, 8) and torch.isfinite(first).all()
    assert torch.equal(first, run(0, 3.0))
    # another seed, guidance or sampler moves samples by O(1), far outside allclose's default rtol 1e-5
    assert not torch.allclose(first, run(1, 3.0))
    assert not torch.allclose(first, run(0, 1.0))
    assert not torch.allclose(first, run(0, 3.0, "ddim"))


def test_sampling_argument_errors():
    noise_scheduler = make_noise_scheduler(DiffusionConfig())
    scheduler = make_sampling_scheduler(noise_scheduler, "ddim")
    cond = torch.zeros(2, 3, 8)
    denoise = ideal_denoiser(noise_scheduler, torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match="uncond"):
        sample(denoise, scheduler, cond, None, latent_shape=(4, 4, 4), num_inference_steps=2, guidance_scale=2.0)
    with pytest.raises(ValueError, match="latents must have shape"):
        sample(denoise, scheduler, cond, None, latent_shape=(4, 4, 4), num_inference_steps=2, guidance_scale=1.0,
               latents=torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError, match="sampler"):
        make_sampling_scheduler(noise_scheduler, "euler")


def test_sampling_schedulers_share_the_training_schedule():
    noise_scheduler = make_noise_scheduler(DiffusionConfig(prediction_type="v_prediction"))
    for name in ("dpmsolver++", "ddim"):
        scheduler = make_sampling_scheduler(noise_scheduler, name)
        assert scheduler.config.prediction_type == "v_prediction"
        # the same betas through the same fp32 cumprod in diffusers: bit for bit
        assert torch.equal(scheduler.alphas_cumprod, noise_scheduler.alphas_cumprod)
    assert make_sampling_scheduler(noise_scheduler, "dpmsolver++").config.algorithm_type == "dpmsolver++"
    # the cosine schedule: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi / 2), s = 0.008
    t = 500
    expected = math.cos(((t + 1) / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    # fp32 cumprod of t + 1 factors (1 - beta), each rounded once: <= 2 (t + 1) roundings relative
    assert float(noise_scheduler.alphas_cumprod[t]) == pytest.approx(expected, rel=2 * (t + 1) * 2.0**-24)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", ["dpmsolver++", "ddim"])
def test_sampling_starts_where_the_prediction_is_well_posed(prediction_type, sampler):
    noise_scheduler = make_noise_scheduler(DiffusionConfig(prediction_type=prediction_type))
    scheduler = make_sampling_scheduler(noise_scheduler, sampler)
    scheduler.set_timesteps(25)
    first = int(scheduler.timesteps[0])
    alpha_bar = float(noise_scheduler.alphas_cumprod[first])
    half_log_snr = 0.5 * math.log(alpha_bar / (1 - alpha_bar))
    if prediction_type == "v_prediction" and sampler == "ddim":
        assert first == 999
    else:
        # an epsilon model's x0 estimate divides by alpha_t: start where 1/alpha_t is in the hundreds, not 2e4
        assert half_log_snr >= -5.1 - 1e-3 and first >= 950, (first, half_log_snr)



def test_noise_level_profile_shows_min_snr_v_starving_high_noise():
    from components.diffusion import noise_level_profile

    v = make_noise_scheduler(DiffusionConfig(prediction_type="v_prediction"))
    min_snr = noise_level_profile(v, make_sampling_scheduler(v, "dpmsolver++"), 25, snr_gamma=5.0)
    plain = noise_level_profile(v, make_sampling_scheduler(v, "dpmsolver++"), 25, snr_gamma=None)
    for bands in (min_snr, plain):
        assert sum(b.timestep_share for b in bands) == pytest.approx(1.0)
        assert sum(b.loss_weight_share for b in bands) == pytest.approx(1.0)
        assert sum(b.sampler_step_share for b in bands) == pytest.approx(1.0)
    high_noise = [i for i, b in enumerate(min_snr) if b.snr_high <= 0.1]
    timesteps = sum(min_snr[i].timestep_share for i in high_noise)
    assert timesteps > 0.15  # the cosine schedule spends a fifth of its timesteps below SNR 0.1 ...
    assert sum(min_snr[i].loss_weight_share for i in high_noise) < 0.03  # ... min-SNR-5 with v gives them ~2%
    assert sum(plain[i].loss_weight_share for i in high_noise) == pytest.approx(timesteps)
    assert min_snr[0].t_last == 999 and min_snr[0].sampler_step_share > 0  # trailing: sampling starts at the top
