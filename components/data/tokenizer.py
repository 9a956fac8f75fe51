"""The project's text tokenizer: byte-level BPE trained on the prepared corpus, saved in HF format.

`AutoTokenizer.from_pretrained(path)` loads what `train_bpe_tokenizer` writes, exactly as it loads a
pretrained tokenizer; real runs point `tokenizer.pretrained_path` at one instead of training.
Sequences are wrapped as `<s> ... </s>`: CLIP-style text encoders pool at the end-of-text token.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from components.fileio import atomic_directory

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


@dataclass
class TokenizerConfig:
    vocab_size: int = 2048
    """Target vocabulary size of the trained BPE (special tokens included)."""
    min_frequency: int = 2
    """Merges seen fewer times than this are not learned."""
    model_max_length: int = 512
    """Longest sequence the tokenizer reports as supported (ParaDiffusion encodes up to 512 tokens)."""
    pretrained_path: str | None = None
    """Use this pretrained HF tokenizer folder instead of training one (real backbones)."""

    def __post_init__(self) -> None:
        if self.vocab_size < 300:
            raise ValueError(f"tokenizer.vocab_size must be >= 300 (256 bytes + specials + merges), got {self.vocab_size}")


def train_bpe_tokenizer(texts: Iterable[str], cfg: TokenizerConfig, out_dir: Path) -> Path:
    """Train a byte-level BPE on `texts` and save it (tokenizer.json + configs) to `out_dir`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos, eos = SPECIAL_TOKENS["bos_token"], SPECIAL_TOKENS["eos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {bos} $B {eos}",
        special_tokens=[(bos, tokenizer.token_to_id(bos)), (eos, tokenizer.token_to_id(eos))],
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=cfg.model_max_length, **SPECIAL_TOKENS)
    with atomic_directory(out_dir) as tmp:
        fast.save_pretrained(tmp)
    return Path(out_dir)
