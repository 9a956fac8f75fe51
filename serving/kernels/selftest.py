"""Parity grid for the Triton attention kernel: an ops engineer's check of a node before deploying.

Every case draws fresh random inputs (seeded by the case, so a failure reproduces), lays them out the
way diffusers does (strided views) or as plain contiguous tensors, runs the kernel into an output
buffer pre-filled with NaN (so an element the kernel never writes fails the case), and compares with
`scaled_dot_product_attention` computed in fp32 by PyTorch's math backend.

Import this module only after TRITON_INTERPRET has been decided: it imports the kernel.
"""

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from serving.kernels.flash_attention import INTERPRET, flash_attention

# Max-abs-error tolerances per dtype: fp32 is exact up to summation order; fp16/bf16 round P to the
# input dtype before the PV product and round the output (unit roundoff 2^-11 and 2^-9).
TOLERANCES = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 2e-2}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
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
    """Outcome of one case: worst absolute error, the tolerance it was held to, and whether it passed."""

    case: ParityCase
    max_abs_error: float
    atol: float
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


def reference_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """SDPA in fp32 with the math backend (no TF32, no fused-kernel rounding): the ground truth."""
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(query.float(), key.float(), value.float())  # (B, H, N_q, D)


AttentionFn = Callable[..., torch.Tensor]


def run_case(
    case: ParityCase, device: torch.device, attention: AttentionFn = flash_attention
) -> ParityResult:
    """Run one case through `attention(q, k, v, out=...)` and hold it to the dtype's tolerance."""
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
    expected = reference_attention(query, key, value)
    all_written = bool(torch.isfinite(out).all())
    max_abs_error = float((out.float() - expected).abs().max())  # NaN when an element was never written
    atol = TOLERANCES[case.dtype]
    return ParityResult(
        case, max_abs_error, atol, all_written, all_written and max_abs_error <= atol, seconds
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
