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

import contextlib
import signal
import threading
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from gdn_verify.adapters import ContractViolation, NotSupported
from gdn_verify.cases import Case, dense, varlen
from gdn_verify.compare import (REFERENCE_AGREEMENT, TENSORS, TensorCheck, backend_of, compare_outputs, design_to_judge,
                                emulate, rms_ratio)
from gdn_verify.impls import Impl, gdn_args, gdn_kwargs
from gdn_verify.inputs import inputs_digest, make_inputs, to_device
from gdn_verify.invariants import INVARIANTS, InvariantResult, check_invariants, diagnose_stages

# The compile-variant audit's sweep: T = 64 alone first, then every length of the sweep.
AUDIT_T = {"cuda": (1, 16, 32, 63, 64, 65, 128, 1000), "cpu-interpreter": (1, 16, 32, 63, 64, 65, 128)}
# Without the in-kernel l2norm: flash-linear-attention autotunes its l2norm kernel anew for
# every bucket of T, which spent a whole comparison run's time budget on the audit (H200,
# 2026-11-29). Our l2norm stage's variants are audited by tests/test_kernels_chunk.py and
# benchmarks/bench_kernels.py instead.
AUDIT_SHAPE = {"cuda": dict(H=4, HV=8, K=128, V=128), "cpu-interpreter": dict(H=1, HV=2, K=16, V=16)}

STATUS_PASS, STATUS_FAIL, STATUS_CHANGED, STATUS_ERROR = "pass", "fail", "changed", "error"
STATUS_NOT_SUPPORTED = "not supported"
STATUSES = (STATUS_PASS, STATUS_FAIL, STATUS_CHANGED, STATUS_ERROR, STATUS_NOT_SUPPORTED)


class SetupError(Exception):
    """The run cannot start or go on (bad goldens, unusable device): exit code 2."""


class CaseTimeout(BaseException):
    """A case ran past its time limit. A BaseException, so that an implementation's own
    `except Exception` cannot swallow it."""

    def __init__(self, seconds: float):
        super().__init__(f"timed out after {seconds:g} s")


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise CaseTimeout in the main thread after `seconds` (None: no limit), by SIGALRM.

    A Python-level hang (a loop, time.sleep, the Triton interpreter between NumPy calls) is
    interrupted; a call stuck inside C code (a CUDA synchronize, one long NumPy or torch
    operation) is not: the signal is handled only when it returns to Python. The previous
    SIGALRM handler is restored afterwards; the timer (ITIMER_REAL) is the harness's while a
    limit is armed."""
    if seconds is None:
        yield
        return
    if threading.current_thread() is not threading.main_thread():
        raise SetupError("--case-timeout: works only in the main thread (it uses SIGALRM)")

    def expire(signum, frame):
        raise CaseTimeout(seconds)

    previous = signal.signal(signal.SIGALRM, expire)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        yield
    finally:
        # Disarm before restoring: SIGALRM's default action ends the process.
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def exception_text(exc: BaseException) -> str:
    """"SystemExit: 0", "RuntimeError: what": the exception's type and message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


INTERRUPTED = "KeyboardInterrupt: the run was interrupted"


# ----------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------

@dataclass
class GoldenResult:
    # goldens.GoldenComparison's "equal" | "different" | "missing" | "inputs-changed", or
    # "not comparable" (no store for this platform) | "not checked" (no --goldens)
    status: str
    detail: str = ""
    diffs: dict[str, dict | str] = field(default_factory=dict)  # tensor -> BitDiff.to_json() or why not

    @property
    def unexpected(self) -> bool:
        return self.status in ("different", "inputs-changed")

    def to_json(self) -> dict:
        return {"status": self.status, "detail": self.detail, "diffs": self.diffs}


@dataclass
class CaseResult:
    case: Case
    status: str
    failures: list[str]
    inputs_digest: str
    checks: dict[str, TensorCheck] = field(default_factory=dict)
    reference_agreement: dict | None = None  # torch vs JAX reference, when run
    invariants: list[InvariantResult] = field(default_factory=list)
    stages: dict | None = None
    golden: GoldenResult = field(default_factory=lambda: GoldenResult("not checked"))
    timing: dict[str, float] = field(default_factory=dict)
    repro: str | None = None
    traceback: str | None = None  # when the implementation raised
    # Why the case (status "not supported") or one of its invariants ("name: why") could not run.
    not_supported: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.case.id

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "case": self.case.to_dict(),
            "status": self.status,
            "failures": self.failures,
            "inputs_digest": self.inputs_digest,
            "checks": {name: c.to_json() for name, c in self.checks.items()},
            "reference_agreement": self.reference_agreement,
            "invariants": [i.to_json() for i in self.invariants],
            "stages": self.stages,
            "golden": self.golden.to_json(),
            "timing": self.timing,
            "repro": self.repro,
            "traceback": self.traceback,
            "not_supported": self.not_supported,
        }


