"""Running an implementation over cases: checks, invariants, goldens, variant audit, timing.

Per case: inputs from the case (CPU, then the device), the float64 torch reference on the
same device (and the JAX reference when asked, as an independent check of the reference),
the implementation with poisoned outputs, the comparisons of `compare`, the invariants
(`invariants`), a bitwise comparison with the stored golden of this platform, and stage diagnosis
when an end-to-end check fails. After the cases, the compile-variant audit runs a T sweep and
fails if shorter sequences needed variants that T = 64 alone did not.

The implementation never sees the harness's own tensors: every call gets copies, and a
call that writes into its inputs, or returns outputs of another dtype, shape or device than
the contract's, fails the case (adapters.ContractViolation). The reference, the invariants,
the goldens and a reproducer use the untouched inputs. Anything the implementation raises ends
its case as an error, BaseExceptions included (SystemExit, a --case-timeout expiring), except
KeyboardInterrupt (SIGINT; the CLI's SIGTERM), which ends the run after marking its case as
interrupted: `run_cases` then returns what ran, so reports are still written.

A case the implementation's adapter cannot run as declared (a dtype it does not accept, an
argument it lacks) is "not supported": never a pass, never a failure. The same holds for an
invariant whose derived call needs what the implementation lacks (a packed batch without
cu_seqlens, a chained call without an initial state): it is listed as not supported.

Everything returned is a dataclass with `to_json()`; tensors never enter the results.
"""

from __future__ import annotations

import time
import traceback
from contextlib import nullcontext
from typing import Callable, Sequence

import torch

from gdn_verify.adapters import Adapter, NotSupported
from gdn_verify.call_guard import ContractViolation
from gdn_verify.audit import AUDIT_T, CaseTimeout, sync, time_limit, variant_audit
from gdn_verify.cases import Case
from gdn_verify.compare import backend_of, compare_outputs, design_to_judge, emulate
from gdn_verify.tolerances import REFERENCE_AGREEMENT
from gdn_verify.inputs import inputs_digest, make_inputs, to_device
from gdn_verify.invariants import check_invariants, diagnose_stages
from gdn_verify.references import jax_agreement, torch_reference
from gdn_verify.results import (INTERRUPTED, STATUS_CHANGED, STATUS_ERROR, STATUS_FAIL, STATUS_NOT_SUPPORTED,
                                STATUS_PASS, CaseResult, RunOptions, RunResult, SetupError, VariantAudit,
                                exception_text)
from gdn_verify.run_goldens import RunGoldens


def _poisoned(impl: Adapter):
    if impl.supports_poison:
        from gdn_verify.kernels import poisoned_outputs

        return poisoned_outputs()
    return nullcontext()


def run_case(case: Case, impl: Adapter, device: str, options: RunOptions,
             goldens: RunGoldens) -> tuple[CaseResult, dict[str, torch.Tensor] | None]:
    """One case; returns its result and the implementation's outputs (on the device)."""
    reason = impl.unsupported(case)
    if reason is not None:
        return CaseResult(case=case, status=STATUS_NOT_SUPPORTED, failures=[], inputs_digest="",
                          not_supported=[reason]), None
    timing: dict[str, float] = {}
    start = time.perf_counter()
    cpu_inputs = make_inputs(case)
    digest = inputs_digest(cpu_inputs)
    inputs = to_device(cpu_inputs, device)
    timing["inputs_s"] = time.perf_counter() - start
    result = CaseResult(case=case, status=STATUS_PASS, failures=[], inputs_digest=digest)
    outputs = None
    try:
        with time_limit(options.case_timeout):
            outputs = _check_case(result, case, impl, device, options, goldens, inputs, digest, timing)
    except (SetupError, KeyboardInterrupt):
        raise
    except NotSupported as exc:  # the main call's inputs need what the implementation lacks
        result.status = STATUS_NOT_SUPPORTED
        result.failures = []
        result.not_supported.append(str(exc))
        outputs = None
    except ContractViolation as exc:  # wrote into its inputs, or outputs of another dtype / shape / device
        result.status = STATUS_FAIL
        result.failures += exc.problems
        outputs = None
    except CaseTimeout as exc:
        result.status = STATUS_ERROR
        result.failures.append(str(exc))
        outputs = None
    except BaseException as exc:  # noqa: BLE001 - a crashing (or exiting) implementation is a finding about this case
        result.status = STATUS_ERROR
        result.failures.append(exception_text(exc))
        result.traceback = traceback.format_exc(limit=-6)
        outputs = None
    timing["total_s"] = time.perf_counter() - start
    result.timing.update(timing)

    # A reproducer calls the implementation with the common signature: only for adapters
    # that declare no conversion.
    if options.repro_dir and result.status in (STATUS_FAIL, STATUS_ERROR) and impl.calls_common_signature:
        from gdn_verify.repro import write_reproducer

        result.repro = str(write_reproducer(case, cpu_inputs, impl.spec, "; ".join(result.failures),
                                            options.repro_dir))
    return result, outputs


