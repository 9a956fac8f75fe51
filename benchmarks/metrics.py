"""Throughput of the evaluation metrics on this machine: images per second, and what FID-30K would take.

Measured on the synthetic world's own images (256 px text-rich images, 64 px scenes), through the
same code the `genops metrics` commands run:

- FID features: the FID Inception-v3 at 299 px (random init: the speed does not depend on the
  weights), batch 1 vs batch 16; and a small CLIP image tower as the alternative extractor;
- CLIP score: image + prefixed-prompt + plain-prompt embeddings with a small random CLIPModel;
- OCR: RapidOCR PP-OCRv4 with its defaults (upscales the detector input to 736 px) vs
  det_limit_type="max" (no upscaling below 960 px);
- text faithfulness: the analytic scene detector at 64 px.

    .venv/bin/python benchmarks/metrics.py
    .venv/bin/python benchmarks/metrics.py --images 64 --ocr-images 32
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from machine_load import start_watch

from components.data.scene import render_scene, sample_scene
from components.data.synthetic.textrich import render_textrich, sample_layout, textrich_caption
from components.metrics.clip_score import ClipEmbedder, clip_scores
from components.metrics.faithfulness import NamedObject, text_faithfulness
from components.metrics.fid import ClipImageExtractor, InceptionExtractor, compute_statistics
from components.metrics.ocr import OcrEngine, ocr_metrics


def small_clip(folder: Path) -> Path:
    """A random CLIPModel of ViT-B/32 layout but 4 layers x 256 wide, 224 px, with a BPE tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, PreTrainedTokenizerFast

    bos, eos = "<|startoftext|>", "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    rng = random.Random(0)
    corpus = [textrich_caption(sample_layout(rng, 256), rng) for _ in range(200)]
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=[bos, eos], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    bos_id, eos_id = tok.token_to_id(bos), tok.token_to_id(eos)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, bos_id), (eos, eos_id)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos
    ).save_pretrained(folder)
    text = {
        "vocab_size": tok.get_vocab_size(),
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
    }
    vision = {
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "image_size": 224,
        "patch_size": 32,
    }
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=256)).save_pretrained(folder)
    CLIPImageProcessorPil(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    ).save_pretrained(folder)
    return folder


def matmul_peak_gflops(size: int = 1024, repeats: int = 10) -> float:
    """The machine's measured fp32 matmul throughput (best of `repeats` size x size products) at the
    thread count torch uses here: the ceiling the GFLOP/s column is compared against."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def flops_per_image(run: Callable[[], object], count: int) -> float:
    """Floating-point operations per image of `run` over `count` images, counted by torch's
    FlopCounterMode (matmuls and convolutions: the work a matmul peak bounds)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() / count


