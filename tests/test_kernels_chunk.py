"""The chunked kernels (kernels/chunk.py and its stages) against the float64 references.

End to end against the token-by-token reference; stage by stage against the chunked
reference's intermediates, each stage fed the reference's inputs to it. Runs compiled on a
CUDA machine and under the Triton interpreter elsewhere (conftest); shapes are small for the
interpreter.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import triton
import triton.language as tl

from gdn_verify.cases import Case
from gdn_verify.cases import dense as _dense
from gdn_verify.cases import varlen as _varlen
from gdn_verify.contract import L2NORM_EPS, validate
from gdn_verify.inputs import make_inputs
from gdn_verify.kernels import (
    chunk_gated_delta_rule,
    chunk_gated_delta_rule_intermediates,
    compiled_variants,
    poisoned_outputs,
    reset_variant_log,
    unwritten_mask,
)
from gdn_verify.kernels import cumsum as cumsum_module
from gdn_verify.kernels import kkt_solve as kkt_solve_module
from gdn_verify.kernels import l2norm as l2norm_module
from gdn_verify.kernels import output as output_module
from gdn_verify.kernels import recurrence as recurrence_module
from gdn_verify.kernels import wy as wy_module
from gdn_verify.kernels._common import (  # white-box: the stages' precision policy and launch arithmetic
    cdiv, compute_dtype, dot_precision, next_power_of_2)
from gdn_verify.kernels.chunk import chunk_stage_calls
from gdn_verify.kernels.chunk_map import build_chunk_map, chunk_span
from gdn_verify.reference import chunked_gated_delta_rule, recurrent_gated_delta_rule

from kernel_checks import (assert_same_bits, case_kwargs, check_alone_equals_varlen, check_deterministic,
                           check_empty_sequences_keep_state, error_ratio)

dense = partial(_dense, dtype="float32")
varlen = partial(_varlen, dtype="float32")

# RMS error ratio bounds against the float64 reference, (o, final_state). The reference sees
# the same (already rounded) inputs, so what remains is the kernels' arithmetic and, for o in
# float16 / bfloat16, the rounding into that dtype. That rounding alone is about 2.2e-4 (fp16)
# and 1.7e-3 (bf16) and says nothing about the kernels, so for those dtypes the o bound applies
# to the error beyond it: sqrt(err^2 - err_rounding^2), err_rounding being the ratio of the
# reference rounded to the dtype (rounding and arithmetic errors are uncorrelated and add in
# quadrature). Measured worst over this file's cases in all four dtypes (interpreter, CPU):
TOLERANCES = {
    # Exact mode, the chunk algorithm alone: o 8.9e-16, state 7.1e-16.
    "float64": (1e-10, 1e-10),
    # float32 arithmetic: o 2.7e-6, state 4.3e-7.
    "float32": (1e-5, 1e-5),
    # Float32 arithmetic, but dots against the float32 state read it as two bfloat16 halves
    # (2^-18 relative; bf16x3 on the GPU, IEEE float32 under the interpreter for float16
    # inputs), which compounds over chunks when nothing decays (g = 0, beta = 1). Measured:
    # float16 o beyond rounding 4.0e-6 (total 2.3e-4), state 1.0e-6; bfloat16 o beyond rounding
    # 3.3e-6 (total 1.8e-3), state 6.6e-6 (g = 0, beta = 1). The o bound still catches
    # TF32-grade dots (about 5e-4 relative).
    "float16": (1e-4, 3e-5),
    "bfloat16": (1e-4, 3e-5),
}
ROUNDED_O_DTYPES = ("float16", "bfloat16")

_SMALL = dict(H=1, HV=2, K=16, V=16)

# Each structural case runs in exact mode (the algorithm) and in the dtype it names (precision).
CASES = [
    # Sequence lengths around the chunk edges, dense.
    dense(1, B=2, init_state="random", **_SMALL),
    dense(2, **_SMALL, dtype="bfloat16"),
    dense(15, B=2, init_state="random", **_SMALL, dtype="float16"),
    dense(16, **_SMALL, dtype="bfloat16"),
    dense(17, init_state="random", **_SMALL),
    dense(63, init_state="random", **_SMALL, dtype="bfloat16"),
    dense(64, B=2, **_SMALL),
    dense(65, init_state="random", **_SMALL, dtype="float16"),
    dense(127, **_SMALL, dtype="bfloat16"),
    dense(128, init_state="random", **_SMALL),
    dense(129, B=2, init_state="random", **_SMALL, dtype="bfloat16"),
    # Packed: single-token and zero-length segments, chunks starting mid-block.
    varlen((0, 1, 63, 0, 65, 1, 0), init_state="random", **_SMALL),
    varlen((1, 1, 1, 1, 1), init_state="random", **_SMALL, dtype="bfloat16"),
    varlen((17, 129, 2), **_SMALL, dtype="float16", l2norm=True),
    # GVA and head sizes: non-powers of two, K != V both ways, several V blocks.
    dense(33, H=2, HV=4, K=16, V=16, init_state="random"),
    varlen((5, 0, 70), H=1, HV=3, K=16, V=32, init_state="random", dtype="bfloat16"),
    # Several key heads with l2norm: the norm stage's per-head factors.
    dense(66, H=2, HV=4, K=60, V=100, init_state="random", l2norm=True),
    varlen((3, 40), H=1, HV=1, K=48, V=20, init_state="random", dtype="bfloat16"),
    # Gate and beta regimes (strong: g in [-30, -1]; mixed: 0, mild and strong).
    dense(70, gate="zero", beta="one", init_state="random", **_SMALL),
    dense(70, gate="strong", beta="zero", init_state="random", **_SMALL),
    dense(70, gate="strong", beta="one", **_SMALL, dtype="bfloat16"),
    dense(70, gate="mixed", init_state="random", l2norm=True, **_SMALL),
    dense(70, gate="zero", beta="zero", init_state="random", scale=0.3, **_SMALL),
    dense(70, gate="mixed", beta="one", l2norm=True, **_SMALL, dtype="bfloat16"),
]


def o_error(o: torch.Tensor, reference: torch.Tensor) -> float:
    """error_ratio of o; for float16 / bfloat16, the part beyond rounding the reference to o's dtype."""
    err = error_ratio(o, reference)
    if str(o.dtype).removeprefix("torch.") not in ROUNDED_O_DTYPES:
        return err
    rounding = error_ratio(reference.to(o.dtype), reference)
    return math.sqrt(max(err * err - rounding * rounding, 0.0))


