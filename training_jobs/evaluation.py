"""Evaluation of registered models on versioned benchmark sets, logged to the model version's run.

Each model family joins with one `EvaluationSpec` (`register_evaluation`): which registered model,
which benchmark set it is scored on (built from a prepared dataset's held-out split), the function
that scores one model folder on it (samples with fixed seeds, every metric the family's paper
reports, a ceiling and a floor row), and the columns of its paper-shaped comparison table. The
Dagster `evaluation` group builds its assets from these specs (orchestration/assets/evaluation.py);
`run_evaluation` works the same without Dagster.

The benchmark set is one JSONL file (`data/benchmarks/<family>.jsonl`: prompt, ground-truth image
as base64 PNG when the family has one, ground truth) whose md5 is what `dvc add` would record for it; the md5 and the
source dataset's DVC version go on the evaluation run and the version's tags.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from components.fileio import atomic_write_jsonl
from components.metrics.comparison import Column, Row, comparison_html, comparison_markdown

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchmarkRow:
    """One benchmark item: its id, prompt (or held-out text), ground-truth image (None for text-only
    benchmarks) and ground truth (scene, quoted words, story steps, ...)."""

    id: str
    prompt: str
    image: Image.Image | None
    groundtruth: dict | None


@dataclass
class EvaluationOutcome:
    """What a family's scorer returns for one model."""

    metrics: dict[str, float]
    """Headline metrics of the model (the policy's gates and primary metric read these)."""
    samples: list[dict[str, Any]]
    """Per-sample rows: prompt, each metric; `image` (PIL) is logged as a file and replaced by its path."""
    grid: Image.Image | None
    """A grid of the first samples (fixed seeds), logged beside the table (None: nothing is drawn)."""
    baselines: list[Row] = field(default_factory=list)
    """Ceiling / floor rows measured with the same metrics on the same benchmark."""
    facts: dict[str, str] = field(default_factory=dict)
    """Non-numeric facts to record (extractor names, sampling settings)."""


@dataclass(frozen=True)
class EvaluationSpec:
    """How one model family is evaluated; `register_evaluation(spec)` makes its Dagster assets."""

    family: str
    """Asset-name prefix and benchmark name (e.g. sd_base -> sd_base_benchmark, sd_base_evaluation)."""
    registered_model: str
    """Registry name of the model evaluated (its policy is mlflow/policies/<registered_model>.yaml)."""
    training_asset: str
    """The Dagster asset that trains and registers it (its metadata names the registered version)."""
    benchmark_dataset: str
    """Prepared dataset the benchmark is drawn from."""
    benchmark_split: str
    """Split of that dataset the benchmark is drawn from (never trained on)."""
    benchmark_size: dict[str, int]
    """Benchmark items per profile (tiny / demo / paper)."""
    score: Callable[[Path, list[BenchmarkRow], dict[str, Any]], EvaluationOutcome]
    """(model folder, benchmark rows, inputs such as the evaluator CLIP folder) -> the outcome."""
    columns: tuple[Column, ...]
    """The comparison table's metric columns, in the paper's order."""
    table_title: str
    """The comparison table's caption (which paper table it follows)."""
    model_row_name: str
    """The model's row name in the table (the paper's name for it, e.g. SD)."""
    reference_split: str | None = "val"
    """Split whose ground-truth images are the FID reference set (None: the scorer needs none)."""
    uses_clip_evaluator: bool = True
    """Whether the scorer reads the evaluator CLIP (then the evaluation asset depends on `clip_evaluator`)."""
    benchmark_rows: Callable[[Path, str, str, int], list[BenchmarkRow]] | None = None
    """(prepared root, dataset, split, count) -> the benchmark rows; None: `split_samples` (captioned images)."""
    sampler_steps: dict[str, int] = field(default_factory=dict)
    """Sampler steps per profile for generative scorers (absent: the model's own default)."""


