"""Diffusion machinery shared by every denoiser in genops: noise schedules, the training loss, and the
classifier-free-guided sampling loop.

Schedulers are separate from denoisers, diffusers style: a scheduler (a diffusers `DDPMScheduler` for
training; `DPMSolverMultistepScheduler` 'dpmsolver++' or `DDIMScheduler` for sampling) only knows the
noise schedule, and a denoiser is any callable `(latents, t, encoder_hidden_states) -> prediction`.
The SD-style base model, ParaDiffusion (LLM hidden states as conditioning), MiniGPT-5 (mapped voken
features) and VLAD all train with `denoising_loss` and sample with `sample`.

Conventions: latents are already multiplied by the VAE scaling factor; `t` is an int64 timestep in
[0, num_train_timesteps); the conditioning is a (B, L, D) tensor, and the unconditional one (the empty
prompt, or zeros for vokens) has the same (L, D) with batch B or 1.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

logger = logging.getLogger(__name__)

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
SamplingScheduler = DPMSolverMultistepScheduler | DDIMScheduler


@dataclass
class DiffusionConfig:
    """Noise schedule, training objective and default sampler of a latent diffusion model."""

    # number of discrete diffusion timesteps T the model is trained on
    num_train_timesteps: int = 1000
    # beta schedule: 'squaredcos_cap_v2' is the cosine schedule (Nichol & Dhariwal 2021), 'scaled_linear' is SD's
    beta_schedule: Literal["squaredcos_cap_v2", "linear", "scaled_linear"] = "squaredcos_cap_v2"
    # first beta of the 'linear' / 'scaled_linear' schedules (unused by the cosine schedule)
    beta_start: float = 0.00085
    # last beta of the 'linear' / 'scaled_linear' schedules (unused by the cosine schedule)
    beta_end: float = 0.012
    # what the denoiser predicts: the noise ('epsilon') or the velocity v = alpha_t*eps - sigma_t*x0 ('v_prediction')
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    # min-SNR-gamma loss weighting (Hang et al. 2023; 5.0 in the paper); null trains with the plain MSE
    snr_gamma: float | None = 5.0
    # probability that a training example's condition is replaced by the unconditional one (for CFG)
    condition_dropout: float = 0.1
    # default sampler: DPM-Solver++ (multistep, 2nd order) or DDIM (eta 0)
    sampler: Literal["dpmsolver++", "ddim"] = "dpmsolver++"
    # default number of sampling steps
    num_inference_steps: int = 25
    # default classifier-free guidance scale; 1.0 samples from the conditional model alone
    guidance_scale: float = 3.0

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ValueError(
                f"need 0 < beta_start < beta_end < 1, got beta_start={self.beta_start}, beta_end={self.beta_end}"
            )
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ValueError(f"snr_gamma must be positive or null (no weighting), got {self.snr_gamma}")
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1), got {self.condition_dropout}")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in [1, num_train_timesteps={self.num_train_timesteps}], "
                f"got {self.num_inference_steps}"
            )
        if self.guidance_scale < 1.0:
            raise ValueError(f"guidance_scale must be >= 1.0 (1.0 disables guidance), got {self.guidance_scale}")


def make_noise_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    """The training-time scheduler: holds alphas_cumprod, adds noise, and is saved beside the denoiser."""
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        prediction_type=cfg.prediction_type,
        # latents are unbounded, so the pixel-space [-1, 1] clip of DDPM would corrupt them
        clip_sample=False,
    )


def make_sampling_scheduler(
    noise_scheduler: DDPMScheduler, sampler: Literal["dpmsolver++", "ddim"]
) -> SamplingScheduler:
    """A fresh sampling scheduler on the same noise schedule and prediction type as `noise_scheduler`.

    Multistep solvers keep state between steps, so every call to `sample` should get a fresh one.
    """
    config = noise_scheduler.config
    common = dict(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        trained_betas=config.trained_betas,
        prediction_type=config.prediction_type,
    )
    # Where sampling starts. 'trailing' starts at t = T-1, where training put (almost) pure noise (Lin et al.
    # 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2); a v-prediction model
    # is well-posed there (x0 = alpha_t*x_t - sigma_t*v). An epsilon model is not: its x0 estimate
    # (x_t - sigma_t*eps) / alpha_t multiplies every error in eps by 1/alpha_t, about 2e4 at T-1 of the
    # cosine schedule (alpha_bar = 2.4e-9), which turns a trained model's samples into noise.
    # So DPM-Solver++ never goes below lambda = log(alpha/sigma) = -5.1 (diffusers' setting for
    # squaredcos_cap_v2; SD's scaled_linear schedule stays above it), and epsilon DDIM starts one stride
    # below T, as SD's DDIM config does ('leading', steps_offset 1).
    if sampler == "dpmsolver++":
        return DPMSolverMultistepScheduler(
            **common, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing",
            lambda_min_clipped=-5.1,
        )
    if sampler == "ddim":
        spacing = {"timestep_spacing": "trailing"}
        if config.prediction_type == "epsilon":
            spacing = {"timestep_spacing": "leading", "steps_offset": 1}
        # set_alpha_to_one: the last step lands on the clean sample (alpha_bar = 1), as DPM-Solver's final
        # sigma 0 does, instead of on the t=0 noise level
        return DDIMScheduler(**common, **spacing, clip_sample=False, set_alpha_to_one=True)
    raise ValueError(f"unknown sampler {sampler!r}; use 'dpmsolver++' or 'ddim' (DiffusionConfig.sampler)")


def compute_snr(noise_scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) at each timestep, (B,) float32."""
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float64)
    alpha_bar = alphas_cumprod[timesteps]  # (B,)
    return (alpha_bar / (1.0 - alpha_bar)).float()


