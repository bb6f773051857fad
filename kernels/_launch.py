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
import multiprocessing
import os
import threading
import time
import traceback
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import torch
import triton.language as tl
from triton.runtime.cache import triton_key
from triton.runtime.driver import driver

_seen_keys: dict[str, set] = defaultdict(set)
_kernels: dict[str, object] = {}
# Launches collected by `compile_ahead` on this thread instead of running: (kernel, grid, args, constexprs).
_ahead = threading.local()
# The last compile_ahead pass, in seconds from its start: "driver" (Triton's CUDA helper module
# and cache-key hash, before any kernel) and, per kernel, when its child (or thread) started, its
# compile, its load (cache read, launcher build, module load) and its child's exit code.
_timeline: dict[str, dict[str, float]] = {}
# compile_ahead compiles each kernel in a forked child where it can (False: in threads of this
# process, as cold_start.py's `threads` mode measures).
COMPILE_IN_CHILDREN = True
# A child still compiling after this long is taken to be stuck (a fork can inherit a lock some
# other thread held) and is killed; its kernel then compiles here. The slowest compile, the
# solve's, takes seconds.
CHILD_TIMEOUT_S = 300.0


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


def by_kernel_name(launches: list) -> dict[str, list]:
    """Collected launches grouped by kernel name, each group in launch order."""
    groups: dict[str, list] = defaultdict(list)
    for launch_args in launches:
        groups[_python_fn(launch_args[0]).__name__].append(launch_args)
    return dict(groups)


class _ChildDriver:
    """Triton's driver as a forked compile child sees it: the parent's answers to the three
    device questions a warmup asks (device, stream, target) and the parent's launcher class. So
    the child compiles under the cache key the parent's launch looks up, and never calls CUDA,
    whose context does not survive a fork."""

    def __init__(self, device_index: int, target, launcher_cls):
        self._device_index, self._target, self.launcher_cls = device_index, target, launcher_cls

    def get_current_device(self) -> int:
        return self._device_index

    def get_current_stream(self, device: int) -> int:
        return 0

    def get_current_target(self):
        return self._target


def _compile_in_child(launches: list, child_driver: _ChildDriver) -> None:
    """A forked child's work: compile `launches` into Triton's disk cache, and build their
    launchers (also cached on disk) where the driver has a launcher class. On failure it prints
    the traceback and exits with 1; the parent warns and compiles the kernel itself, so a real
    compile error is raised there too."""
    try:
        driver.set_active(child_driver)
        for kernel, grid, args, constexprs in launches:
            compiled = kernel.warmup(*args, grid=grid, **constexprs)
            if child_driver.launcher_cls is not None:
                child_driver.launcher_cls(compiled.src, compiled.metadata)
    except BaseException:
        traceback.print_exc()
        os._exit(1)


def _hash_sources(by_kernel: dict[str, list]) -> None:
    """Compute each kernel's source hash (part of Triton's cache key) now, in launch order.

    Triton 3.6 memoizes the hash, and it depends on which helper functions had theirs computed
    first (a helper's globals join its caller's only once the helper is hashed). Hashed before
    any fork, children inherit the hashes this process looks its kernels up with, and threads
    cannot race to different ones."""
    for launches in by_kernel.values():
        getattr(launches[0][0], "cache_key", None)


def _fork_compiles(by_kernel: dict[str, list], device: torch.device, origin: float) -> dict[str, object]:
    """Kernel name -> the forked child compiling its variants, or {} where children cannot
    compile: no fork on this platform, COMPILE_IN_CHILDREN off, a daemonic process (which
    multiprocessing forbids to have children), or a driver that cannot name its target.

    Forked, not spawned: a fresh interpreter would import torch and Triton again (seconds)
    before compiling. The children use no CUDA, no torch op and no lock a parent thread could
    hold, as a PyTorch DataLoader's forked workers do; Python warns about any fork of a
    multi-threaded process, so that warning is silenced here alone.
    """
    active = driver.active
    if not COMPILE_IN_CHILDREN or "fork" not in multiprocessing.get_all_start_methods() \
            or multiprocessing.current_process().daemon or not hasattr(active, "get_current_target"):
        return {}
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        child_driver = _ChildDriver(active.get_current_device(), active.get_current_target(),
                                    getattr(active, "launcher_cls", None))
    context = multiprocessing.get_context("fork")
    children = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
        for name, launches in by_kernel.items():
            children[name] = context.Process(target=_compile_in_child, args=(launches, child_driver), daemon=True)
            _timeline[name] = {"start_s": time.perf_counter() - origin}
            children[name].start()
    return children


