"""Hardware counters of one chunked forward, stage by stage, ours (impl `gdn`) beside
flash-linear-attention's (impl `fla-chunk`), under Nsight Compute (issue #15, step 1: each of our
stages gets a budget from its FLA counterpart; which stage is over it, and why).

Cases, inputs, adapters and kernel -> stage maps are benchmarks/stage_breakdown.py's. Per
implementation and shape the driver runs `ncu NCU_FLAGS --metrics METRICS python3 <this file>
--worker ...`: the worker warms up (compiles, autotuning), then runs one forward between
cudaProfilerStart and Stop, each of whose kernels ncu replays alone (caches flushed between
passes, clocks not locked). From ncu's raw CSV page (a row per launch) come, per kernel and per
budget stage (FLA's "wy" pass is inside our recurrence, so that budget is "wy+recurrence"): device
time, DRAM bytes and GB/s, bytes per token (ours also over the least a stage must move,
stage_breakdown.our_stage_bytes), occupancy and what limits it, registers, shared memory,
throughputs and the top warp stall reasons (cycles per issued instruction; "selected", the issue
itself, not ranked). Times and bytes are summed over launches, the rest is duration-weighted; a
metric ncu reports as "n/a", or not at all, is None, never 0, and a sum with it unknown.

ncu missing, failing (ERR_NVGPUCTRPERM: no access to the counters), timing out or printing no
kernel: the run is reported as not run with the tail of its output. A metric this ncu fails
naming is dropped (the run's "metrics_unavailable") and the run retried. The JSON keeps ncu's
output of each run; `--from-csv IMPL=FILE ...` parses saved output, no GPU needed.

    python3 benchmarks/ncu_stages.py --json benchmarks/results/<card>/ncu_stages.json \\
        --markdown benchmarks/results/<card>/ncu_stages.md [--shapes T65536] [--impl gdn] [--ncu PATH]
    python3 benchmarks/ncu_stages.py --from-csv gdn=ours.csv fla-chunk=fla.csv --shapes T65536
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).parent))
import stage_breakdown as sb  # noqa: E402  (beside this file)

from gdn_verify.files import write_atomic  # noqa: E402
from gdn_verify.render import md_table  # noqa: E402

STALL_REASONS = ("long_scoreboard", "short_scoreboard", "wait", "barrier", "math_pipe_throttle", "mio_throttle",
                 "lg_throttle", "not_selected", "selected", "dispatch_stall", "membar", "no_instruction", "drain",
                 "sleeping", "tex_throttle", "imc_miss", "branch_resolving")
# What each launch is profiled for: our key -> ncu's raw metric name (ncu 2025.x, sm_90). The
# limit_* are the blocks per SM each resource allows; tensor: hmma (mma.sync) and gmma (wgmma).
METRICS = {
    "duration_ns": "gpu__time_duration.sum", "dram_read": "dram__bytes_read.sum",
    "dram_write": "dram__bytes_write.sum", "occupancy": "sm__warps_active.avg.pct_of_peak_sustained_active",
    "occupancy_theoretical": "sm__maximum_warps_per_active_cycle_pct",
    **{f"limit_{r}": f"launch__occupancy_limit_{r}" for r in ("registers", "shared_mem", "warps", "blocks")},
    "registers": "launch__registers_per_thread", "smem_static": "launch__shared_mem_per_block_static",
    "smem_dynamic": "launch__shared_mem_per_block_dynamic", "grid": "launch__grid_size", "block": "launch__block_size",
    "sm_pct": "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "dram_pct": "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "tensor_hmma_pct": "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
    "tensor_gmma_pct": "sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active",
    **{f"stall_{r}": f"smsp__average_warps_issue_stalled_{r}_per_issue_active.ratio" for r in STALL_REASONS},
}
SUMMED = ("duration_ns", "dram_read", "dram_write")
STAGE_KEYS = ("launches", "us", "dram_read", "dram_write", "bytes", "gbs", "occupancy", "top_stalls")
NCU_FLAGS = ("--clock-control", "none", "--profile-from-start", "off", "--target-processes", "all", "--csv",
             "--page", "raw", "--print-units", "base")
# ncu's decimal unit prefixes, for output written without --print-units base: to ns and bytes.
UNIT_SCALE = {"nsecond": 1, "usecond": 1e3, "msecond": 1e6, "second": 1e9, "byte": 1, "Kbyte": 1e3, "Mbyte": 1e6,
              "Gbyte": 1e9}


def budget_stage(stage: str) -> str:
    return "wy+recurrence" if stage in ("wy", "recurrence") else stage


BUDGET_STAGES = tuple(dict.fromkeys(budget_stage(s) for s in sb.STAGES))


def _value(cell: str | None, unit: str) -> float | None:
    """A metric cell in base units (thousands separators dropped); None: "n/a", empty, absent."""
    try:
        return float(cell.replace(",", "")) * UNIT_SCALE.get(unit.split("/")[0], 1)
    except (AttributeError, ValueError):
        return None


def parse_ncu_csv(text: str) -> list[dict]:
    """The launches in ncu's `--csv --page raw` output, in order: {"name", METRICS keys}. Lines
    before the header (==PROF== lines, the program's output) and lines after it that are not
    quoted CSV rows of the header's width are skipped; the units row has no kernel name."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"') and '"Kernel Name"' in line), None)
    if start is None:
        raise ValueError('no CSV header with a "Kernel Name" column in the ncu output')
    header, *rows = csv.reader(line for line in lines[start:] if line.startswith('"'))
    rows = [row for row in rows if len(row) == len(header) and row != header]
    name = header.index("Kernel Name")
    units = dict(zip(header, next((row for row in rows if not row[name]), [""] * len(header))))
    launches = [dict(zip(header, row)) for row in rows if row[name]]
    if not launches:
        raise ValueError("no kernel rows in the ncu output: nothing ran between cudaProfilerStart and Stop")
    return [{"name": cells["Kernel Name"], **{key: _value(cells.get(metric), units.get(metric, ""))
                                             for key, metric in METRICS.items()}} for cells in launches]


