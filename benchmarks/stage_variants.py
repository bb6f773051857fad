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
* `transposed`: the recurrence on S^T, so every product has the tile computed in the loop (S,
  the corrected values, the update) on the left, the side an MMA may read from registers, and
  the loaded tile (K, Tm) on the right, read from shared memory: the shipped form stores its
  computed right operands to shared memory every chunk (six tiles). Each element of each
  product sums the same terms, so under the interpreter (a fixed pairwise sum) the bits are the
  shipped ones; on a GPU the MMA shapes differ (M = the value block).
* `single` and `single-output`: the recurrence or the output stage with one bfloat16 MMA per
  product, float32 operands rounded to bfloat16 (the operand precision of flash-linear-
  attention's kernels), in place of the hi/lo pairs and bf16x3 of the precision design
  (kernels/_common.py). Not a candidate: it measures what the precision design costs a stage,
  on the same card in the same call, and its accuracy columns show what it would lose.

Forms measured and dropped (their code is in commit a54815e; the numbers in
benchmarks/results/README.md): W and U precomputed for all chunks (`wu`), and the independent
accumulators in the output stage (`independent-output`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from gdn_verify.kernels import output, recurrence
from gdn_verify.kernels._common import CHUNK, masked_exp, split_operand
from gdn_verify.kernels._triton_compat import cast_to, dot, loop_bound
from gdn_verify.kernels.chunk_map import sequence_span

VARIANTS = ("shipped", "independent", "transposed", "single", "single-output")


@triton.jit
def raw_dot_independent(raw, x_hi, x_lo, PRECISION: tl.constexpr):
    """`raw_dot` with the hi and lo products in separate accumulators."""
    if raw.dtype == tl.bfloat16:
        product = tl.fma(dot(raw, x_hi, PRECISION), 1.0, dot(raw, x_lo, PRECISION))
    else:
        product = dot(raw.to(x_hi.dtype), x_hi, PRECISION)
    return product


@triton.jit
def split_dot_raw(x_hi, x_lo, raw, PRECISION: tl.constexpr):
    """x @ raw for x split by `split_operand` for raw's dtype (`raw_dot` with the raw tile on the right)."""
    if raw.dtype == tl.bfloat16:
        product = dot(x_hi, raw, PRECISION) + dot(x_lo, raw, PRECISION)
    else:
        product = dot(x_hi, raw.to(x_hi.dtype), PRECISION)
    return product


@triton.jit(do_not_specialize=["seq_len"])
def recurrence_kernel_transposed(
    k_ptr, v_ptr, beta_ptr, g_cum_ptr, rk_ptr, tm_ptr, h0_ptr, ht_ptr, h_ptr, v_new_ptr,
    seq_start_ptr, seq_first_chunk_ptr, seq_len, H, HV, K, V, GROUP,
    BK: tl.constexpr, BV: tl.constexpr, L2NORM: tl.constexpr, HAS_H0: tl.constexpr,
    STORE_FINAL: tl.constexpr, PRECISION: tl.constexpr,
):
    """The recurrence on S^T [BV, BK]: every product has its computed tile on the left."""
    pid = tl.program_id(0)
    n_vblocks = tl.cdiv(V, BV)
    seq_head = pid // n_vblocks
    vb = pid % n_vblocks
    n = seq_head // HV
    hv = seq_head % HV
    kh = hv // GROUP
    ACC: tl.constexpr = g_cum_ptr.dtype.element_ty
    RAW: tl.constexpr = k_ptr.dtype.element_ty
    bos, eos, first_chunk, end_chunk = sequence_span(n, seq_start_ptr, seq_first_chunk_ptr, seq_len)
    rows = tl.arange(0, CHUNK)
    kcols = tl.arange(0, BK)
    vcols = vb * BV + tl.arange(0, BV)
    state_tile = vcols[:, None] + kcols[None, :] * V
    state_mask = (vcols < V)[:, None] & (kcols < K)[None, :]
    head_state = tl.cast(seq_head, tl.int64) * K * V
    if HAS_H0:
        state = tl.load(h0_ptr + head_state + state_tile, mask=state_mask, other=0.0).to(ACC)
    else:
        state = tl.zeros([BV, BK], ACC)

    for chunk in tl.range(loop_bound(first_chunk), loop_bound(end_chunk)):
        t0 = bos + CHUNK * (chunk - first_chunk)
        length = tl.minimum(eos - t0, CHUNK)
        valid = rows < length
        tokens = t0 + rows

        k = tl.load(k_ptr + (t0 * H + kh) * K + (rows[:, None] * (H * K) + kcols[None, :]),
                    mask=valid[:, None] & (kcols < K)[None, :], other=0.0)
        if L2NORM:
            rk = tl.load(rk_ptr + tokens * H + kh, mask=valid, other=0.0)
        else:
            rk = tl.full([CHUNK], 1.0, ACC)
        v_tile = vcols[:, None] + rows[None, :] * (HV * V)
        v_mask = (vcols < V)[:, None] & valid[None, :]
        v = tl.load(v_ptr + (t0 * HV + hv) * V + v_tile, mask=v_mask, other=0.0).to(ACC)
        beta = tl.load(beta_ptr + tokens * HV + hv, mask=valid, other=0.0).to(ACC)
        gam = tl.load(g_cum_ptr + tokens * HV + hv, mask=valid, other=0.0)
        gam_last = tl.load(g_cum_ptr + (t0 + length - 1) * HV + hv)
        tm_t = tl.load(tm_ptr + (t0 * HV + hv) * CHUNK + (rows[:, None] + rows[None, :] * (HV * CHUNK)),
                       mask=valid[None, :], other=0.0)

        tl.store(h_ptr + (tl.cast(chunk, tl.int64) * HV + hv) * K * V + state_tile, state, mask=state_mask)
        state_hi, state_lo = split_operand(state, RAW)
        ks = split_dot_raw(state_hi, state_lo, tl.trans(k), PRECISION) * rk[None, :]
        v_new = dot(beta[None, :] * (v - tl.exp(gam)[None, :] * ks), tm_t, PRECISION)
        tl.store(v_new_ptr + (t0 * HV + hv) * V + v_tile, v_new, mask=v_mask)

        update_hi, update_lo = split_operand(v_new * (masked_exp(gam_last - gam, valid) * rk)[None, :], RAW)
        state = state * tl.exp(gam_last) + split_dot_raw(update_hi, update_lo, k, PRECISION)

    if STORE_FINAL:
        tl.store(ht_ptr + head_state + state_tile, state, mask=state_mask)


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
    elif name == "transposed":
        recurrence.recurrence_kernel = recurrence_kernel_transposed
    elif name == "single":
        recurrence.raw_dot, recurrence.dot = raw_dot_single, dot_single
    elif name == "single-output":
        output.raw_dot, output.dot = raw_dot_single, dot_single
