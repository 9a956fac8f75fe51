"""`genops train <recipe>` and `genops sample <model>`: the launcher and the samplers from the command line."""

from __future__ import annotations

from pathlib import Path

import typer


def train(
    recipe: str = typer.Argument(..., help="Recipe to run: vae, clip_evaluator, sd_base, llm_base, clip_base."),
    overrides: list[str] | None = typer.Argument(None, help="key=value config overrides, e.g. train.steps=100"),
    profile: str = typer.Option("demo", help="Config profile: tiny (tests), demo (this machine), paper (GPU cluster)."),
    name: str | None = typer.Option(None, help="Run name; launching again with the same name resumes the job."),
    model_variant: str | None = typer.Option(
        None, help="Named model config of the profile, configs/models/<model>/<profile>-<variant>.yaml (e.g. vicuna-7b)."
    ),
) -> None:
    """Run a training recipe as a Ray Train job, tracked in MLflow, registered on success."""
    from training_jobs.launcher import GPUUnavailableError, TrainingFailed, launch

    try:
        result = launch(recipe, profile, overrides or [], run_name=name, progress=typer.echo, model_variant=model_variant)
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


# the registry name each samplable model is registered under
REGISTERED_MODELS = {"sd_base": "genops-sd-base", "llm_base": "genops-llm-base",
                     "vlad": "genops-vlad",
                     "paradiffusion": "genops-paradiffusion-stage3"}


def sample(
    model: str = typer.Argument(..., help="Model to sample: sd_base (prompt -> image) or llm_base (prompt -> continuation)."),
    prompt: list[str] = typer.Option(..., "--prompt", help="Prompt (repeat for several)."),
    weights: str | None = typer.Option(
        None, help="Model folder or registry URI models:/<name>/<version> or models:/<name>@<alias> (default: the "
                   "model's champion, models:/<name>@champion, or its latest version while it has none)."
    ),
    seed: int = typer.Option(0, help="Seed of the initial noise (sd_base) or of the sampled tokens (llm_base)."),
    out: Path = typer.Option(Path("sample.png"), help="sd_base: PNG to write (one image, or a grid for several prompts)."),
    steps: int = typer.Option(25, help="sd_base: sampling steps."),
    guidance_scale: float = typer.Option(3.0, help="sd_base: classifier-free guidance scale (1 disables guidance)."),
    max_new_tokens: int = typer.Option(40, help="llm_base: tokens to generate per prompt."),
    temperature: float = typer.Option(0.0, help="llm_base: 0 decodes greedily; above 0, samples at this temperature."),
    top_k: int = typer.Option(0, help="llm_base: sample from the k most likely tokens (0: from all)."),
) -> None:
    """Generate from a trained model: images from sd_base, text continuations from llm_base."""
    from training_jobs.launcher import default_tracking_uri, project_root
    from training_jobs.model_inputs import default_reference, resolve_model_path

    if model not in REGISTERED_MODELS:
        typer.secho(f"error: sampling is available for {', '.join(REGISTERED_MODELS)}, not {model!r}",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    tracking_uri = default_tracking_uri(project_root())
    try:
        path = resolve_model_path(weights or default_reference(REGISTERED_MODELS[model], tracking_uri), tracking_uri)
    except FileNotFoundError as exc:
        typer.secho(f"error: --weights: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from exc
    if model == "llm_base":
        _continue_text(path, prompt, max_new_tokens, temperature, top_k, seed)
    elif model == "paradiffusion":
        from orchestration.cli.paradiffusion import draw_paragraph_images

        draw_paragraph_images(path, prompt, out, steps, guidance_scale, seed)
    elif model == "vlad":
        from orchestration.cli.vlad import draw_vlad_images

        draw_vlad_images(path, prompt, out, steps, guidance_scale, seed)
    else:
        _draw_images(path, prompt, out, steps, guidance_scale, seed)


def _continue_text(path: Path, prompts: list[str], max_new_tokens: int, temperature: float, top_k: int, seed: int) -> None:
    from transformers.utils import logging as transformers_logging

    from components.models.llm_base import LlmBase

    transformers_logging.disable_progress_bar()  # the weight-loading bar would share a line with the text
    if temperature < 0:
        typer.secho(f"error: --temperature must be >= 0 (0 = greedy), got {temperature}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    llm = LlmBase.from_pretrained(path).eval()
    continuations = llm.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                                 top_k=top_k or None, seed=seed)
    for text, continuation in zip(prompts, continuations):
        typer.echo(f"{text} >>> {continuation}")
    decoding = "greedy" if temperature == 0 else f"temperature {temperature}, top-k {top_k or 'all'}, seed {seed}"
    typer.echo(f"continued {len(prompts)} prompt(s), up to {max_new_tokens} tokens each ({decoding}), with {path}")


def _draw_images(path: Path, prompts: list[str], out: Path, steps: int, guidance_scale: float, seed: int) -> None:
    import io

    import torch
    from tqdm import tqdm

    from components.data.training_data import image_grid
    from components.fileio import atomic_write_bytes
    from components.models.autoencoder import load_autoencoder, pixels_to_images
    from components.models.sd_base import SDBase

    sd = SDBase.from_pretrained(path).eval()
    vae = load_autoencoder(path / "vae").eval()
    pixels = sd.generate(prompts, vae, num_inference_steps=steps, guidance_scale=guidance_scale,
                         generator=torch.Generator().manual_seed(seed), progress=lambda it: tqdm(it, desc="sampling"))
    image = pixels_to_images(pixels)[0] if len(prompts) == 1 else image_grid(pixels, columns=min(4, len(prompts)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(out, buffer.getvalue())
    typer.echo(f"wrote {out} ({len(prompts)} image(s), {image.size[0]}x{image.size[1]}) from {path}")
