"""Implementations under test, resolved from an `--impl` spec into an `adapters.Adapter`.

A spec is a built-in name (`adapters.BUILTINS`: "gdn" our chunked kernel, "gdn-recurrent" our
token-by-token kernel, "fla-chunk" and "fla-recurrent" flash-linear-attention's) or
"module:function" for any function with the common GDN signature
    fn(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
       cu_seqlens=None, use_qk_l2norm_in_kernel=False) -> (o, final_state),
or one that differs from it in the conventions an Adapter declares (passed as keyword
overrides, the CLI's convention flags). Conventions include the precision design
(gdn_verify/designs.py): ours declare "gdn", flash-linear-attention's "fla", and a
module:function declares its own (`design=`, the CLI's --design) or none. Kernels are imported only when an implementation is
resolved, so a caller can set TRITON_INTERPRET first.
"""

from __future__ import annotations

import importlib

# Re-exported: the harness imports these names from here (repro.py reads _OURS and KERNELS_MODULE).
from gdn_verify.adapters import (  # noqa: F401
    BUILTINS,
    KERNELS_MODULE,
    OURS as _OURS,
    Adapter,
    ImplError,
    ImplUnavailable,
    gdn_args,
    gdn_kwargs,
    our_compiled_variants,
    triton_variants,
    with_conventions,
)

Impl = Adapter


def _import(module_name: str, attr: str, spec: str):
    # Whatever importing the module raises (a SyntaxError, a RuntimeError, sys.exit() at module
    # level) is a setup error naming the spec, not a traceback.
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:
        raise ImplError(f"--impl {spec!r}: cannot import module {module_name!r} "
                        f"({type(exc).__name__}: {exc})") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ImplError(f"--impl {spec!r}: module {module_name!r} has no callable {attr!r}")
    return fn


def resolve_impl(spec: str, device: str | None = None, **conventions) -> Adapter:
    """The adapter for `spec` on `device`, with `conventions` (Adapter fields; None = as
    declared) overriding what the spec declares. Raises ImplError for a bad spec and
    ImplUnavailable for a built-in that cannot run here (the message says why and how to fix)."""
    if spec in BUILTINS:
        adapter = BUILTINS[spec].make(spec, device)
    else:
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            names = ", ".join(repr(n) for n in BUILTINS)
            raise ImplError(f"--impl: expected one of {names} or 'module:function', got {spec!r}")
        fn = _import(module_name, attr, spec)
        ours = module_name == KERNELS_MODULE or module_name.startswith(KERNELS_MODULE + ".")
        variants = our_compiled_variants if ours else triton_variants(module_name.partition(".")[0])
        adapter = Adapter(spec=spec, fn=fn, ours=ours, variants=variants)
    try:
        return with_conventions(adapter, **conventions)
    except ValueError as exc:
        raise ImplError(f"--impl {spec!r}: {exc}") from exc
