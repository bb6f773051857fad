"""Mutation runs: deliberate, realistic GDN kernel bugs, and whether the suite catches each.

A `Mutant` is a list of text substitutions (anchor -> replacement) in files under kernels/.
Each mutant is applied to a private copy of the package sources in a temporary directory,
laid out as the installed package (gdn_verify/, gdn_verify/kernels/, gdn_verify/reference/),
and checked in a subprocess whose PYTHONPATH starts with that copy. The editable install's
path mapping is a meta-path finder appended after the normal path finder, so the copy wins;
the subprocess asserts that every gdn_verify module it runs comes from the copy before it
runs anything. The real tree is only ever read.

An anchor must occur exactly once in its file: a missing or repeated anchor raises
`MutantError` when the copy is made, so an edit of the kernels cannot turn a mutant into a
silent no-op.

Each mutant runs the compile-variant audit (cheap, and a check of the suite like any case),
then the cases cheapest first, and stops at its first failing case. A catch counts only if
the unmutated kernels pass that same case: a last pass checks them on every case that caught
a mutant. Mutants that only a bitwise comparison can see compare with a given golden store,
or else with the unmutated kernels' outputs, written to a temporary store by a pass that
runs before them.

Subprocesses run like golden runs: the interpreter, and thread counts pinned to 1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from gdn_verify.cases import Case

# Where each package of the distribution lives inside a copy (the installed layout).
PACKAGES = ("gdn_verify", "gdn_verify.kernels", "gdn_verify.reference")
KERNELS_PACKAGE = "gdn_verify.kernels"
# The compile-variant audit, named like a case in results and in `Mutant.kills`.
AUDIT = "variant-audit"
# Environment of every subprocess: the interpreter, and the thread pins of golden runs
# (the interpreter's bits depend on the BLAS thread count, gdn_verify/platform.py).
WORKER_ENV = {"TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}
# A mutant that hangs is caught, but should not hold CI until its job limit.
DEFAULT_TIMEOUT_S = 1200.0

CAUGHT, SURVIVED = "caught", "survived"


class MutantError(ValueError):
    """A mutant cannot be applied (anchor missing or ambiguous) or is unknown."""


class MutationSetupError(RuntimeError):
    """The run cannot give a verdict: the unmutated tree fails, or a copy is not isolated."""


# ----------------------------------------------------------------------------------------
# Mutants as data
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Edit:
    file: str  # path under kernels/
    anchor: str  # exact text, present exactly once in the file
    replacement: str


@dataclass(frozen=True)
class Mutant:
    name: str
    bug_class: str
    edits: tuple[Edit, ...]
    # Smallest set of cpu-suite case ids (or AUDIT) known to kill the mutant: what the tests
    # run, next to the unmutated tree on the same ids.
    kills: tuple[str, ...]
    # Only a bitwise comparison with goldens can see it (the change is within every tolerance).
    golden_only: bool = False


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "block-size-from-t",
        "block size derived from T for short batches (BT = next_power_of_2(T) below 64)",
        (Edit("cumsum.py", "                  FLOOR: tl.constexpr):",
              "                  FLOOR: tl.constexpr, BT: tl.constexpr):"),
         Edit("cumsum.py", "rows = tl.arange(0, CHUNK)", "rows = tl.arange(0, BT)"),
         Edit("cumsum.py", "BLOCK_HV=triton.next_power_of_2(HV),",
              "BLOCK_HV=triton.next_power_of_2(HV), BT=min(CHUNK.value, triton.next_power_of_2(g.shape[1])),")),
        kills=(AUDIT,),
    ),
    Mutant(
        "mask-after-exp",
        "causal mask applied after exp instead of before (0 * inf = NaN under strong decay)",
        (Edit("_common.py", "return tl.where(mask, tl.exp(tl.where(mask, diff, 0.0)), 0.0)",
              "return tl.exp(diff) * tl.where(mask, 1.0, 0.0)"),),
        kills=("dense-b1-t17-h1x2-d16-bf16-gstrong-beta0-state0",),
    ),
    Mutant(
        "factored-exp",
        "decay factored as exp(gam_i) * exp(-gam_j) (overflow under strong decay)",
        (Edit("output.py", "* masked_exp(gam[:, None] - gam[None, :], causal)",
              "* tl.where(causal, tl.exp(gam)[:, None] * tl.exp(-gam)[None, :], 0.0)"),),
        kills=("dense-b1-t17-h1x2-d16-bf16-gstrong-beta0-state0",),
    ),
    Mutant(
        "gate-second-to-last",
        "gate at the chunk end read at the second-to-last position of a partial chunk",
        (Edit("recurrence.py", "gam_last = tl.load(g_cum_ptr + (t0 + length - 1) * HV + hv)",
              "gam_last = tl.load(g_cum_ptr + (t0 + tl.where(length < CHUNK, tl.maximum(length - 2, 0), "
              "length - 1)) * HV + hv)"),),
        kills=("dense-b1-t3-h1x2-d16-f64-gstrong-state0",),
    ),
    Mutant(
        "state-transposed",
        "final state stored transposed ([V, K] instead of [K, V])",
        (Edit("recurrence.py", "tl.store(ht_ptr + head_state + state_tile, state, mask=state_mask)",
              "tl.store(ht_ptr + head_state + vcols[None, :] * K + kcols[:, None], state, mask=state_mask)"),),
        kills=("dense-b1-t2-h1x2-d16-f64-beta1",),
    ),
    Mutant(
        "initial-state-first-seq-only",
        "initial state applied only to the first sequence of a packed batch",
        (Edit("recurrence.py", "state = tl.load(h0_ptr + head_state + state_tile, mask=state_mask, other=0.0)",
              "state = tl.where(n == 0, tl.load(h0_ptr + head_state + state_tile, mask=state_mask, other=0.0), 0.0)"),),
        kills=("varlen-64.1.0-h1x2-d16-f32-gstrong-state0",),
    ),
    Mutant(
        "zero-length-shifts-chunk-map",
        "a zero-length sequence shifts the chunk map of the sequences after it "
        "(sequence of a chunk counted from chunks with local index 0)",
        (Edit("chunk_map.py",
              "        chunk_seq = torch.repeat_interleave(\n"
              "            torch.arange(problem.N, dtype=torch.int32, device=device), counts, output_size=n_chunks)",
              "        local_chunk = torch.arange(n_chunks, device=device) - torch.repeat_interleave(\n"
              "            seq_first_chunk[:-1], counts, output_size=n_chunks)\n"
              "        chunk_seq = (local_chunk == 0).cumsum(0, dtype=torch.int32) - 1"),),
        kills=("varlen-5.0.70-h1x2-d16-f32-beta1",),
    ),
    Mutant(
        "beta-through-bf16",
        "beta rounded through bfloat16 before use",
        (Edit("kkt_solve.py", "from ._triton_compat import dot", "from ._triton_compat import cast_to, dot"),
         Edit("kkt_solve.py", "beta = tl.load(beta_ptr + tokens * HV + hv, mask=valid, other=0.0).to(ACC)",
              "beta = cast_to(tl.load(beta_ptr + tokens * HV + hv, mask=valid, other=0.0), tl.bfloat16).to(ACC)"),
         Edit("recurrence.py", "from ._triton_compat import dot, loop_bound",
              "from ._triton_compat import cast_to, dot, loop_bound"),
         Edit("recurrence.py", "beta = tl.load(beta_ptr + tokens * HV + hv, mask=valid, other=0.0).to(ACC)",
              "beta = cast_to(tl.load(beta_ptr + tokens * HV + hv, mask=valid, other=0.0), tl.bfloat16).to(ACC)")),
        kills=("dense-b1-t33-h1x2-d16-f64-gzero",),
    ),
    Mutant(
        "partial-chunk-length-off-by-one",
        "the last partial chunk's length one short",
        (Edit("chunk_map.py", "length = tl.minimum(tl.load(seq_start_ptr + seq + 1) - first_token, CHUNK)",
              "remaining = tl.load(seq_start_ptr + seq + 1) - first_token\n"
              "    length = tl.where(remaining < CHUNK, remaining - 1, CHUNK)"),),
        kills=("dense-b1-t2-h1x2-d16-f64-beta1",),
    ),
    Mutant(
        "no-decay-between-chunks",
        "decay exp(gam_last) not applied to the state carried into the next chunk",
        (Edit("recurrence.py", "state = state * tl.exp(gam_last) + raw_dot(", "state = state + raw_dot("),),
        kills=("dense-b1-t3-h1x2-d16-f64-gstrong-state0",),
    ),
    Mutant(
        "gva-wrong-key-head",
        "wrong key head for a value head under GVA (hv % H instead of hv // (HV / H))",
        (Edit("kkt_solve.py", "kh = hv // GROUP", "kh = hv % H"),
         Edit("recurrence.py", "kh = hv // GROUP", "kh = hv % H"),
         Edit("output.py", "kh = hv // GROUP", "kh = hv % H")),
        kills=("dense-b1-t7-h2x4-d16-f32-gzero-state0",),
    ),
    Mutant(
        # Distributing the default scale would change nothing: K = 16 gives 0.25, a power of two.
        "v-new-reassociated",
        "beta distributed over the sum in V' = beta (v - exp(gam) K S): a few ULPs, within every tolerance",
        (Edit("recurrence.py", "beta[:, None] * (v - tl.exp(gam)[:, None] * ks)",
              "beta[:, None] * v - beta[:, None] * (tl.exp(gam)[:, None] * ks)"),),
        kills=("dense-b1-t7-h2x4-d16-f32-gzero-state0",),
        golden_only=True,
    ),
)


def mutant_by_name(names: Sequence[str] | None) -> list[Mutant]:
    """The named mutants in registry order (all when names is empty or None)."""
    if not names:
        return list(MUTANTS)
    known = {m.name: m for m in MUTANTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise MutantError(f"mutant: unknown {unknown}; expected names from {sorted(known)}")
    return [m for m in MUTANTS if m.name in set(names)]


# ----------------------------------------------------------------------------------------
# Copies of the sources
# ----------------------------------------------------------------------------------------

def source_dirs() -> dict[str, Path]:
    """Package name -> the directory its sources are imported from, without importing the
    kernels (find_spec of a subpackage imports only its parent)."""
    dirs = {}
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise MutationSetupError(f"cannot locate the sources of package {name}")
        dirs[name] = Path(list(spec.submodule_search_locations)[0]).resolve()
    return dirs


def apply_edit(text: str, edit: Edit, mutant: str = "?") -> str:
    """text with edit's anchor replaced; MutantError unless the anchor occurs exactly once."""
    count = text.count(edit.anchor)
    if count == 0:
        raise MutantError(f"mutant {mutant}: pattern not found in kernels/{edit.file}: {edit.anchor!r}")
    if count > 1:
        raise MutantError(f"mutant {mutant}: pattern matches {count} times in kernels/{edit.file}: "
                          f"{edit.anchor!r}")
    return text.replace(edit.anchor, edit.replacement)


