"""ONNX graphs of a family's sampling-time submodels, and their parity with PyTorch on onnxruntime (CPU).

Exporter: the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`), on purpose. torch 2.13's
default, the dynamo exporter, traces through `torch.export` and needs every dynamic dimension to be
provable from the code; diffusers' UNet2DConditionModel branches on the latent size
(`forward_upsample_size` when a side is not a multiple of the upsampling factor) and transformers' CLIP
builds its causal mask from the sequence length, so dynamo specialises or rejects the batch/spatial/
sequence axes these graphs must keep dynamic. The TorchScript tracer records the ops of one run and
leaves the named `dynamic_axes` symbolic, which is how the Stable Diffusion ONNX exports in the
ecosystem (diffusers' convert_stable_diffusion_checkpoint_to_onnx, optimum) are made.

Opset 17: the first opset with a native LayerNormalization (the CLIP text encoder and the UNet's
transformer blocks become one node each instead of a ReduceMean/Sub/Pow chain), supported by every
onnxruntime execution provider we use (CPU, CUDA, TensorRT); nothing in these models needs a later op
(GroupNormalization, opset 18/21, has a known definition change between 18 and 21, so GroupNorm stays
the decomposed InstanceNorm form every runtime runs).

optimum is not used: it is not installed beside the lock (its releases pin transformers/torch ranges
that exclude transformers 5.x / torch 2.13 here), and its exporters know diffusers' stock pipelines by
their class: sd_base's UNet may carry genops' `PositionedProjection`, and its VAE decoder graph must
include genops' latent scaling and clamp, so a small exporter here keeps every input/output named as
genops' sampler expects.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

OPSET = 17
ATOL = 1e-4
RTOL = 1e-3
# protobuf refuses a message over 2 GiB: graphs whose weights pass this go to an external data file
EXTERNAL_DATA_BYTES = 1 << 30


@dataclass
class GraphSpec:
    """One submodel to export: a module taking and returning tensors, its named inputs and dynamic axes."""

    name: str  # file stem: <name>.onnx
    module: nn.Module
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    # parity inputs: a function of a shape key -> the example tensors (in input_names order)
    make_inputs: Callable[[dict[str, int]], tuple[torch.Tensor, ...]]
    # two shapes for parity; the first also traces the export
    shapes: Sequence[dict[str, int]] = field(default_factory=list)


def parameter_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _export(spec: GraphSpec, example: tuple[torch.Tensor, ...], path: Path) -> None:
    torch.onnx.export(
        spec.module, example, str(path), dynamo=False, opset_version=OPSET,
        input_names=spec.input_names, output_names=spec.output_names, dynamic_axes=spec.dynamic_axes,
        do_constant_folding=True,
    )


@torch.no_grad()
def export_graph(spec: GraphSpec, out_dir: Path) -> list[Path]:
    """Write `<out_dir>/<name>.onnx` (plus `<name>.onnx.data` for large weights); returns the files written."""
    import onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{spec.name}.onnx"
    example = spec.make_inputs(spec.shapes[0])
    spec.module.eval()
    with warnings.catch_warnings():
        # the tracer flags every Python branch on a shape; the ones in diffusers/transformers are shape checks
        # and size heuristics (e.g. `.contiguous()` above batch 64) that do not change values
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        _export(spec, example, path)
    files = [path]
    if parameter_bytes(spec.module) > EXTERNAL_DATA_BYTES:
        model = onnx.load(str(path))
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{spec.name}.onnx.data", size_threshold=1024)
        files.append(out_dir / f"{spec.name}.onnx.data")
    onnx.checker.check_model(str(path))
    return files


def onnx_feed(inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Torch inputs as an onnxruntime feed in the exported graphs' dtypes: bool stays bool, other integers
    become int64, floats float32."""
    return {k: v.numpy() if v.dtype == torch.bool else v.numpy().astype(np.float32 if v.is_floating_point() else np.int64)
            for k, v in inputs.items()}


def cpu_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def graph_parity(spec: GraphSpec, path: Path, atol: float = ATOL, rtol: float = RTOL) -> list[dict]:
    """onnxruntime (CPU) against PyTorch on each of the spec's shapes: max abs / relative error, pass/fail.

    Pass means |ort - torch| <= atol + rtol * |torch| elementwise (numpy.allclose), the issue's bound.
    """
    session = cpu_session(path)
    rows = []
    for shape in spec.shapes:
        inputs = spec.make_inputs(shape)
        expected = spec.module(*inputs)
        expected = (expected if isinstance(expected, tuple) else (expected,))[0].float().numpy()
        got = session.run(None, {n: t.numpy() for n, t in zip(spec.input_names, inputs)})[0]
        if got.shape != expected.shape:
            raise AssertionError(f"{spec.name}: ONNX output {got.shape} vs PyTorch {expected.shape} at {shape}")
        diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        rows.append({
            "graph": spec.name, "shape": dict(shape), "output_shape": list(expected.shape),
            "max_abs_err": float(diff.max()),
            "max_excess": float((diff - (atol + rtol * np.abs(expected))).max()),
            "atol": atol, "rtol": rtol,
            "passed": bool(np.allclose(got, expected, atol=atol, rtol=rtol)),
        })
    return rows
