"""Run by test_compile_ahead in a fresh process, where Triton compiles rather than interprets:
a forked child compiles the cumsum stage's kernel for sm_90 (no GPU needed; ptxas included)
without asking this process's driver, then this process looks the same launch up, and one
variant no child compiled. Prints {"child_exit", "cache_hits", "control"} as JSON.

    python tests/fork_compile_probe.py CACHE_DIR
"""

import os

os.environ.pop("TRITON_INTERPRET", None)  # before Triton is imported

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

from gdn_verify.contract import validate  # noqa: E402
from gdn_verify.kernels import _launch  # noqa: E402
from gdn_verify.kernels.chunk_map import build_chunk_map  # noqa: E402
from gdn_verify.kernels.cumsum import cumsum  # noqa: E402


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


def cumsum_launches(acc_dtype: torch.dtype) -> list:
    """The launch the cumsum stage makes for a small dense input, collected, not run."""
    q = torch.zeros(1, 64, 2, 16)
    g = torch.zeros(1, 64, 2)
    chunks = build_chunk_map(validate(q, q, q, g, g), None, "cpu")
    _launch._ahead.launches = []
    try:
        cumsum(g, chunks, acc_dtype)
        return _launch._ahead.launches
    finally:
        _launch._ahead.launches = None


def main() -> None:
    knobs.cache.dir = sys.argv[1]
    hits: list = []
    knobs.compilation.listener = lambda **kw: hits.append(kw.get("cache_hit", False))
    driver.set_active(ParentDriver())
    launches = cumsum_launches(torch.float32)
    children = _launch._fork_compiles({"cumsum_kernel": launches}, torch.device("cpu"), time.perf_counter())
    child = children["cumsum_kernel"]
    child.join()
    before = list(hits)  # the child's compile is not this process's: nothing yet
    for kernel, grid, args, constexprs in launches + cumsum_launches(torch.float64):
        kernel.warmup(*args, grid=grid, **constexprs)
    print(json.dumps({"child_exit": child.exitcode, "before": before, "cache_hits": hits}))


if __name__ == "__main__":
    main()
