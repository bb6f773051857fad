"""Alternative forms of the state recurrence (kernels/recurrence.py) and of the output stage's
split dot, for timing and accuracy beside the shipped ones (issue #15, step 3).
`benchmarks/sweep_stages.py` applies one by name (`apply`) before anything compiles, in a
process of its own.

* `independent`: the shipped kernel, with the two halves of every split dot (K S and the
  state update: raw @ hi and raw @ lo) summed after both finish rather than chained. Triton
  folds `dot(a, b) + dot(a, c)` into one accumulator (the second MMA waits for the first); an
  fma(x, 1, y), which is x + y rounded once, is not folded, so the two MMA chains can overlap.
  Changes bits (the sum is rounded in another order).
* `independent-output`: the same for the output stage's Q S (kernels/output.py).
* `wu`: W = Tm diag(beta exp(gam) rk) K and U = Tm diag(beta) V computed for every chunk at once
  first (`wu_kernel`, the fast path's dot precision), W stored as its bfloat16 hi and lo halves
  (`split_operand`), and the sequential loop left with V' = U - W S, three native MMAs
  (W_hi S_hi + W_lo S_hi + W_hi S_lo, as bf16x3 would), and the state update: one dot stage
  against the state per chunk instead of K S followed by the Tm dot. Costs W and U written and
  read (T x HV x (K + V) x 4 bytes each way). bfloat16 inputs only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gdn_verify.kernels import chunk as chunk_stages
from gdn_verify.kernels import output, recurrence
from gdn_verify.kernels._alloc import new_output
from gdn_verify.kernels._common import CHUNK, block_size, cdiv, masked_exp, raw_dot, split_operand
from gdn_verify.kernels._launch import launch
from gdn_verify.kernels._triton_compat import dot, loop_bound
from gdn_verify.kernels.chunk_map import ChunkMap, chunk_span, sequence_span

VARIANTS = ("shipped", "independent", "independent-output", "wu")
# The W and U kernel's warps: whole K and V tiles, as the WY stage (kernels/wy.py).
WU_NUM_WARPS = 8


@triton.jit
def raw_dot_independent(raw, x_hi, x_lo, PRECISION: tl.constexpr):
    """`raw_dot` with the hi and lo products in separate accumulators."""
    if raw.dtype == tl.bfloat16:
        product = tl.fma(dot(raw, x_hi, PRECISION), 1.0, dot(raw, x_lo, PRECISION))
    else:
        product = dot(raw.to(x_hi.dtype), x_hi, PRECISION)
    return product


@triton.jit(do_not_specialize=["seq_len"])
def wu_kernel(
    k_ptr, v_ptr, beta_ptr, g_cum_ptr, rk_ptr, tm_ptr, w_hi_ptr, w_lo_ptr, u_ptr,
    chunk_seq_ptr, seq_start_ptr, seq_first_chunk_ptr, seq_len, H, HV, K, V, GROUP,
    BK: tl.constexpr, BV: tl.constexpr, L2NORM: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program per (chunk, value head): W (as hi and lo halves) and U."""
    chunk = tl.program_id(0)
    hv = tl.program_id(1)
    kh = hv // GROUP
    ACC: tl.constexpr = tm_ptr.dtype.element_ty
    RAW: tl.constexpr = k_ptr.dtype.element_ty
    t0, length = chunk_span(chunk, chunk_seq_ptr, seq_start_ptr, seq_first_chunk_ptr, seq_len)
    rows = tl.arange(0, CHUNK)
    kcols = tl.arange(0, BK)
    vcols = tl.arange(0, BV)
    valid = rows < length
    tokens = t0 + rows
    k_mask = valid[:, None] & (kcols < K)[None, :]
    v_mask = valid[:, None] & (vcols < V)[None, :]
    k = tl.load(k_ptr + tokens[:, None] * (H * K) + kh * K + kcols[None, :], mask=k_mask, other=0.0).to(ACC)
    v = tl.load(v_ptr + tokens[:, None] * (HV * V) + hv * V + vcols[None, :], mask=v_mask, other=0.0).to(ACC)
    beta = tl.load(beta_ptr + tokens * HV + hv, mask=valid, other=0.0).to(ACC)
    gam = tl.load(g_cum_ptr + tokens * HV + hv, mask=valid, other=0.0)
    tm = tl.load(tm_ptr + tokens[:, None] * (HV * CHUNK) + hv * CHUNK + rows[None, :], mask=valid[:, None], other=0.0)
    key_weight = beta * tl.exp(gam)
    if L2NORM:
        key_weight = key_weight * tl.load(rk_ptr + tokens * H + kh, mask=valid, other=0.0)
    w_hi, w_lo = split_operand(dot(tm, k * key_weight[:, None], PRECISION), RAW)
    w_tile = tokens[:, None] * (HV * K) + hv * K + kcols[None, :]
    tl.store(w_hi_ptr + w_tile, w_hi, mask=k_mask)
    tl.store(w_lo_ptr + w_tile, w_lo, mask=k_mask)
    u = dot(tm, v * beta[:, None], PRECISION)
    tl.store(u_ptr + tokens[:, None] * (HV * V) + hv * V + vcols[None, :], u, mask=v_mask)


