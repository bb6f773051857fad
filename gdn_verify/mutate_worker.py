"""The subprocess of a mutation run (gdn_verify/mutate.py): runs one copy of the sources on
its cases, in a process whose PYTHONPATH starts with that copy, and writes what it found
(a mutate.CopyRun) as JSON. Exit 0 with a result file; mutate.WORKER_EXIT_SETUP when no verdict is
possible (the copy is not what gets imported, unreadable goldens)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from gdn_verify.cases import Case
from gdn_verify.mutate import WORKER_EXIT_SETUP, AUDIT, PACKAGES, CopyRun, MutationSetupError, assert_isolated


def first_failure(result) -> tuple[str, str]:
    """(check, detail) of a failed runner.CaseResult, in the order the runner checks."""
    if result.status == "error":
        return "error", result.failures[0] if result.failures else ""
    for name, check in result.checks.items():
        if not check.passed:
            return f"reference:{name}", check.failures[0]
    for inv in result.invariants:
        if not inv.passed:
            return inv.name, inv.detail
    if result.golden.unexpected:
        return "golden", f"{result.golden.status}: {result.golden.detail}"
    return "unknown", "; ".join(result.failures)


def worker_main(spec_path: str) -> int:
    """Run one copy's cases (the subprocess). Exit 0 with a result file, WORKER_EXIT_SETUP on a setup error."""
    spec = json.loads(Path(spec_path).read_text())
    root = Path(spec["root"]).resolve()
    isolated = spec.get("isolated", PACKAGES)
    try:
        assert_isolated(root, isolated)
    except MutationSetupError as exc:
        print(f"import isolation failed: {exc}", file=sys.stderr)
        return WORKER_EXIT_SETUP
    from gdn_verify.impls import resolve_impl
    from gdn_verify.platform import fingerprint
    from gdn_verify.audit import variant_audit
    from gdn_verify.results import RunOptions, SetupError, STATUS_PASS
    from gdn_verify.run_goldens import RunGoldens
    from gdn_verify.runner import run_case

    device = spec.get("device", "cpu")
    if device == "cpu":
        # Speed only (no bits depend on it): the workers run side by side, one torch thread each
        # keeps them from oversubscribing the cores with the float64 reference's parallel ops.
        import torch

        torch.set_num_threads(1)
    cases = [Case.from_dict(d) for d in spec["cases"]]
    run = CopyRun(spec["name"], False)
    start = time.perf_counter()
    try:
        impl = resolve_impl(spec.get("impl", "gdn"), device=device)
    except Exception as exc:  # a mutant that breaks the import: caught, but by no case
        run.failed, run.check, run.detail = True, "import", f"{type(exc).__name__}: {exc}"
        Path(spec["out"]).write_text(json.dumps(run.to_json()))
        return 0
    try:
        assert_isolated(root, isolated)  # again, now that the kernels are loaded
    except MutationSetupError as exc:
        print(f"import isolation failed: {exc}", file=sys.stderr)
        return WORKER_EXIT_SETUP

    def fail(case_id: str, check: str, detail: str) -> bool:
        """Record a failure; True when the run should stop here."""
        run.failures.append({"case": case_id, "check": check, "detail": detail})
        if not run.failed:
            run.failed, run.case, run.check, run.detail = True, case_id, check, detail
        return spec["fail_fast"]

    try:
        goldens = RunGoldens(spec["goldens"], fingerprint(device))
    except SetupError as exc:
        print(f"goldens: {exc}", file=sys.stderr)
        return WORKER_EXIT_SETUP
    stop = False
    if spec["audit"]:
        run.audited = True
        try:
            audit = variant_audit(impl, device)
            if not audit.passed:
                stop = fail(AUDIT, "variant-audit", audit.detail)
        except Exception as exc:  # a crashing kernel is a finding, as in the runner
            stop = fail(AUDIT, "error", f"{type(exc).__name__}: {exc}")
    options = RunOptions(goldens=spec["goldens"], diagnose=False, audit=False,
                         **({} if spec["invariants"] else {"invariants": ()}))
    passing = []
    for case in cases if not stop else ():
        try:
            result, outputs = run_case(case, impl, device, options, goldens)
        except SetupError as exc:
            print(f"goldens: {exc}", file=sys.stderr)
            return WORKER_EXIT_SETUP
        run.cases_run += 1
        run.golden_statuses[result.golden.status] = run.golden_statuses.get(result.golden.status, 0) + 1
        if result.status != STATUS_PASS:
            if fail(case.id, *first_failure(result)):
                break
        elif spec["write_goldens"]:
            passing.append((case, result.inputs_digest, {k: t.detach().cpu() for k, t in outputs.items()}))
    if spec["write_goldens"] and not run.failed:
        from gdn_verify.goldens import regenerate

        regenerate(spec["write_goldens"], fingerprint(device), passing)
    run.wall_s = time.perf_counter() - start
    run.failures = run.failures[:20]
    Path(spec["out"]).write_text(json.dumps(run.to_json()))
    return 0
