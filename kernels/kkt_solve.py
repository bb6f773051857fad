"""Stage 2: A = strictly lower (beta_i k_i.k_j exp(gam_i - gam_j)) and Tm = (I + A)^-1 per chunk.

The kernel treats the 64-token chunk as a 4 x 4 grid of 16 x 16 blocks, because A and Tm are
lower triangular: only the 10 blocks on or below the diagonal hold anything, and whole 64 x 64
float32 tiles spent most of their registers (spilling) and MMAs on zeros.

* A: A_ij (i >= j) from k_i k_j^T, the raw 16-token key blocks as dot operands (k_j^T loaded
  transposed from memory), accumulated over 16-wide slices of the key dimension so the
  operands of a step stay small. The four diagonal blocks are one batched [4, 16, 16] dot.
* Diagonal blocks: T_ii = (I + A_ii)^-1 by doubling the solved block size inside the 16 x 16
  tile: if t inverts the diagonal s-blocks and e holds the entries of A_ii just below them
  inside each 2s-block, t - t e t inverts the 2s-blocks ([[L1, 0], [E, L2]]^-1 is
  [[T1, 0], [-T2 E T1, T2]]). Size 1 -> 2 is elementwise, 2 -> 16 three levels of two batched
  dots over the stack of the four diagonal blocks.
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
from ._common import CHUNK, block_size, masked_exp
from ._launch import launch
from ._triton_compat import dot
from .chunk_map import ChunkMap, chunk_span

_BLOCK = tl.constexpr(16)
_N_BLOCKS = tl.constexpr(4)

# One warp, 16-column key steps: the fastest configuration timed on sm_90, on one long sequence
# and on packed short ones (timings: benchmarks/results/design_history.md). A 16-row MMA tile
# cannot be split over warps, so with more warps each one repeats every small dot
# (warpsPerCTA [4, 1]); one warp a program wastes nothing, and the 32768 programs of a long
# sequence keep the SMs full anyway.
_K_STEP = 16
NUM_WARPS = 1
# Registers a thread (ptxas's maxnreg); None leaves them to ptxas, which takes 255 here: eight
# one-warp programs an SM. A cap trades spills for programs an SM; the bits do not depend on it.
MAX_REGISTERS = None


@triton.jit
def _token_vectors(beta_ptr, g_cum_ptr, rk_ptr, rows, t0, length, hv, kh, H, HV,
                   L2NORM: tl.constexpr, ACC: tl.constexpr):
    """beta, gam, the l2norm factor of k (1 on valid rows without L2NORM) and the valid mask for
    chunk rows `rows` (any shape)."""
    valid = rows < length
    tokens = t0 + rows
    beta = tl.load(beta_ptr + tokens * HV + hv, mask=valid, other=0.0).to(ACC)
    gam = tl.load(g_cum_ptr + tokens * HV + hv, mask=valid, other=0.0)
    if L2NORM:
        norm = tl.load(rk_ptr + tokens * H + kh, mask=valid, other=0.0)
    else:
        norm = tl.where(valid, 1.0, 0.0).to(ACC)
    return beta, gam, norm, valid


@triton.jit
def _block_rows(BLOCK_INDEX: tl.constexpr):
    return BLOCK_INDEX * _BLOCK + tl.arange(0, _BLOCK)


@triton.jit
def _key_slice(k_ptr, t0, length, kh, H, K, k_start, BLOCK_INDEX: tl.constexpr, WIDTH: tl.constexpr):
    """Raw k [16, WIDTH] of token block BLOCK_INDEX, key columns k_start .. + WIDTH - 1."""
    rows = _block_rows(BLOCK_INDEX)
    kcols = k_start + tl.arange(0, WIDTH)
    return tl.load(k_ptr + kh * K + (t0 + rows)[:, None] * (H * K) + kcols[None, :],
                   mask=(rows < length)[:, None] & (kcols < K)[None, :], other=0.0)


@triton.jit
def _key_slice_t(k_ptr, t0, length, kh, H, K, k_start, BLOCK_INDEX: tl.constexpr, WIDTH: tl.constexpr):
    """_key_slice transposed, [WIDTH, 16], loaded so rather than by tl.trans: a transposed dot
    operand hit an out-of-bounds shared-memory read with Triton 3.6 on Hopper in some warp /
    tile configurations."""
    rows = _block_rows(BLOCK_INDEX)
    kcols = k_start + tl.arange(0, WIDTH)
    return tl.load(k_ptr + kh * K + (t0 + rows)[None, :] * (H * K) + kcols[:, None],
                   mask=(kcols < K)[:, None] & (rows < length)[None, :], other=0.0)


@triton.jit
def _diagonal_key_slices(k_ptr, t0, length, kh, H, K, k_start, WIDTH: tl.constexpr):
    """The four token blocks' key slices stacked, [4, 16, WIDTH], and transposed, [4, WIDTH, 16]:
    operands of one batched dot for the four diagonal blocks of K K^T."""
    block = tl.arange(0, _N_BLOCKS)[:, None, None]
    sub = tl.arange(0, _BLOCK)
    kcols = k_start + tl.arange(0, WIDTH)
    rows = block * _BLOCK + sub[None, :, None]
    keys = tl.load(k_ptr + kh * K + (t0 + rows) * (H * K) + kcols[None, None, :],
                   mask=(rows < length) & (kcols < K)[None, None, :], other=0.0)
    rows_t = block * _BLOCK + sub[None, None, :]
    keys_t = tl.load(k_ptr + kh * K + (t0 + rows_t) * (H * K) + kcols[None, :, None],
                     mask=(rows_t < length) & (kcols < K)[None, :, None], other=0.0)
    return keys, keys_t


@triton.jit
def _a_entries(kk, beta_i, gam_i, norm_i, valid_i, gam_j, norm_j, causal):
    """A's entries beta_i (k_i . k_j) exp(gam_i - gam_j) from kk = k_i . k_j where `causal`, else
    0; the row vectors broadcast against kk's last axis (the columns j)."""
    kk = kk * tl.expand_dims(norm_i, -1) * tl.expand_dims(norm_j, -2)
    causal = causal & tl.expand_dims(valid_i, -1)
    decay = masked_exp(tl.expand_dims(gam_i, -1) - tl.expand_dims(gam_j, -2), causal)
    return tl.where(causal, tl.expand_dims(beta_i, -1) * kk * decay, 0.0)


