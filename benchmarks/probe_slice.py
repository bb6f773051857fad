"""One head of a case's final state from a benchmarks/dump_outputs.py file: the implementation's
values against the float64 reference's and what a precision design emulates, beside the head's
cumulative gate (so a decay past float32's normal range shows). On the CPU:

    python3 benchmarks/probe_slice.py probe.safetensors dense-b1-t7-h4x8-d128-bf16-gstrong-beta0-state0 \\
        --head 6 --json benchmarks/results/h100/fla_machine2/t7_probe.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def stats(x) -> dict:
    x = x.double()
    nz = x[x != 0].abs()
    return {"rms": x.pow(2).mean().sqrt().item(), "max_abs": x.abs().max().item(),
            "min_abs_nonzero": nz.min().item() if nz.numel() else None,
            "zeros": int((x == 0).sum()), "elements": x.numel()}


def main(argv=None) -> int:
    from safetensors.torch import load_file

    from gdn_verify.compare import emulate, error_ratios
    from gdn_verify.designs import parse_design
    from gdn_verify.inputs import make_inputs
    from gdn_verify.suites import suite

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", type=Path)
    p.add_argument("case")
    p.add_argument("--head", type=int, required=True)
    p.add_argument("--sequence", type=int, default=0)
    p.add_argument("--suite", default="gpu")
    p.add_argument("--design", default="fla", help="the design to emulate (default fla)")
    p.add_argument("--json", metavar="PATH")
    a = p.parse_args(argv)
    t = load_file(str(a.file))
    case = next((c for c in suite(a.suite) if c.id == a.case), None)
    if case is None:
        p.error(f"no case {a.case!r} in the {a.suite} suite")
    inputs = make_inputs(case)
    impl, ref = t[f"{a.case}/final_state"], t[f"{a.case}/ref_final_state"]
    em = emulate(parse_design(a.design), case, inputs)["final_state"]
    n, h = a.sequence, a.head
    lo = 0 if case.layout == "dense" else case.cu_seqlens[n]
    row = inputs["g"][n if case.layout == "dense" else 0, lo:lo + case.seq_lens[n]].double()
    gsum = row[:, h].sum().item()
    out = {"case": a.case, "sequence": n, "head": h, "design": a.design,
           "gate_sum": gsum, "gate_sum_log2": gsum / math.log(2), "decay": math.exp(gsum),
           "float32_min_normal": 2.0 ** -126, "float32_min_subnormal": 2.0 ** -149,
           "exact": stats(ref[n, h]), "impl": stats(impl[n, h]), "emulated": stats(em[n, h]),
           "impl_error": stats(impl[n, h].double() - ref[n, h].double()),
           "emulated_error": stats(em[n, h].double() - ref[n, h].double())}
    if "initial_state" in inputs:  # the exact state over the decayed initial state (1 where beta = 0)
        s0 = inputs["initial_state"][n, h].double()
        q = ref[n, h].double() / (out["decay"] * s0)
        out["exact_over_decayed_initial_state"] = {"min": q.min().item(), "max": q.max().item()}
    for name, x in (("impl", impl), ("emulated", em)):  # as the run measures: slice ratio [sequence, head]
        rms, _, ratios = error_ratios("final_state", case, x, ref)
        out[f"{name}_slice_ratio"], out[f"{name}_global_ratio"] = ratios[n, h].item(), rms
    out["heads"] = [{"head": j, "gate_sum": row[:, j].sum().item(),
                     "exact_max_abs": ref[n, j].double().abs().max().item(),
                     "impl_max_abs": impl[n, j].double().abs().max().item(),
                     "emulated_max_abs": em[n, j].double().abs().max().item(),
                     # values under float32's normal range: where the exact ones are, which the implementation kept
                     "exact_below_normal": int(((ref[n, j] != 0) & (ref[n, j].abs() < 2.0 ** -126)).sum()),
                     "impl_subnormal": int(((impl[n, j] != 0) & (impl[n, j].abs() < 2.0 ** -126)).sum())}
                    for j in range(case.HV)]
    print(json.dumps(out, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