def run_kernel(inputs: dict, case: Case, device: str):
    return chunk_gated_delta_rule(**case_kwargs(inputs, case, device), use_qk_l2norm_in_kernel=case.l2norm)


def run_intermediates(inputs: dict, case: Case, device: str) -> dict:
    return chunk_gated_delta_rule_intermediates(**case_kwargs(inputs, case, device),
                                                use_qk_l2norm_in_kernel=case.l2norm)


def case_id(case: Case) -> str:
    return case.id


def _check_against_reference(case: Case, device: str) -> None:
    inputs = make_inputs(case)
    o, final_state = run_kernel(inputs, case, device)
    ref_o, ref_state = recurrent_gated_delta_rule(**case_kwargs(inputs, case, "cpu"), l2norm=case.l2norm)

    assert o.dtype == inputs["v"].dtype and o.shape == inputs["v"].shape
    state_dtype = compute_dtype(inputs["q"].dtype)
    assert final_state.dtype == state_dtype and final_state.shape == (case.N, case.HV, case.K, case.V)
    for name, got in (("o", o), ("final_state", final_state)):
        assert torch.isfinite(got).all(), f"{name}: {int((~torch.isfinite(got)).sum())} non-finite values"
    o_tol, state_tol = TOLERANCES[case.dtype]
    o_err, state_err = o_error(o, ref_o), error_ratio(final_state, ref_state)
    assert o_err <= o_tol, f"o: RMS error ratio {o_err:.3g} > {o_tol:g}"
    assert state_err <= state_tol, f"final_state: RMS error ratio {state_err:.3g} > {state_tol:g}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_exact_mode_matches_reference(case: Case, device: str):
    _check_against_reference(case.with_(dtype="float64"), device)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_precision_matches_reference(case: Case, device: str):
    _check_against_reference(case, device)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_unaligned_key_rows_are_padded_exactly(dtype: str, device: str):
    # K = 60 in 16 bits is a 120-byte row: the entry pads q, k and the initial state to K = 64
    # (kernels/chunk.py, a Triton 3.6 Hopper workaround) and slices the state back.
    case = varlen((0, 5, 70), H=1, HV=2, K=60, V=20, dtype=dtype, init_state="random", l2norm=True)
    assert 60 * torch.finfo(getattr(torch, dtype)).bits // 8 % 16
    _check_against_reference(case, device)


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_every_dtype_on_one_packed_case(dtype: str, device: str):
    _check_against_reference(varlen((0, 1, 63, 0, 65, 1, 0), init_state="random", l2norm=True,
                                    **_SMALL).with_(dtype=dtype), device)


