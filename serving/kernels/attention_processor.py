"""A diffusers attention processor that runs `Attention` (self and cross) through the Triton kernel.

`UNet2DConditionModel` builds its `Attention` modules with `AttnProcessor2_0`, which calls
`scaled_dot_product_attention` directly; diffusers' attention-backend switch does not reach it, so the
kernel is installed by replacing the processor on every module:

    unet.set_attn_processor(TritonAttnProcessor())

Everything around the attention product (spatial norm, group norm, cross-attention norm, q/k norms,
output projection, residual connection, output rescaling) follows `AttnProcessor2_0` line for line, so
PEFT-LoRA-wrapped `to_q` / `to_k` / `to_v` / `to_out.0` projections work unchanged. What the kernel does
not cover (an attention mask, a dtype or device it cannot run) goes to `scaled_dot_product_attention`,
and the first time each reason occurs it is logged.
"""

import logging

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from serving.kernels.flash_attention import flash_attention, unsupported_reason

logger = logging.getLogger(__name__)


class TritonAttnProcessor:
    """diffusers `Attention` processor computing softmax(QK^T * scale) V with the Triton kernel.

    One instance may serve every module of a model; `kernel_calls` and `fallback_calls` count what ran.
    """

    def __init__(self) -> None:
        self.fallback_reasons: set[str] = set()
        self.kernel_calls = 0
        self.fallback_calls = 0

    def _fall_back(self, reason: str) -> None:
        """Count an SDPA fallback and log its reason the first time it is seen."""
        self.fallback_calls += 1
        if reason not in self.fallback_reasons:
            self.fallback_reasons.add(reason)
            logger.warning(
                "TritonAttnProcessor: using scaled_dot_product_attention instead of Triton: %s", reason
            )

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if attn.added_kv_proj_dim is not None:
            raise ValueError(
                "TritonAttnProcessor does not handle `Attention` with added key/value projections "
                f"(added_kv_proj_dim={attn.added_kv_proj_dim}); keep AttnAddedKVProcessor2_0 on those modules"
            )
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(
                1, 2
            )  # (B, HW, C)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)  # (B, N_q, H*D)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)  # (B, N_kv, H*D)
        value = attn.to_v(encoder_hidden_states)  # (B, N_kv, H*D)

        head_dim = key.shape[-1] // attn.heads
        # Strided views, no copies: the kernel takes any strides.
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, H, N_q, D)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, H, N_kv, D)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, H, N_kv, D)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        reason = (
            "an attention mask was given"
            if attention_mask is not None
            else unsupported_reason(query, key, value)
        )
        if reason is None:
            self.kernel_calls += 1
            hidden_states = flash_attention(query, key, value, scale=attn.scale)  # (B, H, N_q, D)
        else:
            self._fall_back(reason)
            hidden_states = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False, scale=attn.scale
            )  # (B, H, N_q, D)

        hidden_states = hidden_states.transpose(1, 2).reshape(
            batch_size, -1, attn.heads * head_dim
        )  # (B, N_q, H*D)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
