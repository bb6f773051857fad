"""How Triton's default tl.dot reads float32 operands on this GPU: cut (tf32-trunc) or rounded (tf32).

A [16, 16] x [16, 16] float32 product where row i of a holds one value x_i in column 0 and b
holds 1.0 in row 0: every output of row i is the single product tf32(x_i) * 1.0, exact, so the
output's bits are the tensor core's reading of x_i. The x_i are random float32 values plus
values whose 13 low mantissa bits are exactly half a TF32 unit (ties) and just above and below
it; each design dot mode (gdn_verify/designs.py) predicts every output bit, and the table says
which modes agree with the GPU on all of them. b is tested the same way (a holding 1.0).

    python3 benchmarks/tf32_rounding.py --json out/tf32_rounding.json     # needs a CUDA GPU
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import triton
import triton.language as tl

from gdn_verify.designs import tf32_round

N = 16


@triton.jit
def dot_kernel(a_ptr, b_ptr, c_ptr, N: tl.constexpr):
    rows = tl.arange(0, N)
    a = tl.load(a_ptr + rows[:, None] * N + rows[None, :])
    b = tl.load(b_ptr + rows[:, None] * N + rows[None, :])
    tl.store(c_ptr + rows[:, None] * N + rows[None, :], tl.dot(a, b))  # the default precision, as FLA calls it


def probe_values(count: int, gen: torch.Generator) -> torch.Tensor:
    """count float32 values: random signs, exponents and mantissas, with the low 13 bits set
    to ties (0x1000), just above (0x1001) and just below (0x0FFF) on a share of them."""
    x = (torch.rand(count, generator=gen, dtype=torch.float64) * 2 - 1) * 2.0 ** torch.randint(-8, 8, (count,), generator=gen)
    bits = x.float().view(torch.int32)
    low = torch.tensor([0x1000, 0x1001, 0x0FFF], dtype=torch.int32)
    pick = torch.arange(count) % 4
    forced = (bits & ~0x1FFF) | low[pick.clamp(max=2)]
    return torch.where(pick < 3, forced, bits).view(torch.float32)


def probe(values: torch.Tensor, side: str) -> torch.Tensor:
    """GPU outputs [len(values)] for values read as operand `side` ("a" or "b")."""
    out = []
    for start in range(0, len(values), N):
        chunk = values[start:start + N]
        x = torch.zeros(N, N, dtype=torch.float32)
        one = torch.zeros(N, N, dtype=torch.float32)
        if side == "a":
            x[:len(chunk), 0], one[0, :] = chunk, 1.0
            a, b = x, one
        else:
            x[0, :len(chunk)], one[:, 0] = chunk, 1.0
            a, b = one, x
        c = torch.empty(N, N, dtype=torch.float32, device="cuda")
        dot_kernel[(1,)](a.cuda(), b.cuda(), c, N=N)
        c = c.cpu()
        out.append(c[:len(chunk), 0] if side == "a" else c[0, :len(chunk)])
    return torch.cat(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=4096)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    values = probe_values(args.count, torch.Generator().manual_seed(0))
    rows = []
    for side in ("a", "b"):
        got = probe(values, side)
        for mode in ("tf32", "tf32-trunc", "ieee"):
            want = values if mode == "ieee" else tf32_round(values, mode)
            differ = int((got.view(torch.int32) != want.view(torch.int32)).sum())
            rows.append({"operand": side, "mode": mode, "values": len(values), "differing": differ})
    print(f"{'operand':8} {'mode':9} {'values':>7} {'differing':>9}")
    for r in rows:
        print(f"{r['operand']:8} {r['mode']:9} {r['values']:7d} {r['differing']:9d}")
    result = {"device": torch.cuda.get_device_name(), "triton": triton.__version__, "torch": torch.__version__,
              "rows": rows, "matches": sorted({r["mode"] for r in rows if r["differing"] == 0})}
    print("modes that match every output bit:", ", ".join(result["matches"]) or "none")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
