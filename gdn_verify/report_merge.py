"""`gdn-verify report merge`: shard reports put back together as the report of one run.

Each shard of a sharded run (`gdn-verify run --shard I/N --json SHARD.json`) writes the usual
JSON report (results.RunResult.to_json) plus a top-level "shard" key (gdn_verify.shard.
shard_metadata): its index and count, the size and digest of the whole selection, the position
in the selection of each of its cases, the command and its options. `merge_reports` checks that
the shards belong together and rebuilds one RunResult from them, with the cases in the
selection's order; the existing renderers (render.to_json_text, report.markdown, golden_pr.StoreDiff
for `golden diff` shards) then write what a single process would have written, and
`MergedReport.exit_code` is that process's exit code. JSON back to results:
gdn_verify/report_json.py; JUnit: gdn_verify/report_junit.py; the command: gdn_verify/commands.py.

What may differ from a single run over the same cases: timing (each case's "timing", the
run's "wall_s", here the longest shard's: the shards' wall time when they run side by side),
the fingerprint's host fields (date, device index, CPU model, BLAS core and threads; those of
shard 1 are kept), the goldens' root path and detail text (shard 1's: it describes shard 1's
host), and the merged JSON's "merged_from" list (one entry per shard). Everything else (verdict, totals, cases, their checks, invariants,
golden results, the variant audit) is the single run's.

Refused, as a usage / setup error (MergeError, exit code 2): files that are not run reports or
carry no shard metadata; shards of different suites, implementations, backends, platform
fingerprints (beyond the host fields), commands, options (beyond --repro-dir and the goldens
path), golden stores or store identities, selections (size and digest), or shard counts; two
reports of one shard, cases in two shards, and an incomplete set (a shard of the N missing).

The variant audit runs in every shard (each process compiles anew); the merged report carries
shard 1's, or the first failing one when any failed (all are listed in "merged_from").
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from gdn_verify.files import write_atomic
from gdn_verify.render import to_json_text
from gdn_verify.report_json import run_result_from_json
from gdn_verify.report_junit import junit_xml
from gdn_verify.results import STATUS_ERROR, CaseResult, RunResult

EXIT_PASS, EXIT_FAIL, EXIT_SETUP = 0, 1, 2

# Fingerprint fields that describe the host or the moment, not what the bits depend on: shards
# on several machines (or GPUs) differ in them.
HOST_FIELDS = ("date", "device", "cpu_model", "blas_core", "threads")
# RunOptions fields that may differ between the shards of one run.
PER_SHARD_OPTIONS = ("repro_dir", "goldens")
# Keys of the goldens summary that are per shard (recomputed, a path on each host, or text that
# describes the shard's host and moment, e.g. "not comparable: ... this run: <host> on <date>"), or the
# autotune choices each process replayed and made (shard 1's are kept).
_PER_SHARD_GOLDENS = ("root", "compared", "ran", "detail", "autotune")
_REPORT_KEYS = ("suite", "impl", "device", "backend", "fingerprint", "goldens", "variant_audit", "cases")
COMMANDS = ("run", "golden diff")


def comparable(report: dict) -> dict:
    """A JSON report (single run or merged) without what may differ between a merged and a single
    run over the same cases: timing, the fingerprint's host fields, the merge's and shard's records."""
    r = {k: v for k, v in report.items() if k not in ("wall_s", "merged_from", "shard")}
    r["fingerprint"] = {k: v for k, v in r["fingerprint"].items() if k not in HOST_FIELDS}
    r["cases"] = [{k: v for k, v in case.items() if k != "timing"} for case in r["cases"]]
    return r


class MergeError(ValueError):
    """The reports cannot be merged (or read): exit code 2, the message says why."""