def mutated_sources(mutant: Mutant | None, kernels_dir: Path) -> dict[str, str]:
    """Relative path under kernels/ -> mutated text, for the files the mutant edits."""
    if mutant is None:
        return {}
    texts: dict[str, str] = {}
    for edit in mutant.edits:
        if edit.file not in texts:
            path = kernels_dir / edit.file
            if not path.is_file():
                raise MutantError(f"mutant {mutant.name}: no file kernels/{edit.file}")
            texts[edit.file] = path.read_text()
        texts[edit.file] = apply_edit(texts[edit.file], edit, mutant.name)
    return texts


_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def make_copy(root: Path, mutant: Mutant | None, dirs: dict[str, Path] | None = None) -> Path:
    """The package sources under root/ in the installed layout, with the mutant applied.

    All edits are checked before anything is written. Returns root.
    """
    dirs = source_dirs() if dirs is None else dirs
    edited = mutated_sources(mutant, dirs[KERNELS_PACKAGE])
    for name in PACKAGES:  # parents first, so a subpackage lands inside its parent's copy
        shutil.copytree(dirs[name], root / name.replace(".", "/"), ignore=_IGNORE, dirs_exist_ok=True)
    kernels_copy = root / KERNELS_PACKAGE.replace(".", "/")
    for rel, text in edited.items():
        (kernels_copy / rel).write_text(text)
    return root