def test_extreme_decay_stays_finite(device: str):
    """g = -30 per token (gam down to -1900 in one chunk) next to g = 0 and beta = 0 / 1."""
    case = dense(70, B=2, init_state="random", **_SMALL)
    inputs = make_inputs(case)
    inputs["g"][0] = -30.0
    inputs["g"][1, 1::2] = 0.0
    inputs["g"][1, ::2] = -1000.0
    inputs["beta"][:, ::3] = 0.0
    inputs["beta"][:, 1::3] = 1.0
    for dtype in ("float64", "float32"):
        c = case.with_(dtype=dtype)
        x = {name: t.to(torch.float64) if dtype == "float64" and t.is_floating_point() else t
             for name, t in inputs.items()}
        o, final_state = run_kernel(x, c, device)
        ref_o, ref_state = recurrent_gated_delta_rule(**case_kwargs(x, c, "cpu"))
        assert torch.isfinite(o).all() and torch.isfinite(final_state).all()
        o_tol, state_tol = TOLERANCES[dtype]
        assert error_ratio(o, ref_o) <= o_tol
        assert error_ratio(final_state, ref_state) <= state_tol


# ----------------------------------------------------------------------------------------
# Stages, each fed the chunked reference's inputs to it
# ----------------------------------------------------------------------------------------

# Each stage's output is float32 (float64 in exact mode) and is fed the reference's inputs,
# so its bound is its compute dtype's; o is checked as end to end. Measured worst (interpreter),
# A aside: float64 4.3e-16 (o), float32 1.4e-6 (o), bfloat16 inputs 9.5e-7 (o).
STAGE_TOLERANCE = {"float64": 1e-10, "float32": 1e-5, "bfloat16": 1e-5}
# A's entries carry exp(gam_i - gam_j) with gam in float32: the exponent's absolute error is
# about |gam| 2^-24, up to 6e-5 relative on a pair that mixed gates leave undecayed at
# |gam| = 1000 (the reference differences in float64). Measured: float32 3.9e-6, bfloat16 inputs
# 5.1e-6 with |gam| up to a few hundred; Tm, two stages later, is back to 5e-7.
A_TOLERANCE = {"float64": 1e-10, "float32": 3e-5, "bfloat16": 3e-5}
STAGE_CASES = [
    varlen((0, 1, 63, 0, 65, 1, 0), init_state="random", **_SMALL),
    varlen((5, 0, 70), H=3, HV=6, K=60, V=20, init_state="random", l2norm=True, gate="mixed"),
]


