"""Stage 5: O = scale (diag(exp(gam)) Q S + (causal(Q K^T) * exp(gam_i - gam_j)) V').

Every chunk's output depends only on that chunk's inputs, the state entering it (h) and its V',
all written by the recurrence, so this stage runs over all chunks at once: the sequential pass
stays as short as the recurrence allows, and a single long sequence still fills the GPU here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._alloc import new_output
from ._common import CHUNK, block_size, cdiv, masked_exp, raw_dot, split_operand, split_scale
from ._launch import launch
from ._triton_compat import cast_to, dot, loop_bound
from .chunk_map import ChunkMap, chunk_span

# 4 warps, 64 value columns a program, no software pipelining: the fastest configuration timed
# on sm_90, on one long sequence and on packed short ones (pipelining, 32 or 128 columns and
# 8 warps were slower, 2 warps spilled; timings: benchmarks/results/design_history.md).
NUM_WARPS = 4
NUM_STAGES = 1
# V columns per program, for every V (masked past V): every V block recomputes the chunk's
# Q K^T, so blocks are as wide as the registers allow. Never 32 with Triton 3.6 on sm_90: with
# 16-bit inputs it compiled this kernel into wrong results (V = 20) and, at T = 65536, an
# illegal memory access (benchmarks/results/h200/stage_sweeps.md, design_history.md).
VALUE_BLOCK = 64
# Chunks per program: a loop over a few consecutive chunks spreads each program's setup over
# them (4 was faster than 1 at T = 65536: benchmarks/results/design_history.md). Fixed, never
# from T.
CHUNKS_PER_PROGRAM = 4
# Columns of K per step of the Q S and Q K^T accumulation.
KEY_BLOCK = 64
# Registers a thread (ptxas's maxnreg); None leaves them to ptxas, which takes 255 here: two
# programs an SM. A cap trades spills for programs an SM; the bits do not depend on it.
MAX_REGISTERS = None


@triton.jit(do_not_specialize=["seq_len", "n_chunks"])
def output_kernel(
    q_ptr, k_ptr, g_cum_ptr, rq_ptr, rk_ptr, h_ptr, v_new_ptr, o_ptr, chunk_seq_ptr, seq_start_ptr, seq_first_chunk_ptr,
    seq_len, n_chunks, scale_hi, scale_lo, H, HV, K, V, GROUP,
    BK: tl.constexpr, KB: tl.constexpr, BV: tl.constexpr, CHUNKS: tl.constexpr, L2NORM: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One program per (group of CHUNKS consecutive chunks, value head, V block). The V blocks
    and the value heads of a key head run side by side, so the q and k tiles they share come
    from L2."""
    pid = tl.program_id(0)
    n_vblocks = tl.cdiv(V, BV)
    group = pid // (HV * n_vblocks)
    hv = (pid // n_vblocks) % HV
    vb = pid % n_vblocks
    kh = hv // GROUP
    ACC: tl.constexpr = h_ptr.dtype.element_ty
    RAW: tl.constexpr = q_ptr.dtype.element_ty
    rows = tl.arange(0, CHUNK)
    vcols = vb * BV + tl.arange(0, BV)
    scale = tl.cast(scale_hi, ACC) + tl.cast(scale_lo, ACC)
    first = group * CHUNKS
    for chunk in tl.range(loop_bound(first), loop_bound(tl.minimum(first + CHUNKS, n_chunks))):
        t0, length = chunk_span(chunk, chunk_seq_ptr, seq_start_ptr, seq_first_chunk_ptr, seq_len)
        valid = rows < length
        qk_base = (t0 * H + kh) * K
        state_base = (tl.cast(chunk, tl.int64) * HV + hv) * K * V
        # Q S and Q K^T accumulate over K in blocks of KB: a whole K x BV float32 state with its
        # two bfloat16 halves, beside whole Q and K tiles, left no registers (spills at every
        # tile width, sm_90).
        q_state = tl.zeros([CHUNK, BV], ACC)
        qk = tl.zeros([CHUNK, CHUNK], ACC)
        for kb in tl.static_range(BK // KB):
            kcols = kb * KB + tl.arange(0, KB)
            q = tl.load(q_ptr + qk_base + (rows[:, None] * (H * K) + kcols[None, :]),
                        mask=valid[:, None] & (kcols < K)[None, :], other=0.0)
            # K^T read as its own tile rather than transposed in registers: Triton 3.6 on sm_90
            # compiled a tl.trans'ed operand of this dot into out-of-bounds shared-memory reads in
            # some tile / warp configurations (illegal memory access).
            k_t = tl.load(k_ptr + qk_base + (kcols[:, None] + rows[None, :] * (H * K)),
                          mask=(kcols < K)[:, None] & valid[None, :], other=0.0)
            state = tl.load(h_ptr + state_base + (kcols[:, None] * V + vcols[None, :]),
                            mask=(kcols < K)[:, None] & (vcols < V)[None, :], other=0.0)
            state_hi, state_lo = split_operand(state, RAW)
            q_state += raw_dot(q, state_hi, state_lo, PRECISION)
            qk += dot(q, k_t, PRECISION).to(ACC)
        if L2NORM:
            rq = tl.load(rq_ptr + (t0 + rows) * H + kh, mask=valid, other=0.0)
            rk = tl.load(rk_ptr + (t0 + rows) * H + kh, mask=valid, other=0.0)
        else:
            rq = tl.full([CHUNK], 1.0, ACC)
            rk = tl.full([CHUNK], 1.0, ACC)

        gam = tl.load(g_cum_ptr + (t0 + rows) * HV + hv, mask=valid, other=0.0)
        v_tile = (t0 * HV + hv) * V + (rows[:, None] * (HV * V) + vcols[None, :])
        v_mask = valid[:, None] & (vcols < V)[None, :]
        v_new = tl.load(v_new_ptr + v_tile, mask=v_mask, other=0.0)
        inter = q_state * (rq * tl.exp(gam))[:, None]
        causal = (rows[:, None] >= rows[None, :]) & valid[:, None] & valid[None, :]
        scores = qk * rq[:, None] * rk[None, :] * masked_exp(gam[:, None] - gam[None, :], causal)
        o = (inter + dot(scores, v_new, PRECISION)) * scale
        tl.store(o_ptr + v_tile, cast_to(o, o_ptr.dtype.element_ty), mask=v_mask)


def output(
    q: torch.Tensor, k: torch.Tensor, g_cum: torch.Tensor, norms: tuple[torch.Tensor, torch.Tensor] | None,
    h: torch.Tensor, v_new: torch.Tensor, chunks: ChunkMap, scale: float, precision: str, out_dtype: torch.dtype,
) -> torch.Tensor:
    """q, k [B, T, H, K], g_cum [B, T, HV], norms (rq, rk) [B, T, H] each (None: no l2norm),
    h [NT, HV, K, V], v_new [B, T, HV, V] -> o [B, T, HV, V]."""
    q, k = q.contiguous(), k.contiguous()
    B, T, H, K = q.shape
    HV, V = v_new.shape[2], v_new.shape[3]
    o = new_output((B, T, HV, V), out_dtype, q.device)
    if chunks.n_chunks:
        BV = VALUE_BLOCK
        groups = cdiv(chunks.n_chunks, CHUNKS_PER_PROGRAM)
        # Unused pointer arguments get a tensor of the right dtype; their flags keep them unread.
        rq, rk = (g_cum, g_cum) if norms is None else norms
        launch(output_kernel, (groups * HV * cdiv(V, BV),), q, k, g_cum, rq, rk, h, v_new, o,
               *chunks.span_args, chunks.n_chunks, *split_scale(scale), H, HV, K, V, HV // H,
               BK=block_size(K), KB=min(block_size(K), KEY_BLOCK), BV=BV, CHUNKS=CHUNKS_PER_PROGRAM,
               L2NORM=norms is not None, PRECISION=precision, num_warps=NUM_WARPS, num_stages=NUM_STAGES,
               maxnreg=MAX_REGISTERS)
    return o