# ----------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------

@dataclass
class CopyRun:
    """What one subprocess found: the first failing case (or none) of a copy."""

    name: str  # mutant name, or which pass of the unmutated kernels
    failed: bool
    case: str | None = None  # first failing case id, or AUDIT
    check: str | None = None  # e.g. "reference:o", "batch-invariance", "golden", "error"
    detail: str = ""
    cases_run: int = 0
    audited: bool = False  # the compile-variant audit ran
    golden_statuses: dict[str, int] = field(default_factory=dict)  # golden comparison status -> cases
    wall_s: float = 0.0
    failures: list[dict] = field(default_factory=list)  # every failing case (one when failing fast)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class MutantResult:
    mutant: Mutant
    run: CopyRun

    @property
    def verdict(self) -> str:
        return CAUGHT if self.run.failed else SURVIVED

    def progress_line(self) -> str:
        where = f"at {self.run.case} ({self.run.check})" if self.run.failed else f"{self.run.cases_run} cases passed"
        return f"{self.verdict:8} {self.mutant.name}: {where}, {self.run.wall_s:.1f} s"

    def to_json(self) -> dict:
        return {"mutant": self.mutant.name, "class": self.mutant.bug_class, "verdict": self.verdict,
                "golden_only": self.mutant.golden_only, **{k: v for k, v in self.run.to_json().items()
                                                            if k not in ("name", "failures")}}


