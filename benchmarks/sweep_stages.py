"""Stage latency under alternative launch configurations: how the module constants of
kernels/kkt_solve.py, recurrence.py and output.py were chosen (the results:
benchmarks/results/h200/stage_sweeps.md and design_history.md). CUDA only. Inputs:
bench_kernels.py's (bf16, H = 16, HV = 32, K = V = 128, l2norm), at T = 65536, 4 sequences of
8192, T = 1024, and 256 packed sequences of 1..128 tokens: one long sequence leaves the
recurrence one program a head and value block, four fill the GPU four times over, a short one
is latency, and packed short sequences give it tens of thousands of programs.

A configuration sets a stage module's constants (warps, value block, pipelining depth, key
step) or picks a form of the stage (`variant`, benchmarks/stage_variants.py) before the
stage's first launch, so it compiles as a variant of its own. Every configuration runs in a
child process: compiles are slow and single-threaded, so the children first compile at a small
T in parallel (one shared TRITON_CACHE_DIR), then time one after another on the quiet GPU; one
that fails to compile or faults (Triton 3.6 has miscompiled some of these into illegal memory
accesses) is reported as such and costs only its own process. With --rounds N each
configuration is timed in N processes, the configurations in alternating order (A B C, then
C B A), and the median is reported beside the spread: processes of one call agreed within 1%
on an H100, calls on two machines differed by 20% (benchmarks/results/h100/speed/), so compare
configurations within one call only.

Each stage also runs once as shipped, and every configuration's results (all the stage's output
tensors, at every shape) are compared with the shipped ones bit for bit: a configuration that
keeps the bits can replace the shipped one without rewriting the GPU goldens. Each also runs
whole forwards at T = 64 and 1000 against the float64 reference (RMS error ratio of o and of
the final state), so a configuration that changes bits shows what it does to the accuracy.

    python benchmarks/sweep_stages.py [--stage kkt_solve|recurrence|output ...] [--configs REGEX] [--rounds N]
                                      [--json sweep.json]
"""

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

# name -> {constant: candidate values}; value-block functions are replaced by constants.
# Narrowed to what was close in the sweeps of stage_sweeps.md: 8 warps lost for the
# recurrence and the output at every value block, kkt's 4 warps and 64-column steps lost; the
# output's 32-column block is miscompiled by Triton 3.6 (kernels/output.py).
# "variant" names a form of the stage in benchmarks/stage_variants.py. On an H100
# (benchmarks/results/h100/speed/): the output's 32-column key steps and 128-column value blocks
# lost (1.5x, 1.1x), 2 to 8 chunks a program tied within 1% (4 kept; 8 left the space). The
# independent accumulators gained 10% in one call and lost 20% in another (one process each). In
# three alternating rounds the value block by occupancy won (kernels/recurrence.py) and the
# recurrence on S^T lost 30%.
# MAX_REGISTERS caps ptxas's registers: 168 and 128 fit three and four output programs an SM
# (two at 255) and 12 and 16 of kkt_solve's one-warp programs (8 at 255).
SPACE = {
    "kkt_solve": {"NUM_WARPS": (1, 2), "_K_STEP": (16, 32), "MAX_REGISTERS": (None, 168, 128)},
    "recurrence": {"variant": ("shipped", "independent", "single"), "state_value_block": (16, 32), "NUM_STAGES": (3,)},
    "output": {"variant": ("shipped", "single-output"), "MAX_REGISTERS": (None, 168, 128)},
}


# name -> (sequence lengths, packed); None: bench_kernels' packed lengths.
SHAPES = {"65536": ([65536], False), "4x8192": ([8192] * 4, False), "1024": ([1024], False), "packed": (None, True)}

# Whole forwards against the float64 reference, RMS error ratio of o and of the final state:
# T = 64 with an initial state is where a state error shows most in o (issue #15's table).
ACCURACY_TS = (64, 1000)


def configurations(stages: list[str]) -> list[tuple[str, dict]]:
    out = []
    for stage in stages:
        out.append((f"{stage}:shipped", {}))
        names, values = zip(*SPACE[stage].items())
        for combo in itertools.product(*values):
            setting = dict(zip(names, combo))
            out.append((stage + ":" + ",".join(f"{k}={v}" for k, v in setting.items()), setting))
    return out


def output_digests(result) -> list[str]:
    """sha256 of each output tensor of a stage, the digest the golden store keeps."""
    from gdn_verify.goldens import tensor_sha256

    return [tensor_sha256(t) for t in (result if isinstance(result, (tuple, list)) else (result,)) if t is not None]


