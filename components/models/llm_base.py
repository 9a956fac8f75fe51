"""The language backbone (`llm_base`): a transformers `LlamaForCausalLM` with the project tokenizer.

ParaDiffusion encodes paragraphs with a decoder-only LLM (Llama-2-7B) adapted with LoRA, and
MiniGPT-5 narrates with one (Vicuna-7B). A randomly initialised LLM can do neither, so genops
pretrains a small Llama on all of the synthetic world's text (tiny/demo); at paper scale the same
class builds the 7B configs, and `pretrained_path` loads real weights from a local folder with the
ordinary `from_pretrained` code (nothing is downloaded).

The architecture is Llama's (Touvron et al. 2023): pre-norm RMSNorm blocks, rotary position
embeddings, SwiGLU MLP, untied input and output embeddings. Training is next-token prediction
(`forward`): cross-entropy between the logits at position t and the token at t + 1, skipping labels
of -100 (padding, and the <s> that opens each packed document: see `components/data/text_corpus.py`).

Folder layout of `save_pretrained`: the Hugging Face hub layout (config.json, model.safetensors,
generation_config.json, tokenizer files) plus `genops_llm_base.json` (the LlmBaseConfig), so an
exported llm_base is itself a valid `model.pretrained_path`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from components.config import from_dict, to_dict
from components.data.text_corpus import IGNORE_INDEX
from components.fileio import atomic_directory

logger = logging.getLogger(__name__)

GENOPS_CONFIG_FILE = "genops_llm_base.json"
# Architecture fields a loaded checkpoint's config.json must agree with the YAML on.
ARCHITECTURE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "num_key_value_heads")


@dataclass
class LlmBaseConfig:
    """A Llama-architecture decoder-only language model."""

    vocab_size: int | None = None
    """Token embeddings; null takes the size of the tokenizer the model is built with."""
    hidden_size: int = 64
    """Width of the residual stream (Llama-2-7B: 4096)."""
    intermediate_size: int = 172
    """Width of the SwiGLU MLP (Llama-2-7B: 11008, about 8/3 of hidden_size)."""
    num_hidden_layers: int = 2
    """Transformer blocks (Llama-2-7B: 32)."""
    num_attention_heads: int = 4
    """Query heads per block; must divide hidden_size (Llama-2-7B: 32)."""
    num_key_value_heads: int | None = None
    """Key/value heads (grouped-query attention, Llama-2-70B: 8); null = num_attention_heads (7B models)."""
    max_position_embeddings: int = 128
    """Longest sequence the model is meant for (Llama-2: 4096, Llama-1/Vicuna v0: 2048); RoPE has no table."""
    rms_norm_eps: float = 1.0e-5
    """Epsilon of every RMSNorm (Llama-2: 1e-5, Llama-1: 1e-6)."""
    rope_theta: float = 10000.0
    """Base wavelength of the rotary position embeddings."""
    tie_word_embeddings: bool = False
    """Share the input embedding with the output projection (Llama: untied)."""
    initializer_range: float = 0.02
    """Std of the normal initialisation of linear and embedding weights."""
    pretrained_path: str | None = None
    """Local folder with real weights in Hugging Face layout (e.g. a copy of meta-llama/Llama-2-7b-hf, or an
    llm_base export) loaded with `LlamaForCausalLM.from_pretrained`; its config must match the fields above.
    Null: random initialisation."""

    def __post_init__(self) -> None:
        if self.vocab_size is not None and self.vocab_size < 4:
            raise ValueError(f"vocab_size must be >= 4 or null (from the tokenizer), got {self.vocab_size}")
        if self.hidden_size < 1 or self.num_attention_heads < 1 or self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be a positive multiple of num_attention_heads={self.num_attention_heads}"
            )
        kv_heads = self.num_key_value_heads
        if kv_heads is not None and (kv_heads < 1 or self.num_attention_heads % kv_heads):
            raise ValueError(
                f"num_key_value_heads={kv_heads} must divide num_attention_heads={self.num_attention_heads} (or be null)"
            )
        for name in ("intermediate_size", "num_hidden_layers", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            raise ValueError("rms_norm_eps and rope_theta must be > 0")


def llama_config(cfg: LlmBaseConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> LlamaConfig:
    """The transformers LlamaConfig for `cfg`; vocabulary size and special ids from `tokenizer` when given."""
    vocab_size = cfg.vocab_size
    special: dict[str, int | None] = {}
    if tokenizer is not None:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token: a causal LM ends every document with one; set tokenizer.eos_token")
        special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                   "pad_token_id": tokenizer.pad_token_id}
        if vocab_size is None:
            vocab_size = len(tokenizer)
        elif vocab_size < len(tokenizer):
            raise ValueError(
                f"model.vocab_size={vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens; "
                "set model.vocab_size to null to take the tokenizer's size"
            )
    if vocab_size is None:
        raise ValueError("model.vocab_size is null and no tokenizer was given: pass the tokenizer or set model.vocab_size")
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        # transformers 5 keeps the RoPE base inside rope_parameters (4.x had a top-level rope_theta)
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.initializer_range,
        hidden_act="silu",
        # without a tokenizer, transformers' defaults are Llama's SentencePiece ids (<s> = 1, </s> = 2)
        **special,
    )


def load_pretrained_llama(cfg: LlmBaseConfig) -> LlamaForCausalLM:
    """`cfg.pretrained_path`'s weights, after checking its config.json against `cfg` (a clear error per field)."""
    path = Path(cfg.pretrained_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model.pretrained_path={path} is not a Hugging Face model folder ({path / 'config.json'} is missing)"
        )
    saved = LlamaConfig.from_pretrained(path)
    expected = {name: getattr(cfg, name) for name in ARCHITECTURE_FIELDS}
    expected["num_key_value_heads"] = cfg.num_key_value_heads or cfg.num_attention_heads
    if cfg.vocab_size is not None:
        expected["vocab_size"] = cfg.vocab_size
    for name, want in expected.items():
        if getattr(saved, name) != want:
            raise ValueError(
                f"model.pretrained_path={path} has {name}={getattr(saved, name)} but the config says model.{name}={want}; "
                "use the profile that matches the checkpoint or override the field"
            )
    logger.info("loading LlamaForCausalLM weights from %s", path)
    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)


