"""`genops sample vlad`: an image and the Text Layout Generator's predicted layout for each prompt."""

from __future__ import annotations

import io
from pathlib import Path

import typer


def draw_vlad_images(path: Path, prompts: list[str], out: Path, steps: int, guidance_scale: float, seed: int) -> None:
    """Write the image(s) to `out` and the predicted layout(s) beside it as `<stem>.layout.png`."""
    import torch
    from PIL import Image
    from tqdm import tqdm

    from components.data.training_data import image_grid
    from components.fileio import atomic_write_bytes
    from components.models.autoencoder import load_autoencoder, pixels_to_images
    from components.models.vlad import VLAD, decompose_prompt, layout_image

    model = VLAD.from_pretrained(path).eval()
    vae = load_autoencoder(path / "vae").eval()
    for prompt in prompts:
        parsed = decompose_prompt(prompt, model.cfg.max_local_units)
        typer.echo(f"{prompt!r}: words {parsed.words}, objects {parsed.objects}")
    pixels, layouts = model.generate(prompts, vae, num_inference_steps=steps, guidance_scale=guidance_scale,
                                     generator=torch.Generator().manual_seed(seed),
                                     progress=lambda it: tqdm(it, desc="sampling"))
    columns = min(4, len(prompts))
    image = pixels_to_images(pixels)[0] if len(prompts) == 1 else image_grid(pixels, columns=columns)
    written = [out]
    _write_png(image, out, atomic_write_bytes)
    if layouts is not None:
        scale = image.size[0] // (layouts.shape[-1] * (columns if len(prompts) > 1 else 1)) or 1
        tiles = torch.stack([torch.from_numpy(layout_image(z, scale=scale)).permute(2, 0, 1) for z in layouts])
        layout = Image.fromarray(layout_image(layouts[0], scale=scale)) if len(prompts) == 1 else \
            image_grid(tiles.float() / 127.5 - 1.0, columns=columns)
        layout_path = out.with_name(f"{out.stem}.layout.png")
        _write_png(layout, layout_path, atomic_write_bytes)
        written.append(layout_path)
    else:
        typer.echo("this model has no layout generator (trained with model.layout.enabled=false): no layout written")
    typer.echo(f"wrote {', '.join(map(str, written))} ({len(prompts)} prompt(s), {image.size[0]}x{image.size[1]}) "
               f"from {path}; layout: red = word regions, green = objects, white = character ink")


def _write_png(image, path: Path, write) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write(path, buffer.getvalue())
