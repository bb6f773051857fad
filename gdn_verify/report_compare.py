"""The side-by-side report of `gdn-verify compare`: terminal, Markdown (JSON: render.write_json)."""

from __future__ import annotations

import os

from rich.console import Console
from rich.table import Table

from gdn_verify.bench_shapes import BENCH_MODEL
from gdn_verify.files import write_atomic
from gdn_verify.render import audit_word, fmt, md_table, not_passing, not_supported_reasons, worst_per_dtype
from gdn_verify.results import STATUS_NOT_SUPPORTED
from gdn_verify.suites import DTYPES

# Failing cases listed per implementation in Markdown; the JSON report has every one.
_MAX_FAILURES_SHOWN = 60
_COUNT_ORDER = ("pass", "fail", "error", "changed", STATUS_NOT_SUPPORTED)


def _counts(summary: dict) -> str:
    """"12 pass, 1 fail, 3 not supported": the statuses that occur."""
    return ", ".join(f"{summary[s]} {s}" for s in _COUNT_ORDER if summary.get(s)) or "-"


def _worst(summary: dict, tensor: str) -> str:
    w = summary.get(tensor)
    return "-" if w is None else f"{fmt(w['rms'])} (tol {fmt(w['tolerance'])}), max abs {fmt(w['max_abs'])}"


def _invariant_counts(summary: dict) -> str:
    """"determinism 12/12, ...": passed of those run, per invariant that ran."""
    return ", ".join(f"{name} {n['passed']}/{n['run']}" for name, n in summary["invariants"].items() if n["run"]) or "-"


def _audit_cell(cmp, spec: str) -> str:
    audit = cmp.runs[spec].variant_audit
    if audit is None:
        return cmp.audit_notes.get(spec, "n/a")
    if not audit.ran or not audit.after_sweep:
        return f"{audit_word(audit)}: {audit.detail}"
    t64, sweep = sum(audit.after_t64.values()), sum(audit.after_sweep.values())
    return f"{'pass' if audit.passed else 'FAIL'}: {t64} after T = 64, {sweep} after the sweep ({len(audit.after_sweep)} kernels)"


def _why_not_run(cmp) -> str:
    return "interrupted" if cmp.interrupted else f"the time budget of {cmp.time_budget_s:g} s was reached"


def comparison_verdict(cmp) -> str:
    word = "PASS" if cmp.passed else "FAIL"
    parts = [f"{spec}: {_counts(run.totals)}" for spec, run in cmp.runs.items()]
    extra = ""
    if cmp.not_run:
        extra = f"; {len(cmp.not_run)} cases not run ({_why_not_run(cmp)})"
    if cmp.unavailable:
        extra += "; unavailable: " + ", ".join(cmp.unavailable)
    cases = max((len(run.cases) for run in cmp.runs.values()), default=0)
    return (f"{word}: compare, suite {cmp.suite}, {cmp.backend}: {cases} cases; " + "; ".join(parts)
            + f"{extra}; {cmp.wall_s:.1f} s")


def _bench_table(cmp) -> list[str]:
    specs = cmp.specs
    rows: dict[str, dict] = {}
    for row in cmp.bench:
        cells = rows.setdefault(row.shape, {})
        if row.status == "ok":
            cells[row.impl] = f"{row.median_ms:.3f} (first call {row.first_call_s:.1f} s)"
        else:
            cells[row.impl] = f"{row.status}: {row.detail}"
    return md_table(["shape"] + specs, [[shape] + [cells.get(s, "-") for s in specs] for shape, cells in rows.items()])


def _failure_rows(run) -> list[list[str]]:
    bad = not_passing(run)
    rows = [[f"`{r.id}`", r.status, "; ".join(r.failures)] for r in bad[:_MAX_FAILURES_SHOWN]]
    if len(bad) > _MAX_FAILURES_SHOWN:
        rows.append(["...", "", f"{len(bad) - _MAX_FAILURES_SHOWN} more in the JSON report"])
    return rows