@dataclass
class VariantAudit:
    lengths: list[int]
    after_t64: dict[str, int]  # compiled variants per kernel after T = 64 alone
    after_sweep: dict[str, int]
    passed: bool
    detail: str
    # False when the implementation, as declared, cannot run the audit's calls (passed is then
    # True: neither a pass nor a failure, said so in the reports).
    ran: bool = True

    def to_json(self) -> dict:
        return {"lengths": self.lengths, "after_t64": self.after_t64, "after_sweep": self.after_sweep,
                "passed": self.passed, "detail": self.detail, "ran": self.ran}


@dataclass
class RunResult:
    suite: str
    impl: str
    device: str
    backend: str
    fingerprint: dict
    cases: list[CaseResult]
    goldens: dict  # {"root", "platform_key", "status", "stored": [...]} or {"status": "not checked"}
    variant_audit: VariantAudit | None
    wall_s: float
    interrupted: bool = False  # stopped by KeyboardInterrupt before its last case
    selected: int | None = None  # cases selected (more than ran when interrupted)

    @property
    def totals(self) -> dict[str, int]:
        counts = {s: 0 for s in STATUSES}
        for r in self.cases:
            counts[r.status] += 1
        counts["cases"] = len(self.cases)
        counts["golden_equal"] = sum(r.golden.status == "equal" for r in self.cases)
        counts["golden_missing"] = sum(r.golden.status == "missing" for r in self.cases)
        return counts

    @property
    def golden_coverage(self) -> tuple[int, int]:
        """(cases compared bit for bit with a golden, cases run): a case is compared when its
        golden was equal or different; not-supported cases are not run."""
        ran = sum(r.status != STATUS_NOT_SUPPORTED for r in self.cases)
        return sum(r.golden.status in ("equal", "different") for r in self.cases), ran

    @property
    def passed(self) -> bool:
        audit_ok = self.variant_audit is None or self.variant_audit.passed
        return (audit_ok and not self.interrupted
                and all(r.status in (STATUS_PASS, STATUS_NOT_SUPPORTED) for r in self.cases))

    def to_json(self) -> dict:
        return {
            "suite": self.suite,
            "impl": self.impl,
            "device": self.device,
            "backend": self.backend,
            "passed": self.passed,
            "totals": self.totals,
            "wall_s": self.wall_s,
            "fingerprint": self.fingerprint,
            "goldens": self.goldens if self.goldens.get("status") == "not checked" else
            dict(self.goldens, compared=self.golden_coverage[0], ran=self.golden_coverage[1]),
            "variant_audit": None if self.variant_audit is None else self.variant_audit.to_json(),
            "interrupted": self.interrupted,
            "selected": len(self.cases) if self.selected is None else self.selected,
            "cases": [r.to_json() for r in self.cases],
        }


# ----------------------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunOptions:
    reference: bool = True  # compare against the float64 reference (off: goldens only)
    jax: bool = False  # also run the JAX reference where it applies, as a check of the reference
    invariants: tuple[str, ...] = INVARIANTS
    diagnose: bool = True  # stage diagnosis after a failed end-to-end check (chunk kernel)
    audit: bool = True
    goldens: str | None = None
    # With goldens: a store for this platform must exist (else SetupError before any case runs).
    require_goldens: bool = False
    repro_dir: str | None = None
    case_timeout: float | None = None  # seconds per case (see time_limit); None: no limit
    # With goldens: compare even with a store written by another implementation (_Goldens).
    against_impl: bool = False


# ----------------------------------------------------------------------------------------
# Goldens
# ----------------------------------------------------------------------------------------

