"""Parity grid for the Triton attention kernel: an ops engineer's check of a node before deploying.

Every case draws fresh random inputs (seeded by the case, so a failure reproduces), lays them out the
way diffusers does (strided views) or as plain contiguous tensors, runs the kernel into an output
buffer pre-filled with NaN (so an element the kernel never writes fails the case), and compares every
output element with softmax(Q K^T scale) V computed in float64, allowing it the error that the kernel's
arithmetic can make on those inputs (`attention_error_bound`: the derivation is in its docstring). A
fixed tolerance is not a property of the kernel: at scores near 1e3 one fp32 rounding of a score is
already 1e-4 in the exponent, and which elements get close to a fixed atol depends on the CPU's BLAS.

Import this module only after TRITON_INTERPRET has been decided: it imports the kernel.
"""

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from serving.kernels.flash_attention import INTERPRET, flash_attention

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Rounding constants of the kernel's arithmetic, used by `attention_error_bound`.
# One fp32 ulp at 1 (twice fp32's unit roundoff 2^-24): round-to-nearest is within half of it, and tensor
# cores, which may truncate while accumulating (Fasi et al., "Numerical behavior of NVIDIA tensor cores",
# 2021), within all of it.
FP32_ULP = 2.0**-23
# exp2 in fp32: numpy's is correctly rounded to within an ulp, PTX ex2.approx.f32 within 2 ulps.
EXP2_ERROR = 2 * FP32_ULP
# Relative error of one product inside tl.dot, beyond the fp32 accumulation: fp32 runs as 3xTF32
# (a*b ~ a_hi*b_hi + a_hi*b_lo + a_lo*b_hi with 10-bit mantissas: the dropped a_lo*b_lo and the roundings
# of a_lo and b_lo are 2^-22 |a*b| each); fp16/bf16 products are exact in fp32.
DOT_PRODUCT_ERROR = {"float32": 3 * 2.0**-22, "float16": 0.0, "bfloat16": 0.0}
# Unit roundoff of the input dtype: P is rounded to it before the PV product, and so is the output.
UNIT_ROUNDOFF = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
# The smallest key tile any config uses is 32 keys (16 is tl.dot's minimum): an upper count of tiles.
MIN_BLOCK_N = 16
# How the inputs sit in memory: "bhnd" contiguous (B, H, N, D); "bnhd" a (B, H, N, D) view of the
# (B, N, H*D) projection output, as diffusers passes it; "packed" q/k/v slices of one (B, N, 3, H, D)
# fused-QKV buffer (self-attention only).
LAYOUTS = ("bhnd", "bnhd", "packed")


@dataclass(frozen=True)
class ParityCase:
    """One kernel launch to check against SDPA."""

    batch: int
    heads: int
    n_q: int
    n_kv: int
    head_dim: int
    dtype: str
    layout: str

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"ParityCase.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"ParityCase.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.layout == "packed" and self.n_q != self.n_kv:
            raise ValueError(f"ParityCase.layout 'packed' needs n_q == n_kv, got {self.n_q} and {self.n_kv}")

    @property
    def shape(self) -> str:
        """`BxH, N_q x N_kv, d` as the table shows it."""
        return f"{self.batch}x{self.heads}, {self.n_q}x{self.n_kv}, d={self.head_dim}"

    @property
    def seed(self) -> int:
        """A seed of its own per case, so no two cases share inputs and a failure reproduces."""
        fields = (self.batch, self.heads, self.n_q, self.n_kv, self.head_dim, self.dtype, self.layout)
        return sum(ord(ch) * 31**i for i, ch in enumerate(repr(fields))) % (2**31)


@dataclass(frozen=True)
class ParityResult:
    """Outcome of one case: worst absolute error, the worst ratio of error to its allowed bound (a case
    passes at <= 1), whether every element was written, and whether it passed."""

    case: ParityCase
    max_abs_error: float
    error_to_bound: float
    all_written: bool
    passed: bool
    seconds: float

    def to_dict(self) -> dict:
        """A flat JSON-ready record."""
        return {
            **asdict(self.case),
            "shape": self.case.shape,
            **{k: v for k, v in asdict(self).items() if k != "case"},
        }


