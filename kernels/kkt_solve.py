"""Stage 2: A = strictly lower (beta_i k_i.k_j exp(gam_i - gam_j)) and Tm = (I + A)^-1 per chunk.

The inverse of the 64 x 64 unit lower triangular L = I + A is built by doubling the solved block
size: if T inverts the diagonal blocks of size s of L, and E holds the entries of A in the lower
s x s block inside each diagonal block of size 2s, then T - T E T inverts the diagonal blocks of
size 2s ([[T1, 0], [E21, T2]]^-1 has T1, T2 on its diagonal and -T2 E21 T1 below). This is block
forward substitution in a binary-tree order: the same terms as row-by-row substitution, so it adds
no cancellation (unlike a power series of the whole A, whose terms reach C(63, 31) for equal keys),
and structural zeros above the diagonal and past the chunk stay exactly zero. Sizes 1 -> 16 run
on the [4, 16, 16] stack of diagonal blocks (batched 16 x 16 dots), 16 -> 64 on the full tile:
twelve tiny and four 64 x 64 dots, instead of a 64-step row substitution.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._alloc import new_output
from ._common import CHUNK, block_size, inverse_l2_norm, masked_exp
from ._launch import launch
from ._triton_compat import dot
from .chunk_map import ChunkMap, chunk_span

_BLOCK = tl.constexpr(16)
_N_BLOCKS = tl.constexpr(4)

# Compiled for sm_90 (Triton 3.6, bf16, K = 128) the solve's 64 x 64 float32 tiles take about 255
# registers a thread at 4 and at 8 warps alike (about 1 KB spilled either way), so 4 warps let
# two programs share an SM.
NUM_WARPS = 4


@triton.jit
def _double_solved_blocks(t, a, row, col, size: tl.constexpr, PRECISION: tl.constexpr):
    """From T inverting the diagonal size-blocks of I + a to T inverting its 2*size-blocks."""
    lower_half = (row // size == col // size + 1) & ((row // size) % 2 == 1)
    return t - dot(t, dot(tl.where(lower_half, a, 0.0), t, PRECISION), PRECISION)


@triton.jit
def unit_lower_inverse(a, PRECISION: tl.constexpr):
    """(I + a)^-1 for a strictly lower triangular [64, 64] tile a."""
    rows = tl.arange(0, CHUNK)
    same_block = (rows[:, None] // _BLOCK) == (rows[None, :] // _BLOCK)
    # a4[b, i, c, j] = a[16b + i, 16c + j]; off-diagonal blocks zeroed, so summing over c
    # leaves the [4, 16, 16] stack of diagonal blocks.
    a4 = tl.reshape(tl.where(same_block, a, 0.0), [_N_BLOCKS, _BLOCK, _N_BLOCKS, _BLOCK])
    diagonal = tl.sum(a4, axis=2)
    row3 = tl.arange(0, _BLOCK)[None, :, None]
    col3 = tl.arange(0, _BLOCK)[None, None, :]
    t3 = tl.where(row3 == col3, 1.0, 0.0).to(a.dtype) + tl.zeros_like(diagonal)
    for level in tl.static_range(4):
        t3 = _double_solved_blocks(t3, diagonal, row3, col3, 1 << level, PRECISION)
    b_idx = tl.arange(0, _N_BLOCKS)[:, None, None, None]
    c_idx = tl.arange(0, _N_BLOCKS)[None, None, :, None]
    t = tl.reshape(tl.where(b_idx == c_idx, t3[:, :, None, :], 0.0), [CHUNK, CHUNK])
    for level in tl.static_range(4, 6):
        t = _double_solved_blocks(t, a, rows[:, None], rows[None, :], 1 << level, PRECISION)
    return t


@triton.jit
def kkt_solve_kernel(
    k_ptr, beta_ptr, g_cum_ptr, tm_ptr, a_ptr, chunk_seq_ptr, seq_start_ptr, seq_first_chunk_ptr,
    H, HV, K, GROUP,
    BK: tl.constexpr, L2NORM: tl.constexpr, STORE_A: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program per (chunk, value head)."""
    chunk = tl.program_id(0)
    hv = tl.program_id(1)
    kh = hv // GROUP
    ACC: tl.constexpr = tm_ptr.dtype.element_ty
    t0, length = chunk_span(chunk, chunk_seq_ptr, seq_start_ptr, seq_first_chunk_ptr)
    rows = tl.arange(0, CHUNK)
    kcols = tl.arange(0, BK)
    valid = rows < length
    tokens = t0 + rows

    k = tl.load(k_ptr + tokens[:, None] * (H * K) + kh * K + kcols[None, :],
                mask=valid[:, None] & (kcols < K)[None, :], other=0.0)
    beta = tl.load(beta_ptr + tokens * HV + hv, mask=valid, other=0.0).to(ACC)
    gam = tl.load(g_cum_ptr + tokens * HV + hv, mask=valid, other=0.0)

    kk = dot(k, tl.trans(k), PRECISION).to(ACC)
    if L2NORM:
        r = inverse_l2_norm(k, ACC)
        kk = kk * r[:, None] * r[None, :]
    strictly_lower = (rows[:, None] > rows[None, :]) & valid[:, None] & valid[None, :]
    a = tl.where(strictly_lower, beta[:, None] * kk * masked_exp(gam[:, None] - gam[None, :], strictly_lower), 0.0)

    out = tokens[:, None] * (HV * CHUNK) + hv * CHUNK + rows[None, :]
    if STORE_A:
        tl.store(a_ptr + out, a, mask=valid[:, None])
    tl.store(tm_ptr + out, unit_lower_inverse(a, PRECISION), mask=valid[:, None])


def kkt_solve(
    k: torch.Tensor, beta: torch.Tensor, g_cum: torch.Tensor, chunks: ChunkMap, HV: int,
    use_l2norm: bool, precision: str, store_a: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """k [B, T, H, K], beta and g_cum [B, T, HV] -> (Tm, A or None), each [B, T, HV, 64]."""
    k, beta = k.contiguous(), beta.contiguous()
    B, T, H, K = k.shape
    acc = g_cum.dtype
    tm = new_output((B, T, HV, CHUNK.value), acc, k.device)
    a = new_output((B, T, HV, CHUNK.value), acc, k.device) if store_a else None
    if chunks.n_chunks:
        launch(kkt_solve_kernel, (chunks.n_chunks, HV), k, beta, g_cum, tm, a if store_a else tm,
               *chunks.span_args, H, HV, K, HV // H,
               BK=block_size(K), L2NORM=use_l2norm, STORE_A=store_a, PRECISION=precision, num_warps=NUM_WARPS)
    return tm, a