def stage_errors(case: Case, device: str) -> dict[str, tuple[float, float]]:
    """Stage output name -> (error ratio against the chunked reference, bound), each stage
    launched on its own with the reference's intermediates as inputs."""
    inputs = make_inputs(case)
    x = case_kwargs(inputs, case, device)
    _, _, ref = chunked_gated_delta_rule(**case_kwargs(inputs, case, "cpu"), l2norm=case.l2norm)
    problem = validate(x["q"], x["k"], x["v"], x["g"], x["beta"], cu_seqlens=x["cu_seqlens"])
    chunks = build_chunk_map(problem, x["cu_seqlens"], device)
    acc, precision, l2 = compute_dtype(x["q"].dtype), dot_precision(x["q"].dtype), case.l2norm

    def fed(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=acc)

    got = {"g_cum": cumsum_module.cumsum(x["g"], chunks, acc)}
    computed_here = {}
    norms = None
    if l2:
        # The row factors 1 / sqrt(|x|^2 + eps) in float64, from the inputs as the kernels see them.
        for name, t in (("rq", x["q"]), ("rk", x["k"])):
            computed_here[name] = (t.double().square().sum(-1) + L2NORM_EPS).rsqrt().cpu()
        norms = got["rq"], got["rk"] = l2norm_module.l2norm_factors(x["q"], x["k"], acc)
    rk = norms[1] if l2 else None
    got["Tm"], got["A"] = kkt_solve_module.kkt_solve(x["k"], x["beta"], fed(ref.g_cum), rk, chunks, case.HV,
                                                     precision, store_a=True)
    got["W"], got["U"] = wy_module.wy(x["k"], x["v"], x["beta"], fed(ref.g_cum), rk, fed(ref.Tm), chunks)
    got["final_state"], got["h"], got["v_new"] = recurrence_module.recurrence(
        x["k"], x["v"], x["beta"], fed(ref.g_cum), rk, fed(ref.Tm), chunks, x["initial_state"], True, precision)
    got["o"] = output_module.output(x["q"], x["k"], fed(ref.g_cum), norms, fed(ref.h), fed(ref.v_new),
                                    chunks, problem.scale, precision, x["v"].dtype)
    errors = {}
    for name, t in got.items():
        expected = computed_here[name] if name in computed_here else getattr(ref, name)
        assert t.shape == expected.shape, f"{name}: shape {tuple(t.shape)} != {tuple(expected.shape)}"
        if name == "o":
            errors[name] = (o_error(t, expected), TOLERANCES[case.dtype][0])
        else:
            bound = (A_TOLERANCE if name == "A" else STAGE_TOLERANCE)[case.dtype]
            errors[name] = (error_ratio(t, expected), bound)
    return errors


@pytest.mark.parametrize("dtype", sorted(STAGE_TOLERANCE))
@pytest.mark.parametrize("base", STAGE_CASES, ids=case_id)
def test_each_stage_matches_reference_intermediates(base: Case, dtype: str, device: str):
    errors = stage_errors(base.with_(dtype=dtype), device)
    report = ", ".join(f"{name} {err:.3g} (bound {bound:g})" for name, (err, bound) in errors.items())
    assert all(err <= bound for err, bound in errors.values()), f"RMS error ratios: {report}"


@pytest.mark.parametrize("base", STAGE_CASES, ids=case_id)
def test_intermediates_are_the_fast_path(base: Case, device: str):
    """The intermediates' o and final state are the fast path's, bit for bit, and every
    intermediate matches the chunked reference in exact mode."""
    case = base.with_(dtype="float64")
    inputs = make_inputs(case)
    o, final_state = run_kernel(inputs, case, device)
    got = run_intermediates(inputs, case, device)
    assert_same_bits(got["o"], o, "o")
    assert_same_bits(got["final_state"], final_state, "final_state")
    _, _, ref = chunked_gated_delta_rule(**case_kwargs(inputs, case, "cpu"), l2norm=case.l2norm)
    for name in ("g_cum", "A", "Tm", "W", "U", "h", "v_new", "o", "final_state"):
        err = error_ratio(got[name], getattr(ref, name))
        assert err <= 1e-10, f"{name}: RMS error ratio {err:.3g}"


