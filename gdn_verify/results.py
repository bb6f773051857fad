"""The results of a run, and its options: plain dataclasses with `to_json()` (tensors never
enter them), the case statuses, and the setup error that ends a run with exit code 2."""

from __future__ import annotations

from dataclasses import dataclass, field

from gdn_verify.cases import Case
from gdn_verify.compare import TensorCheck
from gdn_verify.invariants import INVARIANTS, InvariantResult

STATUS_PASS, STATUS_FAIL, STATUS_CHANGED, STATUS_ERROR = "pass", "fail", "changed", "error"
STATUS_NOT_SUPPORTED = "not supported"
STATUSES = (STATUS_PASS, STATUS_FAIL, STATUS_CHANGED, STATUS_ERROR, STATUS_NOT_SUPPORTED)


class SetupError(Exception):
    """The run cannot start or go on (bad goldens, unusable device): exit code 2."""


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
    # True when every autotune key was settled before counting, so the counts are the variants
    # the calls launch; False when configs compiled only to time them were counted too (which
    # then depends on whether this process tuned or found the choices in Triton's disk cache).
    settled: bool = False

    def to_json(self) -> dict:
        return {"lengths": self.lengths, "after_t64": self.after_t64, "after_sweep": self.after_sweep,
                "passed": self.passed, "detail": self.detail, "ran": self.ran, "settled": self.settled}


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
    case_timeout: float | None = None  # seconds per case (see audit.time_limit); None: no limit
    # With goldens: compare even with a store written by another implementation (run_goldens.RunGoldens).
    against_impl: bool = False

