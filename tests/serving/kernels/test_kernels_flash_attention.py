"""The Triton attention kernel against softmax(Q K^T scale) V computed in float64.

Without a GPU, tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported, so the kernel runs on
CPU tensors through the interpreter (fp32 and fp16; bf16 is covered by the gpu-marked tests). With a GPU
the same cases run compiled on CUDA.

Tolerance rule: every output element (i, d) is held to the error the kernel's arithmetic allows on
those inputs, `serving.kernels.selftest.attention_error_bound` (derived in its docstring):

    bound_id = E_i sigma_id + ((N + 2T) u + e_dot + u_P) (W|V|)_id + ((N + 2T + 1) u + u_out) |o_id|
    E_i      = A_i (D u + e_dot) + 8 S_i u + (T + 1) e_exp

u = 2^-23 (one fp32 ulp), N keys in T <= ceil(N/16) tiles, head dim D; S_i the largest |scale q_i.k_j|
and A_i the largest scale sum_d |q_id k_jd| of row i (the exponent error grows with the score scale);
sigma_id the spread of V under the softmax weights W, o the float64 output; e_dot = 3 * 2^-22 per
3xTF32 product in fp32 (0 in fp16/bf16, whose products are exact), e_exp = 2 ulps per exp2, u_P and
u_out the input dtype's unit roundoff for rounding P before the PV product (fp16/bf16 only) and the
output. A fixed atol is not a property of the kernel: at scores near 1e3 in fp32 one rounding of a score
is 1e-4 in the exponent, and a CPU whose BLAS sums in another order lands elsewhere under 1e-5.
The bound is worst-case, so no machine can exceed it; the kernel bugs it must still catch (a missing
rescale of the accumulator, an unmasked padded key) move outputs by a fraction of |V|.
"""

import pytest
import torch
import torch.nn.functional as F

from serving.kernels.flash_attention import INTERPRET, flash_attention, unsupported_reason
from serving.kernels.selftest import (
    ParityCase,
    attention_error_bound,
    make_inputs,
    parity_grid,
    reference_attention,
    run_case,
)

pytestmark = pytest.mark.skipif(
    not INTERPRET and not torch.cuda.is_available(), reason="needs a CUDA GPU or TRITON_INTERPRET=1"
)
DEVICE = torch.device("cpu") if INTERPRET else torch.device("cuda")

CASES = parity_grid(include_bf16=False, include_large=False) + [
    ParityCase(1, 1, 1, 5, 40, "float32", "bhnd"),  # one query, fewer keys than a tile
    ParityCase(3, 2, 64, 128, 64, "float16", "bhnd"),  # batch x heads = 6, key tiles all full
]


def assert_within_error_bound(
    out: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None = None
) -> None:
    """Every element of `out` within `attention_error_bound` of the float64 attention of the inputs."""
    assert torch.isfinite(out).all(), "the kernel left output elements unwritten (or overflowed)"
    expected, bound = attention_error_bound(query, key, value, scale)
    error = (out.double() - expected).abs()
    over = error > bound
    worst = int((error / bound).argmax())
    assert not over.any(), (
        f"{int(over.sum())} of {error.numel()} elements exceed their error bound; worst: error "
        f"{error.flatten()[worst]:.3e} > bound {bound.flatten()[worst]:.3e} at flat index {worst}"
    )


def poisoned_output(case: ParityCase) -> torch.Tensor:
    """A (B, H, N_q, D) output view of a (B, N_q, H, D) buffer full of NaN: unwritten elements stay NaN."""
    dtype = {"float32": torch.float32, "float16": torch.float16}[case.dtype]
    shape = (case.batch, case.n_q, case.heads, case.head_dim)
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE).transpose(1, 2)


def test_grid_covers_the_diffusion_shapes():
    head_dims = {c.head_dim for c in CASES}
    assert {40, 64, 80, 128, 160} <= head_dims
    assert any(c.n_q != c.n_kv for c in CASES)
    assert any(c.n_kv % 16 and c.n_q % 16 for c in CASES), "no ragged lengths"
    assert any(c.batch * c.heads > 1 for c in CASES)
    assert len({c.seed for c in CASES}) == len(CASES), "cases must draw their own inputs"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.shape}-{c.dtype}-{c.layout}")
def test_kernel_matches_float64_attention(case: ParityCase):
    query, key, value = make_inputs(case, DEVICE)
    if case.layout != "bhnd":
        assert not query.is_contiguous() and not key.is_contiguous()
    out = poisoned_output(case)

    result = flash_attention(query, key, value, out=out)

    assert result is out
    assert_within_error_bound(out, query, key, value)


