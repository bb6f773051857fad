"""The causality invariant and the extreme-gate regime, for every implementation.

Causality: other data at a sequence's tokens >= t must change no bit of its outputs before t,
nor of the other sequences' outputs. Extreme gates: a closed (-inf) or huge (-1e30, -1e4,
-1e3) gate mid-chunk resets a head's state; the kernels must stay within every precision's
bounds (a cumulative gate sum dominated by such a gate used to swallow the gates after it).
"""

from __future__ import annotations

import math

import pytest
import torch

from gdn_verify.cases import dense, varlen
from gdn_verify.compare import TENSORS, compare_tensor
from gdn_verify.conventions import gdn_args, gdn_kwargs
from gdn_verify.impls import resolve_impl
from gdn_verify.inputs import EXTREME_GATES, make_inputs
from gdn_verify.kernels import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
from gdn_verify.platform import INTERPRETER_BACKEND
from gdn_verify.reference import recurrent_gated_delta_rule
from gdn_verify.results import RunOptions
from gdn_verify.runner import run_cases
from gdn_verify.suites import suite


def exact(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
          use_qk_l2norm_in_kernel=False):
    o, state = recurrent_gated_delta_rule(q, k, v, g, beta, scale, initial_state, True, cu_seqlens,
                                          use_qk_l2norm_in_kernel, dtype=torch.float64)
    return o.to(v.dtype), state.to(torch.float64 if q.dtype == torch.float64 else torch.float32)


def peeking(q, k, v, g, beta, **kwargs):
    """The exact result plus a trace of the next token's v: an anti-causal bug."""
    o, state = exact(q, k, v, g, beta, **kwargs)
    ahead = torch.roll(v, shifts=-1, dims=1).to(torch.float64)
    return (o.to(torch.float64) + 0.01 * ahead).to(v.dtype), state


def leaky_batch(q, k, v, g, beta, **kwargs):
    """The exact result, except that the first batch row's o is shifted by the last row's last
    v: one sequence depends on another's tokens (each sequence alone stays causal)."""
    o, state = exact(q, k, v, g, beta, **kwargs)
    o = o.to(torch.float64)
    o[0] += 1e-3 * v[-1, -1].to(torch.float64)
    return o.to(v.dtype), state


def _causality(case, spec: str):
    options = RunOptions(audit=False, diagnose=False, invariants=("causality",))
    result = run_cases([case], resolve_impl(spec), "cpu", options).cases[0]
    (check,) = [i for i in result.invariants if i.name == "causality"]
    return check


CASES = [
    dense(70, B=2, H=1, HV=2, K=16, V=16, dtype="float32", init_state="random"),
    varlen((5, 70, 64, 1), H=1, HV=2, K=16, V=16, dtype="bfloat16", l2norm=True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_causal_implementation_passes(case):
    check = _causality(case, "test_causality:exact")
    assert check.passed, check.detail


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_looking_ahead_fails_causality(case):
    check = _causality(case, "test_causality:peeking")
    assert not check.passed and "o:" in check.detail


def test_a_dependence_on_another_sequence_fails_causality():
    # Sequence 0 stays as it was; the last sequence's tokens after its middle change.
    check = _causality(dense(40, B=2, H=1, HV=1, K=16, V=16, dtype="float32"), "test_causality:leaky_batch")
    assert not check.passed and "o:" in check.detail


def test_a_single_token_sequence_is_not_applicable():
    check = _causality(dense(1, H=1, HV=1, K=16, V=16, dtype="float32"), "test_causality:peeking")
    assert check.passed and check.detail.startswith("not applicable")


@pytest.mark.parametrize("spec", ["gdn", "gdn-recurrent"])
@pytest.mark.parametrize("case", CASES + [c for c in suite("cpu") if c.gate == "extreme"][:2], ids=lambda c: c.id)
def test_our_kernels_are_causal(case, spec):
    check = _causality(case, spec)
    assert check.passed, check.detail


def test_the_extreme_regime_places_every_extreme_value_mid_sequence():
    case = varlen((5, 70, 64, 1), H=1, HV=4, K=16, V=16, dtype="float32", gate="extreme")
    g = make_inputs(case)["g"]
    for value in EXTREME_GATES:
        assert (g == value).any(), value
    # Each sequence's middle token is closed or huge on head 0.
    for n, length in enumerate(case.seq_lens):
        assert g[0, case.cu_seqlens[n] + length // 2, 0] <= -1e3
    # Everything else is a mild gate.
    ordinary = g[g > -1e3]
    assert ordinary.min() >= -0.1 and ordinary.max() <= 0.0


@pytest.mark.parametrize("kernel", [chunk_gated_delta_rule, fused_recurrent_gated_delta_rule],
                         ids=["chunk", "recurrent"])
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_one_extreme_gate_stays_within_every_precisions_bounds(kernel, dtype):
    # The probe's case: one token's gate set mid-chunk in a T = 70 sequence (H=2, HV=4,
    # K=V=32, initial state), against the float64 reference on the same inputs.
    case = dense(70, H=2, HV=4, K=32, V=32, dtype=dtype, init_state="random")
    for value in (-300.0, -1e3, -3e3, -1e4, -1e6, -1e30, -math.inf):
        inputs = make_inputs(case)
        inputs["g"][0, 37, :] = value
        args = gdn_args(inputs)
        kwargs = gdn_kwargs(case, inputs)
        expected = recurrent_gated_delta_rule(*args, **kwargs, dtype=torch.float64)
        for name, got in zip(TENSORS, kernel(*args, **kwargs)):
            check = compare_tensor(name, got, expected[TENSORS.index(name)], case, INTERPRETER_BACKEND,
                                   poisoned=False)
            assert not check.failures, (value, check.failures)
