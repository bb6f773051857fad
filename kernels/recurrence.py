"""Stage 4: the state recurrence over a sequence's chunks, with the output fused in.

For each chunk, entering with state S:

    V' = Tm diag(beta) (V - diag(exp(gam)) K S)        (= U - W S)
    O  = chunk_output(Q, K, gam, S, V')
    S  = exp(gam_last) S + (diag(exp(gam_last - gam)) K)^T V'

V' is formed from Tm, K and V rather than from W and U: the same quantity, but the pass reads
the raw 16-bit K and a 64 x 64 Tm per chunk instead of a float32 W (64 x K) and U, which at
T = 65536, HV = 32, K = V = 128 saves about 2 GB of traffic. The output is computed here
because the per-chunk states then never travel through memory (another 2 GB in float32 at that
size); STORE_STATES / STORE_V_NEW write h and V' for the stage-by-stage diagnostics only.

One program per (sequence, value head, block of BV value columns): the columns of S evolve
independently, so splitting V gives the single-sequence case enough programs to fill the GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._alloc import new_output
from ._common import CHUNK, block_size, masked_exp, raw_dot, split_operand, split_scale
from ._launch import launch
from ._triton_compat import cast_to, dot, loop_bound
from .chunk_map import ChunkMap
from .output import chunk_output, load_chunk_qk, value_block

# Compiled for sm_90 (Triton 3.6, bf16, K = V = 128, BV = 32) the chunk step spills about 2.8 KB a
# thread at 4 warps and 1.3 KB at 8. A single sequence has 128 programs for 132 SMs, so the
# extra warps cost no occupancy there.
NUM_WARPS = 8


def num_stages(acc_dtype: torch.dtype) -> int:
    """Software-pipelining depth of the chunk loop: 2 overlaps the next chunk's loads with this
    chunk's dots. Exact mode keeps 1: two stages of float64 tiles at K = V = 256 need 330 KB of
    shared memory (compiled for sm_90), over the 227 KB a block may have."""
    return 1 if acc_dtype == torch.float64 else 2


@triton.jit
def recurrence_kernel(
    q_ptr, k_ptr, v_ptr, beta_ptr, g_cum_ptr, tm_ptr, h0_ptr, o_ptr, ht_ptr, h_ptr, v_new_ptr,
    seq_start_ptr, seq_first_chunk_ptr, scale_hi, scale_lo, H, HV, K, V, GROUP,
    BK: tl.constexpr, BV: tl.constexpr, L2NORM: tl.constexpr, HAS_H0: tl.constexpr,
    STORE_FINAL: tl.constexpr, STORE_STATES: tl.constexpr, STORE_V_NEW: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One program per (sequence x value head, V block); loops over the sequence's chunks."""
    pid = tl.program_id(0).to(tl.int64)
    n_vblocks = tl.cdiv(V, BV)
    seq_head = pid // n_vblocks  # n * HV + hv
    vb = pid % n_vblocks
    n = seq_head // HV
    hv = seq_head % HV
    kh = hv // GROUP
    ACC: tl.constexpr = g_cum_ptr.dtype.element_ty
    RAW: tl.constexpr = k_ptr.dtype.element_ty
    bos = tl.load(seq_start_ptr + n).to(tl.int64)
    eos = tl.load(seq_start_ptr + n + 1).to(tl.int64)
    first_chunk = tl.load(seq_first_chunk_ptr + n)
    end_chunk = tl.load(seq_first_chunk_ptr + n + 1)
    kcols = tl.arange(0, BK)
    vcols = vb * BV + tl.arange(0, BV)
    state_offsets = (seq_head * K + kcols[:, None]) * V + vcols[None, :]
    state_mask = (kcols < K)[:, None] & (vcols < V)[None, :]
    if HAS_H0:
        state = tl.load(h0_ptr + state_offsets, mask=state_mask, other=0.0).to(ACC)
    else:
        state = tl.zeros([BK, BV], ACC)
    scale = tl.cast(scale_hi, ACC) + tl.cast(scale_lo, ACC)

    # The chunk count is a runtime value, never a specialization key; loop_bound lets the
    # Triton 3.6 interpreter run a loop over it (see _triton_compat), while the compiled loop
    # stays an scf.for that the pipeliner overlaps with the next chunk's loads.
    rows = tl.arange(0, CHUNK)
    for chunk in tl.range(loop_bound(first_chunk), loop_bound(end_chunk)):
        t0 = bos + CHUNK * (chunk - first_chunk)
        length = tl.minimum(eos - t0, CHUNK)
        valid = rows < length
        tokens = t0 + rows

        q, k, rq, rk = load_chunk_qk(q_ptr, k_ptr, tokens, valid, kh, H, K, kcols, L2NORM, ACC)
        v_offsets = tokens[:, None] * (HV * V) + hv * V + vcols[None, :]
        v_mask = valid[:, None] & (vcols < V)[None, :]
        v = tl.load(v_ptr + v_offsets, mask=v_mask, other=0.0).to(ACC)
        beta = tl.load(beta_ptr + tokens * HV + hv, mask=valid, other=0.0).to(ACC)
        gam = tl.load(g_cum_ptr + tokens * HV + hv, mask=valid, other=0.0)
        gam_last = tl.load(g_cum_ptr + (t0 + length - 1) * HV + hv)
        tm = tl.load(tm_ptr + tokens[:, None] * (HV * CHUNK) + hv * CHUNK + rows[None, :],
                     mask=valid[:, None], other=0.0)

        if STORE_STATES:
            h_offsets = ((tl.cast(chunk, tl.int64) * HV + hv) * K + kcols[:, None]) * V + vcols[None, :]
            tl.store(h_ptr + h_offsets, state, mask=state_mask)

        state_hi, state_lo = split_operand(state, RAW)
        ks = raw_dot(k, state_hi, state_lo, PRECISION) * rk[:, None]
        v_new = dot(tm, beta[:, None] * (v - tl.exp(gam)[:, None] * ks), PRECISION)
        if STORE_V_NEW:
            tl.store(v_new_ptr + v_offsets, v_new, mask=v_mask)

        o = chunk_output(q, k, rq, rk, gam, valid, state_hi, state_lo, v_new, scale, PRECISION)
        tl.store(o_ptr + v_offsets, cast_to(o, o_ptr.dtype.element_ty), mask=v_mask)

        update_hi, update_lo = split_operand(v_new * (masked_exp(gam_last - gam, valid) * rk)[:, None], RAW)
        state = state * tl.exp(gam_last) + raw_dot(tl.trans(k), update_hi, update_lo, PRECISION)

    if STORE_FINAL:
        tl.store(ht_ptr + state_offsets, state, mask=state_mask)


