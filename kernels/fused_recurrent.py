"""Token-by-token gated delta rule: the kernel for decode and short prefill.

One program owns one (sequence, value head, V-block): it keeps the state columns
S[:, V-block] of that head in registers as a [BK, BV] tile (float32; float64 in exact mode)
and walks the sequence's tokens in order:

    S <- exp(g_t) S;  u = beta_t (v_t - S^T k_t);  S <- S + k_t u^T;  o_t = scale S^T q_t

The V-blocks of one head are independent (every step is column-wise in S), so the grid is
(sequences x value heads, V-blocks) and nothing crosses programs. Padded rows and columns of
the tile load as zeros and stay zero: k and q are zero there, so they never feed a result.

Decode (one token per sequence) is a pure state stream: 64 KiB of float32 state read and
written per head at K = V = 128 against a few hundred bytes of q, k and v. The tile is laid
out like the state, row-major [K, V], with V fastest across a warp's threads, so every row
of a tile is one contiguous, fully coalesced segment of BV floats. Prefill adds a sequential
chain per token (two reductions over K), so there the fewer warps a tile needs the better,
as long as the tile still fits in registers.
"""

import torch
import triton
import triton.language as tl

from gdn_verify.contract import L2NORM_EPS, validate

from ._alloc import new_output
from ._common import cdiv, next_power_of_2
from ._launch import launch
from ._triton_compat import cast_to, loop_bound

# Tile shape, one config for every launch (no autotuning), chosen by timing on sm_90 (timings:
# benchmarks/results/design_history.md):
# * BLOCK_V: 64 was the fastest decode of 256 sequences at K = V = 128; it gives 256-byte rows
#   and still 64 programs for a single sequence's 32 heads.
# * Warps: a thread holding 128 state values is the sweet spot: fewer warps spill (K = 256),
#   more are slower on prefill. K = 64: 1 warp is best.
BLOCK_V = 64
STATE_VALUES_PER_THREAD = 128


