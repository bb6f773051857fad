"""Implementations with the common GDN signature, for testing the harness through `--impl
tests.gdn_doubles:NAME` (module:function): one that is right by construction and several
that are wrong in one specific way each, so every check of the harness can be seen failing.
"""

from __future__ import annotations

import sys
import time

import torch

from gdn_verify.reference import recurrent_gated_delta_rule


def _exact(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
           use_qk_l2norm_in_kernel=False):
    o, final_state = recurrent_gated_delta_rule(q, k, v, g, beta, scale, initial_state, True, cu_seqlens,
                                                use_qk_l2norm_in_kernel, dtype=torch.float64)
    state_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return o, final_state.to(state_dtype)


def rounded_reference(*args, **kwargs):
    """The float64 reference rounded to the kernel's output dtypes: passes every check."""
    o, final_state = _exact(*args, **kwargs)
    return o.to(args[2].dtype), final_state


def interrupted_after_two_calls(*args, **kwargs):
    """rounded_reference for two calls, then the KeyboardInterrupt that the CLI turns SIGTERM
    into (a wall-clock limit arriving mid-run). Tests reset `.calls` first."""
    interrupted_after_two_calls.calls = getattr(interrupted_after_two_calls, "calls", 0) + 1
    if interrupted_after_two_calls.calls > 2:
        raise KeyboardInterrupt
    return rounded_reference(*args, **kwargs)


def zeros(*args, **kwargs):
    """Returns zeros of the right shapes and dtypes: must fail."""
    o, final_state = rounded_reference(*args, **kwargs)
    return torch.zeros_like(o), torch.zeros_like(final_state)


def one_broken_chunk(*args, **kwargs):
    """Right except the second 64-token chunk of the first sequence's first head, 3% too large:
    the worst slice must point at it."""
    o, final_state = rounded_reference(*args, **kwargs)
    o = o.clone()
    o[0, 64:128, 0] *= 1.03
    return o, final_state


def noisy(*args, **kwargs):
    """Right to ~1e-7 but different on every call: fails run-to-run determinism."""
    o, final_state = _exact(*args, **kwargs)
    o = o * (1 + 1e-7 * torch.randn(o.shape, dtype=o.dtype, device=o.device))
    return o.to(args[2].dtype), final_state


def batch_dependent(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                    use_qk_l2norm_in_kernel=False):
    """Right to 1e-6 relative, but off by that only when the batch holds several sequences:
    fails batch invariance, passes everything else."""
    o, final_state = _exact(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
                            use_qk_l2norm_in_kernel)
    n_sequences = q.shape[0] if cu_seqlens is None else len(cu_seqlens) - 1
    if n_sequences > 1:
        o = o * (1 + 1e-6)
    return o.to(v.dtype), final_state


def raises(*args, **kwargs):
    raise RuntimeError("deliberate failure inside the implementation")


def one_ulp(*args, **kwargs):
    """rounded_reference with the last bit of about one element in 16 of o flipped (those whose
    low four bits read 5): one ULP each, chosen by value, so still deterministic and batch
    invariant; only the goldens can see it. In float16 / bfloat16 o only elements under 1e-3
    in magnitude are flipped (a few in the smoke cases, whose o has RMS ~0.1): one ULP in one
    element of 16 there is an error beyond rounding of order 1e-4 / 1e-3, which the accuracy
    check catches, as it should (measured with the 1e-3 limit: 1.3e-6 worst slice, bound 2.5e-5)."""
    o, final_state = rounded_reference(*args, **kwargs)
    ints = o.clone().view({8: torch.int64, 4: torch.int32, 2: torch.int16}[o.element_size()])
    flip = (ints & 0xF) == 5
    if o.element_size() < 4:
        flip &= o.abs() < 1e-3
    ints = torch.where(flip, ints ^ 1, ints)
    return ints.view(o.dtype), final_state


# -- Hostile implementations: each must be caught by the harness itself --------------------

def _state_like(q, v, cu_seqlens, initial_state):
    N = q.shape[0] if cu_seqlens is None else len(cu_seqlens) - 1
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return torch.zeros(N, v.shape[2], q.shape[3], v.shape[3], dtype=dtype, device=v.device)


def zeroes_its_inputs(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                      use_qk_l2norm_in_kernel=False):
    """Zeroes v and the initial state in place and returns zeros: exactly right for the inputs
    it leaves behind, so only a check of the inputs themselves can catch it."""
    v.zero_()
    if initial_state is not None:
        initial_state.zero_()
    return torch.zeros_like(v), _state_like(q, v, cu_seqlens, initial_state)


def overwrites_beta(q, k, v, g, beta, *args, **kwargs):
    """Sets beta to 1 in place, then computes the right answer for the beta it left behind."""
    beta.fill_(1)
    return rounded_reference(q, k, v, g, beta, *args, **kwargs)


def float32_o(*args, **kwargs):
    """Right values, but o always float32 (the dtype must be v's)."""
    o, final_state = rounded_reference(*args, **kwargs)
    return o.float(), final_state


def float64_state(*args, **kwargs):
    """Right values, but the final state always float64 (float32 is the contract, float64 in exact mode)."""
    o, final_state = rounded_reference(*args, **kwargs)
    return o, final_state.double()


def o_on_meta(*args, **kwargs):
    """o on another device than its inputs (the meta device exists everywhere)."""
    o, final_state = rounded_reference(*args, **kwargs)
    return o.to("meta"), final_state


def o_transposed(*args, **kwargs):
    """o as [B, T, V, HV]."""
    o, final_state = rounded_reference(*args, **kwargs)
    return o.transpose(-1, -2), final_state


def no_final_state(*args, **kwargs):
    o, _ = rounded_reference(*args, **kwargs)
    return o, None


def exits_0(*args, **kwargs):
    sys.exit(0)


class _Escape(BaseException):
    """Neither an Exception nor SystemExit / KeyboardInterrupt."""


def raises_base_exception(*args, **kwargs):
    raise _Escape("deliberate")


def hangs_on_first_call(*args, **kwargs):
    """Sleeps (in Python) for a minute on its first call, then is rounded_reference. Tests reset `.calls`."""
    hangs_on_first_call.calls = getattr(hangs_on_first_call, "calls", 0) + 1
    if hangs_on_first_call.calls == 1:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.05)
    return rounded_reference(*args, **kwargs)


def interrupted_on_two_sequences_of_65(q, *args, **kwargs):
    """rounded_reference, except a KeyboardInterrupt on a dense batch of two 65-token
    sequences (the second smoke case's own call): an interrupt in mid-run."""
    if tuple(q.shape[:2]) == (2, 65):
        raise KeyboardInterrupt
    return rounded_reference(q, *args, **kwargs)
