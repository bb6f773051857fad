"""The `gdn-verify` command.

    gdn-verify run --suite S --impl I --device D [--goldens DIR [--require-goldens]] [--json PATH]
                   [--markdown PATH] [--repro-dir DIR] [--cases PATTERN] [--max-cases N] [--jax]
                   [--case-timeout SECONDS]
    gdn-verify cases --suite S [--cases PATTERN] [--max-cases N]
    gdn-verify golden regen --suite S --impl I --goldens DIR [--force] [--prune] [--max-golden-bytes N]
                            [--no-audit] [--case-timeout SECONDS]
    gdn-verify golden diff --suite S --impl I --goldens DIR [--markdown PATH] [--json PATH]
                           [--against-impl] [--no-audit] [--case-timeout SECONDS]
    gdn-verify selfcheck
    gdn-verify mutate [--suite S] [--cases PATTERN] [--mutant NAME ...] [--goldens DIR] [--json PATH]
                      [--mutants FILE [--package NAME] [--impl I] [--device D]] [--no-audit]
    gdn-verify compare --impl A [convention flags] --impl B ... --suite S [--device D] [--json PATH]
                       [--markdown PATH] [--bench] [--time-budget SECONDS]

--impl is gdn, gdn-recurrent, fla-chunk, fla-recurrent or module:function. Convention flags
(--layout, --state-layout, --gate-space, --head-map, --l2norm, --l2norm-arg, --no-initial-state,
--no-final-state, --no-cu-seqlens, --no-scale, --no-gva, --dtypes, --keyword-tensors,
--cu-seqlens-dtype, --design) declare how an implementation differs from the common signature
(gdn_verify/adapters.py; --design NAME|SPEC: its precision design, gdn_verify/designs.py); each
applies to the --impl before it (flags before any --impl apply to the first).

Exit codes: 0 every check passed; 1 a check failed or a bitwise diff against the goldens (or a
run or `golden regen` stopped by SIGTERM / SIGINT before its last case: the reports hold the
cases done, and regen has written the goldens of the cases that passed; a regen in which any
case failed or errored); 2 usage or setup error (bad arguments, a selection of no case, unknown
suite or implementation, unreadable goldens, a report that cannot be written, and, where a
bitwise comparison is required, none possible: `run --require-goldens` or `golden diff` with no
store for this platform or cases without a golden, when no check failed).

No silent pass: a `run --goldens` that compared nothing, or fewer cases than it ran, says so in
its headline ("no bitwise comparison", "k of n cases compared bit for bit"); with
--require-goldens (what the gate passes) it exits 2 instead of 0.

On the CPU the kernels run in Triton's interpreter, which `@triton.jit` decides when a kernel
is decorated, so TRITON_INTERPRET=1 is set here before anything imports the kernels; runs
that read or write goldens there pin the thread counts the interpreter's bits depend on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
from typing import Sequence

from gdn_verify.platform import pin_cpu_dispatch

EXIT_PASS, EXIT_FAIL, EXIT_SETUP = 0, 1, 2


class CLIError(Exception):
    """A usage or setup problem: printed, exit code 2."""


def _device(requested: str, pin_threads: bool) -> str:
    """Resolve --device and prepare the process for it (before the kernels are imported)."""
    import torch

    device = requested
    if requested == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        compat = sys.modules.get("gdn_verify.kernels._triton_compat")
        if compat is not None and not compat.INTERPRET:
            raise CLIError("--device cpu: the kernels were imported before TRITON_INTERPRET=1 was set; "
                           "run gdn-verify in a fresh process")
        os.environ["TRITON_INTERPRET"] = "1"
        if pin_threads:
            from gdn_verify.platform import pin_interpreter_threads

            pin_interpreter_threads()
    elif device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CLIError(f"--device {requested}: torch sees no CUDA device")
        if os.environ.get("TRITON_INTERPRET") == "1":
            raise CLIError(f"--device {requested}: TRITON_INTERPRET=1 is set, so the kernels would be "
                           "interpreted instead of compiled; unset it")
    else:
        raise CLIError(f"--device: expected auto, cpu, cuda or cuda:N, got {requested!r}")
    return device


def _cases(args):
    from gdn_verify.cases import select, suite

    try:
        cases = select(suite(args.suite), args.cases, args.max_cases)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    if not cases:  # nothing to check is never a pass
        raise CLIError(f"--cases {args.cases!r} matches no case of suite {args.suite} ({len(suite(args.suite))} "
                       f"cases; list their ids with `gdn-verify cases --suite {args.suite}`)")
    return cases


def _seconds(text: str) -> float:
    """--case-timeout: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _write_reports(writes) -> list[str]:
    """Write each (flag, path, writer) whose path is set; one line per report that could not
    be written (the others are still written)."""
    problems = []
    for flag, path, write in writes:
        if not path:
            continue
        try:
            write(path)
        except OSError as exc:
            problems.append(f"{flag} {path}: cannot write the report ({exc.strerror or exc})")
    for problem in problems:
        print(f"gdn-verify: error: {problem}", file=sys.stderr)
    return problems


