"""Alternative forms of the state recurrence (kernels/recurrence.py), for timing and accuracy
beside the shipped one (issue #15, step 3). `benchmarks/sweep_stages.py` applies one by name
(`apply`) before anything compiles, in a process of its own.

* `independent`: the shipped kernel, with the two halves of every split dot (K S and the
  state update: raw @ hi and raw @ lo) summed after both finish rather than chained. Triton
  folds `dot(a, b) + dot(a, c)` into one accumulator (the second MMA waits for the first); an
  fma(x, 1, y), which is x + y rounded once, is not folded, so the two MMA chains can overlap.
  Changes the GPU bits (the sum is rounded in another order); under the interpreter, which sums
  the two products apart anyway, the bits are the shipped ones.

Forms measured and dropped (their code is in commit a54815e; the numbers in
benchmarks/results/README.md): W and U precomputed for all chunks (`wu`), and the independent
accumulators in the output stage (`independent-output`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from gdn_verify.kernels import recurrence
from gdn_verify.kernels._triton_compat import dot

VARIANTS = ("shipped", "independent")


@triton.jit
def raw_dot_independent(raw, x_hi, x_lo, PRECISION: tl.constexpr):
    """`raw_dot` with the hi and lo products in separate accumulators."""
    if raw.dtype == tl.bfloat16:
        product = tl.fma(dot(raw, x_hi, PRECISION), 1.0, dot(raw, x_lo, PRECISION))
    else:
        product = dot(raw.to(x_hi.dtype), x_hi, PRECISION)
    return product


def apply(name: str) -> None:
    """Make the fast path use variant `name` from now on (before its first compile)."""
    if name not in VARIANTS:
        raise ValueError(f"variant: expected one of {', '.join(VARIANTS)}, got {name!r}")
    if name == "independent":
        recurrence.raw_dot = raw_dot_independent
