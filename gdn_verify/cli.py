"""The `gdn-verify` command.

    gdn-verify run --suite S --impl I --device D [--goldens DIR [--require-goldens]] [--json PATH]
                   [--markdown PATH] [--repro-dir DIR] [--cases PATTERN] [--max-cases N] [--jax]
                   [--case-timeout SECONDS] [--shard I/N]
    gdn-verify cases --suite S [--cases PATTERN] [--max-cases N] [--shard I/N]
    gdn-verify golden regen --suite S --impl I --goldens DIR [--force] [--prune] [--max-golden-bytes N]
                            [--no-audit] [--case-timeout SECONDS] [--shard I/N]
    gdn-verify golden diff --suite S --impl I --goldens DIR [--markdown PATH] [--json PATH]
                           [--against-impl] [--no-audit] [--case-timeout SECONDS] [--shard I/N]
    gdn-verify report merge SHARD.json ... [--json PATH] [--markdown PATH] [--junit PATH]
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

Sharded runs: --shard I/N runs shard I of N of the selected cases (a deterministic split balanced
by the cases' cost, gdn_verify/shard.py); the N shards' `--json` reports merged by `report merge`
give the report and exit code of one run over the whole selection. `golden regen` shards may
write into one store at once (its lock serializes the writers).

No silent pass: a `run --goldens` that compared nothing, or fewer cases than it ran, says so in
its headline ("no bitwise comparison", "k of n cases compared bit for bit"); with
--require-goldens (what the gate passes) it exits 2 instead of 0.

On the CPU the kernels run in Triton's interpreter, which `@triton.jit` decides when a kernel
is decorated, so TRITON_INTERPRET=1 is set here before anything imports the kernels.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Sequence

from gdn_verify.cli_common import EXIT_FAIL, EXIT_PASS, EXIT_SETUP, CLIError, impl_requests  # noqa: F401 - API
from gdn_verify.commands import cmd_cases, cmd_compare, cmd_mutate, cmd_report_merge, cmd_run, cmd_selfcheck
from gdn_verify.golden_commands import cmd_golden_diff, cmd_golden_regen
from gdn_verify.platform import pin_cpu_dispatch


def _seconds(text: str) -> float:
    """--case-timeout: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _shard(text: str):
    """--shard: I/N (gdn_verify/shard.py, imported here: it loads NumPy, after the CPU dispatch is pinned)."""
    from gdn_verify.shard import shard_argument

    return shard_argument(text)


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


def _conventions(p) -> None:
    from gdn_verify import conventions

    group = p.add_argument_group(
        "conventions of the implementation (each flag applies to the --impl before it; see gdn_verify/adapters.py)")

    def flag(name, field, help, **kwargs):
        group.add_argument(name, dest="impl", action=_ConventionAction, field=field, help=help, **kwargs)

    flag("--layout", "layout", "dense [B, T, H, D] (default) or varlen [T, H, D]; batched and packed, their former "
         "names, are accepted for them", choices=conventions.LAYOUTS + tuple(conventions.LAYOUT_ALIASES),
         convert=lambda name: conventions.LAYOUT_ALIASES.get(name, name))
    flag("--state-layout", "state_layout", "kv [N, HV, K, V] (default) or vk [N, HV, V, K]",
         choices=conventions.STATE_LAYOUTS)
    flag("--gate-space", "gate_space", "log: g (default); alpha: exp(g), computed in float64, rounded to g's dtype",
         choices=conventions.GATE_SPACES)
    flag("--head-map", "head_map", "key head of value head h: div h // (HV/H) (default) or mod h %% H",
         choices=conventions.HEAD_MAPS)
    flag("--l2norm", "l2norm", "q/k l2norm: kernel (its flag, default), outside (the harness normalizes before "
         "the call) or unsupported (such cases are not supported)", choices=conventions.L2NORM_MODES)
    flag("--l2norm-arg", "l2norm_arg", "name of the l2norm flag (default use_qk_l2norm_in_kernel)", metavar="NAME")
    for arg in conventions.OPTIONAL_ARGUMENTS:
        flag(f"--no-{arg.replace('_', '-')}", "lacks", f"the implementation lacks {arg}: cases needing it are "
             "reported as not supported", nargs=0, const=arg)
    flag("--no-gate-floor", "gate_floor", "the implementation does not clamp log gates at the contract's gate "
         "floor: cases with gates under it (the extreme regime) are reported as not supported", nargs=0,
         convert=lambda _: False)
    flag("--dtypes", "dtypes", "comma-separated input dtypes it accepts (others: not supported)",
         convert=lambda text: tuple(d.strip() for d in text.split(",") if d.strip()), metavar="LIST")
    flag("--keyword-tensors", "keyword_tensors", "pass q, k, v, g, beta by keyword (named so)", nargs=0,
         convert=lambda _: True)
    flag("--cu-seqlens-dtype", "cu_seqlens_dtype", "convert cu_seqlens to this integer dtype",
         choices=tuple(conventions.CU_SEQLENS_DTYPES))
    flag("--design", "design", "its precision design: gdn, fla, float32, or a spec such as "
         "'store=Tm,W,U,h,v_new:input;dots=tf32' (gdn_verify/designs.py); a design other than ours is judged "
         "against its emulated error instead of the tolerance table", type=_design, metavar="NAME|SPEC")


def build_parser() -> argparse.ArgumentParser:
    from gdn_verify.goldens import DEFAULT_MAX_TENSOR_BYTES, byte_size
    from gdn_verify.suites import SUITES

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

    def sharding(p, what):
        p.add_argument("--shard", type=_shard, metavar="I/N",
                       help="run shard I of N (1 <= I <= N) of the selected cases: N processes, on other GPUs or "
                            "hosts, with the same selection and --shard 1/N .. N/N run each case once; " + what)

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
    sharding(p, "--json then writes the shard's report, which `gdn-verify report merge` combines with the "
                "others' into the whole run's (--markdown and the exit code are this shard's)")
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
    sharding(p, "lists the ids of that shard")
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
    sharding(p, "shards may write into the same --goldens at once (the store's lock serializes them); "
                "not with --prune")
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
    sharding(p, "--json then writes the shard's run report, from which `gdn-verify report merge` rebuilds the "
                "whole selection's proof (--markdown and the exit code are this shard's)")
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

    report = sub.add_parser("report", help="reports of sharded runs").add_subparsers(dest="report_command",
                                                                                    required=True)
    p = report.add_parser("merge", help="merge the JSON reports of every shard of one run into that run's report",
                          description="Merge the --json reports of the N shards of one `run --shard I/N` or "
                                      "`golden diff --shard I/N` into the report of one run over the whole "
                                      "selection, with its exit code (0, 1 or 2); exit 2 when the reports are not "
                                      "the complete shards of one run.")
    p.add_argument("reports", nargs="+", metavar="SHARD.json", help="the JSON report of each shard, in any order")
    p.add_argument("--json", metavar="PATH", help="write the merged report as JSON (for golden diff shards: the "
                   "proof's JSON, as `golden diff --json` writes it)")
    p.add_argument("--markdown", metavar="PATH", help="write the merged Markdown summary (golden diff: the proof)")
    p.add_argument("--junit", metavar="PATH", help="write the merged report as JUnit XML, one test per case")
    p.set_defaults(func=cmd_report_merge)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    pin_cpu_dispatch(reexec=["-m", "gdn_verify", *sys.argv[1:]] if argv is None else None)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"gdn-verify: error: {exc}", file=sys.stderr)
        return EXIT_SETUP
    except BrokenPipeError:  # the reader went away (`gdn-verify cases | head`): output incomplete, no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_SETUP