def _check_case(result: CaseResult, case: Case, impl: Adapter, device: str, options: RunOptions, goldens: RunGoldens,
                inputs: dict[str, torch.Tensor], digest: str, timing: dict[str, float]) -> dict[str, torch.Tensor]:
    """The checks of one case, filling in `result`; returns the implementation's outputs."""
    backend = backend_of(device)
    t = time.perf_counter()
    with _poisoned(impl):
        o, final_state = impl(case, inputs)
    sync(device)
    timing["impl_s"] = time.perf_counter() - t
    outputs = {"o": o, "final_state": final_state}

    reference = None
    if options.reference:
        t = time.perf_counter()
        reference = torch_reference(case, inputs)
        sync(device)
        timing["reference_s"] = time.perf_counter() - t
        design = design_to_judge(impl)  # None: the tolerance table
        emulated = None if design is None else emulate(design, case, inputs)
        result.checks = compare_outputs(outputs, reference, case, backend, impl.supports_poison, design, emulated)
        result.failures += [f for c in result.checks.values() for f in c.failures]
        if options.jax and "jax" in case.references:
            t = time.perf_counter()
            result.reference_agreement = jax_agreement(case, inputs, reference)
            timing["jax_s"] = time.perf_counter() - t
            if not result.reference_agreement["passed"]:
                agreement = result.reference_agreement
                result.failures.append(f"JAX and torch references disagree: o {agreement['o']:.3g}, "
                                       f"final_state {agreement['final_state']:.3g} > {REFERENCE_AGREEMENT:g}")

    if options.invariants:
        t = time.perf_counter()
        for name in options.invariants:
            try:
                with _poisoned(impl):
                    result.invariants += check_invariants((name,), impl, case, inputs, outputs, reference,
                                                          backend)
            except NotSupported as exc:
                result.not_supported.append(f"{name}: {exc}")
        sync(device)
        timing["invariants_s"] = time.perf_counter() - t
        result.failures += [f"{i.name}: {i.detail}" for i in result.invariants if not i.passed]

    if result.failures:
        result.status = STATUS_FAIL
        end_to_end_failed = any(not c.passed for c in result.checks.values())
        if options.diagnose and end_to_end_failed:
            copies = {name: t.clone() for name, t in inputs.items()}  # the intermediates call is unguarded
            result.stages = diagnose_stages(impl, case, copies, backend)

    result.golden = goldens.compare(case, digest, outputs)
    if result.status == STATUS_PASS and result.golden.unexpected:
        result.status = STATUS_CHANGED
        result.failures.append(f"golden {result.golden.status}: {result.golden.detail}")
    return outputs


# ----------------------------------------------------------------------------------------
# A run
# ----------------------------------------------------------------------------------------

def run_cases(cases: Sequence[Case], impl: Adapter, device: str, options: RunOptions, suite: str = "custom",
              on_case: Callable[[CaseResult, int, int], None] | None = None,
              on_outputs: Callable[[CaseResult, dict[str, torch.Tensor]], None] | None = None) -> RunResult:
    """Run `cases`; `on_case(result, index, total)` after each case (progress),
    `on_outputs(result, outputs)` with the implementation's outputs of each case that ran.
    A KeyboardInterrupt stops the run: the result holds the cases done, the one it stopped
    (status error, INTERRUPTED) and `interrupted`."""
    from gdn_verify.platform import fingerprint

    start = time.perf_counter()
    fp = fingerprint(device)
    goldens = RunGoldens(options.goldens, fp, required=options.require_goldens, suite=suite, impl=impl,
                       against_impl=options.against_impl)
    results: list[CaseResult] = []
    audit = None
    interrupted = False
    try:
        # The audit runs first: variants the cases compile for other lengths would otherwise already
        # be in the cache when the audit takes its T = 64 baseline, and hide a specialization on T.
        if options.audit:
            try:
                audit = variant_audit(impl, device, options.case_timeout)
            except NotSupported as exc:
                audit = VariantAudit(list(AUDIT_T[backend_of(device)]), {}, {}, True,
                                     f"not run: the audit's calls are not supported: {exc}", ran=False)
        for index, case in enumerate(cases):
            try:
                result, outputs = run_case(case, impl, device, options, goldens)
            except KeyboardInterrupt:
                # The case that was running when the run was stopped is reported as such.
                results.append(CaseResult(case=case, status=STATUS_ERROR, failures=[INTERRUPTED],
                                          inputs_digest=""))
                raise
            results.append(result)
            if on_outputs is not None and outputs is not None:
                on_outputs(result, outputs)
            if on_case is not None:
                on_case(result, index, len(cases))
    except KeyboardInterrupt:
        interrupted = True
    goldens.note_autotune()
    return RunResult(suite=suite, impl=impl.spec, device=device, backend=backend_of(device), fingerprint=fp,
                     cases=results, goldens=goldens.summary, variant_audit=audit,
                     wall_s=time.perf_counter() - start, interrupted=interrupted, selected=len(cases))
