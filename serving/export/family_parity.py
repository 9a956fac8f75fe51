"""What the family exporters share: export-and-check a list of graphs, run exported graphs as a pipeline on
onnxruntime (CPU), and the end-to-end record of an ONNX pipeline against the PyTorch model it came from."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from serving.export.onnx_graphs import OPSET, GraphSpec, cpu_session, export_graph, graph_parity, onnx_feed

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def attention_slow_path() -> Iterator[None]:
    """torch.nn.MultiheadAttention / TransformerEncoderLayer without their fused inference kernels
    (`_native_multi_head_attention`, `_transformer_encoder_layer_fwd`: no ONNX symbolic), so the tracer records
    the plain ops and PyTorch's reference output comes from the same math the graph holds."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def export_and_check(specs: Sequence[GraphSpec], onnx_dir: Path) -> tuple[dict[str, str], list[dict]]:
    """Export every spec to `onnx_dir` and check it on its two shapes: ({graph: bundle path}, parity rows)."""
    paths, rows = {}, []
    for spec in specs:
        with attention_slow_path():
            path = export_graph(spec, onnx_dir)[0]
            graph_rows = graph_parity(spec, path)
        rows.extend(graph_rows)
        paths[spec.name] = f"{onnx_dir.name}/{path.name}"
        logger.info("exported %s; parity max|ort-torch| %s", path.name, [f"{r['max_abs_err']:.1e}" for r in graph_rows])
    return paths, rows


def onnx_section(paths: dict[str, str], specs: Sequence[GraphSpec], lora: Any) -> dict[str, Any]:
    """The manifest's `onnx` section: files, each graph's named inputs/outputs and dynamic axes, the LoRA merge."""
    return {
        "opset": OPSET, "exporter": "torch.onnx.export(dynamo=False)", "torch": torch.__version__,
        "graphs": paths,
        "io": {s.name: {"inputs": s.input_names, "outputs": s.output_names,
                        "dynamic_axes": {k: {str(a): n for a, n in v.items()} for k, v in s.dynamic_axes.items()}}
               for s in specs},
        "lora_merged": lora,
    }


class OnnxGraphs:
    """One CPU onnxruntime session per exported graph; `run(name, **inputs)` -> its first output as a tensor."""

    def __init__(self, onnx_dir: Path, names: Sequence[str]):
        self.sessions = {name: cpu_session(onnx_dir / f"{name}.onnx") for name in names}

    def run(self, name: str, **inputs: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.sessions[name].run(None, onnx_feed(inputs))[0])


def end_to_end_record(onnx_images: torch.Tensor, torch_images: torch.Tensor, **facts: Any) -> dict[str, Any]:
    """Max pixel difference of two pipelines' images (in [-1, 1]) against one uint8 level (families.PIXEL_LEVEL)."""
    from serving.export.families import E2E_TOLERANCE_REASON, PIXEL_LEVEL

    if onnx_images.shape != torch_images.shape:
        raise AssertionError(f"ONNX pipeline images {tuple(onnx_images.shape)} vs PyTorch {tuple(torch_images.shape)}")
    diff = float((onnx_images.double() - torch_images.double()).abs().max())
    return {**facts, "max_abs_pixel_diff": diff, "tolerance": PIXEL_LEVEL, "tolerance_reason": E2E_TOLERANCE_REASON,
            "passed": diff <= PIXEL_LEVEL}
