"""Forward fused attention for diffusion models, written in Triton.

FlashAttention-2 (Dao, 2023, arXiv:2307.08691) style: every program owns a BLOCK_M tile of queries of
one (batch, head), streams the keys and values through in BLOCK_N tiles, and keeps an online softmax
(running row max `m_i`, running denominator `l_i`, un-normalised fp32 accumulator `acc`), so the
N_q x N_kv score matrix never reaches global memory and the output is divided by `l_i` once at the end.

What diffusion UNets need and this kernel covers:
- no causal mask; query and key/value lengths that differ (4096 queries x 77 text tokens) and are not
  multiples of the block size (77, 300): the last key tile and the last query tile are masked;
- head dims 40 / 80 / 160 (SD-1.x) and 64 (SD-2.x, SDXL): padded to the next power of two, with masks;
- fp16 and bf16 (fp32 accumulation), and fp32 with 3xTF32 dot products (fp32-level accuracy on tensor cores);
- arbitrary strides: diffusers hands over (B, H, N, D) views of (B, N, H*D) projections.

`TRITON_INTERPRET=1` (set before this module is imported) runs the same kernel on CPU tensors. The
interpreter computes bf16 `tl.dot` wrongly and cannot autotune over several configs without a GPU
driver, so there bf16 is refused and a single config is used.
"""

import contextlib
import functools

import torch
import triton
import triton.language as tl

# Interpreted programs are chosen when `triton.jit` runs (TRITON_INTERPRET), so the mode is fixed at import.
INTERPRET = bool(triton.knobs.runtime.interpret)
MAX_HEAD_DIM = 256
# CUDA caps the second launch-grid axis, which carries batch x heads.
MAX_GRID_Y = 65535
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# log2(e): the softmax is computed with exp2, so the 1/sqrt(d) scale and log2(e) are folded into one factor.
LOG2_E = 1.4426950408889634


# The GPU autotune set, keyed on (N_q, N_kv, head dim): FA-2-like 128-query tiles for long latent
# sequences, 64-query tiles for short ones and for wide heads, whose tiles crowd shared memory.
GPU_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=1),
]
# Under the interpreter tiles are numpy arrays and autotuning needs a GPU driver: one small config.
INTERPRETER_CONFIG = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=1)
# Opt-in shared memory per thread block, in bytes, by compute capability (CUDA programming guide).
SHARED_MEMORY_LIMITS = {80: 166912, 86: 101376, 89: 101376, 90: 232448}


def estimated_shared_memory(config: triton.Config, block_d: int, element_size: int) -> int:
    """Upper estimate of a config's shared memory in bytes: the Q tile plus `num_stages` K and V tiles.

    fp32 runs its dots as 3xTF32, which keeps a second copy of the Q tile. The compile-only test checks
    this against what `triton.compile` reports for sm_80 and sm_90.
    """
    block_m, block_n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
    q_tiles = 2 if element_size == 4 else 1
    return element_size * block_d * (q_tiles * block_m + 2 * config.num_stages * block_n)


def configs_that_fit(
    configs: list[triton.Config], block_d: int, element_size: int, shared_memory_limit: int
) -> list[triton.Config]:
    """The configs whose estimated shared memory fits `shared_memory_limit` (possibly none)."""
    return [c for c in configs if estimated_shared_memory(c, block_d, element_size) <= shared_memory_limit]


@functools.cache
def _max_shared_memory(device_index: int) -> int:
    """Opt-in shared memory per block of a CUDA device, in bytes."""
    return triton.runtime.driver.active.utils.get_device_properties(device_index)["max_shared_mem"]