EVALUATIONS: dict[str, EvaluationSpec] = {}


def register_evaluation(spec: EvaluationSpec) -> EvaluationSpec:
    """Add a family's evaluation (its Dagster assets appear in the `evaluation` group)."""
    if spec.family in EVALUATIONS and EVALUATIONS[spec.family] != spec:
        raise ValueError(f"an evaluation for {spec.family!r} is already registered")
    EVALUATIONS[spec.family] = spec
    return spec


def png_b64(image: Image.Image) -> str:
    """PNG bytes of an image as base64 text (how benchmark files carry images)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def file_md5(path: Path) -> str:
    """The md5 of a file's bytes: what DVC records for a file output (`dvc add`)."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def split_samples(prepared_root: Path, dataset: str, split: str, count: int, image_size: int | None = None) -> list[BenchmarkRow]:
    """The first `count` samples of a prepared split, in shard order (the same every time)."""
    from components.data.shards import list_shards
    from components.data.training_data import ShardDataset, sample_image_bytes

    shards = list_shards(Path(prepared_root) / dataset, split)
    if not shards:
        raise FileNotFoundError(f"{prepared_root}/{dataset} has no {split!r} shards: prepare the dataset first")
    rows = []
    for sample in ShardDataset(shards, lambda s: s):
        meta = json.loads(sample["json"])
        image = Image.open(io.BytesIO(sample_image_bytes(sample))).convert("RGB")
        if image_size is not None and image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.BICUBIC)
        rows.append(BenchmarkRow(str(meta["id"]), meta["caption"], image, meta.get("groundtruth")))
        if len(rows) == count:
            break
    if len(rows) < count:
        log.warning("%s/%s has %d samples, fewer than the %d asked for", dataset, split, len(rows), count)
    return rows


def build_benchmark(spec: EvaluationSpec, prepared_root: Path, out: Path, profile: str) -> tuple[Path, str, int]:
    """Write the family's benchmark set (JSONL) from its dataset's held-out split; (path, md5, items)."""
    if profile not in spec.benchmark_size:
        raise ValueError(f"evaluation {spec.family}: no benchmark_size for profile {profile!r} "
                         f"(has {sorted(spec.benchmark_size)})")
    read_rows = spec.benchmark_rows or split_samples
    rows = read_rows(prepared_root, spec.benchmark_dataset, spec.benchmark_split, spec.benchmark_size[profile])
    if not rows:
        raise ValueError(f"evaluation {spec.family}: {spec.benchmark_dataset}/{spec.benchmark_split} gave no benchmark rows")
    atomic_write_jsonl(out, ({"id": r.id, "prompt": r.prompt, "groundtruth": r.groundtruth,
                              **({"image_png": png_b64(r.image)} if r.image is not None else {})} for r in rows))
    return out, file_md5(out), len(rows)


def read_benchmark(path: Path) -> list[BenchmarkRow]:
    """The rows of a benchmark file written by `build_benchmark` (errors name the file and line)."""
    rows = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
        try:
            raw = json.loads(line)
            image = (Image.open(io.BytesIO(base64.b64decode(raw["image_png"]))).convert("RGB")
                     if "image_png" in raw else None)
            rows.append(BenchmarkRow(str(raw["id"]), raw["prompt"], image, raw.get("groundtruth")))
        except (KeyError, ValueError, OSError) as err:
            raise ValueError(f"{path}:{lineno}: not a benchmark row ({err})") from err
    if not rows:
        raise ValueError(f"benchmark {path} is empty")
    return rows


@dataclass(frozen=True)
class EvaluationRecord:
    """Where an evaluation went and what it found."""

    model: str
    version: str
    run_id: str
    metrics: dict[str, float]
    table_markdown: str
    rows: list[Row]
    benchmark_md5: str
    seconds: float


