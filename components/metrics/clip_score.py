"""CLIP-based alignment metrics: CLIP score, CLIP-I and CLIP-T.

- CLIP score (VLAD IV-B, TextDiffuser): max(cos(E_img, E_txt), 0) with weight w = 1, averaged over
  images. Hessel et al.'s CLIPScore uses w = 2.5 and the prefix "A photo depicts "; the text-rendering
  papers report w = 1 (values around 0.3), and TextDiffuser keeps the prefix, so it is an option here.
- CLIP-I (MiniGPT-5 4.2.2): cos(generated image, ground-truth image), averaged.
- CLIP-T (MiniGPT-5 4.2.2): cos(generated image, ground-truth text), averaged.

MiniGPT-5's evaluation code averages raw cosines for CLIP-I / CLIP-T, so only the CLIP score is
clipped at 0. The CLIP model is a transformers `CLIPModel` loaded from a local folder that also holds
its tokenizer and `preprocessor_config.json` (real CLIP checkpoints), or a folder written by the
project's `clip_evaluator`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from components.metrics.loading import ImageLike, load_clip_model, load_rgb

logger = logging.getLogger(__name__)

TEXTDIFFUSER_PREFIX = "A photo depicts "


class ClipEmbedder:
    """Unit-norm CLIP image and text embeddings from a local `CLIPModel` folder.

    Texts are tokenized CLIP-style whatever post-processor the tokenizer carries (<bos> tokens
    <eos>, truncated to the text context) and pooled at the first <eos>. transformers' own pooler
    treats a config with eos_token_id == 2 as legacy OpenAI CLIP and pools at the highest token id
    instead, which is wrong for tokenizers trained with `tokenizers` (their <eos> is often id 2).
    """

    def __init__(self, model_path: str | Path, device: str | torch.device = "cpu") -> None:
        from transformers import AutoTokenizer

        path = Path(model_path)
        model, self.processor = load_clip_model(path)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.eos_token_id is None or self.tokenizer.pad_token_id is None:
            raise ValueError(
                f"the tokenizer in {path} needs an eos_token and a pad_token (CLIP pools at <eos>)"
            )
        self.max_length = self.model.config.text_config.max_position_embeddings
        self.name = f"clip:{path.resolve().name}"

    @torch.no_grad()
    def embed_images(self, images: Sequence[ImageLike], batch_size: int = 32) -> torch.Tensor:
        """(N,) images -> (N, D) unit-norm embeddings."""
        out = []
        for start in range(0, len(images), batch_size):
            chunk = [load_rgb(im) for im in images[start : start + batch_size]]
            pixels = self.processor(images=chunk, return_tensors="pt")["pixel_values"]  # (B, 3, h, w)
            emb = self.model.get_image_features(pixel_values=pixels.to(self.device)).pooler_output  # (B, D)
            out.append(F.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.projection_dim)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), each (B, L): <bos>? tokens <eos> <pad>..., L <= the text context."""
        bos, eos, pad = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        prefix = [bos] if bos is not None else []
        room = self.max_length - len(prefix) - 1
        rows = [
            prefix + ids[:room] + [eos]
            for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        ]
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
        return input_ids, attention_mask

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """(N,) texts -> (N, D) unit-norm embeddings; texts longer than the model's context are truncated."""
        out = []
        for start in range(0, len(texts), batch_size):
            input_ids, attention_mask = self.tokenize(texts[start : start + batch_size])
            input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
            hidden = self.model.text_model(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
            eos_at = (attention_mask.sum(-1) - 1).clamp(min=0)  # (B,) the <eos> closes each row
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eos_at]  # (B, H)
            emb = self.model.text_projection(pooled)  # (B, D)
            out.append(F.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.projection_dim)


@dataclass(frozen=True)
class ClipScores:
    """Per-image values and their means; `clip_i` is None when no reference images were given."""

    clip_score: float
    clip_t: float
    clip_i: float | None
    per_image_clip_score: list[float]
    per_image_clip_t: list[float]
    per_image_clip_i: list[float] | None
    model: str
    prefix: str

    def to_json(self) -> dict:
        return {
            "clip_score": self.clip_score,
            "clip_t": self.clip_t,
            "clip_i": self.clip_i,
            "count": len(self.per_image_clip_score),
            "model": self.model,
            "prefix": self.prefix,
        }


def clip_score_from_embeddings(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Per-pair CLIP score max(cos, 0) (w = 1) from unit-norm (N, D) embeddings."""
    return (image_emb * text_emb).sum(-1).clamp(min=0)  # (N,)


def clip_scores(
    embedder: ClipEmbedder,
    images: Sequence[ImageLike],
    prompts: Sequence[str],
    reference_images: Sequence[ImageLike] | None = None,
    prefix: str = TEXTDIFFUSER_PREFIX,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> ClipScores:
    """CLIP score (with `prefix` prepended to each prompt), CLIP-T and, given references, CLIP-I."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    if reference_images is not None and len(reference_images) != len(images):
        raise ValueError(f"{len(images)} images but {len(reference_images)} reference images")
    if not images:
        raise ValueError("no images to score")
    score, clip_t, clip_i = [], [], []
    for start in range(0, len(images), batch_size):
        sl = slice(start, start + batch_size)
        img = embedder.embed_images(images[sl], batch_size)  # (B, D)
        txt = embedder.embed_texts(list(prompts[sl]), batch_size)  # (B, D)
        txt_prefixed = embedder.embed_texts([prefix + p for p in prompts[sl]], batch_size) if prefix else txt
        score.append(clip_score_from_embeddings(img, txt_prefixed))
        clip_t.append((img * txt).sum(-1))
        if reference_images is not None:
            ref = embedder.embed_images(reference_images[sl], batch_size)  # (B, D)
            clip_i.append((img * ref).sum(-1))
        if progress is not None:
            progress(len(images[sl]))
    score_t, clip_t_t = torch.cat(score), torch.cat(clip_t)
    clip_i_t = torch.cat(clip_i) if clip_i else None
    return ClipScores(
        clip_score=float(score_t.mean()),
        clip_t=float(clip_t_t.mean()),
        clip_i=float(clip_i_t.mean()) if clip_i_t is not None else None,
        per_image_clip_score=score_t.tolist(),
        per_image_clip_t=clip_t_t.tolist(),
        per_image_clip_i=clip_i_t.tolist() if clip_i_t is not None else None,
        model=embedder.name,
        prefix=prefix,
    )
