"""`genops minigpt5 params` (the trainable set of each stage at paper scale, on the meta device) and
`genops minigpt5 generate` (interleaved story continuation with a trained MiniGPT-5)."""

from __future__ import annotations

import html
import itertools
from pathlib import Path

import typer

app = typer.Typer(help="MiniGPT-5: trainable parameter groups, interleaved text-and-image generation.",
                  no_args_is_help=True)

PAPER_TRAINABLE = 6.6e6  # "Trainable parameters are nearly 6.6 million" (Sec. 4.1, stage 2)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)


@app.command()
def params(
    profile: str = typer.Option("paper", help="Config profile: tiny, demo or paper (paper: Vicuna-7B + SD 2.1 sizes)."),
    stage: int = typer.Option(2, help="Training stage, 1 (pre-training) or 2 (fine-tuning)."),
) -> None:
    """List the named trainable parameter groups of a stage with their counts (meta device: no memory)."""
    from components.config import load_config
    from components.models.clip_base import ClipBaseConfig
    from components.models.llm_base import LlmBaseConfig
    from components.models.minigpt5 import MiniGPT5Config, meta_model
    from components.models.sd_base import SDBaseConfig
    from training_jobs.launcher import CONFIG_ROOT, PROFILES

    if profile not in PROFILES:
        _fail(f"--profile {profile!r} is not one of {PROFILES}")
    if stage not in (1, 2):
        _fail(f"--stage must be 1 or 2, got {stage}")
    models = CONFIG_ROOT / "models"
    llm_file = models / "llm_base" / ("paper-vicuna-7b.yaml" if profile == "paper" else f"{profile}.yaml")
    llm_cfg = load_config(LlmBaseConfig, llm_file)
    if llm_cfg.vocab_size is None:  # tiny/demo take the tokenizer's size; a size check needs a number
        llm_cfg.vocab_size = 32000
    clip_cfg = load_config(ClipBaseConfig, models / "clip_base" / f"{profile}.yaml")
    if clip_cfg.text.vocab_size is None:
        clip_cfg.text.vocab_size = 32000
    sd_cfg = load_config(SDBaseConfig, models / "sd_base" / f"{profile}.yaml")
    if sd_cfg.text.vocab_size is None:
        sd_cfg.text.vocab_size = 32000
    cfg = load_config(MiniGPT5Config, models / "minigpt5" / f"{profile}.yaml")
    model = meta_model(cfg, llm_cfg, clip_cfg, sd_cfg, stage)
    mapper_out = model.mapper(__import__("torch").zeros(1, cfg.num_vokens, llm_cfg.hidden_size, device="meta"))
    groups = {name: count for name, (_, count) in model.parameter_groups(stage).items()}
    typer.echo(f"MiniGPT-5 {profile} profile, stage {stage} (LLM {llm_file.name}: hidden {llm_cfg.hidden_size}, "
               f"{llm_cfg.num_hidden_layers} layers; generator context {tuple(mapper_out.shape[1:])})")
    typer.echo(f"mapper: (1, {cfg.num_vokens}, {llm_cfg.hidden_size}) -> {tuple(mapper_out.shape)}")
    width = max(len(n) for n in groups) + 2
    for name, count in groups.items():
        typer.echo(f"  {name:<{width}} {count:>14,}")
    total = sum(groups.values())
    typer.echo(f"  {'trainable total':<{width}} {total:>14,}")
    frozen = {"mapper.mlp (frozen in stage 2)": sum(p.numel() for p in model.mapper.mlp.parameters()),
              "mapper.q (frozen in stage 2)": model.mapper.q.numel()}
    llm_total = sum(p.numel() for n, p in model.causal_lm.named_parameters() if "lora_" not in n)
    typer.echo(f"  (LLM parameters in all: {llm_total:,})")
    if stage == 2 and profile == "paper":
        candidates = {**groups, **frozen}
        typer.echo("\nWhich sums of groups come near the paper's 'nearly 6.6 million' trainable parameters (+-10%)?")
        found = False
        for r in range(1, len(candidates) + 1):
            for combo in itertools.combinations(candidates, r):
                value = sum(candidates[c] for c in combo)
                if abs(value - PAPER_TRAINABLE) <= 0.1 * PAPER_TRAINABLE:
                    found = True
                    typer.echo(f"  {' + '.join(combo)} = {value:,}")
        if not found:
            typer.echo("  none: no sum of these groups is within 10% of 6.6M")
        typer.echo(f"  for scale: LoRA + voken rows = {groups['lora'] + groups['voken_input'] + groups['voken_output']:,}; "
                   f"with the enc-dec the stated stage-2 set is {total:,}")


def _load_story(path: Path, story_id: str | None):
    from components.data.formats.vist import MAPPING_SUFFIX, STORY_SUFFIX, read
    from components.data.records import ReadFailure

    if not path.is_file() or not path.name.endswith(STORY_SUFFIX):
        _fail(f"--story {path}: expected a VIST-format <split>{STORY_SUFFIX} file (with <split>{MAPPING_SUFFIX} beside it)")
    split = path.name.removesuffix(STORY_SUFFIX)
    stories, failures = [], []
    for record in read(path.parent):
        if isinstance(record, ReadFailure):
            failures.append(record)
        elif record.extra.get("split") == split:
            stories.append(record)
    if story_id is not None:
        stories = [s for s in stories if s.id == story_id]
    if not stories:
        reasons = "; ".join(f"{f.ref}: {f.reason}" for f in failures[:3])
        _fail(f"--story {path}: no readable story{f' with id {story_id!r}' if story_id else ''}"
              + (f" ({reasons})" if reasons else ""))
    return stories[0]


