"""The token-by-token kernel (kernels/fused_recurrent.py) against the float64 recurrence.

Runs compiled on a CUDA machine and under the Triton interpreter elsewhere (conftest), with
shapes small enough for the interpreter: about a minute for the whole file on one core.
"""

from functools import partial

import pytest
import torch

from gdn_verify.cases import Case
from gdn_verify.cases import dense as _dense
from gdn_verify.cases import varlen as _varlen
from gdn_verify.contract import GDNInputError
from gdn_verify.inputs import make_inputs
from gdn_verify.kernels import fused_recurrent as fused_recurrent_module
from gdn_verify.kernels import compiled_variants, poisoned_outputs, unwritten_mask
from gdn_verify.kernels.fused_recurrent import fused_recurrent_gated_delta_rule
from gdn_verify.reference import recurrent_gated_delta_rule

from kernel_checks import (case_kwargs, check_alone_equals_varlen, check_deterministic,
                           check_empty_sequences_keep_state, error_ratio)

KERNEL = "fused_recurrent_gated_delta_rule_kernel"
DTYPES = ("float64", "float32", "float16", "bfloat16")

# Cases are float32 unless they say otherwise; accuracy tests rerun each in every dtype.
dense = partial(_dense, dtype="float32")
varlen = partial(_varlen, dtype="float32")

# Bounds on the RMS error ratio against the float64 reference, (o, final_state), over
# ACCURACY_CASES. The reference sees the same (already rounded) inputs, so what remains is
# the kernel's own arithmetic and, for o, the rounding into its storage dtype.
TOLERANCES = {
    # Exact mode: the algorithm alone. Measured worst: o 4.2e-16, state 2.8e-16 (interpreter);
    # o 5.2e-16, state 2.7e-16 (H200, Triton 3.6).
    "float64": (1e-10, 1e-10),
    # float32 arithmetic. Measured worst: o 2.8e-7, state 2.3e-7 (interpreter); o 3.0e-7,
    # state 2.5e-7 (H200).
    "float32": (1e-5, 1e-5),
    # o is rounded into half precision: unit roundoff 2^-11 (fp16) and 2^-8 (bf16) give about
    # 2.3e-4 and 1.8e-3 RMS for round-to-nearest; the state stays float32, computed from the
    # same inputs as the reference. Measured worst, interpreter and H200 alike to two digits:
    # fp16 o 2.3e-4, state 3.3e-7; bf16 o 1.8e-3, state 2.6e-7. o bounds are about twice the
    # measured worst (a lost rounding mode, truncation, doubles the error); state bounds are
    # float32's.
    "float16": (5e-4, 1e-5),
    "bfloat16": (4e-3, 1e-5),
}

_SMALL = dict(H=1, HV=2, K=16, V=16)

# Shapes, layouts and regimes; each runs in every dtype.
ACCURACY_CASES = [
    *(dense(T, B=2, init_state="random", **_SMALL) for T in (1, 2, 3, 17, 64, 65)),
    dense(17, **_SMALL),  # zero initial state
    # Decode: one token per sequence, dense and packed.
    dense(1, B=6, init_state="random", **_SMALL),
    varlen((1,) * 12, init_state="random", **_SMALL),
    # Packed prefill with single-token and zero-length segments at both ends.
    varlen((0, 1, 5, 0, 17, 1, 0), init_state="random", **_SMALL),
    varlen((0, 1, 5, 0, 17, 1, 0), l2norm=True, **_SMALL),
    # GVA: three value heads per key head.
    dense(9, H=2, HV=6, K=16, V=16, init_state="random"),
    # Head sizes: non-powers of two, K != V both ways, several V-blocks, the extremes.
    dense(7, H=1, HV=2, K=60, V=100, init_state="random", l2norm=True),
    varlen((3, 0, 5), H=1, HV=2, K=40, V=24, init_state="random"),
    dense(5, H=1, HV=1, K=16, V=48, init_state="random"),
    dense(3, H=1, HV=1, K=256, V=256, init_state="random"),
    dense(4, H=1, HV=2, K=1, V=1, init_state="random"),
    # Gate and beta regimes (strong: g in [-30, -1] per token; mixed: 0, mild, strong).
    dense(17, gate="zero", beta="one", init_state="random", **_SMALL),
    dense(17, gate="strong", beta="zero", init_state="random", **_SMALL),
    dense(17, gate="strong", beta="one", **_SMALL),
    dense(17, gate="mixed", beta="random", init_state="random", l2norm=True, **_SMALL),
    dense(17, gate="zero", beta="zero", init_state="random", scale=0.3, **_SMALL),
]




def run_kernel(inputs: dict, case: Case, device: str):
    return fused_recurrent_gated_delta_rule(**case_kwargs(inputs, case, device),
                                            use_qk_l2norm_in_kernel=case.l2norm)


def run_reference(inputs: dict, case: Case):
    return recurrent_gated_delta_rule(**case_kwargs(inputs, case, "cpu"), l2norm=case.l2norm)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("base", ACCURACY_CASES, ids=lambda c: c.id.removesuffix("-f32").replace("-f32-", "-"))