def _missing_goldens(result, args) -> str | None:
    """Why a run with goldens compared fewer cases bit for bit than it ran, or None."""
    missing = result.totals["golden_missing"]
    if not missing:
        return None
    _, ran = result.golden_coverage
    return (f"{missing} of {ran} cases have no golden in {result.goldens['root']} "
            f"(platform {result.goldens['platform_key']}), so they were not compared bit for bit; write them with "
            f"`gdn-verify golden regen --suite {args.suite} --goldens {args.goldens}` on this platform")


class _ImplAction(argparse.Action):
    """--impl: each occurrence starts an implementation; the convention flags after it apply to it.
    Stores [(spec, conventions)], the first spec None while only convention flags were seen."""

    def __call__(self, parser, namespace, values, option_string=None):
        requests = list(getattr(namespace, self.dest, None) or [])
        if requests and requests[-1][0] is None:
            requests[-1] = (values, requests[-1][1])
        else:
            requests.append((values, {}))
        setattr(namespace, self.dest, requests)


class _ConventionAction(argparse.Action):
    """A convention flag: sets one Adapter field (`--no-ARG` flags add ARG to `lacks`)."""

    def __init__(self, option_strings, dest, field, convert=None, **kwargs):
        self.field, self.convert = field, convert
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        requests = list(getattr(namespace, self.dest, None) or [(None, {})])
        spec, conventions = requests[-1]
        conventions = dict(conventions)
        if self.field == "lacks":
            conventions["lacks"] = conventions.get("lacks", frozenset()) | {self.const}
        else:
            conventions[self.field] = self.convert(values) if self.convert else values
        requests[-1] = (spec, conventions)
        setattr(namespace, self.dest, requests)