def _compile_and_load(device: torch.device, launches: list, origin: float, child=None) -> None:
    """Compile (or, after `child` has, read from the disk cache) and load one kernel's variants."""
    name = _python_fn(launches[0][0]).__name__
    times = _timeline.setdefault(name, {"start_s": time.perf_counter() - origin})
    times.update(compile_s=0.0, load_s=0.0)
    in_cache = False
    if child is not None:
        child.join(CHILD_TIMEOUT_S)
        if child.is_alive():
            child.kill()
            child.join()
        times.update(compile_s=time.perf_counter() - origin - times["start_s"], child_exit=child.exitcode)
        in_cache = child.exitcode == 0
        if not in_cache:
            warnings.warn(f"compile_ahead: the child compiling {name} exited with {child.exitcode}; compiling it "
                          "in this process instead", RuntimeWarning)
    # A worker thread starts on CUDA device 0; the kernels are for the inputs' device.
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        for kernel, grid, args, constexprs in launches:
            start = time.perf_counter()
            compiled = kernel.warmup(*args, grid=grid, **constexprs)
            compiled_at = time.perf_counter()
            # `run` is a property whose first read builds the launcher (a C extension Triton
            # compiles with the host compiler, unless a child left it in the cache) and loads
            # the binary: the rest of a cold launch.
            compiled.run
            if not in_cache:
                times["compile_s"] += compiled_at - start
            times["load_s"] += time.perf_counter() - (start if in_cache else compiled_at)


@contextlib.contextmanager
def compile_ahead(device: torch.device):
    """Launches inside this block do not run; on leaving it, the kernels they need are compiled,
    one forked child per kernel, and loaded, so a first call's compiles overlap instead of
    queuing.

    Triton compiles each kernel on its first launch, one after the other; with five stages that
    serial wait was most of a cold start (compile_sm90: 4.8 s of compiles, the solve 2.7 s of
    it). Threads of one process overlap what Triton runs as subprocesses (ptxas, the launcher's
    C compile); whether its compiler passes overlap depends on the machine (on one H100 host each
    kernel compiled several times slower in its thread than alone, on another about as fast:
    benchmarks/results/README.md, `compile_timeline`). Children run side by side whatever the
    host. They compile into Triton's disk cache under the key this process then looks up, so the
    kernels a child compiled are read back here, and any a child failed on are compiled here.
    Without children (see _fork_compiles) the compiles run in threads. Compiled (GPU) launches
    only: the interpreter has nothing to compile.
    """
    if getattr(_ahead, "launches", None) is not None:
        raise RuntimeError("compile_ahead blocks do not nest")
    _ahead.launches = []
    try:
        yield
        by_kernel = by_kernel_name(_ahead.launches)
    finally:
        _ahead.launches = None
    if by_kernel:
        _timeline.clear()
        origin = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            # Built here, once: the driver's constructor compiles Triton's CUDA helper module;
            # Triton's own cache key hashes its sources, once a process, and the children
            # inherit it.
            for done in [pool.submit(lambda: driver.active), pool.submit(triton_key)]:
                done.result()
        _hash_sources(by_kernel)
        _timeline["driver"] = {"compile_s": time.perf_counter() - origin}
        children = _fork_compiles(by_kernel, device, origin)
        # One kernel's variants compile in order in one thread: Triton fills a kernel's cache
        # without a lock.
        with ThreadPoolExecutor(len(by_kernel)) as pool:
            for done in [pool.submit(_compile_and_load, device, group, origin, children.get(name))
                         for name, group in by_kernel.items()]:
                done.result()


def compile_timeline() -> dict[str, dict[str, float]]:
    """Where the last compile_ahead pass spent its time, in seconds from its start: "driver"
    (Triton's CUDA helper module and cache-key hash, before any kernel) and, per kernel name,
    start_s (its child forked, or its thread started), compile_s (the child's whole life, plus
    any compile here after a child failed), load_s (cache read, launcher build, binary load) and
    child_exit (the child's exit code; absent where it compiled in a thread)."""
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