def load_report(path: str | os.PathLike) -> dict:
    """A report file's JSON object; MergeError naming the file when it cannot be read."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise MergeError(f"{path}: cannot read the report ({exc.strerror or exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MergeError(f"{path}: not a JSON report ({exc})") from exc
    if not isinstance(data, dict) or any(k not in data for k in _REPORT_KEYS):
        raise MergeError(f"{path}: not a gdn-verify run report (a JSON object with {', '.join(_REPORT_KEYS)})")
    return data


# ----------------------------------------------------------------------------------------
# Merging
# ----------------------------------------------------------------------------------------

@dataclass
class MergedReport:
    result: RunResult  # the cases of every shard, in the selection's order
    command: str  # "run" | "golden diff"
    options: dict  # the shards' RunOptions (shard 1's per-shard fields)
    shards: list[dict] = field(default_factory=list)  # per shard: index, source, wall_s, host fields, ...

    # --- JSON ------------------------------------------------------------------------------

    def run_json(self) -> dict:
        """The merged run report's JSON object, as report.write_json would write it, plus
        "merged_from"."""
        data = json.loads(to_json_text(self.result))
        data["merged_from"] = self.shards
        return data

    def json_text(self) -> str:
        """What the merged --json holds: the run report (command run), or the proof's JSON
        (`golden diff --json`) for golden diff shards."""
        if self.command == "golden diff":
            return json.dumps(self.store_diff().to_json(), indent=1) + "\n"
        return json.dumps(self.run_json(), indent=1, sort_keys=False, allow_nan=False) + "\n"

    # --- Markdown / JUnit ------------------------------------------------------------------

    def store_diff(self):
        from gdn_verify.golden_pr import StoreDiff

        return StoreDiff.from_run(self.result, self.result.goldens.get("root", "?"))

    def markdown(self) -> str:
        if self.command == "golden diff":
            return self.store_diff().markdown() + "\n"
        from gdn_verify.report import markdown

        return markdown(self.result)

    def junit(self) -> str:
        return junit_xml(self.result)

    # --- exit code -------------------------------------------------------------------------

    def missing_goldens(self) -> str | None:
        """Why fewer cases were compared bit for bit than ran (cases without golden), or None."""
        missing = self.result.totals["golden_missing"]
        if not missing:
            return None
        _, ran = self.result.golden_coverage
        return (f"{missing} of {ran} cases have no golden in {self.result.goldens.get('root')} "
                f"(platform {self.result.goldens.get('platform_key')}), so they were not compared bit for bit")

    def exit_code(self) -> int:
        """The exit code of one process over the same cases (cli.cmd_run / cmd_golden_diff)."""
        r = self.result
        if self.command == "golden diff":
            if r.interrupted or any(c.golden.unexpected or c.status == STATUS_ERROR for c in r.cases):
                return EXIT_FAIL
            return EXIT_SETUP if self.missing_goldens() else EXIT_PASS
        if not r.passed:
            return EXIT_FAIL
        if self.options.get("require_goldens") and self.missing_goldens():
            return EXIT_SETUP
        return EXIT_PASS

    def write(self, json_path=None, markdown_path=None, junit_path=None) -> list[str]:
        """Write the reports whose path is given; one line per report that could not be written."""
        problems = []
        for flag, path, render in (("--json", json_path, self.json_text), ("--markdown", markdown_path, self.markdown),
                                   ("--junit", junit_path, self.junit)):
            if not path:
                continue
            try:
                write_atomic(path, render())
            except OSError as exc:
                problems.append(f"{flag} {path}: cannot write the report ({exc.strerror or exc})")
        return problems


def _without(d: dict, keys: Sequence[str]) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def _differences(a: dict, b: dict) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def _shard_meta(data: dict, source: str) -> dict:
    meta = data.get("shard")
    if not isinstance(meta, dict):
        raise MergeError(f"{source}: not a shard report (no \"shard\" key); write shard reports with "
                         "`--shard I/N --json PATH`")
    needed = {"index": int, "count": int, "selected": int, "selection_digest": str, "positions": list}
    for key, kind in needed.items():
        if type(meta.get(key)) is not kind:
            raise MergeError(f"{source}: shard metadata lacks {key!r} or it is not {kind.__name__}")
    if not 1 <= meta["index"] <= meta["count"]:
        raise MergeError(f"{source}: shard {meta['index']}/{meta['count']} is not a shard I/N with 1 <= I <= N")
    if meta.get("command", "run") not in COMMANDS:
        raise MergeError(f"{source}: shard of command {meta.get('command')!r}; report merge takes "
                         f"{' and '.join(COMMANDS)} shards")
    return meta


def _same(what: str, values: dict[str, object]) -> None:
    """MergeError unless every shard (source -> value) has the same value."""
    items = list(values.items())
    first_source, first = items[0]
    for source, value in items[1:]:
        if value != first:
            detail = ""
            if isinstance(value, dict) and isinstance(first, dict):
                detail = ": " + "; ".join(_differences(first, value)[:6])
            raise MergeError(f"{source} and {first_source} differ in {what}{detail}; merge only the shards of "
                             "one run")


def _device_kind(device: str) -> str:
    return str(device).split(":")[0]


def merge_reports(reports: Sequence[dict], sources: Sequence[str] | None = None) -> MergedReport:
    """One MergedReport from the JSON of every shard of one run (any order); MergeError when
    they do not belong together or do not cover the selection (see the module docstring)."""
    if not reports:
        raise MergeError("report merge: no shard reports given")
    sources = list(sources) if sources is not None else [f"report {i + 1}" for i in range(len(reports))]
    metas = {src: _shard_meta(data, src) for src, data in zip(sources, reports)}
    by_source = dict(zip(sources, reports))

    # One run: the same selection, command and options, implementation and platform.
    _same("shard count (N of I/N)", {s: m["count"] for s, m in metas.items()})
    _same("selection (number of cases selected before sharding)", {s: m["selected"] for s, m in metas.items()})
    _same("selection (its case ids: another suite, --cases or --max-cases)",
          {s: m["selection_digest"] for s, m in metas.items()})
    _same("command", {s: m.get("command", "run") for s, m in metas.items()})
    _same("options", {s: _without(m.get("options") or {}, PER_SHARD_OPTIONS) for s, m in metas.items()})
    _same("whether goldens were compared (--goldens)",
          {s: (m.get("options") or {}).get("goldens") is not None for s, m in metas.items()})
    for key, what in (("suite", "suite"), ("impl", "implementation (--impl)"), ("backend", "backend")):
        _same(what, {s: d[key] for s, d in by_source.items()})
    _same("device kind", {s: _device_kind(d["device"]) for s, d in by_source.items()})
    _same("platform fingerprint", {s: _without(d["fingerprint"], HOST_FIELDS) for s, d in by_source.items()})
    _same("golden store (status, platform key, identities)",
          {s: _without(d["goldens"], _PER_SHARD_GOLDENS) for s, d in by_source.items()})
    _same("variant audit (run in some shards, not in others)",
          {s: d["variant_audit"] is None for s, d in by_source.items()})

    # A complete set of distinct shards.
    count = next(iter(metas.values()))["count"]
    seen: dict[int, str] = {}
    for src, meta in metas.items():
        if meta["index"] in seen:
            raise MergeError(f"{src} and {seen[meta['index']]} are both shard {meta['index']}/{count}")
        seen[meta["index"]] = src
    missing = sorted(set(range(1, count + 1)) - set(seen))
    if missing:
        raise MergeError(f"incomplete: shard{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(f'{i}/{count}' for i in missing)} missing (got {len(seen)} of {count})")

    # Cases: each in one shard, at its position in the selection.
    selected = next(iter(metas.values()))["selected"]
    placed: dict[int, tuple[CaseResult, str]] = {}
    owner: dict[str, str] = {}
    claimed: dict[int, str] = {}
    results: dict[str, RunResult] = {}
    for src, data in by_source.items():
        meta = metas[src]
        try:
            result = run_result_from_json(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise MergeError(f"{src}: malformed run report ({type(exc).__name__}: {exc})") from exc
        results[src] = result
        positions = meta["positions"]
        if any(type(p) is not int or not 0 <= p < selected for p in positions):
            raise MergeError(f"{src}: shard positions outside the selection of {selected} cases")
        if len(result.cases) > len(positions):
            raise MergeError(f"{src}: {len(result.cases)} cases but the shard has {len(positions)} positions")
        if not result.interrupted and len(result.cases) != len(positions):
            raise MergeError(f"{src}: {len(result.cases)} of the shard's {len(positions)} cases ran, and the run "
                             "was not interrupted")
        _check_totals(data, result, src)
        for p in positions:
            if p in claimed:
                raise MergeError(f"overlapping shards: {src} and {claimed[p]} both hold case {p} of the selection")
            claimed[p] = src
        for p, r in zip(positions, result.cases):
            if r.id in owner:
                raise MergeError(f"overlapping shards: case {r.id} is in {src} and in {owner[r.id]}")
            owner[r.id] = src
            placed[p] = (r, src)
    if len(claimed) != selected:
        raise MergeError(f"incomplete: the shards hold {len(claimed)} of the {selected} selected cases")

    ordered = [placed[p][0] for p in sorted(placed)]
    interrupted = any(r.interrupted for r in results.values())
    if not interrupted:
        from gdn_verify.shard import selection_digest

        if selection_digest([r.case for r in ordered]) != next(iter(metas.values()))["selection_digest"]:
            raise MergeError("the shards' cases, in their recorded positions, are not the selection they name "
                             "(its digest differs): reports of another run?")

    by_index = sorted(by_source, key=lambda s: metas[s]["index"])
    first = results[by_index[0]]
    audits = [results[s].variant_audit for s in by_index]
    audit = next((a for a in audits if a is not None and not a.passed), audits[0])
    merged = RunResult(suite=first.suite, impl=first.impl, device=first.device, backend=first.backend,
                       fingerprint=first.fingerprint, cases=ordered, goldens=dict(first.goldens),
                       variant_audit=audit, wall_s=max(results[s].wall_s for s in by_index),
                       interrupted=interrupted, selected=selected)
    shards = []
    for s in by_index:
        r, meta = results[s], metas[s]
        shards.append({"index": meta["index"], "count": count, "source": s, "cases": len(r.cases),
                       "selected": len(meta["positions"]), "cost": meta.get("cost"), "passed": r.passed,
                       "interrupted": r.interrupted, "wall_s": r.wall_s, "device": r.device,
                       "host": {k: r.fingerprint.get(k) for k in HOST_FIELDS},
                       "goldens_root": r.goldens.get("root"),
                       "variant_audit": None if r.variant_audit is None else r.variant_audit.to_json()})
    options = dict(metas[by_index[0]].get("options") or {})
    return MergedReport(result=merged, command=metas[by_index[0]].get("command", "run"), options=options,
                        shards=shards)


def _check_totals(data: dict, result: RunResult, source: str) -> None:
    """The report's stored totals must be those of its cases (an edited or truncated file is refused)."""
    stored = data.get("totals")
    if stored is not None and stored != result.totals:
        raise MergeError(f"{source}: its totals {stored} are not those of its cases {result.totals}")


def merge_files(paths: Sequence[str | os.PathLike]) -> MergedReport:
    """merge_reports of report files (each named in messages by its path)."""
    paths = list(paths)
    names = [str(p) for p in paths]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise MergeError(f"{dup}: given twice")
    return merge_reports([load_report(p) for p in paths], names)


def headline(merged: MergedReport) -> str:
    """The terminal's last line: report.verdict or the golden diff's headline, with the shards."""
    shards = f" (merged from {len(merged.shards)} shards)"
    if merged.command == "golden diff":
        return f"golden diff: {merged.store_diff().headline()}{shards}"
    from gdn_verify.report import verdict

    return verdict(merged.result) + shards
