"""Throughput of the Triton attention kernel vs PyTorch SDPA's flash backend on diffusion UNet shapes.

    .venv/bin/python benchmarks/attention.py [--dtype float16|bfloat16] [--batch 2]

Rows are the attention calls of one UNet step at 512 px (64x64 latents, batch 2 for classifier-free
guidance): SD-2.1 (heads of width 64: 5/10/20 heads at 4096/1024/256 tokens) and SD-1.x (8 heads of
width 40/80/160), self-attention and cross-attention onto 77 text tokens, plus the FlashAttention
papers' benchmark shape (batch 4, 32 heads, 4096 tokens, d = 64) to compare with published numbers
(H100, forward, d = 64: FlashAttention-2 ~324 TFLOP/s, the Triton tutorial kernel ~400).
Both run on the (B, H, N, D) views diffusers passes; TFLOP/s counts 4 * B * H * N_q * N_kv * D.
Without a CUDA GPU there is nothing to measure: it says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from machine_load import start_watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (label, heads, n_q, n_kv, head_dim); batch comes from --batch except for the anchor row.
UNET_SHAPES = [
    ("SD-2.1 L1 self", 5, 4096, 4096, 64),
    ("SD-2.1 L1 cross", 5, 4096, 77, 64),
    ("SD-2.1 L2 self", 10, 1024, 1024, 64),
    ("SD-2.1 L3 self", 20, 256, 256, 64),
    ("SD-1.x L1 self", 8, 4096, 4096, 40),
    ("SD-1.x L1 cross", 8, 4096, 77, 40),
    ("SD-1.x L2 self", 8, 1024, 1024, 80),
    ("SD-1.x L2 cross", 8, 1024, 77, 80),
    ("SD-1.x L3 self", 8, 256, 256, 160),
    ("SD-1.x L3 cross", 8, 256, 77, 160),
]
ANCHOR = ("FA-2 paper shape", 4, 32, 4096, 4096, 64)


def diffusers_layout(batch: int, heads: int, tokens: int, head_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """A (B, H, N, D) view of a (B, N, H*D) projection output, as diffusers hands it to attention."""
    return (
        torch.randn(batch, tokens, heads * head_dim, device="cuda", dtype=dtype)
        .view(batch, tokens, heads, head_dim)
        .transpose(1, 2)
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16", help="input dtype")
    parser.add_argument("--batch", type=int, default=2, help="UNet batch (2 = one image with CFG)")
    parser.add_argument(
        "--rep", type=int, default=200, help="milliseconds of timed repetitions per measurement"
    )
    args = parser.parse_args()
    machine = start_watch()

    if not torch.cuda.is_available():
        print("No CUDA GPU on this machine: the Triton kernel's throughput can only be measured on a GPU.")
        print("Nothing measured. Run it on a CUDA node; `genops kernels selftest` checks correctness on CPU.")
        return 0
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("TRITON_INTERPRET=1 would time the CPU interpreter: unset it to benchmark the compiled kernel.")
        return 2

    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from serving.kernels.flash_attention import attention_forward_kernel, flash_attention

    dtype = getattr(torch, args.dtype)
    rows = [(label, args.batch, heads, n_q, n_kv, d) for label, heads, n_q, n_kv, d in UNET_SHAPES] + [ANCHOR]
    print(
        f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}"
        f" | {args.dtype}"
    )
    measured = []
    for label, batch, heads, n_q, n_kv, head_dim in rows:
        torch.manual_seed(0)
        q = diffusers_layout(batch, heads, n_q, head_dim, dtype)  # (B, H, N_q, D)
        k = diffusers_layout(batch, heads, n_kv, head_dim, dtype)  # (B, H, N_kv, D)
        v = diffusers_layout(batch, heads, n_kv, head_dim, dtype)  # (B, H, N_kv, D)
        flops = 4 * batch * heads * n_q * n_kv * head_dim

        out = flash_attention(q, k, v)  # the first call autotunes for this (N_q, N_kv, d)
        config = attention_forward_kernel.best_config
        triton_ms = triton.testing.do_bench(lambda q=q, k=k, v=v: flash_attention(q, k, v), rep=args.rep)
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
                sdpa_ms = triton.testing.do_bench(
                    lambda q=q, k=k, v=v: torch.nn.functional.scaled_dot_product_attention(q, k, v),
                    rep=args.rep,
                )
            sdpa_tflops = flops / sdpa_ms * 1e-9
            max_err = f"{(out.float() - expected.float()).abs().max().item():9.1e}"
            sdpa_text, ratio_text = f"{sdpa_tflops:19.1f}", f"{flops / triton_ms * 1e-9 / sdpa_tflops:6.2f}"
        except RuntimeError as error:
            print(f"  SDPA flash backend unavailable for {label}: {error}")
            sdpa_text, ratio_text, max_err = f"{'n/a':>19}", f"{'n/a':>6}", f"{'n/a':>9}"
        tiling = (
            f"{config.kwargs['BLOCK_M']}x{config.kwargs['BLOCK_N']} w{config.num_warps} s{config.num_stages}"
        )
        measured.append(
            f"{label:<18} {f'{batch}x{heads}':>6} {f'{n_q}x{n_kv}':>11} {head_dim:>4} "
            f"{flops / triton_ms * 1e-9:15.1f} {sdpa_text} {ratio_text} {max_err}  {tiling}"
        )

    machine.report()
    header = (
        f"{'shape':<18} {'BxH':>6} {'N_q x N_kv':>11} {'d':>4}"
        f" {'triton TFLOP/s':>15} {'SDPA flash TFLOP/s':>19}"
        f" {'ratio':>6} {'max err':>9}  best config"
    )
    print(header)
    print("-" * len(header))
    for line in measured:
        print(line)
    print("ratio = Triton / SDPA flash throughput (> 1: the Triton kernel is faster).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
