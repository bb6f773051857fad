"""Stand-in implementations with known precision designs, as module:function specs.

* `per_fla`, `per_float32`: the float64 chunked reference in design mode, then the contract's
  output casts: exactly what the design should give.
* `per_float32_tf32`: the float32 design, but with TF32 dot operands the design does not declare.
* `fla_like`: the chunk algorithm computed in float32 (float64 for float64 inputs), dense
  batches only (declare --no-cu-seqlens), storing what the "fla" design stores in the input dtype,
  cutting float32 dot operands to TF32 and exponentiating its gates base 2 after scaling them by
  the design's constant: a stand-in for flash-linear-attention's arithmetic.
* `fla_like_state_rounded`: the same, but the carried state is also stored in the input dtype,
  one intermediate more than the design declares.
"""

from __future__ import annotations

import torch

from gdn_verify.contract import GATE_FLOOR, L2NORM_EPS
from gdn_verify.designs import FLA, FLOAT32, PrecisionDesign, resolve_design, tf32_round
from gdn_verify.reference import chunked_gated_delta_rule


def _per_design(design, q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                cu_seqlens=None, use_qk_l2norm_in_kernel=False):
    design = resolve_design(design)
    if initial_state is not None:  # a chained call's state in the design's state dtype
        initial_state = initial_state.to(torch.float64 if v.dtype == torch.float64 else torch.float32)
    o, state, _ = chunked_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                                           output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                                           l2norm=use_qk_l2norm_in_kernel, design=design)
    return o.to(v.dtype), None if state is None else state.to(design.final_state_dtype(v.dtype))


def per_fla(*args, **kwargs):
    return _per_design("fla", *args, **kwargs)


def per_float32(*args, **kwargs):
    return _per_design(FLOAT32, *args, **kwargs)


_FLOAT32_TF32 = PrecisionDesign("float32+tf32", FLOAT32.store, "tf32")


def per_float32_tf32(*args, **kwargs):
    """Declared --design float32, computed with TF32 dots."""
    o, state = _per_design(_FLOAT32_TF32, *args, **kwargs)
    return o, None if state is None else state.to(FLOAT32.final_state_dtype(args[2].dtype))


def _fla_like(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
              use_qk_l2norm_in_kernel=False, stored=("qk", "Tm", "W", "U", "h", "v_new"), C=64):
    dt = v.dtype
    cd = torch.float64 if dt == torch.float64 else torch.float32

    def store(name, x):
        return x.to(dt).to(cd) if name in stored else x

    def dot(a, b):
        return tf32_round(a, FLA.dots) @ tf32_round(b, FLA.dots) if cd == torch.float32 else a @ b

    B, T, H, K = q.shape
    HV, V = v.shape[2:]
    q, k = (x.repeat_interleave(HV // H, dim=2) for x in (q, k))
    q, k, v = (x.transpose(1, 2).to(cd) for x in (q, k, v))  # [B, HV, T, D]
    g, beta = (x.transpose(1, 2).to(cd) for x in (g, beta))  # [B, HV, T]
    if use_qk_l2norm_in_kernel:
        q, k = (x * torch.rsqrt((x * x).sum(-1, keepdim=True) + L2NORM_EPS) for x in (q, k))
    q, k = store("qk", q), store("qk", k)
    pad = -T % C
    q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, pad)).unflatten(2, (-1, C)) for x in (q, k, v))
    g, beta = (torch.nn.functional.pad(x, (0, pad)).unflatten(2, (-1, C)) for x in (g, beta))
    # Gates in base 2: the cumulative gate times the design's constant, both in the compute dtype.
    gam = g.clamp_min(GATE_FLOOR[str(cd).removeprefix("torch.")]).cumsum(-1) * torch.tensor(FLA.exp2, dtype=cd)
    i = torch.arange(C)
    lower, causal = i[:, None] > i[None, :], i[:, None] >= i[None, :]

    def ratio(mask):
        return (gam[..., :, None] - gam[..., None, :]).masked_fill(~mask, -torch.inf).exp2()

    A = beta[..., :, None] * dot(k, k.mT) * ratio(lower)
    eye = torch.eye(C, dtype=cd)
    Tm = store("Tm", torch.linalg.solve_triangular(eye + A, eye.expand_as(A), upper=False, unitriangular=True))
    W = store("W", dot(Tm, (beta * gam.exp2())[..., None] * k))
    U = store("U", dot(Tm, beta[..., None] * v))
    k_end = (gam[..., -1:] - gam).exp2()[..., None] * k
    S = torch.zeros(B, HV, K, V, dtype=cd) if initial_state is None else initial_state.to(cd)
    o = torch.empty_like(U)
    scale = K ** -0.5 if scale is None else scale
    for c in range(q.shape[2]):
        h = store("h", S)
        v_new = store("v_new", U[:, :, c] - dot(W[:, :, c], h))
        o[:, :, c] = scale * (gam[:, :, c].exp2()[..., None] * dot(q[:, :, c], h)
                              + dot(dot(q[:, :, c], k[:, :, c].mT) * ratio(causal)[:, :, c], v_new))
        S = store("state", gam[:, :, c, -1:, None].exp2() * S + dot(k_end[:, :, c].mT, v_new))
    o = o.flatten(2, 3)[:, :, :T].transpose(1, 2).to(dt)
    return o, S if output_final_state else None


def fla_like(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
             use_qk_l2norm_in_kernel=False):
    return _fla_like(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel)


def fla_like_state_rounded(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                           use_qk_l2norm_in_kernel=False):
    return _fla_like(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel,
                     stored=("qk", "Tm", "W", "U", "h", "v_new", "state"))
