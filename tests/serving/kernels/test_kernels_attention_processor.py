"""TritonAttnProcessor against diffusers' own processors: a tiny SD-style UNet end to end (with and
without PEFT LoRA adapters) and single `Attention` modules with every option the processor handles.

Tolerance rule: the Triton path and diffusers' own fp32 path are the same network except for the
attention product, whose fp32 error bound is the same for SDPA and the kernel (the formula is in
test_kernels_flash_attention.py); everything else rounds identically. So both are measured against the
same network run in float64, and the Triton path may be at most twice as far from it as PyTorch's own
fp32 path. That holds on any machine, whatever its rounding; a wiring mistake (head split, scale, norm,
residual, LoRA) moves the output by its own magnitude, 1e5 times more than fp32 rounding does here.
"""

import copy
import logging

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from peft import LoraConfig
from peft.tuners.lora import Linear as LoraLinear

from serving.kernels.attention_processor import TritonAttnProcessor
from serving.kernels.flash_attention import INTERPRET

pytestmark = pytest.mark.skipif(
    not INTERPRET and not torch.cuda.is_available(), reason="needs a CUDA GPU or TRITON_INTERPRET=1"
)
DEVICE = torch.device("cpu") if INTERPRET else torch.device("cuda")


def assert_as_accurate_as_pytorch(result: torch.Tensor, expected: torch.Tensor, truth: torch.Tensor) -> None:
    """The Triton path's max error against the float64 `truth` is at most twice PyTorch's `expected`'s."""
    triton_error = float((result.double() - truth).abs().max())
    pytorch_error = float((expected.double() - truth).abs().max())
    assert triton_error <= 2 * pytorch_error, (
        f"Triton path {triton_error:.3e} from float64, PyTorch's fp32 path {pytorch_error:.3e}"
    )


def float64_copy(module: torch.nn.Module) -> torch.nn.Module:
    """The same weights in float64 with diffusers' default processors: the ground truth."""
    return copy.deepcopy(module).double()


def tiny_unet() -> UNet2DConditionModel:
    """SD-style UNet: cross-attention transformer blocks at 16x16 (256 tokens) and in the 8x8 mid block."""
    torch.manual_seed(0)
    return (
        UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=2,  # diffusers reads this as the number of heads: heads of width 16 and 32
            norm_num_groups=8,
        )
        .to(DEVICE)
        .eval()
    )


def unet_inputs(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, size, size, generator=generator).to(DEVICE)  # (B, C, H, W)
    timesteps = torch.tensor([10, 700], device=DEVICE)
    text = torch.randn(2, 7, 32, generator=generator).to(DEVICE)  # (B, tokens, cross_attention_dim)
    return latents, timesteps, text


@torch.no_grad()
def test_unet_with_triton_processor_matches_default():
    unet = tiny_unet()
    latents, timesteps, text = unet_inputs(size=16)
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    truth = float64_copy(unet)(latents.double(), timesteps, text.double()).sample
    expected = unet(latents, timesteps, text).sample

    processor = TritonAttnProcessor()
    unet.set_attn_processor(processor)
    result = unet(latents, timesteps, text).sample

    # 4 attention layers (self + cross) in 2 down/up transformer blocks and the mid block.
    assert processor.kernel_calls == len(unet.attn_processors) == 8
    assert processor.fallback_calls == 0
    assert_as_accurate_as_pytorch(result, expected, truth)


@torch.no_grad()
def test_unet_with_lora_adapters_matches_default():
    unet = tiny_unet()
    # 8x8 latents (64 tokens) keep the interpreter quick; the 16x16 path is covered above.
    latents, timesteps, text = unet_inputs(size=8)
    base = unet(latents, timesteps, text).sample
    torch.manual_seed(2)
    # init_lora_weights=False draws non-zero B matrices, so the adapters change the output.
    unet.add_adapter(
        LoraConfig(
            r=4, lora_alpha=8, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]
        )
    )
    attention = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    assert all(
        isinstance(m, LoraLinear)
        for m in (attention.to_q, attention.to_k, attention.to_v, attention.to_out[0])
    )
    expected = unet(latents, timesteps, text).sample
    truth = float64_copy(unet)(latents.double(), timesteps, text.double()).sample
    assert (expected - base).abs().max() > 1e-3, "the LoRA adapters should change the output"

    processor = TritonAttnProcessor()
    unet.set_attn_processor(processor)
    result = unet(latents, timesteps, text).sample

    assert processor.kernel_calls == 8 and processor.fallback_calls == 0
    assert_as_accurate_as_pytorch(result, expected, truth)


ATTENTION_VARIANTS = {
    # VAE mid-block style: group norm on a 4-D feature map, residual connection, output rescaling.
    "group_norm_residual_rescale": (
        {
            "query_dim": 32,
            "heads": 2,
            "dim_head": 16,
            "norm_num_groups": 8,
            "residual_connection": True,
            "rescale_output_factor": 2.0,
            "bias": True,
            "eps": 1e-6,
        },
        "feature_map",
    ),
    # MoVQ decoder style: spatial norm conditioned on a quantised latent (temb).
    "spatial_norm": (
        {"query_dim": 32, "heads": 2, "dim_head": 16, "spatial_norm_dim": 4, "residual_connection": True},
        "spatial",
    ),
    "cross_layer_norm": (
        {
            "query_dim": 32,
            "cross_attention_dim": 24,
            "heads": 2,
            "dim_head": 40,
            "cross_attention_norm": "layer_norm",
        },
        "cross",
    ),
    "cross_group_norm": (
        {
            "query_dim": 32,
            "cross_attention_dim": 24,
            "heads": 2,
            "dim_head": 80,
            "cross_attention_norm": "group_norm",
            "cross_attention_norm_num_groups": 4,
        },
        "cross",
    ),
    "qk_layer_norm": ({"query_dim": 32, "heads": 4, "dim_head": 16, "qk_norm": "layer_norm"}, "tokens"),
}


