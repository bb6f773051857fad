"""Reports of a run: live progress, a terminal summary, JSON and Markdown.

The terminal gets a rich progress bar when it is a TTY and one plain line per case otherwise
(CI logs). JSON holds every case and every metric with the platform fingerprint. Markdown is
for a pull request: the verdict first, then the cases that changed or failed with their ULP
statistics, then the worst errors per dtype and the compile-variant audit.
"""

from __future__ import annotations

import os

from rich.console import Console
from rich.table import Table

from gdn_verify.autotune import describe as describe_autotune
from gdn_verify.files import write_atomic
from gdn_verify.render import (audit_word, digest_only_hints, fmt, md_table, not_passing, not_supported_reasons,
                               worst_per_dtype)
from gdn_verify.results import STATUS_NOT_SUPPORTED, CaseResult, RunResult

# Up to this many cases the terminal table lists them all; beyond, only those not passing.
_FULL_TABLE_MAX = 40
# Cases without golden named in Markdown (the JSON report has each case's golden status).
_MAX_MISSING_SHOWN = 20


def write_markdown(result: RunResult, path: str | os.PathLike) -> None:
    write_atomic(path, markdown(result))


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
        audit = f"; variant audit {audit_word(result.variant_audit)}"
    interrupted = f"; {interruption(result)}" if result.interrupted else ""
    return (f"{word}: suite {result.suite}, impl {result.impl}, {result.backend}: {t['cases']} cases, "
            f"{t['pass']} pass, {t['fail']} fail, {t['changed']} changed, {t['error']} error, "
            f"{t[STATUS_NOT_SUPPORTED]} not supported; "
            f"goldens: {goldens_headline(result)}{audit}{interrupted}; {result.wall_s:.1f} s")


def _beyond_rounding(w: dict) -> str:
    """A worst_per_dtype row's "global / slice (tol global / slice)" beyond rounding, or "-"."""
    tol = w["tolerance"].get("excess")
    if tol is None:
        return "-"
    return f"{fmt(w['excess'])} / {fmt(w['excess_slice'])} (tol {fmt(tol[0])} / {fmt(tol[1])})"


def _design_cell(w: dict) -> str:
    """A worst_per_dtype row's design judgment: "fla: actual 3e-3 / emulated 2.5e-3 (x1.2, at most
    x1.3 over the cases; allowed x8)", or "-" under the tolerance table."""
    d = w.get("design")
    if d is None:
        return "-"
    return (f"{d['name']}: actual {fmt(d['actual'])} / emulated {fmt(d['emulated'])} "
            f"(x{fmt(d['actual'] / d['emulated']) if d['emulated'] else '-'}, at most x"
            f"{fmt(d['worst_over_emulated'])} over the cases; allowed x{d['factor']:g})")


def _where(w: dict | None) -> str:
    if not w:
        return ""
    s = f"seq {w['sequence']} head {w['head']}"
    if w.get("chunk") is not None:
        s += f" chunk {w['chunk']} [{w['tokens'][0]}:{w['tokens'][1]}]"
    return s


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


# ----------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------