def test_matches_float64_reference(base: Case, dtype: str, device: str):
    case = base.with_(dtype=dtype)
    inputs = make_inputs(case)
    o, final_state = run_kernel(inputs, case, device)
    ref_o, ref_state = run_reference(inputs, case)

    state_dtype = torch.float64 if dtype == "float64" else torch.float32
    assert o.dtype == inputs["v"].dtype and o.shape == inputs["v"].shape
    assert final_state.dtype == state_dtype and final_state.shape == (case.N, case.HV, case.K, case.V)
    for name, got in (("o", o), ("final_state", final_state)):
        assert torch.isfinite(got).all(), f"{name}: {int((~torch.isfinite(got)).sum())} non-finite values"

    o_tol, state_tol = TOLERANCES[dtype]
    o_err, state_err = error_ratio(o, ref_o), error_ratio(final_state, ref_state)
    assert o_err <= o_tol, f"o: RMS error ratio {o_err:.3g} > {o_tol:g}"
    assert state_err <= state_tol, f"final_state: RMS error ratio {state_err:.3g} > {state_tol:g}"


def test_extreme_decay_stays_finite(device: str):
    """g = -1000 on some tokens (exp underflows to 0 and wipes the state) next to g = 0."""
    case = dense(9, B=2, init_state="random", **_SMALL)
    inputs = make_inputs(case)
    inputs["g"][:, 2::3] = -1000.0
    inputs["g"][:, 1::3] = 0.0
    o, final_state = run_kernel(inputs, case, device)
    ref_o, ref_state = run_reference(inputs, case)
    assert torch.isfinite(o).all() and torch.isfinite(final_state).all()
    assert error_ratio(o, ref_o) <= TOLERANCES["float32"][0]
    assert error_ratio(final_state, ref_state) <= TOLERANCES["float32"][1]


@pytest.mark.parametrize("init_state", ["random", "none"])
def test_zero_length_sequence_keeps_its_state_bitwise(init_state: str, device: str):
    case = varlen((0, 4, 0, 0, 3, 0), init_state=init_state, **_SMALL)
    check_empty_sequences_keep_state(run_kernel, case, device)


@pytest.mark.parametrize("base", [
    varlen((0, 1, 5, 0, 17, 1, 0), init_state="random", **_SMALL),
    dense(3, B=2, H=1, HV=2, K=60, V=100),
], ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_output_element_is_written(base: Case, dtype: str, device: str):
    case = base.with_(dtype=dtype)
    with poisoned_outputs():
        o, final_state = run_kernel(make_inputs(case), case, device)
    for name, t in (("o", o), ("final_state", final_state)):
        unwritten = unwritten_mask(t)
        assert not unwritten.any(), f"{name}: {int(unwritten.sum())} of {t.numel()} elements never written"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_run_to_run_bitwise_determinism(dtype: str, device: str):
    case = varlen((5, 0, 17, 1), H=1, HV=2, K=60, V=40, dtype=dtype, init_state="random", l2norm=True)
    check_deterministic(run_kernel, case, device)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sequence_alone_equals_sequence_in_varlen_batch(dtype: str, device: str):
    """Batch invariance: each sequence of a packed batch, run on its own (dense, B = 1),
    gives the same bits as inside the batch."""
    case = varlen((3, 0, 17, 1, 6), H=1, HV=2, K=16, V=40, dtype=dtype, init_state="random")
    check_alone_equals_varlen(run_kernel, case, device)


@pytest.mark.parametrize("layout", ["dense", "varlen"])
def test_compiled_variants_do_not_depend_on_sequence_lengths(layout: str, device: str):
    def run(lengths):
        case = Case(layout=layout, seq_lens=lengths, H=1, HV=1, K=16, V=16, dtype="bfloat16",
                    init_state="random")
        run_kernel(make_inputs(case), case, device)

    # Counting from T = 64 alone: the count only grows, so compare before and after the sweep.
    run((64,) if layout == "dense" else (64, 0))
    before = compiled_variants()[KERNEL]
    sweep = [(1,), (2,), (3,), (16,), (17,), (65,), (1,) * 5, (7,) * 3]
    if layout == "varlen":
        sweep += [(0, 1), (1, 0, 5), (17, 2), (0,)]
    for lengths in sweep:
        run(lengths)
    assert compiled_variants()[KERNEL] == before


def test_bad_input_is_rejected_before_any_launch(monkeypatch, device: str):
    launches = []
    monkeypatch.setattr(fused_recurrent_module, "launch", lambda *a, **kw: launches.append(a))
    case = dense(3, **_SMALL)
    args = case_kwargs(make_inputs(case), case, device)
    args["beta"] = args["beta"][:, :, :1]  # one value head instead of HV = 2
    with pytest.raises(GDNInputError, match=r"^beta: expected shape \(1, 3, 2\)"):
        fused_recurrent_gated_delta_rule(**args)
    args = case_kwargs(make_inputs(case), case, device)
    with pytest.raises(GDNInputError, match="use_qk_l2norm_in_kernel"):
        fused_recurrent_gated_delta_rule(**args, use_qk_l2norm_in_kernel=1)
    assert launches == []
    # The stub does see a valid call, so the empty list above means something.
    fused_recurrent_gated_delta_rule(**case_kwargs(make_inputs(case), case, device))
    assert len(launches) == 1