def comparison_markdown(cmp) -> str:
    specs = cmp.specs
    out = [f"**gdn-verify {comparison_verdict(cmp)}**", ""]
    for spec, why in cmp.unavailable.items():
        out += [f"- `{spec}` skipped: {why}"]
    if cmp.unavailable:
        out.append("")
    out += ["### Implementations", ""]
    out += md_table(["impl", "declared conventions"],
                     [[f"`{i['spec']}`", ", ".join(f"{k}={v}" for k, v in i["conventions"].items())] for i in cmp.impls])
    out += ["", "### Worst errors per dtype (RMS error ratio, its tolerance, max abs error)", ""]
    worst = {spec: {(w["dtype"], w["tensor"]): w for w in worst_per_dtype(run.cases)} for spec, run in cmp.runs.items()}
    order = {d: i for i, d in enumerate(DTYPES)}
    keys = sorted({k for w in worst.values() for k in w}, key=lambda k: (order.get(k[0], len(order)), k[1]))
    out += md_table(["dtype", "tensor"] + specs,
                     [[d, t] + [(f"{fmt(worst[s][(d, t)]['rms'])} (tol {fmt(worst[s][(d, t)]['tolerance']['rms'])}), "
                                 f"max abs {fmt(worst[s][(d, t)]['max_abs'])}") if (d, t) in worst[s] else "-"
                                for s in specs] for d, t in keys])
    out += ["", "### Side by side per case group (dtype, shape class)", ""]
    rows = []
    for g in cmp.groups():
        rows.append([g["dtype"], g["shape"], str(g["cases"]), "cases"] + [_counts(g["impls"][s]) for s in specs])
        rows.append(["", "", "", "invariants"] + [_invariant_counts(g["impls"][s]) for s in specs])
        rows += [["", "", "", tensor] + [_worst(g["impls"][s], tensor) for s in specs] for tensor in ("o", "final_state")]
    out += md_table(["dtype", "shape", "cases", "what"] + specs, rows)
    out += ["", "### Invariants (bitwise; split: within tolerance)", ""]
    out += md_table(["invariant"] + specs,
                     [[name] + [_counts(cells[s]) for s in specs] for name, cells in cmp.invariants().items()])
    out += ["", "### Compiled variants across the T sweep", ""]
    out += md_table(["impl", "variants"], [[f"`{s}`", _audit_cell(cmp, s)] for s in specs])
    if cmp.bench:
        shape = ", ".join(f"{k} = {v}" for k, v in BENCH_MODEL.items())
        out += ["", f"### Median latency, ms (triton.testing.do_bench), {shape}, bfloat16, initial and final state, "
                "q and k normalized before the call", ""]
        out += _bench_table(cmp)
    for spec, run in cmp.runs.items():
        rows = _failure_rows(run)
        if rows:
            out += ["", f"### Failures of `{spec}` (check: metric value > tolerance)", ""]
            out += md_table(["case", "status", "what"], rows)
        unsupported = not_supported_reasons(run.cases)
        if unsupported:
            out += ["", f"### Not supported by `{spec}` (neither passed nor failed)", ""]
            out += md_table(["what the case needs", "cases", "first case"],
                             [[reason, str(n), f"`{first}`"] for reason, n, first in unsupported])
    if cmp.not_run:
        out += ["", f"### Not run: {_why_not_run(cmp)}", "",
                f"{len(cmp.not_run)} cases, from `{cmp.not_run[0]}` on (all listed in the JSON report)."]
    from gdn_verify.platform import describe

    out += ["", "### Platform", "", describe(cmp.fingerprint), ""]
    return "\n".join(out)


def write_comparison_markdown(cmp, path: str | os.PathLike) -> None:
    write_atomic(path, comparison_markdown(cmp))


def print_comparison(cmp, console: Console) -> None:
    specs = cmp.specs
    for spec, why in cmp.unavailable.items():
        console.print(f"skipped {spec}: {why}", markup=False, highlight=False)
    table = Table(title="side by side per case group (worst o RMS ratio)")
    for col in ["dtype", "shape", "cases"] + specs:
        table.add_column(col, overflow="fold")
    for g in cmp.groups():
        table.add_row(g["dtype"], g["shape"], str(g["cases"]),
                      *[f"{_counts(g['impls'][s])}; o {_worst(g['impls'][s], 'o')}" for s in specs])
    console.print(table)
    for name, cells in cmp.invariants().items():
        console.print(f"{name}: " + "; ".join(f"{s} {_counts(cells[s])}" for s in specs), markup=False, highlight=False)
    for spec in specs:
        console.print(f"compiled variants, {spec}: {_audit_cell(cmp, spec)}", markup=False, highlight=False)
    if cmp.bench:
        table = Table(title="median latency, ms")
        for col in ["shape"] + specs:
            table.add_column(col, overflow="fold")
        cells: dict[str, dict] = {}
        for row in cmp.bench:
            cells.setdefault(row.shape, {})[row.impl] = (f"{row.median_ms:.3f}" if row.status == "ok"
                                                         else f"{row.status}: {row.detail}")
        for shape, by_impl in cells.items():
            table.add_row(shape, *[by_impl.get(s, "-") for s in specs])
        console.print(table)
    for spec, run in cmp.runs.items():
        for r in not_passing(run):
            console.print(f"{spec}: {r.status.upper()} {r.id}: {'; '.join(r.failures)}", markup=False, highlight=False)
    console.print(comparison_verdict(cmp), markup=False, highlight=False)
