"""Serving fixtures: a tiny sd_base, a tiny ParaDiffusion and a tiny VLAD exported once per session, a live uvicorn server on
loopback, and the helpers the family exports share (a tiny VAE, random values on zero-initialised weights)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


def http(url: str, payload: dict | None = None, token: str | None = None, raw: bytes | None = None,
         timeout: float = 60.0) -> Reply:
    """One request with urllib (no client library needed); HTTP errors come back as replies, not exceptions."""
    data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else None)
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, dict(exc.headers), exc.read())


class LiveServer:
    """uvicorn serving `app` in a thread on 127.0.0.1 at a free port."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from tiny_sd import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "model")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model_dir, tmp_path_factory):
    """The tiny sd_base exported to a bundle straight from its folder (the registry path is tested apart)."""
    from serving.bundle import build_bundle

    out = tmp_path_factory.mktemp("bundle") / "sd_base"
    build_bundle(out, "sd_base", tiny_model_dir, {"model": "genops-sd-base", "version": 1, "alias": None},
                 {"source_run": "test", "git_commit": "test"})
    return out


def tiny_vae(side: int):
    """A 2x-downsampling VAE for `side`-pixel images (latents (4, side/2, side/2))."""
    from components.models.autoencoder import AutoencoderConfig, build_autoencoder, set_scaling_factor

    vae = build_autoencoder(AutoencoderConfig(sample_size=side, block_out_channels=(8, 8), norm_num_groups=4)).eval()
    set_scaling_factor(vae, 0.5)
    return vae


def perturb(module, names: tuple[str, ...], scale: float, seed: int) -> None:
    """Random values on the parameters whose name contains one of `names` (LoRA B, a UNet's zero conv_out)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if any(n in name for n in names):
                p.add_(scale * torch.randn(p.shape, generator=g))


def prediction_gains(noise_scheduler, sampler: str, steps: int) -> list[float]:
    """|g_i|: how much a unit error in step i's prediction moves the final latents (the scheduler is linear in them)."""
    import torch

    from components.diffusion import make_sampling_scheduler

    gains = []
    for i in range(steps):
        scheduler = make_sampling_scheduler(noise_scheduler, sampler)
        scheduler.set_timesteps(steps)
        latents = torch.zeros(1, 1)
        for j, t in enumerate(scheduler.timesteps):
            latents = scheduler.step(torch.full((1, 1), float(i == j)), t, latents).prev_sample
        gains.append(abs(float(latents)))
    return gains


def float32_tolerance(manifest: dict, sampler, steps: int, graphs_per_call: int = 2) -> float:
    """The largest pixel difference (in [-1, 1]) float32 rounding explains between two pipelines of this bundle.

    delta: how far the bundle's graphs and their PyTorch modules disagree in float32, as the export measured it
    (parity rows; the LoRA merge's output difference): the same sums reassociated (other blockings, other
    vectorisation) differ by a few ulp (2^-24) of the O(1) values summed, ~1e-6 here. To first order in delta:
    a UNet call's prediction is off by <= graphs_per_call * delta (its own, and the text encoder's through
    cross-attention, whose gain the tiny UNet's small weights keep under 1; VLAD adds the layout graph's through
    the UNet's input channels: 3); guidance e_u + s (e_c - e_u) multiplies that by at most
    |1 - s| + s = 2s - 1; step i's prediction error reaches the final latents times g_i (`prediction_gains`,
    exact: sum |g_i| ~ 160 here, because the first step's x0 estimate divides the prediction by alpha where
    sigma / alpha = exp(5.1), DPM-Solver++'s lambda_min_clipped on the cosine schedule); the decoder (gain ~0.9
    measured on random directions) passes that on and adds its own delta.
    Tolerance: (2s - 1) * sum |g_i| * graphs_per_call * delta + delta, ~2e-3 at s = 3: under one uint8 level (2/255), and far
    under what a wrong conditioning does (the UNet without its padding mask moves pixels by ~0.1).
    """
    parity = manifest["parity"]
    delta = max([r["max_abs_err"] for r in parity["graphs"]] + [parity["lora_merge"]["output_max_abs_diff"]])
    s = sampler.spec.guidance_scale
    gain = sum(prediction_gains(sampler.noise_scheduler, sampler.spec.sampler, steps))
    return (2 * s - 1) * gain * graphs_per_call * delta + delta


