"""The production sampler: one interface over two backends, ONNX Runtime and PyTorch.

    sampler = load_sampler(bundle_dir, backend="onnx")        # verifies the bundle's checksums first
    images = sampler.generate(["a red circle"], seed=0)        # list of PIL images

Both backends share everything except the three model calls (text encoder, UNet, VAE decoder):
tokenization (`tokenize_captions`), the sampling scheduler (`make_sampling_scheduler`) and the guided
reverse loop (`components.diffusion.sample`), so from the same initial noise they differ only by the
graphs' floating-point differences.

- `OnnxBackend`: one onnxruntime session per graph, created once. The CUDA execution provider is
  requested when onnxruntime offers it, and then *checked* with `session.get_providers()` (a CUDA build
  without a usable driver silently falls back to CPU); the log says which one each session runs on.
  Every call goes through IO binding (inputs bound from host memory, outputs allocated by the session
  on its device) so onnxruntime does not re-allocate or copy outputs through Python lists.
- `TorchBackend`: the bundle's safetensors weights; on CUDA the UNet's attention runs through the Triton
  kernel (`serving.kernels.attention_processor.TritonAttnProcessor`), elsewhere through PyTorch SDPA.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from components.diffusion import make_sampling_scheduler, sample
from components.models.autoencoder import pixels_to_images
from components.models.clip_evaluator import tokenize_captions

logger = logging.getLogger(__name__)

Backend = Literal["onnx", "torch"]


@dataclass
class SamplingSpec:
    """What every backend needs besides its weights, read from the bundle's sampler.json."""

    latent_channels: int
    latent_side: int  # at the trained image side
    vae_factor: int  # image side / latent side
    max_length: int  # text positions
    sampler: str
    num_inference_steps: int
    guidance_scale: float
    allowed_sides: list[int]

    @classmethod
    def from_json(cls, path: Path) -> SamplingSpec:
        return cls(**json.loads(path.read_text()))


class OnnxBackend:
    name = "onnx"

    def __init__(self, onnx_dir: Path, device: str = "auto", threads: int | None = None):
        import onnxruntime as ort

        available = ort.get_available_providers()
        want_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
        if device == "cuda" and not want_cuda:
            raise RuntimeError(f"--device cuda: this onnxruntime offers only {available}")
        providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if want_cuda else ["CPUExecutionProvider"])
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # the CUDA provider's load failure is reported below, once, by us
        if threads:
            options.intra_op_num_threads = threads
        self.sessions = {}
        # A CUDA build without a usable CUDA runtime logs a library error per session and silently runs on CPU:
        # keep onnxruntime quiet while creating sessions, check what is active, and say it once ourselves.
        ort.set_default_logger_severity(4)
        try:
            for name in ("text_encoder", "unet", "vae_decoder"):
                session = ort.InferenceSession(str(onnx_dir / f"{name}.onnx"), options, providers=providers)
                self.sessions[name] = session
                if "CUDAExecutionProvider" not in session.get_providers():
                    providers = ["CPUExecutionProvider"]  # the rest on CPU too: one device for the whole pipeline
        finally:
            ort.set_default_logger_severity(2)
        active = {name: s.get_providers() for name, s in self.sessions.items()}
        self.on_cuda = all("CUDAExecutionProvider" in p for p in active.values())
        self.device = "cuda" if self.on_cuda else "cpu"
        if want_cuda and not self.on_cuda:
            logger.warning("onnxruntime: CUDAExecutionProvider was requested but is not active (sessions run on %s); "
                           "running on CPU", active)
        logger.info("onnxruntime sessions on %s (providers per session: %s)", self.device.upper(), active)

    def _run(self, name: str, **inputs: np.ndarray) -> np.ndarray:
        session = self.sessions[name]
        binding = session.io_binding()
        for key, value in inputs.items():
            binding.bind_cpu_input(key, np.ascontiguousarray(value))
        binding.bind_output(session.get_outputs()[0].name, self.device)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run("text_encoder", input_ids=input_ids.numpy().astype(np.int64),
                                          attention_mask=attention_mask.numpy().astype(np.int64)))

    def denoise(self, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run("unet", sample=latents.numpy().astype(np.float32),
                                          timestep=t.numpy().astype(np.int64),
                                          encoder_hidden_states=cond.numpy().astype(np.float32)))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run("vae_decoder", latents=latents.numpy().astype(np.float32)))


