"""ParaDiffusion (Wu et al. 2023): paragraph-to-image with a decoder-only LLM as the text encoder.

Sec. 3.1: a frozen Llama (`llm_base` at tiny/demo scale, Llama-2-7B by local path at paper scale)
encodes up to 512 tokens of a paragraph; its `last_hidden_state` (after the final RMSNorm), with the
tokenizer's attention mask, is the cross-attention context of a latent-diffusion UNet
(`diffusers.UNet2DConditionModel`, cross_attention_dim = the LLM's hidden size) in the shared VAE's
latent space. Sec. 3.1.2 (eq. 2): the LLM is adapted with LoRA (PEFT, rank r and alpha from config,
target modules q_proj + v_proj by default: the setting whose counts Table 6 reports) jointly with
the UNet, under the noise-prediction loss of eq. 1. 10% of the texts drop to the empty prompt so one
network serves classifier-free guidance; sampling is DPM-Solver++ multistep (the official demo's).

Padding: the official inference code pads to `max_length` (512); with the mask passed to the UNet's
cross-attention the padded keys get no weight, so `padding: longest` (pad to the batch's longest
text) gives the same outputs at a fraction of the LLM's cost on CPU.

Folder layout of `save_pretrained` (a diffusers pipeline folder):
    model_index.json            components and their classes
    genops_paradiffusion.json   the ParaDiffusionConfig
    text_encoder/               the frozen LlamaModel (base weights, LoRA not merged)
    text_encoder_lora/          the PEFT adapter (adapter_config.json + adapter_model.safetensors), if any
    unet/  scheduler/  tokenizer/  [vae/]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import AutoTokenizer, LlamaConfig, LlamaModel, PreTrainedTokenizerBase

from components.config import from_dict, to_dict
from components.diffusion import (
    DiffusionConfig,
    denoising_loss,
    make_noise_scheduler,
    make_sampling_scheduler,
    sample,
)
from components.fileio import atomic_directory
from components.models.autoencoder import decode_latents, latent_shape
from components.models.sd_base import SDUNetConfig, build_unet

logger = logging.getLogger(__name__)

GENOPS_CONFIG_FILE = "genops_paradiffusion.json"
LORA_FOLDER = "text_encoder_lora"


@dataclass
class LoraSettings:
    """LoRA on the LLM text encoder (Hu et al. 2021; ParaDiffusion Sec. 3.1.2, Tables 6-7)."""

    rank: int = 0
    """Rank r of the low-rank update; 0 = no adapter (stage 1, and Table 6's "Base")."""
    alpha: int = 32
    """Scaling numerator: the update is (alpha / r) * B A (Table 6: 32 unless ablated)."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    """Linear layers of every Llama block that get an adapter (Table 6's counts are for q_proj + v_proj)."""
    dropout: float = 0.0
    """Dropout on the adapter's input (the paper does not state one)."""

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ValueError(f"lora.rank must be >= 0 (0 = no adapter), got {self.rank}")
        if self.alpha < 1:
            raise ValueError(f"lora.alpha must be >= 1, got {self.alpha}")
        if self.rank and not self.target_modules:
            raise ValueError("lora.target_modules is empty: name the Llama linears to adapt (e.g. [q_proj, v_proj])")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")

    def peft_config(self) -> LoraConfig:
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, target_modules=list(self.target_modules),
                          lora_dropout=self.dropout, bias="none")


@dataclass
class ParaDiffusionConfig:
    """The ParaDiffusion model: LLM paragraph encoder (+ LoRA), UNet and diffusion process."""

    max_tokens: int = 512
    """Longest text (in LLM tokens, <s> included) the encoder reads; longer texts are truncated (paper: 512)."""
    padding: Literal["max_length", "longest"] = "max_length"
    """Pad every text to max_tokens (the official code) or to the batch's longest (same outputs: padding is masked)."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """The LLM adapter; rank 0 = frozen LLM without adapter."""
    unet: SDUNetConfig = field(default_factory=SDUNetConfig)
    """The denoising UNet over VAE latents (its cross-attention width is the LLM's hidden size)."""
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(prediction_type="epsilon", snr_gamma=None))
    """Noise schedule, objective (epsilon, eq. 1), caption dropout 0.1 and sampler (DPM-Solver++) defaults."""

    def __post_init__(self) -> None:
        if self.max_tokens < 2:
            raise ValueError(f"model.max_tokens must be >= 2, got {self.max_tokens}")


def text_encoder_parameters(text_encoder: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameters of the text encoder, as PEFT counts them for an adapted model."""
    if isinstance(text_encoder, PeftModel):
        return text_encoder.get_nb_trainable_parameters()
    total = sum(p.numel() for p in text_encoder.parameters())
    return sum(p.numel() for p in text_encoder.parameters() if p.requires_grad), total


def add_lora(llm: LlamaModel, lora: LoraSettings) -> PeftModel:
    """Freeze `llm` and wrap it with a trainable PEFT LoRA adapter (only the adapter trains, eq. 2)."""
    llm.requires_grad_(False)
    missing = [name for name in lora.target_modules if not any(n.endswith(f".{name}") for n, _ in llm.named_modules())]
    if missing:
        raise ValueError(f"lora.target_modules {missing} name no module of the Llama text encoder (e.g. q_proj, k_proj, v_proj, o_proj)")
    return get_peft_model(llm, lora.peft_config())


def base_llm_state_dict(text_encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The LlamaModel's own weights (no adapter, not merged) under LlamaModel's key names."""
    if not isinstance(text_encoder, PeftModel):
        return text_encoder.state_dict()
    state = text_encoder.get_base_model().state_dict()
    return {k.replace(".base_layer.", "."): v for k, v in state.items() if ".lora_" not in k}


def tokenize_paragraphs(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_tokens: int,
                        padding: Literal["max_length", "longest"]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (B, L) on the CPU: <s> + text, right-padded to max_tokens or to the
    batch's longest text (`ParaDiffusionConfig.padding`); the serving sampler tokenizes with this too."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prefix = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    encoded = [(prefix + ids)[:max_tokens] for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    width = max_tokens if padding == "max_length" else max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


class ParaDiffusion(nn.Module):
    """LLM text encoder (+ LoRA) + UNet + tokenizer; `forward` is the training loss, `generate` samples."""

    def __init__(self, cfg: ParaDiffusionConfig, text_encoder: LlamaModel | PeftModel, unet: UNet2DConditionModel,
                 tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        hidden = text_encoder.config.hidden_size
        if unet.config.cross_attention_dim != hidden:
            raise ValueError(f"unet cross_attention_dim={unet.config.cross_attention_dim} differs from the LLM's hidden_size={hidden}")
        if text_encoder.config.vocab_size < len(tokenizer):
            raise ValueError(f"the LLM has {text_encoder.config.vocab_size} token embeddings but the tokenizer has {len(tokenizer)}")
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token to pad paragraphs with")
        self.cfg = cfg
        self.text_encoder = text_encoder
        self.unet = unet
        self.tokenizer = tokenizer
        self.noise_scheduler = make_noise_scheduler(cfg.diffusion)

    @classmethod
    def from_llm(cls, cfg: ParaDiffusionConfig, llm: LlamaModel, tokenizer: PreTrainedTokenizerBase) -> ParaDiffusion:
        """A random UNet on a (pretrained) LLM, frozen, with a LoRA adapter when cfg.lora.rank > 0."""
        llm.requires_grad_(False)
        text_encoder = add_lora(llm, cfg.lora) if cfg.lora.rank else llm
        return cls(cfg, text_encoder, build_unet(cfg.unet, cross_attention_dim=llm.config.hidden_size), tokenizer)

    @property
    def has_lora(self) -> bool:
        return isinstance(self.text_encoder, PeftModel)

    def add_lora(self, lora: LoraSettings) -> None:
        """Adapt the (frozen) LLM with a new LoRA adapter (stage 2 starting from stage 1's model)."""
        if self.has_lora:
            raise ValueError("the text encoder already has a LoRA adapter")
        self.text_encoder = add_lora(self.text_encoder, lora)
        self.cfg.lora = lora

    def merge_lora(self) -> None:
        """Fold the adapter into the LLM's weights (W + alpha/r B A), e.g. before export; the LLM stays frozen."""
        if self.has_lora:
            self.text_encoder = self.text_encoder.merge_and_unload()
            self.text_encoder.requires_grad_(False)

    def text_encoder_parameters(self) -> tuple[int, int]:
        return text_encoder_parameters(self.text_encoder)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.unet.config.sample_size
        return self.unet.config.in_channels, side, side

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()
        self.text_encoder.gradient_checkpointing_enable()

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), each (B, L) with L <= max_tokens: <s> + text, right-padded, truncated."""
        input_ids, attention_mask = tokenize_paragraphs(self.tokenizer, texts, self.cfg.max_tokens, self.cfg.padding)
        device = self.unet.device
        return input_ids.to(device), attention_mask.to(device)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The UNet's context, packed: (B, L, D + 1) = the LLM's last_hidden_state with the mask as a last channel.

        Packing the mask beside the states lets it travel through `components.diffusion.sample` and
        classifier-free guidance (which batch the context) to `denoise`, which splits it off again.
        A frozen LLM without adapter runs without autograd.
        """
        trainable = any(p.requires_grad for p in self.text_encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            states = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, D)
        return torch.cat([states, attention_mask.unsqueeze(-1).to(states.dtype)], dim=-1)  # (B, L, D + 1)

    def encode_prompts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encode_text(*self.tokenize(texts))

    def denoise(self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """eps_theta(z_t, t, f(y)), (B, C, h, w); `context` is `encode_text`'s packed (B, L, D + 1)."""
        states, mask = context[..., :-1], context[..., -1]  # (B, L, D), (B, L)
        return self.unet(latents, t, encoder_hidden_states=states, encoder_attention_mask=mask, return_dict=False)[0]

    def forward(self, latents: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Eq. 1/2: E ||eps - eps_theta(z_t, t, f_LoRA(y))||^2 on scaled VAE latents (B, C, h, w) of any side.

        Caption dropout for classifier-free guidance is the caller's, before tokenizing
        (`components.diffusion.drop_captions`, probability cfg.diffusion.condition_dropout).
        """
        if latents.shape[1] != self.unet.config.in_channels:
            raise ValueError(f"latents must have {self.unet.config.in_channels} channels, got {tuple(latents.shape)}")
        context = self.encode_text(input_ids, attention_mask)  # (B, L, D + 1)
        return denoising_loss(self.denoise, self.noise_scheduler, latents, context,
                              snr_gamma=self.cfg.diffusion.snr_gamma, generator=generator)

    @torch.no_grad()
    def sample_latents(
        self,
        texts: Sequence[str],
        *,
        negative_prompt: str = "",
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        sampler: Literal["dpmsolver++", "ddim"] | None = None,
        side: int | None = None,
        generator: torch.Generator | None = None,
        progress: Callable[[Iterable], Iterable] | None = None,
    ) -> torch.Tensor:
        """Scaled latents (B, C, side, side) with classifier-free guidance against `negative_prompt`."""
        diffusion = self.cfg.diffusion
        guidance_scale = diffusion.guidance_scale if guidance_scale is None else guidance_scale
        # one tokenization for the texts and the negative prompt, so both contexts have the same length
        context = self.encode_prompts([negative_prompt, *texts])  # (1 + B, L, D + 1)
        uncond, cond = context[:1], context[1:]
        channels, default_side, _ = self.latent_shape
        side = side or default_side
        return sample(
            self.denoise, make_sampling_scheduler(self.noise_scheduler, sampler or diffusion.sampler),
            cond, uncond if guidance_scale > 1.0 else None, latent_shape=(channels, side, side),
            num_inference_steps=diffusion.num_inference_steps if num_inference_steps is None else num_inference_steps,
            guidance_scale=guidance_scale, generator=generator, progress=progress,
        )

    @torch.no_grad()
    def generate(self, texts: Sequence[str], vae: AutoencoderKL, **sampling) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] at the VAE's size; `sampling` as in `sample_latents`."""
        channels, side, _ = latent_shape(vae)
        if channels != self.unet.config.in_channels:
            raise ValueError(f"the VAE has {channels} latent channels but the UNet denoises {self.unet.config.in_channels}")
        return decode_latents(vae, self.sample_latents(texts, side=sampling.pop("side", side), **sampling))

    def save_pretrained(self, path: str | Path, vae: AutoencoderKL | None = None) -> Path:
        """Write the diffusers-layout folder (see the module docstring), atomically."""
        path = Path(path)
        components: dict[str, list[str]] = {
            "text_encoder": ["transformers", "LlamaModel"],
            "unet": ["diffusers", type(self.unet).__name__],
            "scheduler": ["diffusers", type(self.noise_scheduler).__name__],
            "tokenizer": ["transformers", type(self.tokenizer).__name__],
        }
        with atomic_directory(path) as tmp:
            base = self.text_encoder.get_base_model() if self.has_lora else self.text_encoder
            plain = LlamaModel(LlamaConfig.from_dict(base.config.to_dict()))
            plain.load_state_dict(base_llm_state_dict(self.text_encoder), strict=True)
            plain.save_pretrained(tmp / "text_encoder", safe_serialization=True)
            if self.has_lora:
                self.text_encoder.save_pretrained(tmp / LORA_FOLDER)
                components[LORA_FOLDER] = ["peft", "LoraModel"]
            self.unet.save_pretrained(tmp / "unet", safe_serialization=True)
            self.noise_scheduler.save_pretrained(tmp / "scheduler")
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            if vae is not None:
                vae.save_pretrained(tmp / "vae", safe_serialization=True)
                components["vae"] = ["diffusers", type(vae).__name__]
            (tmp / GENOPS_CONFIG_FILE).write_text(json.dumps(to_dict(self.cfg), indent=2) + "\n")
            index = {"_class_name": "genops.components.models.paradiffusion.ParaDiffusion", **components}
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, trainable_lora: bool = False) -> ParaDiffusion:
        """Load a `save_pretrained` folder; its adapter (if any) is loaded, trainable when `trainable_lora`."""
        path = Path(path)
        cfg_file = path / GENOPS_CONFIG_FILE
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{path} is not a paradiffusion folder: {cfg_file} is missing")
        cfg = from_dict(ParaDiffusionConfig, json.loads(cfg_file.read_text()), str(cfg_file))
        llm = LlamaModel.from_pretrained(path / "text_encoder", dtype=torch.float32)
        llm.requires_grad_(False)
        if (path / LORA_FOLDER).is_dir():
            text_encoder = PeftModel.from_pretrained(llm, path / LORA_FOLDER, is_trainable=trainable_lora)
        elif cfg.lora.rank:
            raise FileNotFoundError(f"{cfg_file} says lora.rank={cfg.lora.rank} but {path / LORA_FOLDER} is missing")
        else:
            text_encoder = llm
        unet = UNet2DConditionModel.from_pretrained(path / "unet")
        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
        saved = DDPMScheduler.from_pretrained(path / "scheduler")
        if saved.config.prediction_type != cfg.diffusion.prediction_type:
            raise ValueError(f"{path / 'scheduler'} predicts {saved.config.prediction_type} but {cfg_file} says {cfg.diffusion.prediction_type}")
        return cls(cfg, text_encoder, unet, tokenizer)


def load_llm(path: str | Path) -> tuple[LlamaModel, PreTrainedTokenizerBase]:
    """The LlamaModel (no LM head) and tokenizer of a local folder: an llm_base export or a Hugging Face
    Llama checkpoint (e.g. Llama-2-7b-hf); transformers maps LlamaForCausalLM's `model.*` weights."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"data.llm={path} is not a Llama folder: {path / 'config.json'} is missing")
    llm = LlamaModel.from_pretrained(path, dtype=torch.float32)
    return llm, AutoTokenizer.from_pretrained(path)


def llama_lora_table(llama: LlamaConfig, ranks: Sequence[int], alphas: Sequence[int], target_modules: Sequence[str]
                     ) -> list[dict[str, float]]:
    """Trainable parameters of LoRA on a LlamaModel built on the meta device (no weights), per (rank, alpha):
    PEFT's own count and share (trainable / all parameters of the adapted model), Table 6's columns."""
    from accelerate import init_empty_weights

    rows = []
    for rank in ranks:
        for alpha in alphas:
            with init_empty_weights():
                llm = LlamaModel(llama)
            adapted = get_peft_model(llm, LoraSettings(rank=rank, alpha=alpha, target_modules=list(target_modules)).peft_config())
            trainable, total = adapted.get_nb_trainable_parameters()
            rows.append({"rank": rank, "alpha": alpha, "trainable": trainable, "all": total,
                         "percent": 100.0 * trainable / total})
    return rows
