"""`genops paradiffusion ...`: the LoRA parameter table (Table 6's counts) and the LoRA ablation sweep.

    genops paradiffusion lora-table --profile paper
    genops paradiffusion ablate-lora --profile demo [--concurrency 2] [key=value ...]
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="ParaDiffusion: LoRA parameter table and the Table 6 LoRA ablation.", no_args_is_help=True)

LLM_MODEL_CONFIG = Path(__file__).resolve().parents[2] / "training_jobs" / "configs" / "models" / "llm_base"
LORA_MODEL_CONFIG = Path(__file__).resolve().parents[2] / "training_jobs" / "configs" / "models" / "paradiffusion_lora"


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        _fail(f"{flag} takes comma-separated integers, got {text!r}", 2)
    if not values or any(v < 1 for v in values):
        _fail(f"{flag} needs positive integers, got {text!r}", 2)
    return values


@app.command("lora-table")
def lora_table(
    profile: str = typer.Option("paper", help="LLM config profile (configs/models/llm_base/<profile>.yaml); paper = Llama-2-7B."),
    ranks: str = typer.Option("8,16,32,64,128", help="Comma-separated LoRA ranks."),
    alpha: int = typer.Option(32, help="LoRA alpha (does not change the counts)."),
    target_modules: str = typer.Option("q_proj,v_proj", help="Comma-separated Llama linears that get an adapter."),
) -> None:
    """Trainable LoRA parameters of the LLM text encoder, computed by PEFT on the meta device (no weights)."""
    from components.config import load_config
    from components.models.llm_base import LlmBaseConfig, llama_config
    from components.models.paradiffusion import llama_lora_table

    path = LLM_MODEL_CONFIG / f"{profile}.yaml"
    if not path.is_file():
        _fail(f"--profile {profile!r}: no {path}", 2)
    cfg = load_config(LlmBaseConfig, path)
    if cfg.vocab_size is None:
        _fail(f"--profile {profile!r}: {path} takes its vocabulary from a tokenizer (vocab_size null); use --profile paper", 2)
    modules = [m.strip() for m in target_modules.split(",") if m.strip()]
    typer.echo(f"LoRA on {', '.join(modules)} of every block of LlamaModel ({path.name}: {cfg.num_hidden_layers} layers, "
               f"hidden {cfg.hidden_size}), alpha {alpha}; counts from PEFT get_nb_trainable_parameters on the meta device")
    rows = llama_lora_table(llama_config(cfg), _ints(ranks, "--ranks"), [alpha], modules)
    typer.echo(f"{'rank':>5} {'trainable':>14} {'all (adapted)':>16} {'% trainable':>12}")
    for row in rows:
        typer.echo(f"{row['rank']:>5} {row['trainable']:>14,} {row['all']:>16,} {row['percent']:>11.2f}%")
    typer.echo(f"{len(rows)} configurations; base LlamaModel: {rows[0]['all'] - rows[0]['trainable']:,} parameters")


@app.command("ablate-lora")
def ablate_lora(
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides of every stage-2 job, e.g. train.steps=100"),
    profile: str = typer.Option("demo", help="Config profile of the stage-2 jobs."),
    ranks: str = typer.Option("8,16,32,64,128", help="Ranks swept at alpha 32."),
    alphas: str = typer.Option("16,32,64", help="Alphas swept at rank 64."),
    base: bool = typer.Option(True, help="Include Table 6's 'Base' (stage 2 without LoRA)."),
    concurrency: int = typer.Option(1, help="Grid points run at once (independent Ray jobs)."),
    out: Path = typer.Option(Path("outputs/paradiffusion/ablation"), help="Folder for lora_table.md / .csv."),
) -> None:
    """Table 6: stage 2 with each LoRA config (and Base), nested MLflow runs under one parent."""
    from training_jobs.launcher import TrainingFailed
    from training_jobs.paradiffusion_ablation import GridPoint, run_lora_ablation

    grid = ([GridPoint(0, 32)] if base else []) + [GridPoint(r, 32) for r in _ints(ranks, "--ranks")]
    grid += [GridPoint(64, a) for a in _ints(alphas, "--alphas")]
    grid = list(dict.fromkeys(grid))
    typer.echo(f"LoRA ablation: {len(grid)} stage-2 jobs ({', '.join(p.name for p in grid)}), profile {profile}")
    try:
        summary = run_lora_ablation(profile, grid, overrides or [], output_dir=out, concurrency=concurrency, say=typer.echo)
    except (TrainingFailed, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo("\n" + summary.table_markdown)
    typer.echo(f"best: {summary.best}; parent MLflow run {summary.parent_run_id}; tables in {out}")


def draw_paragraph_images(path: Path, prompts: list[str], out: Path, steps: int, guidance_scale: float, seed: int) -> None:
    """`genops sample paradiffusion`: paragraphs -> one PNG (a grid for several)."""
    import io

    import torch
    from tqdm import tqdm

    from components.data.training_data import image_grid
    from components.fileio import atomic_write_bytes
    from components.models.autoencoder import load_autoencoder, pixels_to_images
    from components.models.paradiffusion import ParaDiffusion

    model = ParaDiffusion.from_pretrained(path).eval()
    vae = load_autoencoder(path / "vae").eval()
    tokens = model.tokenize(prompts)[1].sum(dim=1).tolist()
    pixels = model.generate(prompts, vae, num_inference_steps=steps, guidance_scale=guidance_scale,
                            generator=torch.Generator().manual_seed(seed), progress=lambda it: tqdm(it, desc="sampling"))
    image = pixels_to_images(pixels)[0] if len(prompts) == 1 else image_grid(pixels, columns=min(4, len(prompts)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(out, buffer.getvalue())
    typer.echo(f"wrote {out} ({len(prompts)} image(s), {image.size[0]}x{image.size[1]}; text tokens read "
               f"{', '.join(map(str, tokens))} of max {model.cfg.max_tokens}) from {path}")


@app.command("compare")
def compare(
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides of the Base stage-2 job it trains"),
    profile: str = typer.Option("demo", help="Config profile of the Base stage-2 job."),
    prompts: int = typer.Option(48, help="Held-out paraimage_big paragraphs to sample (those with a scene are kept)."),
    base_model: str | None = typer.Option(None, help="Stage 2 without LoRA (folder or registry URI); default: train it now."),
    sd_base_model: str = typer.Option("models:/genops-sd-base/latest", help="The SD-style baseline for Figure 21."),
) -> None:
    """Tables 10 and 6 and Figure 21 at demo scale: paired samples, per-prompt faithfulness, bootstrap CIs."""
    from training_jobs.launcher import TrainingFailed, default_tracking_uri, launch, project_root
    from training_jobs.paradiffusion_comparison import run_comparisons

    root = project_root()
    uri = default_tracking_uri(root)
    stages = {f"stage {n}": f"models:/genops-paradiffusion-stage{n}/latest" for n in (1, 2, 3)}
    try:
        if base_model is None:
            typer.echo("training Table 6's Base: stage 2 with model.rank=0 (same init, data, steps, seeds)")
            result = launch("paradiffusion_stage2", profile, [*(overrides or []), "model.rank=0", "tracking.registered_model="],
                            run_name=None, progress=typer.echo)
            base_model = str(result.model_dir)
        markdown, _, run_id = run_comparisons(stages, sd_base_model, base_model, uri, root / "data" / "prepared",
                                              prompts=prompts, say=typer.echo)
    except (TrainingFailed, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo("\n" + markdown)
    typer.echo(f"logged to MLflow run {run_id} (comparisons/tables.md, .csv, .json)")
