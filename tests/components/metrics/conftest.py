"""Fixtures for the metrics tests: a tiny real CLIP model with its own tokenizer, and readable words.

Nothing can be downloaded, so the CLIP model is a randomly initialised transformers `CLIPModel`
saved with `save_pretrained`, beside a byte-level BPE tokenizer trained here and a
`CLIPImageProcessor` config; the code under test loads the folder by path like a real checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Readable English words of 3-8 letters for rendered-text images.
WORDS = [
    "apple",
    "garden",
    "river",
    "stone",
    "yellow",
    "window",
    "market",
    "silver",
    "planet",
    "forest",
    "candle",
    "pocket",
    "bridge",
    "horse",
    "cloud",
    "music",
    "orange",
    "paper",
    "dream",
    "light",
    "mountain",
    "coffee",
    "winter",
    "summer",
    "castle",
    "dragon",
    "rocket",
    "tiger",
    "ocean",
    "forest",
    "basket",
    "pencil",
    "camera",
    "flower",
    "butter",
    "jacket",
    "ladder",
    "monkey",
    "needle",
    "rabbit",
    "violin",
    "wizard",
]

CORPUS = [
    "A photo depicts a small red circle at the top left.",
    "A large blue square in the center and a green triangle at the bottom right.",
    "A purple diamond on the left, a yellow circle on the right, an orange square at the top.",
    "A sign that says 'hello world' on a white wall.",
    "The cat sat on the mat while the dog slept by the door.",
    " ".join(WORDS),
]


def build_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """Save a random 2-layer CLIPModel (32 px images, 16-d projection) with tokenizer and processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[bos, eos], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    bos_id, eos_id = tok.token_to_id(bos), tok.token_to_id(eos)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, bos_id), (eos, eos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos)
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
            pad_token_id=eos_id,
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
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    return folder


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")
