"""Terminal output of the commands besides run and compare (gdn_verify/report.py,
report_compare.py): golden regen, golden diff, mutate and selfcheck."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from gdn_verify.render import digest_only_hints
from gdn_verify.text import shorten


def _line(console: Console, text: str) -> None:
    console.print(text, markup=False, highlight=False)


def regen_table(regen) -> Table:
    """A golden_diff.RegenReport as a table: its headline as title, one row per case, hints below."""
    table = Table(title=regen.headline(), caption="\n".join(regen.hints()) or None)
    for column in ("case", "outcome", "detail"):
        table.add_column(column, overflow="fold")
    for row in regen.rows():
        table.add_row(*row)
    return table


def print_regen(console: Console, regen, implementation: str, audit: dict | None,
                interrupted: tuple[int, int, int, bool] | None = None) -> None:
    """What `golden regen` wrote; `implementation` describes the writer and its revision;
    `interrupted`: (cases done, cases selected, goldens written, --prune asked) of a stopped run."""
    console.print(regen_table(regen))
    variants = "not counted" if audit is None or not audit.get("after_sweep") else (
        f"{sum(audit['after_sweep'].values())} compiled variants over {len(audit['after_sweep'])} kernels")
    _line(console, f"implementation {implementation}; {variants}")
    if regen.autotune_not_recorded:
        _line(console, "autotune choices not recorded: the store's goldens predate autotune records; "
                       "`golden regen --force` rewrites the goldens that differ and records them")
    if regen.autotune_recorded:
        n = regen.autotune_recorded
        _line(console, f"autotune record: {n} choice{'s' if n != 1 else ''}, {regen.autotune_added} added by this run")
    for conflict in regen.autotune_conflicts:
        _line(console, f"autotune conflict (the record keeps its choice; rewrite the cases that use this key "
                       f"in one process with --force): {conflict}")
    if interrupted is not None:
        done, selected, written, prune = interrupted
        _line(console, f"interrupted after {done} of {selected} cases: the goldens of the "
                       f"{written} that passed are written, the other cases were not run"
                       + ("; --prune not applied" if prune else ""))


def print_golden_diff(console: Console, result, title: str, proof) -> None:
    """`golden diff`: each case's golden status, hints, then the before/after proof (golden_pr.StoreDiff)."""
    table = Table(title=title)
    for col in ("case", "golden", "detail"):
        table.add_column(col, overflow="fold")
    for r in result.cases:
        table.add_row(r.id, r.golden.status if r.status != "error" else "error",
                      r.golden.detail or "; ".join(r.failures))
    console.print(table)
    for hint in digest_only_hints(result.cases):
        _line(console, f"hint: {hint}")
    _line(console, proof.render())


def mutation_table(report) -> Table:
    """A mutate.MutationReport: one row per mutant, survivors in red."""
    table = Table(title=f"mutation run of {report.package} ({report.impl}): {len(report.results) - len(report.survivors)} "
                        f"of {len(report.results)} mutants caught over {report.cases} cases (goldens: {report.goldens})")
    for col in ("mutant", "verdict", "first failing case", "check", "detail", "time"):
        table.add_column(col, overflow="fold")
    for r in report.results:
        detail = r.run.detail or f"{r.run.cases_run} cases passed; golden comparisons {r.run.golden_statuses}"
        table.add_row(r.mutant.name, r.verdict if r.caught else f"[bold red]{r.verdict}[/]",
                      r.run.case or "-", r.run.check or "-", shorten(detail), f"{r.run.wall_s:.1f} s")
    return table


def print_mutation_report(console: Console, report) -> None:
    """The mutation table, then what the unmutated sources did and the run's time."""
    console.print(mutation_table(report))
    lines = []
    if report.golden_pass is not None:
        lines.append(f"unmutated kernels: goldens of {report.golden_pass.cases_run} cases written in "
                     f"{report.golden_pass.wall_s:.1f} s")
    confirm = report.confirm_pass
    checked = [f"{confirm.cases_run} case{'' if confirm.cases_run == 1 else 's'}"] * bool(confirm.cases_run)
    checked += ["the variant audit"] * confirm.audited
    if checked:
        lines.append(f"unmutated kernels pass what caught the mutants: {' and '.join(checked)} "
                     f"({confirm.wall_s:.1f} s)")
    lines.append(f"mutation run: {report.wall_s:.1f} s")
    for line in lines:
        _line(console, line)


def print_selfcheck(console: Console, rows: list[dict]) -> None:
    """`selfcheck`: each other reference's RMS ratios against the torch float64 recurrence."""
    table = Table(title="references against the torch float64 recurrence (RMS error ratio)")
    for col in ("case", "reference", "o", "final_state", "ok"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["case"], row["reference"], f"{row['o']:.2e}", f"{row['final_state']:.2e}",
                      "yes" if row["passed"] else "NO")
    console.print(table)
