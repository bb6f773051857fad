"""Implementations under test, resolved from an `--impl` spec into an `adapters.Adapter`.

A spec is a built-in name (`BUILTINS`: "gdn" our chunked kernel, "gdn-recurrent" our
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
import importlib.util
from dataclasses import dataclass, field
from typing import Callable

from gdn_verify.adapters import Adapter, with_conventions
from gdn_verify.designs import FLA, GDN
from gdn_verify.variants import our_compiled_variants, triton_variants

KERNELS_MODULE = "gdn_verify.kernels"
OURS = {"gdn": "chunk_gated_delta_rule", "gdn-recurrent": "fused_recurrent_gated_delta_rule"}

FLA_MODULE = "fla.ops.gated_delta_rule"
FLA_INSTALL = "pip install 'gdn-verify[fla]' (or: pip install fla-core)"


class ImplError(ValueError):
    """The --impl spec cannot be resolved to a callable."""


class ImplUnavailable(ImplError):
    """A built-in implementation cannot run here (not installed, or needs another device)."""


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
        variants, forget = (our_compiled_variants, None) if ours else triton_variants(module_name.partition(".")[0])
        adapter = Adapter(spec=spec, fn=fn, ours=ours, variants=variants, forget_variants=forget)
    try:
        return with_conventions(adapter, **conventions)
    except ValueError as exc:
        raise ImplError(f"--impl {spec!r}: {exc}") from exc


# ----------------------------------------------------------------------------------------
# Built-in adapters
# ----------------------------------------------------------------------------------------

def _ours(name: str, device: str | None) -> Adapter:
    kernels = importlib.import_module(KERNELS_MODULE)
    fn = getattr(kernels, OURS[name], None)
    if fn is None:
        raise ImplError(f"--impl {name!r}: {KERNELS_MODULE} has no {OURS[name]}")
    inter = getattr(kernels, "chunk_gated_delta_rule_intermediates", None) if name == "gdn" else None
    return Adapter(spec=name, fn=fn, ours=True, intermediates=inter, variants=our_compiled_variants, design=GDN)


def fla_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("fla-core", "flash-linear-attention"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


# flash-linear-attention's entry points (fla-core 0.6.0): q, k [B, T, H, K]; v [B, T, HV, V]
# with HV a multiple of H (GVA, key head = h // (HV/H)); g log-space [B, T, HV]; beta
# [B, T, HV]; scale (default K ** -0.5); initial_state and final_state [N, HV, K, V], final
# float32; cu_seqlens documented as a LongTensor, with B = 1; use_qk_l2norm_in_kernel
# (x / sqrt(sum x^2 + 1e-6)). fused_recurrent's positional order is q, k, v, g, gk, gv,
# beta, so tensors go by keyword. float64 is neither documented nor tested upstream (the
# recurrent kernel computes it in float32). The chunk kernels autotune over several configs,
# which Triton's interpreter cannot run ("0 active drivers"); the recurrent one has a single
# config and runs there, except in bfloat16: the interpreter truncates its float32 -> bfloat16
# stores (measured on o: 99.9% of elements equal the truncated reference, 50% the rounded one).
_FLA = {
    "fla-chunk": ("chunk_gated_delta_rule", True),
    "fla-recurrent": ("fused_recurrent_gated_delta_rule", False),
}


def _fla(name: str, device: str | None) -> Adapter:
    entry, needs_cuda = _FLA[name]
    if importlib.util.find_spec("fla") is None:
        raise ImplUnavailable(f"--impl {name}: flash-linear-attention is not installed; install it with {FLA_INSTALL}")
    if needs_cuda and not str(device or "").startswith("cuda"):
        raise ImplUnavailable(
            f"--impl {name}: needs a CUDA device (device here: {device or 'none'}): its chunk kernels autotune "
            "over several configs, which Triton's interpreter cannot run; use --device cuda on a GPU machine")
    try:
        module = importlib.import_module(FLA_MODULE)
    except ImportError as exc:
        raise ImplUnavailable(f"--impl {name}: cannot import {FLA_MODULE} ({exc}); install it with {FLA_INSTALL}") from exc
    fn = getattr(module, entry, None)
    if fn is None:
        raise ImplUnavailable(f"--impl {name}: {FLA_MODULE} has no {entry} (fla {fla_version()})")
    dtypes, note = ("float32", "float16", "bfloat16"), "float64 is not supported upstream"
    # The chunk form exponentiates differences of unclamped cumulative gates: a gate of -inf or
    # -1e30 gives NaN outputs (the gpu suite's extreme cases on an H100: benchmarks/results/h100/
    # fla_gpu.md), so it declares no gate floor. The recurrent form decays token by token.
    if not str(device or "").startswith("cuda"):
        dtypes, note = dtypes[:2], note + "; bfloat16 is not run under Triton's interpreter, which truncates its stores"
    variants, forget = triton_variants("fla")
    return Adapter(spec=name, fn=fn, variants=variants, forget_variants=forget,
                   keyword_tensors=True, dtypes=dtypes, dtypes_note=note, cu_seqlens_dtype="int64",
                   notes=f"{FLA_MODULE}.{entry}, fla {fla_version()}", design=FLA, gate_floor=name != "fla-chunk")


@dataclass(frozen=True)
class Builtin:
    description: str
    make: Callable[[str, str | None], Adapter] = field(repr=False)


BUILTINS: dict[str, Builtin] = {
    "gdn": Builtin("our chunked Triton kernel", _ours),
    "gdn-recurrent": Builtin("our token-by-token (decode) Triton kernel", _ours),
    "fla-chunk": Builtin(f"flash-linear-attention {FLA_MODULE}.chunk_gated_delta_rule (CUDA only)", _fla),
    "fla-recurrent": Builtin(f"flash-linear-attention {FLA_MODULE}.fused_recurrent_gated_delta_rule", _fla),
}
