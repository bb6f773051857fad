"""The host side of one chunked forward of ours, on the CPU: what a call costs before any kernel
runs (issue #15, step 4: a device-bound host path).

Every kernel launch is replaced by a no-op (each stage module's `launch`), so what is left is the
entry point's Python: validation, the chunk map, output allocation, the launchers' argument
preparation. Reported: the launches per call, the top-level torch ops per call (torch.profiler,
CPU activity) and the median and least host time of a call (the least moves less with the
machine's other load). The time is this CPU's, a proxy only: on a GPU
machine each torch op and launch also pays the CUDA driver, and the CPU differs.

    python3 benchmarks/host_ops.py --json benchmarks/results/host_ops_cpu.json [--T 1024]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter

import torch

from gdn_verify.bench_shapes import BENCH_MODEL
from gdn_verify.files import write_atomic
from gdn_verify.kernels import chunk
from gdn_verify.platform import fingerprint

STAGE_MODULES = ("cumsum", "l2norm", "kkt_solve", "recurrence", "output")


def stub_launches() -> list[str]:
    """Replace every stage's `launch` with one that records the kernel's name; the record."""
    launched: list[str] = []
    for name in STAGE_MODULES:
        module = sys.modules[f"gdn_verify.kernels.{name}"]
        module.launch = lambda kernel, grid, *args, **kw: launched.append(kernel.fn.__name__)
    return launched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, default=1024, help="tokens of the one sequence (default: %(default)s)")
    parser.add_argument("--calls", type=int, default=200, help="timed calls (default: %(default)s)")
    parser.add_argument("--json", metavar="PATH", help="write the result here")
    args = parser.parse_args(argv)
    H, HV, K, V = (BENCH_MODEL[key] for key in ("H", "HV", "K", "V"))
    dt = torch.bfloat16
    q, k = torch.randn(1, args.T, H, K, dtype=dt), torch.randn(1, args.T, H, K, dtype=dt)
    v, g = torch.randn(1, args.T, HV, V, dtype=dt), -torch.rand(1, args.T, HV)
    beta, state = torch.rand(1, args.T, HV).to(dt), torch.randn(1, HV, K, V)
    launched = stub_launches()

    def forward():
        return chunk.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=state, output_final_state=True)

    forward()  # the first call's compile_ahead pass
    launched.clear()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        forward()
    per_call = list(launched)
    ops = Counter(e.name for e in prof.events() if e.cpu_parent is None)
    times = []
    for _ in range(args.calls):
        start = time.perf_counter()
        forward()
        times.append((time.perf_counter() - start) * 1e6)
    result = {"benchmark": "host_ops", "environment": fingerprint("cpu"),
              "shape": {"T": args.T, "H": H, "HV": HV, "K": K, "V": V, "dtype": "bfloat16"},
              "launches_per_call": per_call, "torch_ops_per_call": dict(ops.most_common()),
              "host_us_median": statistics.median(times), "host_us_min": min(times), "calls": args.calls}
    print(f"launches {len(per_call)} ({', '.join(per_call)}); torch ops {sum(ops.values())} {dict(ops)}; "
          f"host {result['host_us_median']:.0f} us per call (median of {args.calls}; least {result['host_us_min']:.0f})")
    if args.json:
        write_atomic(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
