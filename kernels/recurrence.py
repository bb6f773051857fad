"""Stage 4: the state recurrence over a sequence's chunks.

For each chunk, entering with state S (stored as h, the output stage's input):

    V' = Tm diag(beta) (V - diag(exp(gam)) K S)        (= U - W S)
    S  = exp(gam_last) S + (diag(exp(gam_last - gam)) K)^T V'

This is the only sequential part of the forward, so it carries nothing else: the output, which
needs S and V' but feeds nothing back, runs afterwards over all chunks in parallel (output.py).
V' is formed from Tm, K and V rather than from W and U: the same quantity, but the pass reads
the raw 16-bit K and a 64 x 64 Tm per chunk instead of a float32 W (64 x K), which at
T = 65536, HV = 32, K = V = 128 saves about 1 GB of traffic and a stage.

One program per (sequence, value head, block of BV value columns): the columns of S evolve
independently, so splitting V gives the single-sequence case enough programs to fill the GPU.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._alloc import new_output
from ._common import CHUNK, block_size, cdiv, masked_exp, raw_dot, split_operand
from ._launch import launch
from ._triton_compat import dot, loop_bound
from .chunk_map import ChunkMap, sequence_span

# 4 warps, the chunk loop pipelined 3 deep, BV (state_value_block) 32 or 16: the fastest
# configurations timed on sm_90 over one long sequence and packed short ones (8 warps were slower
# everywhere). Timings: benchmarks/results/design_history.md.
NUM_WARPS = 4
# Pipelining depth for 16-bit inputs. float32 and float64 tiles take two and four times the
# shared memory per stage (K = 256 would not fit), so their loop is not pipelined.
NUM_STAGES = 3


def pipeline_stages(input_dtype: torch.dtype) -> int:
    """The chunk loop's software pipelining depth (from the input dtype only, never from T)."""
    return NUM_STAGES if input_dtype.itemsize == 2 else 1


# Programs of this kernel an SM holds at once: 4 warps at 255 registers a thread (sm_90, both
# value blocks: benchmarks/results/compile_sm90_value_block_triton3.6.json) take half of an SM's
# 64K registers.
PROGRAMS_PER_SM = 2


def state_value_block(K: int, V: int, pairs: int, sm_count: int | None) -> int:
    """V columns per program, from K, V and the number of (sequence, value head) pairs, never
    from T; sm_count is the GPU's (None: not a GPU).

    A program is a chain of dependent MMAs, one chunk after another, that leaves its SM mostly
    waiting: the stage runs fastest with as many programs at once as the SMs hold. 32 columns
    (V = 128: four programs a pair) when that fills every SM's PROGRAMS_PER_SM; 16 when it would
    not (one or two long sequences: 32 heads of one sequence make 128 programs), which doubles
    the programs at the same bits (each state column's arithmetic is the same). Large K takes
    16 always, to keep the K x BV state in registers.
    """
    widest = min(block_size(V), 32 if block_size(K) <= 128 else 16)
    if sm_count is not None and pairs * cdiv(V, widest) < PROGRAMS_PER_SM * sm_count:
        return 16
    return widest


