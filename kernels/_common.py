"""Constants and small Triton helpers shared by the chunk stages.

Precision policy (the one place it is decided):

* Compute dtype: float64 inputs run every stage in float64 ("exact mode"); float32, float16 and
  bfloat16 inputs accumulate in float32, with float32 intermediates and state.
* Dots whose operands are both raw 16-bit inputs (K K^T, Q K^T) take them natively: the
  products are exact and the accumulation is float32.
* A raw bfloat16 input against a float32 tile (K S, Q S, K^T V'): the float32 tile is split
  into two bfloat16 halves, hi + lo, which hold it to 2^-18 relative, and each half is a native
  dot with exact products (`split_operand`, `raw_dot`). Two MMAs instead of bf16x3's three, no
  float32 copy of the raw tile, and the same arithmetic under the interpreter as on the GPU.
  (tl.dot wants one dtype for both operands, and float16's 11 significant bits do not fit
  bfloat16's 8: raw float16 tiles are converted to float32, exactly, and take the rule below.)
* Every other dot has at least one float32 operand (state, Tm, V', X). Their `tl.dot` input
  precision is `DOT_PRECISION[input dtype]`:
    - float32 inputs: "ieee", so float32 problems never silently run in TF32.
    - float16 / bfloat16 inputs: "bf16x3" (each float32 operand split into two bfloat16
      halves, three bfloat16 MMAs, error about 2^-16 relative, at 1.5x the tensor-core time of
      one TF32 MMA). TF32 would round every float32 operand to 10 mantissa bits (about 5e-4
      relative error per dot, truncating rather than rounding on some paths), and the bf16
      target (RMS error ratio of o <= 0.0020 against float64, of which bf16 rounding of the
      exact result alone takes 0.0017) leaves only about 0.001 for everything else: TF32 in the
      state recurrence would spend most of it.
  The interpreter ignores input_precision (NumPy computes float32 dots in IEEE float32) and
  accepts only "tf32", "tf32x3" and "ieee", so under TRITON_INTERPRET=1 every float32 dot is
  "ieee"; there the CPU tests measure the kernels' arithmetic without the ~1e-5 of bf16x3.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from gdn_verify.contract import CHUNK_SIZE

from ._triton_compat import INTERPRET, cast_to, dot

CHUNK = tl.constexpr(CHUNK_SIZE)

DOT_PRECISION = {"float64": "ieee", "float32": "ieee", "float16": "bf16x3", "bfloat16": "bf16x3"}

def compute_dtype(input_dtype: torch.dtype) -> torch.dtype:
    """dtype of every intermediate and of the state for inputs of input_dtype."""
    return torch.float64 if input_dtype == torch.float64 else torch.float32


def dot_precision(input_dtype: torch.dtype) -> str:
    """input_precision of the dots with a float32 operand, for inputs of input_dtype."""
    if INTERPRET:
        return "ieee"
    return DOT_PRECISION[str(input_dtype).removeprefix("torch.")]


# The launchers' grid and block arithmetic, in plain Python: triton.cdiv and
# triton.next_power_of_2 are constexpr functions, whose call wrapper costs several microseconds
# of host time per call (measured with benchmarks/host_ops.py: benchmarks/results/design_history.md).
def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for non-negative a and positive b."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(n - 1, 0).bit_length()


def block_size(n: int) -> int:
    """Padded tile extent for a head dimension: next power of two, at least 16 (tl.dot's minimum)."""
    return max(16, next_power_of_2(n))


def split_scale(scale: float) -> tuple[float, float]:
    """scale as two float32-representable parts whose sum carries 48 bits.

    Triton passes a Python float to a kernel as float32 (the interpreter ignores float64
    annotations), which would cost exact mode 1e-8 relative; the kernel adds the two parts in
    its compute dtype instead.
    """
    hi = float(np.float32(scale))
    return hi, float(np.float32(scale - hi))


@triton.jit
def masked_exp(diff, mask):
    """exp(diff) where mask holds, 0 elsewhere; masked entries are zeroed before exp.

    Gate differences outside the causal part are positive and would overflow.
    """
    return tl.where(mask, tl.exp(tl.where(mask, diff, 0.0)), 0.0)


@triton.jit
def split_operand(x, RAW: tl.constexpr):
    """x (float32) as the right operand of dots against raw inputs of dtype RAW.

    For bfloat16, (hi, lo): hi = x rounded to bfloat16, lo = the rest rounded (x - hi is exact
    in float32), so |x - hi - lo| <= 2^-18 |x|. For other dtypes, (x, x): `raw_dot` reads hi only.
    """
    if RAW == tl.bfloat16:
        hi = cast_to(x, tl.bfloat16)
        lo = cast_to(x - hi.to(x.dtype), tl.bfloat16)
    else:
        hi = x
        lo = x
    return hi, lo


@triton.jit
def raw_dot(raw, x_hi, x_lo, PRECISION: tl.constexpr):
    """raw @ x for a raw input tile and x split by `split_operand` for raw's dtype."""
    if raw.dtype == tl.bfloat16:
        product = dot(raw, x_hi, PRECISION) + dot(raw, x_lo, PRECISION)
    else:
        product = dot(raw.to(x_hi.dtype), x_hi, PRECISION)
    return product