@dataclass
class MutationReport:
    results: list[MutantResult]
    cases: int
    goldens: str  # where the golden-only mutants' goldens came from
    # The unmutated kernels: the pass that wrote the goldens (None with a given store) and
    # the pass over every case (and audit) that caught a mutant.
    golden_pass: CopyRun | None
    confirm_pass: CopyRun
    wall_s: float

    @property
    def survivors(self) -> list[MutantResult]:
        return [r for r in self.results if r.verdict == SURVIVED]

    def to_json(self) -> dict:
        return {"cases": self.cases, "goldens": self.goldens, "wall_s": self.wall_s,
                "caught": len(self.results) - len(self.survivors), "survived": len(self.survivors),
                "mutants": [r.to_json() for r in self.results],
                "unmutated": {"golden_pass": None if self.golden_pass is None else self.golden_pass.to_json(),
                              "confirm_pass": self.confirm_pass.to_json()}}


# ----------------------------------------------------------------------------------------
# Running copies in subprocesses
# ----------------------------------------------------------------------------------------

# The worker's exit status for "no verdict possible" (isolation, unreadable goldens); a
# crashing mutant exits otherwise, without a result file.
_EXIT_SETUP = 3
_WORKER_CODE = "import sys; from gdn_verify.mutate import worker_main; sys.exit(worker_main(sys.argv[1]))"


@dataclass(frozen=True)
class _Pass:
    """What one subprocess is asked to do."""

    cases: tuple[Case, ...]
    audit: bool
    fail_fast: bool
    invariants: bool = True
    goldens: str | None = None  # store to compare with
    write_goldens: str | None = None  # store to write the passing cases' outputs to


