"""The recurrence variants that benchmarks/sweep_stages.py times on a GPU
(benchmarks/recurrence_variants.py) compute the same forward: under the interpreter, each one,
applied in a process of its own as the sweep applies it, gives o at bfloat16's rounding floor
and a final state within float32 reach of the float64 reference, dense and packed. A variant
that breaks the algorithm would otherwise show up only as an accuracy column on a card. The
independent accumulators only reorder a sum the interpreter already forms apart, so there they
must give the shipped bits: the CPU golden store does not depend on which form ships."""

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
import recurrence_variants
recurrence_variants.apply(sys.argv[2])
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
# The name the kernel resolves its split dot by (at compile time on a GPU, per call here).
import gdn_verify.kernels.recurrence as stage
rows.append(stage.recurrence_kernel.fn.__globals__["raw_dot"].fn.__name__)
print(json.dumps(rows))
"""


@cache
def forward_rows(variant: str) -> list[list]:
    """[o error ratio, bf16 rounding's ratio, final state error ratio, o digest, state digest],
    dense then packed, then the name of the split dot the recurrence kernel calls, from a process
    that applied `variant` first."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(BENCHMARKS), variant], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("variant", ["shipped", "independent"])
def test_variant_computes_the_forward(variant):
    *rows, split_dot = forward_rows(variant)
    assert split_dot == {"shipped": "raw_dot", "independent": "raw_dot_independent"}[variant]
    for o_ratio, floor, state_ratio, *_ in rows:
        assert o_ratio <= floor * 1.001, (o_ratio, floor)
        assert state_ratio < 1e-5, state_ratio


def test_independent_accumulators_keep_the_interpreter_bits():
    digests = {variant: [row[3:] for row in forward_rows(variant)[:-1]] for variant in ("shipped", "independent")}
    assert digests["independent"] == digests["shipped"]


def test_unknown_variant_is_refused():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import recurrence_variants
    finally:
        sys.path.remove(str(BENCHMARKS))
    with pytest.raises(ValueError, match="variant"):
        recurrence_variants.apply("fastest")
