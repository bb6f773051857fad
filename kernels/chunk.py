"""chunk_gated_delta_rule: the chunked forward, stage by stage (docs/design.md, 'Stages').

    gam = cumsum of g inside each 64-token chunk                      cumsum.py
    rq, rk = 1 / |row| of q and k (use_qk_l2norm_in_kernel only)       l2norm.py
    A   = strictly lower (beta_i k_i.k_j exp(gam_i - gam_j)),
    Tm  = (I + A)^-1                                                   kkt_solve.py
    W   = Tm diag(beta exp(gam)) K,  U = Tm diag(beta) V               wy.py (diagnostics only)
    per sequence, chunk after chunk, entering with S (stored as h):   recurrence.py
        V' = U - W S,  S <- exp(gam_last) S + (decayed K)^T V'
    every chunk at once:  O = scale (diag(exp(gam)) Q S + (causal(Q K^T) * decay) V')  output.py
"""

from __future__ import annotations

from typing import Callable

import torch

from gdn_verify.contract import Problem, validate

from ._common import compute_dtype, dot_precision
from ._launch import compile_ahead
from ._triton_compat import INTERPRET
from .chunk_map import ChunkMap, build_chunk_map
from .cumsum import cumsum
from .kkt_solve import kkt_solve
from .l2norm import l2norm_factors
from .output import output
from .recurrence import recurrence
from .wy import wy


def _prepare(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
             use_qk_l2norm_in_kernel) -> tuple[Problem, ChunkMap, torch.dtype, str]:
    problem = validate(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
                       use_qk_l2norm_in_kernel, l2norm_arg="use_qk_l2norm_in_kernel")
    chunks = build_chunk_map(problem, cu_seqlens, q.device)
    return problem, chunks, compute_dtype(q.dtype), dot_precision(q.dtype)


# Rows of q and k whose key head starts off a 16-byte boundary (K * itemsize not a multiple of
# 16, e.g. K = 100 in bf16) made Triton 3.6's Hopper code for the raw 16-bit dots read shared
# memory out of bounds (compute-sanitizer: "Invalid __shared__ read of size 512 bytes" at a
# Q K^T dot, K = 100, V = 60, bf16 and fp16). Such K are padded with zero columns to the next
# 16-byte multiple: zero key columns add nothing to any dot or l2 norm, and the state rows they
# add stay zero (zero initial rows, zero updates), so the padded problem's results are the
# original's, and are sliced back. Real models use K = 128; the copy only costs the odd sizes.
# The padded path is compute-sanitizer clean on those cases (benchmarks/results/h200/
# sanitizer.log). Whether the current kernels still need the padding is not established, and
# Triton 3.6 has miscompiled other tile / warp configurations of them (see output.py), so the
# guard stays. Its sanitizer history: benchmarks/results/design_history.md.
_ALIGN_BYTES = 16


def _aligned_k(q, k, initial_state):
    """(q, k, initial_state, original K), the key dimension padded so a row of q or k spans a multiple of 16 bytes."""
    K = q.shape[-1]
    step = _ALIGN_BYTES // q.element_size()
    padded = -(-K // step) * step
    if padded == K:
        return q, k, initial_state, K
    pad = (0, padded - K)
    q, k = torch.nn.functional.pad(q, pad), torch.nn.functional.pad(k, pad)
    if initial_state is not None:
        initial_state = torch.nn.functional.pad(initial_state, (0, 0) + pad)
    return q, k, initial_state, K


def _run_stages(q, k, v, g, beta, initial_state, output_final_state, l2norm, problem, chunks, acc, precision,
                store_a: bool = False, calls: dict | None = None) -> dict:
    """The fast path's stages in order, on K-aligned q, k and initial state: every stage's
    results by name (A only with store_a). With `calls`, each stage is also recorded there as a
    call that reruns it on the inputs it got here."""

    def stage(name, fn, *args, **kwargs):
        if calls is not None:
            calls[name] = lambda: fn(*args, **kwargs)
        return fn(*args, **kwargs)

    # Every launcher makes its inputs contiguous; done here once, a strided input (q, k and v as
    # views of one fused projection) is copied once, not by each of the up to three stages that
    # read it. An input already contiguous is returned as is, without a torch op.
    q, k, v, g, beta = q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), beta.contiguous()
    g_cum = stage("cumsum", cumsum, g, chunks, acc)
    norms = stage("l2norm", l2norm_factors, q, k, acc) if l2norm else None
    rk = norms[1] if l2norm else None
    tm, a = stage("kkt_solve", kkt_solve, k, beta, g_cum, rk, chunks, problem.HV, precision, store_a=store_a)
    final_state, h, v_new = stage("recurrence", recurrence, k, v, beta, g_cum, rk, tm, chunks, initial_state,
                                  output_final_state, precision)
    o = stage("output", output, q, k, g_cum, norms, h, v_new, chunks, problem.scale, precision, v.dtype)
    return {"g_cum": g_cum, "rk": rk, "A": a, "Tm": tm, "h": h, "v_new": v_new, "o": o, "final_state": final_state}


