"""Mutation runs: deliberate, realistic GDN kernel bugs, and whether the suite catches each.

Mutants (gdn_verify/mutants.py) are text substitutions in the files of one package: our
kernels (the built-in registry, files under kernels/), or any installed package, with mutants
from a file (`gdn-verify mutate --package NAME --mutants FILE`). Each mutant is applied to a
private copy of the package sources in a temporary directory, laid out as installed, and
checked in a subprocess whose PYTHONPATH starts with that copy, so the copy wins over the real
install, which is only ever read. For our kernels the copy holds the whole distribution
(gdn_verify/, gdn_verify/kernels/, gdn_verify/reference/): the editable install's path mapping
is a meta-path finder appended after the normal path finder. For another package it holds the
package's top-level directory (and the named subpackage, where it lies elsewhere). The
subprocess asserts that every copied package it runs comes from the copy before it runs
anything.

Each mutant runs the compile-variant audit (cheap, and a check of the suite like any case),
then the cases cheapest first, and stops at its first failing case. A catch counts only if
the unmutated sources pass that same case: a last pass checks them on every case that caught
a mutant. Goldens: a given store, or the unmutated copy's outputs written to a temporary store
by a pass that runs first. With our registry only the mutants that only a bitwise comparison
can see (golden_only) wait for it; with --package every mutant compares with it, so any change
of the outputs' bits is a catch.

Subprocesses run like golden runs: thread counts pinned to 1, and on the CPU the interpreter.
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

from gdn_verify.cases import Case, case_cost  # noqa: F401 - case_cost: also imported from here
from gdn_verify.text import shorten
from gdn_verify.mutants import (  # noqa: F401 - re-exported: the mutants' names are imported from here
    AUDIT,
    MUTANTS,
    Edit,
    Mutant,
    MutantError,
    MutantSet,
    apply_edit,
    load_mutants,
    select_mutants,
)

# Where each package of the distribution lives inside a copy (the installed layout).
PACKAGES = ("gdn_verify", "gdn_verify.kernels", "gdn_verify.reference")
KERNELS_PACKAGE = "gdn_verify.kernels"
# Environment of every subprocess: the thread pins of golden runs (the interpreter's bits
# depend on the BLAS thread count, gdn_verify/platform.py), and on the CPU the interpreter.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
INTERPRETER_ENV = {"TRITON_INTERPRET": "1"}
# A mutant that hangs is caught, but should not hold CI until its job limit.
DEFAULT_TIMEOUT_S = 1200.0

CAUGHT, SURVIVED = "caught", "survived"


def mutant_by_name(names: Sequence[str] | None) -> list[Mutant]:
    """The named built-in mutants in registry order (all when names is empty or None). Reads
    this module's MUTANTS, so that a test can stand another registry in for it."""
    return select_mutants(MUTANTS, names)


class MutationSetupError(RuntimeError):
    """The run cannot give a verdict: the unmutated tree fails, or a copy is not isolated."""


@dataclass(frozen=True)
class Target:
    """What a mutation run mutates, and how it runs the copies."""

    package: str  # importable name of the package whose directory the edits' files are relative to
    copies: tuple[str, ...]  # packages copied into each temporary root, parents first
    impl: str = "gdn"  # the --impl spec the workers resolve
    device: str = "cpu"
    compare_all: bool = False  # every mutant compares with the unmutated copy's goldens

    @property
    def where(self) -> str:
        """How messages name the package directory."""
        return "kernels/" if self.package == KERNELS_PACKAGE else self.package.replace(".", "/") + "/"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.copies, self.package)))


OURS = Target(KERNELS_PACKAGE, PACKAGES)


def package_target(name: str, impl: str = "gdn", device: str = "cpu") -> Target:
    """The target of `mutate --package NAME`: NAME's top-level package is copied (for our own
    distribution, its three packages), and NAME itself where it lies outside that directory."""
    top = name.partition(".")[0]
    if top == PACKAGES[0]:
        if name not in PACKAGES:
            raise MutationSetupError(f"--package {name}: expected one of {PACKAGES} in gdn-verify's own distribution")
        return Target(name, PACKAGES, impl, device, compare_all=True)
    dirs = source_dirs((top, name))
    inside = dirs[name].is_relative_to(dirs[top])
    return Target(name, (top,) if inside else (top, name), impl, device, compare_all=True)


# ----------------------------------------------------------------------------------------
# Copies of the sources
# ----------------------------------------------------------------------------------------

def _locate(name: str) -> Path:
    """The directory a package's sources are imported from, importing as little as possible:
    a top-level package not at all; a subpackage found under its top-level directory not at
    all, else by find_spec, which imports its parents (an editable install maps it elsewhere)."""
    top, _, rest = name.partition(".")
    try:
        spec = importlib.util.find_spec(top)
        if spec is not None and spec.submodule_search_locations and rest:
            candidate = Path(list(spec.submodule_search_locations)[0]).joinpath(*rest.split("."))
            if (candidate / "__init__.py").is_file():
                return candidate.resolve()
            spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as exc:
        raise MutationSetupError(f"cannot locate the sources of package {name}: {exc}") from exc
    if spec is None or not spec.submodule_search_locations:
        raise MutationSetupError(f"cannot locate the sources of package {name}: no installed package of that "
                                 "name with a directory of sources")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def source_dirs(names: Sequence[str] = PACKAGES) -> dict[str, Path]:
    """Package name -> the directory its sources are imported from (see _locate)."""
    return {name: _locate(name) for name in names}


