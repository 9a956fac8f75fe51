"""Recipe: the language backbone (`llm_base`), a Llama-architecture causal LM on all of the world's text.

    genops train llm_base --profile demo
    genops train llm_base --profile paper model.pretrained_path=/models/Llama-2-7b-hf data.tokenizer=/models/Llama-2-7b-hf

Next-token prediction on the `train` split of every prepared text corpus: short captions
(laion_short, cc3m), ParaImage paragraphs (paraimage_big, paraimage_small), VIST stories and
MMDialog conversations, one document per record, packed into blocks of `data.block_size` tokens
(`components/data/text_corpus.py`). The benchmark prompt sets (paraprompts, mario_eval) are never
trained on. At the end, held-out perplexity and next-token accuracy on the `val` split (overall
and per corpus, beside the perplexity of a unigram model fitted to the same val tokens: the best
any model that ignores context can do) and greedy continuations of val prompts are logged.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from components.config import from_dict
from components.data.text_corpus import IGNORE_INDEX, PackedTextDataset, decode_document, packed_blocks
from components.data.training_data import seed_worker
from components.models.llm_base import LlmBase, LlmBaseConfig
from training_jobs.data_loading import first_samples, shard_paths
from training_jobs.launcher import RunSection, ScalingSection
from training_jobs.loop import TrainConfig, evaluation_weights, export_state_dict, infinite, seed_everything
from training_jobs.tracking import TrackingConfig
from training_jobs.worker import report, run_steps, start_training, worker_context

MODEL_CONFIG = "llm_base"


@dataclass
class DataSection:
    prepared_root: str = "data/prepared"
    """Root of the prepared datasets (DVC outputs)."""
    datasets: list[str] = field(
        default_factory=lambda: ["laion_short", "cc3m", "paraimage_big", "paraimage_small", "vist", "mmdialog"]
    )
    """Prepared text corpora whose train split the model learns (captions, paragraphs, stories, dialogues)."""
    tokenizer: str = "data/tokenizer"
    """Tokenizer folder (Hugging Face format); with model.pretrained_path, the checkpoint's own tokenizer."""
    block_size: int = 64
    """Tokens per packed training sequence; at most model.max_position_embeddings."""
    val_documents: int = 64
    """Validation documents per corpus for held-out perplexity and next-token accuracy."""
    eval_batch_size: int = 32
    """Blocks per forward pass when evaluating."""
    prompt_words: int = 5
    """Words of each corpus's first val document used as a prompt for the logged continuations."""
    max_new_tokens: int = 40
    """Tokens generated (greedily) per logged continuation."""


@dataclass
class Config:
    model: LlmBaseConfig = field(default_factory=LlmBaseConfig)
    """Llama architecture (or a pretrained folder)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Shared training-loop settings."""
    data: DataSection = field(default_factory=DataSection)
    """Which prepared corpora and tokenizer the job uses, and how sequences are built."""
    scaling: ScalingSection = field(default_factory=ScalingSection)
    """Ray Train workers and resources."""
    run: RunSection = field(default_factory=RunSection)
    """Run name (resume key) and storage."""
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(experiment="genops-base-models", registered_model="genops-llm-base")
    )
    """MLflow experiment, registry name and lineage."""


def datasets(cfg: Config) -> list[str]:
    return list(cfg.data.datasets)


def pyfunc_model():
    from training_jobs.pyfunc_models import TextGenerationModel

    return TextGenerationModel()


