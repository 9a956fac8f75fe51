"""Fixtures for the metrics tests: tiny real CLIP models with their own tokenizers.

Nothing can be downloaded, so the CLIP model is a randomly initialised transformers `CLIPModel`
saved with `save_pretrained`, beside a byte-level BPE tokenizer trained here and a
`CLIPImageProcessor` config; the code under test loads the folder by path like a real checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

CORPUS = [
    "A photo depicts a small red circle at the top left.",
    "A large blue square in the center and a green triangle at the bottom right.",
    "A purple diamond on the left, a yellow circle on the right, an orange square at the top.",
    "A sign that says 'hello world' on a white wall.",
    "The cat sat on the mat while the dog slept by the door.",
    "apple garden river stone yellow window market silver planet forest candle pocket bridge horse",
]


def build_tiny_clip(folder: Path, seed: int = 0, genops_layout: bool = False) -> Path:
    """Save a random 2-layer CLIPModel (32 px images, 16-d projection) with its tokenizer.

    Default: a hub-style folder (a tokenizer that adds <bos>/<eos> itself, preprocessor_config.json).
    `genops_layout`: what `components/models/clip_evaluator.py` writes: special tokens <pad> <bos>
    <eos> (so <eos> is id 2), no post-processor, no preprocessor config, genops_clip_evaluator.json.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    if genops_layout:
        pad, bos, eos = "<pad>", "<bos>", "<eos>"
        specials = [pad, bos, eos]
    else:
        bos, eos = "<|startoftext|>", "<|endoftext|>"
        pad, specials = eos, [bos, eos]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    bos_id, eos_id, pad_id = tok.token_to_id(bos), tok.token_to_id(eos), tok.token_to_id(pad)
    if not genops_layout:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}", special_tokens=[(bos, bos_id), (eos, eos_id)]
        )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad)
    tokenizer.save_pretrained(folder)

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=tok.get_vocab_size(),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=64,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    if genops_layout:
        (folder / "genops_clip_evaluator.json").write_text("{}\n")
    else:
        processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="session")
def genops_clip_dir(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "genops-clip", seed=1, genops_layout=True)