def test_stage_calls_are_the_fast_path(device: str):
    """The benchmarks time stages through chunk_stage_calls: each call reruns its stage on the
    fast path's own intermediates, so the output stage's call gives the entry point's o."""
    case = varlen((5, 0, 70), H=1, HV=2, K=60, V=20, dtype="bfloat16", init_state="random", l2norm=True)
    inputs = make_inputs(case)
    o, _ = run_kernel(inputs, case, device)
    calls = chunk_stage_calls(**case_kwargs(inputs, case, device), use_qk_l2norm_in_kernel=case.l2norm)
    assert list(calls) == ["chunk_map", "cumsum", "l2norm", "kkt_solve", "recurrence", "output"]
    for name in ("chunk_map", "cumsum", "l2norm", "kkt_solve", "recurrence"):
        calls[name]()
    assert_same_bits(calls["output"](), o, "o from the output stage's call")


@triton.jit
def _chunk_spans_kernel(first_ptr, length_ptr, chunk_seq_ptr, seq_start_ptr, seq_first_chunk_ptr, seq_len):
    chunk = tl.program_id(0)
    first, length = chunk_span(chunk, chunk_seq_ptr, seq_start_ptr, seq_first_chunk_ptr, seq_len)
    tl.store(first_ptr + chunk, first)
    tl.store(length_ptr + chunk, length)


def _chunk_spans(case: Case, device: str):
    """(chunk map, the reference's chunk layout, [first token, tokens] of each chunk as the
    kernels' `chunk_span` finds them from the map)."""
    inputs = make_inputs(case)
    x = case_kwargs(inputs, case, device)
    _, _, ref = chunked_gated_delta_rule(**case_kwargs(inputs, case, "cpu"))
    chunks = build_chunk_map(validate(x["q"], x["k"], x["v"], x["g"], x["beta"], cu_seqlens=x["cu_seqlens"]),
                             x["cu_seqlens"], device)
    first, length = (torch.full((chunks.n_chunks,), -1, dtype=torch.int64, device=device) for _ in range(2))
    _chunk_spans_kernel[(chunks.n_chunks,)](first, length, *chunks.span_args)
    return chunks, ref, [first.cpu().tolist(), length.cpu().tolist()]


def test_chunk_map_matches_reference(device: str):
    """Each chunk's span as the kernels compute it, from the packed map's tensors and, for
    dense inputs, from T alone, against the reference's layout."""
    chunks, ref, spans = _chunk_spans(varlen((0, 1, 63, 0, 65, 1, 0, 130), **_SMALL), device)
    assert chunks.n_chunks == ref.chunk_seq.numel() == 8
    assert chunks.chunk_seq.cpu().tolist() == ref.chunk_seq.tolist()
    assert chunks.seq_first_chunk.cpu().tolist() == [0, 0, 1, 2, 2, 4, 5, 5, 8]
    assert spans == [ref.chunk_first.tolist(), ref.chunk_len.tolist()]
    chunks, ref, spans = _chunk_spans(dense(65, B=3, **_SMALL), device)
    assert chunks.n_chunks == ref.chunk_seq.numel() == 6
    assert spans == [ref.chunk_first.tolist(), ref.chunk_len.tolist()] == [[0, 64, 65, 129, 130, 194], [64, 1] * 3]


# ----------------------------------------------------------------------------------------
# Compiled variants, invariants, outputs written, bad inputs
# ----------------------------------------------------------------------------------------

SWEEP_TS = (1, 16, 32, 63, 64, 65, 128, 1000)
FAST_PATH_KERNELS = ("cumsum_kernel", "l2norm_kernel", "kkt_solve_kernel", "recurrence_kernel", "output_kernel")