def _first_call_key(q, k, v, g, beta, initial_state, output_final_state, cu_seqlens, l2norm) -> tuple:
    """What decides which kernel variants a call compiles (dtypes, head counts and sizes, flags),
    never T or sequence lengths."""
    return (q.device, q.dtype, k.dtype, v.dtype, g.dtype, beta.dtype, q.shape[2:], v.shape[2:],
            None if initial_state is None else initial_state.dtype, output_final_state, cu_seqlens is None, l2norm)


# Configurations this process has already compiled for: later calls skip compile_ahead's
# extra pass (a launch's worth of host time per stage).
_compiled_configs: set[tuple] = set()


def _unpadded_state(state: torch.Tensor | None, K: int) -> torch.Tensor | None:
    """A [.., K_padded, V] state tensor without _aligned_k's zero rows (the tensor itself when
    none were added: slicing off nothing still costs a torch op, an alias)."""
    return state if state is None or state.shape[2] == K else state[:, :, :K]


def chunk_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    scale: float | None = None, initial_state: torch.Tensor | None = None,
    output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated delta rule forward: (o [B, T, HV, V] in v's dtype, final_state [N, HV, K, V] or None)."""
    problem, chunks, acc, precision = _prepare(q, k, v, g, beta, scale, initial_state,
                                               output_final_state, cu_seqlens, use_qk_l2norm_in_kernel)
    config = None if INTERPRET else _first_call_key(q, k, v, g, beta, initial_state, output_final_state,
                                                     cu_seqlens, use_qk_l2norm_in_kernel)
    q, k, initial_state, K = _aligned_k(q, k, initial_state)

    def forward() -> dict:
        return _run_stages(q, k, v, g, beta, initial_state, output_final_state, use_qk_l2norm_in_kernel, problem,
                           chunks, acc, precision)

    if config is not None and config not in _compiled_configs:
        # First call with this configuration: compile every stage's kernel at once, then run.
        with compile_ahead(q.device):
            forward()
        _compiled_configs.add(config)
    results = forward()
    return results["o"], _unpadded_state(results["final_state"], K)


def chunk_gated_delta_rule_intermediates(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    scale: float | None = None, initial_state: torch.Tensor | None = None,
    output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
) -> dict[str, torch.Tensor | None]:
    """The same pass, returning every stage's output under its name in docs/design.md,
    'Chunked form'.

    g_cum, Tm, h, v_new, o and final_state come from the kernels of the fast path, so o and
    final_state are bitwise those of chunk_gated_delta_rule; A is written by the solve stage on
    request; W and U by the WY stage from that Tm.
    """
    problem, chunks, acc, precision = _prepare(q, k, v, g, beta, scale, initial_state,
                                               output_final_state, cu_seqlens, use_qk_l2norm_in_kernel)
    q, k, initial_state, K = _aligned_k(q, k, initial_state)
    r = _run_stages(q, k, v, g, beta, initial_state, output_final_state, use_qk_l2norm_in_kernel, problem, chunks,
                    acc, precision, store_a=True)
    w, u = wy(k, v, beta, r["g_cum"], r["rk"], r["Tm"], chunks)
    return {"g_cum": r["g_cum"], "A": r["A"], "Tm": r["Tm"], "W": w[..., :K], "U": u, "h": r["h"][:, :, :K],
            "v_new": r["v_new"], "o": r["o"], "final_state": _unpadded_state(r["final_state"], K)}


def chunk_stage_calls(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    scale: float | None = None, initial_state: torch.Tensor | None = None,
    output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
) -> dict[str, Callable[[], object]]:
    """Each stage of the fast path as a call of its own, for timing stages alone: stage name ->
    a call that reruns that stage on the inputs the stages before it produced here, once.
    The output stage's call returns o as chunk_gated_delta_rule does."""
    problem, chunks, acc, precision = _prepare(q, k, v, g, beta, scale, initial_state, output_final_state,
                                               cu_seqlens, use_qk_l2norm_in_kernel)
    q, k, initial_state, _ = _aligned_k(q, k, initial_state)
    calls = {"chunk_map": lambda: build_chunk_map(problem, cu_seqlens, q.device)}
    _run_stages(q, k, v, g, beta, initial_state, output_final_state, use_qk_l2norm_in_kernel, problem, chunks, acc,
                precision, calls=calls)
    return calls
