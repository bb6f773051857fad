"""The recurrence variants that benchmarks/sweep_stages.py times on a GPU
(benchmarks/recurrence_variants.py) compute the same forward: under the interpreter, each one,
applied in a process of its own as the sweep applies it, gives o at bfloat16's rounding floor
and a final state within float32 reach of the float64 reference, dense and packed. A variant
that breaks the algorithm would otherwise show up only as an accuracy column on a card."""

import json
import os
import subprocess
import sys
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
    rows.append([rms_ratio(o, ref_o), rms_ratio(ref_o.bfloat16(), ref_o), rms_ratio(state, ref_state)])
print(json.dumps(rows))
"""


@pytest.mark.parametrize("variant", ["shipped", "independent"])
def test_variant_computes_the_forward(variant):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(BENCHMARKS), variant], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for o_ratio, floor, state_ratio in json.loads(done.stdout.splitlines()[-1]):
        assert o_ratio <= floor * 1.001, (o_ratio, floor)
        assert state_ratio < 1e-5, state_ratio


def test_unknown_variant_is_refused():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import recurrence_variants
    finally:
        sys.path.remove(str(BENCHMARKS))
    with pytest.raises(ValueError, match="variant"):
        recurrence_variants.apply("fastest")
