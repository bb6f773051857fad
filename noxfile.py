"""Sessions of gdn-verify: `nox -l` lists them.

CPU sessions build pip-based virtual environments (uv ignores the local CPU torch wheel, and an
unpinned torch would pull a multi-GB CUDA build). The `gpu` session runs in the interpreter
that already has CUDA torch and Triton (a GPU image usually has no package registry).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import nox

nox.options.default_venv_backend = "venv"
# Environments are kept between runs: each session's pinned installs are a no-op when already
# satisfied and bring a changed pin up to date. `nox --reuse-venv=no -s NAME` rebuilds one.
nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests"]

ROOT = Path(__file__).parent
OUT = ROOT / "out"
CPU_TORCH = "torch==2.13.0"
FLA_CORE = "fla-core==0.6.0"
TRITON_VERSIONS = ["3.9.0", "3.6.0"]
# The committed interpreter goldens were written with exactly these; the platform key records
# them, so a session that reads or writes goldens pins them (a newer Triton or NumPy would make
# the store "not comparable" instead of checking bits).
GOLDEN_PINS = [CPU_TORCH, "triton==3.9.0", "numpy==2.4.6"]

sys.path.insert(0, str(ROOT))
from gdn_verify.per_gpu import GPU_COUNT_CODE, per_gpu_plan, visible_gpus, wants_per_gpu  # noqa: E402  (stdlib only)
from gdn_verify.platform import CPU_DISPATCH_ENV  # noqa: E402  (stdlib only: safe in nox's Python)

# NumPy's and torch's SIMD dispatch capped at the interpreter baseline before they load
# (gdn_verify/platform.py): the CLI does it itself, pytest's conftest too; set here as well so
# that every process a session starts has it.
INTERPRETER_ENV = {**CPU_DISPATCH_ENV, "TRITON_INTERPRET": "1", "HYPOTHESIS_PROFILE": "ci"}

# Our kernels under the gate, each with its golden root and report stem: the chunk kernel and
# the token-by-token decode kernel (a bug confined to the decode kernel must fail the gate too).
# Each implementation keeps its goldens in a root of its own; the chunk kernel's is goldens/
# itself, where its store was committed first (a store's platform directories sit directly
# under its root, so goldens/gdn-recurrent/ is not one of goldens/'s stores).
OUR_KERNELS = (("gdn", "goldens", ""), ("gdn-recurrent", "goldens/gdn-recurrent", "-recurrent"))


def _install(session: nox.Session, *extra: str, triton: str | None = None, pins=(CPU_TORCH,)) -> None:
    session.install(*pins, *([f"triton=={triton}"] if triton else []))
    session.install("-e", f".{'[' + ','.join(extra) + ']' if extra else ''}", *pins)


class Job(NamedTuple):
    name: str
    argv: list[str]
    env: dict
    log: str  # stdout and stderr go here


def _side_by_side(session: nox.Session, jobs: list[Job]) -> list[int]:
    """Start every job at once, log each one's exit code and wall time as it ends; their exit
    codes, in order. Stopped (Ctrl-C), the jobs still running are stopped too, keeping what
    they finished."""
    start, procs = time.monotonic(), []
    for job in jobs:
        with open(job.log, "w") as log:
            procs.append(subprocess.Popen(job.argv, cwd=ROOT, env=job.env, stdout=log, stderr=subprocess.STDOUT))
        session.log(f"{job.name}: {' '.join(job.argv)}")
    running = dict(enumerate(procs))
    try:
        while running:
            for i, proc in list(running.items()):
                if proc.poll() is not None:
                    del running[i]
                    session.log(f"{jobs[i].name}: exit {proc.returncode} after {time.monotonic() - start:.0f} s "
                                f"(log {jobs[i].log})")
            time.sleep(0.5)
    finally:
        for proc in running.values():
            proc.terminate()
    return [proc.returncode for proc in procs]


def _each_kernel(session: nox.Session, what: str, command, env: dict, run=None, logs: str | None = None) -> None:
    """command(impl, goldens root, report stem) for each of OUR_KERNELS (or run(impl, goldens
    root, report stem), which runs it itself); all of them run, and the session fails after the
    last if any failed. With `logs`, the commands (tools of the session's environment) run side
    by side, one process each, output in OUT/{logs}{stem}.log, printed whole after all end."""
    failed = []
    if logs is not None:
        venv_env = {**os.environ, **env, "VIRTUAL_ENV": session.virtualenv.location,
                    "PATH": os.pathsep.join((session.bin, os.environ.get("PATH", "")))}
        jobs = []
        for impl, goldens, stem in OUR_KERNELS:
            tool, *args = command(impl, goldens, stem)
            jobs.append(Job(impl, [str(Path(session.bin) / tool), *args], venv_env, str(OUT / f"{logs}{stem}.log")))
        codes = _side_by_side(session, jobs)
        for job, code in zip(jobs, codes):
            session.log(f"{job.name}: {job.log}")
            print(Path(job.log).read_text(errors="replace"), flush=True)
            if code != 0:
                failed.append(f"{job.name} (exit {code})")
    else:
        for impl, goldens, stem in OUR_KERNELS:
            try:
                if run is not None:
                    run(impl, goldens, stem)
                else:
                    session.run(*command(impl, goldens, stem), env=env)
            except nox.command.CommandFailed as exc:
                failed.append(f"{impl} (exit {getattr(exc, 'return_code', None)})")
    if failed:
        session.error(f"{what} failed for {', '.join(failed)}")


def _pytest(session: nox.Session, junit: str, *args: str) -> None:
    OUT.mkdir(exist_ok=True)
    session.run(
        "pytest", "-n", os.environ.get("GDN_TEST_WORKERS", "2"), f"--junit-xml={OUT / junit}",
        *args, *session.posargs, env=INTERPRETER_ENV,
    )


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite on the CPU, kernels under the Triton interpreter (with Hugging Face
    transformers, the CPU-side external implementation judged under its declared design, and
    flash-linear-attention at the release mutants/fla.toml is anchored on: its recurrent kernel
    runs under the interpreter, its chunk kernels' mutant anchors are checked against it)."""
    _install(session, "test", "hf")
    session.install(FLA_CORE, CPU_TORCH)
    _pytest(session, "junit-tests.xml")


@nox.session(name="tests-triton")
@nox.parametrize("triton", TRITON_VERSIONS)
def tests_triton(session: nox.Session, triton: str) -> None:
    """Kernel tests under the interpreter of each supported Triton release, and compile_ahead's
    (whose children must compile under the cache keys each release's parent looks up)."""
    _install(session, "test", triton=triton)
    _pytest(session, f"junit-tests-triton-{triton}.xml", "tests/test_kernels_chunk.py",
            "tests/test_kernels_recurrent.py", "tests/test_compile_ahead.py")


@nox.session
def verify(session: nox.Session) -> None:
    """The main job: our chunk and decode kernels verified on the best available backend.

    Each kernel runs against its own goldens, with its reports (out/verify.*,
    out/verify-recurrent.*). Arguments that name an --impl run that implementation alone,
    against goldens/."""
    _install(session, pins=GOLDEN_PINS)
    OUT.mkdir(exist_ok=True)
    args = session.posargs or ["--suite", "cpu"]
    env = CPU_DISPATCH_ENV  # the CLI itself switches to the interpreter when the device is the CPU
    if "--impl" in args or any(a.startswith("--impl=") for a in args):
        session.run("gdn-verify", "run", "--device", "auto", "--goldens", "goldens",
                    "--json", str(OUT / "verify.json"), "--markdown", str(OUT / "verify.md"), *args, env=env)
        return
    _each_kernel(session, "verify", lambda impl, goldens, stem: (
        "gdn-verify", "run", "--impl", impl, "--device", "auto", "--goldens", goldens,
        "--json", str(OUT / f"verify{stem}.json"), "--markdown", str(OUT / f"verify{stem}.md"), *args), env)


@nox.session(name="golden-check")
def golden_check(session: nox.Session) -> None:
    """The cpu suite through our chunk and decode kernels against their committed goldens.

    Stores: goldens/ and goldens/gdn-recurrent/. Fails on any unexpected bitwise diff, and
    exits 2 when no store of this platform exists or any case has no golden (never a silent
    pass). Reports: out/gate.*, out/gate-recurrent.*."""
    _install(session, pins=GOLDEN_PINS)
    OUT.mkdir(exist_ok=True)
    # The kernels side by side: the interpreter keeps one core busy per process, so on two cores
    # the check takes about as long as its slower kernel alone.
    _each_kernel(session, "golden-check", lambda impl, goldens, stem: (
        "gdn-verify", "run", "--suite", "cpu", "--impl", impl, "--device", "cpu", "--goldens", goldens,
        "--require-goldens", "--json", str(OUT / f"gate{stem}.json"), "--markdown", str(OUT / f"gate{stem}.md"),
        *session.posargs), INTERPRETER_ENV, logs="gate")


@nox.session(requires=["tests", "golden-check"])
def gate(session: nox.Session) -> None:
    """Pre-merge gate: the tests and the golden check (both run first, as requirements)."""
    session.log(f"gate passed; report: {OUT / 'gate.md'}")


@nox.session
def golden(session: nox.Session) -> None:
    """Regenerate our kernels' goldens on purpose (new cases only; --force rewrites)."""
    _install(session, pins=GOLDEN_PINS)
    _each_kernel(session, "golden regen", lambda impl, goldens, stem: (
        "gdn-verify", "golden", "regen", "--suite", "cpu", "--impl", impl, "--goldens", goldens,
        *session.posargs), INTERPRETER_ENV)


@nox.session
def mutants(session: nox.Session) -> None:
    """Known GDN bug classes applied to a copy of kernels/: the cpu suite must catch each one.

    The built-in mutants run through the chunk kernel, against its goldens; mutants/gdn-recurrent.toml's
    through the decode kernel (out/mutants.json, out/mutants-recurrent.json)."""
    _install(session, pins=GOLDEN_PINS)
    OUT.mkdir(exist_ok=True)
    _each_kernel(session, "mutation run", lambda impl, goldens, stem: (
        "gdn-verify", "mutate", "--suite", "cpu",
        *(("--goldens", goldens) if impl == "gdn" else ("--mutants", str(ROOT / "mutants" / f"{impl}.toml"))),
        "--json", str(OUT / f"mutants{stem}.json"), *session.posargs), INTERPRETER_ENV)


@nox.session(venv_backend="none")
def gpu(session: nox.Session) -> None:
    """On a CUDA machine, in its own Python: compiled-kernel tests, the gpu suite, benchmarks.

    The gpu suite runs through both of our kernels, each against its own goldens (reports
    out/gpu.*, out/gpu-recurrent.*). `nox -s gpu -- --per-gpu` (or GDN_PER_GPU=1) runs it as
    one `--shard I/N` process per visible GPU, each pinned to its GPU with CUDA_VISIBLE_DEVICES,
    side by side, then merges their reports (out/gpu*.shardI.{json,log}) with `gdn-verify
    report merge` into the same reports, plus out/junit-gpu*.xml."""
    per_gpu, args = wants_per_gpu(session.posargs, os.environ)
    OUT.mkdir(exist_ok=True)
    session.run("python", "-m", "pytest", "-q", f"--junit-xml={OUT / 'junit-gpu.xml'}", "tests")
    if per_gpu:
        count = session.run("python", "-c", GPU_COUNT_CODE, silent=True)
        gpus = visible_gpus(int(count.strip().splitlines()[-1]), os.environ.get("CUDA_VISIBLE_DEVICES"))
        _each_kernel(session, "gpu suite", None, None,
                     run=lambda impl, goldens, stem: _run_per_gpu(session, gpus, impl, goldens, stem, args))
    else:
        _each_kernel(session, "gpu suite", lambda impl, goldens, stem: (
            "python", "-m", "gdn_verify", "run", "--suite", "gpu", "--impl", impl, "--device", "cuda",
            "--goldens", goldens, "--json", str(OUT / f"gpu{stem}.json"), "--markdown", str(OUT / f"gpu{stem}.md"),
            *args), None)
    _run_benchmarks(session)


def _run_per_gpu(session: nox.Session, gpus: list[str], impl: str, goldens: str, stem: str, args) -> None:
    """One shard per GPU side by side (gdn_verify/per_gpu.py), then their merge, whose exit code
    is the run's (a shard that wrote no report makes the merge fail: incomplete)."""
    try:
        plan = per_gpu_plan(gpus, impl, goldens, str(OUT), stem, args)
    except ValueError as exc:
        session.error(str(exc))
    for shard in plan.shards:
        Path(shard.report).unlink(missing_ok=True)  # never merge a report of an earlier run
    _side_by_side(session, [Job(f"{impl}: shard {shard.argv[shard.argv.index('--shard') + 1]} on GPU "
                                f"{shard.env['CUDA_VISIBLE_DEVICES']}", shard.argv, {**os.environ, **shard.env},
                                shard.log) for shard in plan.shards])
    session.run(*plan.merge)


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Benchmarks in the current Python (the kernel benchmarks need CUDA)."""
    _run_benchmarks(session)


def _run_benchmarks(session: nox.Session) -> None:
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        session.run("python", str(script))