def _prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Autotuner hook: drop tilings the current GPU cannot hold (wide heads crowd shared memory).

    Never empty: `unsupported_reason` refuses inputs for which no config fits before launching.
    """
    query = named_args["Q"]
    limit = _max_shared_memory(query.device.index)
    return configs_that_fit(configs, kwargs["BLOCK_D"], query.element_size(), limit)


@triton.jit
def _load_tile(ptrs, row_mask, col_mask, MASK_ROWS: tl.constexpr, MASK_COLS: tl.constexpr):
    """Load a 2-D tile, masking only the axes that can run past the tensor (unmasked loads vectorise)."""
    if MASK_ROWS and MASK_COLS:
        return tl.load(ptrs, mask=row_mask[:, None] & col_mask[None, :], other=0.0)
    elif MASK_ROWS:
        return tl.load(ptrs, mask=row_mask[:, None], other=0.0)
    elif MASK_COLS:
        return tl.load(ptrs, mask=col_mask[None, :], other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def _attend_kv_range(
    acc, l_i, m_i, q,
    k_ptrs, v_ptrs, stride_kn, stride_vn,
    start_n, end_n, N_KV, qk_scale,
    offs_n, d_mask,
    BLOCK_N: tl.constexpr, PAD_D: tl.constexpr, MASK_KV: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Fold key/value tiles [start_n, end_n) into the online softmax state (FA-2, Algorithm 1, lines 6-10)."""
    for n in range(start_n, end_n, BLOCK_N):
        kv_mask = (n + offs_n) < N_KV
        k = _load_tile(k_ptrs + n * stride_kn, d_mask, kv_mask, PAD_D, MASK_KV)  # (BLOCK_D, BLOCK_N)
        qk = tl.dot(q, k, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N) fp32
        if MASK_KV:
            qk = tl.where(kv_mask[None, :], qk, float("-inf"))
        # Scores and maxima are kept in log2 units (s * scale * log2 e), so exp2 of their difference is
        # exactly the softmax's exp(s * scale - max); the scale rides along in one FMA.
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)  # (BLOCK_M,)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])  # (BLOCK_M, BLOCK_N)
        # Rescale what was accumulated under the old max; exp2(-inf) = 0 on the first tile.
        alpha = tl.math.exp2(m_i - m_new)  # (BLOCK_M,)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_tile(v_ptrs + n * stride_vn, kv_mask, d_mask, MASK_KV, PAD_D)  # (BLOCK_N, BLOCK_D)
        acc = acc * alpha[:, None]  # (BLOCK_M, BLOCK_D)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_D)
        m_i = m_new
    return acc, l_i, m_i


ON_GPU = torch.cuda.is_available() and not INTERPRET


