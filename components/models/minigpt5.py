"""MiniGPT-5 (Zheng et al.): generative vokens, a feature mapper into a frozen text-to-image model, and
interleaved text-and-image generation.

The pieces, top to bottom as the paper's Fig. 2:

- LLM: a `LlamaForCausalLM` (`llm_base` at tiny/demo, Vicuna-7B at paper scale) with n = 8 generative
  vokens [IMG1]..[IMG8] added to the tokenizer, the input embeddings and the output head. New rows start
  at the mean of the existing rows. Only those rows (theta_voken_input, theta_voken_output) train: a
  gradient mask on the two matrices zeroes every other row's gradient (the optimizer must then use no
  weight decay, which would still move the masked rows; `check_optimizer_compatible` says so).
- Visual input: `clip_base`'s image tower, frozen, then a learnable-query pooler (the Q-Former's role,
  32 queries) and a linear projection to the LLM width, as MiniGPT-4. **There is no MiniGPT-4
  checkpoint here**, so stage 1 also trains the pooler and projection with a captioning term on the
  CC3M-format pairs (image -> its caption, LLM frozen): MiniGPT-4's stage-1 role. Stage 2 freezes them.
- Prompts as the official code: `###Human: {} ###Assistant: `, images as `<Img><ImageHere></Img>` whose
  placeholder is replaced by the pooled image embeddings.
- Feature mapper (eq. 2): h_hat = enc-dec(MLP(h_voken), q). MLP = Linear(d_llm, d_cond), GELU,
  Linear(d_cond, d_cond); enc-dec = `torch.nn.Transformer` (pre-norm, no dropout) whose decoder input is
  a learnable query sequence q of the generator's context length L. Its input are the 8 last-layer
  hidden states that *predict* the vokens: the position before [IMG1] through [IMG7].
- Losses: L_text (eq. 1, causal LM over the answer, vokens included, so the model learns where images
  go), L_LDM (eq. 3, the frozen `sd_base` UNet's noise-prediction loss conditioned on h_hat, min-SNR-5
  weighted as the official code when the generator's diffusion config says so), L_CAP (eq. 4, MSE
  between h_hat and the generator text encoder's states of the caption).
- Classifier-free guidance (eq. 5), as the official code: in training, per sample with probability
  `cfg_dropout` the voken hidden states are replaced by zeros before the MLP and the L_CAP target by the
  empty caption's features; at inference the negative conditioning is mapper(MLP(zeros)).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerBase

from components.config import from_dict, to_dict
from components.data.text_corpus import IGNORE_INDEX
from components.diffusion import condition_dropout_mask, denoising_loss, make_sampling_scheduler, sample
from components.fileio import atomic_directory
from components.models.autoencoder import decode_latents, load_autoencoder
from components.models.clip_base import ClipBase
from components.models.clip_evaluator import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
from components.models.llm_base import LlmBase
from components.models.sd_base import SDBase

GENOPS_CONFIG_FILE = "genops_minigpt5.json"
HEADS_FILE = "heads.safetensors"
IMAGE_PLACEHOLDER = "<ImageHere>"
IMAGE_SLOT = f"<Img>{IMAGE_PLACEHOLDER}</Img>"
PROMPT_TEMPLATE = "###Human: {} ###Assistant: "


def voken_names(n: int) -> list[str]:
    return [f"[IMG{i}]" for i in range(1, n + 1)]


@dataclass
class MapperConfig:
    """The feature mapper's encoder-decoder (its width is the generator's conditioning width d_cond)."""

    num_heads: int = 4
    """Attention heads of the enc-dec (official: nn.Transformer's default 8)."""
    dim_feedforward: int = 128
    """Feed-forward width (official: 4096 = 4 x 1024)."""
    num_encoder_layers: int = 2
    """Encoder layers (official: 4)."""
    num_decoder_layers: int = 2
    """Decoder layers (official: 4)."""
    dropout: float = 0.0
    """Dropout inside the enc-dec (official: 0)."""


@dataclass
class VisualConfig:
    """The learnable-query pooler over the frozen image tower (MiniGPT-4's Q-Former role) and its projection."""

    num_queries: int = 32
    """Learnable queries = image tokens per image in the LLM input (MiniGPT-4: 32)."""
    num_heads: int = 4
    """Attention heads of the pooler (must divide the vision tower's width)."""
    num_layers: int = 1
    """Cross-attention (transformer decoder) layers of the pooler."""


@dataclass
class SamplingConfig:
    """How `generate` narrates and draws."""

    temperature: float = 0.7
    """Softmax temperature of the narration (0: greedy)."""
    top_p: float = 0.9
    """Nucleus sampling mass."""
    repetition_penalty: float = 1.1
    """CTRL-style penalty on already generated tokens (1: none)."""
    max_new_tokens: int = 48
    """Tokens generated per step at most (the forced vokens not counted)."""
    num_inference_steps: int = 25
    """Denoising steps of the frozen generator."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale of eq. 5 (the paper: 7.5)."""
    negative: Literal["mapper_zeros", "empty_caption"] = "mapper_zeros"
    """Negative conditioning: mapper(MLP(zeros)) (the paper's CFG), or the generator's empty caption
    (the 'w/o CFG' ablation's inference, which never trained the zero features)."""


@dataclass
class LoraSection:
    """LoRA on the LLM in stage 2 (official: r 8, alpha 16, dropout 0.05 on q_proj/v_proj)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class MiniGPT5Config:
    """Vokens, visual pooler, feature mapper, CFG dropout and sampling of MiniGPT-5."""

    num_vokens: int = 8
    """Generative vokens [IMG1]..[IMGn] (paper: 8)."""
    visual: VisualConfig = field(default_factory=VisualConfig)
    mapper: MapperConfig = field(default_factory=MapperConfig)
    cfg_dropout: float = 0.1
    """Per-sample probability that the voken states are zeroed in training (paper: 0.1; 0 = 'w/o CFG')."""
    lora: LoraSection = field(default_factory=LoraSection)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        if self.num_vokens < 1:
            raise ValueError(f"num_vokens must be >= 1, got {self.num_vokens}")
        if not 0.0 <= self.cfg_dropout < 1.0:
            raise ValueError(f"cfg_dropout must be in [0, 1), got {self.cfg_dropout}")


class VisualPooler(nn.Module):
    """Learnable queries cross-attend to the frozen tower's patch states, then a linear map to the LLM width."""

    def __init__(self, d_vision: int, d_llm: int, cfg: VisualConfig):
        super().__init__()
        if d_vision % cfg.num_heads:
            raise ValueError(f"visual.num_heads={cfg.num_heads} must divide the vision tower's width {d_vision}")
        self.queries = nn.Parameter(torch.randn(1, cfg.num_queries, d_vision) * 0.02)
        layer = nn.TransformerDecoderLayer(d_vision, cfg.num_heads, 4 * d_vision, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerDecoder(layer, cfg.num_layers, norm=nn.LayerNorm(d_vision))
        self.projection = nn.Linear(d_vision, d_llm)

    def forward(self, patch_states: torch.Tensor) -> torch.Tensor:
        queries = self.queries.expand(patch_states.shape[0], -1, -1)  # (N, Q, dv)
        return self.projection(self.blocks(queries, patch_states))  # (N, Q, d_llm)


class FeatureMapper(nn.Module):
    """Eq. 2: h_hat = enc-dec(MLP(h_voken), q), (B, n, d_llm) -> (B, L, d_cond)."""

    def __init__(self, d_llm: int, d_cond: int, context_length: int, cfg: MapperConfig):
        super().__init__()
        if d_cond % cfg.num_heads:
            raise ValueError(f"mapper.num_heads={cfg.num_heads} must divide the generator's width {d_cond}")
        self.mlp = nn.Sequential(nn.Linear(d_llm, d_cond), nn.GELU(), nn.Linear(d_cond, d_cond))
        self.enc_dec = nn.Transformer(
            d_model=d_cond, nhead=cfg.num_heads, num_encoder_layers=cfg.num_encoder_layers,
            num_decoder_layers=cfg.num_decoder_layers, dim_feedforward=cfg.dim_feedforward, dropout=cfg.dropout,
            batch_first=True, norm_first=True,
        )
        self.q = nn.Parameter(torch.randn(1, context_length, d_cond))  # the learnable decoder query sequence

    def forward(self, h_voken: torch.Tensor) -> torch.Tensor:
        memory = self.mlp(h_voken)  # (B, n, d_cond)
        return self.enc_dec(memory, self.q.expand(h_voken.shape[0], -1, -1))  # (B, L, d_cond)


def add_vokens(llm: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase | None, n: int) -> list[int]:
    """Add [IMG1]..[IMGn] to `tokenizer` and both embedding matrices of `llm`; new rows = mean of the old rows.

    Returns the vokens' ids. Without a tokenizer (a meta-device size check) the ids follow the last row.
    """
    rows = llm.get_input_embeddings().weight.shape[0]
    if tokenizer is not None:
        tokenizer.add_tokens(voken_names(n), special_tokens=True)
        ids = tokenizer.convert_tokens_to_ids(voken_names(n))
    else:
        ids = list(range(rows, rows + n))
    new_rows = max(rows, max(ids) + 1)
    llm.resize_token_embeddings(new_rows, mean_resizing=False)
    keep = torch.ones(new_rows, dtype=torch.bool)
    keep[ids] = False
    keep[rows:] = False
    for matrix in (llm.get_input_embeddings().weight, llm.get_output_embeddings().weight):
        if matrix.is_meta:
            continue
        with torch.no_grad():
            matrix[ids] = matrix[keep].mean(0, keepdim=True)
    return ids


class MiniGPT5(nn.Module):
    """LLM with vokens + frozen visual tower with a trainable pooler + feature mapper + frozen generator (+ VAE)."""

    def __init__(self, cfg: MiniGPT5Config, llm: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase | None,
                 visual_encoder: ClipBase, generator: SDBase, vae=None, voken_ids: list[int] | None = None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.voken_ids = voken_ids if voken_ids is not None else add_vokens(llm, tokenizer, cfg.num_vokens)
        if len(self.voken_ids) != cfg.num_vokens:
            raise ValueError(f"{len(self.voken_ids)} voken ids for num_vokens={cfg.num_vokens}")
        self.llm = llm
        self.visual_encoder = visual_encoder.requires_grad_(False)
        self.generator = generator.requires_grad_(False)
        self.vae = vae.requires_grad_(False) if vae is not None else None
        d_llm = llm.config.hidden_size
        vision = visual_encoder.model.config.vision_config
        self.pooler = VisualPooler(vision.hidden_size, d_llm, cfg.visual)
        text = generator.text_encoder.config
        self.mapper = FeatureMapper(d_llm, text.hidden_size, text.max_position_embeddings, cfg.mapper)
        self._row_masks: list = []
        self.stage = 0

    # ----- structure -------------------------------------------------------------------------------
    @property
    def causal_lm(self) -> LlamaForCausalLM:
        """The Llama inside (under a PEFT wrapper in stage 2)."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    @property
    def device(self) -> torch.device:
        return self.mapper.q.device

    def enable_lora(self) -> None:
        """Wrap the LLM with LoRA adapters (stage 2); the base weights stay frozen."""
        from peft import LoraConfig, get_peft_model

        if hasattr(self.llm, "get_base_model"):
            return
        lora = self.cfg.lora
        self.llm = get_peft_model(self.llm, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                       target_modules=list(lora.target_modules), bias="none"))

    def set_stage(self, stage: int) -> dict[str, int]:
        """Make exactly the stage's parameters trainable (see `parameter_groups`); returns group -> count."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        if stage == 2:
            self.enable_lora()
        self.requires_grad_(False)
        groups = self.parameter_groups(stage)
        for (params, _) in groups.values():
            for p in params:
                p.requires_grad_(True)
        for handle in self._row_masks:
            handle.remove()
        self._row_masks = []
        for matrix in (self.causal_lm.get_input_embeddings().weight, self.causal_lm.get_output_embeddings().weight):
            mask = torch.zeros(matrix.shape[0], 1, device=matrix.device, dtype=matrix.dtype)
            mask[self.voken_ids] = 1.0
            self._row_masks.append(matrix.register_hook(lambda grad, mask=mask: grad * mask))
        self.stage = stage
        return {name: count for name, (_, count) in groups.items()}

    def parameter_groups(self, stage: int) -> dict[str, tuple[list[nn.Parameter], int]]:
        """Named trainable groups of a stage with their *effective* counts (voken rows only, not whole matrices).

        Stage 1 (paper Sec. 4.1): voken rows, MLP, enc-dec, q; plus, in genops, the visual pooler and
        projection (no MiniGPT-4 checkpoint). Stage 2: voken rows, LoRA, enc-dec (MLP and q frozen).
        """
        lm = self.causal_lm
        d = lm.config.hidden_size
        n = len(self.voken_ids)
        groups: dict[str, tuple[list[nn.Parameter], int]] = {
            "voken_input": ([lm.get_input_embeddings().weight], n * d),
            "voken_output": ([lm.get_output_embeddings().weight], n * d),
        }

        def block(module: nn.Module) -> tuple[list[nn.Parameter], int]:
            params = list(module.parameters())
            return params, sum(p.numel() for p in params)

        if stage == 1:
            groups["mapper.mlp"] = block(self.mapper.mlp)
            groups["mapper.enc_dec"] = block(self.mapper.enc_dec)
            groups["mapper.q"] = ([self.mapper.q], self.mapper.q.numel())
            groups["visual.pooler (genops: no MiniGPT-4 checkpoint)"] = (
                [self.pooler.queries, *self.pooler.blocks.parameters()],
                self.pooler.queries.numel() + sum(p.numel() for p in self.pooler.blocks.parameters()))
            groups["visual.projection (genops: no MiniGPT-4 checkpoint)"] = block(self.pooler.projection)
        else:
            lora = [p for name, p in self.llm.named_parameters() if "lora_" in name]
            groups["lora"] = (lora, sum(p.numel() for p in lora))
            groups["mapper.enc_dec"] = block(self.mapper.enc_dec)
        return groups

    # ----- inputs -----------------------------------------------------------------------------------
    @torch.no_grad()
    def image_patch_states(self, pixels: torch.Tensor) -> torch.Tensor:
        """The frozen tower's last-layer states (N, 1 + patches, dv) of images in [-1, 1]."""
        size = self.visual_encoder.image_size
        if pixels.shape[-2:] != (size, size):
            pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        mean = torch.tensor(CLIP_PIXEL_MEAN, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_PIXEL_STD, device=pixels.device).view(1, 3, 1, 1)
        pixels = ((pixels + 1.0) / 2.0 - mean) / std
        return self.visual_encoder.model.vision_model(pixel_values=pixels).last_hidden_state

    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def build_sequence(self, prompt: str, answer: str | None, close: bool = True) -> tuple[list, list[int]]:
        """Pieces of `###Human: prompt ###Assistant: answer</s>`: token-id lists and None per image slot,
        and the labels of the token positions (IGNORE_INDEX outside the answer)."""
        text = PROMPT_TEMPLATE.format(prompt)
        parts = text.split(IMAGE_PLACEHOLDER)
        pieces: list = []
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        first = True
        for i, part in enumerate(parts):
            ids = (bos if first else []) + self._tokens(part)
            first = False
            pieces.append(ids)
            if i < len(parts) - 1:
                pieces.append(None)
        answer_ids = self._tokens(answer) + ([self.tokenizer.eos_token_id] if close else []) if answer is not None else []
        pieces.append(answer_ids)
        return pieces, answer_ids

    def embed_sequences(self, sequences: list[list], image_embeds: torch.Tensor | None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded (B, T, d) input embeddings, (B, T) attention mask, (B, T) ids (-1 at image slots),
        (B, T) labels (the last piece of each sequence supervised) from pieces with image slots."""
        emb = self.causal_lm.get_input_embeddings()
        q = self.cfg.visual.num_queries
        next_image = 0
        rows, ids_rows, label_rows = [], [], []
        for pieces in sequences:
            parts, ids_all, labels = [], [], []
            for k, piece in enumerate(pieces):
                if piece is None:
                    parts.append(image_embeds[next_image])  # (Q, d)
                    next_image += 1
                    ids_all += [-1] * q
                    labels += [IGNORE_INDEX] * q
                elif piece:
                    t = torch.tensor(piece, dtype=torch.long, device=self.device)
                    parts.append(emb(t))
                    ids_all += piece
                    labels += piece if k == len(pieces) - 1 else [IGNORE_INDEX] * len(piece)
            rows.append(torch.cat(parts))
            ids_rows.append(ids_all)
            label_rows.append(labels)
        if image_embeds is not None and next_image != image_embeds.shape[0]:
            raise ValueError(f"{image_embeds.shape[0]} images for {next_image} {IMAGE_PLACEHOLDER} slots")
        width = max(r.shape[0] for r in rows)
        d = rows[0].shape[-1]
        batch = len(rows)
        inputs = torch.zeros(batch, width, d, device=self.device, dtype=rows[0].dtype)
        mask = torch.zeros(batch, width, dtype=torch.long, device=self.device)
        ids = torch.full((batch, width), -1, dtype=torch.long, device=self.device)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long, device=self.device)
        for i, (r, row_ids, row_labels) in enumerate(zip(rows, ids_rows, label_rows)):
            inputs[i, : r.shape[0]] = r
            mask[i, : r.shape[0]] = 1
            ids[i, : r.shape[0]] = torch.tensor(row_ids, device=self.device)
            labels[i, : r.shape[0]] = torch.tensor(row_labels, device=self.device)
        return inputs, mask, ids, labels

    def voken_states(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The n last-layer states that predict [IMG1]..[IMGn]: positions p-1 .. p+n-2, p = first [IMG1]."""
        first = ids == self.voken_ids[0]  # (B, T)
        if not first.any(dim=1).all():
            raise ValueError("a row without [IMG1] was asked for voken states")
        p = first.int().argmax(dim=1)  # (B,)
        offsets = torch.arange(-1, len(self.voken_ids) - 1, device=hidden.device)  # (n,)
        index = (p[:, None] + offsets[None]).clamp(min=0)  # (B, n)
        return hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, n, d)

    # ----- training ---------------------------------------------------------------------------------
    def empty_caption_features(self) -> torch.Tensor:
        with torch.no_grad():
            return self.generator.encode_prompts([""])  # (1, L, d_cond)

    def map_vokens(self, h_voken: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """h_hat (B, L, d_cond); rows where `drop` is True map zero features (CFG training, eq. 5)."""
        if drop is not None:
            h_voken = torch.where(drop.view(-1, 1, 1), torch.zeros_like(h_voken), h_voken)
        return self.mapper(h_voken)

    def forward(self, batch: dict, weights: dict[str, float], noise: torch.Generator | None = None,
                dropout: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Weighted loss of one batch.

        batch: "prompts", "answers" (lists of str; answers with the voken string where an image goes),
        "image_states" (N, P, dv) frozen tower states of every image slot in order (or "images" pixels),
        "latents" (G, C, h, w) target latents of the rows whose answer holds vokens, in row order,
        optional "caption_features" (G, L, d_cond) for L_CAP, optional "caption_prompts"/"captions" (the
        image-captioning rows that train the pooler in stage 1, their images after the others).
        weights: "text", "ldm", "cap", "imgcap".
        """
        states = batch.get("image_states")
        if states is None and batch.get("images") is not None:
            states = self.image_patch_states(batch["images"].to(self.device))
        image_embeds = self.pooler(states.to(self.device)) if states is not None else None
        sequences = [self.build_sequence(p, a)[0] for p, a in zip(batch["prompts"], batch["answers"])]
        captioning = list(zip(batch.get("caption_prompts", []), batch.get("captions", [])))
        sequences += [self.build_sequence(p, a)[0] for p, a in captioning]
        inputs, mask, ids, labels = self.embed_sequences(sequences, image_embeds)
        hidden = self.causal_lm.model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state  # (B, T, d)
        logits = self.causal_lm.lm_head(hidden).float()  # (B, T, V)
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX,
                              reduction="none")  # (B, T-1)
        counted = (labels[:, 1:] != IGNORE_INDEX).float()
        main = len(batch["prompts"])
        out: dict[str, torch.Tensor] = {}
        out["l_text"] = (nll[:main] * counted[:main]).sum() / counted[:main].sum().clamp(min=1)
        total = weights.get("text", 1.0) * out["l_text"]
        if captioning:
            out["l_imgcap"] = (nll[main:] * counted[main:]).sum() / counted[main:].sum().clamp(min=1)
            total = total + weights.get("imgcap", 1.0) * out["l_imgcap"]
        has_voken = (ids[:main] == self.voken_ids[0]).any(dim=1)  # (main,)
        if has_voken.any() and (weights.get("ldm", 0.0) or weights.get("cap", 0.0)):
            h = self.voken_states(hidden[:main][has_voken], ids[:main][has_voken])  # (G, n, d)
            drop = condition_dropout_mask(h.shape[0], self.cfg.cfg_dropout, dropout).to(self.device)
            h_hat = self.map_vokens(h, drop)  # (G, L, d_cond)
            out["cfg_dropped"] = drop.float().mean()
            if weights.get("ldm", 0.0):
                latents = batch["latents"].to(self.device)
                if latents.shape[0] != h_hat.shape[0]:
                    raise ValueError(f"{latents.shape[0]} target latents for {h_hat.shape[0]} rows with vokens")
                ldm = denoising_loss(self.generator.denoise, self.generator.noise_scheduler, latents, h_hat,
                                     snr_gamma=self.generator.cfg.diffusion.snr_gamma, generator=noise)
                out["l_ldm"] = ldm["loss"]
                total = total + weights["ldm"] * out["l_ldm"]
            if weights.get("cap", 0.0) and batch.get("caption_features") is not None:
                target = batch["caption_features"].to(self.device)
                target = torch.where(drop.view(-1, 1, 1), self.empty_caption_features().expand_as(target), target)
                out["l_cap"] = F.mse_loss(h_hat, target)
                total = total + weights["cap"] * out["l_cap"]
        out["loss"] = total
        return out

    # ----- inference --------------------------------------------------------------------------------
    @torch.no_grad()
    def negative_conditioning(self) -> torch.Tensor:
        if self.cfg.sampling.negative == "empty_caption":
            return self.empty_caption_features()
        zeros = torch.zeros(1, len(self.voken_ids), self.causal_lm.config.hidden_size, device=self.device)
        return self.mapper(zeros)  # (1, L, d_cond): eq. 5's h_hat_0

    @torch.no_grad()
    def draw(self, h_hat: torch.Tensor, generator: torch.Generator | None = None, num_inference_steps: int | None = None,
             guidance_scale: float | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] from mapped voken features, frozen UNet with CFG (eq. 5)."""
        if self.vae is None:
            raise ValueError("this MiniGPT5 has no VAE: load it from a folder with generator/vae")
        s = self.cfg.sampling
        scale = s.guidance_scale if guidance_scale is None else guidance_scale
        diffusion = self.generator.cfg.diffusion
        latents = sample(
            self.generator.denoise, make_sampling_scheduler(self.generator.noise_scheduler, diffusion.sampler),
            h_hat, self.negative_conditioning() if scale > 1.0 else None, latent_shape=self.generator.latent_shape,
            num_inference_steps=num_inference_steps or s.num_inference_steps, guidance_scale=scale, generator=generator,
        )
        return decode_latents(self.vae, latents)

    @torch.no_grad()
    def condition_for(self, prompts: Sequence[str], images: Sequence[torch.Tensor | None] | None = None,
                      prefixes: Sequence[str] | None = None) -> torch.Tensor:
        """h_hat (B, L, d_cond) with the vokens forced right after each answer `prefix` (no narration), batched.

        `images[i]` (k_i, 3, H, W) in [-1, 1] fill prompt i's <ImageHere> slots in order."""
        flat = [img for group in (images or []) if group is not None for img in group]
        embeds = self.pooler(self.image_patch_states(torch.stack(flat).to(self.device))) if flat else None
        sequences = []
        for i, prompt in enumerate(prompts):
            pieces = self.build_sequence(prompt, None)[0][:-1]
            prefix = self._tokens(prefixes[i]) if prefixes else []
            sequences.append(pieces + [prefix + list(self.voken_ids)])
        inputs, mask, ids, _ = self.embed_sequences(sequences, embeds)
        hidden = self.causal_lm.model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
        return self.mapper(self.voken_states(hidden, ids))

    def _next_token(self, logits: torch.Tensor, generated: list[int], rng: torch.Generator) -> int:
        s = self.cfg.sampling
        logits = logits.float().clone()
        if s.repetition_penalty != 1.0 and generated:
            seen = torch.tensor(sorted(set(generated)), device=logits.device)
            values = logits[seen]
            logits[seen] = torch.where(values > 0, values / s.repetition_penalty, values * s.repetition_penalty)
        logits[self.voken_ids[1:]] = -math.inf  # only [IMG1] may open an image; the rest are forced
        if s.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / s.temperature, dim=-1)
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < s.top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=rng)
        return int(order[choice])

    @torch.no_grad()
    def generate(self, prompt: str, images: torch.Tensor | None = None, *, seed: int = 0, force_image: bool = False,
                 draw: bool = True, num_inference_steps: int | None = None) -> tuple[str, torch.Tensor | None, bool]:
        """Narrate after `prompt` (images in [-1, 1] fill its <ImageHere> slots); when [IMG1] comes (or, with
        `force_image`, when the text ends without one) the remaining vokens are forced, their states mapped and
        the frozen UNet draws. Returns (text, image (1, 3, H, W) or None, whether the model itself chose [IMG1])."""
        was_training = self.training
        self.eval()
        rng = torch.Generator().manual_seed(seed)
        image_embeds = self.pooler(self.image_patch_states(images.to(self.device))) if images is not None and len(images) else None
        pieces, _ = self.build_sequence(prompt, None)
        pieces = pieces[:-1]
        generated: list[int] = []
        chose = False
        for _ in range(self.cfg.sampling.max_new_tokens):
            inputs, mask, _, _ = self.embed_sequences([pieces + [generated]] if generated else [pieces], image_embeds)
            hidden = self.causal_lm.model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
            token = self._next_token(self.causal_lm.lm_head(hidden[0, -1]), generated, rng)
            if token == self.voken_ids[0]:
                chose = True
                break
            if token == self.tokenizer.eos_token_id:
                break
            generated.append(token)
        text = self.tokenizer.decode(generated, skip_special_tokens=True).strip()
        image = None
        if chose or force_image:
            full = pieces + [generated + list(self.voken_ids)]
            inputs, mask, ids, _ = self.embed_sequences([full], image_embeds)
            hidden = self.causal_lm.model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
            h_hat = self.mapper(self.voken_states(hidden, ids))
            if draw:
                image = self.draw(h_hat, torch.Generator(self.device).manual_seed(seed), num_inference_steps)
            else:
                image = h_hat
        self.train(was_training)
        return text, image, chose

    # ----- files ------------------------------------------------------------------------------------
    def heads_state_dict(self) -> dict[str, torch.Tensor]:
        return {**{f"pooler.{k}": v for k, v in self.pooler.state_dict().items()},
                **{f"mapper.{k}": v for k, v in self.mapper.state_dict().items()}}

    def save_pretrained(self, path: str | Path) -> Path:
        """llm/ (LoRA merged, vokens in the tokenizer), visual_encoder/, generator/ (with vae/), heads, config."""
        path = Path(path)
        llm = self.llm
        if hasattr(llm, "merge_and_unload"):
            llm = copy.deepcopy(llm).merge_and_unload()
        with atomic_directory(path) as tmp:
            LlmBase(llm, self.tokenizer).save_pretrained(tmp / "llm")
            self.visual_encoder.save_pretrained(tmp / "visual_encoder")
            self.generator.save_pretrained(tmp / "generator", vae=self.vae)
            save_file({k: v.detach().contiguous().cpu() for k, v in self.heads_state_dict().items()}, tmp / HEADS_FILE)
            (tmp / GENOPS_CONFIG_FILE).write_text(json.dumps(
                {"config": to_dict(self.cfg), "voken_ids": list(self.voken_ids), "stage": self.stage}, indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, cfg: MiniGPT5Config | None = None) -> MiniGPT5:
        """Load a folder written by `save_pretrained`; `cfg` replaces the saved config (e.g. stage 2's LoRA/sampling)."""
        path = Path(path)
        meta_file = path / GENOPS_CONFIG_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(f"{path} is not a MiniGPT-5 folder: {meta_file} is missing")
        meta = json.loads(meta_file.read_text())
        saved = from_dict(MiniGPT5Config, meta["config"], str(meta_file))
        cfg = cfg or saved
        for name in ("num_vokens", "visual", "mapper"):
            if json.dumps(to_dict(cfg)[name], sort_keys=True) != json.dumps(to_dict(saved)[name], sort_keys=True):
                raise ValueError(f"model.{name} differs from the saved MiniGPT-5 at {path} ({meta_file}): the weights "
                                 "would not fit; drop the override")
        llm = LlamaForCausalLM.from_pretrained(path / "llm", dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path / "llm")
        generator = SDBase.from_pretrained(path / "generator")
        vae = load_autoencoder(path / "generator" / "vae") if (path / "generator" / "vae").is_dir() else None
        model = cls(cfg, llm, tokenizer, ClipBase.from_pretrained(path / "visual_encoder"), generator, vae,
                    voken_ids=meta["voken_ids"])
        heads = load_file(path / HEADS_FILE)
        model.pooler.load_state_dict({k.removeprefix("pooler."): v for k, v in heads.items() if k.startswith("pooler.")})
        model.mapper.load_state_dict({k.removeprefix("mapper."): v for k, v in heads.items() if k.startswith("mapper.")})
        model.stage = meta.get("stage", 0)
        return model

    @classmethod
    def from_parts(cls, cfg: MiniGPT5Config, llm_path: str | Path, clip_path: str | Path, generator_path: str | Path
                   ) -> MiniGPT5:
        """A fresh MiniGPT-5 from the base models' folders: llm_base, clip_base, sd_base (with its vae/)."""
        base = LlmBase.from_pretrained(llm_path)
        generator_path = Path(generator_path)
        vae_dir = generator_path / "vae"
        if not vae_dir.is_dir():
            raise FileNotFoundError(f"{vae_dir} is missing: MiniGPT-5 draws through the sd_base folder's VAE")
        return cls(cfg, base.model, base.tokenizer, ClipBase.from_pretrained(clip_path),
                   SDBase.from_pretrained(generator_path), load_autoencoder(vae_dir))


def voken_string(n: int) -> str:
    return "".join(voken_names(n))


_SPACES = re.compile(r"\s+")


def story_task(steps: Sequence[dict], target: int, task: Literal["text", "image", "both"], num_vokens: int,
               context: Literal["none", "text", "image", "both"] = "both", max_context: int = 4
               ) -> tuple[str, str, list[int], int | None]:
    """One stage-2 example from a story (steps: {"text", "has_image"}) at step `target` (paper Sec. 3.3):
    text-only (given the next image, write its text), image-only (given the next text, draw), or both.

    `context` selects what of the earlier steps the prompt shows (Table 6): nothing, their text, their
    images, or both. Returns (prompt, answer, indices of the steps whose images fill the prompt's slots
    in order, index of the step whose image the vokens generate or None).
    """
    parts: list[str] = []
    images: list[int] = []
    for i in range(max(0, target - max_context), target):
        piece = []
        if context in ("text", "both") and steps[i]["text"]:
            piece.append(steps[i]["text"])
        if context in ("image", "both") and steps[i]["has_image"]:
            piece.append(IMAGE_SLOT)
            images.append(i)
        if piece:
            parts.append(" ".join(piece))
    vokens = voken_string(num_vokens)
    now = steps[target]
    if task == "text":
        if not now["has_image"]:
            raise ValueError("a text-only task needs the target step's image")
        parts.append(IMAGE_SLOT)
        images.append(target)
        return _SPACES.sub(" ", " ".join(parts)).strip(), now["text"], images, None
    if task == "image":
        parts.append(now["text"])
        return _SPACES.sub(" ", " ".join(parts)).strip(), vokens, images, target
    return _SPACES.sub(" ", " ".join(parts)).strip(), f"{now['text']} {vokens}".strip(), images, target


class _VisionTowerOnly(nn.Module):
    """A CLIPModel without its tokenizer: what a meta-device size check needs of the visual encoder."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model


def meta_model(cfg: MiniGPT5Config, llm_cfg, clip_cfg, generator_cfg, stage: int) -> MiniGPT5:
    """The whole MiniGPT-5 on the meta device (no memory, no weights) with the stage's trainable set,
    for parameter counts at paper scale (Vicuna-7B, SD 2.1's sizes)."""
    from components.models.clip_evaluator import build_clip_model
    from components.models.llm_base import llama_config

    with torch.device("meta"):
        llm = LlamaForCausalLM(llama_config(llm_cfg))
        clip = _VisionTowerOnly(build_clip_model(clip_cfg))
        generator = SDBase.from_config(generator_cfg)
        model = MiniGPT5(cfg, llm, None, clip, generator)
        model.set_stage(stage)
    return model