def test_compiled_variants_do_not_depend_on_sequence_length(device: str):
    reset_variant_log()

    def run(case: Case) -> None:
        run_kernel(make_inputs(case), case, device)

    def fast_path_counts() -> dict[str, int]:
        counts = compiled_variants()
        return {name: counts.get(name, 0) for name in FAST_PATH_KERNELS}

    # With the in-kernel l2norm, so its stage's kernel runs too (the harness's audit runs
    # without it: flash-linear-attention autotunes its l2norm kernel for every bucket of T).
    small = dict(H=1, HV=1, K=16, V=16, init_state="random", l2norm=True)
    run(dense(64, **small))
    after_t64 = fast_path_counts()
    assert all(n >= 1 for n in after_t64.values()), after_t64
    for T in SWEEP_TS:
        run(dense(T, **small))
    run(varlen((0, 1, 63, 0, 65, 1000), **small))
    assert fast_path_counts() == after_t64


def test_state_value_block_fills_the_sms():
    """The recurrence splits V into 32-column programs when they fill every SM twice over, into
    16-column ones when they would not, and into 16 for large K whatever the SMs."""
    rule = recurrence_module.state_value_block
    sms = 132  # an H100
    assert rule(128, 128, 1 * 32, sms) == 16  # one sequence, 32 heads: 128 programs of 32
    assert rule(128, 128, 2 * 32, sms) == 16  # 256 < 264
    assert rule(128, 128, 3 * 32, sms) == 32
    assert rule(128, 128, 256 * 32, sms) == 32  # packed short sequences
    assert rule(256, 128, 256 * 32, sms) == 16
    assert rule(128, 16, 1, sms) == 16  # V itself is one 16-column block
    assert rule(128, 128, 1, None) == 32  # not a GPU: the widest


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_state_value_block_keeps_the_bits(dtype: str, device: str, monkeypatch):
    """Each column of the state evolves alone, so o and the final state are the same bits
    whether a program takes 16 or 32 of them. The SM count is what the launcher reads: many SMs
    for this case's 6 (sequence, value head) pairs give 16 columns, one SM gives 32."""
    case = varlen((5, 70, 130), H=1, HV=2, K=32, V=64, dtype=dtype, init_state="random", l2norm=True)
    inputs = make_inputs(case)
    launch, blocks = recurrence_module.launch, {}

    def run(sms: int):
        monkeypatch.setattr(recurrence_module, "sm_count", lambda device: sms)
        monkeypatch.setattr(recurrence_module, "launch", lambda kernel, grid, *args, **kw: (
            blocks.setdefault(sms, kw["BV"]), launch(kernel, grid, *args, **kw)))
        return run_kernel(inputs, case, device)

    (o16, state16), (o32, state32) = run(132), run(1)
    assert blocks == {132: 16, 1: 32}
    assert_same_bits(o16, o32, "o")
    assert_same_bits(state16, state32, "final_state")


@pytest.mark.parametrize("init_state", ["random", "none"])
def test_zero_length_sequence_keeps_its_state_bitwise(init_state: str, device: str):
    case = varlen((0, 70, 0, 0, 3, 0), init_state=init_state, **_SMALL)
    check_empty_sequences_keep_state(run_kernel, case, device)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_run_to_run_bitwise_determinism(dtype: str, device: str):
    case = varlen((5, 0, 70, 1), H=1, HV=2, K=60, V=40, dtype=dtype, init_state="random", l2norm=True)
    check_deterministic(run_kernel, case, device)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sequence_alone_equals_sequence_in_varlen_batch(dtype: str, device: str):
    """Batch invariance: every sequence of a packed batch, run on its own (dense, B = 1), gives
    the same bits as inside the batch, where its chunks start at other offsets."""
    case = varlen((3, 0, 70, 1, 66), H=1, HV=2, K=16, V=40, dtype=dtype, init_state="random")
    check_alone_equals_varlen(run_kernel, case, device)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_output_element_is_written(dtype: str, device: str):
    case = varlen((0, 1, 63, 0, 65, 1, 0), H=1, HV=2, K=60, V=40, dtype=dtype, init_state="random")
    inputs = make_inputs(case)
    with poisoned_outputs():
        o, final_state = run_kernel(inputs, case, device)
        outputs = {"o": o, "final_state": final_state}
        outputs.update({f"intermediates[{name}]": t for name, t in run_intermediates(inputs, case, device).items()})
    for name, t in outputs.items():
        unwritten = unwritten_mask(t)
        assert not unwritten.any(), f"{name}: {int(unwritten.sum())} of {t.numel()} elements never written"


