"""`genops data ...`: generate the synthetic world, validate/ingest corpora, prepare shards, train the tokenizer.

These are the commands the DVC stages run (see dvc.yaml), and what a user runs on a real corpus.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import typer

app = typer.Typer(help="Data platform: synthetic world, validation and quarantine, shards, tokenizer.", no_args_is_help=True)

# Progress bars redraw at most every 0.1 s on a terminal, every 5 s into a log file (DVC, Dagster).
_REFRESH = 0.1 if sys.stderr.isatty() else 5.0
PARAMS_HELP = "Data pipeline config (values for components.data.pipeline_config.DataConfig)."


class Engine(str, Enum):
    local = "local"
    ray = "ray"


def _config(params: Path, overrides: list[str] | None):
    from components.config import load_config
    from components.data.pipeline_config import DataConfig

    return load_config(DataConfig, params, overrides or [])


def _engine(engine: Engine):
    if engine is Engine.ray:
        from training_jobs.ray_validation import ray_engine

        return ray_engine()
    from components.data.validation import validate_locally

    return validate_locally


def _print_validation(summary, console) -> None:
    from rich.table import Table

    table = Table(title=f"{summary.dataset}: validation", show_header=True)
    table.add_column("records")
    table.add_column("count", justify="right")
    table.add_row("read", str(summary.read))
    table.add_row("kept", str(summary.kept))
    table.add_row("quarantined", str(summary.quarantined))
    for reason, n in summary.reasons.items():
        table.add_row(f"  {reason}", str(n))
    table.add_row("normalised (kept)", str(summary.normalised))
    for code, n in summary.normalisations.items():
        boxes = f" ({summary.clipped_boxes} boxes)" if code == "clipped_ocr_box" else ""
        table.add_row(f"  {code}", f"{n}{boxes}")
    console.print(table)


def _print_prepare(summary, console) -> None:
    from rich.table import Table

    table = Table(title=f"{summary.dataset}: prepared (ParaDiffusion Table 1 columns)")
    for col in ("split", "number", "short side", "avg words", "avg nouns", "shards"):
        table.add_column(col, justify="right" if col != "split" else "left")
    rows = dict(summary.stats["splits"])
    rows["all"] = summary.stats["all"]
    for split, row in rows.items():
        table.add_row(
            split, str(row["count"]), str(row["avg_short_side"]), str(row["avg_words"]), str(row["avg_nouns"]),
            str(summary.shards.get(split, "")),
        )
    console.print(table)


@app.command()
def generate(
    out: Path = typer.Option(Path("data/raw"), help="Folder to write the synthetic world into."),
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides of the `world` section, e.g. seed=3"),
) -> None:
    """Generate the synthetic world: every dataset in its real public format, with ground truth beside it."""
    from collections import Counter

    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    from components.data.synthetic import generate_world

    cfg = _config(params, [f"world.{o}" for o in overrides or []])
    bars: dict[str, tqdm] = {}

    def progress(dataset: str, done: int, total: int) -> None:
        bar = bars.get(dataset)
        if bar is None:
            bar = bars[dataset] = tqdm(total=total, desc=dataset, unit="sample", leave=False, mininterval=_REFRESH)
        bar.update(done - bar.n)

    summary = generate_world(cfg.world, out, progress=progress)
    for bar in bars.values():
        bar.close()
    faults = Counter(f.dataset for f in summary.injected_faults)
    table = Table(title=f"synthetic world, seed {summary.seed}")
    for col in ("dataset", "format", "records", "images", "injected faults"):
        table.add_column(col, justify="left" if col in ("dataset", "format") else "right")
    for name, dataset in summary.datasets.items():
        table.add_row(name, dataset.format, str(dataset.records), str(dataset.images), str(faults.get(name, 0)))
    console = Console()
    console.print(table)
    console.print(f"{summary.records} records in {summary.seconds:.0f}s -> {out} (manifest: {summary.manifest_path})")


@app.command()
def validate(
    dataset: str = typer.Option(..., help="Dataset name (a key of `datasets` in the params file)."),
    src: Path = typer.Option(..., help="The corpus: a file or folder in the dataset's format."),
    out: Path = typer.Option(..., help="Folder for records.jsonl, quarantine.jsonl and validation.json."),
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
    engine: Engine = typer.Option(Engine.local, help="local: in-process; ray: a Ray Data pipeline."),
) -> None:
    """Validate a corpus: keep good records, quarantine bad ones with a reason (DVC stage `validate`)."""
    from rich.console import Console

    cfg = _config(params, [])
    summary = _run_validation(dataset, cfg.spec(dataset).format, src, out, cfg.validation_for(dataset), engine)
    _print_validation(summary, Console())
    typer.echo(f"kept records: {out / 'records.jsonl'}\nquarantine:   {out / 'quarantine.jsonl'}")


def _run_validation(dataset, fmt, src, out, vcfg, engine):
    from tqdm import tqdm

    from components.data.formats import read_corpus
    from components.data.prepare import validate_corpus
    from components.data.validation import DataQualityError

    with tqdm(desc=f"validating {dataset}", unit="record", mininterval=_REFRESH) as bar:
        try:
            return validate_corpus(
                read_corpus(fmt, src), out, dataset=dataset, fmt=fmt, source=src, cfg=vcfg,
                engine=_engine(engine), progress=lambda n: bar.update(n - bar.n),
            )
        except DataQualityError as exc:
            bar.close()
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=1) from exc
        except (FileNotFoundError, ValueError) as exc:
            bar.close()
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from exc


@app.command()
def prepare(
    dataset: str = typer.Option(..., help="Dataset name (a key of `datasets` in the params file)."),
    src: Path = typer.Option(..., help="The validated dataset folder (output of `genops data validate`)."),
    out: Path = typer.Option(..., help="Folder for split shards, stats.json and manifest.json."),
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
) -> None:
    """Split, shard and describe a validated dataset (DVC stage `prepare`)."""
    from rich.console import Console

    from components.data.prepare import prepare_dataset

    cfg = _config(params, [])
    summary = prepare_dataset(
        src, out, dataset=dataset, split_cfg=cfg.split_for(dataset), shard_cfg=cfg.shards
    )
    _print_prepare(summary, Console())
    typer.echo(f"prepared dataset: {out} (manifest.json, stats.json)")


FORMAT_HELP = "cc3m, vist, vist-sis, mmdialog, paraprompts, paraimage, mario, mario-eval, laion-parquet"


@app.command()
def ingest(
    format: str = typer.Option(..., "--format", help=f"Corpus format: {FORMAT_HELP}."),
    src: Path = typer.Option(..., help="The corpus on disk (file or folder, as the format expects)."),
    out: Path = typer.Option(..., help="Folder for the prepared dataset, its quarantine file and statistics."),
    name: str | None = typer.Option(None, help="Dataset name recorded in the outputs (default: the folder name of --out)."),
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP + " Its validation/split/shards sections apply."),
    engine: Engine = typer.Option(Engine.local, help="local: in-process; ray: a Ray Data pipeline."),
    max_bad_fraction: float | None = typer.Option(None, help="Override validation.max_bad_fraction."),
    min_short_edge: int | None = typer.Option(None, help="Override validation.min_short_edge (pixels)."),
) -> None:
    """Validate and prepare a real corpus on disk: prepared shards, quarantine file and statistics."""
    from rich.console import Console

    from components.config import from_dict, to_dict
    from components.data.formats import FORMATS
    from components.data.prepare import prepare_dataset
    from components.data.validation import ValidationConfig

    if format not in FORMATS:
        typer.secho(f"error: --format {format!r} is not one of {sorted(FORMATS)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    cfg = _config(params, []) if params.is_file() else None
    values = to_dict(cfg.validation) if cfg else {}
    if format == "mario-eval":
        values["require_quoted_words"] = True
    if max_bad_fraction is not None:
        values["max_bad_fraction"] = max_bad_fraction
    if min_short_edge is not None:
        values["min_short_edge"] = min_short_edge
    vcfg = from_dict(ValidationConfig, values, where="ingest options")
    dataset = name or out.name
    console = Console()
    summary = _run_validation(dataset, format, src, out, vcfg, engine)
    _print_validation(summary, console)
    from components.data.prepare import ShardConfig, SplitConfig

    prepared = prepare_dataset(
        out, out, dataset=dataset,
        split_cfg=cfg.split if cfg else SplitConfig(), shard_cfg=cfg.shards if cfg else ShardConfig(),
    )
    _print_prepare(prepared, console)
    console.print(
        f"[bold]{dataset}[/]: {summary.kept} records kept, {summary.quarantined} quarantined "
        f"({out / 'quarantine.jsonl'}), {summary.normalised} of the kept normalised; prepared dataset in {out}"
    )


@app.command()
def tokenizer(
    src: Path = typer.Option(Path("data/prepared"), help="Root of the prepared datasets."),
    out: Path = typer.Option(Path("data/tokenizer"), help="Folder to save the tokenizer in (HF format)."),
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
) -> None:
    """Train the BPE tokenizer on the prepared train splits (DVC stage `tokenizer`)."""
    from components.data.shards import split_texts
    from components.data.tokenizer import train_bpe_tokenizer

    cfg = _config(params, [])
    if cfg.tokenizer.pretrained_path:
        typer.secho(
            f"tokenizer.pretrained_path is set ({cfg.tokenizer.pretrained_path}): nothing to train", fg=typer.colors.YELLOW
        )
        raise typer.Exit(code=0)
    datasets = [name for name, spec in cfg.datasets.items() if spec.tokenizer_corpus]
    texts = [text for name in datasets for text in split_texts(src / name, "train")]
    train_bpe_tokenizer(texts, cfg.tokenizer, out)
    typer.echo(f"tokenizer trained on {len(texts)} texts from {len(datasets)} datasets, saved to {out}")