@triton.jit(do_not_specialize=["seq_len"])
def wu_recurrence_kernel(
    k_ptr, w_hi_ptr, w_lo_ptr, u_ptr, g_cum_ptr, rk_ptr, h0_ptr, ht_ptr, h_ptr, h_lo_ptr, v_new_ptr,
    seq_start_ptr, seq_first_chunk_ptr, seq_len, H, HV, K, V, GROUP,
    BK: tl.constexpr, BV: tl.constexpr, L2NORM: tl.constexpr, HAS_H0: tl.constexpr,
    STORE_FINAL: tl.constexpr, PRECISION: tl.constexpr,
):
    """The shipped loop with V' = U - W S from precomputed W (hi, lo) [B, T, HV, K] and U [B, T, HV, V]."""
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
    state_tile = kcols[:, None] * V + vcols[None, :]
    state_mask = (kcols < K)[:, None] & (vcols < V)[None, :]
    head_state = tl.cast(seq_head, tl.int64) * K * V
    if HAS_H0:
        state = tl.load(h0_ptr + head_state + state_tile, mask=state_mask, other=0.0).to(ACC)
    else:
        state = tl.zeros([BK, BV], ACC)
    for chunk in tl.range(loop_bound(first_chunk), loop_bound(end_chunk)):
        t0 = bos + CHUNK * (chunk - first_chunk)
        length = tl.minimum(eos - t0, CHUNK)
        valid = rows < length
        tokens = t0 + rows
        k_mask = valid[:, None] & (kcols < K)[None, :]
        k = tl.load(k_ptr + (t0 * H + kh) * K + (rows[:, None] * (H * K) + kcols[None, :]), mask=k_mask, other=0.0)
        w_tile = (t0 * HV + hv) * K + (rows[:, None] * (HV * K) + kcols[None, :])
        w_hi = tl.load(w_hi_ptr + w_tile, mask=k_mask, other=0.0)
        w_lo = tl.load(w_lo_ptr + w_tile, mask=k_mask, other=0.0)
        if L2NORM:
            rk = tl.load(rk_ptr + tokens * H + kh, mask=valid, other=0.0)
        else:
            rk = tl.full([CHUNK], 1.0, ACC)
        v_tile = rows[:, None] * (HV * V) + vcols[None, :]
        v_mask = valid[:, None] & (vcols < V)[None, :]
        u = tl.load(u_ptr + (t0 * HV + hv) * V + v_tile, mask=v_mask, other=0.0)
        gam = tl.load(g_cum_ptr + tokens * HV + hv, mask=valid, other=0.0)
        gam_last = tl.load(g_cum_ptr + (t0 + length - 1) * HV + hv)

        state_hi, state_lo = split_operand(state, RAW)
        h_tile = (tl.cast(chunk, tl.int64) * HV + hv) * K * V + state_tile
        tl.store(h_ptr + h_tile, state_hi, mask=state_mask)
        tl.store(h_lo_ptr + h_tile, state_lo, mask=state_mask)
        v_new = u - (raw_dot(w_hi, state_hi, state_lo, PRECISION) + dot(w_lo, state_hi, PRECISION))
        tl.store(v_new_ptr + (t0 * HV + hv) * V + v_tile, v_new, mask=v_mask)

        update_hi, update_lo = split_operand(v_new * (masked_exp(gam_last - gam, valid) * rk)[:, None], RAW)
        state = state * tl.exp(gam_last) + raw_dot(tl.trans(k), update_hi, update_lo, PRECISION)

    if STORE_FINAL:
        tl.store(ht_ptr + head_state + state_tile, state, mask=state_mask)