class _Goldens:
    """This run's view of a golden store: the platform's goldens, or why there are none.

    With `impl`, the store must have been written by the same implementation (any revision of
    it: gdn_verify/identity.py): SetupError otherwise, unless `against_impl`, which compares
    anyway and records the fact in the summary ("against_impl"). The summary's "identity"
    holds the store's and this run's identities and the revision fields that changed."""

    def __init__(self, root: str | None, fp: dict, required: bool = False, suite: str = "SUITE",
                 impl: Impl | None = None, against_impl: bool = False):
        self.platform = None
        if root is None:
            self.summary = {"status": "not checked"}
            return
        from gdn_verify.goldens import GoldenError, GoldenStore
        from gdn_verify.platform import platform_key

        path = Path(root)
        if not path.is_dir():
            raise SetupError(f"--goldens {root}: no such directory")
        try:
            store = GoldenStore(path)
            self.platform = store.for_platform(fp)
            stored = store.stores()
        except (GoldenError, OSError, ValueError) as exc:
            raise SetupError(f"--goldens {root}: unreadable golden store ({exc})") from exc
        self.summary = {"root": str(path), "platform_key": platform_key(fp)}
        if self.platform is None:
            self.summary["status"] = "not comparable"
            self.summary["detail"] = store.not_comparable_message(fp)
            self.summary["stored"] = [{"platform_key": key, "fingerprint": sfp} for key, sfp in stored]
            if required:
                raise SetupError(
                    f"--require-goldens: no bitwise comparison is possible: {self.summary['detail']}\n"
                    f"Write a store for this platform with `gdn-verify golden regen --suite {suite} --goldens {root}` "
                    "(and commit it), or run without --require-goldens.")
        else:
            self.summary["status"] = "comparable"
            self.ids = self.platform.case_ids()
            if impl is not None:
                self._check_identity(impl, against_impl)

    def _check_identity(self, impl: Impl, against_impl: bool) -> None:
        from gdn_verify.goldens import implementation_mismatch
        from gdn_verify.identity import implementation_identity, revision_changes

        stored, current = self.platform.identity, implementation_identity(impl)
        mismatch = implementation_mismatch(stored, current, self.platform.directory)
        if mismatch is not None and not against_impl:
            raise SetupError(f"{mismatch}. Compare with goldens of the same implementation, or pass "
                             "--against-impl to compare these anyway (the report then says so).")
        self.summary["identity"] = {"store": stored, "run": current, "changed": revision_changes(stored, current)}
        self.summary["store_variant_audit"] = self.platform.variant_audit
        if mismatch is not None:
            self.summary["against_impl"] = mismatch

    def compare(self, case: Case, digest: str, outputs: dict[str, torch.Tensor]) -> GoldenResult:
        if self.summary["status"] == "not checked":
            return GoldenResult("not checked")
        if self.platform is None:
            return GoldenResult("not comparable", self.summary["detail"])
        from gdn_verify.goldens import GoldenError

        try:
            found = self.platform.compare(case.id, digest, {name: outputs[name] for name in TENSORS})
        except GoldenError as exc:
            raise SetupError(str(exc)) from exc
        if found.status == "missing":
            detail = "no stored golden for this case on this platform"
        elif found.status == "inputs-changed":
            detail = (f"stored inputs digest {found.stored_inputs_digest[:12]}, now {digest[:12]}: "
                      "the golden was made from other inputs (golden regen --force)")
        else:
            detail = "; ".join(f"{name}: {d if isinstance(d, str) else d.summary()}" for name, d in found.diffs.items()
                               if isinstance(d, str) or not d.equal)
        return GoldenResult(found.status, detail, found.to_json()["diffs"])


# ----------------------------------------------------------------------------------------
# One case
# ----------------------------------------------------------------------------------------

def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _poisoned(impl: Impl):
    if impl.supports_poison:
        from gdn_verify.kernels._alloc import poisoned_outputs

        return poisoned_outputs()
    return nullcontext()


