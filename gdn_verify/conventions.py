"""The suite's calling conventions and the declarations by which an implementation differs.

The convention flags' vocabularies (an `adapters.Adapter` field each, a CLI flag each), the
tensors of the common signature, and the conversions between conventions: each exact, except
the two documented input roundings (alpha = exp(g), l2norm outside the call)."""

from __future__ import annotations

import torch

from gdn_verify.cases import LAYOUTS, Case
from gdn_verify.contract import L2NORM_EPS

# LAYOUTS (cases.py): "dense" [B, T, H, D] or "varlen" [T, H, D]; their former names are still
# accepted (--layout, Adapter(layout=...), stores' identities).
LAYOUT_ALIASES = {"batched": "dense", "packed": "varlen"}
STATE_LAYOUTS = ("kv", "vk")
GATE_SPACES = ("log", "alpha")
HEAD_MAPS = ("div", "mod")
L2NORM_MODES = ("kernel", "outside", "unsupported")
OPTIONAL_ARGUMENTS = ("initial_state", "final_state", "cu_seqlens", "scale", "gva")
CU_SEQLENS_DTYPES = {"int32": torch.int32, "int64": torch.int64}
TOKEN_TENSORS = ("q", "k", "v", "g", "beta")
# The Adapter fields that change how the function is called (dtypes and notes do not), with
# their defaults: the common signature's conventions.
CALL_DEFAULTS = {"layout": "dense", "state_layout": "kv", "gate_space": "log", "head_map": "div", "l2norm": "kernel",
                 "l2norm_arg": "use_qk_l2norm_in_kernel", "lacks": frozenset(), "keyword_tensors": False,
                 "cu_seqlens_dtype": None}
CALL_FIELDS = tuple(CALL_DEFAULTS)
CHOICES = {"layout": LAYOUTS, "state_layout": STATE_LAYOUTS, "gate_space": GATE_SPACES, "head_map": HEAD_MAPS,
           "l2norm": L2NORM_MODES}


def gdn_args(inputs: dict[str, torch.Tensor]) -> tuple:
    """q, k, v, g, beta of a case's inputs, in the common signature's order."""
    return tuple(inputs[name] for name in TOKEN_TENSORS)


def gdn_kwargs(case: Case, inputs: dict[str, torch.Tensor]) -> dict:
    """Keyword arguments of the common signature (the l2norm flag's name differs by callee)."""
    return {"scale": case.scale, "initial_state": inputs.get("initial_state"), "output_final_state": True,
            "cu_seqlens": inputs.get("cu_seqlens")}


def mod_head_order(H: int, HV: int, device) -> torch.Tensor:
    """perm with perm[j] = the suite's value head that an h % H implementation's value head j
    must hold: both then read key head j % H (the suite's head perm[j] reads perm[j] // (HV/H))."""
    j = torch.arange(HV, device=device)
    return (j % H) * (HV // H) + j // H


def alpha_of(g: torch.Tensor, q_dtype: torch.dtype) -> torch.Tensor:
    """exp(g) computed in float64, rounded once (the input's one rounding) to g's dtype promoted
    with q's: float32, or float64 in exact mode, where rounding alpha to float32 would cost
    the implementation six digits the mode exists to check."""
    return torch.exp(g.to(torch.float64)).to(torch.promote_types(g.dtype, q_dtype))


def l2_normalized(x: torch.Tensor) -> torch.Tensor:
    """x / sqrt(sum(x^2) + L2NORM_EPS) over the last axis, in float64, rounded to x's dtype."""
    wide = x.to(torch.float64)
    return (wide * torch.rsqrt((wide * wide).sum(-1, keepdim=True) + L2NORM_EPS)).to(x.dtype)


def canonical_conventions(conventions: dict) -> dict:
    """Declared conventions with a layout's former name replaced by its name (LAYOUT_ALIASES)."""
    layout = conventions.get("layout")
    return dict(conventions, layout=LAYOUT_ALIASES[layout]) if layout in LAYOUT_ALIASES else dict(conventions)
