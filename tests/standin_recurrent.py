"""A stand-in implementation for the before/after golden proof (tests/test_golden_proof.py).

The token-by-token recurrence in float32 (float64 for float64 inputs), with the common GDN
signature: it passes every check of the cpu suite, runs in milliseconds, and has one line,
`u = ...`, that the test rewrites between two "revisions" of it into the re-associated
beta * v - beta * (k S), a change of a few ULPs that only a bitwise comparison can see.
The test copies this file into a temporary directory as a module of its own, so that its
source digest is the one of that copy.
"""

from __future__ import annotations

import torch

from gdn_verify.reference import PaddedLayout, prepare

REVISION_A = "u = beta[:, t, :, None, None] * (v[:, t, :, None, :] - k_t @ S)"
REVISION_B = "u = beta[:, t, :, None, None] * v[:, t, :, None, :] - beta[:, t, :, None, None] * (k_t @ S)"


def gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                     use_qk_l2norm_in_kernel=False):
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    o_dtype = v.dtype
    x = prepare(q, k, v, g, beta, scale, initial_state, True, cu_seqlens, use_qk_l2norm_in_kernel, dtype)
    p = x.problem
    layout = PaddedLayout.build(p, x.q.device)
    q, k, v, g, beta = (layout.pad(t) for t in (x.q, x.k, x.v, x.g, x.beta))
    S = x.state
    o = torch.empty_like(v)
    for t in range(layout.t_pad):
        k_t, q_t = k[:, t, :, None, :], q[:, t, :, None, :]
        S = S * g[:, t, :, None, None].exp()
        u = beta[:, t, :, None, None] * (v[:, t, :, None, :] - k_t @ S)
        S = S + k_t.mT * u
        o[:, t] = p.scale * (q_t @ S).squeeze(-2)
    o = layout.unpad(o).reshape(p.B, p.T, p.HV, p.V)
    return o.to(o_dtype), S