# ParaDiffusion's text limit in the tiny bundle: room for the export's two-sentence parity prompts (21 tokens with
# <s>), small enough that the service's token limit is reached below its 2000-character prompt limit.
PARADIFFUSION_MAX_TOKENS = 32


@pytest.fixture(scope="session")
def paradiffusion_dir(tmp_path_factory):
    """A stage-2 ParaDiffusion (rank-4 LoRA on q_proj/v_proj, padding to the batch's longest text) with a 8 px VAE,
    saved as the recipe registers it."""
    import torch

    from tests.paradiffusion_parts import build, make_tokenizer

    model = build(make_tokenizer(), rank=4, max_tokens=PARADIFFUSION_MAX_TOKENS).eval()
    perturb(model.text_encoder, ("lora_B",), 0.2, seed=2)
    torch.manual_seed(3)
    return model.save_pretrained(tmp_path_factory.mktemp("paradiffusion") / "model", vae=tiny_vae(8))


@pytest.fixture(scope="session")
def paradiffusion_bundle(paradiffusion_dir, tmp_path_factory):
    """The tiny ParaDiffusion exported to a bundle (3 end-to-end steps): (folder, manifest)."""
    from serving.bundle import build_bundle

    out = tmp_path_factory.mktemp("bundles") / "paradiffusion"
    registry = {"model": "genops-paradiffusion-stage2", "version": 3, "alias": "champion",
                "uri": "models:/genops-paradiffusion-stage2/3"}
    manifest = build_bundle(out, "paradiffusion_stage2", paradiffusion_dir, registry,
                            {"source_run": "run-42", "git_commit": "cafe123"}, e2e_steps=3)
    return out, manifest


@pytest.fixture(scope="session")
def vlad_dir(tmp_path_factory):
    """A tiny VLAD (CCM with 4 local units, TLG, 8x8 latent VFE) with LoRA B and the UNet's conv_out perturbed
    (zero-initialised, they would hide a wrong merge or a wrong UNet input), and a 16 px VAE."""
    import torch
    from tiny_sd import tiny_tokenizer

    from components.models.clip_base import ClipBaseConfig
    from components.models.clip_evaluator import CLIPTextTowerConfig, CLIPVisionTowerConfig
    from components.models.sd_base import SDUNetConfig
    from components.models.vlad import VLAD, CCMSection, LayoutSection, VLADConfig

    cfg = VLADConfig(
        lvlm=ClipBaseConfig(
            text=CLIPTextTowerConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                     num_hidden_layers=1, max_position_embeddings=24),
            vision=CLIPVisionTowerConfig(image_size=16, patch_size=8, hidden_size=32, intermediate_size=64,
                                         num_attention_heads=2, num_hidden_layers=1),
            projection_dim=32),
        max_local_units=4, ccm=CCMSection(heads=2), layout=LayoutSection(layers=1, heads=2),
        unet=SDUNetConfig(sample_size=8, block_out_channels=(16, 32), cross_attention=(True, True),
                          attention_head_dim=(2, 4), norm_num_groups=8))
    cfg.diffusion.num_inference_steps = 3
    torch.manual_seed(0)
    model = VLAD.from_config(cfg, tiny_tokenizer()).eval()
    perturb(model, ("lora_B",), 0.2, seed=4)
    perturb(model.unet, ("conv_out",), 0.05, seed=5)
    return model.save_pretrained(tmp_path_factory.mktemp("vlad") / "model", vae=tiny_vae(16))


@pytest.fixture(scope="session")
def vlad_bundle(vlad_dir, tmp_path_factory):
    """The tiny VLAD exported to a bundle (3 end-to-end steps): (folder, manifest)."""
    from serving.bundle import build_bundle

    out = tmp_path_factory.mktemp("bundles") / "vlad"
    registry = {"model": "genops-vlad", "version": 2, "alias": "champion", "uri": "models:/genops-vlad/2"}
    manifest = build_bundle(out, "vlad", vlad_dir, registry, {"source_run": "run-7", "git_commit": "cafe123"},
                            e2e_steps=3)
    return out, manifest
