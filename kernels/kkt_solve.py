"""Stage 2: A = strictly lower (beta_i k_i.k_j exp(gam_i - gam_j)) and Tm = (I + A)^-1 per chunk.

The kernel treats the 64-token chunk as a 4 x 4 grid of 16 x 16 blocks, because A and Tm are
lower triangular: only the 10 blocks on or below the diagonal hold anything, and whole 64 x 64
float32 tiles spent most of their registers (spilling) and MMAs on zeros.

* A: A_ij (i >= j) from k_i k_j^T, the raw 16-token key blocks as dot operands (k_j^T loaded
  transposed from memory), accumulated over 32-wide slices of the key dimension so the eight
  operands of a step stay small.
* Diagonal blocks: T_ii = (I + A_ii)^-1 by doubling the solved block size inside the 16 x 16
  tile: if t inverts the diagonal s-blocks and e holds the entries of A_ii just below them
  inside each 2s-block, t - t e t inverts the 2s-blocks ([[L1, 0], [E, L2]]^-1 is
  [[T1, 0], [-T2 E T1, T2]]). Size 1 -> 2 is elementwise, 2 -> 16 three levels of two small dots.
* Below the diagonal, block forward substitution: T_ij = -T_ii (sum_{m=j}^{i-1} A_im T_mj).

Both are the terms of row-by-row forward substitution in another order, so no cancellation is
added (unlike a power series of A, whose terms reach C(63, 31) for equal keys), and the blocks
above the diagonal and past the chunk's length are exact zeros, stored as such.
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

# Timed on an H200 (Triton 3.6, bf16, H16/HV32/K=128, T = 65536 / 256 packed short sequences;
# 2026-11-29): 1 warp with 16-column key steps 0.75 / 0.26 ms; 2 warps 0.96-1.07 / 0.36-0.41;
# 4 warps 1.79-1.95 / 0.68-0.74; the earlier whole-tile kernel 2.35 / 0.88. A 16-row MMA tile
# cannot be split over warps, so with more warps each one repeats every small dot
# (warpsPerCTA [4, 1]); one warp a program wastes nothing, and the 32768 programs of a long
# sequence keep the SMs full anyway.
_K_STEP = 16
NUM_WARPS = 1


@triton.jit
def _token_block(k_ptr, beta_ptr, g_cum_ptr, t0, length, hv, kh, H, HV, K,
                 BLOCK_INDEX: tl.constexpr, BK: tl.constexpr, L2NORM: tl.constexpr, ACC: tl.constexpr):
    """Tokens 16 BLOCK_INDEX .. +15 of the chunk: beta, gam, the l2norm factor of k's rows
    (ones without L2NORM) and the valid-token mask."""
    rows = BLOCK_INDEX * _BLOCK + tl.arange(0, _BLOCK)
    valid = rows < length
    tokens = t0 + rows
    beta = tl.load(beta_ptr + tokens * HV + hv, mask=valid, other=0.0).to(ACC)
    gam = tl.load(g_cum_ptr + tokens * HV + hv, mask=valid, other=0.0)
    norm = tl.full([_BLOCK], 1.0, ACC)
    if L2NORM:
        norm = inverse_l2_norm(_key_slice(k_ptr, t0, length, kh, H, K, 0, BLOCK_INDEX, BK), ACC)
    return beta, gam, norm, valid


@triton.jit
def _key_slice(k_ptr, t0, length, kh, H, K, k_start, BLOCK_INDEX: tl.constexpr, WIDTH: tl.constexpr):
    """Raw k [16, WIDTH] of token block BLOCK_INDEX, key columns k_start .. + WIDTH - 1."""
    rows = BLOCK_INDEX * _BLOCK + tl.arange(0, _BLOCK)
    kcols = k_start + tl.arange(0, WIDTH)
    return tl.load(k_ptr + kh * K + (t0 + rows)[:, None] * (H * K) + kcols[None, :],
                   mask=(rows < length)[:, None] & (kcols < K)[None, :], other=0.0)


@triton.jit
def _key_slice_t(k_ptr, t0, length, kh, H, K, k_start, BLOCK_INDEX: tl.constexpr, WIDTH: tl.constexpr):
    """_key_slice transposed, [WIDTH, 16], loaded so rather than by tl.trans: a transposed dot
    operand hit an out-of-bounds shared-memory read with Triton 3.6 on Hopper in some warp /
    tile configurations."""
    rows = BLOCK_INDEX * _BLOCK + tl.arange(0, _BLOCK)
    kcols = k_start + tl.arange(0, WIDTH)
    return tl.load(k_ptr + kh * K + (t0 + rows)[None, :] * (H * K) + kcols[:, None],
                   mask=(kcols < K)[:, None] & (rows < length)[None, :], other=0.0)


@triton.jit
def _a_block(kk, beta_i, gam_i, norm_i, valid_i, gam_j, norm_j,
             DIAGONAL: tl.constexpr, L2NORM: tl.constexpr):
    """Block A_ij of A from the products kk = k_i k_j^T of token blocks i (rows) and j, i >= j."""
    if L2NORM:
        kk = kk * norm_i[:, None] * norm_j[None, :]
    # Column tokens precede row tokens, so a valid row has valid causal columns.
    causal = valid_i[:, None]
    if DIAGONAL:
        sub = tl.arange(0, _BLOCK)
        causal = causal & (sub[:, None] > sub[None, :])
    return tl.where(causal, beta_i[:, None] * kk * masked_exp(gam_i[:, None] - gam_j[None, :], causal), 0.0)


@triton.jit
def _solve_block_step(t, a, below_solved, PRECISION: tl.constexpr):
    """From t inverting the diagonal s-blocks of I + a to t inverting its 2s-blocks, where
    below_solved marks the s x s blocks just below the solved ones inside each 2s-block."""
    return t - dot(t, dot(tl.where(below_solved, a, 0.0), t, PRECISION), PRECISION)


@triton.jit
def _unit_lower_inverse_blocks(a0, a1, a2, a3, PRECISION: tl.constexpr):
    """(I + a)^-1 for each of four strictly lower triangular [16, 16] tiles."""
    sub = tl.arange(0, _BLOCK)
    row = sub[:, None]
    col = sub[None, :]
    # Solved 2-blocks: [[1, 0], [e, 1]]^-1 = [[1, 0], [-e, 1]].
    identity = row == col
    first_below = (row == col + 1) & (row % 2 == 1)
    inv0 = tl.where(identity, 1.0, tl.where(first_below, -a0, 0.0))
    inv1 = tl.where(identity, 1.0, tl.where(first_below, -a1, 0.0))
    inv2 = tl.where(identity, 1.0, tl.where(first_below, -a2, 0.0))
    inv3 = tl.where(identity, 1.0, tl.where(first_below, -a3, 0.0))
    for level in tl.static_range(1, 4):
        size = 1 << level
        below_solved = (row // size == col // size + 1) & ((row // size) % 2 == 1)
        inv0 = _solve_block_step(inv0, a0, below_solved, PRECISION)
        inv1 = _solve_block_step(inv1, a1, below_solved, PRECISION)
        inv2 = _solve_block_step(inv2, a2, below_solved, PRECISION)
        inv3 = _solve_block_step(inv3, a3, below_solved, PRECISION)
    return inv0, inv1, inv2, inv3


@triton.jit
def _store_block(ptr, tile, t0, length, hv, HV, ROW_BLOCK: tl.constexpr, COL_BLOCK: tl.constexpr):
    """Block (ROW_BLOCK, COL_BLOCK) of a [64, 64] chunk matrix into the [B, T, HV, 64] row
    layout, for the chunk's valid tokens."""
    sub = tl.arange(0, _BLOCK)
    rows = ROW_BLOCK * _BLOCK + sub
    tl.store(ptr + (t0 + rows)[:, None] * (HV * CHUNK) + hv * CHUNK + COL_BLOCK * _BLOCK + sub[None, :],
             tile, mask=(rows < length)[:, None])


