"""Triton fused-attention kernels for production sampling on NVIDIA GPUs.

- `flash_attention`: the forward kernel and its launcher (`flash_attention(q, k, v)`).
- `attention_processor`: `TritonAttnProcessor`, installed on a diffusers UNet with
  `unet.set_attn_processor(TritonAttnProcessor())`.
- `selftest`: the parity grid behind `genops kernels selftest`.

Submodules are imported explicitly: whether triton runs kernels through its CPU interpreter is decided
when `flash_attention` is first imported (TRITON_INTERPRET), so importing this package does not do it.
"""
