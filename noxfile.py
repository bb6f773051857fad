"""Sessions of gdn-verify: `nox -l` lists them.

CPU sessions build pip-based virtual environments (uv ignores the local CPU torch wheel, and an
unpinned torch would pull a multi-GB CUDA build). The `gpu` session runs in the interpreter
that already has CUDA torch and Triton (a GPU image usually has no package registry).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests"]

ROOT = Path(__file__).parent
OUT = ROOT / "out"
CPU_TORCH = "torch==2.13.0"
TRITON_VERSIONS = ["3.9.0", "3.6.0"]
# The committed interpreter goldens were written with exactly these; the platform key records
# them, so a session that reads or writes goldens pins them (a newer Triton or NumPy would make
# the store "not comparable" instead of checking bits).
GOLDEN_PINS = [CPU_TORCH, "triton==3.9.0", "numpy==2.4.6"]

sys.path.insert(0, str(ROOT))
from gdn_verify.platform import CPU_DISPATCH_ENV  # noqa: E402  (stdlib only: safe in nox's Python)

# NumPy's and torch's SIMD dispatch capped at the interpreter baseline before they load
# (gdn_verify/platform.py): the CLI does it itself, pytest's conftest too; set here as well so
# that every process a session starts has it.
INTERPRETER_ENV = {**CPU_DISPATCH_ENV, "TRITON_INTERPRET": "1", "HYPOTHESIS_PROFILE": "ci"}


def _install(session: nox.Session, *extra: str, triton: str | None = None, pins=(CPU_TORCH,)) -> None:
    session.install(*pins, *([f"triton=={triton}"] if triton else []))
    session.install("-e", f".{'[' + ','.join(extra) + ']' if extra else ''}", *pins)


def _pytest(session: nox.Session, junit: str, *args: str) -> None:
    OUT.mkdir(exist_ok=True)
    session.run(
        "pytest", "-n", os.environ.get("GDN_TEST_WORKERS", "2"), f"--junit-xml={OUT / junit}",
        *args, *session.posargs, env=INTERPRETER_ENV,
    )


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite on the CPU, kernels under the Triton interpreter."""
    _install(session, "test")
    _pytest(session, "junit-tests.xml")


@nox.session(name="tests-triton")
@nox.parametrize("triton", TRITON_VERSIONS)
def tests_triton(session: nox.Session, triton: str) -> None:
    """Kernel tests under the interpreter of each supported Triton release."""
    _install(session, "test", triton=triton)
    _pytest(session, f"junit-tests-triton-{triton}.xml", "tests/test_kernels_chunk.py",
            "tests/test_kernels_recurrent.py")


@nox.session
def verify(session: nox.Session) -> None:
    """The main job: a verification run on the best available backend, with its reports."""
    _install(session, pins=GOLDEN_PINS)
    OUT.mkdir(exist_ok=True)
    args = session.posargs or ["--suite", "cpu"]
    session.run(
        "gdn-verify", "run", "--device", "auto", "--goldens", "goldens",
        "--json", str(OUT / "verify.json"), "--markdown", str(OUT / "verify.md"), *args,
        env=CPU_DISPATCH_ENV,  # the CLI itself switches to the interpreter when the device is the CPU
    )


@nox.session(name="golden-check")
def golden_check(session: nox.Session) -> None:
    """The cpu suite against the committed goldens: fails on any unexpected bitwise diff, and
    exits 2 when no store of this platform exists or any case has no golden (never a silent pass)."""
    _install(session, pins=GOLDEN_PINS)
    OUT.mkdir(exist_ok=True)
    session.run(
        "gdn-verify", "run", "--suite", "cpu", "--device", "cpu", "--goldens", "goldens", "--require-goldens",
        "--json", str(OUT / "gate.json"), "--markdown", str(OUT / "gate.md"), *session.posargs,
        env=INTERPRETER_ENV,
    )


@nox.session(requires=["tests", "golden-check"])
def gate(session: nox.Session) -> None:
    """Pre-merge gate: the tests and the golden check (both run first, as requirements)."""
    session.log(f"gate passed; report: {OUT / 'gate.md'}")


@nox.session
def golden(session: nox.Session) -> None:
    """Regenerate goldens on purpose: new cases only; pass --force to rewrite existing ones."""
    _install(session, pins=GOLDEN_PINS)
    session.run(
        "gdn-verify", "golden", "regen", "--suite", "cpu", "--goldens", "goldens", *session.posargs,
        env=INTERPRETER_ENV,
    )


@nox.session
def mutants(session: nox.Session) -> None:
    """Known GDN bug classes applied to a copy of kernels/: the cpu suite must catch each one."""
    _install(session, pins=GOLDEN_PINS)
    OUT.mkdir(exist_ok=True)
    session.run("gdn-verify", "mutate", "--suite", "cpu", "--goldens", "goldens",
                "--json", str(OUT / "mutants.json"), *session.posargs, env=INTERPRETER_ENV)


@nox.session(venv_backend="none")
def gpu(session: nox.Session) -> None:
    """On a CUDA machine, in its own Python: compiled-kernel tests, the gpu suite, benchmarks."""
    OUT.mkdir(exist_ok=True)
    session.run("python", "-m", "pytest", "-q", f"--junit-xml={OUT / 'junit-gpu.xml'}", "tests")
    session.run(
        "python", "-m", "gdn_verify", "run", "--suite", "gpu", "--device", "cuda", "--goldens", "goldens",
        "--json", str(OUT / "gpu.json"), "--markdown", str(OUT / "gpu.md"), *session.posargs,
    )
    _run_benchmarks(session)


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Benchmarks in the current Python (the kernel benchmarks need CUDA)."""
    _run_benchmarks(session)


def _run_benchmarks(session: nox.Session) -> None:
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        session.run("python", str(script))