def wu_recurrence(
    k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g_cum: torch.Tensor, rk: torch.Tensor | None,
    tm: torch.Tensor, chunks: ChunkMap, initial_state: torch.Tensor | None, output_final_state: bool,
    precision: str,
) -> tuple[torch.Tensor | None, recurrence.StateHalves, torch.Tensor]:
    """kernels.recurrence.recurrence's signature and results, through W and U."""
    if k.dtype != torch.bfloat16:
        raise ValueError(f"k: the wu variant takes bfloat16 inputs only, got {k.dtype}")
    B, T, H, K = k.shape
    HV, V = v.shape[2], v.shape[3]
    acc, device = g_cum.dtype, k.device
    N = chunks.n_seqs
    w_hi = new_output((B, T, HV, K), k.dtype, device)
    w_lo = new_output((B, T, HV, K), k.dtype, device)
    u = new_output((B, T, HV, V), acc, device)
    final_state = new_output((N, HV, K, V), acc, device) if output_final_state else None
    h = recurrence.StateHalves(*(new_output((chunks.n_chunks, HV, K, V), k.dtype, device) for _ in range(2)))
    v_new = new_output((B, T, HV, V), acc, device)
    has_h0 = initial_state is not None
    placeholder = g_cum
    if chunks.n_chunks:
        launch(wu_kernel, (chunks.n_chunks, HV), k, v, beta, g_cum, placeholder if rk is None else rk, tm,
               w_hi, w_lo, u, *chunks.span_args, H, HV, K, V, HV // H,
               BK=block_size(K), BV=block_size(V), L2NORM=rk is not None, PRECISION=precision,
               num_warps=WU_NUM_WARPS)
    BV = recurrence.state_value_block(K, V)
    if N * HV:
        launch(wu_recurrence_kernel, (N * HV * cdiv(V, BV),), k, w_hi, w_lo, u, g_cum,
               placeholder if rk is None else rk,
               initial_state.contiguous() if has_h0 else placeholder,
               final_state if output_final_state else placeholder, h.hi, h.lo, v_new,
               *chunks.sequence_args, H, HV, K, V, HV // H,
               BK=block_size(K), BV=BV, L2NORM=rk is not None, HAS_H0=has_h0, STORE_FINAL=output_final_state,
               PRECISION=precision, num_warps=recurrence.NUM_WARPS, num_stages=recurrence.pipeline_stages(k.dtype))
    return final_state, h, v_new


def apply(name: str) -> None:
    """Make the fast path use variant `name` from now on (before its first compile)."""
    if name not in VARIANTS:
        raise ValueError(f"variant: expected one of {', '.join(VARIANTS)}, got {name!r}")
    if name == "independent":
        recurrence.raw_dot = raw_dot_independent
    elif name == "independent-output":
        output.raw_dot = raw_dot_independent
    elif name == "wu":
        chunk_stages.recurrence = wu_recurrence