def num_warps_for(block_k: int, block_v: int) -> int:
    return max(1, block_k * block_v // (32 * STATE_VALUES_PER_THREAD))


_TORCH_TO_TL = {
    torch.float64: tl.float64,
    torch.float32: tl.float32,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
}


@triton.jit
def _l2_normalized(x, EPS: tl.constexpr):
    return x / tl.sqrt(tl.sum(x * x, axis=0) + EPS)


@triton.jit
def _load_token(p_q, p_k, p_v, p_g, p_beta, offs_k, offs_v, valid,
                K: tl.constexpr, V: tl.constexpr, ACC: tl.constexpr):
    """One token's q, k (key head), v (V-block), g and beta in ACC; zeros where not valid."""
    # `valid` is folded into the index bounds rather than and-ed into a block mask: the
    # Triton 3.9 interpreter broadcasts a scalar boolean to an int32 block, which tl.load
    # then rejects ("mask has unsupported dtype").
    k_end = tl.where(valid, K, 0)
    v_end = tl.where(valid, V, 0)
    b_q = tl.load(p_q, mask=offs_k < k_end, other=0.0).to(ACC)
    b_k = tl.load(p_k, mask=offs_k < k_end, other=0.0).to(ACC)
    b_v = tl.load(p_v, mask=offs_v < v_end, other=0.0).to(ACC)
    b_g = tl.load(p_g, mask=valid, other=0.0).to(ACC)
    b_beta = tl.load(p_beta, mask=valid, other=0.0).to(ACC)
    return b_q, b_k, b_v, b_g, b_beta


@triton.jit(do_not_specialize=["T"])
def fused_recurrent_gated_delta_rule_kernel(
    q, k, v, g, beta, o, h0, ht, cu_seqlens,
    scale: tl.float64,
    T,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
    ACC: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr,
    STORE_FINAL_STATE: tl.constexpr,
    USE_QK_L2NORM: tl.constexpr,
    L2NORM_EPS: tl.constexpr,
):
    i_nh = tl.program_id(0)
    i_v = tl.program_id(1)
    i_n = i_nh // HV
    i_hv = i_nh % HV
    i_h = i_hv // (HV // H)

    # T is the token dimension (not specialized on); with cu_seqlens the bounds come from
    # the device, so neither T nor any sequence length reaches a compile key.
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        eos = bos + T

    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_k = offs_k < K
    mask_v = offs_v < V
    mask_kv = mask_k[:, None] & mask_v[None, :]
    state_offs = i_nh.to(tl.int64) * K * V + offs_k[:, None] * V + offs_v[None, :]

    if USE_INITIAL_STATE:
        S = tl.load(h0 + state_offs, mask=mask_kv, other=0.0).to(ACC)
    else:
        S = tl.zeros([BK, BV], dtype=ACC)

    # Built from the float64 argument: exact in exact mode, rounded once otherwise, and
    # outside the loop so the token loop has no float64 work on a float32 run.
    scale_acc = tl.full([], scale, ACC)

    p_q = q + (bos * H + i_h) * K + offs_k
    p_k = k + (bos * H + i_h) * K + offs_k
    p_v = v + (bos * HV + i_hv) * V + offs_v
    p_o = o + (bos * HV + i_hv) * V + offs_v
    p_g = g + bos * HV + i_hv
    p_beta = beta + bos * HV + i_hv

    # Every step depends on the previous one through S, so a step that loaded its own inputs
    # would wait a full memory latency each token (nothing overlaps it: the compiler's
    # pipeliner leaves these narrow loads alone). Token t + 1's inputs are loaded instead
    # while token t computes.
    n_tokens = eos - bos
    b_q, b_k, b_v, b_g, b_beta = _load_token(p_q, p_k, p_v, p_g, p_beta, offs_k, offs_v,
                                             n_tokens > 0, K, V, ACC)
    for i_t in range(loop_bound(n_tokens)):
        p_q += H * K
        p_k += H * K
        p_v += HV * V
        p_g += HV
        p_beta += HV
        next_token = _load_token(p_q, p_k, p_v, p_g, p_beta, offs_k, offs_v,
                                 i_t + 1 < n_tokens, K, V, ACC)

        if USE_QK_L2NORM:
            b_q = _l2_normalized(b_q, L2NORM_EPS)
            b_k = _l2_normalized(b_k, L2NORM_EPS)
        b_q = b_q * scale_acc
        S = S * tl.exp(b_g)
        b_u = b_beta * (b_v - tl.sum(S * b_k[:, None], axis=0))
        S = S + b_k[:, None] * b_u[None, :]
        b_o = tl.sum(S * b_q[:, None], axis=0)
        tl.store(p_o, cast_to(b_o, p_o.dtype.element_ty), mask=mask_v)
        p_o += HV * V

        b_q, b_k, b_v, b_g, b_beta = next_token

    if STORE_FINAL_STATE:
        tl.store(ht + state_offs, S.to(ht.dtype.element_ty), mask=mask_kv)


def fused_recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gated delta rule token by token (docs/design.md, 'Input contract' and 'Stages').

    Returns (o [B, T, HV, V] in v's dtype, final_state [N, HV, K, V] float32, or None unless
    output_final_state). float64 inputs run in float64 throughout, state included.
    """
    p = validate(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
                 use_qk_l2norm_in_kernel, l2norm_arg="use_qk_l2norm_in_kernel")
    state_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    if initial_state is not None:
        initial_state = initial_state.contiguous()

    o = new_output(v.shape, v.dtype, v.device)
    final_state = new_output((p.N, p.HV, p.K, p.V), state_dtype, v.device) if output_final_state else None

    BK = next_power_of_2(p.K)
    BV = min(BLOCK_V, next_power_of_2(p.V))
    grid = (p.N * p.HV, cdiv(p.V, BV))
    launch(
        fused_recurrent_gated_delta_rule_kernel, grid,
        q, k, v, g, beta, o, initial_state, final_state, cu_seqlens,
        p.scale, p.T,
        H=p.H, HV=p.HV, K=p.K, V=p.V,
        BK=BK, BV=BV,
        ACC=_TORCH_TO_TL[state_dtype],
        IS_VARLEN=cu_seqlens is not None,
        USE_INITIAL_STATE=initial_state is not None,
        STORE_FINAL_STATE=output_final_state,
        USE_QK_L2NORM=use_qk_l2norm_in_kernel,
        L2NORM_EPS=L2NORM_EPS,
        num_warps=num_warps_for(BK, BV),
    )
    return o, final_state