def child(stage: str, setting: dict, shapes: list[str], accuracy: bool) -> dict:
    """Apply one configuration, run the stage on each shape, return {shape: ms, "bits": {shape:
    output digests}} and, with `accuracy`, the whole forward's error ratios (compile only when
    shapes is empty)."""
    import importlib

    import torch
    import triton.testing

    sys.path.insert(0, os.path.dirname(__file__))
    import bench_kernels as bench
    import stage_variants

    from gdn_verify.kernels.chunk import chunk_stage_calls

    module = importlib.import_module(f"gdn_verify.kernels.{stage}")
    for name, value in setting.items():
        if name == "variant":
            stage_variants.apply(value)
        else:
            setattr(module, name, (lambda *shape, value=value: value) if name.endswith("value_block") else value)

    def stage_call(lens: list[int], packed: bool):
        return chunk_stage_calls(**bench.make_inputs(lens, packed, seed=7))[stage]

    if not shapes:
        stage_call([200], False)()
        torch.cuda.synchronize()
        return {}
    times, bits = {}, {}
    for shape in shapes:
        lens, packed = SHAPES[shape]
        fn = stage_call(lens or bench.packed_lengths(), packed)
        bits[shape] = output_digests(fn())
        torch.cuda.synchronize()
        times[shape] = triton.testing.do_bench_cudagraph(fn, rep=60, return_mode="median")
    if not accuracy:
        return {**times, "bits": bits}
    errors = {row["T"]: {"o": row["o_rms_ratio"], "final_state": row["final_state_rms_ratio"]}
              for row in bench.accuracy_rows(ACCURACY_TS)}
    return {**times, "bits": bits, "accuracy": errors}


def run_child(name: str, shapes: list[str], env: dict, timeout_s: int, accuracy: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", name, *(["--shapes", *shapes] if shapes else []),
           *(["--accuracy"] if accuracy else [])]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s} s"}
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if "Error" in line] or done.stderr.splitlines()[-1:]
        return {"error": lines[-1] if lines else f"exit {done.returncode}"}
    return json.loads(done.stdout.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", action="append", choices=sorted(SPACE), help="stages to sweep (default: all)")
    parser.add_argument("--json", default="sweep_stages.json", help="results file (default: %(default)s)")
    parser.add_argument("--configs", metavar="REGEX", help="only configurations whose name matches (the shipped "
                        "ones always run)")
    parser.add_argument("--rounds", type=int, default=1, help="timed processes per configuration, in alternating "
                        "order (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="parallel compiles (default: CPUs)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--shapes", nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--accuracy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds: expected a positive count, got {args.rounds}")
    known = dict(configurations(sorted(SPACE)))
    if args.child:
        print(json.dumps(child(args.child.split(":")[0], known[args.child], args.shapes, args.accuracy)))
        return 0

    import torch

    if not torch.cuda.is_available():
        print("sweep_stages: needs a CUDA device", file=sys.stderr)
        return 2
    env = {**os.environ, "TRITON_CACHE_DIR": os.environ.get("TRITON_CACHE_DIR") or tempfile.mkdtemp()}
    env.pop("TRITON_INTERPRET", None)
    names = [name for name, _ in configurations(args.stage or sorted(SPACE))
             if name.endswith(":shipped") or not args.configs or re.search(args.configs, name)]
    with ThreadPoolExecutor(args.jobs) as pool:
        compiled = dict(zip(names, pool.map(lambda n: run_child(n, [], env, 300), names)))
    shapes = list(SHAPES)
    runs = {name: [] for name in names}  # each round's result, round 0 with bits and accuracy
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            if "error" not in compiled[name]:
                runs[name].append(run_child(name, shapes, env, 120, accuracy=round_ == 0))
    rows, shipped_bits = [], {}
    print(f"{'configuration':<66} " + " ".join(f"{shape + ' ms':>21}" for shape in shapes)
          + "  bits vs shipped  " + "  ".join(f"o / state RMS T={T}" for T in ACCURACY_TS))
    for name in names:
        stage, setting = name.split(":", 1)
        first = compiled[name] if "error" in compiled[name] else runs[name][0]
        if "error" in first:
            rows.append({"configuration": name, "error": first["error"]})
            print(f"{name:<66} {'failed: ' + first['error'][:80]}")
            continue
        bits = first["bits"]
        if setting == "shipped":
            shipped_bits[stage] = bits
        baseline = shipped_bits.get(stage) if setting != "shipped" else None
        row = {"configuration": name, "same_bits": None if baseline is None else bits == baseline,
               "accuracy": first["accuracy"], "rounds": runs[name]}
        for shape in shapes:
            times = [run[shape] for run in runs[name] if shape in run]  # a failed round has none
            row[shape] = statistics.median(times)
            row[f"{shape}_spread"] = [min(times), max(times)]
        failed = [run["error"] for run in runs[name] if "error" in run]
        if failed:
            row["failed_rounds"] = failed
        rows.append(row)
        same = {True: "same", False: "DIFFER", None: "-"}[row["same_bits"]]
        timing = " ".join(f"{row[s]:>8.3f} ({row[s + '_spread'][0]:.3f}-{row[s + '_spread'][1]:.3f})" for s in shapes)
        accuracy = "  ".join(f"{a['o']:.5f} / {a['final_state']:.2e}" for a in row["accuracy"].values())
        print(f"{name:<66} {timing}  {same:<15}  {accuracy}" + (f"  ({len(failed)} rounds failed)" if failed else ""))
    from gdn_verify.platform import fingerprint

    with open(args.json, "w") as f:
        json.dump({"benchmark": "sweep_stages", "environment": fingerprint("cuda"), "rounds": args.rounds,
                   "rows": rows}, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