def parity_grid(include_bf16: bool, include_large: bool) -> list[ParityCase]:
    """The cases to check: every supported head dim, self and cross attention, ragged lengths, N_q != N_kv.

    include_bf16: add bf16 cases (a GPU only: the interpreter computes bf16 dots wrongly).
    include_large: add the real SD UNet shapes (4096 latents x 4096 / 77 tokens), too slow to interpret.
    """
    shapes = [
        # (batch, heads, n_q, n_kv, head_dim, layout)
        (2, 2, 64, 64, 64, "packed"),  # self-attention, tile-aligned, fused-QKV strides
        (1, 2, 77, 77, 40, "bnhd"),  # SD-1.x head dim, ragged self-attention
        (1, 2, 96, 77, 64, "bnhd"),  # cross-attention onto 77 text tokens
        (1, 2, 300, 77, 80, "bnhd"),  # ragged query and key lengths
        (2, 1, 33, 300, 128, "bhnd"),  # fewer queries than keys
        (1, 2, 50, 16, 160, "bnhd"),  # widest SD-1.x head, padded to 256
    ]
    if include_large:
        shapes += [
            (2, 5, 4096, 4096, 64, "bnhd"),  # SD-2.1 512 px, first-level self-attention
            (2, 5, 4096, 77, 64, "bnhd"),  # SD-2.1 512 px, first-level cross-attention
            (2, 8, 4096, 77, 40, "bnhd"),  # SD-1.x 512 px, first-level cross-attention
            (2, 8, 1024, 1024, 80, "bnhd"),  # SD-1.x 512 px, second level
            (2, 8, 256, 256, 160, "packed"),  # SD-1.x 512 px, third level
        ]
    dtypes = ["float32", "float16"] + (["bfloat16"] if include_bf16 else [])
    return [
        ParityCase(b, h, nq, nkv, d, dtype, layout) for b, h, nq, nkv, d, layout in shapes for dtype in dtypes
    ]


