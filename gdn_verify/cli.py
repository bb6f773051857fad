"""The `gdn-verify` command.

    gdn-verify run --suite S --impl I --device D [--goldens DIR] [--json PATH] [--markdown PATH]
                   [--repro-dir DIR] [--cases PATTERN] [--max-cases N] [--jax]
    gdn-verify cases --suite S [--cases PATTERN] [--max-cases N]
    gdn-verify golden regen --suite S --goldens DIR [--force] [--prune]
    gdn-verify golden diff --suite S --goldens DIR
    gdn-verify selfcheck

Exit codes: 0 every check passed; 1 a check failed or a bitwise diff against the goldens;
2 usage or setup error (bad arguments, unknown suite or implementation, unreadable goldens).

On the CPU the kernels run in Triton's interpreter, which `@triton.jit` decides when a kernel
is decorated, so TRITON_INTERPRET=1 is set here before anything imports the kernels; runs
that read or write goldens there pin the thread counts the interpreter's bits depend on.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

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
        return select(suite(args.suite), args.cases, args.max_cases)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc


def _impl(spec: str):
    from gdn_verify.impls import ImplError, resolve_impl

    try:
        return resolve_impl(spec)
    except ImplError as exc:
        raise CLIError(str(exc)) from exc


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

    device = _device(args.device, pin_threads=args.goldens is not None)
    cases = _cases(args)
    impl = _impl(args.impl)
    options = RunOptions(jax=args.jax, goldens=args.goldens, repro_dir=args.repro_dir, audit=not args.no_audit)
    result, console = _run_with_progress(args, cases, impl, device, options)
    print_summary(result, console)
    if args.json:
        write_json(result, args.json)
    if args.markdown:
        write_markdown(result, args.markdown)
    return EXIT_PASS if result.passed else EXIT_FAIL


def cmd_golden_regen(args) -> int:
    from gdn_verify.goldens import GoldenError, regenerate
    from gdn_verify.runner import STATUS_PASS, RunOptions

    device = _device(args.device, pin_threads=True)
    cases = _cases(args)
    impl = _impl(args.impl)
    # Goldens are the outputs of passing runs only: a case that fails its reference check
    # is reported and never written.
    options = RunOptions(invariants=(), diagnose=False, audit=False)
    passing = []

    def keep(result, outputs):
        if result.status == STATUS_PASS:
            passing.append((result.case, result.inputs_digest, {k: t.detach().cpu() for k, t in outputs.items()}))

    result, console = _run_with_progress(args, cases, impl, device, options, on_outputs=keep)
    try:
        regen = regenerate(args.goldens, result.fingerprint, passing, force=args.force, prune=args.prune)
    except (GoldenError, OSError) as exc:
        raise CLIError(f"--goldens {args.goldens}: {exc}") from exc
    console.print(regen.rich_table())
    failed = [r for r in result.cases if r.status != STATUS_PASS]
    for r in failed:
        console.print(f"not written ({r.status}): {r.id}: {'; '.join(r.failures)}", markup=False, highlight=False)
    return EXIT_FAIL if failed else EXIT_PASS


def cmd_golden_diff(args) -> int:
    from rich.table import Table

    from gdn_verify.runner import RunOptions

    device = _device(args.device, pin_threads=True)
    cases = _cases(args)
    impl = _impl(args.impl)
    options = RunOptions(reference=False, invariants=(), diagnose=False, audit=False, goldens=args.goldens)
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
    return EXIT_FAIL if any(r.golden.unexpected or r.status == "error" for r in result.cases) else EXIT_PASS


def cmd_selfcheck(args) -> int:
    from rich.table import Table

    from gdn_verify.report import make_console
    from gdn_verify.runner import reference_agreement

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

def _parser() -> argparse.ArgumentParser:
    from gdn_verify.cases import SUITES

    parser = argparse.ArgumentParser(prog="gdn-verify", description="Verify gated-delta-rule kernels against "
                                     "float64 references and golden tensors.")
    sub = parser.add_subparsers(dest="command", required=True)

    def selection(p, default_suite="cpu"):
        p.add_argument("--suite", choices=SUITES, default=default_suite, help="named suite of cases")
        p.add_argument("--cases", metavar="PATTERN", help="only cases whose id matches this regular expression")
        p.add_argument("--max-cases", type=int, metavar="N", help="at most N cases (after --cases)")

    def execution(p):
        p.add_argument("--impl", default="gdn", help="gdn (chunk kernel), gdn-recurrent, or module:function")
        p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N")

    p = sub.add_parser("run", help="check an implementation on a suite")
    selection(p)
    execution(p)
    p.add_argument("--goldens", metavar="DIR", help="compare outputs bit for bit with the goldens under DIR")
    p.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write a Markdown summary for a pull request")
    p.add_argument("--repro-dir", metavar="DIR", help="write a standalone reproducer for each failing case")
    p.add_argument("--jax", action="store_true", help="also check the torch reference against the JAX one")
    p.add_argument("--no-audit", action="store_true", help="skip the compile-variant audit")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("cases", help="list the case ids of a suite")
    selection(p)
    p.set_defaults(func=cmd_cases)

    golden = sub.add_parser("golden", help="golden tensors").add_subparsers(dest="golden_command", required=True)
    p = golden.add_parser("regen", help="write goldens: new cases only, unless --force")
    selection(p)
    execution(p)
    p.add_argument("--goldens", metavar="DIR", required=True)
    p.add_argument("--force", action="store_true", help="also rewrite existing goldens (prints what changes)")
    p.add_argument("--prune", action="store_true", help="remove goldens of cases not in this run")
    p.set_defaults(func=cmd_golden_regen)
    p = golden.add_parser("diff", help="bitwise diff of current outputs against the goldens, writing nothing")
    selection(p)
    execution(p)
    p.add_argument("--goldens", metavar="DIR", required=True)
    p.set_defaults(func=cmd_golden_diff)

    p = sub.add_parser("selfcheck", help="check the references against each other")
    selection(p, default_suite="smoke")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_selfcheck)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"gdn-verify: error: {exc}", file=sys.stderr)
        return EXIT_SETUP
