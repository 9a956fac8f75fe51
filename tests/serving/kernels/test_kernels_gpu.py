"""The attention kernel compiled and run on a CUDA GPU: the bf16 grid the interpreter cannot check,
the real SD UNet shapes, autotuning over the full config set, and the processor in half precision."""

import copy

import pytest
import torch

from serving.kernels.flash_attention import GPU_CONFIGS, INTERPRET, attention_forward_kernel, flash_attention
from serving.kernels.selftest import ParityCase, attention_error_bound, make_inputs, parity_grid, run_case

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or INTERPRET, reason="needs a CUDA GPU, interpreter off"
    ),
]

BF16_AND_LARGE = [
    c for c in parity_grid(include_bf16=True, include_large=True) if c.dtype == "bfloat16" or c.n_q >= 1024
]


@pytest.mark.parametrize("case", BF16_AND_LARGE, ids=lambda c: f"{c.shape}-{c.dtype}-{c.layout}")
def test_kernel_matches_sdpa_on_gpu(case: ParityCase):
    result = run_case(case, torch.device("cuda"))
    assert result.all_written, "the kernel left output elements unwritten"
    # Each element within the error its arithmetic allows (selftest.attention_error_bound).
    assert result.passed, f"max abs error {result.max_abs_error:.3e}, {result.error_to_bound:.2f}x its bound"


def test_autotuner_picks_from_the_gpu_config_set():
    assert len(attention_forward_kernel.configs) == len(GPU_CONFIGS) > 1
    case = ParityCase(2, 5, 4096, 77, 64, "float16", "bnhd")
    query, key, value = make_inputs(case, torch.device("cuda"))
    out = flash_attention(query, key, value)
    assert attention_forward_kernel.best_config in GPU_CONFIGS
    expected, bound = attention_error_bound(query, key, value)  # float64, and fp16's error bound per element
    assert ((out.double() - expected).abs() <= bound).all()


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_unet_processor_in_half_precision_on_gpu(dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    from serving.kernels.attention_processor import TritonAttnProcessor

    torch.manual_seed(0)
    unet = (
        UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            block_out_channels=(320, 640),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=64,
            attention_head_dim=8,  # 8 heads of width 40 and 80, as in SD-1.x
        )
        .to("cuda", dtype)
        .eval()
    )
    latents = torch.randn(2, 4, 32, 32, device="cuda", dtype=dtype)
    text = torch.randn(2, 77, 64, device="cuda", dtype=dtype)
    timesteps = torch.tensor([10, 700], device="cuda")
    truth = copy.deepcopy(unet).double()(latents.double(), timesteps, text.double()).sample
    expected = unet(latents, timesteps, text).sample
    processor = TritonAttnProcessor()
    unet.set_attn_processor(processor)
    result = unet(latents, timesteps, text).sample
    assert processor.kernel_calls == 8 and processor.fallback_calls == 0
    # Both paths round every layer in half precision and differ only in the attention product, whose
    # error bound is the same for SDPA and the kernel: the Triton path may be at most twice as far from
    # the float64 network as PyTorch's own (see test_kernels_attention_processor.py).
    triton_error = (result.double() - truth).abs().max()
    pytorch_error = (expected.double() - truth).abs().max()
    assert triton_error <= 2 * pytorch_error, f"Triton {triton_error:.3e}, PyTorch {pytorch_error:.3e}"