def resolve_version(client, reference: str) -> tuple[str, str]:
    """(name, version) of `models:/<name>/<version|latest>` or `models:/<name>@<alias>`."""
    if not reference.startswith("models:/"):
        raise ValueError(f"{reference!r} is not a registry URI models:/<name>/<version>")
    rest = reference.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = rest.partition("/")
    if version in ("", "latest"):
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise FileNotFoundError(f"{reference}: the registry has no version of {name!r}")
        version = str(max(int(v.version) for v in versions))
    return name, version


def run_evaluation(
    spec: EvaluationSpec,
    model_uri: str,
    tracking_uri: str,
    benchmark: Path,
    benchmark_facts: dict[str, str],
    inputs: dict[str, Any],
    say: Callable[[str], None] = log.info,
) -> EvaluationRecord:
    """Score a registered version on the benchmark and log everything to the version's run.

    Logged: `eval/<metric>` metrics, tags `eval.benchmark_md5` (+ `benchmark_facts`), a per-sample
    table (`evaluation/samples.json`) with each sample image, a sample grid, and the comparison
    table as markdown and HTML. The version gets `eval.<metric>` tags (what promotion reads).
    """
    import mlflow

    from training_jobs.model_inputs import resolve_model_path
    from training_jobs.registry import record_evaluation

    started = time.monotonic()
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    name, version = resolve_version(client, model_uri)
    if name != spec.registered_model:
        raise ValueError(f"evaluation {spec.family} scores {spec.registered_model}, not {name}")
    run_id = client.get_model_version(name, version).run_id
    model_dir = resolve_model_path(f"models:/{name}/{version}", tracking_uri)
    rows = read_benchmark(benchmark)
    md5 = file_md5(benchmark)
    say(f"[{spec.family}] evaluating {name} v{version} on {len(rows)} benchmark items ({benchmark.name}, md5 {md5})")
    outcome = spec.score(model_dir, rows, inputs)

    table_rows = [Row(f"{spec.model_row_name} ({name} v{version})", "model", outcome.metrics), *outcome.baselines]
    notes = (f"Benchmark {benchmark.name} (md5 {md5}, {len(rows)} items); "
             + ", ".join(f"{k} {v}" for k, v in sorted({**benchmark_facts, **outcome.facts}.items())))
    markdown = comparison_markdown(spec.table_title, spec.columns, table_rows, notes)
    client.log_batch(run_id, metrics=[mlflow.entities.Metric(f"eval/{k}", float(v), int(time.time() * 1000), 0)
                                      for k, v in outcome.metrics.items()])
    facts = {"benchmark_md5": md5, "benchmark_items": str(len(rows)), **benchmark_facts, **outcome.facts}
    for key, value in facts.items():
        client.set_tag(run_id, f"eval.{key}", value)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table = []
        for i, sample in enumerate(outcome.samples):
            sample = dict(sample)
            image = sample.pop("image", None)
            if image is not None:
                image.save(folder / f"{i:04d}.png")
                sample["image"] = f"evaluation/samples/{i:04d}.png"
            table.append(sample)
        client.log_artifacts(run_id, str(folder), "evaluation/samples")
    client.log_table(run_id, {k: [row.get(k) for row in table] for k in table[0]} if table else {}, "evaluation/samples.json")
    if outcome.grid is not None:
        client.log_image(run_id, outcome.grid, "evaluation/grid.png")
    client.log_text(run_id, markdown, "evaluation/comparison.md")
    client.log_text(run_id, comparison_html(spec.table_title, spec.columns, table_rows, notes), "evaluation/comparison.html")
    record_evaluation(client, name, version, outcome.metrics, facts)
    seconds = time.monotonic() - started
    say(f"[{spec.family}] {name} v{version}: " + ", ".join(f"{k} {v:.4g}" for k, v in outcome.metrics.items())
        + f" ({seconds:.0f}s)")
    return EvaluationRecord(name, version, run_id, outcome.metrics, markdown, table_rows, md5, seconds)