@app.command()
def generate(
    story: Path = typer.Option(..., help="VIST-format story file <split>_cleaned.json (images via <split>_image_mapping.json)."),
    steps: int = typer.Option(1, help="Steps to generate after the context."),
    out: Path = typer.Option(..., help="Folder for story.json, the step images and index.html."),
    weights: str | None = typer.Option(None, help="MiniGPT-5 folder or registry URI (default: models:/genops-minigpt5-stage2"
                                                   "@champion, or its latest version while it has none)."),
    story_id: str | None = typer.Option(None, help="Which story of the file (default: the first)."),
    context_steps: int | None = typer.Option(None, help="Story steps given as context (default: all but --steps)."),
    seed: int = typer.Option(0, help="Seed of the narration sampling and of the image noise."),
    draw_every_step: bool = typer.Option(True, help="Force the vokens when a step's text ends without [IMG1]."),
) -> None:
    """Continue a story: the LLM narrates; on [IMG1] the vokens are forced, mapped, and the frozen UNet draws (CFG)."""
    import torch
    from PIL import Image

    from components.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
    from components.models.autoencoder import images_to_pixels, pixels_to_images
    from components.models.minigpt5 import MiniGPT5, story_task
    from training_jobs.launcher import default_tracking_uri, project_root
    from training_jobs.model_inputs import default_reference, resolve_model_path

    if steps < 1:
        _fail(f"--steps must be >= 1, got {steps}")
    record = _load_story(story, story_id)
    keep = context_steps if context_steps is not None else max(1, len(record.steps) - steps)
    if not 0 <= keep <= len(record.steps):
        _fail(f"--context-steps {keep} is outside 0..{len(record.steps)} (the story has {len(record.steps)} steps)")
    tracking_uri = default_tracking_uri(project_root())
    try:
        path = resolve_model_path(weights or default_reference("genops-minigpt5-stage2", tracking_uri), tracking_uri)
    except FileNotFoundError as exc:
        _fail(f"--weights: {exc}", code=1)
    model = MiniGPT5.from_pretrained(path).eval()
    size = model.vae.config.sample_size
    seq = []
    for step in record.steps[:keep]:
        pixels = images_to_pixels([Image.open(step.image_path)], size)[0] if step.image_path else None
        seq.append({"text": step.text, "pixels": pixels, "source": "given"})
    s = model.cfg.sampling
    typer.echo(f"continuing story {record.id} from {keep} step(s) with {path} (temperature {s.temperature}, top-p {s.top_p}, "
               f"repetition penalty {s.repetition_penalty}, {s.num_inference_steps} denoising steps, guidance {s.guidance_scale})")
    for k in range(steps):
        plain = [{"text": x["text"], "has_image": x["pixels"] is not None} for x in seq]
        plain.append({"text": "", "has_image": True})
        prompt, _, slots, _ = story_task(plain, len(seq), "both", model.cfg.num_vokens)
        images = torch.stack([seq[i]["pixels"] for i in slots]) if slots else None
        text, image, chose = model.generate(prompt, images, seed=seed + k, force_image=draw_every_step)
        seq.append({"text": text, "pixels": image[0] if image is not None else None, "source": "generated",
                    "chose_voken": chose})
        typer.echo(f"  step {len(seq)}: {text!r}" + (" + image" if image is not None else "")
                   + ("" if chose or image is None else " (vokens forced)"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, x in enumerate(seq):
        name = None
        if x["pixels"] is not None:
            import io

            buffer = io.BytesIO()
            pixels_to_images(x["pixels"][None])[0].resize((128, 128), Image.Resampling.NEAREST).save(buffer, "PNG")
            name = f"step_{i:02d}.png"
            atomic_write_bytes(out / name, buffer.getvalue())
        truth = record.steps[i].text if i < len(record.steps) else None
        rows.append({"step": i, "text": x["text"], "image": name, "source": x["source"], "truth_text": truth,
                     "chose_voken": x.get("chose_voken")})
    atomic_write_json(out / "story.json", {"story_id": record.id, "weights": str(path), "steps": rows})
    cells = "".join(
        f"<figure class='{r['source']}'>" + (f"<img src='{r['image']}' width=128 height=128>" if r["image"] else "")
        + f"<figcaption><b>{r['source']}</b> {html.escape(r['text'])}"
        + (f"<br><i>truth: {html.escape(r['truth_text'])}</i>" if r["source"] == "generated" and r["truth_text"] else "")
        + "</figcaption></figure>" for r in rows)
    page = ("<!doctype html><meta charset='utf-8'><title>MiniGPT-5 story " + html.escape(record.id) + "</title>"
            "<style>body{font-family:sans-serif}.strip{display:flex;gap:12px}figure{width:160px;margin:0}"
            ".generated{outline:2px solid #2a7}</style><h1>MiniGPT-5: story " + html.escape(record.id) + "</h1>"
            f"<p>{keep} given step(s), {steps} generated; weights {html.escape(str(path))}</p><div class='strip'>{cells}</div>")
    atomic_write_text(out / "index.html", page)
    typer.echo(f"wrote {out / 'story.json'}, {out / 'index.html'} and {sum(1 for r in rows if r['image'])} image(s)")
