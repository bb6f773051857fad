"""Implementations with the common GDN signature that tests/test_repro.py hands to generated
reproducers (imported by name, in a subprocess or in this process)."""

import torch


def returns_zeros(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                  cu_seqlens=None, use_qk_l2norm_in_kernel=False):
    """A kernel that never writes its outputs; uses nothing but torch."""
    N = len(cu_seqlens) - 1 if cu_seqlens is not None else q.shape[0]
    final_state = torch.zeros(N, v.shape[2], q.shape[3], v.shape[3]) if output_final_state else None
    return torch.zeros_like(v), final_state


def reference_rounded(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                      cu_seqlens=None, use_qk_l2norm_in_kernel=False):
    """The project's float64 reference, rounded to the output dtypes a kernel returns."""
    from gdn_verify.reference import recurrent_gated_delta_rule

    o, final_state = recurrent_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                                                output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                                                l2norm=use_qk_l2norm_in_kernel)
    return o.to(v.dtype), None if final_state is None else final_state.float()


def one_chunk_off(*args, **kwargs):
    """reference_rounded with one 64-token chunk of one head 2% too large: 1/48 of o, so the
    global ratio (about 0.0034 with bf16 rounding) stays under the bf16 bound of 0.004 while
    that slice alone (0.02) is far over the worst-slice bound."""
    o, final_state = reference_rounded(*args, **kwargs)
    o = o.clone()
    o[1, 64:128, 5] *= 1.02
    return o, final_state