def min_snr_weights(noise_scheduler: DDPMScheduler, timesteps: torch.Tensor, snr_gamma: float) -> torch.Tensor:
    """Per-example loss weights of min-SNR-gamma (Hang et al. 2023, eq. 10 and Sec. 3.4).

    The paper weights the x0-space loss by min(SNR, gamma). An epsilon-prediction MSE equals the
    x0-space MSE times 1/SNR, and a v-prediction MSE equals it times 1/(SNR + 1), so the weight on
    the MSE we actually compute is min(SNR, gamma) / SNR, or min(SNR, gamma) / (SNR + 1) for v.
    """
    snr = compute_snr(noise_scheduler, timesteps)  # (B,)
    clipped = torch.clamp(snr, max=snr_gamma)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    raise ValueError(f"min-SNR weighting needs prediction_type 'epsilon' or 'v_prediction', got {prediction_type!r}")


def training_target(
    noise_scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the denoiser should predict for x_t = alpha_t*x0 + sigma_t*eps: eps, or v = alpha_t*eps - sigma_t*x0.

    v is the velocity of Salimans & Ho 2022 ("Progressive Distillation", Sec. 4), with
    alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t).
    """
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        alpha_bar = noise_scheduler.alphas_cumprod.to(device=latents.device)[timesteps]  # (B,)
        shape = (-1,) + (1,) * (latents.ndim - 1)
        alpha = alpha_bar.sqrt().to(latents.dtype).view(shape)  # (B, 1, 1, 1)
        sigma = (1.0 - alpha_bar).sqrt().to(latents.dtype).view(shape)  # (B, 1, 1, 1)
        return alpha * noise - sigma * latents
    raise ValueError(f"unsupported prediction_type {prediction_type!r}; use 'epsilon' or 'v_prediction'")


def sample_timesteps(
    noise_scheduler: DDPMScheduler, batch_size: int, device: torch.device | str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Uniform training timesteps in [0, T), (B,) int64."""
    return torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (batch_size,), generator=generator, device=device
    )


