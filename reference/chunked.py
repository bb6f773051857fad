"""Chunked PyTorch float64 reference of the gated delta rule, with every stage's intermediate.

The stages and their layouts are those of notes/STAGES.md, so a kernel can be compared stage
by stage and a wrong one pinned to the first stage that diverges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gdn_verify.contract import GATE_FLOOR

from ._sequences import PaddedLayout, prepare

CHUNK_SIZE = 64


@dataclass(frozen=True)
class ChunkIntermediates:
    """Every stage of the chunk algorithm, float64, in the layouts of STAGES.md (C = chunk size).

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
    use_qk_l2norm=False,
    chunk_size=CHUNK_SIZE,
):
    """The chunk algorithm of DESIGN.md in float64, on the inputs' device.

    Sequences are laid out as rows of a padded grid cut into chunks [N, NC, C]; padded slots
    have q = k = v = g = beta = 0, so they add nothing and a missing chunk leaves the state as
    is. Everything but the state recurrence is computed for all chunks at once.

    Returns (o [B, T, HV, V], final_state [N, HV, K, V] or None, ChunkIntermediates).
    """
    x = prepare(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
                use_qk_l2norm, torch.float64)
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
    gam = g.clamp_min(GATE_FLOOR["float64"]).cumsum(-1)  # [N, NC, HV, C]; clamp: see GATE_FLOOR
    i = torch.arange(C, device=device)
    strictly_lower, causal = i[:, None] > i[None, :], i[:, None] >= i[None, :]

    def gate_ratio(mask: torch.Tensor) -> torch.Tensor:
        """exp(gam_i - gam_j) where mask[i, j], else 0. Masked before exp: above the diagonal
        the difference is a sum of later gates and may overflow."""
        return (gam[..., :, None] - gam[..., None, :]).masked_fill(~mask, -torch.inf).exp()

    A = beta[..., :, None] * (k @ k.mT) * gate_ratio(strictly_lower)  # [N, NC, HV, C, C]
    eye = torch.eye(C, dtype=torch.float64, device=device)
    Tm = torch.linalg.solve_triangular(eye + A, eye.expand_as(A), upper=False, unitriangular=True)
    W = Tm @ ((beta * gam.exp())[..., None] * k)
    U = Tm @ (beta[..., None] * v)

    # Padding has g = 0, so a chunk's last slot holds the cumulative gate of its last token.
    gam_last = gam[..., -1:]  # [N, NC, HV, 1]
    k_decayed_to_end = (gam_last - gam).exp()[..., None] * k
    S = x.state
    h = torch.empty(p.N, NC, p.HV, p.K, p.V, dtype=torch.float64, device=device)
    v_new = torch.empty_like(U)
    for c in range(NC):
        h[:, c] = S
        v_new[:, c] = U[:, c] - W[:, c] @ S
        S = gam_last[:, c, :, :, None].exp() * S + k_decayed_to_end[:, c].mT @ v_new[:, c]

    o = p.scale * (gam.exp()[..., None] * (q @ h) + ((q @ k.mT) * gate_ratio(causal)) @ v_new)

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