def train(config: dict) -> None:
    cfg = from_dict(Config, config)
    ctx = worker_context(cfg.tracking, cfg.run.storage_path, cfg.run.name)
    if cfg.data.block_size > cfg.model.max_position_embeddings:
        raise ValueError(
            f"data.block_size={cfg.data.block_size} exceeds model.max_position_embeddings={cfg.model.max_position_embeddings}"
        )

    # setup
    tokenizer = AutoTokenizer.from_pretrained(cfg.data.tokenizer)
    seed_everything(cfg.train.seed)
    run = start_training(ctx, LlmBase.from_config(cfg.model, tokenizer), cfg.train)
    model, ema = run.model, run.ema
    root = Path(cfg.data.prepared_root)
    blocks = PackedTextDataset(shard_paths(root, cfg.data.datasets, "train"), tokenizer, cfg.data.block_size,
                               rank=ctx.rank, world_size=ctx.world_size, seed=cfg.train.seed + run.start)
    workers = cfg.train.dataloader_workers
    batches = infinite(DataLoader(blocks, batch_size=cfg.train.batch_size, num_workers=workers,
                                  worker_init_fn=seed_worker if workers else None, persistent_workers=workers > 0))
    val_texts = {name: first_samples(shard_paths(root, [name], "val"), decode_document, cfg.data.val_documents)
                 for name in cfg.data.datasets}
    prompts = [" ".join(texts[0].split()[: cfg.data.prompt_words]) for texts in val_texts.values() if texts]

    def compute_losses(batch) -> dict[str, torch.Tensor]:
        out = model(batch["input_ids"].to(ctx.device), batch["attention_mask"].to(ctx.device),
                    batch["labels"].to(ctx.device))
        return {"loss": out["loss"], "accuracy": out["accuracy"]}

    def save_final(path: Path) -> None:
        run.save(path, cfg.train.steps)
        final = LlmBase.from_config(cfg.model, tokenizer)
        final.load_state_dict(export_state_dict(model, ema))
        final.save_pretrained(path / "export")

    # train
    run_steps(ctx, run, batches, compute_losses, cfg.train,
              on_sample=lambda step: _log_continuations(model, ema, prompts, cfg.data.max_new_tokens, ctx, step))

    # save: held-out perplexity and next-token accuracy with the final (EMA) weights, continuations, the export
    final_metrics: dict[str, float] = {"step": cfg.train.steps}
    if ctx.is_main:
        val_blocks = {name: packed_blocks(tokenizer, texts, cfg.data.block_size) for name, texts in val_texts.items()}
        with evaluation_weights(model, ema) as module:
            module.eval()
            final_metrics.update(held_out_metrics(module, val_blocks, cfg.data.eval_batch_size, ctx.device))
        ctx.log.metrics(final_metrics, cfg.train.steps)
        _log_continuations(model, ema, prompts, cfg.data.max_new_tokens, ctx, cfg.train.steps)
    report(ctx, final_metrics, save_final)


@torch.no_grad()
def held_out_metrics(
    module: LlmBase, val_blocks: dict[str, dict[str, torch.Tensor]], batch_size: int, device: torch.device
) -> dict[str, float]:
    """Perplexity exp(sum NLL / predicted tokens) and next-token accuracy, overall and per corpus, plus
    the perplexity of a unigram model fitted to the same val tokens (what context buys)."""
    metrics: dict[str, float] = {}
    total = {"nll_sum": 0.0, "correct": 0.0, "tokens": 0.0}
    counts: Counter[int] = Counter()
    for name, blocks in val_blocks.items():
        sums = {"nll_sum": 0.0, "correct": 0.0, "tokens": 0.0}
        for start in range(0, blocks["input_ids"].shape[0], batch_size):
            part = {k: v[start : start + batch_size].to(device) for k, v in blocks.items()}
            out = module(part["input_ids"], part["attention_mask"], part["labels"])
            for key in sums:
                sums[key] += float(out[key])
        targets = blocks["labels"][:, 1:]
        counts.update(targets[targets != IGNORE_INDEX].tolist())
        metrics[f"val/perplexity/{name}"] = math.exp(sums["nll_sum"] / sums["tokens"])
        for key in total:
            total[key] += sums[key]
    n = sum(counts.values())
    unigram_entropy = -sum(c / n * math.log(c / n) for c in counts.values())
    metrics.update({
        "val/loss": total["nll_sum"] / total["tokens"],
        "val/perplexity": math.exp(total["nll_sum"] / total["tokens"]),
        "val/next_token_accuracy": total["correct"] / total["tokens"],
        "val/unigram_perplexity": math.exp(unigram_entropy),
        "val/tokens": total["tokens"],
    })
    return metrics


@torch.no_grad()
def _log_continuations(model, ema, prompts: list[str], max_new_tokens: int, ctx, step: int) -> None:
    """Greedy continuations of fixed val prompts (the same every time, so they compare across steps)."""
    with evaluation_weights(model, ema) as module:
        continuations = module.generate(prompts, max_new_tokens=max_new_tokens)
    lines = [f"{prompt} >>> {continuation}" for prompt, continuation in zip(prompts, continuations)]
    ctx.log.text("\n".join(lines) + "\n", f"samples/continuations_step{step:06d}.txt")
