"""Where does sd_base lose placement? The diagnosis table of issue 10, (a)-(d), for one trained model.

(a) linear probes from the text encoder's token states (all / mean-pooled) to the stated position and
    colour, on 1,800 synthetic one-object captions;
(b) the same UNet conditioned on learned (colour, position) embeddings instead of text, trained for a
    few hundred steps on the one-object training scenes, scored with the project's faithfulness metric
    on the one-object validation prompts (with and without the UNet position embedding);
(c) per SNR band, the share of training timesteps, of the loss weight and of the sampler's steps;
(d) where the UNet's attention sits and how many tokens fall in one cell of the captions' 3x3 grid.

    .venv/bin/python benchmarks/sd_placement.py --weights <sd_base export folder> --vae models:/genops-vae/1
    .venv/bin/python benchmarks/sd_placement.py --weights ... --vae ... --label-steps 600 --only b
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from machine_load import start_watch
from transformers import AutoTokenizer

from components.config import apply_overrides, from_dict, load_values
from components.data.scene import Scene
from components.data.training_data import collate_pairs, pair_decoder
from components.diffusion import (
    denoising_loss,
    make_sampling_scheduler,
    noise_level_profile,
    sample,
)
from components.metrics.faithfulness import NamedObject, text_faithfulness
from components.models.autoencoder import decode_latents, encode_latents, load_autoencoder, pixels_to_images
from components.models.probes import SceneLabelEncoder, attention_layout, one_object_captions, text_probe
from components.models.sd_base import SDBase, SDBaseConfig, build_unet
from training_jobs.data_loading import first_samples, shard_paths
from training_jobs.launcher import default_tracking_uri
from training_jobs.model_inputs import resolve_model_path

ROOT = Path(__file__).resolve().parents[1]


def load_split(vae, split: str, count: int) -> dict:
    shards = shard_paths(ROOT / "data" / "prepared", ["laion_short"], split)
    return collate_pairs(first_samples(shards, pair_decoder(vae.config.sample_size), count))


def one_object_rows(batch: dict) -> list[int]:
    return [i for i, gt in enumerate(batch["groundtruth"])
            if gt and "scene" in gt and len(gt["scene"]["objects"]) == 1]


def label_conditioned_run(sd: SDBase, vae, steps: int, batch_size: int, position_embedding: bool, seed: int = 0) -> dict:
    """(b): train the model's UNet architecture from scratch on (colour, position) labels; faithfulness on val."""
    torch.manual_seed(seed)
    unet_cfg = dataclasses.replace(sd.cfg.unet, position_embedding=position_embedding)
    width = sd.cfg.text.hidden_size
    unet, labels = build_unet(unet_cfg, cross_attention_dim=width), SceneLabelEncoder(width)
    train = load_split(vae, "train", 10**6)
    keep = one_object_rows(train)
    with torch.no_grad():
        latents = torch.cat([encode_latents(vae, train["pixels"][keep][i:i + 256]) for i in range(0, len(keep), 256)])
    objects = [train["groundtruth"][i]["scene"]["objects"][0] for i in keep]
    colour_ids, position_ids = labels.ids([o["colour"] for o in objects], [o["position"] for o in objects])
    null_colour, null_position = labels.ids([None], [None])
    params = list(unet.parameters()) + list(labels.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    denoiser = lambda x, t, c: unet(x, t, encoder_hidden_states=c, return_dict=False)[0]
    start = time.perf_counter()
    for step in range(steps):
        rows = torch.randint(0, len(keep), (batch_size,), generator=generator)
        drop = torch.rand(batch_size, generator=generator) < sd.cfg.diffusion.condition_dropout
        cond = labels(torch.where(drop, null_colour, colour_ids[rows]), torch.where(drop, null_position, position_ids[rows]))
        loss = denoising_loss(denoiser, sd.noise_scheduler, latents[rows], cond,
                              snr_gamma=sd.cfg.diffusion.snr_gamma, generator=generator)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  (b) pos-emb={position_embedding} step {step + 1}/{steps} loss {loss.item():.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    unet.eval()
    val = load_split(vae, "val", 48)
    rows = one_object_rows(val)
    objects = [val["groundtruth"][i]["scene"]["objects"][0] for i in rows]
    with torch.no_grad():
        cond = labels(*labels.ids([o["colour"] for o in objects], [o["position"] for o in objects]))
        uncond = labels(null_colour, null_position)
        out = sample(denoiser, make_sampling_scheduler(sd.noise_scheduler, sd.cfg.diffusion.sampler), cond, uncond,
                     latent_shape=sd.latent_shape, num_inference_steps=sd.cfg.diffusion.num_inference_steps,
                     guidance_scale=sd.cfg.diffusion.guidance_scale, generator=torch.Generator().manual_seed(1))
        images = pixels_to_images(decode_latents(vae, out))
    named = [[NamedObject.from_scene_object(Scene.from_json(val["groundtruth"][i]["scene"]).objects[0])] for i in rows]
    metrics = text_faithfulness(images, named)
    return {"rows": len(rows), "steps": steps, "colour_placement": metrics.colour_placement_precision,
            "location": metrics.location_precision or 0.0, "attribute": metrics.attribute_precision,
            "object": metrics.object_precision}


def text_model_on_one_object_rows(sd: SDBase, vae) -> dict:
    """The text-conditioned model on the same one-object validation rows, for (b)'s comparison."""
    val = load_split(vae, "val", 48)
    rows = one_object_rows(val)
    images = pixels_to_images(sd.generate([val["caption"][i] for i in rows], vae,
                                          generator=torch.Generator().manual_seed(1)))
    named = [[NamedObject.from_scene_object(Scene.from_json(val["groundtruth"][i]["scene"]).objects[0])] for i in rows]
    metrics = text_faithfulness(images, named)
    return {"rows": len(rows), "colour_placement": metrics.colour_placement_precision,
            "location": metrics.location_precision or 0.0, "attribute": metrics.attribute_precision,
            "object": metrics.object_precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="an sd_base export folder (save_pretrained); needed for (a)")
    parser.add_argument("--model-config", default=str(ROOT / "training_jobs/configs/models/sd_base/demo.yaml"),
                        help="without --weights: the model config whose UNet (b)-(d) use")
    parser.add_argument("--override", action="append", default=[], help="key=value on --model-config, repeatable")
    parser.add_argument("--vae", default="models:/genops-vae/1", help="VAE folder or registry URI")
    parser.add_argument("--tracking-uri", default=default_tracking_uri(ROOT))
    parser.add_argument("--label-steps", type=int, default=600, help="(b) training steps per arm")
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--position-embedding", default="off,on", help="(b) arms: off, on or off,on")
    parser.add_argument("--only", default="abcd", help="which parts to run, e.g. 'acd'")
    args = parser.parse_args()
    machine = start_watch()
    table: list[str] = []  # printed after the machine report, as every benchmark does
    torch.set_grad_enabled(False)
    if args.weights:
        sd = SDBase.from_pretrained(args.weights).eval()
    elif "a" in args.only:
        parser.error("(a) probes a trained text encoder: pass --weights")
    else:
        values = apply_overrides(load_values(args.model_config), args.override)
        cfg = from_dict(SDBaseConfig, values, args.model_config)
        sd = SDBase.from_config(cfg, AutoTokenizer.from_pretrained(ROOT / "data" / "tokenizer")).eval()
    vae = load_autoencoder(resolve_model_path(args.vae, args.tracking_uri)).eval()
    if "a" in args.only:
        scores = text_probe(sd, one_object_captions(1800, seed=0))
        table.append("(a) linear probe, held-out accuracy (chance: position 1/9, colour 1/8)")
        table.append(f"    all token states:  position {scores['all/position']:.2f}  colour {scores['all/colour']:.2f}")
        table.append(f"    mean-pooled state: position {scores['mean/position']:.2f}  colour {scores['mean/colour']:.2f}")
    if "b" in args.only:
        table.append("(b) one-object val rows: colour placement / location / attribute / object")
        if args.weights:
            text = text_model_on_one_object_rows(sd, vae)
            table.append(f"    text-conditioned model ({args.weights}): {text['colour_placement']:.2f} / "
                  f"{text['location']:.2f} / {text['attribute']:.2f} / {text['object']:.2f} on {text['rows']} rows")
        for position_embedding in [p == "on" for p in args.position_embedding.split(",")]:
            with torch.enable_grad():
                result = label_conditioned_run(sd, vae, args.label_steps, args.batch_size, position_embedding)
            table.append(f"    label-conditioned UNet, position embedding {position_embedding}, {result['steps']} steps: "
                  f"{result['colour_placement']:.2f} / {result['location']:.2f} / {result['attribute']:.2f} / "
                  f"{result['object']:.2f} on {result['rows']} rows", flush=True)
    if "c" in args.only:
        diffusion = sd.cfg.diffusion
        table.append(f"(c) noise levels ({diffusion.beta_schedule}, {diffusion.prediction_type}, "
              f"{diffusion.sampler} {diffusion.num_inference_steps} steps)")
        first = make_sampling_scheduler(sd.noise_scheduler, diffusion.sampler)
        first.set_timesteps(diffusion.num_inference_steps)
        table.append(f"    sampler's first timestep: {int(first.timesteps[0])} of {sd.noise_scheduler.config.num_train_timesteps}")
        table.append("    SNR band      t range    timesteps  weight(min-SNR-5)  weight(plain)  sampler steps")
        bands = {g: noise_level_profile(sd.noise_scheduler, make_sampling_scheduler(sd.noise_scheduler, diffusion.sampler),
                                        diffusion.num_inference_steps, g) for g in (5.0, None)}
        for b5, b1 in zip(bands[5.0], bands[None]):
            table.append(f"    [{b5.snr_low:g}, {b5.snr_high:g})".ljust(18) + f"{b5.t_first}-{b5.t_last}".ljust(11)
                  + f"{b5.timestep_share:9.3f}  {b5.loss_weight_share:17.3f}  {b1.loss_weight_share:13.3f}"
                  f"  {b5.sampler_step_share:13.3f}")
    if "d" in args.only:
        table.append("(d) attention layout (3x3 grid of named positions)")
        for level in attention_layout(sd.unet):
            kind = "cross+self" if level.cross_attention else ("none" if "no attention" in level.block else "self")
            table.append(f"    {level.block:32s} {level.side:2d}x{level.side:<2d} {kind:10s} "
                  f"{level.tokens_per_cell:5.1f} tokens per named cell")
    machine.report()
    print("\n".join(table))


if __name__ == "__main__":
    main()
