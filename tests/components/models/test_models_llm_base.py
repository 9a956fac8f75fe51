"""llm_base: the tiny Llama learns (memorises a few sentences), continues text, packs documents, loads by path."""

import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer
from typer.testing import CliRunner

from components.config import load_config
from components.data.text_corpus import IGNORE_INDEX, document_text, pack_documents, packed_blocks
from components.data.tokenizer import TokenizerConfig, train_bpe_tokenizer
from components.models.llm_base import LlmBase, LlmBaseConfig
from orchestration.cli import app

TINY = Path(__file__).resolve().parents[3] / "training_jobs" / "configs" / "models" / "llm_base" / "tiny.yaml"
SENTENCES = [
    "a small red circle sits at the top left of a light blue background.",
    "two green squares stand side by side in the center of a white field.",
    "then the yellow triangle on the right turned from yellow to purple.",
    "here is my drawing. can you add a small orange star at the bottom?",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    train_bpe_tokenizer(SENTENCES * 10, TokenizerConfig(vocab_size=300, min_frequency=1), folder)
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def memorised(tokenizer):
    """The tiny profile's model trained on four sentences until it knows them by heart.

    One sentence per row, padded (so each starts at position 0, as a prompt does, and the padding
    path of the loss runs too)."""
    torch.manual_seed(0)
    llm = LlmBase.from_config(load_config(LlmBaseConfig, TINY), tokenizer)
    rows = [packed_blocks(tokenizer, [sentence], block_size=48) for sentence in SENTENCES]
    batch = {key: torch.cat([row[key] for row in rows]) for key in rows[0]}
    assert batch["input_ids"].shape[0] == len(SENTENCES) and not batch["attention_mask"].all()
    optimizer = torch.optim.AdamW(llm.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        out = llm(batch["input_ids"], batch["attention_mask"], batch["labels"])
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(out["loss"].detach()))
    return llm.eval(), batch, losses


def test_tiny_llm_overfits_a_few_sentences(memorised, tokenizer):
    _, batch, losses = memorised
    # The yardsticks: a uniform guess costs ln(vocab) nats per token, and no model that ignores the
    # context can beat the entropy of these sentences' own token frequencies (the best unigram model).
    targets = batch["labels"][:, 1:]
    counts = Counter(targets[targets != IGNORE_INDEX].tolist())
    total = sum(counts.values())
    unigram_entropy = -sum(c / total * math.log(c / total) for c in counts.values())
    # random init starts at a uniform guess: logits of std s cost ln(V) + s^2 / 2 nats on average, so abs 0.5
    # allows s up to 1 (a small-std init gives s << 1), not a model that already knows the sentences
    assert losses[0] == pytest.approx(math.log(len(tokenizer)), abs=0.5)
    assert unigram_entropy > 3.0
    # Below 0.3 nats the model puts ~75% on the right next token on average: it must use the context
    # (a tenth of the unigram bound), i.e. it has learnt the sentences themselves.
    assert losses[-1] < 0.3


def test_greedy_decoding_continues_a_memorised_sentence(memorised):
    llm, _, _ = memorised
    continuations = llm.generate(["a small red circle", "two green squares"], max_new_tokens=12)
    assert continuations[0].startswith("sits at the top")
    assert continuations[1].startswith("stand side by side")


def test_genops_sample_prints_the_continuation(memorised, tmp_path):
    llm, _, _ = memorised
    folder = llm.save_pretrained(tmp_path / "llm")
    runner = CliRunner()
    result = runner.invoke(app, ["sample", "llm_base", "--weights", str(folder), "--prompt", "then the yellow triangle",
                                 "--max-new-tokens", "12"])
    assert result.exit_code == 0, result.output
    assert "then the yellow triangle >>> on the right turned" in result.output
    sampled = ["sample", "llm_base", "--weights", str(folder), "--prompt", "a small", "--temperature", "1.5",
               "--seed", "3", "--max-new-tokens", "12"]
    first, second = runner.invoke(app, sampled), runner.invoke(app, sampled)
    assert first.exit_code == 0 and second.exit_code == 0

    def continuation(output: str) -> str:
        return next(line for line in output.splitlines() if " >>> " in line)

    assert continuation(first.output) == continuation(second.output)  # a seed fixes a sampled continuation
    assert "temperature 1.5" in first.output


def test_packing_masks_padding_and_document_starts():
    blocks = list(pack_documents([[1, 10, 11, 12, 2], [1, 20, 2]], block_size=3, pad_id=0, bos_id=1))
    assert [b["input_ids"].tolist() for b in blocks] == [[1, 10, 11], [12, 2, 1], [20, 2, 0]]
    # nothing predicts the <s> of an unrelated document, nor padding; padding is masked out of attention
    assert [b["labels"].tolist() for b in blocks] == [[-100, 10, 11], [12, 2, -100], [20, 2, -100]]
    assert [b["attention_mask"].tolist() for b in blocks] == [[1, 1, 1], [1, 1, 1], [1, 1, 0]]
    # a one-token remainder is dropped: the first token of a block is never a target
    assert len(list(pack_documents([[1, 10, 2]], block_size=2, pad_id=0, bos_id=1))) == 1


def test_a_story_is_one_narrative_and_a_dialogue_one_turn_per_line():
    story = {"kind": "story", "source": "vist", "steps": [{"text": "a red circle."}, {"text": ""}, {"text": "it grew."}]}
    dialogue = {"kind": "story", "source": "mmdialog", "steps": [{"text": "draw a cat"}, {"text": "done!"}]}
    assert document_text(story) == "a red circle. it grew."
    assert document_text(dialogue) == "draw a cat\ndone!"
    assert document_text({"kind": "pair", "caption": " a blue square "}) == "a blue square"


def test_pretrained_path_loads_the_weights_and_checks_the_architecture(tokenizer, tmp_path):
    torch.manual_seed(1)
    cfg = load_config(LlmBaseConfig, TINY)
    original = LlmBase.from_config(cfg, tokenizer)
    folder = original.save_pretrained(tmp_path / "checkpoint")  # stands in for a local Llama-2 folder
    loaded = LlmBase.from_config(load_config(LlmBaseConfig, TINY, [f"pretrained_path={folder}"]), tokenizer)
    for name, weight in original.model.state_dict().items():
        assert torch.equal(weight, loaded.model.state_dict()[name]), name
    with pytest.raises(ValueError, match="hidden_size=32 but the config says model.hidden_size=64"):
        LlmBase.from_config(load_config(LlmBaseConfig, TINY, [f"pretrained_path={folder}", "hidden_size=64"]), tokenizer)
    other = AutoTokenizer.from_pretrained(folder)
    other.add_tokens(["<extra>"])
    with pytest.raises(ValueError, match="needs its own tokenizer"):
        LlmBase.from_config(load_config(LlmBaseConfig, TINY, [f"pretrained_path={folder}"]), other)
    with pytest.raises(FileNotFoundError, match="config.json"):
        LlmBase.from_config(load_config(LlmBaseConfig, TINY, [f"pretrained_path={tmp_path}"]), tokenizer)
