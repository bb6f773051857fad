"""The stage variants that benchmarks/sweep_stages.py times on a GPU (benchmarks/stage_variants.py)
compute the same forward: under the interpreter, each one, applied in a process of its own as the
sweep applies it, is the form the kernels then call, and the candidates give o at bfloat16's
rounding floor and a final state within float32 reach of the float64 reference, dense and packed. A
variant that breaks the algorithm would otherwise show up only as an accuracy column on a card. The
independent accumulators only reorder what the interpreter sums apart anyway, so there they must
give the shipped bits: the CPU golden store does not depend on which form ships. The one-MMA forms
exist to measure what the precision design costs, so they must lose the accuracy it buys."""

import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
import stage_variants
stage_variants.apply(sys.argv[2])
from gdn_verify.compare import rms_ratio
from gdn_verify.goldens import tensor_sha256
from gdn_verify.kernels import chunk_gated_delta_rule
from gdn_verify.reference import recurrent_gated_delta_rule

gen = torch.Generator().manual_seed(0)
T, H, HV, K, V = 130, 1, 2, 32, 32
def randn(*shape):
    return torch.randn(shape, generator=gen)
x = dict(q=randn(1, T, H, K).bfloat16(), k=randn(1, T, H, K).bfloat16(), v=randn(1, T, HV, V).bfloat16(),
         g=-0.1 * torch.rand((1, T, HV), generator=gen), beta=torch.sigmoid(randn(1, T, HV)).bfloat16(),
         output_final_state=True)
rows = []
for cu, n in ((None, 1), (torch.tensor([0, 5, 70, T], dtype=torch.int32), 3)):
    args = dict(x, cu_seqlens=cu, initial_state=randn(n, HV, K, V))
    o, state = chunk_gated_delta_rule(**args, use_qk_l2norm_in_kernel=True)
    ref_o, ref_state = recurrent_gated_delta_rule(**args, l2norm=True)
    rows.append([rms_ratio(o, ref_o), rms_ratio(ref_o.bfloat16(), ref_o), rms_ratio(state, ref_state),
                 tensor_sha256(o), tensor_sha256(state)])
# What each stage's kernel resolves its dots by (at compile time on a GPU, per call here).
from gdn_verify.kernels import output, recurrence
resolved = {"recurrence_kernel": recurrence.recurrence_kernel.fn.__name__}
for stage, kernel in (("recurrence", recurrence.recurrence_kernel), ("output", output.output_kernel)):
    for name in ("raw_dot", "dot"):
        resolved[f"{stage}.{name}"] = kernel.fn.__globals__[name].fn.__name__
rows.append(resolved)
print(json.dumps(rows))
"""


@cache
def forward_rows(variant: str) -> list[list]:
    """[o error ratio, bf16 rounding's ratio, final state error ratio, o digest, state digest],
    dense then packed, then what the recurrence and output kernels resolve their dots by, from a
    process that applied `variant` first."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(BENCHMARKS), variant], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


SHIPPED = {"recurrence_kernel": "recurrence_kernel", "recurrence.raw_dot": "raw_dot", "recurrence.dot": "dot",
           "output.raw_dot": "raw_dot", "output.dot": "dot"}
RESOLVES = {
    "shipped": SHIPPED,
    "independent": {**SHIPPED, "recurrence.raw_dot": "raw_dot_independent"},
    "single": {**SHIPPED, "recurrence.raw_dot": "raw_dot_single", "recurrence.dot": "dot_single"},
    "single-output": {**SHIPPED, "output.raw_dot": "raw_dot_single", "output.dot": "dot_single"},
}


@pytest.mark.parametrize("variant", ["shipped", "independent"])
def test_candidate_computes_the_forward(variant):
    *rows, resolved = forward_rows(variant)
    assert resolved == RESOLVES[variant]
    for o_ratio, floor, state_ratio, *_ in rows:
        assert o_ratio <= floor * 1.001, (o_ratio, floor)
        assert state_ratio < 1e-5, state_ratio


def test_independent_accumulators_keep_the_interpreter_bits():
    digests = {name: [row[3:] for row in forward_rows(name)[:-1]] for name in ("shipped", "independent")}
    assert digests["independent"] == digests["shipped"]


@pytest.mark.parametrize("variant", ["single", "single-output"])
def test_one_mma_forms_lose_the_precision_design(variant):
    *rows, resolved = forward_rows(variant)
    assert resolved == RESOLVES[variant]
    for o_ratio, floor, state_ratio, *_ in rows:
        assert o_ratio > floor * 1.01, (o_ratio, floor)
        if variant == "single":
            assert state_ratio > 1e-4, state_ratio
        else:  # the recurrence is the shipped one
            assert state_ratio < 1e-5, state_ratio


def test_unknown_variant_is_refused():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import stage_variants
    finally:
        sys.path.remove(str(BENCHMARKS))
    with pytest.raises(ValueError, match="variant"):
        stage_variants.apply("fastest")
