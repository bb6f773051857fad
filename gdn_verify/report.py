"""Reports of a run: live progress, a terminal summary, JSON and Markdown.

The terminal gets a rich progress bar when it is a TTY and one plain line per case otherwise
(CI logs). JSON holds every case and every metric with the platform fingerprint. Markdown is
for a pull request: the verdict first, then the cases that changed or failed with their ULP
statistics, then the worst errors per dtype and the compile-variant audit.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gdn_verify.cases import DTYPES
from gdn_verify.runner import STATUS_NOT_SUPPORTED, STATUS_PASS, CaseResult, RunResult

# Up to this many cases the terminal table lists them all; beyond, only those not passing.
_FULL_TABLE_MAX = 40
# Cases without golden named in Markdown (the JSON report has each case's golden status).
_MAX_MISSING_SHOWN = 20


# ----------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------

def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write text so that path holds either its old content or all of the new one. The file
    gets the mode open() would give it (0644 under the usual umask 022), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finite(x):
    """JSON has no Infinity or NaN: non-finite floats become the strings "inf", "-inf", "nan"."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def to_json_text(result: RunResult) -> str:
    return json.dumps(_finite(result.to_json()), indent=1, sort_keys=False, allow_nan=False) + "\n"


def write_json(result: RunResult, path: str | os.PathLike) -> None:
    write_atomic(path, to_json_text(result))


def write_markdown(result: RunResult, path: str | os.PathLike) -> None:
    write_atomic(path, markdown(result))


# ----------------------------------------------------------------------------------------
# Shared summaries
# ----------------------------------------------------------------------------------------

def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.3g}"


def goldens_headline(result: RunResult) -> str:
    """What the goldens contributed, in words: never only a status a reader could take for a
    bitwise pass."""
    status = result.goldens.get("status", "not checked")
    if status == "not checked":
        return "not checked (no --goldens)"
    if status == "not comparable":
        return "no bitwise comparison (no golden store for this platform)"
    t = result.totals
    compared, ran = result.golden_coverage
    text = f"{compared} of {ran} cases compared bit for bit ({t['golden_equal']} equal"
    if t["golden_missing"]:
        text += f", {t['golden_missing']} without golden"
    text += ")"
    return f"no bitwise comparison: {text}" if compared == 0 else text


def _audit_word(audit) -> str:
    if not audit.ran:
        return "not run"
    return "pass" if audit.passed else "FAIL"


def interruption(result: RunResult) -> str:
    """"interrupted: 3 of 5 cases not run", or "" for a run that was not interrupted."""
    if not result.interrupted:
        return ""
    selected = len(result.cases) if result.selected is None else result.selected
    return f"interrupted: {selected - len(result.cases)} of {selected} cases not run"


def verdict(result: RunResult) -> str:
    t = result.totals
    word = "PASS" if result.passed else "FAIL"
    audit = ""
    if result.variant_audit is not None:
        audit = f"; variant audit {_audit_word(result.variant_audit)}"
    interrupted = f"; {interruption(result)}" if result.interrupted else ""
    return (f"{word}: suite {result.suite}, impl {result.impl}, {result.backend}: {t['cases']} cases, "
            f"{t['pass']} pass, {t['fail']} fail, {t['changed']} changed, {t['error']} error, "
            f"{t[STATUS_NOT_SUPPORTED]} not supported; "
            f"goldens: {goldens_headline(result)}{audit}{interrupted}; {result.wall_s:.1f} s")