def _design(text: str):
    """--design: a named design or a spec (designs.parse_design)."""
    from gdn_verify.designs import parse_design

    try:
        return parse_design(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _impl_requests(requests) -> list[tuple[str, dict]]:
    """(spec, conventions) per --impl; our chunk kernel when no --impl was given."""
    return [(spec or "gdn", conventions) for spec, conventions in (requests or [(None, {})])]


def _resolve(spec: str, conventions: dict, device: str):
    from gdn_verify.impls import resolve_impl

    return resolve_impl(spec, device=device, **conventions)


def _impl(requests, device: str):
    """The one implementation of run / golden commands."""
    from gdn_verify.impls import ImplError

    requests = _impl_requests(requests)
    if len(requests) > 1:
        raise CLIError(f"--impl: this command takes one implementation, got {len(requests)}; "
                       "use `gdn-verify compare` for several")
    try:
        return _resolve(*requests[0], device)
    except ImplError as exc:
        raise CLIError(str(exc)) from exc


@contextlib.contextmanager
def _stop_on_signals():
    """SIGTERM (timeout's) and SIGINT raise KeyboardInterrupt inside the block, so a command
    under a wall-clock limit can stop and still report or keep what it finished; installed here
    because a shell may start the process with SIGINT ignored."""
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_with_progress(args, cases, impl, device, options, on_outputs=None):
    from gdn_verify.report import Live, make_console
    from gdn_verify.runner import SetupError, run_cases

    console = make_console()
    try:
        with Live(console, len(cases), f"{args.suite} / {impl.spec}") as live:
            result = run_cases(cases, impl, device, options, suite=args.suite, on_case=live.case_done,
                               on_outputs=on_outputs)
    except SetupError as exc:
        raise CLIError(str(exc)) from exc
    return result, console


# ----------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------

def cmd_cases(args) -> int:
    for case in _cases(args):
        print(case.id)
    return EXIT_PASS


def cmd_run(args) -> int:
    from gdn_verify.report import print_summary, write_json, write_markdown
    from gdn_verify.runner import RunOptions

    if args.require_goldens and args.goldens is None:
        raise CLIError("--require-goldens: needs --goldens DIR (the store to compare with)")
    device = _device(args.device, pin_threads=args.goldens is not None)
    cases = _cases(args)
    impl = _impl(args.impl, device)
    options = RunOptions(jax=args.jax, goldens=args.goldens, require_goldens=args.require_goldens,
                         repro_dir=args.repro_dir, audit=not args.no_audit, case_timeout=args.case_timeout,
                         against_impl=args.against_impl)
    # SIGTERM / SIGINT stop the run between or inside cases; the reports still hold what ran.
    with _stop_on_signals():
        result, console = _run_with_progress(args, cases, impl, device, options)
    print_summary(result, console)
    if _write_reports((("--json", args.json, lambda p: write_json(result, p)),
                       ("--markdown", args.markdown, lambda p: write_markdown(result, p)))):
        return EXIT_SETUP
    if not result.passed:
        return EXIT_FAIL
    missing = _missing_goldens(result, args) if args.require_goldens else None
    if missing:
        print(f"gdn-verify: error: --require-goldens: {missing}", file=sys.stderr)
        return EXIT_SETUP
    return EXIT_PASS


def cmd_golden_regen(args) -> int:
    from gdn_verify.goldens import GoldenError, regenerate
    from gdn_verify.runner import INTERRUPTED, STATUS_NOT_SUPPORTED, STATUS_PASS, RunOptions

    from gdn_verify.identity import describe_key, describe_revision, implementation_identity

    device = _device(args.device, pin_threads=True)
    cases = _cases(args)
    impl = _impl(args.impl, device)
    identity = implementation_identity(impl)
    if not args.against_impl:
        _refuse_other_implementation(args.goldens, device, identity)
    # Goldens are the outputs of passing runs only: a case that fails its reference check
    # is reported and never written. The variant audit runs too (a few calls): the store
    # records its counts, which `golden diff` compares on a later revision.
    options = RunOptions(invariants=(), diagnose=False, audit=not args.no_audit, case_timeout=args.case_timeout)
    passing = []

    def keep(result, outputs):
        if result.status == STATUS_PASS:
            passing.append((result.case, result.inputs_digest, {k: t.detach().cpu() for k, t in outputs.items()}))

    # Stopped by a wall-clock limit (a GPU session's compile-bound shards), the run still writes
    # the goldens of the cases that passed before it: each is complete and checked, and the
    # store is updated in one atomic step as always. Only --prune waits for a whole run.
    results, audit = [], None
    try:
        with _stop_on_signals():
            result, console = _run_with_progress(args, cases, impl, device, options, on_outputs=keep)
        fp, interrupted, results = result.fingerprint, result.interrupted, result.cases
        audit = result.variant_audit.to_json() if result.variant_audit is not None else None
    except KeyboardInterrupt:  # stopped outside the cases (before the first, or while reporting)
        from gdn_verify.platform import fingerprint
        from gdn_verify.report import make_console

        interrupted, fp, console = True, fingerprint(device), make_console()
    done = [r for r in results if r.failures != [INTERRUPTED]]
    done_ids = {r.id for r in done}
    bad = [r for r in done if r.status not in (STATUS_PASS, STATUS_NOT_SUPPORTED)]
    not_passed = [(r.id, f"{r.status}: {'; '.join(r.failures)}") for r in bad]
    not_passed += [(c.id, "not run: interrupted") for c in cases if c.id not in done_ids]
    # Pruning removes the goldens of cases not in this run: the store prunes only after a whole
    # suite in which every case passed, and says why otherwise.
    try:
        regen = regenerate(args.goldens, fp, passing, force=args.force, prune=args.prune,
                           whole_suite=args.cases is None and args.max_cases is None, not_passed=not_passed,
                           skipped=[r.id for r in done if r.status == STATUS_NOT_SUPPORTED],
                           max_tensor_bytes=args.max_golden_bytes, identity=identity, variant_audit=audit,
                           other_implementation=args.against_impl)
    except (GoldenError, OSError) as exc:
        raise CLIError(f"--goldens {args.goldens}: {exc}") from exc
    console.print(regen.rich_table())
    variants = "not counted" if audit is None or not audit.get("after_sweep") else (
        f"{sum(audit['after_sweep'].values())} compiled variants over {len(audit['after_sweep'])} kernels")
    console.print(f"implementation {describe_key(identity)}: {describe_revision(identity)}; {variants}",
                  markup=False, highlight=False)
    if interrupted:
        console.print(f"interrupted after {len(done)} of {len(cases)} cases: the goldens of the "
                      f"{len(passing)} that passed are written, the other cases were not run"
                      + ("; --prune not applied" if args.prune else ""), markup=False, highlight=False)
    return EXIT_FAIL if regen.incomplete or interrupted else EXIT_PASS


def _refuse_other_implementation(goldens: str, device: str, identity: dict) -> None:
    """Before a regen runs any case: CLIError when the store for this platform under goldens
    was written by another implementation (regenerate refuses it too, after the run)."""
    from gdn_verify.goldens import GoldenError, GoldenStore, implementation_mismatch
    from gdn_verify.platform import fingerprint

    try:
        store = GoldenStore(goldens).for_platform(fingerprint(device))
    except (GoldenError, OSError) as exc:
        raise CLIError(f"--goldens {goldens}: {exc}") from exc
    if store is not None:
        mismatch = implementation_mismatch(store.identity, identity, store.directory)
        if mismatch is not None:
            raise CLIError(f"{mismatch}; write its goldens to a store of their own (another --goldens DIR)")


def cmd_golden_diff(args) -> int:
    from rich.table import Table

    from gdn_verify.golden_pr import StoreDiff
    from gdn_verify.report import digest_only_hints, write_atomic
    from gdn_verify.runner import RunOptions

    device = _device(args.device, pin_threads=True)
    cases = _cases(args)
    impl = _impl(args.impl, device)
    # The variant audit runs so that the report can set this revision's compiled-variant
    # counts against those the store recorded.
    options = RunOptions(reference=False, invariants=(), diagnose=False, audit=not args.no_audit,
                         goldens=args.goldens, case_timeout=args.case_timeout, against_impl=args.against_impl)
    with _stop_on_signals():
        result, console = _run_with_progress(args, cases, impl, device, options)
    if result.goldens["status"] == "not comparable":
        raise CLIError(f"nothing to diff against:\n{result.goldens['detail']}")
    table = Table(title=f"golden diff: {args.suite} / {impl.spec} vs {result.goldens['platform_key']}")
    for col in ("case", "golden", "detail"):
        table.add_column(col, overflow="fold")
    for r in result.cases:
        table.add_row(r.id, r.golden.status if r.status != "error" else "error",
                      r.golden.detail or "; ".join(r.failures))
    console.print(table)
    for hint in digest_only_hints(result.cases):
        console.print(f"hint: {hint}", markup=False, highlight=False)
    proof = StoreDiff.from_run(result, args.goldens)
    console.print(proof.render(), markup=False, highlight=False)
    if _write_reports((("--markdown", args.markdown, lambda p: write_atomic(p, proof.markdown() + "\n")),
                       ("--json", args.json, lambda p: write_atomic(p, json.dumps(proof.to_json(), indent=1) + "\n")))):
        return EXIT_SETUP
    if result.interrupted or any(r.golden.unexpected or r.status == "error" for r in result.cases):
        return EXIT_FAIL
    # A diff is a bitwise check by definition: a case without golden was not checked.
    missing = _missing_goldens(result, args)
    if missing:
        raise CLIError(f"golden diff: {missing}")
    return EXIT_PASS


def _mutation_target(args):
    """(target, mutants) of a mutate command: our kernels and the built-in mutants, or with
    --mutants FILE the package it names (--package overrides) and the file's mutants."""
    from gdn_verify.mutate import OURS, load_mutants, mutant_by_name, package_target, select_mutants

    if not args.mutants:
        if args.package or args.impl:
            raise CLIError(f"{'--package' if args.package else '--impl'}: needs --mutants FILE (the built-in "
                           "mutants apply to our kernels and run our chunk kernel)")
        return OURS, mutant_by_name(args.mutant)
    mutant_set = load_mutants(args.mutants)
    package = args.package or mutant_set.package
    if not package:
        raise CLIError(f"--mutants {args.mutants}: name the package to mutate (--package NAME, or package = "
                       "\"NAME\" in the file)")
    spec = args.impl or mutant_set.impl or "gdn"
    device = _device(args.device or mutant_set.device or "auto", pin_threads=False)
    _impl([(spec, {})], device)  # resolvable here (the real install), before any copy runs
    return package_target(package, spec, device), select_mutants(mutant_set.mutants, args.mutant)


def cmd_mutate(args) -> int:
    from gdn_verify.mutate import MutationSetupError, run_mutants, write_report
    from gdn_verify.report import make_console

    console = make_console()
    try:
        target, mutants = _mutation_target(args)
        report = run_mutants(mutants, _cases(args), goldens=args.goldens, workers=args.workers,
                             audit=not args.no_audit, target=target,
                             on_result=lambda r: console.print(r.progress_line(), markup=False, highlight=False))
    except (ValueError, MutationSetupError) as exc:  # MutantError is a ValueError
        raise CLIError(str(exc)) from exc
    write_report(report, console, args.json)
    return EXIT_FAIL if report.survivors else EXIT_PASS


def cmd_compare(args) -> int:
    from gdn_verify.compare_impls import compare_impls
    from gdn_verify.impls import ImplError, ImplUnavailable
    from gdn_verify.report import Live, make_console, print_comparison, write_comparison_markdown, write_json
    from gdn_verify.runner import RunOptions

    device = _device(args.device, pin_threads=False)
    if args.bench and not device.startswith("cuda"):
        raise CLIError("--bench: latency is measured on a CUDA device only (--device cuda)")
    if args.time_budget is not None and args.time_budget <= 0:
        raise CLIError(f"--time-budget: expected a positive number of seconds, got {args.time_budget}")
    cases = _cases(args)
    console = make_console()
    adapters, unavailable = [], {}
    for spec, conventions in _impl_requests(args.impl):
        if any(a.spec == spec for a in adapters) or spec in unavailable:
            raise CLIError(f"--impl {spec}: given twice")
        try:
            adapters.append(_resolve(spec, conventions, device))
        except ImplUnavailable as exc:  # skipped with its reason; the others still run
            unavailable[spec] = str(exc)
            console.print(f"skipping {spec}: {exc}", markup=False, highlight=False)
        except ImplError as exc:
            raise CLIError(str(exc)) from exc
    if not adapters:
        raise CLIError("no implementation can run here:\n" + "\n".join(unavailable.values()))
    options = RunOptions(audit=not args.no_audit)
    title = f"{args.suite} / " + " vs ".join(a.spec for a in adapters)
    # A wall-clock limit stops the comparison, which then reports what ran.
    with _stop_on_signals(), Live(console, len(cases) * len(adapters), title) as live:
        def progress(spec, result, index, total):
            live.case_done(result, index, total, label=spec)

        comparison = compare_impls(adapters, cases, device, options, suite=args.suite, bench=args.bench,
                                   time_budget_s=args.time_budget, unavailable=unavailable, on_case=progress)
    print_comparison(comparison, console)
    if _write_reports((("--json", args.json, lambda p: write_json(comparison, p)),
                       ("--markdown", args.markdown, lambda p: write_comparison_markdown(comparison, p)))):
        return EXIT_SETUP
    return EXIT_PASS if comparison.passed else EXIT_FAIL


def cmd_selfcheck(args) -> int:
    from rich.table import Table

    from gdn_verify.report import make_console
    from gdn_verify.runner import reference_agreement

    import importlib.util

    if importlib.util.find_spec("jax") is None:
        raise CLIError("selfcheck: needs JAX for the second reference; install it with "
                       "pip install 'gdn-verify[jax]' (or: pip install jax)")
    device = _device(args.device, pin_threads=False)
    table = Table(title="references against the torch float64 recurrence (RMS error ratio)")
    for col in ("case", "reference", "o", "final_state", "ok"):
        table.add_column(col)
    ok = True
    for row in reference_agreement(_cases(args), device):
        ok &= row["passed"]
        table.add_row(row["case"], row["reference"], f"{row['o']:.2e}", f"{row['final_state']:.2e}",
                      "yes" if row["passed"] else "NO")
    make_console().print(table)
    return EXIT_PASS if ok else EXIT_FAIL


# ----------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------

def _conventions(p) -> None:
    from gdn_verify import adapters

    group = p.add_argument_group(
        "conventions of the implementation (each flag applies to the --impl before it; see gdn_verify/adapters.py)")

    def flag(name, field, help, **kwargs):
        group.add_argument(name, dest="impl", action=_ConventionAction, field=field, help=help, **kwargs)

    flag("--layout", "layout", "batched [B, T, H, D] (default) or packed [T, H, D]", choices=adapters.LAYOUTS)
    flag("--state-layout", "state_layout", "kv [N, HV, K, V] (default) or vk [N, HV, V, K]",
         choices=adapters.STATE_LAYOUTS)
    flag("--gate-space", "gate_space", "log: g (default); alpha: exp(g), computed in float64, rounded to g's dtype",
         choices=adapters.GATE_SPACES)
    flag("--head-map", "head_map", "key head of value head h: div h // (HV/H) (default) or mod h %% H",
         choices=adapters.HEAD_MAPS)
    flag("--l2norm", "l2norm", "q/k l2norm: kernel (its flag, default), outside (the harness normalizes before "
         "the call) or unsupported (such cases are not supported)", choices=adapters.L2NORM_MODES)
    flag("--l2norm-arg", "l2norm_arg", "name of the l2norm flag (default use_qk_l2norm_in_kernel)", metavar="NAME")
    for arg in adapters.OPTIONAL_ARGUMENTS:
        flag(f"--no-{arg.replace('_', '-')}", "lacks", f"the implementation lacks {arg}: cases needing it are "
             "reported as not supported", nargs=0, const=arg)
    flag("--dtypes", "dtypes", "comma-separated input dtypes it accepts (others: not supported)",
         convert=lambda text: tuple(d.strip() for d in text.split(",") if d.strip()), metavar="LIST")
    flag("--keyword-tensors", "keyword_tensors", "pass q, k, v, g, beta by keyword (named so)", nargs=0,
         convert=lambda _: True)
    flag("--cu-seqlens-dtype", "cu_seqlens_dtype", "convert cu_seqlens to this integer dtype",
         choices=tuple(adapters.CU_SEQLENS_DTYPES))
    flag("--design", "design", "its precision design: gdn, fla, float32, or a spec such as "
         "'store=Tm,W,U,h,v_new:input;dots=tf32' (gdn_verify/designs.py); a design other than ours is judged "
         "against its emulated error instead of the tolerance table", type=_design, metavar="NAME|SPEC")


def _parser() -> argparse.ArgumentParser:
    from gdn_verify.cases import SUITES
    from gdn_verify.goldens import DEFAULT_MAX_TENSOR_BYTES, byte_size

    parser = argparse.ArgumentParser(prog="gdn-verify", description="Verify gated-delta-rule kernels against "
                                     "float64 references and golden tensors.")
    sub = parser.add_subparsers(dest="command", required=True)

    def selection(p, default_suite="cpu"):
        p.add_argument("--suite", choices=SUITES, default=default_suite, help="named suite of cases")
        p.add_argument("--cases", metavar="PATTERN", help="only cases whose id matches this regular expression")
        p.add_argument("--max-cases", type=int, metavar="N", help="at most N cases (after --cases)")

    def execution(p):
        p.add_argument("--impl", action=_ImplAction, metavar="IMPL",
                       help="gdn (our chunk kernel, the default), gdn-recurrent, fla-chunk, fla-recurrent "
                            "(flash-linear-attention), or module:function")
        p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N")
        _conventions(p)

    def against_impl(p, help="with --goldens: compare even with goldens that another implementation wrote "
                                 "(exit 2 otherwise); the reports say so"):
        p.add_argument("--against-impl", action="store_true", help=help)

    def timeout(p):
        p.add_argument("--case-timeout", type=_seconds, metavar="SECONDS",
                       help="a case still running after this many seconds is an error (\"timed out\") and the "
                            "run goes on; interrupts Python-level hangs (SIGALRM), not a call stuck in C code")

    p = sub.add_parser("run", help="check an implementation on a suite")
    selection(p)
    execution(p)
    p.add_argument("--goldens", metavar="DIR", help="compare outputs bit for bit with the goldens under DIR")
    p.add_argument("--require-goldens", action="store_true",
                   help="with --goldens: exit 2 unless every case that runs is compared bit for bit (no store "
                        "for this platform: before any case runs; cases without a golden: after the run)")
    p.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write a Markdown summary for a pull request")
    p.add_argument("--repro-dir", metavar="DIR", help="write a standalone reproducer for each failing case")
    p.add_argument("--jax", action="store_true", help="also check the torch reference against the JAX one")
    p.add_argument("--no-audit", action="store_true", help="skip the compile-variant audit")
    against_impl(p)
    timeout(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compare", help="several implementations over the same cases, one side-by-side report")
    selection(p)
    execution(p)
    p.add_argument("--json", metavar="PATH", help="write the full comparison as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write the side-by-side report as Markdown")
    p.add_argument("--bench", action="store_true",
                   help="also time each implementation on docs/design.md's benchmark shapes (CUDA only)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="start no new case (or benchmark shape) after this many seconds; the rest is "
                        "reported as not run")
    p.add_argument("--no-audit", action="store_true", help="skip the compile-variant audit")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("cases", help="list the case ids of a suite")
    selection(p)
    p.set_defaults(func=cmd_cases)

    golden = sub.add_parser("golden", help="golden tensors").add_subparsers(dest="golden_command", required=True)
    p = golden.add_parser("regen", help="write goldens: new cases only, unless --force")
    selection(p)
    execution(p)
    p.add_argument("--goldens", metavar="DIR", required=True)
    p.add_argument("--force", action="store_true", help="also rewrite existing goldens (prints what changes)")
    p.add_argument("--prune", action="store_true",
                   help="remove goldens of cases not in this run; applied only when the whole suite (no --cases, "
                        "no --max-cases) ran to its end with every case passing")
    p.add_argument("--max-golden-bytes", type=byte_size, metavar="N",
                   help="store tensors over N bytes (e.g. 65536, 64K, 1G) as their sha256 and summary numbers only, "
                        "without ULP statistics; the store records N for later writers (default: the store's "
                        "recorded cap; for a new store " + ", ".join(
                            f"{n // 1024}K on {backend}" for backend, n in DEFAULT_MAX_TENSOR_BYTES.items()) + ")")
    p.add_argument("--no-audit", action="store_true",
                   help="skip the compile-variant audit (the store then records no variant counts)")
    against_impl(p, "write into a store that another implementation wrote, which then records this one as its "
                    "writer (exit 2 otherwise: one store, one implementation)")
    timeout(p)
    p.set_defaults(func=cmd_golden_regen)
    p = golden.add_parser("diff", help="bitwise diff of current outputs against the goldens, writing nothing")
    selection(p)
    execution(p)
    p.add_argument("--goldens", metavar="DIR", required=True)
    p.add_argument("--markdown", metavar="PATH",
                   help="write the before/after proof for a pull request: cases bitwise equal or their ULP "
                        "tables, both revisions, compiled variants before and after")
    p.add_argument("--json", metavar="PATH", help="write the same as JSON")
    against_impl(p)
    p.add_argument("--no-audit", action="store_true", help="skip the compile-variant audit (no variants after)")
    timeout(p)
    p.set_defaults(func=cmd_golden_diff)

    p = sub.add_parser("selfcheck", help="check the references against each other")
    selection(p, default_suite="smoke")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_selfcheck)

    p = sub.add_parser("mutate", help="apply known GDN kernel bugs to a copy of the kernels; each must fail the suite")
    selection(p)
    p.add_argument("--mutant", nargs="+", metavar="NAME", help="only these mutants (default: all)")
    p.add_argument("--goldens", metavar="DIR",
                   help="golden store for the golden-only mutants (default: the unmutated kernels' outputs, "
                        "made by this run)")
    p.add_argument("--workers", type=int, default=2, help="mutants run in parallel, one subprocess each")
    p.add_argument("--json", metavar="PATH", help="write the mutation results as JSON")
    p.add_argument("--mutants", metavar="FILE",
                   help="mutants of another package, TOML or JSON (format: gdn_verify/mutants.py; e.g. "
                        "mutants/fla.toml); default: the built-in mutants of our kernels")
    p.add_argument("--package", metavar="NAME",
                   help="with --mutants: the importable package to mutate (e.g. fla, or gdn_verify.kernels), "
                        "copied to a temporary directory first on the workers' path; default: the file's package")
    p.add_argument("--impl", metavar="IMPL", help="with --mutants: the implementation the copies run as "
                   "(default: the file's impl, else gdn)")
    p.add_argument("--device", help="with --mutants: auto, cpu (Triton's interpreter), cuda or cuda:N "
                   "(default: the file's device, else auto)")
    p.add_argument("--no-audit", action="store_true", help="skip the compile-variant audit of each copy")
    p.set_defaults(func=cmd_mutate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    pin_cpu_dispatch(reexec=["-m", "gdn_verify", *sys.argv[1:]] if argv is None else None)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"gdn-verify: error: {exc}", file=sys.stderr)
        return EXIT_SETUP
