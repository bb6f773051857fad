"""Token-by-token PyTorch reference of the gated delta rule (docs/design.md, 'The recurrence')."""

from __future__ import annotations

import torch

from ._sequences import PaddedLayout, prepare


def recurrent_gated_delta_rule(
    q,
    k,
    v,
    g,
    beta,
    scale=None,
    initial_state=None,
    output_final_state=False,
    cu_seqlens=None,
    l2norm=False,
    dtype=torch.float64,
):
    """The recurrence of docs/design.md ('The recurrence') in `dtype`, on the inputs' device.

    Per token: S <- exp(g) S; u = beta (v - S^T k); S <- S + k u^T; o = scale S^T q.
    All sequences and heads advance together, one step per token of the longest sequence;
    a shorter sequence's padded steps have g = 0 and beta = 0, which leave its state as is.

    Returns (o [B, T, HV, V], final_state [N, HV, K, V] or None), both in `dtype`.
    """
    x = prepare(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
                l2norm, dtype)
    p = x.problem
    layout = PaddedLayout.build(p, x.q.device)
    q, k, v, g, beta = (layout.pad(t) for t in (x.q, x.k, x.v, x.g, x.beta))
    S = x.state  # a private copy: updated in place
    o = torch.empty_like(v)
    for t in range(layout.t_pad):
        k_t, q_t = k[:, t, :, None, :], q[:, t, :, None, :]  # [N, HV, 1, K] rows
        S *= g[:, t, :, None, None].exp()
        u = beta[:, t, :, None, None] * (v[:, t, :, None, :] - k_t @ S)  # [N, HV, 1, V]
        S += k_t.mT * u
        o[:, t] = p.scale * (q_t @ S).squeeze(-2)
    o = layout.unpad(o).reshape(p.B, p.T, p.HV, p.V)
    return o, (S if output_final_state else None)
