"""Kernel launches that can be audited for compiled variants.

Every launcher in this package calls `launch`, so `compiled_variants()` can say how many
distinct compiled kernels each `@triton.jit` function has needed so far. On a GPU the count
comes from Triton's own per-device JIT cache. The interpreter compiles nothing, so there the
count is of the specialization keys Triton would have compiled: constexpr values, tensor
dtypes and 16-byte alignment, and Triton's integer specialization (== 1, divisible by 16)
of every int argument not listed in `do_not_specialize`. A T-dependent argument that is not
exempt from specialization therefore shows up as extra variants on the CPU too.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import torch
import triton.language as tl
from triton.runtime.driver import driver

_seen_keys: dict[str, set] = defaultdict(set)
_kernels: dict[str, object] = {}
# Launches collected by `compile_ahead` on this thread instead of running: (kernel, grid, args, constexprs).
_ahead = threading.local()
# The last compile_ahead pass, in seconds from its start: "driver" (Triton's CUDA helper module,
# built before the threads start) and, per kernel, when its thread started, its compile and its
# load (launcher build and module load).
_timeline: dict[str, dict[str, float]] = {}


def _python_fn(kernel):
    return getattr(kernel, "fn", kernel)


def _arg_key(value, specialize: bool):
    if isinstance(value, torch.Tensor):
        return (str(value.dtype), value.data_ptr() % 16 == 0)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if not specialize:
            return "int"
        return 1 if value == 1 else ("div16" if value % 16 == 0 else "int")
    if isinstance(value, float):
        return "float"
    return value


@functools.cache
def _parameters(kernel) -> tuple[tuple[str, bool, bool], ...]:
    """(name, is constexpr, specialized on its int value) per parameter, computed once per
    kernel: inspect.signature alone costs tens of microseconds, a launch's worth at decode."""
    fn = _python_fn(kernel)
    jit_kwargs = getattr(kernel, "kwargs", {}) or {}
    exempt = set(jit_kwargs.get("do_not_specialize", ()) or ())
    exempt |= {p.name for p in getattr(kernel, "params", ()) if getattr(p, "do_not_specialize", False)}
    return tuple(
        (p.name, p.annotation is tl.constexpr or p.annotation == "tl.constexpr", p.name not in exempt)
        for p in inspect.signature(fn).parameters.values()
    )


def _specialization_key(kernel, args: tuple, constexprs: dict) -> tuple:
    key = []
    for (name, is_constexpr, specialize), value in zip(_parameters(kernel), args):
        key.append((name, value) if is_constexpr else (name, _arg_key(value, specialize)))
    key.extend(sorted(constexprs.items()))
    return tuple(key)


def launch(kernel, grid, *args, **constexprs) -> None:
    """kernel[grid](*args, **constexprs), recording the variant it needs."""
    name = _python_fn(kernel).__name__
    _kernels[name] = kernel
    if not hasattr(kernel, "device_caches"):
        # Interpreted: no compile cache to count, so count keys. Compiled launches skip this
        # (Triton's cache is the count), keeping the key's cost off the decode hot path.
        _seen_keys[name].add(_specialization_key(kernel, args, constexprs))
    collected = getattr(_ahead, "launches", None)
    if collected is not None:
        collected.append((kernel, grid, args, constexprs))
        return
    kernel[grid](*args, **constexprs)


def _compile_and_load(device: torch.device, launches: list, origin: float) -> None:
    # A worker thread starts on CUDA device 0; the kernels are for the inputs' device.
    times = _timeline.setdefault(_python_fn(launches[0][0]).__name__, {"start_s": time.perf_counter() - origin})
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        for kernel, grid, args, constexprs in launches:
            start = time.perf_counter()
            compiled = kernel.warmup(*args, grid=grid, **constexprs)
            compiled_at = time.perf_counter()
            # `run` is a property whose first read builds the launcher (a C extension Triton
            # compiles with the host compiler) and loads the binary: the rest of a cold launch.
            compiled.run
            times["compile_s"] = times.get("compile_s", 0.0) + compiled_at - start
            times["load_s"] = times.get("load_s", 0.0) + time.perf_counter() - compiled_at


@contextlib.contextmanager
def compile_ahead(device: torch.device):
    """Launches inside this block do not run; on leaving it, the kernels they need are compiled
    and loaded, one thread per kernel, so a first call's compiles overlap instead of queuing.

    Triton compiles each kernel on its first launch, one after the other; with five stages that
    serial wait was most of a cold start (compile_sm90: 4.8 s of compiles, the solve 2.7 s of
    it). Threads overlap what Triton runs as subprocesses (ptxas, the launcher's C compile); its
    compiler passes barely overlap (on an H100 machine each kernel compiled several times slower
    in its thread than alone: benchmarks/results/README.md, `compile_timeline`). Compiled (GPU)
    launches only: the interpreter has nothing to compile.
    """
    if getattr(_ahead, "launches", None) is not None:
        raise RuntimeError("compile_ahead blocks do not nest")
    _ahead.launches = []
    try:
        yield
        by_kernel: dict[str, list] = defaultdict(list)
        for launch_args in _ahead.launches:
            by_kernel[_python_fn(launch_args[0]).__name__].append(launch_args)
    finally:
        _ahead.launches = None
    if by_kernel:
        _timeline.clear()
        origin = time.perf_counter()
        driver.active  # created here, once: its constructor compiles Triton's CUDA helper module
        _timeline["driver"] = {"compile_s": time.perf_counter() - origin}
        # One kernel's variants compile in order in one thread: Triton fills a kernel's cache
        # without a lock.
        with ThreadPoolExecutor(len(by_kernel)) as pool:
            for done in [pool.submit(_compile_and_load, device, group, origin) for group in by_kernel.values()]:
                done.result()


def compile_timeline() -> dict[str, dict[str, float]]:
    """Where the last compile_ahead pass spent its time, in seconds from its start: "driver"
    (Triton's CUDA helper module, before any kernel) and, per kernel name, its thread's start,
    compile and load (launcher build and binary load) seconds."""
    return {name: dict(times) for name, times in _timeline.items()}


def jit_cache_size(kernel) -> int | None:
    caches = getattr(kernel, "device_caches", None)
    if caches is None:
        return None
    return sum(len(entry[0]) for entry in caches.values())


def clear_jit_cache(kernel) -> None:
    """Forget the compiled variants `kernel` holds in memory (its next launch with each
    specialization loads the binary from Triton's disk cache again)."""
    for entry in (getattr(kernel, "device_caches", None) or {}).values():
        entry[0].clear()


def compiled_variants() -> dict[str, int]:
    """Kernel name -> number of compiled variants (Triton's cache on GPU, keys under the interpreter)."""
    counts = {}
    for name, kernel in _kernels.items():
        cached = jit_cache_size(kernel)
        counts[name] = cached if cached is not None else len(_seen_keys[name])
    return dict(sorted(counts.items()))


def reset_variant_log() -> None:
    """Forget the interpreter's recorded keys (Triton's own GPU cache is left alone)."""
    _seen_keys.clear()