@triton.jit
def _unit_lower_inverse(a, PRECISION: tl.constexpr):
    """(I + a)^-1 for a stack of strictly lower triangular [16, 16] tiles, [4, 16, 16].

    Doubling the solved block size: if t inverts the diagonal s-blocks and e holds the entries
    of a just below them inside each 2s-block, t - t e t inverts the 2s-blocks. The stack makes
    each level two batched dots, and the levels a loop rather than unrolled code: Triton's
    matmul passes grow superlinearly with the count of small dots (bf16x3 splits each in
    three), so four separate tiles made this kernel several times slower to compile
    (benchmarks/results/design_history.md).
    """
    sub = tl.arange(0, _BLOCK)
    row = sub[:, None]
    col = sub[None, :]
    # Solved 2-blocks: [[1, 0], [e, 1]]^-1 = [[1, 0], [-e, 1]].
    first_below = ((row == col + 1) & (row % 2 == 1))[None, :, :]
    t = tl.where((row == col)[None, :, :], 1.0, tl.where(first_below, -a, 0.0))
    for level in range(1, 4):
        size = 1 << level
        below_solved = ((row // size == col // size + 1) & ((row // size) % 2 == 1))[None, :, :]
        t = t - dot(t, dot(tl.where(below_solved, a, 0.0), t, PRECISION), PRECISION)
    return t


@triton.jit
def _unstack(x):
    """[4, 16, 16] -> its four [16, 16] tiles."""
    pairs = tl.reshape(tl.permute(x, (1, 2, 0)), (_BLOCK, _BLOCK, 2, 2))  # [..., i, j]: tile 2 i + j
    even, odd = tl.split(pairs)
    x0, x2 = tl.split(even)
    x1, x3 = tl.split(odd)
    return x0, x1, x2, x3


@triton.jit
def _store_block(ptr, tile, t0, length, hv, HV, ROW_BLOCK: tl.constexpr, COL_BLOCK: tl.constexpr):
    """Block (ROW_BLOCK, COL_BLOCK) of a [64, 64] chunk matrix into the [B, T, HV, 64] row
    layout, for the chunk's valid tokens."""
    rows = _block_rows(ROW_BLOCK)
    cols = _block_rows(COL_BLOCK)
    tl.store(ptr + (t0 + rows)[:, None] * (HV * CHUNK) + hv * CHUNK + cols[None, :], tile,
             mask=(rows < length)[:, None])


@triton.jit
def _store_diagonal(ptr, tiles, t0, length, hv, HV):
    """The four diagonal blocks of a [64, 64] chunk matrix, stacked [4, 16, 16], into the row layout."""
    block = tl.arange(0, _N_BLOCKS)[:, None, None]
    sub = tl.arange(0, _BLOCK)
    rows = block * _BLOCK + sub[None, :, None]
    cols = block * _BLOCK + sub[None, None, :]
    tl.store(ptr + (t0 + rows) * (HV * CHUNK) + hv * CHUNK + cols, tiles, mask=rows < length)


@triton.jit(do_not_specialize=["seq_len"])
def kkt_solve_kernel(
    k_ptr, beta_ptr, g_cum_ptr, rk_ptr, tm_ptr, a_ptr, chunk_seq_ptr, seq_start_ptr, seq_first_chunk_ptr, seq_len,
    H, HV, K, GROUP,
    BK: tl.constexpr, K_STEP: tl.constexpr, L2NORM: tl.constexpr, STORE_A: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One program per (chunk, value head)."""
    chunk = tl.program_id(0)
    hv = tl.program_id(1)
    kh = hv // GROUP
    ACC: tl.constexpr = tm_ptr.dtype.element_ty
    t0, length = chunk_span(chunk, chunk_seq_ptr, seq_start_ptr, seq_first_chunk_ptr, seq_len)

    # k_i k_j^T in slices of the key dimension (whole [16, BK] operands for all four token
    # blocks would not fit in registers): the diagonal blocks as one batched dot, the six below
    # it one dot each.
    kk_diag = tl.zeros([_N_BLOCKS, _BLOCK, _BLOCK], ACC)
    kk10 = tl.zeros([_BLOCK, _BLOCK], ACC)
    kk20 = tl.zeros([_BLOCK, _BLOCK], ACC)
    kk21 = tl.zeros([_BLOCK, _BLOCK], ACC)
    kk30 = tl.zeros([_BLOCK, _BLOCK], ACC)
    kk31 = tl.zeros([_BLOCK, _BLOCK], ACC)
    kk32 = tl.zeros([_BLOCK, _BLOCK], ACC)
    for k_start in range(0, BK, K_STEP):
        keys, keys_t = _diagonal_key_slices(k_ptr, t0, length, kh, H, K, k_start, K_STEP)
        kk_diag += dot(keys, keys_t, PRECISION)
        k1 = _key_slice(k_ptr, t0, length, kh, H, K, k_start, 1, K_STEP)
        k2 = _key_slice(k_ptr, t0, length, kh, H, K, k_start, 2, K_STEP)
        k3 = _key_slice(k_ptr, t0, length, kh, H, K, k_start, 3, K_STEP)
        kt0 = _key_slice_t(k_ptr, t0, length, kh, H, K, k_start, 0, K_STEP)
        kt1 = _key_slice_t(k_ptr, t0, length, kh, H, K, k_start, 1, K_STEP)
        kt2 = _key_slice_t(k_ptr, t0, length, kh, H, K, k_start, 2, K_STEP)
        kk10 += dot(k1, kt0, PRECISION)
        kk20 += dot(k2, kt0, PRECISION)
        kk21 += dot(k2, kt1, PRECISION)
        kk30 += dot(k3, kt0, PRECISION)
        kk31 += dot(k3, kt1, PRECISION)
        kk32 += dot(k3, kt2, PRECISION)

    beta0, gam0, norm0, valid0 = _token_vectors(beta_ptr, g_cum_ptr, rk_ptr, _block_rows(0), t0, length, hv, kh,
                                                H, HV, L2NORM, ACC)
    beta1, gam1, norm1, valid1 = _token_vectors(beta_ptr, g_cum_ptr, rk_ptr, _block_rows(1), t0, length, hv, kh,
                                                H, HV, L2NORM, ACC)
    beta2, gam2, norm2, valid2 = _token_vectors(beta_ptr, g_cum_ptr, rk_ptr, _block_rows(2), t0, length, hv, kh,
                                                H, HV, L2NORM, ACC)
    beta3, gam3, norm3, valid3 = _token_vectors(beta_ptr, g_cum_ptr, rk_ptr, _block_rows(3), t0, length, hv, kh,
                                                H, HV, L2NORM, ACC)
    stacked_rows = tl.arange(0, _N_BLOCKS)[:, None] * _BLOCK + tl.arange(0, _BLOCK)[None, :]
    beta_d, gam_d, norm_d, valid_d = _token_vectors(beta_ptr, g_cum_ptr, rk_ptr, stacked_rows, t0, length, hv, kh,
                                                    H, HV, L2NORM, ACC)
    # Column tokens precede row tokens below the diagonal, so a valid row has valid columns.
    below = tl.full([_BLOCK, _BLOCK], 1, tl.int1)
    sub = tl.arange(0, _BLOCK)
    strictly_lower = (sub[:, None] > sub[None, :])[None, :, :]
    a_diag = _a_entries(kk_diag, beta_d, gam_d, norm_d, valid_d, gam_d, norm_d, strictly_lower)
    a10 = _a_entries(kk10, beta1, gam1, norm1, valid1, gam0, norm0, below)
    a20 = _a_entries(kk20, beta2, gam2, norm2, valid2, gam0, norm0, below)
    a21 = _a_entries(kk21, beta2, gam2, norm2, valid2, gam1, norm1, below)
    a30 = _a_entries(kk30, beta3, gam3, norm3, valid3, gam0, norm0, below)
    a31 = _a_entries(kk31, beta3, gam3, norm3, valid3, gam1, norm1, below)
    a32 = _a_entries(kk32, beta3, gam3, norm3, valid3, gam2, norm2, below)

    zero = tl.zeros([_BLOCK, _BLOCK], ACC)
    if STORE_A:
        _store_diagonal(a_ptr, a_diag, t0, length, hv, HV)
        _store_block(a_ptr, a10, t0, length, hv, HV, 1, 0)
        _store_block(a_ptr, a20, t0, length, hv, HV, 2, 0)
        _store_block(a_ptr, a21, t0, length, hv, HV, 2, 1)
        _store_block(a_ptr, a30, t0, length, hv, HV, 3, 0)
        _store_block(a_ptr, a31, t0, length, hv, HV, 3, 1)
        _store_block(a_ptr, a32, t0, length, hv, HV, 3, 2)
    for col_block in tl.static_range(1, 4):
        for row_block in tl.static_range(col_block):
            _store_block(tm_ptr, zero, t0, length, hv, HV, row_block, col_block)
            if STORE_A:
                _store_block(a_ptr, zero, t0, length, hv, HV, row_block, col_block)

    # Below the diagonal, block forward substitution: T_ij = -T_ii (sum_{m=j}^{i-1} A_im T_mj).
    t_diag = _unit_lower_inverse(a_diag, PRECISION)
    _store_diagonal(tm_ptr, t_diag, t0, length, hv, HV)
    t00, t11, t22, t33 = _unstack(t_diag)
    t10 = -dot(t11, dot(a10, t00, PRECISION), PRECISION)
    _store_block(tm_ptr, t10, t0, length, hv, HV, 1, 0)
    t20 = -dot(t22, dot(a20, t00, PRECISION) + dot(a21, t10, PRECISION), PRECISION)
    _store_block(tm_ptr, t20, t0, length, hv, HV, 2, 0)
    t30 = -dot(t33, dot(a30, t00, PRECISION) + dot(a31, t10, PRECISION) + dot(a32, t20, PRECISION), PRECISION)
    _store_block(tm_ptr, t30, t0, length, hv, HV, 3, 0)
    t21 = -dot(t22, dot(a21, t11, PRECISION), PRECISION)
    _store_block(tm_ptr, t21, t0, length, hv, HV, 2, 1)
    t31 = -dot(t33, dot(a31, t11, PRECISION) + dot(a32, t21, PRECISION), PRECISION)
    _store_block(tm_ptr, t31, t0, length, hv, HV, 3, 1)
    _store_block(tm_ptr, -dot(t33, dot(a32, t22, PRECISION), PRECISION), t0, length, hv, HV, 3, 2)


def kkt_solve(
    k: torch.Tensor, beta: torch.Tensor, g_cum: torch.Tensor, rk: torch.Tensor | None, chunks: ChunkMap, HV: int,
    precision: str, store_a: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """k [B, T, H, K], beta and g_cum [B, T, HV], rk [B, T, H] (None: no l2norm) -> (Tm, A or None),
    each [B, T, HV, 64]."""
    k, beta = k.contiguous(), beta.contiguous()
    B, T, H, K = k.shape
    acc = g_cum.dtype
    tm = new_output((B, T, HV, CHUNK.value), acc, k.device)
    a = new_output((B, T, HV, CHUNK.value), acc, k.device) if store_a else None
    if chunks.n_chunks:
        # Unused pointer arguments get a tensor of the right dtype; their flags keep them unread.
        launch(kkt_solve_kernel, (chunks.n_chunks, HV), k, beta, g_cum, g_cum if rk is None else rk,
               tm, a if store_a else tm, *chunks.span_args, H, HV, K, HV // H,
               BK=block_size(K), K_STEP=min(block_size(K), _K_STEP), L2NORM=rk is not None, STORE_A=store_a,
               PRECISION=precision, num_warps=NUM_WARPS, maxnreg=MAX_REGISTERS)
    return tm, a
