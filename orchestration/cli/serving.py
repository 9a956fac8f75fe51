"""`genops export`, `genops generate` and `genops serve`: bundles from the registry, images from a bundle."""

from __future__ import annotations

import logging
from pathlib import Path

import typer


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)


def export(
    model: str = typer.Argument(..., help="What to export, by recipe name: sd_base, paradiffusion_stage1/2/3, vlad, "
                                          "minigpt5_stage1/2 (registered as genops-sd-base, genops-vlad, ...)."),
    out: Path = typer.Option(..., "--out", help="Bundle folder to write (replaced whole, atomically)."),
    alias: str = typer.Option("champion", help="Registry alias of the version to export (ignored with --version)."),
    version: int | None = typer.Option(None, help="Registered version number to export instead of an alias."),
    e2e_steps: int = typer.Option(4, help="Sampling steps of the end-to-end ONNX vs PyTorch parity check."),
    log_to_mlflow: bool = typer.Option(True, help="Log the bundle to MLflow and tag the registered version."),
) -> None:
    """Export a registered model version to a verified bundle: ONNX graphs, PyTorch weights, manifest."""
    from serving.bundle import BundleError
    from serving.export.registry import RegistryError, export_from_registry
    from training_jobs.launcher import default_tracking_uri, project_root

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        manifest = export_from_registry(model, out, default_tracking_uri(project_root()), alias=alias, version=version,
                                        log_to_mlflow=log_to_mlflow, e2e_steps=e2e_steps)
    except (RegistryError, BundleError, FileNotFoundError) as exc:
        _fail(str(exc))
    reg, parity = manifest["registry"], manifest["parity"]
    typer.echo(f"wrote {out}: {reg['model']} v{reg['version']} ({len(manifest['files'])} files, sha256 in manifest.json)")
    for row in parity["graphs"]:
        typer.echo(f"  parity {row['graph']:<13} {str(row['shape']):<40} max|ort-torch| {row['max_abs_err']:.2e} "
                   f"{'pass' if row['passed'] else 'FAIL'}")
    e2e = parity["end_to_end"]
    typer.echo(f"  end to end ({e2e['steps']} steps): max pixel diff {e2e['max_abs_pixel_diff']:.2e} "
               f"<= {e2e['tolerance']:.2e}: {'pass' if e2e['passed'] else 'FAIL'}")
    if not parity["passed"]:
        _fail("parity failed: the bundle is written but must not be promoted (export.parity_passed=false)")


def generate(
    bundle: Path = typer.Option(..., "--bundle", help="Export bundle folder (genops export)."),
    prompt: list[str] = typer.Option(..., "--prompt", help="Prompt (repeat for several)."),
    out: Path = typer.Option(Path("generated.png"), "--out", help="PNG to write (a row of images for several prompts)."),
    backend: str = typer.Option("onnx", help="onnx (ONNX Runtime) or torch (PyTorch; Triton attention on CUDA)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, help="Seed of the initial noise."),
    steps: int | None = typer.Option(None, help="Sampling steps (default: the bundle's)."),
    guidance_scale: float | None = typer.Option(None, help="Guidance scale (default: the bundle's)."),
    negative_prompt: str = typer.Option("", help="Negative prompt."),
    size: int | None = typer.Option(None, help="Image side in pixels (one of the bundle's allowed sides)."),
) -> None:
    """Draw images from a bundle with the production sampler (the bundle's checksums are verified first)."""
    import time

    from components.fileio import atomic_write_bytes
    from serving.bundle import BundleError
    from serving.http import image_row, png_bytes
    from serving.sampler import load_sampler

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if backend not in ("onnx", "torch"):
        _fail(f"--backend must be onnx or torch, got {backend!r}", 2)
    try:
        sampler = load_sampler(bundle, backend, device)
    except (BundleError, RuntimeError, FileNotFoundError) as exc:
        _fail(f"--bundle {bundle}: {exc}")
    if size is not None and size not in sampler.spec.allowed_sides:
        _fail(f"--size must be one of {sampler.spec.allowed_sides}, got {size}", 2)
    started = time.perf_counter()
    images = sampler.generate(prompt, seed=seed, negative_prompt=negative_prompt, steps=steps,
                              guidance_scale=guidance_scale, side=size)
    elapsed = time.perf_counter() - started
    atomic_write_bytes(out, png_bytes(image_row(images)))
    typer.echo(f"wrote {out} ({len(images)} image(s), {images[0].size[0]}x{images[0].size[1]}) with the "
               f"{backend} backend on {sampler.backend.device} in {elapsed:.2f} s")
    layout = getattr(sampler, "last_layout", None)  # VLAD: the Text Layout Generator's z, beside the image
    if layout is not None:
        from PIL import Image

        from components.models.vlad import layout_image

        scale = max(1, images[0].size[0] // layout.shape[-1])
        layout_file = out.with_name(out.stem + ".layout.png")
        atomic_write_bytes(layout_file, png_bytes(image_row([Image.fromarray(layout_image(z, scale)) for z in layout])))
        typer.echo(f"wrote {layout_file} (the layout each image was drawn from)")


def serve(
    bundle: Path = typer.Option(..., "--bundle", help="Export bundle folder (genops export)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    backend: str = typer.Option("onnx", help="onnx or torch."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    max_batch: int = typer.Option(8, help="Images per model batch (requests arriving together are batched)."),
    queue_size: int = typer.Option(16, help="Requests that may wait; beyond it the service answers 429."),
    timeout_s: float = typer.Option(60.0, help="Per-request timeout (queueing included); 504 after it."),
    max_steps: int = typer.Option(50, help="Largest `steps` a request may ask for."),
    max_count: int = typer.Option(4, help="Largest `count` a request may ask for."),
) -> None:
    """Serve the bundle over HTTP (FastAPI + uvicorn). Set GENOPS_SERVE_TOKEN to require a bearer token."""
    import uvicorn

    from serving.http import ServiceSettings, create_app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if backend not in ("onnx", "torch"):
        _fail(f"--backend must be onnx or torch, got {backend!r}", 2)
    if not (bundle / "manifest.json").is_file():
        _fail(f"--bundle {bundle}: no manifest.json; make one with genops export", 2)
    try:
        settings = ServiceSettings(bundle=bundle, backend=backend, device=device, max_batch=max_batch,
                                   queue_size=queue_size, timeout_s=timeout_s, max_steps=max_steps, max_count=max_count)
    except ValueError as exc:
        _fail(str(exc), 2)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