def timed(run: Callable[[], object], count: int) -> tuple[float, float]:
    """(seconds, images per second) of one call of `run` over `count` images."""
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    return seconds, count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--images", type=int, default=32, help="Images per FID / CLIP / faithfulness measurement."
    )
    parser.add_argument("--ocr-images", type=int, default=16, help="Images per OCR measurement.")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is local; never reach the hub
    machine = start_watch()

    rng = random.Random(0)
    layouts = [sample_layout(rng, 256) for _ in range(max(args.images, args.ocr_images))]
    textrich = [render_textrich(layout).image for layout in layouts]
    prompts = [textrich_caption(layout, rng) for layout in layouts]
    scenes = [sample_scene(rng) for _ in range(args.images)]
    scene_images = [render_scene(s, 64) for s in scenes]
    n, n_ocr = args.images, args.ocr_images
    warm = textrich[:2]

    rows: list[tuple[str, str, int, float, float]] = []  # (group, setting, images, seconds, img/s)
    flops: dict[str, float] = {}  # setting -> FLOPs per image (torch rows only)
    peak = matmul_peak_gflops()

    inception = InceptionExtractor()
    compute_statistics(warm, inception, batch_size=2)
    inception_flops = flops_per_image(lambda: compute_statistics(warm, inception, batch_size=2), len(warm))
    for batch in (1, 16):
        s, ips = timed(lambda b=batch: compute_statistics(textrich[:n], inception, batch_size=b), n)
        rows.append(("FID features", f"Inception-v3 pool3, 299 px, batch {batch}", n, s, ips))
        flops[rows[-1][1]] = inception_flops

    with tempfile.TemporaryDirectory() as tmp:
        clip_dir = small_clip(Path(tmp) / "small-clip")
        extractor = ClipImageExtractor(clip_dir)
        compute_statistics(warm, extractor, batch_size=2)
        s, ips = timed(lambda: compute_statistics(textrich[:n], extractor, batch_size=16), n)
        rows.append(("FID features", "CLIP image tower (4x256, 224 px, /32), batch 16", n, s, ips))
        flops[rows[-1][1]] = flops_per_image(lambda: compute_statistics(warm, extractor, batch_size=2), len(warm))

        embedder = ClipEmbedder(clip_dir)
        clip_scores(embedder, warm, prompts[:2])
        s, ips = timed(lambda: clip_scores(embedder, textrich[:n], prompts[:n], batch_size=16), n)
        rows.append(("CLIP score", "image + 2 prompt embeddings, batch 16", n, s, ips))
        flops[rows[-1][1]] = flops_per_image(lambda: clip_scores(embedder, warm, prompts[:2]), len(warm))

    for setting, engine in (
        ("RapidOCR defaults (det upscales to 736 px)", OcrEngine()),
        ("det_limit_type=max (no upscaling)", OcrEngine(det_limit_type="max")),
    ):
        ocr_metrics(engine, warm, prompts[:2])
        s, ips = timed(lambda e=engine: ocr_metrics(e, textrich[:n_ocr], prompts[:n_ocr]), n_ocr)
        rows.append(("OCR (MARIO-Eval)", f"{setting}, 256 px", n_ocr, s, ips))
        providers = ", ".join(engine.providers)

    named = [[NamedObject.from_scene_object(o) for o in s.objects] for s in scenes]
    s, ips = timed(lambda: text_faithfulness(scene_images, named), n)
    rows.append(("Text faithfulness", "analytic detector, 64 px scenes", n, s, ips))

    machine.report()
    print(
        f"\nMetric throughput on this machine ({os.cpu_count()} CPUs, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, OCR on onnxruntime {providers})\n"
    )
    width = max(len(r[1]) for r in rows)
    print(f"Measured fp32 matmul peak (1024x1024 torch.mm, {torch.get_num_threads()} threads): {peak:.1f} GFLOP/s\n")
    header = (f"{'metric':<18} {'setting':<{width}} {'images':>6} {'seconds':>8} {'img/s':>8} {'vs first':>8} "
              f"{'30k imgs':>11} {'GFLOP/s':>8} {'of peak':>7}")
    print(header)
    print("-" * len(header))
    first: dict[str, float] = {}
    for group, setting, count, seconds, ips in rows:
        base = first.setdefault(group, ips)
        minutes = 30_000 / ips / 60
        if setting in flops:
            achieved = flops[setting] * ips / 1e9
            compute = f"{achieved:>8.1f} {100 * achieved / peak:>6.0f}%"
        else:
            compute = f"{'n/a':>8} {'':>7}"
        print(
            f"{group:<18} {setting:<{width}} {count:>6} {seconds:>8.2f} {ips:>8.2f} {ips / base:>7.2f}x {minutes:>7.0f} min"
            f" {compute}"
        )
    print("\n'vs first': throughput relative to the first row of the same metric; '30k imgs': FID-30K scale;"
          "\n'GFLOP/s': FLOPs per image (torch FlopCounterMode: matmuls and convolutions) x img/s, 'of peak' against the"
          "\nmeasured matmul peak above; n/a where the work is not torch (OCR runs in onnxruntime, the detector in numpy).")


if __name__ == "__main__":
    main()
