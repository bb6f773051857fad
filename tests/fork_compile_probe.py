"""Run by test_compile_ahead in a fresh process, where Triton compiles rather than interprets:
forked children compile every stage kernel of a first call for sm_90 (no GPU needed; ptxas
included) without asking this process's driver; then this process looks each launch up, in a
thread per kernel as compile_ahead does, and one variant no child compiled. Prints what
Triton's compile listener saw (kernel, cache hit) as JSON.

    python tests/fork_compile_probe.py CACHE_DIR
"""

import os

os.environ.pop("TRITON_INTERPRET", None)  # before Triton is imported

import contextlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import torch  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

from gdn_verify.cases import dense  # noqa: E402
from gdn_verify.inputs import make_inputs  # noqa: E402
from gdn_verify.kernels import _launch, chunk  # noqa: E402

from kernel_checks import case_kwargs  # noqa: E402


class ParentDriver:
    """The parent's driver, as far as a warmup asks it: an sm_90 device that, like CUDA, cannot
    be asked from a forked child."""

    def __init__(self):
        self._pid = os.getpid()
        self.launcher_cls = None

    def _here(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError("the parent's driver used in a forked child")

    def get_current_device(self) -> int:
        self._here()
        return 0

    def get_current_stream(self, device: int) -> int:
        self._here()
        return 0

    def get_current_target(self) -> GPUTarget:
        self._here()
        return GPUTarget("cuda", 90, 32)


class Collected(Exception):
    """Ends a forward once its first-call launches are collected, before any runs."""


def first_call_launches(dtype: str) -> dict[str, list]:
    """Kernel name -> the launches a first call of the forward (every stage) makes, in order."""
    launches: list = []

    @contextlib.contextmanager
    def collect(device):
        _launch._ahead.launches = []
        try:
            yield
            launches.extend(_launch._ahead.launches)
        finally:
            _launch._ahead.launches = None
        raise Collected

    case = dense(T=70, H=2, HV=4, K=64, V=64, dtype=dtype, init_state="random")
    chunk.compile_ahead, chunk._compiled_configs = collect, set()
    with contextlib.suppress(Collected):
        chunk.chunk_gated_delta_rule(**case_kwargs(make_inputs(case), case, "cpu"), use_qk_l2norm_in_kernel=True)
    return _launch.by_kernel_name(launches)


def look_up(launches: list) -> None:
    for kernel, grid, args, constexprs in launches:
        kernel.warmup(*args, grid=grid, **constexprs)


def main() -> None:
    knobs.cache.dir = sys.argv[1]
    hits: list = []
    knobs.compilation.listener = lambda src, cache_hit=False, **_: hits.append((src.fn.__name__, cache_hit))
    driver.set_active(ParentDriver())
    by_kernel = first_call_launches("bfloat16")
    _launch._hash_sources(by_kernel)  # as compile_ahead does before forking
    children = _launch._fork_compiles(by_kernel, torch.device("cpu"), time.perf_counter())
    for child in children.values():
        child.join()
    before = list(hits)  # the children's compiles are not this process's: nothing yet
    # As compile_ahead does: each kernel's look-ups in a thread of its own.
    with ThreadPoolExecutor(len(by_kernel)) as pool:
        list(pool.map(look_up, by_kernel.values()))
    looked_up = sorted(hits)
    # A variant no child compiled: float64 accumulation.
    look_up(first_call_launches("float64")["cumsum_kernel"])
    print(json.dumps({"child_exits": sorted({child.exitcode for child in children.values()}),
                      "kernels": sorted(by_kernel), "before": before, "looked_up": looked_up,
                      "control": hits[len(looked_up):]}))


if __name__ == "__main__":
    main()
