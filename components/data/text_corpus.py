"""The world's text as causal-LM data: one document per prepared record, packed into token blocks.

Documents: a caption or a ParaImage paragraph is one document; a VIST story is its steps in order
(one narrative, joined by spaces); an MMDialog conversation is its turns, one per line.

Packing (GPT-style, as nanoGPT and Llama pretraining do it): every document becomes
`<s> tokens </s>`, the documents are concatenated into one stream, and the stream is cut into
blocks of `block_size` tokens, so no compute goes to padding. A document may span two blocks;
attention crosses document boundaries inside a block and `<s>` tells the model a new one starts.
Labels are the tokens themselves (the model shifts them by one) except -100 on `<s>` (nothing
before it predicts the start of an unrelated document) and on padding, which only the last block
of a finite stream has (attention mask 0 there).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset
from transformers import PreTrainedTokenizerBase

from components.data.training_data import ShardDataset

IGNORE_INDEX = -100
DIALOGUE_SOURCES = ("mmdialog",)


def document_text(meta: dict[str, Any]) -> str:
    """The text of one prepared record (its shard JSON) as a single document."""
    if "steps" in meta:
        separator = "\n" if meta.get("source") in DIALOGUE_SOURCES else " "
        return separator.join(step["text"].strip() for step in meta["steps"] if step["text"] and step["text"].strip())
    for key in ("caption", "prompt"):
        if key in meta:
            return meta[key].strip()
    raise KeyError(f"record {meta.get('id')!r} has no caption, prompt or steps: not a text record")


def decode_document(sample: dict[str, bytes]) -> str:
    """ShardDataset decoder: a WebDataset sample -> its document text (images are not decoded)."""
    return document_text(json.loads(sample["json"]))


def special_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int | None, int, int]:
    """(bos, eos, pad) ids for packing; pad falls back to eos (Llama's tokenizer has no pad token), which
    is safe because padded positions are masked out of attention and labels."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token: documents are packed as <s> ... </s>; set tokenizer.eos_token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return tokenizer.bos_token_id, tokenizer.eos_token_id, pad


def document_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """<s> tokens </s> of one document, whatever post-processor the tokenizer carries."""
    bos, eos, _ = special_ids(tokenizer)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ([bos] if bos is not None else []) + list(ids) + [eos]


def pack_documents(
    documents: Iterable[list[int]], block_size: int, pad_id: int, bos_id: int | None
) -> Iterator[dict[str, torch.Tensor]]:
    """Blocks {"input_ids", "attention_mask", "labels"}, each (block_size,) int64, from token-id documents.

    A finite input ends with one padded block holding the remainder (if any).
    """
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2 (a token and its successor), got {block_size}")
    buffer: list[int] = []
    for ids in documents:
        buffer.extend(ids)
        while len(buffer) >= block_size:
            yield _block(buffer[:block_size], block_size, pad_id, bos_id)
            del buffer[:block_size]
    if len(buffer) > 1:
        yield _block(buffer, block_size, pad_id, bos_id)


def _block(ids: list[int], block_size: int, pad_id: int, bos_id: int | None) -> dict[str, torch.Tensor]:
    input_ids = torch.full((block_size,), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(block_size, dtype=torch.long)
    input_ids[: len(ids)] = torch.tensor(ids, dtype=torch.long)
    attention_mask[: len(ids)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    if bos_id is not None:
        labels = labels.masked_fill(input_ids == bos_id, IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class PackedTextDataset(IterableDataset):
    """Packed token blocks of the documents in prepared shards, split across ranks and DataLoader workers.

    Documents stream through `ShardDataset` (shuffled with a buffer, endlessly with `repeat=True`)
    and are tokenized on the fly, so a corpus never has to fit in memory.
    """

    def __init__(
        self,
        shards: list[Path],
        tokenizer: PreTrainedTokenizerBase,
        block_size: int,
        rank: int = 0,
        world_size: int = 1,
        repeat: bool = True,
        shuffle: bool = True,
        seed: int = 0,
    ):
        self.documents = ShardDataset(shards, decode_document, rank=rank, world_size=world_size, repeat=repeat,
                                      shuffle=shuffle, seed=seed)
        self.tokenizer = tokenizer
        self.block_size = block_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        bos, _, pad = special_ids(self.tokenizer)
        documents = (document_ids(self.tokenizer, text) for text in self.documents if text)
        return pack_documents(documents, self.block_size, pad, bos)


def packed_blocks(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str], block_size: int) -> dict[str, torch.Tensor]:
    """A finite list of documents packed into stacked blocks, each (N, block_size) (a fixed evaluation set)."""
    bos, _, pad = special_ids(tokenizer)
    blocks = list(pack_documents((document_ids(tokenizer, t) for t in texts if t), block_size, pad, bos))
    if not blocks:
        raise ValueError("no text to pack: the documents are empty")
    return {key: torch.stack([b[key] for b in blocks]) for key in blocks[0]}
