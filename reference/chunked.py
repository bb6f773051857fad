"""Chunked PyTorch float64 reference of the gated delta rule, with every stage's intermediate.

The stages and their layouts are those of docs/design.md, 'Chunked form', so a kernel can be
compared stage by stage and a wrong one pinned to the first stage that diverges.

Design emulation (`design=`, gdn_verify/designs.py): the same float64 computation, with each
quantity the design stores rounded into its dtype where it is stored, and the operands of
every matrix product rounded as the design's dots do. design=None rounds nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gdn_verify.contract import CHUNK_SIZE, GATE_FLOOR
from gdn_verify.designs import EXACT, resolve_design

from ._sequences import PaddedLayout, prepare



@dataclass(frozen=True)
class ChunkIntermediates:
    """Every stage of the chunk algorithm, float64, in the layouts of docs/design.md, 'Chunked form'
    (C = chunk size).

    Token tensors are [B, T, HV, ...]; A and Tm hold, in the row of each token (chunk position
    i), the C entries j of its chunk. Chunks are numbered in sequence order, NT in all; chunk c
    is described by chunk_seq[c] (its sequence), chunk_first[c] (its first token, as an index
    of the flattened [B*T] token axis, where dense row b starts at b*T) and chunk_len[c].
    """

    g_cum: torch.Tensor  # [B, T, HV] inclusive cumulative sum of g inside each chunk
    A: torch.Tensor  # [B, T, HV, C] beta_i (k_i . k_j) exp(g_cum_i - g_cum_j), j < i
    Tm: torch.Tensor  # [B, T, HV, C] (I + A)^-1
    W: torch.Tensor  # [B, T, HV, K] Tm diag(beta exp(g_cum)) K
    U: torch.Tensor  # [B, T, HV, V] Tm diag(beta) V
    h: torch.Tensor  # [NT, HV, K, V] state entering each chunk
    v_new: torch.Tensor  # [B, T, HV, V] U - W S
    o: torch.Tensor  # [B, T, HV, V]
    final_state: torch.Tensor  # [N, HV, K, V]
    chunk_seq: torch.Tensor  # [NT] int64
    chunk_first: torch.Tensor  # [NT] int64
    chunk_len: torch.Tensor  # [NT] int64


def chunked_gated_delta_rule(
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
    chunk_size=CHUNK_SIZE,
    design=None,
):
    """The chunk algorithm of docs/design.md ('Chunked form') in float64, on the inputs'
    device; with `design` (a designs.PrecisionDesign, a name or a spec), rounded as that design
    stores and multiplies.

    Sequences are laid out as rows of a padded grid cut into chunks [N, NC, C]; padded slots
    have q = k = v = g = beta = 0, so they add nothing and a missing chunk leaves the state as
    is. Everything but the state recurrence is computed for all chunks at once.

    Returns (o [B, T, HV, V], final_state [N, HV, K, V] or None, ChunkIntermediates).
    """
    design = resolve_design(design)
    r = EXACT if design is None else design.rounding(v.dtype)
    if r is not EXACT:  # the inputs as the computation takes them, dtypes unchanged
        q, k, v, g, beta = (r.store("inputs", t.double()).to(t.dtype) for t in (q, k, v, g, beta))
        if initial_state is not None:
            initial_state = r.store("inputs", initial_state.double()).to(initial_state.dtype)
    x = prepare(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
                l2norm, torch.float64)
    p, C, device = x.problem, chunk_size, x.q.device
    layout = PaddedLayout.build(p, device, multiple=C)
    NC = layout.t_pad // C

    def to_chunks(t: torch.Tensor) -> torch.Tensor:
        """[B*T, HV, ...] -> [N, NC, HV, C, ...]: heads ahead of chunk rows, for matmuls."""
        return layout.pad(t).reshape(p.N, NC, C, *t.shape[1:]).transpose(2, 3)

    def to_tokens(t: torch.Tensor) -> torch.Tensor:
        """[N, NC, HV, C, ...] -> [B, T, HV, ...]."""
        rows = t.transpose(2, 3).flatten(1, 2)
        return layout.unpad(rows).reshape(p.B, p.T, *rows.shape[2:])

    q, k, v, g, beta = (to_chunks(t) for t in (x.q, x.k, x.v, x.g, x.beta))
    q, k = r.store("qk", q), r.store("qk", k)
    # [N, NC, HV, C]; clamp: see GATE_FLOOR
    gam = r.store("g_cum", g.clamp_min(GATE_FLOOR["float64"]).cumsum(-1))
    if r.exp2 is not None:  # gates to base 2 where the design scales them (designs.py, 'Gate base')
        gam = r.store("g_cum", gam * r.exp2) * math.log(2.0)
    i = torch.arange(C, device=device)
    strictly_lower, causal = i[:, None] > i[None, :], i[:, None] >= i[None, :]

    def gate_ratio(mask: torch.Tensor) -> torch.Tensor:
        """exp(gam_i - gam_j) where mask[i, j], else 0. Masked before exp: above the diagonal
        the difference is a sum of later gates and may overflow."""
        return r.exp((gam[..., :, None] - gam[..., None, :]).masked_fill(~mask, -torch.inf))

    A = r.store("A", beta[..., :, None] * r.dot(k, k.mT) * gate_ratio(strictly_lower))  # [N, NC, HV, C, C]
    eye = torch.eye(C, dtype=torch.float64, device=device)
    Tm = r.store("Tm", torch.linalg.solve_triangular(eye + A, eye.expand_as(A), upper=False, unitriangular=True))
    W = r.store("W", r.dot(Tm, (beta * r.exp(gam))[..., None] * k))
    U = r.store("U", r.dot(Tm, beta[..., None] * v))

    # Padding has g = 0, so a chunk's last slot holds the cumulative gate of its last token.
    gam_last = gam[..., -1:]  # [N, NC, HV, 1]
    k_decayed_to_end = r.exp(gam_last - gam)[..., None] * k
    S = r.store("state", x.state)
    h = torch.empty(p.N, NC, p.HV, p.K, p.V, dtype=torch.float64, device=device)
    v_new = torch.empty_like(U)
    for c in range(NC):
        h[:, c] = h_c = r.store("h", S)
        v_new[:, c] = r.store("v_new", U[:, c] - r.dot(W[:, c], h_c))
        S = r.store("state", r.exp(gam_last[:, c, :, :, None]) * S + r.dot(k_decayed_to_end[:, c].mT, v_new[:, c]))

    o = p.scale * (r.exp(gam)[..., None] * r.dot(q, h) + r.dot(r.dot(q, k.mT) * gate_ratio(causal), v_new))
    o = r.store("o", o)

    chunk_exists = torch.arange(NC, device=device) < -(-layout.lens[:, None] // C)  # [N, NC]
    seq = torch.arange(p.N, device=device)[:, None].expand(p.N, NC)
    first_in_seq = torch.arange(NC, device=device) * C
    inter = ChunkIntermediates(
        g_cum=to_tokens(gam[..., None]).squeeze(-1),
        A=to_tokens(A),
        Tm=to_tokens(Tm),
        W=to_tokens(W),
        U=to_tokens(U),
        h=h[chunk_exists],
        v_new=to_tokens(v_new),
        o=to_tokens(o),
        final_state=S,
        chunk_seq=seq[chunk_exists],
        chunk_first=(layout.starts[:, None] + first_in_seq)[chunk_exists],
        chunk_len=(layout.lens[:, None] - first_in_seq).clamp(max=C)[chunk_exists],
    )
    return inter.o, (S if output_final_state else None), inter
