"""VLAD's sampling-time graphs: the text side (LVLM text tower with LoRA merged + CCM), the TLG, the VFE UNet
and the VAE decoder.

Inputs and outputs (B prompts, L global tokens, M = model.max_local_units, U unit tokens, T = 1 + M + L):
    text_encoder   input_ids (B, L) int64, attention_mask (B, L) int64, local_input_ids (B, M, U) int64,
                   local_attention_mask (B, M, U) int64, local_mask (B, M) bool (True where the prompt has
                   that unit) -> context (B, T, P): [t; t'_1..t'_M; global token states] (`VLAD.condition`)
                   (without CCM: input_ids, attention_mask -> (B, 1 + L, P) = [t_g; states])
    tlg            context (B, T, P) f32, context_mask (B, T) bool -> layout (B, 3, h, w) in [0, 1]
    vfe_unet       sample (B, C, h, w), layout (B, 3, h, w), timestep (B,) int64, encoder_hidden_states (B, T, P),
                   encoder_attention_mask (B, T) f32 -> prediction (B, C, h, w); Concat(x_t, z) inside (eq. 7)
                   (without hierarchical guidance: no layout input, and no tlg graph)
    vae_decoder    latents (B, C, h, w), scaled -> images (B, 3, H, W) in [-1, 1] (sd_base's graph)
On the host: prompt decomposition (`decompose_prompt`), tokenization, the context mask
[1; local_mask; attention_mask] (`text_inputs` below) and the guided sampling loop. The spatial axes of the
TLG and the VFE are fixed: the TLG's query grid is the latent grid it was trained on, and the VFE's layout
input comes from it; batch and sequence axes are dynamic.

The LoRA factors the recipe injects into both CLIP towers (`peft.inject_adapter_in_model`) are folded into
the base projections before export (`serving.export.lora.merge_injected_lora`) and the merge is checked
weight by weight; the bundle's `pytorch/vlad.safetensors` keeps them apart, as trained.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serving.export.onnx_graphs import ATOL, RTOL, GraphSpec

logger = logging.getLogger(__name__)

E2E_PROMPTS = ["a sign that reads 'OPEN' above a red square", "a small blue circle at the top left"]


class TextSideGraph(nn.Module):
    """LVLM text tower + text projection + CCM: `VLAD.condition`'s token sequence from token ids."""

    def __init__(self, model):
        super().__init__()
        self.clip = model.lvlm.model
        self.ccm = model.ccm
        self.eos = model.tokenizer.eos_token_id

    def _embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled (N, P) and projected token states (N, L, P), as `VLAD._text_tokens`."""
        hidden = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (N, L, H)
        eos = (input_ids == self.eos).int().argmax(dim=-1)  # (N,)
        pooled = hidden.gather(1, eos[:, None, None].expand(-1, 1, hidden.shape[-1]))[:, 0]  # (N, H)
        return self.clip.text_projection(pooled), self.clip.text_projection(hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, local_input_ids: torch.Tensor | None = None,
                local_attention_mask: torch.Tensor | None = None, local_mask: torch.Tensor | None = None) -> torch.Tensor:
        t_g, states = self._embed(input_ids, attention_mask)  # (B, P), (B, L, P)
        if self.ccm is None:
            return torch.cat([t_g[:, None], states], dim=1)  # (B, 1 + L, P)
        batch, units = local_input_ids.shape[:2]
        pooled, _ = self._embed(local_input_ids.flatten(0, 1), local_attention_mask.flatten(0, 1))  # (B*M, P)
        t_local = torch.where(local_mask[..., None], pooled.view(batch, units, -1), 0.0)  # (B, M, P), none = 0
        t, composed_local = self.ccm(t_g, t_local, local_mask)
        return torch.cat([t[:, None], composed_local, states], dim=1)  # (B, 1 + M + L, P)


class DistinctKeyValue(nn.Module):
    """nn.MultiheadAttention with `value` passed as a new alias of `key` when the caller passes one tensor for both.

    With key *is* value, F.multi_head_attention_forward takes its packed key-value projection, whose
    TorchScript trace records the key length as a constant (torch 2.13): the graph then fails at any other
    context length. An alias (`view_as`) takes the separate-projection path, same weights, same math."""

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        self.attention = attention

    def forward(self, query, key, value, **kwargs):
        return self.attention(query, key, value.view_as(value) if value is key else value, **kwargs)


class TLGGraph(nn.Module):
    """g_TLG and `VLAD.layout_from_logits`; `model` is the export copy (its TLG's attentions get wrapped)."""

    def __init__(self, model):
        super().__init__()
        self.tlg = model.tlg
        self.tlg.attentions = nn.ModuleList([DistinctKeyValue(a) for a in self.tlg.attentions])
        self.bce = model.cfg.layout.loss == "bce"

    def forward(self, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        logits = self.tlg(context, context_mask)  # (B, 3, h, w)
        return torch.sigmoid(logits) if self.bce else logits.clamp(0.0, 1.0)  # VLAD.layout_from_logits


class VFEGraph(nn.Module):
    """Eq. 7's eps_theta(Concat(x_t, z), t, context) with the context's padding mask."""

    def __init__(self, model):
        super().__init__()
        self.unet = model.unet

    def forward(self, sample: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        if len(rest) == 4:
            layout, timestep, states, mask = rest
            sample = torch.cat([sample, layout], dim=1)  # (B, C + 3, h, w)
        else:
            timestep, states, mask = rest
        return self.unet(sample, timestep, encoder_hidden_states=states, encoder_attention_mask=mask,
                         return_dict=False)[0]


def text_inputs(model, prompts: Sequence[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The text graph's inputs for `prompts` and the context mask (B, T) bool, exactly as `VLAD.condition`
    tokenizes: global texts cut to the longest, local units padded to max_local_units with "" (masked)."""
    return tokenize_prompts(model.tokenizer, model.lvlm.max_length, model.cfg.max_local_units if model.ccm else None,
                            prompts)


def tokenize_prompts(tokenizer, max_length: int, max_local_units: int | None,
                     prompts: Sequence[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """`text_inputs` from the tokenizer and the two numbers it needs (`max_local_units` None: no CCM), so the
    production sampler runs it from a bundle without building the model."""
    from components.models.clip_evaluator import tokenize_captions
    from components.models.vlad import decompose_prompt

    ids, mask = tokenize_captions(tokenizer, list(prompts), max_length)
    keep = int(mask.sum(dim=1).max())
    inputs = {"input_ids": ids[:, :keep], "attention_mask": mask[:, :keep]}
    if max_local_units is None:
        return inputs, torch.cat([torch.ones(len(prompts), 1, dtype=torch.bool), mask[:, :keep].bool()], dim=1)
    m = max_local_units
    units = [[u.text for u in decompose_prompt(p, m).local] for p in prompts]
    local_mask = torch.tensor([[i < len(row) for i in range(m)] for row in units], dtype=torch.bool)  # (B, M)
    flat = [row[i] if i < len(row) else "" for row in units for i in range(m)]
    local_ids, local_attention = tokenize_captions(tokenizer, flat, max_length)  # (B*M, max_length)
    unit_keep = int(local_attention.sum(dim=1).max())
    inputs.update(local_input_ids=local_ids[:, :unit_keep].view(len(prompts), m, unit_keep),
                  local_attention_mask=local_attention[:, :unit_keep].view(len(prompts), m, unit_keep),
                  local_mask=local_mask)
    context_mask = torch.cat([torch.ones(len(prompts), 1, dtype=torch.bool), local_mask, mask[:, :keep].bool()], dim=1)
    return inputs, context_mask


def graph_specs(model, vae) -> list[GraphSpec]:
    """The graphs with two parity shapes each (batch and sequence lengths differ); LoRA must be merged already."""
    from peft.tuners.lora import LoraLayer

    from serving.export.sd_base import VaeDecoderGraph

    if any(isinstance(m, LoraLayer) for m in model.modules()):
        raise ValueError("merge the LVLM's LoRA first (serving.export.lora.merge_injected_lora)")
    text = model.lvlm.model.config.text_config
    vocab, width = text.vocab_size, model.cfg.lvlm.projection_dim
    eos, m = model.tokenizer.eos_token_id, model.cfg.max_local_units
    channels, side, _ = model.latent_shape
    layout = model.tlg is not None
    ccm = model.ccm is not None

    def token_rows(g, rows: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random texts of 2..length tokens ending in <eos>, right-padded (as tokenize_captions)."""
        ids = torch.randint(4, vocab, (rows, length), generator=g)
        mask = torch.zeros_like(ids)
        for row, n in enumerate(torch.randint(2, length + 1, (rows,), generator=g).tolist()):
            ids[row, n - 1] = eos
            mask[row, :n] = 1
        mask[0] = 1
        ids[0, -1] = eos  # one row fills the length, as the longest text does after the cut
        return ids, mask

    def text_example(s):
        g = torch.Generator().manual_seed(s["batch"] * 100 + s["length"])
        ids, mask = token_rows(g, s["batch"], s["length"])
        if not ccm:
            return ids, mask
        local_ids, local_attention = token_rows(g, s["batch"] * m, s["unit_length"])
        local_mask = torch.rand(s["batch"], m, generator=g) < 0.6
        local_mask[0, 0], local_mask[-1] = True, False  # a prompt with units, and one with none
        return (ids, mask, local_ids.view(s["batch"], m, -1), local_attention.view(s["batch"], m, -1), local_mask)

    def context(g, s) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.ones(s["batch"], s["context"], dtype=torch.bool)
        mask[1:, s["context"] - 3:] = False
        return torch.randn(s["batch"], s["context"], width, generator=g), mask

    def tlg_example(s):
        return context(torch.Generator().manual_seed(s["batch"] * 100 + s["context"]), s)

    def vfe_example(s):
        g = torch.Generator().manual_seed(s["batch"] * 100 + s["context"])
        states, mask = context(g, s)
        x = torch.randn(s["batch"], channels, side, side, generator=g)
        t = torch.randint(0, model.noise_scheduler.config.num_train_timesteps, (s["batch"],), generator=g)
        z = torch.rand(s["batch"], 3, side, side, generator=g)
        return (x, z, t, states, mask.float()) if layout else (x, t, states, mask.float())

    def vae_example(s):
        g = torch.Generator().manual_seed(s["batch"] * 100 + s["side"])
        return (torch.randn(s["batch"], channels, s["side"], s["side"], generator=g),)

    seq = {0: "batch", 1: "sequence"}
    text_names = ["input_ids", "attention_mask"] + (["local_input_ids", "local_attention_mask", "local_mask"] if ccm else [])
    text_axes = {"input_ids": seq, "attention_mask": seq, "context": {0: "batch", 1: "context"}}
    if ccm:
        units = {0: "batch", 2: "unit_sequence"}
        text_axes.update(local_input_ids=units, local_attention_mask=units, local_mask={0: "batch"})
    fixed = 1 + (m if ccm else 0)
    contexts = [{"batch": 2, "context": fixed + 9}, {"batch": 3, "context": fixed + 5}]
    vfe_names = ["sample"] + (["layout"] if layout else []) + ["timestep", "encoder_hidden_states", "encoder_attention_mask"]
    specs = [GraphSpec("text_encoder", TextSideGraph(model).eval(), text_names, ["context"], text_axes, text_example,
                       [{"batch": 2, "length": 9, "unit_length": 5}, {"batch": 3, "length": 6, "unit_length": 4}])]
    if layout:
        specs.append(GraphSpec("tlg", TLGGraph(model).eval(), ["context", "context_mask"], ["layout"],
                               {"context": {0: "batch", 1: "context"}, "context_mask": {0: "batch", 1: "context"},
                                "layout": {0: "batch"}}, tlg_example, contexts))
    specs += [
        GraphSpec("vfe_unet", VFEGraph(model).eval(), vfe_names, ["prediction"],
                  {"sample": {0: "batch"}, "layout": {0: "batch"}, "timestep": {0: "batch"},
                   "encoder_hidden_states": {0: "batch", 1: "context"},
                   "encoder_attention_mask": {0: "batch", 1: "context"}, "prediction": {0: "batch"}},
                  vfe_example, contexts),
        GraphSpec("vae_decoder", VaeDecoderGraph(vae).eval(), ["latents"], ["images"],
                  {"latents": {0: "batch", 2: "height", 3: "width"}, "images": {0: "batch", 2: "height", 3: "width"}},
                  vae_example, [{"batch": 1, "side": side}, {"batch": 2, "side": side + 2}]),
    ]
    return specs


@torch.no_grad()
def merge_lvlm(adapted, merged) -> dict[str, Any]:
    """Fold `merged`'s LVLM LoRA into its CLIP in place; check it against `adapted` (same weights, unmerged)."""
    from serving.export.lora import merge_check, merge_injected_lora, plain_state

    base = plain_state(adapted.lvlm.model.state_dict())
    layers = merge_injected_lora(merged.lvlm.model)
    if not layers:
        raise ValueError("the VLAD's LVLM has no LoRA layer to merge: was it saved by VLAD.save_pretrained?")
    inputs, _ = text_inputs(adapted, E2E_PROMPTS)
    report = merge_check(base, merged.lvlm.model.state_dict(), adapted.cfg.lvlm_lora.target_modules,
                         adapted.condition(E2E_PROMPTS).tokens, TextSideGraph(merged)(**inputs))
    return {**report, "merged_layers": len(layers)}


@torch.no_grad()
def onnx_images(graphs, model, prompts: list[str], noise: torch.Tensor, steps: int) -> torch.Tensor:
    """`VLAD.generate` with the ONNX graphs in place of the modules, from the given noise."""
    from components.diffusion import make_sampling_scheduler, sample
    from components.models.vlad import VLAD

    diffusion = model.cfg.diffusion
    inputs, mask = text_inputs(model, prompts)
    tokens = graphs.run("text_encoder", **inputs)  # (B, T, P)
    layout = graphs.run("tlg", context=tokens, context_mask=mask) if model.tlg is not None else None
    uncond, uncond_mask = None, None
    if diffusion.guidance_scale > 1.0:
        empty_inputs, empty_mask = text_inputs(model, [""])
        uncond = VLAD._pad(graphs.run("text_encoder", **empty_inputs), tokens.shape[1])
        uncond_mask = VLAD._pad(empty_mask, tokens.shape[1])
    batch = len(prompts)

    def denoise(x, t, context):
        m, z = mask, layout
        if x.shape[0] == 2 * batch:  # classifier-free guidance: [uncond; cond], as VLAD._denoiser
            m = torch.cat([uncond_mask.expand(batch, -1), mask])
            z = torch.cat([layout, layout]) if layout is not None else None
        extra = {"layout": z} if z is not None else {}
        return graphs.run("vfe_unet", sample=x, timestep=t, encoder_hidden_states=context,
                          encoder_attention_mask=m.float(), **extra)

    latents = sample(denoise, make_sampling_scheduler(model.noise_scheduler, diffusion.sampler), tokens, uncond,
                     latent_shape=tuple(noise.shape[1:]), num_inference_steps=steps,
                     guidance_scale=diffusion.guidance_scale, latents=noise)
    return graphs.run("vae_decoder", latents=latents)


def export(model_dir: Path, out: Path, e2e_steps: int = 4) -> dict[str, Any]:
    """Write `pytorch/` and `onnx/` of a registered VLAD folder into `out`; the manifest's sections."""
    from components.models.autoencoder import load_autoencoder
    from components.models.vlad import VLAD
    from serving.bundle import copy_tree
    from serving.export.family_parity import OnnxGraphs, end_to_end_record, export_and_check, onnx_section
    from serving.export.sd_base import vae_factor

    if not (model_dir / "vae" / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no vae/: a vlad bundle needs the VAE it was trained with")
    if not (model_dir / "tokenizer" / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{model_dir}/tokenizer/tokenizer.json is missing: bundles carry a fast tokenizer only")
    copy_tree(model_dir, out / "pytorch")
    adapted = VLAD.from_pretrained(out / "pytorch").eval()  # as trained: the reference for every check
    merged = VLAD.from_pretrained(out / "pytorch").eval()
    vae = load_autoencoder(out / "pytorch" / "vae").eval()
    lora = merge_lvlm(adapted, merged)

    specs = graph_specs(merged, vae)
    paths, rows = export_and_check(specs, out / "onnx")

    diffusion = adapted.cfg.diffusion
    channels, side, _ = adapted.latent_shape
    noise = torch.randn((len(E2E_PROMPTS), channels, side, side), generator=torch.Generator().manual_seed(0))
    graphs = OnnxGraphs(out / "onnx", [s.name for s in specs])
    got = onnx_images(graphs, adapted, E2E_PROMPTS, noise, e2e_steps)
    # the same noise: `sample` draws torch.randn((B, C, h, w)) from this generator first
    want, _ = adapted.generate(E2E_PROMPTS, vae, num_inference_steps=e2e_steps,
                               generator=torch.Generator().manual_seed(0))
    end_to_end = end_to_end_record(got, want, prompts=E2E_PROMPTS, seed=0, steps=e2e_steps,
                                   guidance_scale=diffusion.guidance_scale, sampler=diffusion.sampler,
                                   reference="VLAD.generate with the LVLM's LoRA unmerged (as trained)")
    return {
        "layout": {"onnx": "onnx", "pytorch": "pytorch", "tokenizer": "pytorch/tokenizer",
                   "scheduler": "pytorch/scheduler"},
        "onnx": onnx_section(paths, specs, lora),
        "pytorch": {"weights": "safetensors", "lora": "LVLM LoRA factors unmerged in vlad.safetensors "
                    "(VLAD.from_pretrained injects and loads them)",
                    "attention_processor": "diffusers' default (PyTorch SDPA); the Triton processor is wired into "
                    "sd_base's production sampler only"},
        "parity": {"atol": ATOL, "rtol": RTOL, "device": "cpu", "graphs": rows, "end_to_end": end_to_end,
                   "lora_merge": lora, "passed": all(r["passed"] for r in rows) and end_to_end["passed"] and lora["passed"]},
        "serving": {"allowed_sides": [side * vae_factor(vae)], "max_prompt_tokens": adapted.lvlm.max_length,
                    "max_local_units": adapted.cfg.max_local_units,
                    "host_side": "prompt decomposition (decompose_prompt), tokenization, the context mask and "
                                 "classifier-free guidance's sampling loop (components.diffusion.sample)"},
    }