def mutated_sources(mutant: Mutant | None, kernels_dir: Path, where: str = "kernels/") -> dict[str, str]:
    """Relative path under the package directory -> mutated text, for the files the mutant edits."""
    if mutant is None:
        return {}
    texts: dict[str, str] = {}
    for edit in mutant.edits:
        if edit.file not in texts:
            path = kernels_dir / edit.file
            if not path.is_file():
                raise MutantError(f"mutant {mutant.name}: no file {where}{edit.file}")
            texts[edit.file] = path.read_text()
        texts[edit.file] = apply_edit(texts[edit.file], edit, mutant.name, where)
    return texts


_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def make_copy(root: Path, mutant: Mutant | None, dirs: dict[str, Path] | None = None,
              target: Target = OURS) -> Path:
    """The target's package sources under root/ in the installed layout, with the mutant applied.

    All edits are checked before anything is written. Returns root.
    """
    dirs = source_dirs(target.names) if dirs is None else dirs
    edited = mutated_sources(mutant, dirs[target.package], target.where)
    for name in target.copies:  # parents first, so a subpackage lands inside its parent's copy
        shutil.copytree(dirs[name], root / name.replace(".", "/"), ignore=_IGNORE, dirs_exist_ok=True)
    package_copy = root / target.package.replace(".", "/")
    for rel, text in edited.items():
        (package_copy / rel).write_text(text)
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

    @property
    def caught(self) -> bool:
        return self.verdict == CAUGHT

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
    package: str = KERNELS_PACKAGE  # the package mutated
    impl: str = "gdn"  # the implementation its copies ran as

    @property
    def survivors(self) -> list[MutantResult]:
        return [r for r in self.results if r.verdict == SURVIVED]

    def to_json(self) -> dict:
        return {"package": self.package, "impl": self.impl, "cases": self.cases, "goldens": self.goldens,
                "wall_s": self.wall_s,
                "caught": len(self.results) - len(self.survivors), "survived": len(self.survivors),
                "mutants": [r.to_json() for r in self.results],
                "unmutated": {"golden_pass": None if self.golden_pass is None else self.golden_pass.to_json(),
                              "confirm_pass": self.confirm_pass.to_json()}}


# ----------------------------------------------------------------------------------------
# Running copies in subprocesses
# ----------------------------------------------------------------------------------------

# The worker's exit status for "no verdict possible" (isolation, unreadable goldens); a
# crashing mutant exits otherwise, without a result file.
WORKER_EXIT_SETUP = 3
_WORKER_CODE = "import sys; from gdn_verify.mutate_worker import worker_main; sys.exit(worker_main(sys.argv[1]))"


@dataclass(frozen=True)
class _Pass:
    """What one subprocess is asked to do."""

    cases: tuple[Case, ...]
    audit: bool
    fail_fast: bool
    invariants: bool = True
    goldens: str | None = None  # store to compare with
    write_goldens: str | None = None  # store to write the passing cases' outputs to


