"""The production sampler: one interface over two backends, ONNX Runtime and PyTorch, for sd_base, ParaDiffusion
and VLAD bundles.

    sampler = load_sampler(bundle_dir, backend="onnx")        # verifies the bundle's checksums first
    images = sampler.generate(["a red circle"], seed=0)        # list of PIL images

Both backends share everything except the three model calls (text encoder, UNet, VAE decoder): the
host-side text (`CaptionConditioning` or `ParagraphConditioning`), the sampling scheduler
(`make_sampling_scheduler`) and the guided reverse loop (`components.diffusion.sample`), so from the same
initial noise they differ only by the graphs' floating-point differences.

- `OnnxBackend`: one onnxruntime session per graph, created once. The CUDA execution provider is
  requested when onnxruntime offers it, and then *checked* with `session.get_providers()` (a CUDA build
  without a usable driver silently falls back to CPU); the log says which one each session runs on.
  Every call goes through IO binding (inputs bound from host memory, outputs allocated by the session
  on its device) so onnxruntime does not re-allocate or copy outputs through Python lists.
- `TorchBackend`: the bundle's safetensors weights; on CUDA sd_base's UNet attention runs through the Triton
  kernel (`serving.kernels.attention_processor.TritonAttnProcessor`), elsewhere (and for ParaDiffusion, whose
  cross-attention is masked, on every device) through PyTorch SDPA.

Families (`load_sampler` reads the manifest's `family`):
- sd_base: CLIP tokens padded to the text encoder's positions; the sampling settings are the bundle's
  sampler.json.
- paradiffusion_stage1/2/3: the Llama paragraph encoder with its LoRA merged. Tokenization is
  `ParaDiffusion.tokenize`'s (<s> + text, right padding to max_tokens or to the batch's longest text), with the
  negative prompts and the prompts in one batch so both contexts have one length; the padding mask travels
  beside the states as the context's last channel (`ParaDiffusion.encode_text`'s packing) and the UNet takes it
  as its own input: the computation of `serving.export.paradiffusion.onnx_images`. The sampling settings come
  from the model's config, the VAE's config and the manifest's `serving` section (`paradiffusion_spec`).
- vlad: four graphs (`VladSampler`): the text side (LVLM text tower + CCM) takes the prompt decomposed on the host
  (`serving.export.vlad.tokenize_prompts`, `decompose_prompt`'s units), the Text Layout Generator draws the layout
  z once per prompt, and the VFE UNet denoises Concat(x_t, z) under the context's padding mask: the computation
  of `serving.export.vlad.onnx_images` (and `VLAD.generate`), with any negative prompts. The PyTorch backend runs
  the same wrapper modules the graphs were exported from, on the bundle's weights with the LVLM's LoRA unmerged
  (as trained). The layout is kept (`VladSampler.last_layout`) for callers that want it beside the image.
- minigpt5_stage1/2: refused with a BundleError saying why (`UNSUPPORTED_FAMILIES`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from components.diffusion import make_sampling_scheduler, sample
from components.models.autoencoder import pixels_to_images
from components.models.clip_evaluator import tokenize_captions

logger = logging.getLogger(__name__)

Backend = Literal["onnx", "torch"]
Family = Literal["sd_base", "paradiffusion", "vlad"]

# manifest family -> the sampler family that runs it
SAMPLER_FAMILIES: dict[str, Family] = {"sd_base": "sd_base", "paradiffusion_stage1": "paradiffusion",
                                       "paradiffusion_stage2": "paradiffusion", "paradiffusion_stage3": "paradiffusion",
                                       "vlad": "vlad"}
MINIGPT5_UNSUPPORTED = ("its images are conditioned on the LLM's voken states, and the LLM stays in PyTorch (an "
                        "autoregressive narration loop, manifest onnx.not_exported): its ONNX graphs start from voken "
                        "states, not from a prompt")
# manifest family -> why the sampler does not run it
UNSUPPORTED_FAMILIES = {"minigpt5_stage1": MINIGPT5_UNSUPPORTED, "minigpt5_stage2": MINIGPT5_UNSUPPORTED}
# the graphs each family's OnnxBackend opens (vlad's tlg only when the bundle has one: without hierarchical guidance)
GRAPHS: dict[str, tuple[str, ...]] = {"sd_base": ("text_encoder", "unet", "vae_decoder"),
                                      "paradiffusion": ("text_encoder", "unet", "vae_decoder"),
                                      "vlad": ("text_encoder", "tlg", "vfe_unet", "vae_decoder")}


@dataclass
class SamplingSpec:
    """What every backend needs besides its weights: sd_base's sampler.json, or `paradiffusion_spec`."""

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

    def __init__(self, onnx_dir: Path, device: str = "auto", threads: int | None = None, family: Family = "sd_base"):
        import onnxruntime as ort

        from serving.bundle import BundleError

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
            for name in GRAPHS[family]:
                if name == "tlg" and not (onnx_dir / "tlg.onnx").is_file():
                    continue  # a VLAD without hierarchical guidance
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
        self.family = family
        unet_inputs = [i.name for i in self.sessions["vfe_unet" if family == "vlad" else "unet"].get_inputs()]
        if family in ("paradiffusion", "vlad") and "encoder_attention_mask" not in unet_inputs:
            raise BundleError(f"{onnx_dir / 'unet.onnx'} takes {unet_inputs}: a paradiffusion UNet graph takes the "
                              "padding mask as its input encoder_attention_mask")

    def _run(self, name: str, **inputs: np.ndarray) -> np.ndarray:
        session = self.sessions[name]
        binding = session.io_binding()
        for key, value in inputs.items():
            binding.bind_cpu_input(key, np.ascontiguousarray(value))
        binding.bind_output(session.get_outputs()[0].name, self.device)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def run(self, name: str, **inputs: torch.Tensor) -> torch.Tensor:
        """Graph `name` on torch inputs (bool stays bool, integers int64, floats float32) -> its first output."""
        from serving.export.onnx_graphs import onnx_feed

        return torch.from_numpy(self._run(name, **onnx_feed(inputs)))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run("text_encoder", input_ids=input_ids.numpy().astype(np.int64),
                                          attention_mask=attention_mask.numpy().astype(np.int64)))

    def denoise(self, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        extra = {}
        if self.family == "paradiffusion":  # the packed context: (B, L, D) states, (B, L) mask 1 keep / 0 padding
            cond, mask = cond[..., :-1], cond[..., -1]
            extra["encoder_attention_mask"] = mask.numpy().astype(np.float32)
        return torch.from_numpy(self._run("unet", sample=latents.numpy().astype(np.float32),
                                          timestep=t.numpy().astype(np.int64),
                                          encoder_hidden_states=cond.numpy().astype(np.float32), **extra))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run("vae_decoder", latents=latents.numpy().astype(np.float32)))


