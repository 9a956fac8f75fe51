"""`genops train <recipe>` and `genops sample <model>`: the launcher and the samplers from the command line."""

from __future__ import annotations

from pathlib import Path

import typer


def train(
    recipe: str = typer.Argument(..., help="Recipe to run: vae, clip_evaluator, sd_base."),
    overrides: list[str] | None = typer.Argument(None, help="key=value config overrides, e.g. train.steps=100"),
    profile: str = typer.Option("demo", help="Config profile: tiny (tests), demo (this machine), paper (GPU cluster)."),
    name: str | None = typer.Option(None, help="Run name; launching again with the same name resumes the job."),
) -> None:
    """Run a training recipe as a Ray Train job, tracked in MLflow, registered on success."""
    from training_jobs.launcher import GPUUnavailableError, TrainingFailed, launch

    try:
        result = launch(recipe, profile, overrides or [], run_name=name, progress=typer.echo)
    except (GPUUnavailableError, TrainingFailed, ValueError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(f"\n{recipe} trained in {result.seconds:.0f}s")
    typer.echo(f"  MLflow run:       {result.run_id}")
    typer.echo(f"  registered model: version {result.registered_version or '-'}")
    typer.echo(f"  checkpoint:       {result.checkpoint_path or '(local mode: none kept)'}")
    typer.echo(f"  exported model:   {result.model_dir}")
    typer.echo(f"  final metrics:    {result.metrics}")
    typer.echo(f"  datasets:         {result.dataset_versions}")


def sample(
    model: str = typer.Argument(..., help="Model to sample: sd_base."),
    prompt: list[str] = typer.Option(..., "--prompt", help="Prompt (repeat for several images)."),
    out: Path = typer.Option(Path("sample.png"), help="PNG to write (one image, or a grid for several prompts)."),
    weights: str = typer.Option("models:/genops-sd-base/latest", help="Model folder or registry URI models:/<name>/<version>."),
    steps: int = typer.Option(25, help="Sampling steps."),
    guidance_scale: float = typer.Option(3.0, help="Classifier-free guidance scale (1 disables guidance)."),
    seed: int = typer.Option(0, help="Seed of the initial noise."),
) -> None:
    """Generate images from a trained text-to-image model."""
    import io

    import torch
    from tqdm import tqdm

    from components.data.training_data import image_grid
    from components.fileio import atomic_write_bytes
    from components.models.autoencoder import load_autoencoder, pixels_to_images
    from components.models.sd_base import SDBase
    from training_jobs.launcher import default_tracking_uri, project_root
    from training_jobs.model_inputs import resolve_model_path

    if model != "sd_base":
        typer.secho(f"error: sampling is available for sd_base, not {model!r}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    try:
        path = resolve_model_path(weights, default_tracking_uri(project_root()))
    except FileNotFoundError as exc:
        typer.secho(f"error: --weights: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from exc
    sd = SDBase.from_pretrained(path).eval()
    vae = load_autoencoder(path / "vae").eval()
    pixels = sd.generate(prompt, vae, num_inference_steps=steps, guidance_scale=guidance_scale,
                         generator=torch.Generator().manual_seed(seed), progress=lambda it: tqdm(it, desc="sampling"))
    image = pixels_to_images(pixels)[0] if len(prompt) == 1 else image_grid(pixels, columns=min(4, len(prompt)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(out, buffer.getvalue())
    typer.echo(f"wrote {out} ({len(prompt)} image(s), {image.size[0]}x{image.size[1]}) from {path}")