@triton.autotune(
    configs=GPU_CONFIGS if ON_GPU else [INTERPRETER_CONFIG],
    key=["N_Q", "N_KV", "HEAD_DIM"],
    prune_configs_by={"early_config_prune": _prune_configs} if ON_GPU else None,
)
@triton.jit
def attention_forward_kernel(
    Q, K, V, Out,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    H, N_Q, N_KV, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr, VEC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program: BLOCK_M queries of one (batch, head) against all N_KV keys and values."""
    start_m = tl.program_id(0)
    off_bh = tl.program_id(1)
    # int64 base offsets: batch x head strides of large latents overflow int32.
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    PAD_D: tl.constexpr = BLOCK_D != HEAD_DIM

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    m_mask = offs_m < N_Q
    d_mask = offs_d < HEAD_DIM

    q_base = off_b * stride_qb + off_h * stride_qh
    k_base = off_b * stride_kb + off_h * stride_kh
    v_base = off_b * stride_vb + off_h * stride_vh
    o_base = off_b * stride_ob + off_h * stride_oh
    if VEC > 1:
        # The launcher checked that every row starts 16 bytes aligned. The JIT only marks strides that are
        # multiples of 16 elements, which d = 40 heads (stride 40) miss; without this hint their tiles
        # load element by element and cannot be pipelined with cp.async.
        q_base = tl.multiple_of(q_base, VEC)
        k_base = tl.multiple_of(k_base, VEC)
        v_base = tl.multiple_of(v_base, VEC)
        o_base = tl.multiple_of(o_base, VEC)
        stride_qn = tl.multiple_of(stride_qn, VEC)
        stride_kn = tl.multiple_of(stride_kn, VEC)
        stride_vn = tl.multiple_of(stride_vn, VEC)
        stride_on = tl.multiple_of(stride_on, VEC)

    q_ptrs = Q + q_base + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd
    # K is read transposed, (BLOCK_D, BLOCK_N), so q @ k needs no in-kernel transpose.
    k_ptrs = K + k_base + offs_d[:, None] * stride_kd + offs_n[None, :] * stride_kn
    v_ptrs = V + v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    q = _load_tile(q_ptrs, m_mask, d_mask, True, PAD_D)  # (BLOCK_M, BLOCK_D)

    # Full key tiles run unmasked; only the ragged last tile (77 text tokens, 300 latents) pays for masks.
    n_full = (N_KV // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _attend_kv_range(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, 0, n_full, N_KV, qk_scale,
        offs_n, d_mask, BLOCK_N, PAD_D, False, DOT_PRECISION,
    )
    acc, l_i, m_i = _attend_kv_range(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, n_full, N_KV, N_KV, qk_scale,
        offs_n, d_mask, BLOCK_N, PAD_D, True, DOT_PRECISION,
    )

    acc = acc / l_i[:, None]
    o_ptrs = Out + o_base + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od
    if PAD_D:
        tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])
    else:
        tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=m_mask[:, None])


def padded_head_dim(head_dim: int) -> int:
    """Head dim padded to a power of two (tl.arange needs one) of at least 16 (tl.dot's minimum K)."""
    return max(16, triton.next_power_of_2(head_dim))


def unsupported_reason(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> str | None:
    """Why the kernel cannot run these (B, H, N, D) tensors here, or None when it can."""
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        dims = f"{query.dim()}/{key.dim()}/{value.dim()}"
        return f"expected 4-D (batch, heads, tokens, head_dim) query/key/value, got {dims}-D"
    if not (query.dtype == key.dtype == value.dtype):
        return f"query/key/value dtypes differ ({query.dtype}, {key.dtype}, {value.dtype})"
    if query.dtype not in SUPPORTED_DTYPES:
        return f"dtype {query.dtype} is not one of fp16, bf16, fp32"
    if not (query.device == key.device == value.device):
        return f"query/key/value are on different devices ({query.device}, {key.device}, {value.device})"
    if INTERPRET:
        if query.device.type != "cpu":
            return f"the Triton interpreter (TRITON_INTERPRET=1) runs on CPU tensors, got {query.device}"
        if query.dtype == torch.bfloat16:
            return "the Triton interpreter computes bf16 tl.dot incorrectly; bf16 runs on a CUDA GPU only"
    elif query.device.type != "cuda":
        return f"tensors are on {query.device}; the compiled kernel needs a CUDA GPU (or TRITON_INTERPRET=1)"
    batch, heads, _, head_dim = query.shape
    if key.shape[:2] != (batch, heads) or value.shape[:2] != (batch, heads):
        shapes = f"query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"
        return f"batch/heads differ: {shapes}"
    if key.shape[2] != value.shape[2]:
        return f"key and value lengths differ ({key.shape[2]} vs {value.shape[2]})"
    if key.shape[2] == 0:
        return "key/value length is 0: softmax over no keys is undefined"
    if key.shape[3] != head_dim or value.shape[3] != head_dim:
        return f"head dims differ: query {head_dim}, key {key.shape[3]}, value {value.shape[3]}"
    if head_dim > MAX_HEAD_DIM:
        return f"head_dim {head_dim} exceeds the kernel's maximum of {MAX_HEAD_DIM}"
    if batch * heads > MAX_GRID_Y:
        return f"batch x heads = {batch * heads} exceeds the launch grid's second axis ({MAX_GRID_Y})"
    if ON_GPU and query.device.type == "cuda":
        block_d = padded_head_dim(head_dim)
        limit = _max_shared_memory(query.device.index)
        if not configs_that_fit(GPU_CONFIGS, block_d, query.element_size(), limit):
            smallest = min(estimated_shared_memory(c, block_d, query.element_size()) for c in GPU_CONFIGS)
            return (
                f"{query.dtype} heads of width {head_dim} need {smallest} bytes of shared memory per block; "
                f"{torch.cuda.get_device_name(query.device)} has {limit}"
            )
    return None


def _vector_width(*tensors: torch.Tensor) -> int:
    """Elements per 16-byte vector when every tensor's rows start 16-byte aligned, else 1 (no hint)."""
    vec = 16 // tensors[0].element_size()
    aligned = all(
        t.data_ptr() % 16 == 0 and t.stride(3) == 1 and all(s % vec == 0 for s in t.stride()[:3])
        for t in tensors
    )
    return vec if aligned else 1


def flash_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(query @ key^T * scale) @ value without a mask, like `scaled_dot_product_attention`.

    query: (B, H, N_q, D); key, value: (B, H, N_kv, D); any strides. scale defaults to 1/sqrt(D).
    The result is a (B, H, N_q, D) view of a (B, N_q, H, D) buffer, so the usual
    `.transpose(1, 2).reshape(B, N_q, H * D)` that follows is free. `out` may be given instead.
    Raises ValueError when the kernel cannot run the inputs here (see `unsupported_reason`).
    """
    reason = unsupported_reason(query, key, value)
    if reason is not None:
        raise ValueError(f"flash_attention: {reason}")
    batch, heads, n_q, head_dim = query.shape
    n_kv = key.shape[2]
    if out is None:
        out = torch.empty(batch, n_q, heads, head_dim, dtype=query.dtype, device=query.device).transpose(1, 2)
    elif out.shape != query.shape or out.dtype != query.dtype or out.device != query.device:
        raise ValueError(
            f"flash_attention: `out` must match query ({tuple(query.shape)}, {query.dtype}, {query.device}), "
            f"got ({tuple(out.shape)}, {out.dtype}, {out.device})"
        )
    if n_q == 0 or batch * heads == 0:
        return out
    scale = head_dim**-0.5 if scale is None else scale
    if not scale > 0:
        raise ValueError(f"flash_attention: `scale` must be positive (the running max needs it), got {scale}")

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(n_q, meta["BLOCK_M"]), batch * heads)

    # Keep launches on the tensors' GPU when several are visible.
    with torch.cuda.device(query.device) if query.is_cuda else contextlib.nullcontext():
        attention_forward_kernel[grid](
            query, key, value, out,
            *query.stride(), *key.stride(), *value.stride(), *out.stride(),
            heads, n_q, n_kv, scale * LOG2_E,
            HEAD_DIM=head_dim,
            BLOCK_D=padded_head_dim(head_dim),
            DOT_PRECISION="tf32x3" if query.dtype == torch.float32 else "tf32",
            VEC=_vector_width(query, key, value, out),
        )
    return out


def compile_for_gpu(
    capability: int, head_dim: int, dtype: torch.dtype, config: triton.Config, heads: int = 8, n_q: int = 4096
):
    """Build the kernel's GPU binary for sm_<capability> ahead of time; no GPU is needed, only ptxas.

    The arguments are specialised the way the launcher's JIT specialises a diffusers call: (B, H, N, D)
    views of a (B, N, H*D) projection, unit head-dim stride, 16-divisible strides and pointers marked as
    such. Returns triton's CompiledKernel; `.metadata.shared` is its shared memory in bytes. Raises
    RuntimeError under TRITON_INTERPRET=1, where no GPU code is generated.
    """
    if INTERPRET:
        raise RuntimeError("compile_for_gpu needs TRITON_INTERPRET unset: the interpreter makes no GPU code")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    element = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    # bnhd view strides of a (B, N, H*D) projection, for query and key/value alike.
    strides = {"b": n_q * heads * head_dim, "h": head_dim, "n": heads * head_dim}
    jit_fn = attention_forward_kernel.fn
    signature, constexprs, attrs = {}, {}, {}
    for index, name in enumerate(jit_fn.arg_names):
        if name in ("Q", "K", "V", "Out"):
            signature[name] = f"*{element}"
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif name.startswith("stride_") and name.endswith("d"):
            signature[name] = "constexpr"
            constexprs[name] = 1
        elif name.startswith("stride_"):
            signature[name] = "i32"
            if strides[name[-1]] % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in ("H", "N_Q", "N_KV"):
            signature[name] = "i32"
        elif name == "qk_scale":
            signature[name] = "fp32"
        else:
            signature[name] = "constexpr"
    constexprs.update(
        HEAD_DIM=head_dim,
        BLOCK_D=padded_head_dim(head_dim),
        DOT_PRECISION="tf32x3" if dtype == torch.float32 else "tf32",
        VEC=16 // torch.tensor([], dtype=dtype).element_size(),
        **config.kwargs,
    )
    return triton.compile(
        ASTSource(jit_fn, signature, constexprs, attrs),
        target=GPUTarget("cuda", capability, 32),
        options={"num_warps": config.num_warps, "num_stages": config.num_stages},
    )
