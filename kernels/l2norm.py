"""Stage 1b, with use_qk_l2norm_in_kernel: rq and rk, the l2norm factor 1 / sqrt(|x|^2 + eps) of
every row (token, key head) of q and k, computed once.

The later stages keep q and k raw as dot operands (exact products for 16-bit inputs) and scale
the rows of their products by these factors instead: diag(r) (X Y) = (diag(r) X) Y. Computing
them here, once per row, rather than in each stage that reads the row (k three times, once
inside the sequential recurrence) keeps them off the recurrence's sequential chain, and every
stage applies the same factor (timings: benchmarks/results/design_history.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._alloc import new_output
from gdn_verify.contract import L2NORM_EPS

from ._common import block_size, cdiv
from ._launch import launch

# Rows per program: a [64, K] tile of q and one of k.
_ROWS = 64
NUM_WARPS = 4
_EPS = tl.constexpr(L2NORM_EPS)


@triton.jit
def _inverse_l2_norm(x, ACC: tl.constexpr):
    """1 / sqrt(sum(x^2) + eps) per row of x, in ACC."""
    xf = x.to(ACC)
    return 1.0 / tl.sqrt(tl.sum(xf * xf, axis=1) + _EPS)


@triton.jit(do_not_specialize=["n_tokens"])
def l2norm_kernel(q_ptr, k_ptr, rq_ptr, rk_ptr, n_tokens, H, K, ROWS: tl.constexpr, BK: tl.constexpr):
    """One program per (ROWS consecutive tokens of the flattened [B * T] axis, key head)."""
    tokens = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    kh = tl.program_id(1)
    ACC: tl.constexpr = rq_ptr.dtype.element_ty
    valid = tokens < n_tokens
    kcols = tl.arange(0, BK)
    rows = tl.cast(tokens, tl.int64) * H + kh
    offsets = rows[:, None] * K + kcols[None, :]
    mask = valid[:, None] & (kcols < K)[None, :]
    tl.store(rq_ptr + rows, _inverse_l2_norm(tl.load(q_ptr + offsets, mask=mask, other=0.0), ACC), mask=valid)
    tl.store(rk_ptr + rows, _inverse_l2_norm(tl.load(k_ptr + offsets, mask=mask, other=0.0), ACC), mask=valid)


def l2norm_factors(q: torch.Tensor, k: torch.Tensor, acc_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k [B, T, H, K] -> (rq, rk), each [B, T, H] in acc_dtype."""
    q, k = q.contiguous(), k.contiguous()
    B, T, H, K = q.shape
    rq = new_output((B, T, H), acc_dtype, q.device)
    rk = new_output((B, T, H), acc_dtype, q.device)
    if B * T * H:
        launch(l2norm_kernel, (cdiv(B * T, _ROWS), H), q, k, rq, rk, B * T, H, K,
               ROWS=_ROWS, BK=block_size(K), num_warps=NUM_WARPS)
    return rq, rk