def recurrence(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g_cum: torch.Tensor,
    tm: torch.Tensor, chunks: ChunkMap, scale: float, initial_state: torch.Tensor | None,
    output_final_state: bool, use_l2norm: bool, precision: str, store_intermediates: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """-> (o [B, T, HV, V] in v's dtype, final_state [N, HV, K, V] or None,
    h [NT, HV, K, V] and v_new [B, T, HV, V] (only with store_intermediates, else None))."""
    q, k, v, beta = q.contiguous(), k.contiguous(), v.contiguous(), beta.contiguous()
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    acc, device = g_cum.dtype, q.device
    N = chunks.n_seqs
    o = new_output((B, T, HV, V), v.dtype, device)
    final_state = new_output((N, HV, K, V), acc, device) if output_final_state else None
    h = new_output((chunks.n_chunks, HV, K, V), acc, device) if store_intermediates else None
    v_new = new_output((B, T, HV, V), acc, device) if store_intermediates else None
    has_h0 = initial_state is not None
    BV = value_block(K, V)
    if N * HV:
        # Unused pointer arguments get a tensor of the right dtype; their flags keep them unread.
        placeholder = g_cum
        launch(recurrence_kernel, (N * HV * triton.cdiv(V, BV),), q, k, v, beta, g_cum, tm,
               initial_state.contiguous() if has_h0 else placeholder, o,
               final_state if output_final_state else placeholder,
               h if store_intermediates else placeholder, v_new if store_intermediates else placeholder,
               chunks.seq_start, chunks.seq_first_chunk, *split_scale(scale), H, HV, K, V, HV // H,
               BK=block_size(K), BV=BV, L2NORM=use_l2norm, HAS_H0=has_h0, STORE_FINAL=output_final_state,
               STORE_STATES=store_intermediates, STORE_V_NEW=store_intermediates, PRECISION=precision,
               num_warps=NUM_WARPS, num_stages=num_stages(acc))
    return o, final_state, h, v_new