def _run_copy(root: Path, name: str, job: _Pass, timeout_s: float, target: Target = OURS) -> CopyRun:
    spec = {"root": str(root), "name": name, "cases": [c.to_dict() for c in job.cases], "audit": job.audit,
            "fail_fast": job.fail_fast, "invariants": job.invariants, "goldens": job.goldens,
            "write_goldens": job.write_goldens, "out": str(root / "result.json"), "impl": target.impl,
            "device": target.device, "isolated": list(target.names)}
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, **WORKER_ENV, "PYTHONPATH": os.pathsep.join(
        [str(root)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    if target.device == "cpu":
        env.update(INTERPRETER_ENV)
    else:
        env.pop("TRITON_INTERPRET", None)
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", _WORKER_CODE, str(spec_path)], cwd=root, env=env,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return CopyRun(name, True, None, "timeout", f"no result after {timeout_s:.0f} s",
                       wall_s=time.perf_counter() - start)
    wall = time.perf_counter() - start
    out = root / "result.json"
    if done.returncode == WORKER_EXIT_SETUP:
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
    return "; ".join(f"{f['case']}: {f['check']}: {shorten(f['detail'], 200)}" for f in run.failures[:5])


def run_mutants(mutants: Sequence[Mutant], cases: Sequence[Case], goldens: str | None = None,
                workers: int = 2, audit: bool = True, per_mutant_cases: bool = False,
                timeout_s: float = DEFAULT_TIMEOUT_S,
                on_result: Callable[[MutantResult], None] | None = None, target: Target = OURS) -> MutationReport:
    """Run every mutant on `cases` (cheapest first, stopping at the first failure), `workers`
    subprocesses at a time, then check the unmutated kernels on every case that caught one.

    per_mutant_cases: each mutant runs only those of `cases` listed in its `kills` (and the
    audit only if listed there); otherwise every mutant runs all of `cases` and the audit.
    goldens: the store golden comparisons use. Without one, golden-only mutants (every mutant
    when target.compare_all) compare with the unmutated sources' outputs on `cases`, written
    to a temporary store first (a pass without invariants); other mutants then compare with
    no goldens. target: the package mutated and how its copies run (OURS: our kernels).
    Raises MutantError when a mutant cannot be applied (before anything runs), and
    MutationSetupError when the unmutated kernels fail a case that caught a mutant (or any
    case, in the goldens pass): a catch must be a difference from the unmutated kernels.
    """
    if workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    if goldens is not None:  # the workers run in a temporary directory
        goldens = str(Path(goldens).resolve())
    start = time.perf_counter()
    dirs = source_dirs(target.names)
    for m in mutants:  # every anchor checked before anything runs
        mutated_sources(m, dirs[target.package], target.where)
    # Cheapest first: a mutant stops at its first failing case, which is then also the
    # smallest reproducer at hand. sorted() is stable, so equal costs keep the suite's order.
    ordered = tuple(sorted(cases, key=case_cost))

    with tempfile.TemporaryDirectory(prefix="gdn-mutate-") as tmp:
        tmp_path = Path(tmp)
        uses_store = [m for m in mutants if m.golden_only or target.compare_all]
        write_store = str(tmp_path / "goldens") if goldens is None and uses_store else None
        store = goldens if goldens is not None else write_store
        goldens_written = threading.Event()
        golden_pass: list[CopyRun] = []
        lock = threading.Lock()

        def golden_job() -> None:
            try:
                root = make_copy(tmp_path / "unmutated-goldens", None, dirs, target)
                golden_pass.append(_run_copy(root, "unmutated (goldens)", _Pass(
                    ordered, audit=False, fail_fast=False, invariants=False, write_goldens=write_store), timeout_s,
                    target))
            finally:
                goldens_written.set()

        def mutant_job(m: Mutant) -> MutantResult:
            compare_with = goldens
            if m in uses_store and write_store is not None:
                goldens_written.wait()
                if not golden_pass or golden_pass[0].failed:
                    return MutantResult(m, CopyRun(m.name, False, detail="not run: the goldens pass failed"))
                compare_with = write_store
            if per_mutant_cases:
                job = _Pass(tuple(c for c in ordered if c.id in m.kills), AUDIT in m.kills, True, goldens=compare_with)
            else:
                job = _Pass(ordered, audit, True, goldens=compare_with)
            result = MutantResult(m, _run_copy(make_copy(tmp_path / m.name, m, dirs, target), m.name, job, timeout_s,
                                               target))
            if on_result is not None:
                with lock:
                    on_result(result)
            return result

        with ThreadPoolExecutor(max_workers=workers) as pool:
            golden_future = pool.submit(golden_job) if write_store is not None else None
            # Golden-only mutants last: they wait for the goldens pass.
            futures = {m.name: pool.submit(mutant_job, m) for m in sorted(mutants, key=lambda m: m in uses_store)}
            results = [futures[m.name].result() for m in mutants]
            if golden_future is not None:
                golden_future.result()
        if golden_pass and golden_pass[0].failed:
            raise MutationSetupError(f"the unmutated kernels fail {len(golden_pass[0].failures)} of the cases "
                                     f"(goldens pass): {_failure_list(golden_pass[0])}")

        catching = {r.run.case for r in results if r.run.failed and r.run.case}
        if catching:
            confirm = _run_copy(make_copy(tmp_path / "unmutated", None, dirs, target), "unmutated", _Pass(
                tuple(c for c in ordered if c.id in catching), AUDIT in catching, False, goldens=store), timeout_s,
                target)
        else:
            confirm = CopyRun("unmutated", False)
    if confirm.failed:
        raise MutationSetupError(f"the unmutated kernels fail cases that caught mutants, so those catches "
                                 f"prove nothing: {_failure_list(confirm)}")
    return MutationReport(results, len(ordered),
                          f"given: {goldens}" if goldens else
                          ("unmutated sources' outputs, written by this run" if write_store else "none"),
                          golden_pass[0] if golden_pass else None, confirm, time.perf_counter() - start,
                          package=target.package, impl=target.impl)


# ----------------------------------------------------------------------------------------
# The subprocess
# ----------------------------------------------------------------------------------------

def assert_isolated(root: Path, names: Sequence[str] = PACKAGES) -> None:
    """Every copied package this process runs (or will import) must come from the copy under
    root: the loaded module's file where it is loaded, else where it would load from."""
    for name in names:
        module = sys.modules.get(name)
        origin = module.__file__ if module is not None else importlib.util.find_spec(name).origin
        where = Path(origin).resolve()
        if not where.is_relative_to(root):
            raise MutationSetupError(f"{name} imported from {where}, not from the copy under {root}")
