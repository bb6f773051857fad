"""Run by test_compile_ahead on a CUDA machine, in a fresh process with an empty Triton cache:
one first call of the chunked forward, its kernels compiled by compile_ahead in forked children
(`children`) or in threads of this process (`threads`). Saves o and the final state to OUT and
prints the compile timeline and what Triton's compile listener saw in this process (kernel,
cache hit) as JSON.

    python tests/first_call_probe.py children|threads OUT
"""

import json
import sys

import torch
from triton import knobs

from gdn_verify.cases import varlen
from gdn_verify.inputs import make_inputs
from gdn_verify.kernels import _launch, chunk_gated_delta_rule, compile_timeline

from kernel_checks import case_kwargs

CASE = varlen((5, 0, 70), H=2, HV=4, K=64, V=64, dtype="bfloat16", init_state="random", l2norm=True)


def main() -> None:
    mode, out = sys.argv[1:]
    _launch.COMPILE_IN_CHILDREN = mode == "children"
    compiles: list = []
    knobs.compilation.listener = lambda src, cache_hit=False, **_: compiles.append([src.fn.__name__, cache_hit])
    o, final_state = chunk_gated_delta_rule(**case_kwargs(make_inputs(CASE), CASE, "cuda"),
                                            use_qk_l2norm_in_kernel=True)
    torch.save({"o": o.cpu(), "final_state": final_state.cpu()}, out)
    print(json.dumps({"timeline": compile_timeline(), "compiles": sorted(compiles)}))


if __name__ == "__main__":
    main()
