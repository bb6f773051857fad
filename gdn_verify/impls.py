"""Implementations under test, resolved from the `--impl` spec.

"gdn" is our chunked kernel, "gdn-recurrent" our token-by-token kernel, and "module:function"
any function with the common GDN signature
    fn(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
       cu_seqlens=None, use_qk_l2norm_in_kernel=False) -> (o, final_state).
Kernels are imported only when an implementation is resolved, so a caller can set
TRITON_INTERPRET first.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch

from gdn_verify.cases import Case

_OURS = {"gdn": "chunk_gated_delta_rule", "gdn-recurrent": "fused_recurrent_gated_delta_rule"}
KERNELS_MODULE = "gdn_verify.kernels"


class ImplError(ValueError):
    """The --impl spec cannot be resolved to a callable."""


@dataclass(frozen=True)
class Impl:
    spec: str
    fn: Callable
    # Our kernels allocate every output through kernels._alloc.new_output, so they can be
    # poisoned (and audited for compiled variants); foreign code cannot.
    ours: bool
    # Stage intermediates (STAGES.md) of the same computation, for diagnosis; chunk kernel only.
    intermediates: Callable | None = None
    # Kernel name -> compiled variants so far (kernels._launch.compiled_variants), if known.
    variants: Callable[[], dict[str, int]] | None = None

    @property
    def supports_poison(self) -> bool:
        return self.ours

    def __call__(self, case: Case, inputs: dict[str, torch.Tensor]):
        """(o, final_state) of the implementation on the case's inputs (final state asked)."""
        return self.fn(*gdn_args(inputs), **gdn_kwargs(case, inputs), use_qk_l2norm_in_kernel=case.l2norm)


def gdn_args(inputs: dict[str, torch.Tensor]) -> tuple:
    return tuple(inputs[name] for name in ("q", "k", "v", "g", "beta"))


def gdn_kwargs(case: Case, inputs: dict[str, torch.Tensor]) -> dict:
    """Keyword arguments shared by every entry point (the l2norm flag's name differs)."""
    return {"scale": case.scale, "initial_state": inputs.get("initial_state"), "output_final_state": True,
            "cu_seqlens": inputs.get("cu_seqlens")}


def _kernel_variants() -> dict[str, int]:
    from gdn_verify.kernels._launch import compiled_variants

    return compiled_variants()


def _import(module_name: str, attr: str, spec: str) -> Callable:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImplError(f"--impl {spec!r}: cannot import module {module_name!r} ({exc})") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ImplError(f"--impl {spec!r}: module {module_name!r} has no callable {attr!r}")
    return fn


def resolve_impl(spec: str) -> Impl:
    if spec in _OURS:
        kernels = importlib.import_module(KERNELS_MODULE)
        fn = getattr(kernels, _OURS[spec], None)
        if fn is None:
            raise ImplError(f"--impl {spec!r}: {KERNELS_MODULE} has no {_OURS[spec]}")
        inter = getattr(kernels, "chunk_gated_delta_rule_intermediates", None) if spec == "gdn" else None
        return Impl(spec=spec, fn=fn, ours=True, intermediates=inter, variants=_kernel_variants)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ImplError(f"--impl: expected 'gdn', 'gdn-recurrent' or 'module:function', got {spec!r}")
    fn = _import(module_name, attr, spec)
    ours = module_name == KERNELS_MODULE or module_name.startswith(KERNELS_MODULE + ".")
    return Impl(spec=spec, fn=fn, ours=ours, variants=_kernel_variants if ours else None)