class TorchBackend:
    name = "torch"

    def __init__(self, pytorch_dir: Path, device: str = "auto", family: Family = "sd_base"):
        from components.models.autoencoder import load_autoencoder

        cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        if device == "cuda" and not cuda:
            raise RuntimeError("--device cuda: torch sees no CUDA device")
        self.device = torch.device("cuda" if cuda else "cpu")
        self.family = family
        if family == "paradiffusion":
            from components.models.paradiffusion import ParaDiffusion

            model = ParaDiffusion.from_pretrained(pytorch_dir).eval()
            model.merge_lora()  # W + alpha/r B A, the weights of the ONNX text encoder
            model = model.to(self.device)
        else:
            from components.models.sd_base import SDBase

            model = SDBase.from_pretrained(pytorch_dir).eval().to(self.device)
        self.vae = load_autoencoder(pytorch_dir / "vae").eval().to(self.device)
        self.text_encoder, self.unet = model.text_encoder, model.unet
        if family == "paradiffusion":
            # every cross-attention is masked, which the Triton kernel leaves to SDPA (manifest pytorch.attention_processor)
            from diffusers.models.attention_processor import AttnProcessor2_0

            self.unet.set_attn_processor(AttnProcessor2_0())
            self.attention = "sdpa"
        elif cuda:
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
        extra = {}
        if self.family == "paradiffusion":  # the packed context, as ParaDiffusion.denoise unpacks it
            cond, mask = cond[..., :-1], cond[..., -1]
            extra["encoder_attention_mask"] = mask.to(self.device)
        out = self.unet(latents.to(self.device), t.to(self.device), encoder_hidden_states=cond.to(self.device),
                        return_dict=False, **extra)[0]
        return out.float().cpu()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        from components.models.autoencoder import decode_latents

        return decode_latents(self.vae, latents.to(self.device)).float().cpu()