def variant_inputs(kind: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(DEVICE)

    if kind == "feature_map":
        return {"hidden_states": randn(2, 32, 6, 5)}  # (B, C, H, W): 30 tokens
    if kind == "spatial":
        return {"hidden_states": randn(2, 32, 6, 6), "temb": randn(2, 4, 3, 3)}  # temb: (B, zq, h, w)
    if kind == "cross":
        return {"hidden_states": randn(2, 45, 32), "encoder_hidden_states": randn(2, 11, 24)}
    return {"hidden_states": randn(2, 37, 32)}


@pytest.mark.parametrize("variant", sorted(ATTENTION_VARIANTS))
@torch.no_grad()
def test_attention_options_match_attn_processor_2_0(variant: str):
    kwargs, kind = ATTENTION_VARIANTS[variant]
    torch.manual_seed(4)
    attn = Attention(**kwargs).to(DEVICE).eval()
    inputs = variant_inputs(kind)
    expected = AttnProcessor2_0()(attn, **inputs)
    truth = AttnProcessor2_0()(float64_copy(attn), **{name: t.double() for name, t in inputs.items()})

    processor = TritonAttnProcessor()
    result = processor(attn, **inputs)

    assert processor.kernel_calls == 1 and processor.fallback_calls == 0
    assert_as_accurate_as_pytorch(result, expected, truth)


@torch.no_grad()
def test_unscaled_attention_uses_attn_scale():
    # scale_qk=False gives attn.scale = 1; diffusers then defaults to AttnProcessor, which honours it.
    torch.manual_seed(5)
    attn = Attention(query_dim=32, heads=2, dim_head=16, scale_qk=False).to(DEVICE)
    hidden_states = 0.1 * torch.randn(2, 20, 32, device=DEVICE)
    assert attn.scale == 1.0 and isinstance(attn.processor, AttnProcessor)
    expected = AttnProcessor()(attn, hidden_states)
    truth = AttnProcessor()(float64_copy(attn), hidden_states.double())
    assert_as_accurate_as_pytorch(TritonAttnProcessor()(attn, hidden_states), expected, truth)


@torch.no_grad()
def test_attention_mask_falls_back_to_sdpa_and_says_so_once(caplog):
    torch.manual_seed(6)
    attn = Attention(query_dim=32, cross_attention_dim=24, heads=2, dim_head=16).to(DEVICE)
    hidden_states = torch.randn(2, 20, 32, device=DEVICE)
    text = torch.randn(2, 9, 24, device=DEVICE)
    mask = torch.zeros(2, 1, 9, device=DEVICE)
    mask[1, :, 5:] = -10000.0  # second prompt padded after 5 tokens
    expected = AttnProcessor2_0()(attn, hidden_states, text, attention_mask=mask)

    processor = TritonAttnProcessor()
    with caplog.at_level(logging.WARNING, logger="serving.kernels.attention_processor"):
        result = processor(attn, hidden_states, text, attention_mask=mask)
        processor(attn, hidden_states, text, attention_mask=mask)

    # The fallback is the very SDPA call AttnProcessor2_0 makes (scale 16^-0.5 is exact): bitwise equal.
    assert torch.equal(result, expected)
    assert processor.fallback_calls == 2 and processor.kernel_calls == 0
    warnings = [r.getMessage() for r in caplog.records if "attention mask" in r.getMessage()]
    assert len(warnings) == 1, warnings


@pytest.mark.skipif(not INTERPRET, reason="bf16 runs on the kernel when a GPU is present")
@torch.no_grad()
def test_bf16_under_the_interpreter_falls_back_with_the_reason(caplog):
    torch.manual_seed(7)
    attn = Attention(query_dim=32, heads=2, dim_head=16).to(torch.bfloat16)
    hidden_states = torch.randn(1, 20, 32, dtype=torch.bfloat16)
    processor = TritonAttnProcessor()
    with caplog.at_level(logging.WARNING, logger="serving.kernels.attention_processor"):
        result = processor(attn, hidden_states)
    # The fallback is AttnProcessor2_0's own SDPA call on the same bf16 tensors: bitwise equal.
    assert torch.equal(result, AttnProcessor2_0()(attn, hidden_states))
    assert processor.fallback_calls == 1
    assert any("bf16" in r.getMessage() for r in caplog.records)


def test_added_kv_projections_are_refused():
    attn = Attention(query_dim=32, heads=2, dim_head=16, added_kv_proj_dim=24)
    with pytest.raises(ValueError, match="added_kv_proj_dim"):
        TritonAttnProcessor()(attn, torch.randn(1, 4, 32), torch.randn(1, 3, 24))
