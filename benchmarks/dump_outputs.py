"""An implementation's outputs and the float64 reference's, whole, for a few cases, to look at.

A run report gives errors and the worst slice; this writes the tensors behind them (safetensors:
`CASE/o`, `CASE/final_state` for the implementation, `CASE/ref_o`, `CASE/ref_final_state` for
the float64 reference, all on the CPU), so a slice that fails its bound can be read element by
element on another machine, next to what a precision design emulates there:

    python3 benchmarks/dump_outputs.py --impl fla-chunk --device cuda --suite gpu \\
        --cases 'dense-b1-t7-h4x8-d128-bf16-gstrong-beta0-state0' --out probe.safetensors
"""

from __future__ import annotations

import argparse
import re
import sys

from gdn_verify.platform import pin_cpu_dispatch


def main(argv=None) -> int:
    pin_cpu_dispatch(reexec=sys.argv if argv is None else None)  # input bits as the CLI makes them
    import torch
    from safetensors.torch import save_file

    from gdn_verify.cases import select
    from gdn_verify.impls import resolve_impl
    from gdn_verify.inputs import make_inputs, to_device
    from gdn_verify.references import torch_reference
    from gdn_verify.suites import SUITES, suite

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=SUITES, default="gpu")
    p.add_argument("--cases", metavar="PATTERN", required=True, help="regular expression on case ids")
    p.add_argument("--max-cases", type=int, default=8, help="at most this many cases (default 8)")
    p.add_argument("--impl", default="gdn")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    args = p.parse_args(argv)
    try:
        re.compile(args.cases)
    except re.error as exc:
        p.error(f"--cases {args.cases!r}: {exc}")
    cases = select(suite(args.suite), args.cases, args.max_cases)
    if not cases:
        p.error(f"--cases {args.cases!r}: no case of the {args.suite} suite matches")
    impl = resolve_impl(args.impl, args.device)
    tensors = {}
    for case in cases:
        inputs = make_inputs(case)
        o, final_state = impl(case, to_device(inputs, args.device))
        ref = torch_reference(case, inputs)
        found = {"o": o, "final_state": final_state, "ref_o": ref["o"], "ref_final_state": ref["final_state"]}
        tensors.update({f"{case.id}/{k}": t.detach().cpu().contiguous() for k, t in found.items() if t is not None})
        print(f"{case.id}: {', '.join(f'{k} {tuple(t.shape)}' for k, t in found.items() if t is not None)}")
    save_file(tensors, args.out, metadata={"impl": args.impl, "device": torch.cuda.get_device_name()
                                           if args.device.startswith("cuda") else args.device})
    return 0


if __name__ == "__main__":
    sys.exit(main())