def test_default_output_is_a_strided_view_ready_for_the_projection():
    case = ParityCase(2, 3, 70, 77, 40, "float32", "bnhd")
    query, key, value = make_inputs(case, DEVICE)
    out = flash_attention(query, key, value)
    assert out.shape == (2, 3, 70, 40)
    assert out.transpose(1, 2).is_contiguous()
    assert_within_error_bound(out, query, key, value)


def test_contiguous_poisoned_output_buffer():
    case = ParityCase(1, 2, 45, 45, 80, "float16", "bnhd")
    query, key, value = make_inputs(case, DEVICE)
    out = torch.full_like(query, float("nan"), memory_format=torch.contiguous_format)
    flash_attention(query, key, value, out=out)
    assert_within_error_bound(out, query, key, value)


def test_custom_scale_and_large_scores_stay_stable():
    # Scores near 1e3 overflow a naive exp; the running max keeps the online softmax finite.
    case = ParityCase(1, 2, 40, 90, 64, "float32", "bhnd")
    query, key, value = make_inputs(case, DEVICE)
    query = query * 30.0
    out = flash_attention(query, key, value, scale=0.3)
    assert_within_error_bound(out, query, key, value, scale=0.3)


def test_error_bound_admits_fp32_arithmetic_and_rejects_half_precision():
    # The yardstick itself: PyTorch's own fp32 attention is within the fp32 bound, while the same
    # attention computed from inputs rounded to fp16 (a precision bug: relative error 2^-11, 30 times
    # fp32's sums over these 77 keys) is not; likewise bf16 rounding under the fp16 bound.
    case = ParityCase(1, 2, 96, 77, 64, "float32", "bnhd")
    query, key, value = make_inputs(case, DEVICE)
    expected, bound = attention_error_bound(query, key, value)
    fp32 = F.scaled_dot_product_attention(query, key, value)
    assert ((fp32.double() - expected).abs() <= bound).all()
    rounded = F.scaled_dot_product_attention(*(t.half().float() for t in (query, key, value)))
    assert ((rounded.double() - expected).abs() > bound).any()

    half = [t.half() for t in (query, key, value)]
    expected, bound = attention_error_bound(*half)
    rounded = F.scaled_dot_product_attention(*(t.bfloat16().float() for t in half))
    assert ((rounded.double() - expected).abs() > bound).any()


def test_unsupported_inputs_are_refused_with_the_reason():
    q = torch.randn(1, 2, 8, 64, device=DEVICE)
    assert unsupported_reason(q, q, q) is None
    with pytest.raises(ValueError, match="head dims differ"):
        flash_attention(q, q, q[..., :32])
    with pytest.raises(ValueError, match="length is 0"):
        flash_attention(q, q[:, :, :0], q[:, :, :0])
    with pytest.raises(ValueError, match="exceeds the kernel's maximum"):
        wide = torch.randn(1, 1, 4, 320, device=DEVICE)
        flash_attention(wide, wide, wide)
    with pytest.raises(ValueError, match="dtypes differ"):
        flash_attention(q, q.half(), q)
    with pytest.raises(ValueError, match="`scale` must be positive"):
        flash_attention(q, q, q, scale=-1.0)
    with pytest.raises(ValueError, match="`out` must match query"):
        flash_attention(q, q, q, out=torch.empty(1, 2, 8, 32, device=DEVICE))


@pytest.mark.skipif(not INTERPRET, reason="interpreter-only restriction")
def test_interpreter_refuses_bf16_rather_than_computing_it_wrong():
    q = torch.randn(1, 1, 16, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="bf16"):
        flash_attention(q, q, q)


def test_selftest_flags_wrong_and_unwritten_outputs():
    case = ParityCase(1, 2, 77, 77, 40, "float32", "bnhd")
    assert run_case(case, DEVICE).passed

    def drops_last_key(query, key, value, out):
        return flash_attention(query, key[:, :, :-1], value[:, :, :-1], out=out)

    def writes_half(query, key, value, out):
        out[:, :, : query.shape[2] // 2] = reference_attention(query, key, value)[:, :, : query.shape[2] // 2]
        return out

    wrong = run_case(case, DEVICE, attention=drops_last_key)
    assert not wrong.passed and wrong.all_written and wrong.error_to_bound > 1
    unwritten = run_case(case, DEVICE, attention=writes_half)
    assert not unwritten.passed and not unwritten.all_written
