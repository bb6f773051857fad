"""An implementation's measured error against what precision designs predict, from run reports.

`gdn-verify run --impl X --json R.json` on a GPU records, per case and tensor, X's RMS error
ratio against the float64 reference and its worst slice (o: sequence, value head, chunk;
final_state: sequence, value head). This script recomputes on the CPU, for the same cases (the
inputs are the same bits on any x86-64 host), the error each named design predicts
(`compare.emulate`), globally and on that slice, measured as the run measured it
(`compare.error_ratios`), and prints the factor each actual error needs: (actual - floor) /
emulated, the number DESIGN_FACTOR (gdn_verify/tolerances.py) must stay above. The slice compared is
the one the run reported (the slice nearest its bound under the design the run judged by).
Non-finite actual errors (NaN outputs) are counted apart.

    python3 benchmarks/design_calibration.py R1.json R2.json --design fla --design 'SPEC' \\
        --max-work 4e8 --json benchmarks/results/h100/fla_design_calibration.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from gdn_verify.cases import Case
from gdn_verify.compare import emulate, error_ratios, slice_index
from gdn_verify.designs import parse_design
from gdn_verify.inputs import make_inputs
from gdn_verify.references import torch_reference
from gdn_verify.tolerances import DESIGN_FLOOR


def needed(actual: float | None, emulated: float | None, floor: float) -> float | None:
    """The factor on the emulated error this actual error needs, the floor taken off (0 when the
    floor covers it; None where it cannot be said: no slice, a non-finite actual, no emulated error)."""
    if actual is None or emulated is None or not math.isfinite(actual):
        return None
    if actual <= floor:
        return 0.0
    return (actual - floor) / emulated if emulated > 0 else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", type=Path)
    p.add_argument("--design", action="append", required=True, help="a named design or spec (repeatable)")
    p.add_argument("--max-work", type=float, default=4e8,
                   help="skip cases with more than this many tokens x value heads x K x V (CPU time)")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    designs = [parse_design(d) for d in args.design]
    rows, skipped = [], 0
    for path in args.reports:
        for c in json.loads(path.read_text())["cases"]:
            judged = {t: ch for t, ch in c.get("checks", {}).items() if ch.get("design")}
            if not judged:
                continue
            case = Case.from_dict(c["case"])
            if case.tokens * case.HV * case.K * case.V > args.max_work:
                skipped += 1
                continue
            inputs = make_inputs(case)
            exact = torch_reference(case, inputs)
            emulated = [emulate(d, case, inputs) for d in designs]
            for tensor, check in judged.items():
                actual, floor = float(check["rms_ratio"]), DESIGN_FLOOR[case.dtype]
                worst = check.get("worst_slice")
                row = {"case": c["id"], "dtype": case.dtype, "tensor": tensor, "actual_rms": actual,
                       "actual_slice": None if worst is None else float(worst["ratio"]), "designs": {}}
                for d, em in zip(designs, emulated):
                    em_rms, slices, ratios = error_ratios(tensor, case, em[tensor], exact[tensor])
                    em_slice = None if worst is None else float(ratios[slice_index(slices, worst), worst["head"]])
                    row["designs"][d.spec] = {
                        "emulated_rms": em_rms, "emulated_slice": em_slice,
                        "global": needed(actual, em_rms, floor), "slice": needed(row["actual_slice"], em_slice, floor)}
                rows.append(row)
    summary = []
    print(f"{len(rows)} tensors of {len({r['case'] for r in rows})} cases ({skipped} cases over --max-work skipped)")
    print(f"{'design':52} {'dtype':9} {'tensor':12} {'n':>4} {'max global':>10} {'max slice':>10}  worst case")
    for d in designs:
        for dtype in ("float32", "float16", "bfloat16"):
            for tensor in ("o", "final_state"):
                sel = [r for r in rows if r["dtype"] == dtype and r["tensor"] == tensor and math.isfinite(r["actual_rms"])]
                if not sel:
                    continue
                g = [r for r in sel if r["designs"][d.spec]["global"] is not None]
                s = [r for r in sel if r["designs"][d.spec]["slice"] is not None]
                gmax = max(g, key=lambda r: r["designs"][d.spec]["global"]) if g else None
                smax = max(s, key=lambda r: r["designs"][d.spec]["slice"]) if s else None
                entry = {"design": d.spec, "dtype": dtype, "tensor": tensor, "tensors": len(sel),
                         "max_global": gmax and gmax["designs"][d.spec]["global"], "max_global_case": gmax and gmax["case"],
                         "max_slice": smax and smax["designs"][d.spec]["slice"], "max_slice_case": smax and smax["case"]}
                summary.append(entry)
                print(f"{d.name[-52:]:52} {dtype:9} {tensor:12} {len(sel):4d} {entry['max_global'] or 0:10.2f} "
                      f"{entry['max_slice'] or 0:10.2f}  {entry['max_slice_case']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"reports": [str(r) for r in args.reports], "max_work": args.max_work,
                                               "summary": summary, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