class TorchBackend:
    name = "torch"

    def __init__(self, pytorch_dir: Path, device: str = "auto"):
        from components.models.autoencoder import load_autoencoder
        from components.models.sd_base import SDBase

        cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        if device == "cuda" and not cuda:
            raise RuntimeError("--device cuda: torch sees no CUDA device")
        self.device = torch.device("cuda" if cuda else "cpu")
        sd = SDBase.from_pretrained(pytorch_dir).eval().to(self.device)
        self.vae = load_autoencoder(pytorch_dir / "vae").eval().to(self.device)
        self.text_encoder, self.unet = sd.text_encoder, sd.unet
        if cuda:
            from serving.kernels.attention_processor import TritonAttnProcessor

            self.unet.set_attn_processor(TritonAttnProcessor())
            self.attention = "triton"
        else:
            from diffusers.models.attention_processor import AttnProcessor2_0

            self.unet.set_attn_processor(AttnProcessor2_0())
            self.attention = "sdpa"
        logger.info("PyTorch backend on %s, attention: %s", self.device, self.attention)

    @torch.no_grad()
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.text_encoder(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device))
        return out.last_hidden_state.float().cpu()

    @torch.no_grad()
    def denoise(self, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.unet(latents.to(self.device), t.to(self.device), encoder_hidden_states=cond.to(self.device),
                        return_dict=False)[0]
        return out.float().cpu()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        from components.models.autoencoder import decode_latents

        return decode_latents(self.vae, latents.to(self.device)).float().cpu()


class Sampler:
    """Prompts -> images on one backend; the scheduler and the guided loop are shared."""

    def __init__(self, backend: OnnxBackend | TorchBackend, tokenizer, noise_scheduler, spec: SamplingSpec):
        self.backend = backend
        self.tokenizer = tokenizer
        self.noise_scheduler = noise_scheduler
        self.spec = spec
        self._negative_cache: dict[str, torch.Tensor] = {}

    def initial_noise(self, count: int, seed: int, side: int | None = None) -> torch.Tensor:
        """(count, C, h, w) standard normal noise of one seed: a request's noise does not depend on its batch."""
        latent_side = (side or self.spec.latent_side * self.spec.vae_factor) // self.spec.vae_factor
        return torch.randn((count, self.spec.latent_channels, latent_side, latent_side),
                           generator=torch.Generator().manual_seed(seed))

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        ids, mask = tokenize_captions(self.tokenizer, list(prompts), self.spec.max_length)
        return self.backend.encode_text(ids, mask)

    def encode_negative(self, prompt: str) -> torch.Tensor:
        """(1, L, D) conditioning of a negative prompt, cached: almost every request uses the empty one."""
        if prompt not in self._negative_cache:
            if len(self._negative_cache) >= 64:
                self._negative_cache.pop(next(iter(self._negative_cache)))
            self._negative_cache[prompt] = self.encode([prompt])
        return self._negative_cache[prompt]

    def token_count(self, prompt: str) -> int:
        """Tokens a prompt takes with <bos>/<eos> (the service refuses prompts over `spec.max_length`)."""
        return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"]) + 2

    def pixels(
        self,
        prompts: Sequence[str],
        *,
        negative_prompts: Sequence[str] | None = None,
        noise: torch.Tensor,
        steps: int | None = None,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] from the given initial noise (B, C, h, w)."""
        steps = steps or self.spec.num_inference_steps
        guidance_scale = self.spec.guidance_scale if guidance_scale is None else guidance_scale
        cond = self.encode(prompts)  # (B, L, D)
        uncond = None
        if guidance_scale > 1.0:
            negative = list(negative_prompts) if negative_prompts is not None else [""] * len(prompts)
            if len(set(negative)) == 1:
                uncond = self.encode_negative(negative[0])  # (1, L, D)
            else:
                uncond = torch.cat([self.encode_negative(n) for n in negative])  # (B, L, D)
        latents = sample(self.backend.denoise, make_sampling_scheduler(self.noise_scheduler, self.spec.sampler),
                         cond, uncond, latent_shape=tuple(noise.shape[1:]), num_inference_steps=steps,
                         guidance_scale=guidance_scale, latents=noise)
        return self.backend.decode(latents)

    def generate(self, prompts: Sequence[str], *, seed: int = 0, negative_prompt: str = "", steps: int | None = None,
                 guidance_scale: float | None = None, side: int | None = None) -> list[Image.Image]:
        noise = self.initial_noise(len(prompts), seed, side)
        return pixels_to_images(self.pixels(prompts, negative_prompts=[negative_prompt] * len(prompts), noise=noise,
                                            steps=steps, guidance_scale=guidance_scale))


def load_sampler(bundle_dir: str | Path, backend: Backend = "onnx", device: str = "auto", verify: bool = True,
                 threads: int | None = None) -> Sampler:
    """A sampler on a verified bundle (`serving.bundle.verify_bundle` first, unless `verify=False`)."""
    from diffusers import DDPMScheduler
    from transformers import PreTrainedTokenizerFast

    from serving.bundle import BundleError, verify_bundle

    bundle_dir = Path(bundle_dir)
    manifest = verify_bundle(bundle_dir) if verify else json.loads((bundle_dir / "manifest.json").read_text())
    if manifest["family"] != "sd_base":
        raise BundleError(f"{bundle_dir} is a {manifest['family']} bundle: the production sampler runs sd_base bundles; "
                         "the other families' ONNX graphs, their inputs and the host-side steps are listed in its "
                         "manifest.json (onnx.io, serving.host_side)")
    layout = manifest["layout"]
    # tokenizer.json only: PreTrainedTokenizerFast reads JSON, nothing pickled
    tokenizer = PreTrainedTokenizerFast.from_pretrained(bundle_dir / layout["tokenizer"])
    noise_scheduler = DDPMScheduler.from_pretrained(bundle_dir / layout["scheduler"])
    spec = SamplingSpec.from_json(bundle_dir / layout["sampler"])
    if backend == "onnx":
        impl = OnnxBackend(bundle_dir / layout["onnx"], device, threads)
    elif backend == "torch":
        impl = TorchBackend(bundle_dir / layout["pytorch"], device)
    else:
        raise ValueError(f"--backend must be 'onnx' or 'torch', got {backend!r}")
    return Sampler(impl, tokenizer, noise_scheduler, spec)