def markdown(result: RunResult) -> str:
    out = [f"**gdn-verify {verdict(result)}**", ""]
    bad = not_passing(result)
    if bad:
        out += ["### Changed and failed cases", ""]
        out += md_table(["case", "status", "what"],
                         [[f"`{r.id}`", r.status, "; ".join(r.failures)] for r in bad])
        ulp = [[f"`{r.id}`", *row] for r in bad for row in _ulp_rows(r)]
        if ulp:
            out += ["", "Bitwise differences (ULP statistics):", ""]
            out += md_table(["case", "against", "tensor", "elements differing", "max ULP", "first index",
                              "ULP histogram"], ulp)
            for hint in digest_only_hints(bad):
                out += ["", f"Digest-only goldens: {hint}."]
        stages = [[f"`{r.id}`", r.stages["first_divergent"] or "none",
                   ", ".join(f"{k} {fmt(v)}" for k, v in r.stages["stages"].items())] for r in bad if r.stages]
        if stages:
            out += ["", "Stage diagnosis (RMS ratio of each stage against the chunked reference):", ""]
            out += md_table(["case", "first divergent stage", "stages"], stages)
        out.append("")
    worst = worst_per_dtype(result.cases)
    if worst:
        out += ["### Worst errors per dtype", ""]
        designed = any(w["design"] for w in worst)
        out += md_table(
            ["dtype", "tensor", "cases", "worst RMS ratio", "tolerance", "worst slice ratio", "tolerance",
             "beyond rounding (global / slice)", "max abs error", "worst RMS case", "worst slice"]
            + (["design: actual / emulated RMS (case nearest its bound)"] if designed else []),
            [[w["dtype"], w["tensor"], str(w["cases"]), fmt(w["rms"]), fmt(w["tolerance"]["rms"]),
              fmt(w["slice"]), fmt(w["tolerance"]["slice"]), _beyond_rounding(w), fmt(w["max_abs"]),
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
        out += md_table(["what the case needs", "cases", "first case"],
                         [[reason, str(n), f"`{first}`"] for reason, n, first in unsupported])
        out.append("")
    audit = result.variant_audit
    if audit is not None:
        sweep = ", ".join(map(str, audit.lengths))
        out += ["### Compile-variant audit", "",
                f"{audit_word(audit)}: {audit.detail} (sweep T = {sweep})", ""]
        out += md_table(["kernel", "variants after T = 64", "after the sweep"],
                         [[k, str(audit.after_t64.get(k, 0)), str(n)] for k, n in audit.after_sweep.items()])
        out.append("")
    tuned = describe_autotune(result.goldens.get("autotune"))
    if tuned:
        out += [f"{tuned[0].upper()}{tuned[1:]}.", ""]
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

def print_summary(result: RunResult, console: Console) -> None:
    # Off a TTY every case already had its line; the table then repeats only those not passing.
    few = len(result.cases) <= _FULL_TABLE_MAX and console.is_terminal
    shown = result.cases if few else not_passing(result)
    if shown:
        table = Table(title="cases" if shown is result.cases else
                      f"cases not passing ({len(result.cases) - len(shown)} passing cases in the JSON report)")
        for col in ("case", "status", "o RMS", "o slice", "state RMS", "golden", "s"):
            table.add_column(col, overflow="fold")
        for r in shown:
            o, fs = r.checks.get("o"), r.checks.get("final_state")
            table.add_row(r.id, r.status, fmt(o.rms_ratio if o else None),
                          fmt(o.worst_slice["ratio"] if o and o.worst_slice else None),
                          fmt(fs.rms_ratio if fs else None), r.golden.status, f"{r.timing.get('total_s', 0):.2f}")
        console.print(table)
    worst = worst_per_dtype(result.cases)
    if worst:
        table = Table(title="worst errors per dtype")
        designed = any(w["design"] for w in worst)
        for col in ("dtype", "tensor", "RMS ratio", "tol", "slice ratio", "tol", "beyond rounding", "max abs",
                    "case") + (("design",) if designed else ()):
            table.add_column(col, overflow="fold")
        for w in worst:
            table.add_row(w["dtype"], w["tensor"], fmt(w["rms"]), fmt(w["tolerance"]["rms"]), fmt(w["slice"]),
                          fmt(w["tolerance"]["slice"]), _beyond_rounding(w), fmt(w["max_abs"]),
                          w["rms_case"] or "", *([_design_cell(w)] if designed else []))
        console.print(table)
    if result.variant_audit is not None:
        console.print(f"variant audit: {audit_word(result.variant_audit)}: "
                      f"{result.variant_audit.detail} {result.variant_audit.after_sweep}", markup=False)
    for reason, n, first in not_supported_reasons(result.cases):
        console.print(f"not supported ({n} cases, first {first}): {reason}", markup=False, highlight=False)
    if describe_autotune(result.goldens.get("autotune")):
        console.print(describe_autotune(result.goldens.get("autotune")), markup=False, highlight=False)
    if result.goldens.get("status") == "not comparable":
        console.print(result.goldens["detail"], markup=False, highlight=False)
    console.print(verdict(result), markup=False, highlight=False)