def test_final_state_not_requested_is_none(device: str):
    case = dense(17, **_SMALL)
    args = case_kwargs(make_inputs(case), case, device)
    args["output_final_state"] = False
    _, final_state = chunk_gated_delta_rule(**args)
    assert final_state is None


def _bad_inputs(device: str):
    case = varlen((3, 5), **_SMALL)
    good = case_kwargs(make_inputs(case), case, device)
    yield "q", dict(good, q=good["q"].to(torch.int32)), "q: expected dtype"
    yield "k", dict(good, k=good["k"][..., :8]), "k: expected shape"
    yield "v", dict(good, v=good["v"].to(torch.float64)), "v: expected dtype"
    yield "beta", dict(good, beta=good["beta"][:, :4]), "beta: expected shape"
    yield "cu_seqlens", dict(good, cu_seqlens=good["cu_seqlens"].flip(0)), "cu_seqlens: expected"
    yield "initial_state", dict(good, initial_state=torch.zeros(1, 2, 16, 16, device=device)), "initial_state:"
    yield "scale", dict(good, scale=float("nan")), "scale:"
    yield "use_qk_l2norm_in_kernel", dict(good, use_qk_l2norm_in_kernel=1), "use_qk_l2norm_in_kernel:"


@pytest.mark.parametrize("name,args,message", list(_bad_inputs("cpu")), ids=lambda x: x if isinstance(x, str) else "")
def test_bad_input_raises_before_any_launch(name: str, args: dict, message: str, device: str, monkeypatch):
    def no_launch(*_args, **_kwargs):
        raise AssertionError("a kernel was launched for invalid inputs")

    for module in (cumsum_module, kkt_solve_module, wy_module, recurrence_module, output_module):
        monkeypatch.setattr(module, "launch", no_launch)
    args = {key: t.to(device) if isinstance(t, torch.Tensor) else t for key, t in args.items()}
    for entry in (chunk_gated_delta_rule, chunk_gated_delta_rule_intermediates):
        with pytest.raises(ValueError, match=message):
            entry(**args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter's dot path")
def test_interpreted_dots_call_no_blas(monkeypatch):
    """Under the interpreter every kernel dot is our fixed-order sum: numpy.matmul (OpenBLAS,
    whose summation order follows the CPU model and thread count) is never called."""
    import numpy
    from triton.runtime import interpreter

    def no_blas(*args, **kwargs):
        raise AssertionError("numpy.matmul called: a kernel dot went through BLAS")

    monkeypatch.setattr(interpreter.np, "matmul", no_blas)
    assert numpy.matmul is no_blas  # the interpreter's `np` is NumPy itself
    for dtype in ("float32", "bfloat16", "float64"):
        case = _varlen((5, 70), H=1, HV=2, K=32, V=32, dtype=dtype, init_state="random", l2norm=True)
        o, state = chunk_gated_delta_rule(**case_kwargs(make_inputs(case), case, "cpu"), use_qk_l2norm_in_kernel=True)
        assert torch.isfinite(o.float()).all() and torch.isfinite(state).all()


def test_launch_arithmetic_equals_tritons():
    """The launchers' plain-Python cdiv and next_power_of_2 give Triton's values (so the same grids
    and block sizes: the same kernels and bits)."""
    for n in range(1, 5000):
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
        for d in (1, 3, 4, 16, 32, 64):
            assert cdiv(n, d) == triton.cdiv(n, d), (n, d)
    assert cdiv(0, 64) == triton.cdiv(0, 64) == 0
