"""Input preparation shared by the PyTorch references: validation, casting, l2norm, head
expansion, and the padded per-sequence layout that lets one loop serve every sequence."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gdn_verify.contract import L2NORM_EPS, Problem, validate


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / sqrt(sum(x^2) + L2NORM_EPS) over the last (head) dimension."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + L2NORM_EPS)


@dataclass(frozen=True)
class PreparedInputs:
    """Validated inputs in the compute dtype, q and k expanded to the HV value heads.

    Token tensors are flattened to [B*T, HV, ...]; state is [N, HV, K, V] and never aliases
    the caller's initial_state.
    """

    problem: Problem
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g: torch.Tensor
    beta: torch.Tensor
    state: torch.Tensor


def prepare(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, l2norm,
            dtype: torch.dtype) -> PreparedInputs:
    p = validate(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, l2norm)
    q, k, v, g, beta = (x.to(dtype) for x in (q, k, v, g, beta))
    if l2norm:
        q, k = l2_normalize(q), l2_normalize(k)
    # Value head h reads key head h // group.
    q, k = (x.repeat_interleave(p.group, dim=2) for x in (q, k))
    q, k, v, g, beta = (x.reshape(p.B * p.T, *x.shape[2:]) for x in (q, k, v, g, beta))
    if initial_state is None:
        state = torch.zeros(p.N, p.HV, p.K, p.V, dtype=dtype, device=q.device)
    else:
        state = initial_state.to(dtype, copy=True)
    return PreparedInputs(p, q, k, v, g, beta, state)


@dataclass(frozen=True)
class PaddedLayout:
    """The N sequences of a dense or packed batch as rows of an [N, T_pad] grid.

    Sequence n occupies tokens starts[n] ... starts[n] + lens[n] - 1 of the flattened [B*T]
    token axis (dense: starts[n] = n * T). Grid slots past a sequence's end are padding.
    """

    starts: torch.Tensor  # [N] int64, flat index of each sequence's first token
    lens: torch.Tensor  # [N] int64
    index: torch.Tensor  # [N, T_pad] flat token index of each slot (0 in padding)
    valid: torch.Tensor  # [N, T_pad] bool, False in padding

    @classmethod
    def build(cls, problem: Problem, device, multiple: int = 1) -> PaddedLayout:
        """T_pad is the longest sequence rounded up to a multiple of `multiple`."""
        lens = torch.tensor(problem.seq_lens, dtype=torch.int64, device=device).reshape(problem.N)
        starts = torch.cumsum(lens, 0) - lens
        longest = max(problem.seq_lens, default=0)
        t_pad = -(-longest // multiple) * multiple
        slot = torch.arange(t_pad, device=device)
        valid = slot < lens[:, None]
        index = torch.where(valid, starts[:, None] + slot, 0)
        return cls(starts, lens, index, valid)

    @property
    def t_pad(self) -> int:
        return self.index.shape[1]

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """[B*T, ...] -> [N, T_pad, ...], zeros in padding."""
        mask = self.valid.reshape(*self.valid.shape, *(1,) * (x.dim() - 1))
        return torch.where(mask, x[self.index], 0)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T_pad, ...] -> [B*T, ...]: sequences are stored in token order, so the valid
        slots in row-major order are exactly the flat token axis."""
        return x[self.valid]