def make_inputs(case: ParityCase, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh random (B, H, N, D) query, key and value in the case's memory layout."""
    generator = torch.Generator(device="cpu").manual_seed(case.seed)
    dtype = DTYPES[case.dtype]
    b, h, nq, nkv, d = case.batch, case.heads, case.n_q, case.n_kv, case.head_dim

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    if case.layout == "packed":
        qkv = randn(b, nq, 3, h, d)  # (B, N, 3, H, D)
        return tuple(qkv[:, :, i].transpose(1, 2) for i in range(3))  # 3 x (B, H, N, D), strided
    if case.layout == "bnhd":
        q = randn(b, nq, h * d).view(b, nq, h, d).transpose(1, 2)  # (B, H, N_q, D), strided
        k = randn(b, nkv, h * d).view(b, nkv, h, d).transpose(1, 2)  # (B, H, N_kv, D), strided
        v = randn(b, nkv, h * d).view(b, nkv, h, d).transpose(1, 2)  # (B, H, N_kv, D), strided
        return q, k, v
    return randn(b, h, nq, d), randn(b, h, nkv, d), randn(b, h, nkv, d)


def reference_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """softmax(query @ key^T * scale) @ value in float64, from the inputs as given: the ground truth."""
    return attention_error_bound(query, key, value, scale)[0]


def attention_error_bound(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 attention output and, per element, the largest error the kernel's arithmetic allows.

    query: (B, H, N_q, D); key, value: (B, H, N_kv, D) in the dtype the kernel runs; both results are
    (B, H, N_q, D) float64. The inputs are exact in float64, so the bound is the kernel's own rounding
    (first order in the unit roundoffs; u = FP32_ULP, N = N_kv, T = ceil(N / 16) key tiles):

    1. Exponents. Weight j of query row i is exp(x_ij), x_ij = s_ij - m_i, s_ij = scale * q_i.k_j.
       The kernel's x_ij is off by at most
           E_i = A_i (D u + e_dot) + 8 S_i u + (T + 1) e_exp
       A_i = scale max_j sum_d |q_id k_jd| bounds the score dot product's error (Higham's gamma_D for D
       fp32 additions, plus e_dot = DOT_PRODUCT_ERROR per product); S_i = max_j |s_ij| bounds the
       roundings of s * scale * log2(e), of the max m_i, of x = s - m (|x| <= 2 S_i) and of the folded
       scale constant, and the telescoping arguments m_old - m_new of the rescale factors alpha (2 S_i u
       each, 8 S_i u together); e_exp = EXP2_ERROR per exp2, one per weight and one per later tile.
       This is the term a fixed tolerance misses: it grows with the score scale, not with the output.
    2. Normalisation. Perturbing the exponents by e_j, |e_j| <= E_i, moves the output by
       sum_j w_j (e_j - e_mean)(v_j - o_i) (a shift common to all j cancels), which Cauchy-Schwarz
       bounds by E_i sigma_id, sigma_id^2 = sum_j w_ij v_jd^2 - o_id^2 the spread of V under the
       weights. A near one-hot softmax (huge scores) has sigma ~ 0 and is not hurt by exponent error.
    3. Sums. The fp32 sums of N weighted values (acc) and of N weights (l), each term also rescaled once
       per tile, are off by at most (N + 2T) u relative to sum_j w_ij |v_jd| and to |o_id|; the products
       P V add e_dot, rounding P to the input dtype before them adds UNIT_ROUNDOFF (fp16/bf16), the
       division one u and the output store UNIT_ROUNDOFF, relative to |o_id|:
           bound_id = E_i sigma_id + ((N + 2T) u + e_dot + u_P) (W|V|)_id + ((N + 2T + 1) u + u_out) |o_id|

    Worst-case (not probabilistic) bounds: a correct kernel cannot exceed them on any machine, whatever
    its summation order, FMA contraction or BLAS blocking, while a kernel bug (a missing rescale, an
    unmasked padded key, a wrong scale) moves outputs by a fraction of |V|, orders of magnitude more.
    Runs one batch element at a time: the (H, N_q, N_kv) float64 weights of the largest shapes are large.
    """
    dtype = next(name for name, torch_dtype in DTYPES.items() if torch_dtype == query.dtype)
    head_dim, n_kv = query.shape[-1], key.shape[2]
    scale = head_dim**-0.5 if scale is None else scale
    tiles = math.ceil(n_kv / MIN_BLOCK_N)
    dot_error = DOT_PRODUCT_ERROR[dtype]
    p_rounding = 0.0 if dtype == "float32" else UNIT_ROUNDOFF[dtype]
    outputs, bounds = [], []
    for q, k, v in zip(query.double(), key.double(), value.double(), strict=True):  # (H, N, D) each
        scores = scale * q @ k.transpose(-1, -2)  # (H, N_q, N_kv)
        weights = scores.softmax(dim=-1)  # (H, N_q, N_kv)
        out = weights @ v  # (H, N_q, D)
        spread = (weights @ v.square() - out.square()).clamp_min(0).sqrt()  # (H, N_q, D)
        magnitude = weights @ v.abs()  # (H, N_q, D)
        abs_scores = scale * (q.abs() @ k.abs().transpose(-1, -2)).amax(dim=-1, keepdim=True)  # (H, N_q, 1)
        peak = scores.abs().amax(dim=-1, keepdim=True)  # (H, N_q, 1)
        exponent_error = (
            abs_scores * (head_dim * FP32_ULP + dot_error) + 8 * peak * FP32_ULP + (tiles + 1) * EXP2_ERROR
        )
        sum_error = (n_kv + 2 * tiles) * FP32_ULP
        bound = (
            exponent_error * spread
            + (sum_error + dot_error + p_rounding) * magnitude
            + (sum_error + FP32_ULP + UNIT_ROUNDOFF[dtype]) * out.abs()
        )
        outputs.append(out)
        bounds.append(bound)
    return torch.stack(outputs), torch.stack(bounds)


AttentionFn = Callable[..., torch.Tensor]


def run_case(
    case: ParityCase, device: torch.device, attention: AttentionFn = flash_attention
) -> ParityResult:
    """Run one case through `attention(q, k, v, out=...)` and hold every element to its error bound."""
    query, key, value = make_inputs(case, device)
    # Poisoned, in the (B, N_q, H, D) memory order the processor's output takes.
    out = torch.full(
        (case.batch, case.n_q, case.heads, case.head_dim), float("nan"), dtype=query.dtype, device=device
    ).transpose(1, 2)  # (B, H, N_q, D)
    start = time.perf_counter()
    attention(query, key, value, out=out)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    expected, bound = attention_error_bound(query, key, value)
    all_written = bool(torch.isfinite(out).all())
    error = (out.double() - expected).abs()  # NaN where an element was never written
    max_abs_error = float(error.max())
    error_to_bound = float(torch.where(error == 0, 0.0, error / bound).max())  # 0/0 where V is all 0
    return ParityResult(
        case, max_abs_error, error_to_bound, all_written, all_written and error_to_bound <= 1.0, seconds
    )


def default_device() -> torch.device:
    """The device the kernel runs on here: the current CUDA GPU, else the CPU through the interpreter."""
    if torch.cuda.is_available() and not INTERPRET:
        return torch.device("cuda", torch.cuda.current_device())
    if not INTERPRET:
        raise RuntimeError(
            "No CUDA GPU and TRITON_INTERPRET is not 1: set TRITON_INTERPRET=1 before triton is imported "
            "to run the kernel on CPU through the Triton interpreter"
        )
    return torch.device("cpu")


def run_selftest(
    cases: list[ParityCase],
    device: torch.device,
    progress: Callable[[int, int, ParityResult], None] | None = None,
) -> list[ParityResult]:
    """Run every case in order, reporting each result to `progress(index, total, result)` as it lands."""
    results = []
    for index, case in enumerate(cases, start=1):
        result = run_case(case, device)
        results.append(result)
        if progress is not None:
            progress(index, len(cases), result)
    return results