class CaptionConditioning:
    """sd_base's text side: CLIP tokens padded to the text encoder's positions (`tokenize_captions`).

    A negative prompt's conditioning is cached: almost every request uses the empty one.
    """

    special_tokens = "<bos>/<eos>"

    def __init__(self, tokenizer, max_length: int, encode_text: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.encode_text = encode_text
        self._negative_cache: dict[str, torch.Tensor] = {}

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        ids, mask = tokenize_captions(self.tokenizer, list(prompts), self.max_length)
        return self.encode_text(ids, mask)

    def encode_negative(self, prompt: str) -> torch.Tensor:
        """(1, L, D) conditioning of a negative prompt, cached."""
        if prompt not in self._negative_cache:
            if len(self._negative_cache) >= 64:
                self._negative_cache.pop(next(iter(self._negative_cache)))
            self._negative_cache[prompt] = self.encode([prompt])
        return self._negative_cache[prompt]

    def __call__(self, prompts: Sequence[str], negatives: Sequence[str] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(cond (B, L, D), uncond (1 or B, L, D), or None without negatives)."""
        cond = self.encode(prompts)  # (B, L, D)
        if negatives is None:
            return cond, None
        if len(set(negatives)) == 1:
            return cond, self.encode_negative(negatives[0])  # (1, L, D)
        return cond, torch.cat([self.encode_negative(n) for n in negatives])  # (B, L, D)

    def token_count(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"]) + 2


class ParagraphConditioning:
    """ParaDiffusion's text side: `ParaDiffusion.tokenize` (<s> + text, right padding) of the negative prompts and
    the prompts in one batch, so both contexts have one length L (with padding "longest" it is the batch's longest
    text; the padded keys get no weight, so a prompt's image does not depend on that beyond float rounding), and
    the padding mask packed beside the states as `ParaDiffusion.encode_text` packs it."""

    special_tokens = "<s>"

    def __init__(self, tokenizer, max_tokens: int, padding: Literal["max_length", "longest"],
                 encode_text: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.padding = padding
        self.encode_text = encode_text

    def __call__(self, prompts: Sequence[str], negatives: Sequence[str] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(cond (B, L, D + 1), uncond (1 or B, L, D + 1), or None without negatives)."""
        from components.models.paradiffusion import tokenize_paragraphs

        negatives = [] if negatives is None else list(negatives)[:1] if len(set(negatives)) == 1 else list(negatives)
        ids, mask = tokenize_paragraphs(self.tokenizer, [*negatives, *prompts], self.max_tokens, self.padding)
        states = self.encode_text(ids, mask)  # (N + B, L, D)
        context = torch.cat([states, mask.unsqueeze(-1).to(states.dtype)], dim=-1)  # (N + B, L, D + 1)
        return context[len(negatives):], context[:len(negatives)] if negatives else None

    def token_count(self, prompt: str) -> int:
        bos = 1 if self.tokenizer.bos_token_id is not None else 0
        return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"]) + bos


class Sampler:
    """Prompts -> images on one backend; the text side, the scheduler and the guided loop are shared."""

    def __init__(self, backend: OnnxBackend | TorchBackend, conditioning: CaptionConditioning | ParagraphConditioning,
                 noise_scheduler, spec: SamplingSpec):
        self.backend = backend
        self.conditioning = conditioning
        self.tokenizer = conditioning.tokenizer
        self.noise_scheduler = noise_scheduler
        self.spec = spec

    @property
    def special_tokens(self) -> str:
        """The special tokens `token_count` includes, for messages: "<bos>/<eos>" or "<s>"."""
        return self.conditioning.special_tokens

    def initial_noise(self, count: int, seed: int, side: int | None = None) -> torch.Tensor:
        """(count, C, h, w) standard normal noise of one seed: a request's noise does not depend on its batch."""
        latent_side = (side or self.spec.latent_side * self.spec.vae_factor) // self.spec.vae_factor
        return torch.randn((count, self.spec.latent_channels, latent_side, latent_side),
                           generator=torch.Generator().manual_seed(seed))

    def token_count(self, prompt: str) -> int:
        """Tokens a prompt takes with its special tokens (the service refuses prompts over `spec.max_length`)."""
        return self.conditioning.token_count(prompt)

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
        negatives = None
        if guidance_scale > 1.0:
            negatives = list(negative_prompts) if negative_prompts is not None else [""] * len(prompts)
        cond, uncond = self.conditioning(prompts, negatives)  # (B, L, D'), (1 or B, L, D') or None
        latents = sample(self.backend.denoise, make_sampling_scheduler(self.noise_scheduler, self.spec.sampler),
                         cond, uncond, latent_shape=tuple(noise.shape[1:]), num_inference_steps=steps,
                         guidance_scale=guidance_scale, latents=noise)
        return self.backend.decode(latents)

    def generate(self, prompts: Sequence[str], *, seed: int = 0, negative_prompt: str = "", steps: int | None = None,
                 guidance_scale: float | None = None, side: int | None = None) -> list[Image.Image]:
        noise = self.initial_noise(len(prompts), seed, side)
        return pixels_to_images(self.pixels(prompts, negative_prompts=[negative_prompt] * len(prompts), noise=noise,
                                            steps=steps, guidance_scale=guidance_scale))


class VladTorchBackend:
    """VLAD's four computations in PyTorch: the very modules its ONNX graphs were exported from
    (`serving.export.vlad`'s wrappers), on the bundle's weights with the LVLM's LoRA unmerged, as trained."""

    name = "torch"

    def __init__(self, pytorch_dir: Path, io: dict[str, Any], device: str = "auto"):
        from diffusers.models.attention_processor import AttnProcessor2_0

        from components.models.autoencoder import load_autoencoder
        from components.models.vlad import VLAD
        from serving.export.sd_base import VaeDecoderGraph
        from serving.export.vlad import TextSideGraph, TLGGraph, VFEGraph

        cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        if device == "cuda" and not cuda:
            raise RuntimeError("--device cuda: torch sees no CUDA device")
        self.device = torch.device("cuda" if cuda else "cpu")
        model = VLAD.from_pretrained(pytorch_dir).eval()
        model.unet.set_attn_processor(AttnProcessor2_0())  # its cross-attention is masked: SDPA, not the Triton kernel
        self.attention = "sdpa"
        self.modules = {"text_encoder": TextSideGraph(model), "vfe_unet": VFEGraph(model),
                        "vae_decoder": VaeDecoderGraph(load_autoencoder(pytorch_dir / "vae"))}
        if model.tlg is not None:
            self.modules["tlg"] = TLGGraph(model)
        for module in self.modules.values():
            module.eval().to(self.device)
        self.input_names = {name: list(io[name]["inputs"]) for name in self.modules}  # the graphs' argument order
        logger.info("PyTorch backend on %s, attention: %s", self.device, self.attention)

    @torch.no_grad()
    def run(self, name: str, **inputs: torch.Tensor) -> torch.Tensor:
        args = [inputs[key].to(self.device) for key in self.input_names[name] if key in inputs]
        return self.modules[name](*args).float().cpu()


class VladConditioning:
    """VLAD's host side: the prompt decomposed into its global text and local units and tokenized as
    `VLAD.condition` does (`serving.export.vlad.tokenize_prompts`)."""

    special_tokens = "<bos>/<eos>"

    def __init__(self, tokenizer, max_length: int, max_local_units: int | None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_local_units = max_local_units  # None: no CCM (no local units)

    def inputs(self, prompts: Sequence[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        from serving.export.vlad import tokenize_prompts

        return tokenize_prompts(self.tokenizer, self.max_length, self.max_local_units, prompts)

    def token_count(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"]) + 2


def _pad_tokens(x: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad the token axis (dim 1) of (N, T, ...) to `length` (False for a mask): masked, so no weight."""
    pad = x.new_zeros((x.shape[0], length - x.shape[1], *x.shape[2:]))
    return torch.cat([x, pad], dim=1)


class VladSampler(Sampler):
    """VLAD's pipeline: text side -> layout (TLG) -> guided VFE loop over Concat(x_t, z) -> VAE decoder."""

    def __init__(self, backend: OnnxBackend | VladTorchBackend, conditioning: VladConditioning, noise_scheduler,
                 spec: SamplingSpec, layout: bool):
        super().__init__(backend, conditioning, noise_scheduler, spec)
        self.layout = layout
        self.last_layout: torch.Tensor | None = None  # (B, 3, h, w) in [0, 1] of the last `pixels` call

    def pixels(self, prompts: Sequence[str], *, negative_prompts: Sequence[str] | None = None, noise: torch.Tensor,
               steps: int | None = None, guidance_scale: float | None = None) -> torch.Tensor:
        steps = steps or self.spec.num_inference_steps
        guidance_scale = self.spec.guidance_scale if guidance_scale is None else guidance_scale
        run = self.backend.run
        inputs, mask = self.conditioning.inputs(prompts)
        tokens = run("text_encoder", **inputs)  # (B, T, P)
        layout = run("tlg", context=tokens, context_mask=mask) if self.layout else None  # (B, 3, h, w)
        self.last_layout = layout
        uncond, uncond_mask = None, None
        if guidance_scale > 1.0:
            negatives = list(negative_prompts) if negative_prompts is not None else [""] * len(prompts)
            negatives = negatives[:1] if len(set(negatives)) == 1 else negatives
            negative_inputs, uncond_mask = self.conditioning.inputs(negatives)
            uncond = run("text_encoder", **negative_inputs)  # (1 or B, T', P)
            length = max(tokens.shape[1], uncond.shape[1])
            tokens, mask = _pad_tokens(tokens, length), _pad_tokens(mask, length)
            uncond, uncond_mask = _pad_tokens(uncond, length), _pad_tokens(uncond_mask, length)
        batch = len(prompts)

        def denoise(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            m, z = mask, layout
            if x.shape[0] == 2 * batch:  # classifier-free guidance: [uncond; cond], as VLAD._denoiser
                m = torch.cat([uncond_mask.expand(batch, -1), mask])
                z = torch.cat([layout, layout]) if layout is not None else None
            extra = {"layout": z} if z is not None else {}
            return run("vfe_unet", sample=x, timestep=t, encoder_hidden_states=context,
                       encoder_attention_mask=m.float(), **extra)

        latents = sample(denoise, make_sampling_scheduler(self.noise_scheduler, self.spec.sampler), tokens, uncond,
                         latent_shape=tuple(noise.shape[1:]), num_inference_steps=steps,
                         guidance_scale=guidance_scale, latents=noise)
        return run("vae_decoder", latents=latents)


def vlad_spec(bundle_dir: Path, manifest: dict[str, Any]) -> tuple[SamplingSpec, Any]:
    """(SamplingSpec, VLADConfig) of a vlad bundle: the sampler, steps and guidance of the model's config (what
    `VLAD.generate` uses), the latent grid of its VFE (fixed: the TLG's query grid), the VAE's factor, and the
    manifest's `serving` section."""
    from components.config import from_dict
    from components.models.vlad import GENOPS_CONFIG_FILE, VLADConfig
    from serving.bundle import BundleError

    pytorch_dir = bundle_dir / manifest["layout"]["pytorch"]
    cfg_file = pytorch_dir / GENOPS_CONFIG_FILE
    cfg = from_dict(VLADConfig, json.loads(cfg_file.read_text()), str(cfg_file))
    vae = json.loads((pytorch_dir / "vae" / "config.json").read_text())
    serving = manifest["serving"]
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    if vae["sample_size"] // factor != cfg.unet.sample_size:
        raise BundleError(f"{bundle_dir}: the VAE's latent grid ({vae['sample_size']} // {factor}) is not the VFE's "
                          f"({cfg.unet.sample_size}, {cfg_file})")
    spec = SamplingSpec(latent_channels=vae["latent_channels"], latent_side=cfg.unet.sample_size, vae_factor=factor,
                        max_length=serving["max_prompt_tokens"], sampler=cfg.diffusion.sampler,
                        num_inference_steps=cfg.diffusion.num_inference_steps,
                        guidance_scale=cfg.diffusion.guidance_scale, allowed_sides=list(serving["allowed_sides"]))
    return spec, cfg


def paradiffusion_spec(bundle_dir: Path, manifest: dict[str, Any]) -> tuple[SamplingSpec, Any]:
    """(SamplingSpec, ParaDiffusionConfig) of a paradiffusion bundle, which has no sampler.json: the sampler,
    steps and guidance of the model's config (what `ParaDiffusion.generate` uses), the latent shape of the VAE's
    config (`latent_shape`), the text length and image sides of the manifest's `serving` section."""
    from components.config import from_dict
    from components.models.paradiffusion import GENOPS_CONFIG_FILE, ParaDiffusionConfig
    from serving.bundle import BundleError

    pytorch_dir = bundle_dir / manifest["layout"]["pytorch"]
    cfg_file = pytorch_dir / GENOPS_CONFIG_FILE
    cfg = from_dict(ParaDiffusionConfig, json.loads(cfg_file.read_text()), str(cfg_file))
    vae = json.loads((pytorch_dir / "vae" / "config.json").read_text())
    serving = manifest["serving"]
    if serving["max_prompt_tokens"] != cfg.max_tokens:
        raise BundleError(f"{bundle_dir}: manifest serving.max_prompt_tokens={serving['max_prompt_tokens']} but "
                          f"{cfg_file} says max_tokens={cfg.max_tokens}")
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    spec = SamplingSpec(latent_channels=vae["latent_channels"], latent_side=vae["sample_size"] // factor,
                        vae_factor=factor, max_length=cfg.max_tokens, sampler=cfg.diffusion.sampler,
                        num_inference_steps=cfg.diffusion.num_inference_steps,
                        guidance_scale=cfg.diffusion.guidance_scale, allowed_sides=list(serving["allowed_sides"]))
    return spec, cfg


def load_sampler(bundle_dir: str | Path, backend: Backend = "onnx", device: str = "auto", verify: bool = True,
                 threads: int | None = None) -> Sampler:
    """A sampler on a verified bundle (`serving.bundle.verify_bundle` first, unless `verify=False`)."""
    from diffusers import DDPMScheduler
    from transformers import PreTrainedTokenizerFast

    from serving.bundle import BundleError, verify_bundle

    bundle_dir = Path(bundle_dir)
    manifest = verify_bundle(bundle_dir) if verify else json.loads((bundle_dir / "manifest.json").read_text())
    family = SAMPLER_FAMILIES.get(manifest["family"])
    if family is None:
        reason = UNSUPPORTED_FAMILIES.get(manifest["family"], "no sampler is written for this family")
        raise BundleError(f"{bundle_dir} is a {manifest['family']} bundle, which the production sampler does not run: "
                          f"{reason}. It runs {', '.join(SAMPLER_FAMILIES)} bundles; this bundle's ONNX graphs, their "
                          "inputs and the host-side steps are listed in its manifest.json (onnx.io, serving.host_side)")
    layout = manifest["layout"]
    # tokenizer.json only: PreTrainedTokenizerFast reads JSON, nothing pickled
    tokenizer = PreTrainedTokenizerFast.from_pretrained(bundle_dir / layout["tokenizer"])
    noise_scheduler = DDPMScheduler.from_pretrained(bundle_dir / layout["scheduler"])
    if family == "paradiffusion":
        spec, cfg = paradiffusion_spec(bundle_dir, manifest)
    elif family == "vlad":
        spec, cfg = vlad_spec(bundle_dir, manifest)
    else:
        spec = SamplingSpec.from_json(bundle_dir / layout["sampler"])
    if backend == "onnx":
        impl = OnnxBackend(bundle_dir / layout["onnx"], device, threads, family=family)
    elif backend == "torch" and family == "vlad":
        impl = VladTorchBackend(bundle_dir / layout["pytorch"], manifest["onnx"]["io"], device)
    elif backend == "torch":
        impl = TorchBackend(bundle_dir / layout["pytorch"], device, family=family)
    else:
        raise ValueError(f"--backend must be 'onnx' or 'torch', got {backend!r}")
    if family == "vlad":
        conditioning = VladConditioning(tokenizer, spec.max_length, cfg.max_local_units if cfg.ccm.enabled else None)
        return VladSampler(impl, conditioning, noise_scheduler, spec, layout=cfg.layout.enabled)
    if family == "paradiffusion":
        conditioning = ParagraphConditioning(tokenizer, cfg.max_tokens, cfg.padding, impl.encode_text)
    else:
        conditioning = CaptionConditioning(tokenizer, spec.max_length, impl.encode_text)
    return Sampler(impl, conditioning, noise_scheduler, spec)