def torch_reference(case: Case, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from gdn_verify.reference import recurrent_gated_delta_rule

    o, final_state = recurrent_gated_delta_rule(*gdn_args(inputs), **gdn_kwargs(case, inputs),
                                                use_qk_l2norm=case.l2norm, dtype=torch.float64)
    return {"o": o, "final_state": final_state}


def other_references(case: Case, inputs: dict[str, torch.Tensor], names: Sequence[str]) -> dict[str, dict]:
    """Outputs of the chunked and/or JAX references (float64, on the CPU), by name."""
    out = {}
    if "chunked" in names:
        from gdn_verify.reference import chunked_gated_delta_rule

        o, final_state = chunked_gated_delta_rule(*gdn_args(inputs), **gdn_kwargs(case, inputs),
                                                  use_qk_l2norm=case.l2norm)[:2]
        out["chunked"] = {"o": o.cpu(), "final_state": final_state.cpu()}
    if "jax" in names:
        from gdn_verify.reference import jax_recurrent_gated_delta_rule

        host = {name: t.cpu() for name, t in inputs.items()}
        o, final_state = jax_recurrent_gated_delta_rule(*gdn_args(host), **gdn_kwargs(case, host),
                                                        use_qk_l2norm=case.l2norm)[:2]
        out["jax"] = {"o": torch.from_numpy(o), "final_state": torch.from_numpy(final_state)}
    return out


def _agreement(name: str, theirs: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict:
    ratios = {t: rms_ratio(theirs[t], reference[t].cpu()) for t in TENSORS}
    return {"reference": name, **ratios, "bound": REFERENCE_AGREEMENT,
            "passed": all(r <= REFERENCE_AGREEMENT for r in ratios.values())}


def jax_agreement(case: Case, inputs: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict:
    """The JAX reference against the torch one: RMS ratios, and whether they agree."""
    return _agreement("jax", other_references(case, inputs, ("jax",))["jax"], reference)


def reference_agreement(cases: Sequence[Case], device: str) -> list[dict]:
    """Every other reference that applies to each case, against the torch recurrence."""
    rows = []
    for case in cases:
        inputs = to_device(make_inputs(case), device)
        reference = torch_reference(case, inputs)
        names = [n for n in ("chunked", "jax") if n in case.references]
        for name, theirs in other_references(case, inputs, names).items():
            rows.append({"case": case.id, **_agreement(name, theirs, reference)})
    return rows


def run_case(case: Case, impl: Impl, device: str, options: RunOptions,
             goldens: _Goldens) -> tuple[CaseResult, dict[str, torch.Tensor] | None]:
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


def _check_case(result: CaseResult, case: Case, impl: Impl, device: str, options: RunOptions, goldens: _Goldens,
                inputs: dict[str, torch.Tensor], digest: str, timing: dict[str, float]) -> dict[str, torch.Tensor]:
    """The checks of one case, filling in `result`; returns the implementation's outputs."""
    backend = backend_of(device)
    t = time.perf_counter()
    with _poisoned(impl):
        o, final_state = impl(case, inputs)
    _sync(device)
    timing["impl_s"] = time.perf_counter() - t
    outputs = {"o": o, "final_state": final_state}

    reference = None
    if options.reference:
        t = time.perf_counter()
        reference = torch_reference(case, inputs)
        _sync(device)
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
        _sync(device)
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
# Variant audit
# ----------------------------------------------------------------------------------------

def variant_audit(impl: Impl, device: str, timeout_s: float | None = None) -> VariantAudit | None:
    """Compiled variants per kernel after T = 64 alone, then after the whole T sweep (dense
    single sequences and one packed batch of the same lengths). Shorter or longer sequences
    must not need new variants: no specialization may derive from T.

    A call that raises (anything but KeyboardInterrupt and NotSupported, which propagate) or
    breaks the contract fails the audit with what happened; `timeout_s` limits each call."""
    if impl.variants is None:
        return None
    backend = backend_of(device)
    lengths = AUDIT_T[backend]
    shape = AUDIT_SHAPE[backend]

    def run(cases: Iterable[Case]) -> None:
        for case in cases:
            with time_limit(timeout_s):
                impl(case, to_device(make_inputs(case), device))
                _sync(device)

    try:
        run([dense(64, dtype="bfloat16", **shape), varlen((64,), dtype="bfloat16", **shape)])
        after_t64 = impl.variants()
        run([dense(T, dtype="bfloat16", **shape) for T in lengths] + [varlen(lengths, dtype="bfloat16", **shape)])
        after_sweep = impl.variants()
    except (KeyboardInterrupt, NotSupported, SetupError):
        raise
    except BaseException as exc:  # noqa: BLE001 - the implementation's failure is the audit's finding
        what = str(exc) if isinstance(exc, (CaseTimeout, ContractViolation)) else exception_text(exc)
        return VariantAudit(list(lengths), {}, {}, False, f"the audit's calls failed: {what}")
    added = {name: n - after_t64.get(name, 0) for name, n in after_sweep.items() if n != after_t64.get(name, 0)}
    detail = (f"{sum(after_sweep.values())} variants over {len(after_sweep)} kernels, "
              f"the same as after T = 64 alone" if not added
              else "the T sweep added variants: " + ", ".join(f"{k} +{n}" for k, n in added.items()))
    return VariantAudit(list(lengths), after_t64, after_sweep, not added, detail)


# ----------------------------------------------------------------------------------------
# A run
# ----------------------------------------------------------------------------------------

def run_cases(cases: Sequence[Case], impl: Impl, device: str, options: RunOptions, suite: str = "custom",
              on_case: Callable[[CaseResult, int, int], None] | None = None,
              on_outputs: Callable[[CaseResult, dict[str, torch.Tensor]], None] | None = None) -> RunResult:
    """Run `cases`; `on_case(result, index, total)` after each case (progress),
    `on_outputs(result, outputs)` with the implementation's outputs of each case that ran.
    A KeyboardInterrupt stops the run: the result holds the cases done, the one it stopped
    (status error, INTERRUPTED) and `interrupted`."""
    from gdn_verify.platform import fingerprint

    start = time.perf_counter()
    fp = fingerprint(device)
    goldens = _Goldens(options.goldens, fp, required=options.require_goldens, suite=suite, impl=impl,
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
    return RunResult(suite=suite, impl=impl.spec, device=device, backend=backend_of(device), fingerprint=fp,
                     cases=results, goldens=goldens.summary, variant_audit=audit,
                     wall_s=time.perf_counter() - start, interrupted=interrupted, selected=len(cases))