class LlmBase(nn.Module):
    """A LlamaForCausalLM with its tokenizer: `forward` is the next-token loss, `generate` continues text."""

    def __init__(self, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase | None, cfg: LlmBaseConfig | None = None):
        super().__init__()
        if tokenizer is not None and model.config.vocab_size < len(tokenizer):
            raise ValueError(
                f"the model has {model.config.vocab_size} token embeddings but the tokenizer has {len(tokenizer)} "
                "tokens; build the model with this tokenizer"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: LlmBaseConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> LlmBase:
        """Random initialisation (vocabulary from `tokenizer`), or `cfg.pretrained_path`'s weights."""
        if cfg.pretrained_path:
            model = load_pretrained_llama(cfg)
            if tokenizer is not None and len(tokenizer) != model.config.vocab_size:
                raise ValueError(
                    f"the tokenizer has {len(tokenizer)} tokens but model.pretrained_path={cfg.pretrained_path} has "
                    f"{model.config.vocab_size} token embeddings: a pretrained LLM needs its own tokenizer "
                    "(set data.tokenizer to the checkpoint's folder)"
                )
            return cls(model, tokenizer, cfg)
        return cls(LlamaForCausalLM(llama_config(cfg, tokenizer)), tokenizer, cfg)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def enable_gradient_checkpointing(self) -> None:
        self.model.gradient_checkpointing_enable()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Next-token loss of (B, T) token ids; `labels` is `input_ids` with IGNORE_INDEX where nothing is predicted.

        Returns 'loss' (mean cross-entropy over predicted tokens) and 'accuracy' (fraction of predicted
        tokens that are the logits' argmax), plus 'nll_sum', 'correct' and 'tokens' for exact
        aggregation over many batches (perplexity = exp(sum nll / sum tokens)).
        """
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
        logits = logits[:, :-1].float()  # (B, T-1, V): position t predicts token t+1
        targets = labels[:, 1:]  # (B, T-1)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                              ignore_index=IGNORE_INDEX, reduction="sum")
        predicted = targets != IGNORE_INDEX  # (B, T-1)
        tokens = predicted.sum()
        if int(tokens) == 0:
            raise ValueError("no token to predict in this batch: every label is -100")
        with torch.no_grad():
            correct = ((logits.argmax(-1) == targets) & predicted).sum()
        return {"loss": nll / tokens, "accuracy": correct.float() / tokens,
                "nll_sum": nll.detach(), "correct": correct, "tokens": tokens}

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int = 0,
    ) -> list[str]:
        """Continue each prompt; returns the continuations only (decoded, special tokens removed).

        temperature 0 is greedy decoding; above 0, sampling (from the `top_k` most likely tokens if
        given), seeded by `seed` without touching the caller's random state. A continuation ends at
        </s> or after `max_new_tokens`.
        """
        if self.tokenizer is None:
            raise ValueError("this LlmBase has no tokenizer; build or load it with one")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        prefix = [tok.bos_token_id] if tok.bos_token_id is not None else []
        # <s> prompt, without the </s> the tokenizer's post-processor would append
        encoded = [prefix + ids for ids in tok(list(prompts), add_special_tokens=False)["input_ids"]]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids):] = 1
        sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k or 0} if temperature > 0 else {
            "do_sample": False}
        was_training = self.training
        self.eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            output = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=tok.eos_token_id,
                bos_token_id=tok.bos_token_id, top_p=None, **sampling,
            )  # (B, width + new)
        self.train(was_training)
        return [tok.decode(row[width:], skip_special_tokens=True).strip() for row in output.cpu()]

    def save_pretrained(self, path: str | Path) -> Path:
        """Write model + tokenizer in the Hugging Face hub layout (one folder), atomically."""
        path = Path(path)
        with atomic_directory(path) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
            if self.cfg is not None:
                (tmp / GENOPS_CONFIG_FILE).write_text(json.dumps(to_dict(self.cfg), indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> LlmBase:
        """Load a folder written by `save_pretrained`, or any local Llama folder with its tokenizer."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a Llama model folder: {path / 'config.json'} is missing")
        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
        cfg_file = path / GENOPS_CONFIG_FILE
        cfg = from_dict(LlmBaseConfig, json.loads(cfg_file.read_text()), str(cfg_file)) if cfg_file.is_file() else None
        return cls(model, tokenizer, cfg)