def denoising_loss(
    denoiser: Denoiser,
    noise_scheduler: DDPMScheduler,
    latents: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    *,
    snr_gamma: float | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The latent-diffusion objective (Rombach et al. 2022, eq. 2; Ho et al. 2020, eq. 14).

    Draws t ~ U[0, T) and eps ~ N(0, I), noises the (scaled) latents, and regresses the denoiser's
    output on eps (or v). Returns 'loss' (min-SNR-weighted when `snr_gamma` is set, the term to
    backpropagate) and 'mse' (the unweighted mean, comparable across weightings), both scalars.
    """
    batch_size = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    timesteps = sample_timesteps(noise_scheduler, batch_size, latents.device, generator)  # (B,)
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)  # (B, C, h, w)
    target = training_target(noise_scheduler, latents, noise, timesteps)  # (B, C, h, w)
    prediction = denoiser(noisy_latents, timesteps, encoder_hidden_states)  # (B, C, h, w)
    if prediction.shape != target.shape:
        raise ValueError(f"denoiser returned shape {tuple(prediction.shape)}, expected {tuple(target.shape)}")
    per_example = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(
        dim=tuple(range(1, target.ndim))
    )  # (B,)
    mse = per_example.mean()
    if snr_gamma is None:
        return {"loss": mse, "mse": mse}
    weights = min_snr_weights(noise_scheduler, timesteps, snr_gamma)  # (B,)
    return {"loss": (per_example * weights).mean(), "mse": mse}


def condition_dropout_mask(
    batch_size: int, probability: float, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(B,) bool, True where an example's condition is dropped for classifier-free guidance training.

    Ho & Salimans 2022 (Algorithm 1) train one network for both the conditional and the
    unconditional model by replacing the condition with a null one with probability p_uncond.
    """
    if not 0.0 <= probability < 1.0:
        raise ValueError(f"condition dropout probability must be in [0, 1), got {probability}")
    return torch.rand(batch_size, generator=generator, device=device) < probability


def drop_captions(
    captions: Sequence[str], probability: float, generator: torch.Generator | None = None
) -> list[str]:
    """Replace each caption by the empty prompt with `probability`, seeded by `generator`."""
    mask = condition_dropout_mask(len(captions), probability, generator)
    return ["" if drop else caption for caption, drop in zip(captions, mask.tolist())]


def drop_conditioning(cond: torch.Tensor, uncond: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise select: `uncond` where `mask` is True, `cond` elsewhere.

    Works for token ids (B, L) as well as features (B, L, D); `uncond` may have batch 1. MiniGPT-5
    drops its voken features to zeros this way; token ids drop to the empty prompt's ids.
    """
    if mask.shape != (cond.shape[0],):
        raise ValueError(f"mask must have shape ({cond.shape[0]},), got {tuple(mask.shape)}")
    if uncond.shape[1:] != cond.shape[1:]:
        raise ValueError(f"uncond shape {tuple(uncond.shape)} does not match cond shape {tuple(cond.shape)}")
    mask = mask.view((-1,) + (1,) * (cond.ndim - 1)).to(cond.device)  # (B, 1, ...)
    return torch.where(mask, uncond.to(cond.device, cond.dtype).expand_as(cond), cond)


def guided_prediction(
    denoiser: Denoiser,
    latents: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance_scale: float,
) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): e_u + s * (e_c - e_u), one batched call."""
    batch_size = latents.shape[0]
    uncond = uncond.expand(batch_size, *uncond.shape[1:]) if uncond.shape[0] == 1 else uncond
    if uncond.shape != cond.shape:
        raise ValueError(f"uncond shape {tuple(uncond.shape)} does not match cond shape {tuple(cond.shape)}")
    t = t.expand(batch_size) if t.ndim == 0 else t  # (B,)
    prediction = denoiser(
        torch.cat([latents, latents]), torch.cat([t, t]), torch.cat([uncond, cond])
    )  # (2B, C, h, w)
    prediction_uncond, prediction_cond = prediction.chunk(2)  # (B, C, h, w) each
    return prediction_uncond + guidance_scale * (prediction_cond - prediction_uncond)


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    scheduler: SamplingScheduler,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    *,
    latent_shape: tuple[int, int, int],
    num_inference_steps: int,
    guidance_scale: float,
    generator: torch.Generator | None = None,
    latents: torch.Tensor | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> torch.Tensor:
    """Run the reverse process from noise to (scaled) latents, (B, C, h, w).

    `cond` is the (B, L, D) conditioning; `uncond` the unconditional one ((1 or B, L, D)), needed
    when `guidance_scale` > 1. With scale 1 the unconditional pass is skipped: e_u + 1*(e_c - e_u)
    is e_c. `generator` seeds the initial noise (and any stochastic solver step); pass `latents` to
    start from given noise instead. `progress` wraps the timestep loop (e.g. `tqdm`).
    """
    if guidance_scale < 1.0:
        raise ValueError(f"guidance_scale must be >= 1.0 (1.0 disables guidance), got {guidance_scale}")
    use_guidance = guidance_scale > 1.0
    if use_guidance and uncond is None:
        raise ValueError(f"guidance_scale={guidance_scale} needs the unconditional embedding `uncond`")
    batch_size = cond.shape[0]
    device, dtype = cond.device, cond.dtype
    if latents is None:
        latents = torch.randn((batch_size, *latent_shape), generator=generator, device=device, dtype=dtype)
    elif latents.shape != (batch_size, *latent_shape):
        raise ValueError(f"latents must have shape {(batch_size, *latent_shape)}, got {tuple(latents.shape)}")
    scheduler.set_timesteps(num_inference_steps, device=device)
    latents = latents * scheduler.init_noise_sigma  # (B, C, h, w)
    timesteps = scheduler.timesteps
    for t in progress(timesteps) if progress is not None else timesteps:
        model_input = scheduler.scale_model_input(latents, t)  # (B, C, h, w)
        if use_guidance:
            prediction = guided_prediction(denoiser, model_input, t, cond, uncond, guidance_scale)
        else:
            prediction = denoiser(model_input, t.expand(batch_size), cond)  # (B, C, h, w)
        latents = scheduler.step(prediction, t, latents, generator=generator).prev_sample
    return latents


@dataclass(frozen=True)
class NoiseLevelBand:
    """One band of noise levels: its share of training timesteps, of the training loss weight, and of sampler steps."""

    snr_low: float
    snr_high: float
    t_first: int  # smallest timestep in the band (-1 when no timestep falls in it)
    t_last: int  # largest timestep in the band (-1 when no timestep falls in it)
    timestep_share: float  # of uniformly drawn training timesteps
    loss_weight_share: float  # of the summed per-timestep weight on the MSE the loss computes
    sampler_step_share: float  # of the sampler's denoiser calls


def noise_level_profile(
    noise_scheduler: DDPMScheduler,
    sampling_scheduler: SamplingScheduler,
    num_inference_steps: int,
    snr_gamma: float | None,
    snr_edges: Sequence[float] = (0.01, 0.1, 1.0, 10.0),
) -> list[NoiseLevelBand]:
    """How training and sampling spend themselves across noise levels, band by SNR band (highest noise first).

    Layout is decided at high noise (low SNR): there x_t says almost nothing about where the object is,
    so only the condition can. With min-SNR-gamma and v-prediction the weight on the MSE,
    min(SNR, gamma) / (SNR + 1), tends to SNR there: a band can hold a fifth of the timesteps and almost
    none of the loss.
    """
    steps = noise_scheduler.config.num_train_timesteps
    all_t = torch.arange(steps)
    snr = compute_snr(noise_scheduler, all_t).double()  # (T,)
    weights = (torch.ones(steps, dtype=torch.float64) if snr_gamma is None
               else min_snr_weights(noise_scheduler, all_t, snr_gamma).double())  # (T,)
    sampling_scheduler.set_timesteps(num_inference_steps)
    sampled = sampling_scheduler.timesteps.long()
    sampled_snr = snr[sampled]  # (S,)
    bounds = [0.0, *snr_edges, float("inf")]
    bands = []
    for low, high in itertools.pairwise(bounds):
        inside = (snr >= low) & (snr < high)  # (T,)
        ts = all_t[inside]
        bands.append(NoiseLevelBand(
            snr_low=low, snr_high=high,
            t_first=int(ts.min()) if len(ts) else -1, t_last=int(ts.max()) if len(ts) else -1,
            timestep_share=float(inside.double().mean()),
            loss_weight_share=float(weights[inside].sum() / weights.sum()),
            sampler_step_share=float(((sampled_snr >= low) & (sampled_snr < high)).double().mean()),
        ))
    return bands
