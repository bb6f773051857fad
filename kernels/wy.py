"""Stage 3: the WY transform, W = Tm diag(beta exp(gam)) K and U = Tm diag(beta) V.

The fast path never materializes W and U: the recurrence forms V' = U - W S as
Tm diag(beta) (V - diag(exp(gam)) K S) from the same Tm (see recurrence.py). This stage computes
them from that Tm for the stage-by-stage diagnostics, so a divergence between Tm and V' can be
placed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._alloc import new_output
from ._common import CHUNK, block_size
from ._launch import launch
from ._triton_compat import dot
from .chunk_map import ChunkMap, chunk_span

# Diagnostics only; 8 warps for the whole-K and whole-V tiles.
NUM_WARPS = 8
# Diagnostics want W and U to carry Tm's error only, so their dots are IEEE float32 for every
# input dtype (the fast path's bf16x3 put an error on U hundreds of times Tm's; see
# benchmarks/results/design_history.md).
_PRECISION = "ieee"


@triton.jit(do_not_specialize=["seq_len"])
def wy_kernel(
    k_ptr, v_ptr, beta_ptr, g_cum_ptr, rk_ptr, tm_ptr, w_ptr, u_ptr, chunk_seq_ptr, seq_start_ptr, seq_first_chunk_ptr,
    seq_len, H, HV, K, V, GROUP,
    BK: tl.constexpr, BV: tl.constexpr, L2NORM: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program per (chunk, value head), all of K and V."""
    chunk = tl.program_id(0)
    hv = tl.program_id(1)
    kh = hv // GROUP
    ACC: tl.constexpr = tm_ptr.dtype.element_ty
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
    w = dot(tm, k * key_weight[:, None], PRECISION)
    u = dot(tm, v * beta[:, None], PRECISION)
    tl.store(w_ptr + tokens[:, None] * (HV * K) + hv * K + kcols[None, :], w, mask=k_mask)
    tl.store(u_ptr + tokens[:, None] * (HV * V) + hv * V + vcols[None, :], u, mask=v_mask)


def wy(
    k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g_cum: torch.Tensor, rk: torch.Tensor | None,
    tm: torch.Tensor, chunks: ChunkMap,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k [B, T, H, K], v [B, T, HV, V], beta and g_cum [B, T, HV], rk [B, T, H] (None: no l2norm),
    Tm [B, T, HV, 64] -> (W, U)."""
    k, v, beta = k.contiguous(), v.contiguous(), beta.contiguous()
    B, T, H, K = k.shape
    HV, V = v.shape[2], v.shape[3]
    w = new_output((B, T, HV, K), tm.dtype, k.device)
    u = new_output((B, T, HV, V), tm.dtype, k.device)
    if chunks.n_chunks:
        launch(wy_kernel, (chunks.n_chunks, HV), k, v, beta, g_cum, g_cum if rk is None else rk, tm, w, u,
               *chunks.span_args,
               H, HV, K, V, HV // H,
               BK=block_size(K), BV=block_size(V), L2NORM=rk is not None, PRECISION=_PRECISION, num_warps=NUM_WARPS)
    return w, u
