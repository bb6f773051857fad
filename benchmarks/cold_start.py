"""Cold start of the chunked forward: the first call's wall time in a fresh process with an
empty Triton cache, with the stages' kernels compiled at once (`compile_ahead`, what
chunk_gated_delta_rule does: `ahead`, one forked child per kernel) and, for comparison, in
threads of the calling process (`threads`, compile_ahead without children) and one after the
other as each first launches (`serial`, compile_ahead replaced by a no-op). CUDA only.

Each run is a fresh child process with its own empty TRITON_CACHE_DIR; inputs (bench_kernels'
bf16 shape, T = 64) are on the device and CUDA is initialised before the clock starts, so the
time is Triton's: compiles, launcher builds, module loads, and the call itself. Runs alternate
between the modes. Each `ahead` and `threads` run also records where its time went
(`compile_timeline`: the driver's helper module, then each kernel's compile and load), so the
kernel on the critical path is named.

    python benchmarks/cold_start.py [--repeats 3] [--json cold_start.json]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

MODES = ("ahead", "threads", "serial")


def child(mode: str) -> None:
    import contextlib

    import torch
    from bench_kernels import make_inputs
    from gdn_verify.kernels import _launch, chunk, chunk_gated_delta_rule, compile_timeline, compiled_variants

    if mode == "threads":
        _launch.COMPILE_IN_CHILDREN = False
    if mode == "serial":
        chunk.compile_ahead = lambda device: contextlib.nullcontext()
    inputs = make_inputs([64], packed=False, seed=64)
    torch.cuda.synchronize()
    start = time.perf_counter()
    chunk_gated_delta_rule(**inputs)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(json.dumps({"mode": mode, "first_call_s": seconds, "variants": compiled_variants(),
                      "timeline": compile_timeline() if mode != "serial" else None}))


def done_at(times: dict) -> float:
    """When a kernel had been compiled and loaded, in seconds from the pass's start."""
    return times["start_s"] + times["compile_s"] + times["load_s"]


def timeline_summary(timeline: dict | None) -> str:
    """'  (driver 0.47 s; kkt_solve_kernel ends at 5.67 s: compile 4.74 + load 0.46; ...)', the
    kernel that ended last first."""
    if not timeline:
        return ""
    kernels = sorted((name for name in timeline if name != "driver"), key=lambda n: -done_at(timeline[n]))
    parts = [f"{name} ends at {done_at(timeline[name]):.2f} s: compile {timeline[name]['compile_s']:.2f} "
             f"+ load {timeline[name]['load_s']:.2f}" for name in kernels]
    return f"  (driver {timeline['driver']['compile_s']:.2f} s; " + "; ".join(parts) + ")"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode (default: %(default)s)")
    parser.add_argument("--json", default="cold_start.json", help="results file (default: %(default)s)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    import torch

    if not torch.cuda.is_available():
        print("cold_start: needs a CUDA device", file=sys.stderr)
        return 2
    runs = []
    for _ in range(args.repeats):
        for mode in MODES:
            with tempfile.TemporaryDirectory(prefix="triton-cache-") as cache:
                env = dict(os.environ, TRITON_CACHE_DIR=cache)
                env.pop("TRITON_INTERPRET", None)
                done = subprocess.run([sys.executable, __file__, "--child", mode], env=env, capture_output=True,
                                      text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{mode:<7} {runs[-1]['first_call_s']:.2f} s" + timeline_summary(runs[-1]["timeline"]))
    summary = {mode: statistics.median(r["first_call_s"] for r in runs if r["mode"] == mode) for mode in MODES}
    print("median first call: " + ", ".join(f"{mode} {s:.2f} s" for mode, s in summary.items()))

    from gdn_verify.platform import fingerprint

    with open(args.json, "w") as f:
        json.dump({"benchmark": "cold_start", "median_first_call_s": summary, "runs": runs,
                   "environment": fingerprint("cuda")}, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