def _sum(values: list) -> float | None:
    return None if any(v is None for v in values) else sum(values)


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _mean(values: list, weights: list) -> float | None:
    """The weighted mean of the known values (all their weights unknown or zero: the plain mean)."""
    pairs = [(v, w or 0) for v, w in zip(values, weights) if v is not None]
    total = sum(w for _, w in pairs)
    if not pairs:
        return None
    return sum(v * w for v, w in pairs) / total if total else sum(v for v, _ in pairs) / len(pairs)


def combine(launches: list[dict]) -> dict:
    """The row of a group of launches: one kernel's, or one stage's."""
    def column(key: str) -> list:
        return [launch[key] for launch in launches]

    row = {key: _sum(column(key)) if key in SUMMED else _mean(column(key), column("duration_ns")) for key in METRICS}
    stalls = {key[len("stall_"):]: row.pop(key) for key in list(row) if key.startswith("stall_")}
    ranked = sorted(((r, v) for r, v in stalls.items() if v is not None and r != "selected"), key=lambda s: -s[1])
    limits = [(row[key], key[len("limit_"):]) for key in row if key.startswith("limit_") and row[key] is not None]
    row.update(launches=len(launches), us=_div(row["duration_ns"], 1e3), bytes=_sum([row["dram_read"],
               row["dram_write"]]), smem=_sum([row["smem_static"], row["smem_dynamic"]]), stalls=stalls,
               top_stalls=ranked[:3], limiter=min(limits) if limits else None)
    row["gbs"] = _div(row["bytes"], row["duration_ns"])  # bytes per ns = GB/s
    return row


def summarize(launches: list[dict], classify: Callable[[str], str], tokens: int,
              min_bytes: dict[str, int] | None = None) -> dict:
    """Per kernel (longest first) and per budget stage (BUDGET_STAGES order) rows of one forward."""
    groups: dict[str, list[dict]] = {}
    for launch in launches:
        groups.setdefault(launch["name"], []).append(launch)
    kernels = sorted(({"name": name, "stage": classify(name), **combine(group)} for name, group in groups.items()),
                     key=lambda k: -(k["us"] or 0))
    least = {budget_stage(s): b for s, b in (min_bytes or {}).items()}
    stages = []
    for stage in BUDGET_STAGES:
        members = [launch for launch in launches if budget_stage(classify(launch["name"])) == stage]
        if not members:
            continue
        row = combine(members)
        stages.append({"stage": stage, "kernels": list(dict.fromkeys(launch["name"] for launch in members)),
                       **{key: row[key] for key in STAGE_KEYS}, "bytes_per_token": _div(row["bytes"], tokens)})
        if stage in least:
            stages[-1].update(min_bytes=least[stage], over_min=_div(row["bytes"], least[stage]))
    return {"total_us": _div(_sum([launch["duration_ns"] for launch in launches]), 1e3), "kernels": kernels,
            "stages": stages}