def worst_per_dtype(cases: Iterable[CaseResult]) -> list[dict]:
    """Per (dtype, tensor): the worst RMS ratio and worst-slice ratio, with the cases, and the
    worst global and slice ratios beyond rounding (None where not checked)."""
    worst: dict[tuple[str, str], dict] = {}
    for r in cases:
        for name, c in r.checks.items():
            row = worst.setdefault((r.case.dtype, name), {
                "dtype": r.case.dtype, "tensor": name, "tolerance": c.tolerance, "rms": -1.0, "rms_case": None,
                "slice": -1.0, "slice_case": None, "slice_where": None, "max_abs": 0.0, "cases": 0,
                "excess": None, "excess_slice": None, "design": None})
            row["cases"] += 1
            if not c.rms_ratio <= row["rms"]:
                # A design's bounds are per case: the row shows those of its worst case.
                row["rms"], row["rms_case"], row["tolerance"] = c.rms_ratio, r.id, c.tolerance
            if c.worst_slice is not None and not c.worst_slice["ratio"] <= row["slice"]:
                row["slice"], row["slice_case"], row["slice_where"] = c.worst_slice["ratio"], r.id, c.worst_slice
            row["max_abs"] = max(row["max_abs"], c.max_abs)
            if c.excess_ratio is not None:
                row["excess"] = max(row["excess"] or 0.0, c.excess_ratio)
            if c.worst_excess_slice is not None:
                row["excess_slice"] = max(row["excess_slice"] or 0.0, c.worst_excess_slice["ratio"])
            if c.design is not None:  # judged by a declared design: the case nearest its bound
                d, rd = c.design, row["design"]
                if rd is None or not c.rms_ratio / c.tolerance["rms"] <= rd["of_bound"]:
                    row["design"] = {"name": d["name"], "factor": d["factor"], "emulated": d["emulated_rms"],
                                     "actual": c.rms_ratio, "of_bound": c.rms_ratio / c.tolerance["rms"],
                                     "case": r.id}
                row["design"]["worst_over_emulated"] = max(row["design"].get("worst_over_emulated", 0.0),
                                                           d["actual_over_emulated"])
    order = {"float64": 0, "float32": 1, "float16": 2, "bfloat16": 3}
    return sorted(worst.values(), key=lambda w: (order.get(w["dtype"], 9), w["tensor"]))


def _beyond_rounding(w: dict) -> str:
    """A worst_per_dtype row's "global / slice (tol global / slice)" beyond rounding, or "-"."""
    tol = w["tolerance"].get("excess")
    if tol is None:
        return "-"
    return f"{_fmt(w['excess'])} / {_fmt(w['excess_slice'])} (tol {_fmt(tol[0])} / {_fmt(tol[1])})"


def _design_cell(w: dict) -> str:
    """A worst_per_dtype row's design judgment: "fla: actual 3e-3 / emulated 2.5e-3 (x1.2, at most
    x1.3 over the cases; allowed x8)", or "-" under the tolerance table."""
    d = w.get("design")
    if d is None:
        return "-"
    return (f"{d['name']}: actual {_fmt(d['actual'])} / emulated {_fmt(d['emulated'])} "
            f"(x{_fmt(d['actual'] / d['emulated']) if d['emulated'] else '-'}, at most x"
            f"{_fmt(d['worst_over_emulated'])} over the cases; allowed x{d['factor']:g})")


def _where(w: dict | None) -> str:
    if not w:
        return ""
    s = f"seq {w['sequence']} head {w['head']}"
    if w.get("chunk") is not None:
        s += f" chunk {w['chunk']} [{w['tokens'][0]}:{w['tokens'][1]}]"
    return s


def _not_passing(result: RunResult) -> list[CaseResult]:
    rank = {"changed": 0, "fail": 1, "error": 2}
    return sorted((r for r in result.cases if r.status not in (STATUS_PASS, STATUS_NOT_SUPPORTED)),
                  key=lambda r: rank.get(r.status, 3))


def not_supported_reasons(cases: Iterable[CaseResult]) -> list[tuple[str, int, str]]:
    """(reason, how many cases, first case id) for every case or invariant not supported, the
    invariant's name kept in front of its reason."""
    found: dict[str, list[str]] = {}
    for r in cases:
        for reason in r.not_supported:
            found.setdefault(reason, []).append(r.id)
    return [(reason, len(ids), ids[0]) for reason, ids in sorted(found.items(), key=lambda kv: -len(kv[1]))]


def _ulp_rows(r: CaseResult) -> list[tuple[str, str, str, str, str, str]]:
    """(source, tensor, differing, max ULP, first index, histogram) for each bitwise diff."""
    rows = []
    sources = [("golden", r.golden.diffs)] + [(i.name, i.tensors) for i in r.invariants
                                              if not i.passed and i.name != "split-equivalence"]
    for source, diffs in sources:
        for tensor, d in diffs.items():
            if isinstance(d, str):
                rows.append((source, tensor, d, "", "", ""))
            elif d.get("digest_only"):  # goldens.DigestDiff: a sha256 and summary numbers, no ULPs
                if not d["equal"]:
                    rows.append((source, tensor, "different (digest only)", "-", "-",
                                 f"no ULP statistics; {d['detail']}"))
            elif not d.get("equal", True):
                ulp = "NaN" if d.get("max_ulp_unbounded") else str(d["max_ulp"])
                hist = ", ".join(f"{k}: {v}" for k, v in d["histogram"].items() if v)
                rows.append((source, tensor, f"{d['n_different']}/{d['n_elements']}", ulp,
                             str(tuple(d["first_index"])) if d["first_index"] else "-", hist))
    return rows


