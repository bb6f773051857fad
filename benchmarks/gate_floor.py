"""Error of the chunk kernel after closed gates, per float32 gate floor (contract.GATE_FLOOR).

The cpu suite's float16 extreme-gate case, its inputs upcast to float32, through the chunk
kernel under the interpreter with the float32 floor set to each candidate; and the same inputs
with the extreme gates replaced by ordinary large ones (no floor reached), to show how the chunk
form's error grows with the magnitude of the cumulative gate. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

import gdn_verify.contract as contract  # noqa: E402
from gdn_verify.compare import rms_ratio  # noqa: E402
from gdn_verify.conventions import gdn_args, gdn_kwargs  # noqa: E402
from gdn_verify.inputs import make_inputs  # noqa: E402
from gdn_verify.kernels import chunk_gated_delta_rule  # noqa: E402
from gdn_verify.reference import recurrent_gated_delta_rule  # noqa: E402
from gdn_verify.suites import suite  # noqa: E402

FLOORS = (-110.0, -64.0, -40.0, -32.0, -30.0)
REPLACED = (-5.0, -20.0, -30.0)


def _errors(inputs, case) -> dict:
    args, kwargs = gdn_args(inputs), gdn_kwargs(case, inputs)
    o_ref, s_ref = recurrent_gated_delta_rule(*args, **kwargs, dtype=torch.float64)
    o, s = chunk_gated_delta_rule(*args, **kwargs)
    return {"o": rms_ratio(o, o_ref), "final_state": rms_ratio(s, s_ref)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/results/gate_floor_cpu.json")
    args = parser.parse_args()
    case = next(c for c in suite("cpu") if c.gate == "extreme" and c.dtype == "float16" and c.layout == "dense")
    inputs = {k: (v.float() if v.dtype == torch.float16 else v) for k, v in make_inputs(case).items()}
    shipped = contract.GATE_FLOOR["float32"]
    rows = []
    for floor in FLOORS:
        contract.GATE_FLOOR["float32"] = floor
        rows.append({"what": "floor", "value": floor, **_errors(inputs, case)})
    contract.GATE_FLOOR["float32"] = shipped
    for value in REPLACED:
        changed = dict(inputs, g=inputs["g"].clamp_min(value))
        rows.append({"what": "extreme gates replaced by", "value": value, **_errors(changed, case)})
    print(f"case {case.id} (inputs in float32); shipped float32 floor {shipped}")
    print(f"{'what':<28}{'value':>8}{'o RMS':>12}{'state RMS':>12}")
    for r in rows:
        print(f"{r['what']:<28}{r['value']:>8}{r['o']:>12.3g}{r['final_state']:>12.3g}")
    with open(args.json, "w") as f:
        json.dump({"case": case.id, "shipped_floor": shipped, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