@functools.cache
def sm_count(device: torch.device) -> int | None:
    """The number of SMs of a CUDA device (None for any other)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else None


@triton.jit(do_not_specialize=["seq_len"])
def recurrence_kernel(
    k_ptr, v_ptr, beta_ptr, g_cum_ptr, rk_ptr, tm_ptr, h0_ptr, ht_ptr, h_ptr, v_new_ptr,
    seq_start_ptr, seq_first_chunk_ptr, seq_len, H, HV, K, V, GROUP,
    BK: tl.constexpr, BV: tl.constexpr, L2NORM: tl.constexpr, HAS_H0: tl.constexpr,
    STORE_FINAL: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program per (sequence x value head, V block); loops over the sequence's chunks."""
    pid = tl.program_id(0)
    n_vblocks = tl.cdiv(V, BV)
    seq_head = pid // n_vblocks  # n * HV + hv
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
    # Scalar bases are int64 (T * HV * V passes 2^31 long before memory runs out); offsets
    # inside a tile stay int32, which keeps the per-element address arithmetic narrow.
    state_tile = kcols[:, None] * V + vcols[None, :]
    state_mask = (kcols < K)[:, None] & (vcols < V)[None, :]
    head_state = tl.cast(seq_head, tl.int64) * K * V
    if HAS_H0:
        state = tl.load(h0_ptr + head_state + state_tile, mask=state_mask, other=0.0).to(ACC)
    else:
        state = tl.zeros([BK, BV], ACC)

    # The chunk count is a runtime value, never a specialization key; loop_bound lets the
    # Triton 3.6 interpreter run a loop over it (see _triton_compat), while the compiled loop
    # stays an scf.for the pipeliner could act on.
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
        v_tile = rows[:, None] * (HV * V) + vcols[None, :]
        v_mask = valid[:, None] & (vcols < V)[None, :]
        v = tl.load(v_ptr + (t0 * HV + hv) * V + v_tile, mask=v_mask, other=0.0).to(ACC)
        beta = tl.load(beta_ptr + tokens * HV + hv, mask=valid, other=0.0).to(ACC)
        gam = tl.load(g_cum_ptr + tokens * HV + hv, mask=valid, other=0.0)
        gam_last = tl.load(g_cum_ptr + (t0 + length - 1) * HV + hv)
        tm = tl.load(tm_ptr + (t0 * HV + hv) * CHUNK + (rows[:, None] * (HV * CHUNK) + rows[None, :]),
                     mask=valid[:, None], other=0.0)

        tl.store(h_ptr + (tl.cast(chunk, tl.int64) * HV + hv) * K * V + state_tile, state, mask=state_mask)
        state_hi, state_lo = split_operand(state, RAW)
        ks = raw_dot(k, state_hi, state_lo, PRECISION) * rk[:, None]
        v_new = dot(tm, beta[:, None] * (v - tl.exp(gam)[:, None] * ks), PRECISION)
        tl.store(v_new_ptr + (t0 * HV + hv) * V + v_tile, v_new, mask=v_mask)

        update_hi, update_lo = split_operand(v_new * (masked_exp(gam_last - gam, valid) * rk)[:, None], RAW)
        state = state * tl.exp(gam_last) + raw_dot(tl.trans(k), update_hi, update_lo, PRECISION)

    if STORE_FINAL:
        tl.store(ht_ptr + head_state + state_tile, state, mask=state_mask)


def recurrence(
    k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g_cum: torch.Tensor, rk: torch.Tensor | None,
    tm: torch.Tensor, chunks: ChunkMap, initial_state: torch.Tensor | None, output_final_state: bool,
    precision: str,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """rk [B, T, H] (None: no l2norm) -> (final_state [N, HV, K, V] or None, h [NT, HV, K, V],
    v_new [B, T, HV, V]), in g_cum's dtype."""
    k, v, beta = k.contiguous(), v.contiguous(), beta.contiguous()
    B, T, H, K = k.shape
    HV, V = v.shape[2], v.shape[3]
    acc, device = g_cum.dtype, k.device
    N = chunks.n_seqs
    final_state = new_output((N, HV, K, V), acc, device) if output_final_state else None
    h = new_output((chunks.n_chunks, HV, K, V), acc, device)
    v_new = new_output((B, T, HV, V), acc, device)
    has_h0 = initial_state is not None
    BV = state_value_block(K, V, N * HV, sm_count(device))
    if N * HV:
        # Unused pointer arguments get a tensor of the right dtype; their flags keep them unread.
        placeholder = g_cum
        launch(recurrence_kernel, (N * HV * cdiv(V, BV),), k, v, beta, g_cum,
               placeholder if rk is None else rk, tm,
               initial_state.contiguous() if has_h0 else placeholder,
               final_state if output_final_state else placeholder, h, v_new,
               *chunks.sequence_args, H, HV, K, V, HV // H,
               BK=block_size(K), BV=BV, L2NORM=rk is not None, HAS_H0=has_h0, STORE_FINAL=output_final_state,
               PRECISION=precision, num_warps=NUM_WARPS,
               num_stages=pipeline_stages(k.dtype))
    return final_state, h, v_new
