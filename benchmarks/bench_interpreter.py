"""Where the CPU suite's time goes under the Triton interpreter: each stage of the chunked
forward timed alone (wall time, one BLAS thread, as the golden runs pin it) over every Nth case
of the `cpu` suite. The interpreter runs each Triton op as NumPy calls, so a stage's cost here
follows its number of ops, not its arithmetic.

    TRITON_INTERPRET=1 python benchmarks/bench_interpreter.py [--every 6] [--json bench_interpreter.json]
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402

import torch  # noqa: E402

from gdn_verify.conventions import gdn_args, gdn_kwargs  # noqa: E402
from gdn_verify.inputs import make_inputs  # noqa: E402
from gdn_verify.kernels.chunk import chunk_stage_calls  # noqa: E402
from gdn_verify.platform import fingerprint  # noqa: E402
from gdn_verify.suites import suite  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=6, help="time every Nth cpu-suite case (default: %(default)s)")
    parser.add_argument("--json", default="bench_interpreter.json", help="results file (default: %(default)s)")
    args = parser.parse_args()
    if os.environ["TRITON_INTERPRET"] != "1":
        print("bench_interpreter: needs TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    if args.every < 1:
        print(f"bench_interpreter: --every: expected a positive integer, got {args.every}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # timings comparable across machines (the bits do not depend on it)
    cases = suite("cpu")[::args.every]
    seconds: dict[str, float] = defaultdict(float)
    for case in cases:
        x = make_inputs(case)
        calls = chunk_stage_calls(*gdn_args(x), **gdn_kwargs(case, x), use_qk_l2norm_in_kernel=case.l2norm)
        for stage, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[stage] += time.perf_counter() - start
    total = sum(seconds.values())
    print(f"{len(cases)} cases (every {args.every}th of the cpu suite), stages timed alone:")
    print(f"{'stage':<12} {'seconds':>8} {'share':>6}")
    for stage, s in seconds.items():
        print(f"{stage:<12} {s:>8.2f} {s / total:>6.0%}")
    with open(args.json, "w") as f:
        json.dump({"benchmark": "interpreter_stages", "environment": fingerprint("cpu"), "every": args.every,
                   "cases": [c.id for c in cases], "seconds": dict(seconds)}, f,
                  indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
