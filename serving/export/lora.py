"""Merging PEFT LoRA adapters before export, and proving the merge happened.

ONNX graphs carry plain weights: an adapter is folded in first (W' = W + alpha/r B A, Hu et al. 2021,
eq. 3), so the exported encoder runs one matmul per projection instead of three. A merge that silently
did nothing (an adapter never loaded, a zero B) would export the *base* model with a green parity check,
because parity compares the graph against the merged module. So `merge_check` compares the weights
themselves: every LoRA-targeted weight must differ from the base, every other weight must be identical,
and the merged module's output must match the adapted (unmerged) module's within the export tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from serving.export.onnx_graphs import ATOL, RTOL


def plain_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A PEFT-adapted module's state under the plain module's key names: adapter factors dropped,
    `.base_layer.` removed (PeftModel's `base_model.model.` prefix too)."""
    out = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        out[key.removeprefix("base_model.model.").replace(".base_layer.", ".")] = value.detach().clone()
    return out


def merge_injected_lora(model: nn.Module) -> list[str]:
    """Fold every LoRA layer that `peft.inject_adapter_in_model` put into `model` into its base Linear, and put
    the base Linear back in its place; returns the merged layers' names. (A `PeftModel` has `merge_and_unload`.)"""
    from peft.tuners.lora import LoraLayer

    merged = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoraLayer):
            continue
        module.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
        merged.append(name)
    return merged


@torch.no_grad()
def merge_check(base: dict[str, torch.Tensor], merged: dict[str, torch.Tensor], target_modules: Sequence[str],
                adapted_output: torch.Tensor, merged_output: torch.Tensor) -> dict:
    """The manifest's record of a merge: which weights changed against the base, and the output parity of the
    merged module against the adapted one. Raises when the merge cannot be right (nothing changed, a
    non-target weight changed, keys differ); `passed` is the output parity at the export tolerance."""
    if set(base) != set(merged):
        raise ValueError(f"merged weights have other keys than the base: {sorted(set(base) ^ set(merged))[:6]}")
    targets = sorted(k for k in base if any(k.endswith(f".{t}.weight") for t in target_modules))
    if not targets:
        raise ValueError(f"no weight of the base model belongs to a LoRA target module {list(target_modules)}")
    delta = {k: float((merged[k].double() - base[k].double()).abs().max()) for k in base}
    unchanged = [k for k in targets if delta[k] == 0.0]
    if unchanged:
        raise ValueError(f"LoRA merge changed none of {len(unchanged)} target weights (e.g. {unchanged[0]}): the "
                         "adapter was not loaded or is zero, and the export would carry the base model")
    stray = [k for k in base if k not in targets and delta[k] != 0.0]
    if stray:
        raise ValueError(f"LoRA merge changed weights outside the target modules: {stray[:6]}")
    expected, got = adapted_output.double().numpy(), merged_output.double().numpy()
    diff = np.abs(got - expected)
    return {
        "target_modules": list(target_modules),
        "changed_weights": len(targets),
        "unchanged_weights": len(base) - len(targets),
        "min_weight_change": min(delta[k] for k in targets),
        "max_weight_change": max(delta[k] for k in targets),
        "output_max_abs_diff": float(diff.max()),
        "output_vs": "the adapted (unmerged) PyTorch module on the same inputs",
        "atol": ATOL, "rtol": RTOL,
        "passed": bool(np.allclose(got, expected, atol=ATOL, rtol=RTOL)),
    }
