"""Comparison metrics on tensors small enough to compute by hand."""

from __future__ import annotations

import math

import pytest
import torch

from gdn_verify.cases import dense, varlen
from gdn_verify.compare import (
    TENSORS,
    chunk_slices,
    compare_outputs,
    compare_tensor,
    rms_ratio,
    tolerance,
)
from gdn_verify.kernels import new_output, poisoned_outputs
from gdn_verify.suites import DTYPES
from gdn_verify.tolerances import BACKENDS, TOLERANCES

BACKEND = "cpu-interpreter"


def test_rms_ratio_and_max_abs_by_hand():
    case = dense(2, H=1, HV=1, K=1, V=2, dtype="float32")
    r = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64).reshape(1, 2, 1, 2)
    a = torch.tensor([[3.0, 4.0], [0.0, 1.0]]).reshape(1, 2, 1, 2)
    c = compare_tensor("o", a, r, case, BACKEND, poisoned=False)
    assert c.rms_ratio == pytest.approx(0.2)  # ||(0, 0, 0, 1)|| / ||(3, 4, 0, 0)||
    assert c.max_abs == 1.0 and c.ref_max_abs == 4.0
    assert c.worst_slice == {"sequence": 0, "head": 0, "chunk": 0, "tokens": [0, 2], "ratio": pytest.approx(0.2)}


def test_slice_of_a_vanished_reference_is_judged_at_the_tensor_scale():
    """Sequence 1's reference is zero; its error 0.5 is measured against the norm it would
    have with the energy spread evenly: 5 * sqrt(2 / 4)."""
    case = varlen((1, 1), H=1, HV=1, K=1, V=2, dtype="float32")
    r = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64).reshape(1, 2, 1, 2)
    a = torch.tensor([[3.0, 4.0], [0.0, 0.5]]).reshape(1, 2, 1, 2)
    c = compare_tensor("o", a, r, case, BACKEND, poisoned=False)
    assert c.worst_slice["sequence"] == 1 and c.worst_slice["tokens"] == [1, 2]
    assert c.worst_slice["ratio"] == pytest.approx(0.5 / (5 * math.sqrt(0.5)))


def test_zero_reference_does_not_divide_by_zero():
    assert rms_ratio(torch.zeros(3), torch.zeros(3)) == 0.0
    assert rms_ratio(torch.full((3,), 1e-30), torch.zeros(3)) == math.inf
    case = dense(5, H=1, HV=2, K=4, V=3, dtype="float32", beta="zero")
    zero = {"o": torch.zeros(1, 5, 2, 3, dtype=torch.float64),
            "final_state": torch.zeros(1, 2, 4, 3, dtype=torch.float64)}
    same = compare_outputs({"o": zero["o"].float(), "final_state": zero["final_state"].float()}, zero, case, BACKEND,
                           poisoned=False)
    assert all(c.passed and c.rms_ratio == 0 and c.worst_slice["ratio"] == 0 for c in same.values())
    off = compare_tensor("o", torch.full((1, 5, 2, 3), 1e-6), zero["o"], case, BACKEND, poisoned=False)
    assert not off.passed and off.rms_ratio > 1e20  # against float32's smallest normal


def test_a_reference_below_the_dtype_range_is_matched_by_zero():
    """A state decayed by exp(-210) is ~1e-91: float32 holds 0 there, and that is right."""
    case = dense(5, H=1, HV=2, K=4, V=3, dtype="float32", init_state="random", gate="strong", beta="zero")
    r = torch.full((1, 2, 4, 3), 1e-91, dtype=torch.float64)
    assert compare_tensor("final_state", torch.zeros(1, 2, 4, 3), r, case, BACKEND, poisoned=False).passed
    tiny = torch.finfo(torch.float32).tiny
    wrong = compare_tensor("final_state", torch.full((1, 2, 4, 3), 1e3 * tiny), r, case, BACKEND, poisoned=False)
    assert wrong.rms_ratio == pytest.approx(1e3)


