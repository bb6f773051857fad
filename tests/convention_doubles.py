"""Implementations built on our float64 reference that use conventions other than the suite's,
for tests/test_adapters.py and tests/test_compare_impls.py (as `convention_doubles:NAME`).

Each is right by construction once its inputs are given in its own conventions, and computes
exactly what `gdn_doubles.rounded_reference` computes on the suite's inputs (the reference, o
rounded to v's dtype, the state to float32 or float64 as a kernel returns them): an exact
adapter makes the two bitwise equal.
"""

from __future__ import annotations

import torch

from gdn_doubles import rounded_reference


def state_vk(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
             use_qk_l2norm_in_kernel=False):
    """States as [N, HV, V, K]."""
    h0 = None if initial_state is None else initial_state.transpose(-1, -2)
    o, final_state = rounded_reference(q, k, v, g, beta, scale, h0, True, cu_seqlens, use_qk_l2norm_in_kernel)
    return o, final_state.transpose(-1, -2).contiguous()


def alpha_gates(q, k, v, alpha, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                use_qk_l2norm_in_kernel=False):
    """Linear-space decay alpha = exp(g) instead of g."""
    if (alpha < 0).any():
        raise ValueError("alpha: expected a decay in [0, 1], got negative values (log-space g?)")
    g = torch.log(alpha.to(torch.float64)).to(alpha.dtype)
    return rounded_reference(q, k, v, g, beta, scale, initial_state, True, cu_seqlens, use_qk_l2norm_in_kernel)


def packed_layout(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                  use_qk_l2norm_in_kernel=False):
    """Token tensors without the batch axis: q [T, H, K], v [T, HV, V], g [T, HV]; o [T, HV, V]."""
    if q.ndim != 3:
        raise ValueError(f"q: expected [T, H, K], got shape {tuple(q.shape)}")
    o, final_state = rounded_reference(*(x[None] for x in (q, k, v, g, beta)), scale, initial_state, True,
                                       cu_seqlens, use_qk_l2norm_in_kernel)
    return o[0], final_state


def mod_heads(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
              use_qk_l2norm_in_kernel=False):
    """Value head h reads key head h % H (q and k tiled over the value heads)."""
    group = v.shape[2] // q.shape[2]
    q, k = (x.repeat(1, 1, group, 1) for x in (q, k))
    return rounded_reference(q, k, v, g, beta, scale, initial_state, True, cu_seqlens, use_qk_l2norm_in_kernel)


def no_initial_state(q, k, v, g, beta, scale=None, output_final_state=False, cu_seqlens=None,
                     use_qk_l2norm_in_kernel=False):
    """Takes no initial state: every sequence starts from zeros."""
    return rounded_reference(q, k, v, g, beta, scale, None, True, cu_seqlens, use_qk_l2norm_in_kernel)


def no_l2norm_flag(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Has no l2norm flag: q and k arrive normalized."""
    return rounded_reference(q, k, v, g, beta, scale, initial_state, True, cu_seqlens, False)


def every_convention(q, k, v, alpha, beta, scale=None, initial_state=None, output_final_state=False,
                     cu_seqlens=None):
    """Packed [T, H, D], states [N, HV, V, K], alpha gates, value head h on key head h % H, no
    l2norm flag."""
    group = v.shape[1] // q.shape[1]
    q, k = (x.repeat(1, group, 1) for x in (q, k))
    h0 = None if initial_state is None else initial_state.transpose(-1, -2)
    o, final_state = alpha_gates(*(x[None] for x in (q, k, v, alpha, beta)), scale, h0, True, cu_seqlens)
    return o[0], final_state.transpose(-1, -2).contiguous()
