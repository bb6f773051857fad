"""The device time of one chunked forward, stage by stage, ours beside the anchor's.

Ours is impl `gdn`, the anchor flash-linear-attention's chunk forward (impl `fla-chunk`), at
the benchmark shapes (issue #15, step 1: measure the anchor stage by stage). CUDA only, one
GPU, one process.

Shapes and inputs are those of `gdn-verify compare --bench` (gdn_verify/bench_shapes.py through
compare_impls.bench_cases / bench_inputs): H = 16, HV = 32, K = V = 128, bfloat16, a random
initial state and the final state, q and k normalized before the call (no l2norm stage).
Each implementation is called through its adapter, as the bench does. Per shape and
implementation:

* a few warm-up calls (compiles, autotuning), then `--calls` forwards under torch.profiler
  (CPU and CUDA activity; only device activity is read): per GPU kernel its calls per forward,
  mean device time per forward and share of the forward's device time, and per stage the sum;
* the eager wall time of a call, the median of `--wall-calls`, synchronized before and after;
* for our stages, the bytes each must at least move (every input read once, every output
  written once, from the shapes and dtypes; the chunk map's few int32 per chunk left out) and
  the bandwidth that achieves, against `--peak-gbs` (default: the H100 SXM's 3.35 TB/s).

Kernels map to common stages (STAGES): ours by the names of the @triton.jit functions
kernels/*.py launch, flash-linear-attention's by a substring of its kernel names; anything
else (torch ops of the chunk map or of FLA's chunk indices, copies, fills) is stage "other".
An implementation that cannot run here (flash-linear-attention not installed) is reported as
not run, with the reason. Only work the device does is counted: annotation ranges the profiler
also reports on the GPU timeline (the "ProfilerStep*" range spanning each profiled step, any
record_function range) are not kernels and are left out.

`--from-json RAW.json` needs no GPU: it recomputes every run's per-stage rows and totals from
the recorded per-kernel rows through the same aggregation (annotation ranges in a report
written before they were left out are dropped there) and writes --json / --markdown from that.

    python3 benchmarks/stage_breakdown.py --json benchmarks/results/<card>/stage_breakdown.json \\
        --markdown benchmarks/results/<card>/stage_breakdown.md [--shapes T65536 packed] [--impl gdn]
    python3 benchmarks/stage_breakdown.py --from-json benchmarks/results/<card>/stage_breakdown.json \\
        --markdown benchmarks/results/<card>/stage_breakdown.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable, Iterable

from gdn_verify.bench_shapes import BENCH_DENSE_T, BENCH_DTYPE, BENCH_MODEL
from gdn_verify.contract import CHUNK_SIZE
from gdn_verify.files import write_atomic
from gdn_verify.kernels.chunk_map import chunk_count
from gdn_verify.render import md_table

IMPLS = ("gdn", "fla-chunk")
LABELS = {"gdn": "ours", "fla-chunk": "FLA"}
SHAPES = tuple(f"T{T}" for T in BENCH_DENSE_T) + ("packed",)
# Common stage names, in the order of the forward. "wy" (W and U) is a pass of its own in
# flash-linear-attention only: ours forms V' inside the recurrence (kernels/recurrence.py).
STAGES = ("cumsum", "l2norm", "kkt_solve", "wy", "recurrence", "output", "other")
H100_PEAK_GBS = 3350.0  # H100 SXM HBM3, GB/s
# Ranges the profiler puts on the device timeline that are no device work: torch.profiler's
# step range (one per prof.step(), spanning the whole step, named "ProfilerStep#<n>" or
# "ProfilerStep*"). Counting one would add the step's length to stage "other".
ANNOTATION_PREFIXES = ("ProfilerStep",)

# Our kernels: the @triton.jit function each stage module of kernels/ launches, by exact name
# (the profiler reports a Triton kernel under its function's name).
OUR_KERNEL_STAGES = {
    "cumsum_kernel": "cumsum",
    "l2norm_kernel": "l2norm",
    "kkt_solve_kernel": "kkt_solve",
    "recurrence_kernel": "recurrence",
    "output_kernel": "output",
}
# flash-linear-attention's (fla-core 0.6.0) forward kernels, by a substring of their names:
# first match wins. Chunks of 64 take the fused kkt + solve kernel; the unfused pair (and
# solve_tril's merge kernels) are listed so that another version's path lands in the same stage.
FLA_KERNEL_STAGES = (
    ("chunk_local_cumsum", "cumsum"),
    ("l2norm_fwd", "l2norm"),
    ("chunk_gated_delta_rule_fwd_kkt_solve", "kkt_solve"),
    ("chunk_scaled_dot_kkt", "kkt_solve"),
    ("solve_tril", "kkt_solve"),
    ("merge_16x16", "kkt_solve"),
    ("recompute_w_u", "wy"),
    ("chunk_gated_delta_rule_fwd_kernel_h", "recurrence"),
    ("chunk_fwd_kernel_o", "output"),
)


# ----------------------------------------------------------------------------------------
# Pure parts: classification, aggregation, bytes, rendering (tested without a GPU)
# ----------------------------------------------------------------------------------------

def our_stage(name: str) -> str:
    return OUR_KERNEL_STAGES.get(name, "other")


def fla_stage(name: str) -> str:
    return next((stage for pattern, stage in FLA_KERNEL_STAGES if pattern in name), "other")


CLASSIFIERS: dict[str, Callable[[str], str]] = {"gdn": our_stage, "fla-chunk": fla_stage}


def shape_name(case) -> str:
    """The --shapes name of a benchmark case: T<tokens> for one dense sequence, or packed."""
    return "packed" if case.layout == "varlen" else f"T{case.T}"


def our_stage_bytes(d: dict) -> dict[str, int]:
    """Bytes each of our stages must at least move: its inputs read once and its outputs
    written once (what kernels/*.py read and write; a kernel that rereads a tile, e.g. k once
    per value head, moves more).

    d: tokens, chunks, sequences, H, HV, K, V; the element sizes qkv (q, k, v and o), g, beta,
    h0 (0: no initial state) and acc (intermediates, state); l2norm, final_state (bools)."""
    tok, H, HV, K, V = d["tokens"], d["H"], d["HV"], d["K"], d["V"]
    acc = d["acc"]
    qk = tok * H * K * d["qkv"]  # one of q or k
    v = tok * HV * V * d["qkv"]  # v, and o
    per_head = tok * HV * acc  # g_cum
    norms = tok * H * acc if d["l2norm"] else 0  # one of rq or rk
    tm = tok * HV * CHUNK_SIZE * acc  # Tm, [B, T, HV, 64]
    v_new = tok * HV * V * acc
    h = d["chunks"] * HV * K * V * acc  # the state entering each chunk
    state = d["sequences"] * HV * K * V
    beta = tok * HV * d["beta"]
    out = {
        "cumsum": tok * HV * d["g"] + per_head,
        "kkt_solve": qk + beta + per_head + norms + tm,
        "recurrence": (qk + v + beta + per_head + norms + tm + state * d["h0"]
                       + h + v_new + (state * acc if d["final_state"] else 0)),
        "output": 2 * qk + per_head + 2 * norms + h + v_new + v,
    }
    if d["l2norm"]:
        out["l2norm"] = 2 * qk + 2 * norms
    return out


def is_annotation(name: str, user_annotation: bool = False) -> bool:
    """Whether a device-timeline event is an annotation range rather than device work (a kernel,
    a memcpy, a memset): flagged so by the profiler, or named as torch.profiler's step range."""
    return bool(user_annotation) or name.startswith(ANNOTATION_PREFIXES)


def device_events(events: Iterable, cuda) -> list[tuple[str, float]]:
    """(name, microseconds) of the device work among profiler events (torch.profiler's
    FunctionEvent: name, device_type, is_user_annotation, time_range): events on device type
    `cuda` that are not annotation ranges."""
    return [(e.name, e.time_range.elapsed_us()) for e in events
            if e.device_type == cuda and not is_annotation(e.name, getattr(e, "is_user_annotation", False))]


def summarize(events: Iterable[tuple[str, float]], calls: int, classify: Callable[[str], str],
              stage_bytes: dict[str, int] | None = None, peak_gbs: float = H100_PEAK_GBS) -> dict:
    """Device activity of `calls` forwards, (name, microseconds) per kernel launch, as per-forward
    rows: {"total_us", "kernels": [...], "stages": [...]}, each list longest first / in STAGES
    order. A stage with bytes in `stage_bytes` gets its achieved GB/s and fraction of peak."""
    totals: dict[str, tuple[float, float]] = {}
    for name, us in events:
        launches, device_us = totals.get(name, (0, 0.0))
        totals[name] = (launches + 1, device_us + us)
    return aggregate(totals, calls, classify, stage_bytes, peak_gbs)


def aggregate(totals: dict[str, tuple[float, float]], calls: int, classify: Callable[[str], str],
              stage_bytes: dict[str, int] | None = None, peak_gbs: float = H100_PEAK_GBS) -> dict:
    """summarize's rows from per-name totals over `calls` forwards: name -> (launches, device
    microseconds). Annotation ranges (is_annotation by name) are left out."""
    totals = {name: t for name, t in totals.items() if not is_annotation(name)}
    if not totals:
        raise ValueError("the profiler recorded no device activity (CUPTI not attached?)")
    total = sum(us for _, us in totals.values()) / calls
    kernels = sorted(({"name": name, "stage": classify(name), "calls": launches / calls,
                       "us": us / calls, "share": us / calls / total}
                      for name, (launches, us) in totals.items()), key=lambda k: -k["us"])
    stages = []
    for stage in STAGES:
        members = [k for k in kernels if k["stage"] == stage]
        if not members:
            continue
        us = sum(k["us"] for k in members)
        row = {"stage": stage, "kernels": [k["name"] for k in members], "us": us, "share": us / total}
        if stage_bytes and stage in stage_bytes:
            gbs = stage_bytes[stage] / us / 1e3  # bytes per microsecond / 1e3 = GB/s
            row.update(bytes=stage_bytes[stage], gbs=gbs, peak_fraction=gbs / peak_gbs)
        stages.append(row)
    return {"total_us": total, "kernels": kernels, "stages": stages}


def rerender(report: dict, source: str | None = None) -> dict:
    """A copy of a recorded report whose completed runs have their kernel, stage and total rows
    recomputed from the recorded per-kernel rows (calls and microseconds per forward) through
    aggregate; a stage's byte count is the recorded one. The names left out as annotation ranges
    are listed under "rerendered" (with `source`, the file read)."""
    calls = report["settings"]["calls"]
    peak = report["settings"]["peak_gbs"]
    runs, dropped = [], set()
    for run in report["runs"]:
        run = dict(run)
        if run["status"] == "ok":
            dropped |= {k["name"] for k in run["kernels"] if is_annotation(k["name"])}
            totals = {k["name"]: (k["calls"] * calls, k["us"] * calls) for k in run["kernels"]}
            stage_bytes = {s["stage"]: s["bytes"] for s in run["stages"] if "bytes" in s}
            run.update(aggregate(totals, calls, CLASSIFIERS[run["impl"]], stage_bytes or None, peak))
        runs.append(run)
    return {**report, "runs": runs, "rerendered": {"source": source, "annotations_left_out": sorted(dropped)}}


def _us(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _cell(run: dict | None, x, fmt: Callable) -> str:
    """A table cell of one implementation's run: x formatted, "-" when absent, or the run's
    status when it did not complete (not run, not supported, error)."""
    if run is not None and run["status"] != "ok":
        return run["status"]
    return "-" if x is None else fmt(x)


def completed(run: dict | None) -> dict | None:
    """The run, when it completed (status "ok"); else None."""
    return run if run is not None and run["status"] == "ok" else None


def stage_row(run: dict | None, stage: str) -> dict | None:
    """A completed run's row of `stage`; None when absent or the run did not complete."""
    return next((s for s in completed(run)["stages"] if s["stage"] == stage), None) if completed(run) else None


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def summary_table(report: dict) -> list[str]:
    """Markdown: per shape and stage, our and FLA's device time per forward and their ratio,
    then the forward's device total and its eager wall time."""
    runs = {(r["shape"], r["impl"]): r for r in report["runs"]}
    rows = []
    for shape in dict.fromkeys(r["shape"] for r in report["runs"]):
        ours, fla = runs.get((shape, "gdn")), runs.get((shape, "fla-chunk"))
        for stage in STAGES:
            a, b = stage_row(ours, stage), stage_row(fla, stage)
            if a is None and b is None:
                continue
            a_us, b_us = a and a["us"], b and b["us"]
            bandwidth = a if a is not None and "gbs" in a else None  # our stages with a byte count
            rows.append([shape, stage, _cell(ours, a_us, _us), _cell(ours, a and a["share"], "{:.0%}".format),
                         _cell(ours, bandwidth, lambda s: f"{s['gbs']:.0f} ({s['peak_fraction']:.0%})"),
                         _cell(fla, b_us, _us), _cell(fla, b and b["share"], "{:.0%}".format), _ratio(a_us, b_us)])
        for what, key in (("total (device)", "total_us"), ("wall (eager call)", "wall_us")):
            a, b = (completed(run)[key] if completed(run) else None for run in (ours, fla))
            rows.append([shape, what, _cell(ours, a, _us), "", "", _cell(fla, b, _us), "", _ratio(a, b)])
    peak = report["settings"]["peak_gbs"]
    return md_table(["shape", "stage", "ours us", "ours share", f"ours GB/s (of {peak:.0f})", "FLA us", "FLA share",
                     "ours / FLA"], rows)


def render_markdown(report: dict) -> str:
    """The side-by-side breakdown from the JSON report: machine and settings, the stage table,
    then every kernel of every run."""
    m, s = report["machine"], report["settings"]
    lines = ["# Stage breakdown of one chunked forward: ours (gdn) beside flash-linear-attention (fla-chunk)", "",
             f"{m['gpu']}; torch {m['torch']}, triton {m['triton']}, fla {m['fla'] or 'not installed'}.", "",
             f"Shapes: H = {s['model']['H']}, HV = {s['model']['HV']}, K = {s['model']['K']}, V = {s['model']['V']}, "
             f"{s['dtype']}, initial and final state, q and k normalized before the call. Device time per forward: "
             f"the mean over {s['calls']} profiled forwards after {s['warmup_calls']} warm-up calls; wall: the median "
             f"eager call of {s['wall_calls']}. GB/s: the bytes a stage must at least move (inputs read once, "
             "outputs written once) over its device time. Times in microseconds; ours / FLA below 1: ours faster.",
             ""]
    if "rerendered" in report:
        left_out = report["rerendered"]["annotations_left_out"]
        lines += [f"Re-rendered (`--from-json {report['rerendered']['source']}`): stage rows and totals recomputed "
                  "from the recorded per-kernel rows" + (f"; left out as annotation ranges, not device work: "
                                                         f"{', '.join(left_out)}." if left_out else "."), ""]
    lines += [f"Not run: {spec}: {why}" for spec, why in report["not_run"].items()]
    lines += summary_table(report) + [""]
    for run in report["runs"]:
        lines.append(f"## {run['label']}: {run['impl']}")
        lines.append("")
        if run["status"] != "ok":
            lines += [f"{run['status']}: {run['detail']}", ""]
            continue
        lines += [f"Device {_us(run['total_us'])} us per forward, wall {_us(run['wall_us'])} us."]
        lines += [f"Warning: {w}" for w in run["warnings"]] + [""]
        lines += md_table(["kernel", "stage", "calls / forward", "us / forward", "share"],
                          [[k["name"], k["stage"], f"{k['calls']:g}", _us(k["us"]), f"{k['share']:.1%}"]
                           for k in run["kernels"]])
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# GPU parts
# ----------------------------------------------------------------------------------------

def problem_dims(case, inputs: dict) -> dict:
    """our_stage_bytes' description of a benchmark case, element sizes from its inputs."""
    q, h0 = inputs["q"], inputs.get("initial_state")
    return {"tokens": case.tokens, "chunks": chunk_count(case.seq_lens), "sequences": case.N,
            **{name: getattr(case, name) for name in ("H", "HV", "K", "V")},
            "qkv": q.element_size(), "g": inputs["g"].element_size(), "beta": inputs["beta"].element_size(),
            "h0": 0 if h0 is None else h0.element_size(),
            "acc": 8 if q.element_size() == 8 else 4,  # kernels/_common.compute_dtype
            "l2norm": case.l2norm, "final_state": True}


def profiled_events(forward: Callable[[], object], calls: int) -> list[tuple[str, float]]:
    """(name, microseconds) of the device work of `calls` forwards. A profiler warm-up
    step precedes them (it is recorded and dropped), and the events are read once the trace
    is complete (on_trace_ready): kernel events were seen missing otherwise."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, schedule

    events: list[tuple[str, float]] = []

    def ready(prof):
        events.extend(device_events(prof.events(), DeviceType.CUDA))

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], on_trace_ready=ready,
                 schedule=schedule(wait=0, warmup=1, active=calls, repeat=1)) as prof:
        for _ in range(calls + 1):
            forward()
            torch.cuda.synchronize()
            prof.step()
    return events


def wall_us(forward: Callable[[], object], calls: int) -> float:
    """Median wall time of an eager call, synchronized before and after, in microseconds."""
    import torch

    times = []
    for _ in range(calls):
        torch.cuda.synchronize()
        start = time.perf_counter()
        forward()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times)


def warmed_forward(adapter, case, inputs: dict, warmup: int) -> Callable[[], object]:
    """One forward of `adapter` on the case's inputs, called `warmup` times (compiles,
    autotuning) and synchronized; the inputs' conversions happen once, outside what is measured."""
    import torch

    call = adapter.prepare(case, inputs)

    def forward():
        return adapter.fn(*call.args, **call.kwargs)

    for _ in range(warmup):
        forward()
    torch.cuda.synchronize()
    return forward


def profile_run(adapter, case, inputs: dict, args: argparse.Namespace) -> dict:
    """One implementation at one shape: warm up, profile, time; the run's result fields."""
    forward = warmed_forward(adapter, case, inputs, args.warmup)
    stage_bytes = our_stage_bytes(problem_dims(case, inputs)) if adapter.spec == "gdn" else None
    result = summarize(profiled_events(forward, args.calls), args.calls, CLASSIFIERS[adapter.spec], stage_bytes,
                       args.peak_gbs)
    result["wall_us"] = wall_us(forward, args.wall_calls)
    result["warnings"] = []
    if all(k["stage"] == "other" for k in result["kernels"]):
        result["warnings"].append("no kernel name matched a stage: the profiler names kernels otherwise than "
                                  "the stage map of benchmarks/stage_breakdown.py")
    return result


def machine() -> dict:
    import torch
    import triton

    from gdn_verify.impls import fla_version

    return {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "fla": fla_version(), "cuda": torch.version.cuda}


def run_all(args: argparse.Namespace) -> dict:
    import torch

    from gdn_verify.adapters import NotSupported
    from gdn_verify.compare_impls import bench_cases, bench_inputs
    from gdn_verify.impls import ImplError, resolve_impl

    adapters, not_run = {}, {}
    for spec in args.impl:
        try:
            adapters[spec] = resolve_impl(spec, "cuda")
        except ImplError as exc:  # e.g. flash-linear-attention not installed: said, never skipped silently
            not_run[spec] = str(exc)
            print(f"stage_breakdown: {spec} not run: {exc}", file=sys.stderr)
    runs = []
    for label, case in bench_cases():
        shape = shape_name(case)
        if shape not in args.shapes:
            continue
        inputs = bench_inputs(case, "cuda")
        for spec in args.impl:
            run = {"shape": shape, "label": label, "impl": spec, "T": case.tokens, "sequences": case.N,
                   "chunks": chunk_count(case.seq_lens), "status": "ok", "detail": ""}
            adapter = adapters.get(spec)
            reason = None if adapter is None else adapter.unsupported(case)
            if adapter is None:
                run.update(status="not run", detail=not_run[spec])
            elif reason is not None:
                run.update(status="not supported", detail=reason)
            else:
                print(f"stage_breakdown: {shape} {spec}", file=sys.stderr)
                try:
                    run.update(profile_run(adapter, case, inputs, args))
                except NotSupported as exc:
                    run.update(status="not supported", detail=str(exc))
                except Exception as exc:  # an implementation failing a shape is a finding, the others still run
                    run.update(status="error", detail=f"{type(exc).__name__}: {exc}")
            runs.append(run)
        del inputs
        torch.cuda.empty_cache()
    return {"benchmark": "stage_breakdown", "machine": machine(),
            "settings": {"shapes": list(args.shapes), "impls": list(args.impl), "calls": args.calls,
                         "warmup_calls": args.warmup, "wall_calls": args.wall_calls, "peak_gbs": args.peak_gbs,
                         "model": dict(BENCH_MODEL), "dtype": BENCH_DTYPE, "l2norm": False},
            "not_run": not_run, "runs": runs}


def write_report(report: dict, json_path: str | None, markdown_path: str | None,
                 render: Callable[[dict], str]) -> None:
    """The report as JSON and its Markdown (`render`), each written whole or not at all."""
    if json_path:
        write_atomic(json_path, json.dumps(report, indent=2) + "\n")
        print(f"wrote {json_path}")
    if markdown_path:
        write_atomic(markdown_path, render(report) + "\n")
        print(f"wrote {markdown_path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES), metavar="SHAPE",
                        help=f"benchmark shapes to run, of {', '.join(SHAPES)} (default: all)")
    parser.add_argument("--impl", nargs="+", choices=IMPLS, default=list(IMPLS),
                        help="implementations to profile (default: both)")
    parser.add_argument("--calls", type=int, default=5, help="forwards profiled per run (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="calls before profiling: compiles and autotuning (default: %(default)s)")
    parser.add_argument("--wall-calls", type=int, default=20,
                        help="eager calls timed for the wall-time median (default: %(default)s)")
    parser.add_argument("--peak-gbs", type=float, default=H100_PEAK_GBS,
                        help="memory bandwidth the achieved GB/s is compared with (default: H100, %(default)s)")
    parser.add_argument("--from-json", metavar="RAW", help="measure nothing: recompute the stage rows and totals "
                        "of the report RAW from its per-kernel rows, then write --json / --markdown (no GPU needed)")
    parser.add_argument("--json", metavar="PATH", help="write the report (every row, the machine) here")
    parser.add_argument("--markdown", metavar="PATH", help="write the side-by-side breakdown here")
    args = parser.parse_args(argv)
    for name in ("calls", "warmup", "wall_calls"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')}: expected at least {0 if name == 'warmup' else 1}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            report = rerender(json.load(f), args.from_json)
    else:
        import torch

        if not torch.cuda.is_available():
            print("stage_breakdown: needs a CUDA device", file=sys.stderr)
            return 2
        report = run_all(args)
    print("\n".join(summary_table(report)))
    for run in report["runs"]:
        if run["status"] != "ok":
            print(f"{run['shape']} {run['impl']}: {run['status']}: {run['detail']}", file=sys.stderr)
    write_report(report, args.json, args.markdown, render_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
