"""Rendering helpers shared by the reports: number cells, Markdown tables, JSON files, the
console, the live progress of a run, and the summaries every report draws from its cases."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Iterable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gdn_verify.files import write_atomic
from gdn_verify.results import STATUS_NOT_SUPPORTED, STATUS_PASS, CaseResult, RunResult


def json_safe(x):
    """JSON has no Infinity or NaN: non-finite floats become the strings "inf", "-inf", "nan"."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def to_json_text(result) -> str:
    """A result's to_json() as JSON text (a run's or a comparison's)."""
    return json.dumps(json_safe(result.to_json()), indent=1, sort_keys=False, allow_nan=False) + "\n"


def write_json(result, path: str | os.PathLike) -> None:
    write_atomic(path, to_json_text(result))


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.3g}"


def audit_word(audit) -> str:
    if not audit.ran:
        return "not run"
    return "pass" if audit.passed else "FAIL"


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


def not_passing(result: RunResult) -> list[CaseResult]:
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


def digest_only_hints(cases: Iterable[CaseResult]) -> list[str]:
    """How to get ULP statistics, once, when a golden stored as its digest only differs."""
    return sorted({d["hint"] for r in cases for d in r.golden.diffs.values() if isinstance(d, dict) and d.get("hint")})


def md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return lines


def case_line(r: CaseResult) -> str:
    o, fs = r.checks.get("o"), r.checks.get("final_state")
    metrics = ""
    if o is not None and fs is not None:
        metrics = f"o {fmt(o.rms_ratio)}/{fmt(o.worst_slice['ratio'] if o.worst_slice else None)} "
        if o.excess_ratio is not None:
            slice_excess = o.worst_excess_slice["ratio"] if o.worst_excess_slice else None
            metrics += f"(beyond rounding {fmt(o.excess_ratio)}/{fmt(slice_excess)}) "
        metrics += f"state {fmt(fs.rms_ratio)}/{fmt(fs.worst_slice['ratio'] if fs.worst_slice else None)}"
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
        line = f"{label}: {case_line(r)}" if label else case_line(r)
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