def test_one_broken_chunk_fails_on_the_worst_slice_while_the_global_ratio_passes():
    case = dense(64 * 40, H=1, HV=4, K=8, V=8, dtype="bfloat16")
    tol = tolerance("o", "bfloat16", BACKEND)
    n_slices = len(chunk_slices(case)[0]) * case.HV
    error = 2 * tol.slice  # the broken slice's own ratio
    assert error / math.sqrt(n_slices) < tol.rms, "tolerances leave no room for this scenario"
    r = torch.randn(1, case.T, case.HV, case.V, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = r.clone()
    a[0, 64 * 7:64 * 8, 2] *= 1 + error
    c = compare_tensor("o", a, r, case, BACKEND, poisoned=False)
    assert c.rms_ratio < tol.rms
    assert c.worst_slice["ratio"] == pytest.approx(error)
    assert (c.worst_slice["sequence"], c.worst_slice["head"], c.worst_slice["chunk"]) == (0, 2, 7)
    assert c.worst_slice["tokens"] == [448, 512]
    assert not c.passed and "worst slice" in c.failures[0] and "chunk 7" in c.failures[0]


ROUNDED = ("float16", "bfloat16")


def _random_o(case, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(case.B, case.T, case.HV, case.V, dtype=torch.float64, generator=g)


@pytest.mark.parametrize("dtype", ROUNDED)
def test_the_reference_rounded_into_the_dtype_has_no_error_beyond_rounding(dtype):
    case = dense(64 * 4, H=1, HV=2, K=8, V=16, dtype=dtype)
    r = _random_o(case)
    c = compare_tensor("o", r.to(getattr(torch, dtype)), r, case, BACKEND, poisoned=False)
    assert c.rms_ratio > 1e-4  # the rounding itself, which the total bounds have to allow
    assert c.excess_ratio == 0.0 and c.worst_excess_slice["ratio"] == 0.0
    assert c.passed and c.to_json()["tolerance"]["excess"] == list(tolerance("o", dtype, BACKEND).excess)


def test_tf32_grade_error_on_top_of_rounding_fails_only_beyond_rounding():
    """Relative noise of 5e-4 (a TF32 dot) before rounding to bfloat16 hides in the total
    ratio (bfloat16 rounding alone is ~1.7e-3) but not in the error beyond rounding."""
    case = dense(64 * 4, H=1, HV=2, K=8, V=16, dtype="bfloat16")
    tol = tolerance("o", "bfloat16", BACKEND)
    r = _random_o(case)
    noise = torch.randn(r.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    c = compare_tensor("o", (r * (1 + 5e-4 * noise)).to(torch.bfloat16), r, case, BACKEND, poisoned=False)
    assert c.rms_ratio < tol.rms and c.worst_slice["ratio"] < tol.slice
    assert c.excess_ratio == pytest.approx(5e-4, rel=0.15)
    assert c.worst_excess_slice["ratio"] > tol.excess[1]
    assert len(c.failures) == 2 and all("beyond rounding" in f for f in c.failures)


@pytest.mark.parametrize("dtype", ROUNDED)
def test_zero_and_subnormal_references_beyond_rounding(dtype):
    case = dense(5, H=1, HV=2, K=4, V=3, dtype=dtype, gate="strong", beta="zero")
    out = getattr(torch, dtype)
    zero = torch.zeros(1, 5, 2, 3, dtype=torch.float64)
    same = compare_tensor("o", zero.to(out), zero, case, BACKEND, poisoned=False)
    assert same.passed and same.excess_ratio == 0 and same.worst_excess_slice["ratio"] == 0
    off = compare_tensor("o", torch.full((1, 5, 2, 3), 1e-6, dtype=out), zero, case, BACKEND, poisoned=False)
    # Judged against the dtype's smallest normal number per element, with nothing to subtract.
    assert not off.passed and off.excess_ratio == off.rms_ratio > 1e-2
    # A reference below the smallest normal number rounds to subnormals or zero; that rounding
    # is all the error there is, and the excess stays 0 rather than dividing by ~0.
    tiny = _random_o(case) * torch.finfo(out).tiny * 1e-2
    rounded = compare_tensor("o", tiny.to(out), tiny, case, BACKEND, poisoned=False)
    assert rounded.passed and rounded.excess_ratio == 0 and 0 < rounded.rms_ratio < 1e-2


def test_chunks_follow_sequences_in_a_packed_batch():
    case = varlen((0, 70, 1, 64), H=1, HV=1, K=1, V=1, dtype="float32")
    slices, owner = chunk_slices(case)
    assert [(s.sequence, s.chunk, s.start, s.end) for s in slices] == [
        (1, 0, 0, 64), (1, 1, 64, 70), (2, 0, 70, 71), (3, 0, 71, 135)]
    assert owner.tolist() == [0] * 64 + [1] * 6 + [2] + [3] * 64


def test_final_state_slices_are_per_sequence_and_head():
    case = varlen((3, 0, 2), H=1, HV=2, K=2, V=2, dtype="float32")
    r = torch.ones(3, 2, 2, 2, dtype=torch.float64)
    a = r.clone()
    a[1, 1, 0, 0] = 2.0
    c = compare_tensor("final_state", a, r, case, BACKEND, poisoned=False)
    assert c.worst_slice["sequence"] == 1 and c.worst_slice["head"] == 1 and c.worst_slice["chunk"] is None
    assert c.worst_slice["ratio"] == pytest.approx(0.5)


def test_a_kernel_returning_zeros_fails():
    case = dense(70, H=1, HV=2, K=4, V=4, dtype="float32")
    r = torch.randn(1, 70, 2, 4, dtype=torch.float64)
    c = compare_tensor("o", torch.zeros(1, 70, 2, 4), r, case, BACKEND, poisoned=False)
    assert c.rms_ratio == pytest.approx(1.0) and not c.passed


def test_unwritten_and_non_finite_elements():
    case = dense(4, H=1, HV=1, K=2, V=2, dtype="bfloat16")
    r = torch.ones(1, 4, 1, 2, dtype=torch.float64)
    with poisoned_outputs():
        a = new_output((1, 4, 1, 2), torch.bfloat16, "cpu")
    a[:, :3] = 1.0  # token 3 never written
    a[0, 1, 0, 1] = float("nan")
    a[0, 2, 0, 0] = float("inf")
    c = compare_tensor("o", a, r, case, BACKEND, poisoned=True)
    assert c.n_unwritten == 2 and c.first_unwritten == [0, 3, 0, 0]
    assert c.n_nan == 1 and c.n_inf == 1 and c.first_nonfinite == [0, 1, 0, 1]
    assert c.rms_ratio == math.inf and c.max_abs == math.inf
    assert any("never written" in f for f in c.failures) and any("NaN" in f for f in c.failures)
    # Without poisoning the same NaN pattern counts as computed NaNs.
    assert compare_tensor("o", a, r, case, BACKEND, poisoned=False).n_nan == 3


def test_shape_mismatch_and_missing_state_are_errors():
    case = dense(4, H=1, HV=1, K=2, V=2, dtype="float32")
    r = {"o": torch.ones(1, 4, 1, 2, dtype=torch.float64), "final_state": torch.ones(1, 1, 2, 2, dtype=torch.float64)}
    with pytest.raises(ValueError, match="shape"):
        compare_tensor("o", torch.ones(1, 4, 2), r["o"], case, BACKEND, poisoned=False)
    with pytest.raises(ValueError, match="final_state"):
        compare_outputs({"o": r["o"], "final_state": None}, r, case, BACKEND, poisoned=False)


def test_tolerance_table_is_complete_and_ordered_by_precision():
    for backend in BACKENDS:
        for tensor in TENSORS:
            f64, f32, f16, bf16 = (tolerance(tensor, dtype, backend) for dtype in DTYPES)
            assert all(t.rms <= t.slice for t in (f64, f32, f16, bf16))
            assert f64.slice <= 1e-11 < f32.rms <= 1e-4
            assert f16.rms <= bf16.rms
        o = [tolerance("o", dtype, backend).rms for dtype in DTYPES]
        assert o == sorted(o)
    assert len(TOLERANCES) == len(BACKENDS) * len(TENSORS) * len(DTYPES)
    # The error beyond rounding is bounded where o is rounded below float32, tightly enough to
    # catch TF32-grade dots (about 5e-4 relative).
    for (tensor, dtype, _), tol in TOLERANCES.items():
        assert (tol.excess is not None) == (tensor == "o" and dtype in ROUNDED)
        assert tol.excess is None or tol.excess[0] <= tol.excess[1] < 2.5e-4
    with pytest.raises(ValueError, match="no tolerance"):
        tolerance("o", "float32", "tpu")