def _tail(text: str, chars: int = 2000) -> str:
    return text.strip()[-chars:] or "(no output)"


def finish(run: dict, output: str, failure: str | None = None, log: str = "") -> dict:
    """A run's entry from ncu's output: summarized, or not run (`failure`, or why the output did
    not parse) with the tail of `log`, ncu's messages."""
    run = {**run, "ncu_output": output}
    if failure is None:
        try:
            launches = parse_ncu_csv(output)
        except ValueError as exc:
            failure = f"{exc}; ncu said: {_tail(log)}" if log else str(exc)
        else:
            return {**run, "status": "ok", **summarize(launches, sb.CLASSIFIERS[run["impl"]], run["T"],
                                                       run.get("min_bytes"))}
    return {**run, "status": "not run", "detail": failure}


def _num(x: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def _f(row: dict | None, key: str, fmt: str = "{:.1f}") -> str:
    return _num(None if row is None else row.get(key), fmt)


def _stalls(row: dict | None) -> str:
    return ", ".join(f"{r} {v:.2f}" for r, v in row["top_stalls"]) if row and row["top_stalls"] else "-"


def _ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    return None if a is None or b is None else _div(a[key], b[key])


def stage_table(ours: dict | None, fla: dict | None) -> list[str]:
    """Markdown: per budget stage ours beside FLA, the forward's total, and the stages over budget."""
    rows, over = [], []
    for stage in BUDGET_STAGES:
        a, b = sb.stage_row(ours, stage), sb.stage_row(fla, stage)
        if a is None and b is None:
            continue
        ratio = _ratio(a, b, "us")
        rows.append([stage, _f(a, "us"), _f(b, "us"), _num(ratio, "{:.2f}"), _f(a, "gbs", "{:.0f}"),
                     _f(b, "gbs", "{:.0f}"), _f(a, "bytes_per_token", "{:.0f}"), _f(b, "bytes_per_token", "{:.0f}"),
                     _f(a, "over_min", "{:.2f}"), _stalls(a), _stalls(b)])
        if ratio is not None and ratio > 1:
            over.append(f"{stage} ({ratio:.2f}x)")
    a, b = sb.completed(ours), sb.completed(fla)
    rows.append(["total", _f(a, "total_us"), _f(b, "total_us"), _num(_ratio(a, b, "total_us"), "{:.2f}")] + [""] * 7)
    return md_table(["stage", "ours us", "FLA us", "ours / FLA", "ours GB/s", "FLA GB/s", "ours B/token",
                     "FLA B/token", "ours DRAM / least", "ours top stalls", "FLA top stalls"], rows) + [
        "", f"Over budget (ours slower): {', '.join(over) or 'none'}."]


def kernel_table(run: dict) -> list[str]:
    return md_table(
        ["kernel", "stage", "launches", "us", "GB/s", "DRAM %", "SM %", "tensor % hmma / gmma", "occupancy % / theor.",
         "limited by (blocks/SM)", "regs", "smem KB", "grid x block", "top stalls"],
        [[k["name"], k["stage"], str(k["launches"]), _f(k, "us"), _f(k, "gbs", "{:.0f}"), _f(k, "dram_pct"),
          _f(k, "sm_pct"), f"{_f(k, 'tensor_hmma_pct')} / {_f(k, 'tensor_gmma_pct')}",
          f"{_f(k, 'occupancy')} / {_f(k, 'occupancy_theoretical')}",
          f"{k['limiter'][1]} ({k['limiter'][0]:g})" if k["limiter"] else "-", _f(k, "registers", "{:.0f}"),
          _num(_div(k["smem"], 1024)), f"{_f(k, 'grid', '{:.0f}')} x {_f(k, 'block', '{:.0f}')}", _stalls(k)]
         for k in run["kernels"]])


def render_markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    lines = ["# Hardware counters of one chunked forward: ours (gdn) beside flash-linear-attention (fla-chunk)", "",
             "; ".join(f"{key}: {value}" for key, value in m.items()) + ".", "",
             f"One forward under ncu after {s['warmup_calls'] or 'the'} warm-up calls, each kernel replayed alone "
             "(caches flushed between passes, clocks not locked). us: ncu's gpu__time_duration; GB/s: DRAM bytes "
             "read + written per ns; B/token: those bytes per token; ours DRAM / least: over the bytes the stage "
             "must at least move; stalls: cycles per issued instruction stalled for the reason (duration-weighted); "
             "wy+recurrence: FLA's wy pass is inside our recurrence.", ""]
    runs = {(r["shape"], r["impl"]): r for r in report["runs"]}
    for shape in dict.fromkeys(r["shape"] for r in report["runs"]):
        ours, fla = runs.get((shape, "gdn")), runs.get((shape, "fla-chunk"))
        lines += [f"## {(ours or fla)['label']}", ""]
        for run in (r for r in (ours, fla) if r is not None and r["status"] != "ok"):
            lines += [f"{sb.LABELS[run['impl']]} {run['status']}: {run['detail']}", ""]
        lines += stage_table(ours, fla) + [""]
        for run in filter(sb.completed, (ours, fla)):
            lines += [f"### {sb.LABELS[run['impl']]} ({run['impl']}): {_f(run, 'total_us')} us", ""]
            if run.get("metrics_unavailable"):
                lines += [f"Not known to this ncu: {', '.join(run['metrics_unavailable'])}.", ""]
            lines += kernel_table(run) + [""]
    return "\n".join(lines)


def base_run(impl: str, shape: str) -> tuple[dict, object]:
    """A run's fields before it is profiled, and its benchmark case."""
    from gdn_verify.compare_impls import bench_cases

    label, case = next((label, case) for label, case in bench_cases() if sb.shape_name(case) == shape)
    return {"shape": shape, "label": label, "impl": impl, "T": case.tokens, "status": "not run", "detail": ""}, case


def profile(impl: str, shape: str, metrics: dict[str, str], args: argparse.Namespace) -> dict:
    """One implementation at one shape under ncu. A metric ncu fails naming leaves `metrics`
    (later runs do without it too) and the run is retried."""
    run = base_run(impl, shape)[0]
    with tempfile.TemporaryDirectory() as tmp:
        info_path = Path(tmp) / "worker.json"
        while True:
            info_path.unlink(missing_ok=True)
            command = [args.ncu, *NCU_FLAGS, "--metrics", ",".join(metrics.values()), sys.executable,
                       str(Path(__file__).resolve()), "--worker", "--impl", impl, "--shapes", shape,
                       "--warmup", str(args.warmup), "--info", str(info_path)]
            try:  # a session of its own: a timeout ends the worker with ncu
                proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)
            except OSError as exc:
                return finish(run, "", f"ncu could not be started ({args.ncu}): {exc}")
            timed_out = False
            try:
                out, err = proc.communicate(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                (out, err), timed_out = proc.communicate(), True
            log = "\n".join([line for line in out.splitlines() if line.startswith("==")] + err.splitlines())
            said = "\n".join(line for line in log.splitlines() if line.startswith("=="))
            if timed_out:
                return finish(run, out, f"ncu timed out after {args.timeout} s: {_tail(log)}")
            refused = [key for key, name in metrics.items() if proc.returncode and name.split(".")[0] in said]
            if not refused or len(refused) == len(metrics):
                break
            print(f"ncu_stages: ncu refused {', '.join(metrics.pop(key) for key in refused)}; retrying without",
                  file=sys.stderr)
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
    run["metrics_unavailable"] = [name for key, name in METRICS.items() if key not in metrics]
    if info.get("status", "ok") != "ok":  # the worker said why: not run, not supported, error
        return {**run, **info, "ncu_output": out, "log_tail": _tail(log)}
    run.update({key: info[key] for key in ("min_bytes",) if key in info})
    return finish(run, out, f"ncu exited {proc.returncode}: {_tail(log)}" if proc.returncode else None, log)


def worker(args: argparse.Namespace) -> int:
    """The process ncu launches: warm up, then one forward between cudaProfilerStart and Stop.
    What ncu's output cannot say (the status, our stages' least bytes) goes to --info."""
    import torch

    from gdn_verify.adapters import NotSupported
    from gdn_verify.compare_impls import bench_inputs
    from gdn_verify.impls import ImplError, resolve_impl

    impl, (_, case) = args.impl[0], base_run(args.impl[0], args.shapes[0])
    info = {"status": "ok", "detail": ""}
    try:
        adapter = resolve_impl(impl, "cuda")
        reason = adapter.unsupported(case)
        if reason is not None:
            raise NotSupported(reason)
        inputs = bench_inputs(case, "cuda")
        forward = sb.warmed_forward(adapter, case, inputs, args.warmup)
        if impl == "gdn":
            info["min_bytes"] = sb.our_stage_bytes(sb.problem_dims(case, inputs))
        torch.cuda.profiler.start()
        forward()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    except ImplError as exc:  # e.g. flash-linear-attention not installed
        info.update(status="not run", detail=str(exc))
    except NotSupported as exc:
        info.update(status="not supported", detail=str(exc))
    except Exception as exc:  # reported by the driver (traceback in the run's log_tail); the others still run
        traceback.print_exc()
        info.update(status="error", detail=f"{type(exc).__name__}: {exc}")
    write_atomic(args.info, json.dumps(info) + "\n")
    return 1 if info["status"] == "error" else 0


def ncu_version(ncu: str) -> str | None:
    try:
        out = subprocess.run([ncu, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((line.strip() for line in reversed(out.splitlines()) if line.strip()), None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", "--shape", nargs="+", choices=sb.SHAPES, default=["T65536"], metavar="SHAPE",
                        help=f"benchmark shapes, of {', '.join(sb.SHAPES)} (default: %(default)s)")
    parser.add_argument("--impl", nargs="+", choices=sb.IMPLS, default=list(sb.IMPLS),
                        help="implementations to profile (default: both)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="calls before the profiled one: compiles and autotuning (default: %(default)s)")
    parser.add_argument("--ncu", default="ncu", help="the ncu executable (default: %(default)s)")
    parser.add_argument("--timeout", type=int, default=500, help="seconds one ncu run may take (default: %(default)s)")
    parser.add_argument("--from-csv", nargs="+", metavar="IMPL=FILE",
                        help="profile nothing: parse saved ncu output of IMPL at the one shape of --shapes")
    parser.add_argument("--json", metavar="PATH", help="write the report (every row, ncu's output) here")
    parser.add_argument("--markdown", metavar="PATH", help="write the side-by-side tables here (default: stdout)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # the process ncu launches
    parser.add_argument("--info", help=argparse.SUPPRESS)  # where the worker writes its status
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup: expected at least 1 (the profiled forward must not compile or autotune)")
    if args.worker and (len(args.impl) != 1 or len(args.shapes) != 1 or not args.info):
        parser.error("--worker: one --impl, one --shape and --info")
    if args.from_csv:
        pairs = [pair.partition("=") for pair in args.from_csv]
        if len(args.shapes) != 1 or any(impl not in sb.IMPLS or not path for impl, _, path in pairs):
            parser.error(f"--from-csv: IMPL=FILE ... (IMPL one of {', '.join(sb.IMPLS)}) and one shape")
        args.from_csv = [(impl, path) for impl, _, path in pairs]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.from_csv:
        runs = [finish({**base_run(impl, args.shapes[0])[0], "source": path}, Path(path).read_text())
                for impl, path in args.from_csv]
        machine = {"source": "saved ncu output (--from-csv)"}
    else:
        import torch

        if not torch.cuda.is_available():
            print("ncu_stages: needs a CUDA device", file=sys.stderr)
            return 2
        metrics, runs = dict(METRICS), []
        for shape in args.shapes:
            for impl in args.impl:
                print(f"ncu_stages: {shape} {impl}", file=sys.stderr)
                runs.append(profile(impl, shape, metrics, args))
        machine = {**sb.machine(), "ncu": ncu_version(args.ncu)}
    report = {"benchmark": "ncu_stages", "machine": machine,
              "settings": {"shapes": args.shapes, "impls": list(dict.fromkeys(r["impl"] for r in runs)),
                           "warmup_calls": None if args.from_csv else args.warmup, "ncu_flags": list(NCU_FLAGS),
                           "metrics": METRICS},
              "runs": runs}
    for run in runs:
        if run["status"] != "ok":
            print(f"ncu_stages: {run['shape']} {run['impl']}: {run['status']}: {run['detail']}", file=sys.stderr)
    sb.write_report(report, args.json, args.markdown, render_markdown)
    if not args.markdown:
        print(render_markdown(report))
    return 0 if any(run["status"] == "ok" for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