@triton.jit
def kkt_solve_kernel(
    k_ptr, beta_ptr, g_cum_ptr, tm_ptr, a_ptr, chunk_seq_ptr, seq_start_ptr, seq_first_chunk_ptr,
    H, HV, K, GROUP,
    BK: tl.constexpr, K_STEP: tl.constexpr, L2NORM: tl.constexpr, STORE_A: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One program per (chunk, value head)."""
    chunk = tl.program_id(0)
    hv = tl.program_id(1)
    kh = hv // GROUP
    ACC: tl.constexpr = tm_ptr.dtype.element_ty
    t0, length = chunk_span(chunk, chunk_seq_ptr, seq_start_ptr, seq_first_chunk_ptr)

    beta0, gam0, norm0, valid0 = _token_block(
        k_ptr, beta_ptr, g_cum_ptr, t0, length, hv, kh, H, HV, K, 0, BK, L2NORM, ACC)
    beta1, gam1, norm1, valid1 = _token_block(
        k_ptr, beta_ptr, g_cum_ptr, t0, length, hv, kh, H, HV, K, 1, BK, L2NORM, ACC)
    beta2, gam2, norm2, valid2 = _token_block(
        k_ptr, beta_ptr, g_cum_ptr, t0, length, hv, kh, H, HV, K, 2, BK, L2NORM, ACC)
    beta3, gam3, norm3, valid3 = _token_block(
        k_ptr, beta_ptr, g_cum_ptr, t0, length, hv, kh, H, HV, K, 3, BK, L2NORM, ACC)

    # k_i k_j^T in slices of the key dimension: whole [16, BK] operands for all four token
    # blocks would not fit in registers.
    kk00 = tl.zeros([_BLOCK, _BLOCK], ACC)
    kk10 = tl.zeros([_BLOCK, _BLOCK], ACC)
    kk11 = tl.zeros([_BLOCK, _BLOCK], ACC)
    kk20 = tl.zeros([_BLOCK, _BLOCK], ACC)
    kk21 = tl.zeros([_BLOCK, _BLOCK], ACC)
    kk22 = tl.zeros([_BLOCK, _BLOCK], ACC)
    kk30 = tl.zeros([_BLOCK, _BLOCK], ACC)
    kk31 = tl.zeros([_BLOCK, _BLOCK], ACC)
    kk32 = tl.zeros([_BLOCK, _BLOCK], ACC)
    kk33 = tl.zeros([_BLOCK, _BLOCK], ACC)
    for k_start in range(0, BK, K_STEP):
        k0 = _key_slice(k_ptr, t0, length, kh, H, K, k_start, 0, K_STEP)
        k1 = _key_slice(k_ptr, t0, length, kh, H, K, k_start, 1, K_STEP)
        k2 = _key_slice(k_ptr, t0, length, kh, H, K, k_start, 2, K_STEP)
        k3 = _key_slice(k_ptr, t0, length, kh, H, K, k_start, 3, K_STEP)
        kt0 = _key_slice_t(k_ptr, t0, length, kh, H, K, k_start, 0, K_STEP)
        kt1 = _key_slice_t(k_ptr, t0, length, kh, H, K, k_start, 1, K_STEP)
        kt2 = _key_slice_t(k_ptr, t0, length, kh, H, K, k_start, 2, K_STEP)
        kt3 = _key_slice_t(k_ptr, t0, length, kh, H, K, k_start, 3, K_STEP)
        kk00 += dot(k0, kt0, PRECISION)
        kk10 += dot(k1, kt0, PRECISION)
        kk11 += dot(k1, kt1, PRECISION)
        kk20 += dot(k2, kt0, PRECISION)
        kk21 += dot(k2, kt1, PRECISION)
        kk22 += dot(k2, kt2, PRECISION)
        kk30 += dot(k3, kt0, PRECISION)
        kk31 += dot(k3, kt1, PRECISION)
        kk32 += dot(k3, kt2, PRECISION)
        kk33 += dot(k3, kt3, PRECISION)

    a00 = _a_block(kk00, beta0, gam0, norm0, valid0, gam0, norm0, True, L2NORM)
    a10 = _a_block(kk10, beta1, gam1, norm1, valid1, gam0, norm0, False, L2NORM)
    a11 = _a_block(kk11, beta1, gam1, norm1, valid1, gam1, norm1, True, L2NORM)
    a20 = _a_block(kk20, beta2, gam2, norm2, valid2, gam0, norm0, False, L2NORM)
    a21 = _a_block(kk21, beta2, gam2, norm2, valid2, gam1, norm1, False, L2NORM)
    a22 = _a_block(kk22, beta2, gam2, norm2, valid2, gam2, norm2, True, L2NORM)
    a30 = _a_block(kk30, beta3, gam3, norm3, valid3, gam0, norm0, False, L2NORM)
    a31 = _a_block(kk31, beta3, gam3, norm3, valid3, gam1, norm1, False, L2NORM)
    a32 = _a_block(kk32, beta3, gam3, norm3, valid3, gam2, norm2, False, L2NORM)
    a33 = _a_block(kk33, beta3, gam3, norm3, valid3, gam3, norm3, True, L2NORM)

    # Tm by columns: a column needs only itself and the diagonal blocks, so it can be stored
    # and dropped before the next.
    zero = tl.zeros([_BLOCK, _BLOCK], ACC)
    if STORE_A:
        _store_block(a_ptr, a00, t0, length, hv, HV, 0, 0)
        _store_block(a_ptr, a10, t0, length, hv, HV, 1, 0)
        _store_block(a_ptr, a11, t0, length, hv, HV, 1, 1)
        _store_block(a_ptr, a20, t0, length, hv, HV, 2, 0)
        _store_block(a_ptr, a21, t0, length, hv, HV, 2, 1)
        _store_block(a_ptr, a22, t0, length, hv, HV, 2, 2)
        _store_block(a_ptr, a30, t0, length, hv, HV, 3, 0)
        _store_block(a_ptr, a31, t0, length, hv, HV, 3, 1)
        _store_block(a_ptr, a32, t0, length, hv, HV, 3, 2)
        _store_block(a_ptr, a33, t0, length, hv, HV, 3, 3)
    for col_block in tl.static_range(1, 4):
        for row_block in tl.static_range(col_block):
            _store_block(tm_ptr, zero, t0, length, hv, HV, row_block, col_block)
            if STORE_A:
                _store_block(a_ptr, zero, t0, length, hv, HV, row_block, col_block)

    t00, t11, t22, t33 = _unit_lower_inverse_blocks(a00, a11, a22, a33, PRECISION)
    _store_block(tm_ptr, t00, t0, length, hv, HV, 0, 0)
    t10 = -dot(t11, dot(a10, t00, PRECISION), PRECISION)
    _store_block(tm_ptr, t10, t0, length, hv, HV, 1, 0)
    t20 = -dot(t22, dot(a20, t00, PRECISION) + dot(a21, t10, PRECISION), PRECISION)
    _store_block(tm_ptr, t20, t0, length, hv, HV, 2, 0)
    t30 = -dot(t33, dot(a30, t00, PRECISION) + dot(a31, t10, PRECISION) + dot(a32, t20, PRECISION), PRECISION)
    _store_block(tm_ptr, t30, t0, length, hv, HV, 3, 0)

    _store_block(tm_ptr, t11, t0, length, hv, HV, 1, 1)
    t21 = -dot(t22, dot(a21, t11, PRECISION), PRECISION)
    _store_block(tm_ptr, t21, t0, length, hv, HV, 2, 1)
    t31 = -dot(t33, dot(a31, t11, PRECISION) + dot(a32, t21, PRECISION), PRECISION)
    _store_block(tm_ptr, t31, t0, length, hv, HV, 3, 1)

    _store_block(tm_ptr, t22, t0, length, hv, HV, 2, 2)
    _store_block(tm_ptr, -dot(t33, dot(a32, t22, PRECISION), PRECISION), t0, length, hv, HV, 3, 2)
    _store_block(tm_ptr, t33, t0, length, hv, HV, 3, 3)


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
               BK=block_size(K), K_STEP=min(block_size(K), _K_STEP), L2NORM=use_l2norm, STORE_A=store_a,
               PRECISION=precision, num_warps=NUM_WARPS)
    return tm, a