def case_cost(case: Case) -> int:
    """Relative interpreter cost of a case: one program per (chunk or sequence, value head).

    Fitted on a cpu-suite run: time ~ 0.5 s + 0.06 s x cost, correlation 0.85.
    """
    return (case.N + sum(-(-n // 64) for n in case.seq_lens)) * case.HV


def _run_copy(root: Path, name: str, job: _Pass, timeout_s: float) -> CopyRun:
    spec = {"root": str(root), "name": name, "cases": [c.to_dict() for c in job.cases], "audit": job.audit,
            "fail_fast": job.fail_fast, "invariants": job.invariants, "goldens": job.goldens,
            "write_goldens": job.write_goldens, "out": str(root / "result.json")}
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, **WORKER_ENV, "PYTHONPATH": os.pathsep.join(
        [str(root)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", _WORKER_CODE, str(spec_path)], cwd=root, env=env,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return CopyRun(name, True, None, "timeout", f"no result after {timeout_s:.0f} s",
                       wall_s=time.perf_counter() - start)
    wall = time.perf_counter() - start
    out = root / "result.json"
    if done.returncode == _EXIT_SETUP:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "setup error"
        raise MutationSetupError(f"{name}: {last}")
    if not out.is_file():
        # The process died without a verdict (a crash in the kernels: segfault, abort).
        tail = (done.stderr or "").strip().splitlines()[-3:]
        return CopyRun(name, True, None, f"crash (exit {done.returncode})", " | ".join(tail), wall_s=wall)
    result = CopyRun(**json.loads(out.read_text()))
    result.wall_s = wall
    return result


def _failure_list(run: CopyRun) -> str:
    return "; ".join(f"{f['case']}: {f['check']}: {_short(f['detail'], 200)}" for f in run.failures[:5])


def run_mutants(mutants: Sequence[Mutant], cases: Sequence[Case], goldens: str | None = None,
                workers: int = 2, audit: bool = True, per_mutant_cases: bool = False,
                timeout_s: float = DEFAULT_TIMEOUT_S,
                on_result: Callable[[MutantResult], None] | None = None) -> MutationReport:
    """Run every mutant on `cases` (cheapest first, stopping at the first failure), `workers`
    subprocesses at a time, then check the unmutated kernels on every case that caught one.

    per_mutant_cases: each mutant runs only those of `cases` listed in its `kills` (and the
    audit only if listed there); otherwise every mutant runs all of `cases` and the audit.
    goldens: the store golden comparisons use. Without one, golden-only mutants compare with
    the unmutated kernels' outputs on `cases`, written to a temporary store first (a pass
    without invariants); other mutants then compare with no goldens.
    Raises MutantError when a mutant cannot be applied (before anything runs), and
    MutationSetupError when the unmutated kernels fail a case that caught a mutant (or any
    case, in the goldens pass): a catch must be a difference from the unmutated kernels.
    """
    if workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    if goldens is not None:  # the workers run in a temporary directory
        goldens = str(Path(goldens).resolve())
    start = time.perf_counter()
    dirs = source_dirs()
    for m in mutants:  # every anchor checked before anything runs
        mutated_sources(m, dirs[KERNELS_PACKAGE])
    # Cheapest first: a mutant stops at its first failing case, which is then also the
    # smallest reproducer at hand. sorted() is stable, so equal costs keep the suite's order.
    ordered = tuple(sorted(cases, key=case_cost))

    with tempfile.TemporaryDirectory(prefix="gdn-mutate-") as tmp:
        tmp_path = Path(tmp)
        write_store = str(tmp_path / "goldens") if goldens is None and any(m.golden_only for m in mutants) else None
        store = goldens if goldens is not None else write_store
        goldens_written = threading.Event()
        golden_pass: list[CopyRun] = []
        lock = threading.Lock()

        def golden_job() -> None:
            try:
                root = make_copy(tmp_path / "unmutated-goldens", None, dirs)
                golden_pass.append(_run_copy(root, "unmutated (goldens)", _Pass(
                    ordered, audit=False, fail_fast=False, invariants=False, write_goldens=write_store), timeout_s))
            finally:
                goldens_written.set()

        def mutant_job(m: Mutant) -> MutantResult:
            compare_with = goldens
            if m.golden_only and write_store is not None:
                goldens_written.wait()
                if not golden_pass or golden_pass[0].failed:
                    return MutantResult(m, CopyRun(m.name, False, detail="not run: the goldens pass failed"))
                compare_with = write_store
            if per_mutant_cases:
                job = _Pass(tuple(c for c in ordered if c.id in m.kills), AUDIT in m.kills, True, goldens=compare_with)
            else:
                job = _Pass(ordered, audit, True, goldens=compare_with)
            result = MutantResult(m, _run_copy(make_copy(tmp_path / m.name, m, dirs), m.name, job, timeout_s))
            if on_result is not None:
                with lock:
                    on_result(result)
            return result

        with ThreadPoolExecutor(max_workers=workers) as pool:
            golden_future = pool.submit(golden_job) if write_store is not None else None
            # Golden-only mutants last: they wait for the goldens pass.
            futures = {m.name: pool.submit(mutant_job, m) for m in sorted(mutants, key=lambda m: m.golden_only)}
            results = [futures[m.name].result() for m in mutants]
            if golden_future is not None:
                golden_future.result()
        if golden_pass and golden_pass[0].failed:
            raise MutationSetupError(f"the unmutated kernels fail {len(golden_pass[0].failures)} of the cases "
                                     f"(goldens pass): {_failure_list(golden_pass[0])}")

        catching = {r.run.case for r in results if r.run.failed and r.run.case}
        if catching:
            confirm = _run_copy(make_copy(tmp_path / "unmutated", None, dirs), "unmutated", _Pass(
                tuple(c for c in ordered if c.id in catching), AUDIT in catching, False, goldens=store), timeout_s)
        else:
            confirm = CopyRun("unmutated", False)
    if confirm.failed:
        raise MutationSetupError(f"the unmutated kernels fail cases that caught mutants, so those catches "
                                 f"prove nothing: {_failure_list(confirm)}")
    return MutationReport(results, len(ordered),
                          f"given: {goldens}" if goldens else
                          ("unmutated kernels' outputs, written by this run" if write_store else "none"),
                          golden_pass[0] if golden_pass else None, confirm, time.perf_counter() - start)


# ----------------------------------------------------------------------------------------
# The subprocess
# ----------------------------------------------------------------------------------------

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


def _assert_isolated(root: Path) -> None:
    """Every gdn_verify package this process runs (or will import) must come from the copy
    under root: the loaded module's file where it is loaded, else where it would load from."""
    for name in PACKAGES:
        module = sys.modules.get(name)
        origin = module.__file__ if module is not None else importlib.util.find_spec(name).origin
        where = Path(origin).resolve()
        if not where.is_relative_to(root):
            raise MutationSetupError(f"{name} imported from {where}, not from the copy under {root}")


def worker_main(spec_path: str) -> int:
    """Run one copy's cases (the subprocess). Exit 0 with a result file, _EXIT_SETUP on a setup error."""
    spec = json.loads(Path(spec_path).read_text())
    root = Path(spec["root"]).resolve()
    try:
        _assert_isolated(root)
    except MutationSetupError as exc:
        print(f"import isolation failed: {exc}", file=sys.stderr)
        return _EXIT_SETUP
    from gdn_verify.impls import resolve_impl
    from gdn_verify.platform import fingerprint, pin_interpreter_threads
    from gdn_verify.runner import STATUS_PASS, RunOptions, SetupError, _Goldens, run_case, variant_audit

    pin_interpreter_threads()
    device = "cpu"
    cases = [Case.from_dict(d) for d in spec["cases"]]
    run = CopyRun(spec["name"], False)
    start = time.perf_counter()
    try:
        impl = resolve_impl("gdn")
    except Exception as exc:  # a mutant that breaks the import: caught, but by no case
        run.failed, run.check, run.detail = True, "import", f"{type(exc).__name__}: {exc}"
        Path(spec["out"]).write_text(json.dumps(run.to_json()))
        return 0
    try:
        _assert_isolated(root)  # again, now that the kernels are loaded
    except MutationSetupError as exc:
        print(f"import isolation failed: {exc}", file=sys.stderr)
        return _EXIT_SETUP

    def fail(case_id: str, check: str, detail: str) -> bool:
        """Record a failure; True when the run should stop here."""
        run.failures.append({"case": case_id, "check": check, "detail": detail})
        if not run.failed:
            run.failed, run.case, run.check, run.detail = True, case_id, check, detail
        return spec["fail_fast"]

    try:
        goldens = _Goldens(spec["goldens"], fingerprint(device))
    except SetupError as exc:
        print(f"goldens: {exc}", file=sys.stderr)
        return _EXIT_SETUP
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
            return _EXIT_SETUP
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


# ----------------------------------------------------------------------------------------
# Table
# ----------------------------------------------------------------------------------------

def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def write_report(report: MutationReport, console, json_path: str | None) -> None:
    """The table on the console, and the JSON report when asked."""
    from gdn_verify.report import write_atomic

    console.print(rich_table(report))
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
        console.print(line, markup=False, highlight=False)
    if json_path:
        write_atomic(json_path, json.dumps(report.to_json(), indent=1) + "\n")


def rich_table(report: MutationReport):
    from rich.table import Table

    table = Table(title=f"mutation run: {len(report.results) - len(report.survivors)} of {len(report.results)} "
                        f"mutants caught over {report.cases} cases (goldens: {report.goldens})")
    for col in ("mutant", "verdict", "first failing case", "check", "detail", "time"):
        table.add_column(col, overflow="fold")
    for r in report.results:
        detail = r.run.detail or f"{r.run.cases_run} cases passed; golden comparisons {r.run.golden_statuses}"
        table.add_row(r.mutant.name, r.verdict if r.verdict == CAUGHT else f"[bold red]{r.verdict}[/]",
                      r.run.case or "-", r.run.check or "-", _short(detail), f"{r.run.wall_s:.1f} s")
    return table
