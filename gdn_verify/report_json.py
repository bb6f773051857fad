"""Run reports back from their JSON: a RunResult from what `--json` wrote (RunResult.to_json as
gdn_verify/render.py writes it), and a shard's JSON report (the run's plus its "shard" key,
gdn_verify/shard.shard_metadata). `gdn-verify report merge` (gdn_verify/report_merge.py) reads
the shards' reports through these."""

from __future__ import annotations

import json
import math
import os
from dataclasses import fields

from gdn_verify.cases import Case
from gdn_verify.compare import TensorCheck
from gdn_verify.files import write_atomic
from gdn_verify.invariants import InvariantResult
from gdn_verify.render import to_json_text
from gdn_verify.results import CaseResult, GoldenResult, RunResult, VariantAudit

NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
# Text fields inside the numeric structures: never turned into numbers.
_TEXT_KEYS = frozenset({"detail", "hint", "failures", "name", "spec", "tensor", "key", "reference",
                        "first_divergent"})


def _numbers(x, key: str | None = None):
    """Undo render.json_safe: the strings "inf", "-inf", "nan" back to floats (not in text fields)."""
    if key in _TEXT_KEYS:
        return x
    if isinstance(x, str):
        return NONFINITE.get(x, x)
    if isinstance(x, dict):
        return {k: _numbers(v, k) for k, v in x.items()}
    if isinstance(x, list):
        return [_numbers(v) for v in x]
    return x


def _check(d: dict) -> TensorCheck:
    names = {f.name for f in fields(TensorCheck)}
    d = _numbers(d)
    return TensorCheck(**{k: v for k, v in d.items() if k in names})


def case_result_from_json(d: dict) -> CaseResult:
    """A CaseResult from CaseResult.to_json() (as a report stores it)."""
    case = Case.from_dict(d["case"])
    if case.id != d["id"]:
        raise ValueError(f"case {d['id']!r}: its spec gives the id {case.id!r}")
    golden = d.get("golden") or {"status": "not checked"}
    diffs = {name: (diff if isinstance(diff, str) else _numbers(diff))
             for name, diff in golden.get("diffs", {}).items()}
    return CaseResult(
        case=case, status=d["status"], failures=list(d["failures"]), inputs_digest=d["inputs_digest"],
        checks={name: _check(c) for name, c in d.get("checks", {}).items()},
        reference_agreement=_numbers(d.get("reference_agreement")),
        invariants=[InvariantResult(i["name"], i["passed"], i["detail"], _numbers(i.get("tensors", {})))
                    for i in d.get("invariants", [])],
        stages=_numbers(d.get("stages")),
        golden=GoldenResult(golden["status"], golden.get("detail", ""), diffs),
        timing=dict(d.get("timing", {})), repro=d.get("repro"), traceback=d.get("traceback"),
        not_supported=list(d.get("not_supported", [])))


def run_result_from_json(data: dict) -> RunResult:
    """A RunResult from RunResult.to_json() / a report file's JSON. Its to_json() gives that JSON
    back (after render.json_safe), with "passed", "totals" and the goldens' "compared" / "ran"
    recomputed from the cases; the "shard" key, if any, is not part of it."""
    audit = data.get("variant_audit")
    goldens = {k: v for k, v in data["goldens"].items() if k not in ("compared", "ran")}
    wall = data["wall_s"]
    return RunResult(
        suite=data["suite"], impl=data["impl"], device=data["device"], backend=data["backend"],
        fingerprint=data["fingerprint"], cases=[case_result_from_json(c) for c in data["cases"]], goldens=goldens,
        variant_audit=None if audit is None else VariantAudit(**audit),
        wall_s=NONFINITE.get(wall, wall) if isinstance(wall, str) else wall,
        interrupted=bool(data.get("interrupted", False)), selected=data.get("selected"))


def shard_report(result: RunResult, meta: dict) -> dict:
    """A shard's JSON report: the run's (as report.write_json writes it) with the "shard" key
    (shard.shard_metadata) before its cases."""
    data = json.loads(to_json_text(result))
    cases = data.pop("cases")
    data["shard"] = meta
    data["cases"] = cases
    return data


def write_shard_json(result: RunResult, meta: dict, path: str | os.PathLike) -> None:
    """Write a shard's JSON report (what `run --shard I/N --json PATH` writes)."""
    write_atomic(path, json.dumps(shard_report(result, meta), indent=1, allow_nan=False) + "\n")
