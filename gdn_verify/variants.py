"""Compiled variants of Triton code: a counter per kernel of any package (Triton's per-device JIT
cache), and our kernels' own log, for the compile-variant audit (gdn_verify/audit.py)."""

from __future__ import annotations

import os
import sys
from typing import Callable


def unwrap(value, wanted: Callable[[object], bool]) -> object | None:
    """The first object, from `value` inward through Triton's wrappers (`triton.heuristics` and
    `triton.autotune` keep what they wrap in `.fn`), for which `wanted` holds, or None. Any
    module attribute may come here: lookups that raise mean none."""
    for _ in range(8):
        try:
            if wanted(value):
                return value
            value = getattr(value, "fn", None)
        except Exception:
            return None
        if value is None:
            return None
    return None


def _compiled_kernel(value) -> object | None:
    """The compiled-mode Triton kernel under `value`, or None."""
    return unwrap(value, lambda v: isinstance(getattr(v, "device_caches", None), dict))


def _jit_kernels(package: str) -> dict[str, object]:
    """Every compiled-mode Triton kernel in the imported modules of `package`, by 'module.function'."""
    found: dict[str, object] = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == package or name.startswith(package + ".")):
            continue
        for value in list(vars(module).values()):
            kernel = _compiled_kernel(value)
            if kernel is not None:
                fn = getattr(kernel, "fn", kernel)
                module_name = str(getattr(fn, "__module__", name)).removeprefix(package + ".")
                found.setdefault(f"{module_name}.{getattr(fn, '__name__', type(fn).__name__)}", kernel)
    return found


def triton_variants(package: str) -> tuple[Callable[[], dict[str, int]] | None, Callable[[], None] | None]:
    """(count, forget) for the compiled variants per kernel of `package` (Adapter.variants and
    .forget_variants): count reads Triton's per-device JIT caches (every autotune config that was
    compiled counting as one), forget empties them. (None, None) where nothing compiles: under
    the interpreter (TRITON_INTERPRET=1, read when a kernel is decorated), or when the package
    has no Triton kernels."""
    if os.environ.get("TRITON_INTERPRET") == "1" or not _jit_kernels(package):
        return None, None
    from gdn_verify.kernels import clear_jit_cache, jit_cache_size

    def count() -> dict[str, int]:
        sizes = {name: jit_cache_size(kernel) for name, kernel in _jit_kernels(package).items()}
        return dict(sorted((name, n) for name, n in sizes.items() if n))

    def forget() -> None:
        for kernel in _jit_kernels(package).values():
            clear_jit_cache(kernel)

    return count, forget


def our_compiled_variants() -> dict[str, int]:
    from gdn_verify.kernels import compiled_variants

    return compiled_variants()