def digest_only_hints(cases: Iterable[CaseResult]) -> list[str]:
    """How to get ULP statistics, once, when a golden stored as its digest only differs."""
    return sorted({d["hint"] for r in cases for d in r.golden.diffs.values() if isinstance(d, dict) and d.get("hint")})


# ----------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------

def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def markdown(result: RunResult) -> str:
    out = [f"**gdn-verify {verdict(result)}**", ""]
    bad = _not_passing(result)
    if bad:
        out += ["### Changed and failed cases", ""]
        out += _md_table(["case", "status", "what"],
                         [[f"`{r.id}`", r.status, "; ".join(r.failures)] for r in bad])
        ulp = [[f"`{r.id}`", *row] for r in bad for row in _ulp_rows(r)]
        if ulp:
            out += ["", "Bitwise differences (ULP statistics):", ""]
            out += _md_table(["case", "against", "tensor", "elements differing", "max ULP", "first index",
                              "ULP histogram"], ulp)
            for hint in digest_only_hints(bad):
                out += ["", f"Digest-only goldens: {hint}."]
        stages = [[f"`{r.id}`", r.stages["first_divergent"] or "none",
                   ", ".join(f"{k} {_fmt(v)}" for k, v in r.stages["stages"].items())] for r in bad if r.stages]
        if stages:
            out += ["", "Stage diagnosis (RMS ratio of each stage against the chunked reference):", ""]
            out += _md_table(["case", "first divergent stage", "stages"], stages)
        out.append("")
    worst = worst_per_dtype(result.cases)
    if worst:
        out += ["### Worst errors per dtype", ""]
        designed = any(w["design"] for w in worst)
        out += _md_table(
            ["dtype", "tensor", "cases", "worst RMS ratio", "tolerance", "worst slice ratio", "tolerance",
             "beyond rounding (global / slice)", "max abs error", "worst RMS case", "worst slice"]
            + (["design: actual / emulated RMS (case nearest its bound)"] if designed else []),
            [[w["dtype"], w["tensor"], str(w["cases"]), _fmt(w["rms"]), _fmt(w["tolerance"]["rms"]),
              _fmt(w["slice"]), _fmt(w["tolerance"]["slice"]), _beyond_rounding(w), _fmt(w["max_abs"]),
              f"`{w['rms_case']}`", f"`{w['slice_case']}` {_where(w['slice_where'])}"]
             + ([_design_cell(w)] if designed else []) for w in worst])
        if designed:
            out += ["", "Judged by the declared precision design: error within the allowed factor of the design's "
                    "emulated error (the float64 reference rounded as the design stores), plus a floor; each "
                    "case's tolerance above is its own."]
        out.append("")
    unsupported = not_supported_reasons(result.cases)
    if unsupported:
        out += ["### Not supported by the implementation (neither passed nor failed)", ""]
        out += _md_table(["what the case needs", "cases", "first case"],
                         [[reason, str(n), f"`{first}`"] for reason, n, first in unsupported])
        out.append("")
    audit = result.variant_audit
    if audit is not None:
        sweep = ", ".join(map(str, audit.lengths))
        out += ["### Compile-variant audit", "",
                f"{_audit_word(audit)}: {audit.detail} (sweep T = {sweep})", ""]
        out += _md_table(["kernel", "variants after T = 64", "after the sweep"],
                         [[k, str(audit.after_t64.get(k, 0)), str(n)] for k, n in audit.after_sweep.items()])
        out.append("")
    if result.goldens.get("status") == "not comparable":
        out += ["### Goldens", "", "No bitwise comparison took place: no golden store for this platform.", "",
                "```", result.goldens["detail"], "```", ""]
    elif result.totals["golden_missing"]:
        missing = [r.id for r in result.cases if r.golden.status == "missing"]
        out += ["### Goldens", "", f"{len(missing)} cases without golden, not compared bit for bit: "
                + ", ".join(f"`{i}`" for i in missing[:_MAX_MISSING_SHOWN])
                + (f" and {len(missing) - _MAX_MISSING_SHOWN} more" if len(missing) > _MAX_MISSING_SHOWN else ""), ""]
    from gdn_verify.platform import describe

    out += ["### Platform", "", describe(result.fingerprint), ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------
# Terminal
# ----------------------------------------------------------------------------------------

def _case_line(r: CaseResult) -> str:
    o, fs = r.checks.get("o"), r.checks.get("final_state")
    metrics = ""
    if o is not None and fs is not None:
        metrics = f"o {_fmt(o.rms_ratio)}/{_fmt(o.worst_slice['ratio'] if o.worst_slice else None)} "
        if o.excess_ratio is not None:
            slice_excess = o.worst_excess_slice["ratio"] if o.worst_excess_slice else None
            metrics += f"(beyond rounding {_fmt(o.excess_ratio)}/{_fmt(slice_excess)}) "
        metrics += f"state {_fmt(fs.rms_ratio)}/{_fmt(fs.worst_slice['ratio'] if fs.worst_slice else None)}"
    invariants = ""
    if r.invariants:
        invariants = f"  invariants {sum(i.passed for i in r.invariants)}/{len(r.invariants)}"
    line = (f"{r.status.upper():7} {r.id}  {metrics}{invariants}  golden {r.golden.status}  "
            f"{r.timing.get('total_s', 0):.2f}s")
    if r.failures or r.not_supported:
        line += "\n        " + "\n        ".join(r.failures + [f"not supported: {n}" for n in r.not_supported])
    return line


class Live:
    """Progress of a run: a rich bar on a TTY, one plain line per case elsewhere."""

    def __init__(self, console: Console, total: int, title: str):
        self.console = console
        self.progress = None
        if console.is_terminal:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("{task.fields[case]}"), console=console)
            self.task = self.progress.add_task(title, total=total, case="")

    def __enter__(self) -> "Live":
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def case_done(self, r: CaseResult, index: int, total: int, label: str = "") -> None:
        """label: what ran the case, when several implementations share the progress."""
        line = f"{label}: {_case_line(r)}" if label else _case_line(r)
        if self.progress is None:
            self.console.print(f"[{index + 1:>{len(str(total))}}/{total}] {line}", markup=False,
                               highlight=False, soft_wrap=True)
            return
        self.progress.update(self.task, advance=1, case=f"{label} {r.id}".strip())
        if r.status != STATUS_PASS:
            self.progress.console.print(line, markup=False, highlight=False)


