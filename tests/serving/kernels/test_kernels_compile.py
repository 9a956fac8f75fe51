"""Compile-only checks of the attention kernel for sm_80 (A100) and sm_90 (H100), without a GPU.

The interpreter runs none of the GPU lowering (layouts, MMA selection, software pipelining, ptxas), so
GPU-only compile errors and shared-memory overruns would otherwise first show up on a GPU node. Here
`triton.compile(..., target=GPUTarget("cuda", cc, 32))` builds the real binaries in subprocesses with
TRITON_INTERPRET unset.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from serving.kernels.flash_attention import (
    GPU_CONFIGS,
    SHARED_MEMORY_LIMITS,
    configs_that_fit,
    estimated_shared_memory,
    padded_head_dim,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
# Per target: (head_dim, dtype). d=160 is padded to 256 and needs the most shared memory; SD-2.x's d=64
# runs in fp16 on H100; SD-1.x's d=40 exercises the alignment hints (stride 40 is not 16-divisible).
# fp32 (3xTF32) compiles take ~45 s each here, so its GPU build is left to the gpu-marked tests.
TARGETS = {80: [(40, "float16"), (160, "bfloat16")], 90: [(64, "float16"), (160, "bfloat16")]}

COMPILE_SCRIPT = """
import json, sys
import torch
from serving.kernels.flash_attention import (
    GPU_CONFIGS, SHARED_MEMORY_LIMITS, compile_for_gpu, configs_that_fit, estimated_shared_memory,
    padded_head_dim,
)
capability = int(sys.argv[1])
for spec in sys.argv[2:]:
    head_dim, dtype_name = spec.split(":")
    head_dim, dtype = int(head_dim), getattr(torch, dtype_name)
    size = dtype.itemsize
    fitting = configs_that_fit(GPU_CONFIGS, padded_head_dim(head_dim), size, SHARED_MEMORY_LIMITS[capability])
    # The hungriest tiling the autotuner may pick on this target is the one that can overrun.
    config = max(fitting, key=lambda c: estimated_shared_memory(c, padded_head_dim(head_dim), size))
    kernel = compile_for_gpu(capability, head_dim, dtype, config)
    print(json.dumps({
        "head_dim": head_dim, "dtype": dtype_name, "config": str(config),
        "shared": kernel.metadata.shared,
        "estimate": estimated_shared_memory(config, padded_head_dim(head_dim), size),
        "cubin_bytes": len(kernel.asm["cubin"]),
        "ptx_target": next(line for line in kernel.asm["ptx"].splitlines() if line.startswith(".target")),
    }), flush=True)
"""


@pytest.mark.slow
def test_kernel_compiles_for_sm80_and_sm90_within_shared_memory():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # Both targets compile at once; each process pays triton's start-up once.
    processes = {
        capability: subprocess.Popen(
            [sys.executable, "-c", COMPILE_SCRIPT, str(capability), *(f"{d}:{t}" for d, t in cases)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for capability, cases in TARGETS.items()
    }
    for capability, process in processes.items():
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, f"sm_{capability} compile failed:\n{stderr[-4000:]}"
        results = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        assert [(r["head_dim"], r["dtype"]) for r in results] == TARGETS[capability]
        for r in results:
            where = f"sm_{capability} d={r['head_dim']} {r['dtype']} {r['config']}"
            assert r["cubin_bytes"] > 0, where
            assert r["ptx_target"].startswith(f".target sm_{capability}"), where
            assert 0 < r["shared"] <= SHARED_MEMORY_LIMITS[capability], where
            # The autotuner prunes by the estimate, so it must never undercount.
            assert r["shared"] <= r["estimate"], where


@pytest.mark.parametrize("capability", [80, 86, 90])
@pytest.mark.parametrize("head_dim", [40, 64, 80, 128, 160])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_sd_head_dim_has_a_config_that_fits(capability: int, head_dim: int, dtype: torch.dtype):
    fitting = configs_that_fit(
        GPU_CONFIGS, padded_head_dim(head_dim), dtype.itemsize, SHARED_MEMORY_LIMITS[capability]
    )
    assert fitting, f"no {dtype} tiling for d={head_dim} fits sm_{capability}"
    assert all(
        estimated_shared_memory(c, padded_head_dim(head_dim), dtype.itemsize)
        <= SHARED_MEMORY_LIMITS[capability]
        for c in fitting
    )
