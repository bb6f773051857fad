"""Alternative forms of the recurrence and output stages (kernels/recurrence.py, output.py), for
timing and accuracy beside the shipped ones (issue #15, steps 2 and 3).
`benchmarks/sweep_stages.py` applies one by name (`apply`) before anything compiles, in a
process of its own.

* `independent`: the shipped recurrence, with the two halves of every split dot (K S and the
  state update: raw @ hi and raw @ lo) summed after both finish rather than chained. Triton
  folds `dot(a, b) + dot(a, c)` into one accumulator (the second MMA waits for the first); an
  fma(x, 1, y), which is x + y rounded once, is not folded, so the two MMA chains can overlap.
  Changes the GPU bits (the sum is rounded in another order); under the interpreter, which sums
  the two products apart anyway, the bits are the shipped ones.
* `single` and `single-output`: the recurrence or the output stage with one bfloat16 MMA per
  product, float32 operands rounded to bfloat16 (the operand precision of flash-linear-
  attention's kernels), in place of the hi/lo pairs and bf16x3 of the precision design
  (kernels/_common.py). Not a candidate: it measures what the precision design costs a stage,
  on the same card in the same call, and its accuracy columns show what it would lose.

Forms measured and dropped (the numbers in benchmarks/results/README.md): W and U precomputed
for all chunks (`wu`) and the independent accumulators in the output stage
(`independent-output`), their code in commit a54815e; the recurrence on S^T (`transposed`), its
code in commit 9cfa8c4.
"""

from __future__ import annotations

import triton
import triton.language as tl

from gdn_verify.kernels import output, recurrence
from gdn_verify.kernels._triton_compat import cast_to, dot

VARIANTS = ("shipped", "independent", "single", "single-output")


@triton.jit
def raw_dot_independent(raw, x_hi, x_lo, PRECISION: tl.constexpr):
    """`raw_dot` with the hi and lo products in separate accumulators."""
    if raw.dtype == tl.bfloat16:
        product = tl.fma(dot(raw, x_hi, PRECISION), 1.0, dot(raw, x_lo, PRECISION))
    else:
        product = dot(raw.to(x_hi.dtype), x_hi, PRECISION)
    return product


@triton.jit
def raw_dot_single(raw, x_hi, x_lo, PRECISION: tl.constexpr):
    """`raw_dot` with the hi half only: one MMA, x rounded to raw's dtype."""
    if raw.dtype == tl.bfloat16:
        product = dot(raw, x_hi, PRECISION)
    else:
        product = dot(raw.to(x_hi.dtype), x_hi, PRECISION)
    return product


@triton.jit
def dot_single(a, b, PRECISION: tl.constexpr):
    """a @ b as one bfloat16 MMA: float32 operands rounded to bfloat16 (16-bit inputs only)."""
    return dot(cast_to(a, tl.bfloat16), cast_to(b, tl.bfloat16), PRECISION)


def apply(name: str) -> None:
    """Make the fast path use variant `name` from now on (before its first compile)."""
    if name not in VARIANTS:
        raise ValueError(f"variant: expected one of {', '.join(VARIANTS)}, got {name!r}")
    if name == "independent":
        recurrence.raw_dot = raw_dot_independent
    elif name == "single":
        recurrence.raw_dot, recurrence.dot = raw_dot_single, dot_single
    elif name == "single-output":
        output.raw_dot, output.dot = raw_dot_single, dot_single
