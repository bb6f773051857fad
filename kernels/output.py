"""Stage 5: O = scale (diag(exp(gam)) Q S + (causal(Q K^T) * exp(gam_i - gam_j)) V').

`chunk_output` is the arithmetic, shared with the state recurrence, which computes o in the
same pass that produces S and V' (so the fast path never writes the per-chunk states). The
stand-alone `output_kernel` computes o from stored states and V', so this stage can be checked
on its own against the reference's h and v_new.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._alloc import new_output
from ._common import CHUNK, block_size, inverse_l2_norm, masked_exp, raw_dot, split_operand, split_scale
from ._launch import launch
from ._triton_compat import cast_to, dot
from .chunk_map import ChunkMap, chunk_span

# Diagnostics only (the fast path fuses the output into the recurrence); 8 warps keep the
# 64 x 64 float32 tiles from spilling much.
NUM_WARPS = 8


@triton.jit
def load_chunk_qk(q_ptr, k_ptr, tokens, valid, kh, H, K, kcols, L2NORM: tl.constexpr, ACC: tl.constexpr):
    """Raw q and k rows of one chunk and key head, with their l2norm factors (1 without l2norm)."""
    mask = valid[:, None] & (kcols < K)[None, :]
    offsets = tokens[:, None] * (H * K) + kh * K + kcols[None, :]
    q = tl.load(q_ptr + offsets, mask=mask, other=0.0)
    k = tl.load(k_ptr + offsets, mask=mask, other=0.0)
    if L2NORM:
        rq = inverse_l2_norm(q, ACC)
        rk = inverse_l2_norm(k, ACC)
    else:
        rq = tl.full([CHUNK], 1.0, ACC)
        rk = tl.full([CHUNK], 1.0, ACC)
    return q, k, rq, rk


@triton.jit
def chunk_output(q, k, rq, rk, gam, valid, state_hi, state_lo, v_new, scale, PRECISION: tl.constexpr):
    """One chunk's o (before the cast to v's dtype) from raw q, k, their factors, S (split by
    split_operand for q's dtype) and V'."""
    ACC: tl.constexpr = v_new.dtype
    rows = tl.arange(0, CHUNK)
    inter = raw_dot(q, state_hi, state_lo, PRECISION) * (rq * tl.exp(gam))[:, None]
    causal = (rows[:, None] >= rows[None, :]) & valid[:, None] & valid[None, :]
    scores = dot(q, tl.trans(k), PRECISION).to(ACC) * rq[:, None] * rk[None, :]
    scores = scores * masked_exp(gam[:, None] - gam[None, :], causal)
    return (inter + dot(scores, v_new, PRECISION)) * scale


@triton.jit
def output_kernel(
    q_ptr, k_ptr, g_cum_ptr, h_ptr, v_new_ptr, o_ptr, chunk_seq_ptr, seq_start_ptr, seq_first_chunk_ptr,
    scale_hi, scale_lo, H, HV, K, V, GROUP,
    BK: tl.constexpr, BV: tl.constexpr, L2NORM: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program per (chunk x value head, V block)."""
    chunk_head = tl.program_id(0).to(tl.int64)
    vb = tl.program_id(1)
    chunk = chunk_head // HV
    hv = chunk_head % HV
    kh = hv // GROUP
    ACC: tl.constexpr = h_ptr.dtype.element_ty
    t0, length = chunk_span(chunk, chunk_seq_ptr, seq_start_ptr, seq_first_chunk_ptr)
    rows = tl.arange(0, CHUNK)
    kcols = tl.arange(0, BK)
    vcols = vb * BV + tl.arange(0, BV)
    valid = rows < length
    tokens = t0 + rows

    q, k, rq, rk = load_chunk_qk(q_ptr, k_ptr, tokens, valid, kh, H, K, kcols, L2NORM, ACC)
    gam = tl.load(g_cum_ptr + tokens * HV + hv, mask=valid, other=0.0)
    state = tl.load(h_ptr + (chunk_head * K + kcols[:, None]) * V + vcols[None, :],
                    mask=(kcols < K)[:, None] & (vcols < V)[None, :], other=0.0)
    v_offsets = tokens[:, None] * (HV * V) + hv * V + vcols[None, :]
    v_mask = valid[:, None] & (vcols < V)[None, :]
    v_new = tl.load(v_new_ptr + v_offsets, mask=v_mask, other=0.0)
    scale = tl.cast(scale_hi, ACC) + tl.cast(scale_lo, ACC)
    state_hi, state_lo = split_operand(state, q_ptr.dtype.element_ty)
    o = chunk_output(q, k, rq, rk, gam, valid, state_hi, state_lo, v_new, scale, PRECISION)
    tl.store(o_ptr + v_offsets, cast_to(o, o_ptr.dtype.element_ty), mask=v_mask)


def value_block(K: int, V: int) -> int:
    """V columns per program of the state-carrying stages (from K and V only, never from T).

    32 columns split V = 128 into four programs per head, which with 32 heads fills the GPU's
    132 SMs for a single sequence; large K halves it to keep the K x BV state in registers.
    """
    return min(block_size(V), 32 if block_size(K) <= 128 else 16)


def output(
    q: torch.Tensor, k: torch.Tensor, g_cum: torch.Tensor, h: torch.Tensor, v_new: torch.Tensor,
    chunks: ChunkMap, scale: float, use_l2norm: bool, precision: str, out_dtype: torch.dtype,
) -> torch.Tensor:
    """q, k [B, T, H, K], g_cum [B, T, HV], h [NT, HV, K, V], v_new [B, T, HV, V] -> o [B, T, HV, V]."""
    q, k = q.contiguous(), k.contiguous()
    B, T, H, K = q.shape
    HV, V = v_new.shape[2], v_new.shape[3]
    o = new_output((B, T, HV, V), out_dtype, q.device)
    if chunks.n_chunks:
        BV = value_block(K, V)
        launch(output_kernel, (chunks.n_chunks * HV, triton.cdiv(V, BV)), q, k, g_cum, h, v_new, o,
               *chunks.span_args, *split_scale(scale), H, HV, K, V, HV // H,
               BK=block_size(K), BV=BV, L2NORM=use_l2norm, PRECISION=precision, num_warps=NUM_WARPS)
    return o