def make_console() -> Console:
    """A console for the CLI: on a TTY rich's own; elsewhere wide, so log lines do not wrap."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def print_summary(result: RunResult, console: Console) -> None:
    # Off a TTY every case already had its line; the table then repeats only those not passing.
    few = len(result.cases) <= _FULL_TABLE_MAX and console.is_terminal
    shown = result.cases if few else _not_passing(result)
    if shown:
        table = Table(title="cases" if shown is result.cases else
                      f"cases not passing ({len(result.cases) - len(shown)} passing cases in the JSON report)")
        for col in ("case", "status", "o RMS", "o slice", "state RMS", "golden", "s"):
            table.add_column(col, overflow="fold")
        for r in shown:
            o, fs = r.checks.get("o"), r.checks.get("final_state")
            table.add_row(r.id, r.status, _fmt(o.rms_ratio if o else None),
                          _fmt(o.worst_slice["ratio"] if o and o.worst_slice else None),
                          _fmt(fs.rms_ratio if fs else None), r.golden.status, f"{r.timing.get('total_s', 0):.2f}")
        console.print(table)
    worst = worst_per_dtype(result.cases)
    if worst:
        table = Table(title="worst errors per dtype")
        designed = any(w["design"] for w in worst)
        for col in ("dtype", "tensor", "RMS ratio", "tol", "slice ratio", "tol", "beyond rounding", "max abs",
                    "case") + (("design",) if designed else ()):
            table.add_column(col, overflow="fold")
        for w in worst:
            table.add_row(w["dtype"], w["tensor"], _fmt(w["rms"]), _fmt(w["tolerance"]["rms"]), _fmt(w["slice"]),
                          _fmt(w["tolerance"]["slice"]), _beyond_rounding(w), _fmt(w["max_abs"]),
                          w["rms_case"] or "", *([_design_cell(w)] if designed else []))
        console.print(table)
    if result.variant_audit is not None:
        console.print(f"variant audit: {_audit_word(result.variant_audit)}: "
                      f"{result.variant_audit.detail} {result.variant_audit.after_sweep}", markup=False)
    for reason, n, first in not_supported_reasons(result.cases):
        console.print(f"not supported ({n} cases, first {first}): {reason}", markup=False, highlight=False)
    if result.goldens.get("status") == "not comparable":
        console.print(result.goldens["detail"], markup=False, highlight=False)
    console.print(verdict(result), markup=False, highlight=False)


# ----------------------------------------------------------------------------------------
# Side by side (gdn-verify compare)
# ----------------------------------------------------------------------------------------

# Failing cases listed per implementation in Markdown; the JSON report has every one.
_MAX_FAILURES_SHOWN = 60
_COUNT_ORDER = ("pass", "fail", "error", "changed", STATUS_NOT_SUPPORTED)


def _counts(summary: dict) -> str:
    """"12 pass, 1 fail, 3 not supported": the statuses that occur."""
    return ", ".join(f"{summary[s]} {s}" for s in _COUNT_ORDER if summary.get(s)) or "-"


def _worst(summary: dict, tensor: str) -> str:
    w = summary.get(tensor)
    return "-" if w is None else f"{_fmt(w['rms'])} (tol {_fmt(w['tolerance'])}), max abs {_fmt(w['max_abs'])}"


def _invariant_counts(summary: dict) -> str:
    """"determinism 12/12, ...": passed of those run, per invariant that ran."""
    return ", ".join(f"{name} {n['passed']}/{n['run']}" for name, n in summary["invariants"].items() if n["run"]) or "-"


def _audit_cell(cmp, spec: str) -> str:
    audit = cmp.runs[spec].variant_audit
    if audit is None:
        return cmp.audit_notes.get(spec, "n/a")
    if not audit.ran or not audit.after_sweep:
        return f"{_audit_word(audit)}: {audit.detail}"
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
    return _md_table(["shape"] + specs, [[shape] + [cells.get(s, "-") for s in specs] for shape, cells in rows.items()])


def _failure_rows(run) -> list[list[str]]:
    bad = _not_passing(run)
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
    out += _md_table(["impl", "declared conventions"],
                     [[f"`{i['spec']}`", ", ".join(f"{k}={v}" for k, v in i["conventions"].items())] for i in cmp.impls])
    out += ["", "### Worst errors per dtype (RMS error ratio, its tolerance, max abs error)", ""]
    worst = {spec: {(w["dtype"], w["tensor"]): w for w in worst_per_dtype(run.cases)} for spec, run in cmp.runs.items()}
    order = {d: i for i, d in enumerate(DTYPES)}
    keys = sorted({k for w in worst.values() for k in w}, key=lambda k: (order.get(k[0], len(order)), k[1]))
    out += _md_table(["dtype", "tensor"] + specs,
                     [[d, t] + [(f"{_fmt(worst[s][(d, t)]['rms'])} (tol {_fmt(worst[s][(d, t)]['tolerance']['rms'])}), "
                                 f"max abs {_fmt(worst[s][(d, t)]['max_abs'])}") if (d, t) in worst[s] else "-"
                                for s in specs] for d, t in keys])
    out += ["", "### Side by side per case group (dtype, shape class)", ""]
    rows = []
    for g in cmp.groups():
        rows.append([g["dtype"], g["shape"], str(g["cases"]), "cases"] + [_counts(g["impls"][s]) for s in specs])
        rows.append(["", "", "", "invariants"] + [_invariant_counts(g["impls"][s]) for s in specs])
        rows += [["", "", "", tensor] + [_worst(g["impls"][s], tensor) for s in specs] for tensor in ("o", "final_state")]
    out += _md_table(["dtype", "shape", "cases", "what"] + specs, rows)
    out += ["", "### Invariants (bitwise; split: within tolerance)", ""]
    out += _md_table(["invariant"] + specs,
                     [[name] + [_counts(cells[s]) for s in specs] for name, cells in cmp.invariants().items()])
    out += ["", "### Compiled variants across the T sweep", ""]
    out += _md_table(["impl", "variants"], [[f"`{s}`", _audit_cell(cmp, s)] for s in specs])
    if cmp.bench:
        from gdn_verify.compare_impls import BENCH_MODEL

        shape = ", ".join(f"{k} = {v}" for k, v in BENCH_MODEL.items())
        out += ["", f"### Median latency, ms (triton.testing.do_bench), {shape}, bfloat16, initial and final state, "
                "q and k normalized before the call", ""]
        out += _bench_table(cmp)
    for spec, run in cmp.runs.items():
        rows = _failure_rows(run)
        if rows:
            out += ["", f"### Failures of `{spec}` (check: metric value > tolerance)", ""]
            out += _md_table(["case", "status", "what"], rows)
        unsupported = not_supported_reasons(run.cases)
        if unsupported:
            out += ["", f"### Not supported by `{spec}` (neither passed nor failed)", ""]
            out += _md_table(["what the case needs", "cases", "first case"],
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
        for r in _not_passing(run):
            console.print(f"{spec}: {r.status.upper()} {r.id}: {'; '.join(r.failures)}", markup=False, highlight=False)
    console.print(comparison_verdict(cmp), markup=False, highlight=False)