EVALUATOR = "models:/genops-clip-evaluator@champion"
"""The evaluator CLIP the scorers read unless told otherwise."""


def evaluation_specs() -> dict[str, EvaluationSpec]:
    """Every family's evaluation spec, by family (importing the modules registers them)."""
    from training_jobs import (  # noqa: F401
        base_model_evaluation,
        minigpt5_evaluation,
        paradiffusion_evaluation,
        sd_base_evaluation,
        vlad_evaluation,
    )

    return EVALUATIONS


def evaluate_version(model_uri: str, tracking_uri: str, project: Path, profile: str, evaluator: str | None = None,
                     steps: int | None = None, seed: int = 0, reference_images: int = 100,
                     say: Callable[[str], None] = log.info) -> EvaluationRecord:
    """What the model's evaluation asset does, without Dagster: score a registered version
    (`models:/<name>/<version|latest>` or `@<alias>`) on its family's benchmark and log it to the version's
    run, so that `genops registry promote` can judge a version trained from the command line.

    The benchmark is the versioned file the benchmark asset wrote (`data/benchmarks/<family>.jsonl`), built
    from the held-out split first if there is none; the evaluator CLIP defaults to its champion.
    """
    name = model_uri.removeprefix("models:/").split("@")[0].split("/")[0]
    specs = {spec.registered_model: spec for spec in evaluation_specs().values()}
    if name not in specs:
        raise ValueError(f"no evaluation is defined for {name!r}; evaluated models: {', '.join(sorted(specs))}")
    spec = specs[name]
    prepared = project / "data" / "prepared"
    benchmark = project / "data" / "benchmarks" / f"{spec.family}.jsonl"
    if benchmark.is_file():
        say(f"[{spec.family}] benchmark {benchmark} (the benchmark asset's, md5 {file_md5(benchmark)})")
    else:
        _, md5, count = build_benchmark(spec, prepared, benchmark, profile)
        say(f"[{spec.family}] built benchmark {benchmark}: {count} items of "
            f"{spec.benchmark_dataset}/{spec.benchmark_split}, md5 {md5}")
    from training_jobs.lineage import dataset_versions
    from training_jobs.model_inputs import resolve_model_path

    source = dataset_versions(project, [spec.benchmark_dataset])[spec.benchmark_dataset]
    clip_dir = resolve_model_path(evaluator or EVALUATOR, tracking_uri) if spec.uses_clip_evaluator else None
    return run_evaluation(spec, model_uri, tracking_uri, benchmark, benchmark_facts(spec, source),
                          scorer_inputs(spec, prepared, profile, clip_dir, seed, steps, None, reference_images), say=say)


def benchmark_facts(spec: EvaluationSpec, source_version: str) -> dict[str, str]:
    """The benchmark's lineage tags on an evaluation run: its source dataset's DVC md5 and split."""
    return {"benchmark_source_version": str(source_version),
            "benchmark_split": f"{spec.benchmark_dataset}/{spec.benchmark_split}"}


def scorer_inputs(spec: EvaluationSpec, prepared: Path, profile: str, clip_dir: Path | None, seed: int = 0,
                  steps: int | None = None, guidance_scale: float | None = None,
                  reference_images: int = 100) -> dict[str, Any]:
    """A scorer's inputs: the evaluator CLIP folder, the FID reference images (`reference_images` of the
    spec's reference split), the seed, the sampler steps (None: the spec's for `profile`), the guidance
    scale (None: the model's) and the prepared-data root."""
    reference = ([r.image for r in split_samples(prepared, spec.benchmark_dataset, spec.reference_split,
                                                 reference_images)] if spec.reference_split else [])
    return {"clip_evaluator": clip_dir, "reference_images": reference, "seed": seed,
            "steps": steps if steps is not None else spec.sampler_steps.get(profile),
            "guidance_scale": guidance_scale, "prepared_root": prepared}
