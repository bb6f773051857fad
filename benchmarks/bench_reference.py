"""Speed of the float64 references (issue 2, "Done when"), printed as a table and saved as JSON.

Shapes: H = 4 key heads, HV = 8 value heads, K = V = 64, with initial and final state and
l2norm; one sequence of T = 4096; a packed batch of 64 sequences of 1..128 tokens (fixed
lengths, spread evenly, interleaved); one sequence of T = 128, the longest of the batch.
Each reference is timed as a user calls it (validation and conversions included): median of
`--repeats` calls after one warm-up call. For JAX the first call per shape compiles; it is
timed alone, and `compile_s` = first call - median. JAX computes on its default backend.

The target: the batch of 64 sequences costs at most 3x one sequence of 128 tokens. The PyTorch
recurrent reference is also timed on the 64 sequences called one by one, which is what the
vectorization (one step per token of the longest sequence, all sequences at once) saves.

    python benchmarks/bench_reference.py [--json PATH] [--repeats N] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from gdn_verify.platform import fingerprint
from gdn_verify.reference import (
    chunked_gated_delta_rule,
    jax_recurrent_gated_delta_rule,
    recurrent_gated_delta_rule,
)

H, HV, K, V = 4, 8, 64, 64
LONG_T = 4096
N_SEQS, LONGEST = 64, 128
TARGET_RATIO = 3.0
SPLIT_CASE = f"varlen{N_SEQS}-split"  # the same sequences, one call each
DEFAULT_JSON = Path(__file__).parent / "results" / "reference_cpu.json"


def varlen_lengths() -> list[int]:
    """64 lengths from 1 to 128, evenly spread, in an interleaved (not sorted) order."""
    lengths = [1 + i * (LONGEST - 1) // (N_SEQS - 1) for i in range(N_SEQS)]
    return [lengths[(17 * i) % N_SEQS] for i in range(N_SEQS)]  # 17 is coprime with 64


def make_inputs(seq_lens: list[int], packed: bool, device: str) -> dict:
    B, T = (1, sum(seq_lens)) if packed else (len(seq_lens), seq_lens[0])
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    args = dict(q=randn(B, T, H, K), k=randn(B, T, H, K), v=randn(B, T, HV, V),
                g=-torch.rand(B, T, HV, generator=gen, dtype=torch.float64),
                beta=torch.rand(B, T, HV, generator=gen, dtype=torch.float64),
                initial_state=randn(len(seq_lens), HV, K, V),
                cu_seqlens=torch.tensor([0, *seq_lens]).cumsum(0) if packed else None)
    args = {name: x.to(device) if torch.is_tensor(x) else x for name, x in args.items()}
    return dict(args, output_final_state=True, l2norm=True)


def on_cpu(args: dict) -> dict:
    return {name: x.cpu() if torch.is_tensor(x) else x for name, x in args.items()}


def timed(fn, device: str) -> float:
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(fn, repeats: int, device: str) -> dict:
    first_s = timed(fn, device)
    times = [timed(fn, device) for _ in range(repeats)]
    median = statistics.median(times)
    return {"median_s": median, "min_s": min(times), "first_call_s": first_s, "times_s": times}


def jax_available() -> bool:
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def jax_backend() -> str:
    """Where JAX computes: its default backend (a GPU when jax has one), whatever torch uses."""
    import jax

    return jax.default_backend()


def run(repeats: int, device: str) -> dict:
    cases = {
        f"T{LONG_T}": make_inputs([LONG_T], packed=False, device=device),
        f"varlen{N_SEQS}": make_inputs(varlen_lengths(), packed=True, device=device),
        f"T{LONGEST}": make_inputs([LONGEST], packed=False, device=device),
    }
    references = {
        "torch-recurrent": lambda a: recurrent_gated_delta_rule(**a),
        "torch-chunked": lambda a: chunked_gated_delta_rule(**a),
    }
    if jax_available():
        references["jax-recurrent"] = lambda a: jax_recurrent_gated_delta_rule(**on_cpu(a))
    results = []
    for ref_name, ref in references.items():
        for case_name, args in cases.items():
            ref_device = jax_backend() if ref_name.startswith("jax") else device
            r = measure(lambda: ref(args), repeats, ref_device)
            r["device"] = ref_device
            r.update(reference=ref_name, case=case_name, tokens=int(args["q"].shape[0] * args["q"].shape[1]))
            if ref_name.startswith("jax"):
                r["compile_s"] = r["first_call_s"] - r["median_s"]
            results.append(r)

    # The same 64 sequences called one at a time: what the vectorization saves.
    packed_args = cases[f"varlen{N_SEQS}"]
    offsets = packed_args["cu_seqlens"].tolist()
    singles = [dict(packed_args, cu_seqlens=None, initial_state=packed_args["initial_state"][n:n + 1],
                    **{name: packed_args[name][:, start:end] for name in ("q", "k", "v", "g", "beta")})
               for n, (start, end) in enumerate(zip(offsets[:-1], offsets[1:]))]
    r = measure(lambda: [recurrent_gated_delta_rule(**a) for a in singles], repeats, device)
    r["device"] = device
    r.update(reference="torch-recurrent", case=SPLIT_CASE, tokens=offsets[-1])
    results.append(r)

    median = {(r["reference"], r["case"]): r["median_s"] for r in results}
    ratios = []
    for ref_name in references:
        batch, single = median[(ref_name, f"varlen{N_SEQS}")], median[(ref_name, f"T{LONGEST}")]
        ratios.append({"reference": ref_name, "what": f"varlen{N_SEQS} / T{LONGEST}", "ratio": batch / single,
                       "target": TARGET_RATIO, "met": batch / single <= TARGET_RATIO})
    ratios.append({"reference": "torch-recurrent", "what": f"{SPLIT_CASE} / varlen{N_SEQS}",
                   "ratio": median[("torch-recurrent", SPLIT_CASE)] / median[("torch-recurrent", f"varlen{N_SEQS}")],
                   "target": None, "met": None})
    return {"results": results, "ratios": ratios}


def environment(device: str) -> dict:
    env = fingerprint(device)
    env["jax"] = env["jax_backend"] = None
    if jax_available():
        import jax

        env["jax"], env["jax_backend"] = jax.__version__, jax_backend()
    env["load_average_1_5_15"] = os.getloadavg()  # other processes on the machine skew CPU times
    env["cpu_count"] = os.cpu_count()
    return env


def print_report(report: dict, console: Console) -> None:
    table = Table(title=f"float64 references: H={H}, HV={HV}, K=V={K}; median of {report['repeats']} calls")
    for column in ("reference", "device", "case", "tokens", "median ms", "min ms", "us/token", "compile ms"):
        table.add_column(column, justify="left" if column in ("reference", "device", "case") else "right")
    for r in report["results"]:
        compile_ms = f"{1e3 * r['compile_s']:.0f}" if "compile_s" in r else ""
        table.add_row(r["reference"], r["device"], r["case"], str(r["tokens"]), f"{1e3 * r['median_s']:.1f}",
                      f"{1e3 * r['min_s']:.1f}", f"{1e6 * r['median_s'] / r['tokens']:.1f}", compile_ms)
    console.print(table)
    ratios = Table(title="ratios of median times")
    for column in ("reference", "ratio of", "ratio", "target"):
        ratios.add_column(column)
    for r in report["ratios"]:
        target = "" if r["target"] is None else f"<= {r['target']:g}x: {'met' if r['met'] else 'NOT met'}"
        ratios.add_row(r["reference"], r["what"], f"{r['ratio']:.2f}x", target)
    console.print(ratios)
    env = report["environment"]
    console.print(f"torch {env['torch']}, jax {env['jax']}, numpy {env['numpy']}, "
                  f"torch threads {env['threads']['torch']}, {env['cpu_model']}, "
                  f"load average {env['load_average_1_5_15']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"output (default {DEFAULT_JSON})")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="device of the PyTorch references (JAX uses its default)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    opts = parser.parse_args()
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    report = {"repeats": opts.repeats, "device": opts.device, **run(opts.repeats, opts.device),
              "environment": environment(opts.device)}
    print_report(report, Console(width=110))
    opts.json.parent.mkdir(parents=True, exist_ok=True)
    opts.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {opts.json}")


if __name__ == "__main__":
    main()
