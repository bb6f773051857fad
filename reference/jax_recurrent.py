"""Token-by-token JAX reference of the gated delta rule: an implementation independent of the
PyTorch ones (different framework, different varlen scheme), to cross-check them.

JAX is imported only when the function is called, and float64 is enabled only inside the
call, so neither importing gdn_verify.reference nor calling this changes the caller's JAX.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np

from gdn_verify.contract import L2NORM_EPS, validate


def _import_jax():
    try:
        import jax
    except ImportError as err:
        raise ImportError(
            'jax_recurrent_gated_delta_rule needs JAX; install it with: pip install "gdn-verify[jax]"'
        ) from err
    return jax


def _float64_scope(jax) -> contextlib.AbstractContextManager:
    """x64 inside the block only; the previous setting is restored on exit."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    # JAX before the top-level context manager existed (the jax extra allows >= 0.4.30).
    from jax.experimental import enable_x64

    return enable_x64()


def _to_float64(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch; NumPy cannot take bfloat16 tensors, so cast on the torch side
        import torch

        return x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


@functools.cache
def _scan_tokens():
    """The jitted recurrence over the packed token axis (built once, on first use)."""
    jax = _import_jax()
    jnp = jax.numpy

    def l2_normalize(x):
        return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + L2NORM_EPS)

    @functools.partial(jax.jit, static_argnames=("group", "l2norm"))
    def run(q, k, v, g, beta, h0, seq, starts, scale, group, l2norm):
        # q, k: [tokens, H, K]; v: [tokens, HV, V]; g, beta: [tokens, HV]; h0: [N, HV, K, V];
        # seq[t]: sequence of token t; starts[t]: t is its sequence's first token.
        if l2norm:
            q, k = l2_normalize(q), l2_normalize(k)
        q, k = jnp.repeat(q, group, axis=1), jnp.repeat(k, group, axis=1)  # key head h // group

        def step(carry, token):
            S, finals = carry
            q_t, k_t, v_t, g_t, b_t, n, is_start = token
            S = jnp.where(is_start, h0[n], S)
            S = S * jnp.exp(g_t)[:, None, None]
            u = b_t[:, None] * (v_t - jnp.einsum("hkv,hk->hv", S, k_t))
            S = S + k_t[:, :, None] * u[:, None, :]
            o_t = scale * jnp.einsum("hkv,hk->hv", S, q_t)
            # The last write for sequence n is after its last token; an empty one keeps h0[n].
            return (S, finals.at[n].set(S)), o_t

        (_, finals), o = jax.lax.scan(step, (jnp.zeros(h0.shape[1:], h0.dtype), h0), (q, k, v, g, beta, seq, starts))
        return o, finals

    return run


def jax_recurrent_gated_delta_rule(
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
):
    """The recurrence of docs/design.md ('The recurrence') with `lax.scan` in float64.

    Arguments as `recurrent_gated_delta_rule` (NumPy, JAX or torch CPU arrays; no dtype: it
    always computes in float64). Dense batches are scanned as B packed sequences; the state is
    reset to the sequence's initial state at each sequence start.

    Returns (o [B, T, HV, V], final_state [N, HV, K, V] or None) as NumPy float64 arrays.
    """
    p = validate(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, l2norm)
    jax = _import_jax()
    tokens = p.B * p.T
    q, k, v, g, beta = (_to_float64(x).reshape(tokens, *x.shape[2:]) for x in (q, k, v, g, beta))
    if initial_state is None:
        h0 = np.zeros((p.N, p.HV, p.K, p.V))
    else:
        h0 = _to_float64(initial_state)
    lens = np.asarray(p.seq_lens, dtype=np.int64)
    seq = np.repeat(np.arange(p.N), lens)
    starts = np.zeros(tokens, dtype=bool)
    starts[(np.cumsum(lens) - lens)[lens > 0]] = True
    with _float64_scope(jax):
        o, finals = _scan_tokens()(q, k, v, g, beta, h0, seq, starts, p.scale, group=p.group,
                                   l2norm=l2norm)
        o, finals = np.array(o), np.array(finals)  # writable copies, like any NumPy result
    return o.reshape(p.B, p.T, p.HV, p.V), (finals if output_final_state else None)
