"""The commands `run`, `cases`, `compare`, `selfcheck`, `mutate` and `report merge` (the `golden`
commands: gdn_verify/golden_commands.py; arguments: gdn_verify/cli.py)."""

from __future__ import annotations

import json
import sys

from gdn_verify.cli_common import (EXIT_FAIL, EXIT_PASS, EXIT_SETUP, CLIError, impl_requests, missing_goldens,
                                   resolve_device, resolve_spec, run_with_progress, select_cases, select_shard,
                                   shard_meta, single_impl, stop_on_signals, write_reports)


def cmd_cases(args) -> int:
    for case in select_shard(args)[1]:
        print(case.id)
    return EXIT_PASS


def cmd_run(args) -> int:
    from gdn_verify.render import write_json
    from gdn_verify.report import print_summary, write_markdown
    from gdn_verify.report_json import write_shard_json
    from gdn_verify.results import RunOptions

    if args.require_goldens and args.goldens is None:
        raise CLIError("--require-goldens: needs --goldens DIR (the store to compare with)")
    device = resolve_device(args.device)
    selection, cases = select_shard(args)
    impl = single_impl(args.impl, device)
    options = RunOptions(jax=args.jax, goldens=args.goldens, require_goldens=args.require_goldens,
                         repro_dir=args.repro_dir, audit=not args.no_audit, case_timeout=args.case_timeout,
                         against_impl=args.against_impl)
    # SIGTERM / SIGINT stop the run between or inside cases; the reports still hold what ran.
    with stop_on_signals():
        result, console = run_with_progress(args, cases, impl, device, options)
    print_summary(result, console)
    meta = shard_meta(args, selection, "run", options)  # a shard's JSON: what `report merge` reads
    if write_reports((("--json", args.json, lambda p: write_json(result, p) if meta is None
                       else write_shard_json(result, meta, p)),
                       ("--markdown", args.markdown, lambda p: write_markdown(result, p)))):
        return EXIT_SETUP
    if not result.passed:
        return EXIT_FAIL
    missing = missing_goldens(result, args) if args.require_goldens else None
    if missing:
        print(f"gdn-verify: error: --require-goldens: {missing}", file=sys.stderr)
        return EXIT_SETUP
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
    device = resolve_device(args.device or mutant_set.device or "auto")
    single_impl([(spec, {})], device)  # resolvable here (the real install), before any copy runs
    return package_target(package, spec, device), select_mutants(mutant_set.mutants, args.mutant)


def cmd_mutate(args) -> int:
    from gdn_verify.files import write_atomic
    from gdn_verify.mutate import MutationSetupError, run_mutants
    from gdn_verify.render import make_console
    from gdn_verify.report_tables import print_mutation_report

    console = make_console()
    try:
        target, mutants = _mutation_target(args)
        report = run_mutants(mutants, select_cases(args), goldens=args.goldens, workers=args.workers,
                             audit=not args.no_audit, target=target,
                             on_result=lambda r: console.print(r.progress_line(), markup=False, highlight=False))
    except (ValueError, MutationSetupError) as exc:  # MutantError is a ValueError
        raise CLIError(str(exc)) from exc
    print_mutation_report(console, report)
    if args.json:
        write_atomic(args.json, json.dumps(report.to_json(), indent=1) + "\n")
    return EXIT_FAIL if report.survivors else EXIT_PASS


def cmd_compare(args) -> int:
    from gdn_verify.compare_impls import compare_impls
    from gdn_verify.impls import ImplError, ImplUnavailable
    from gdn_verify.render import Live, make_console, write_json
    from gdn_verify.report_compare import print_comparison, write_comparison_markdown
    from gdn_verify.results import RunOptions

    device = resolve_device(args.device)
    if args.bench and not device.startswith("cuda"):
        raise CLIError("--bench: latency is measured on a CUDA device only (--device cuda)")
    if args.time_budget is not None and args.time_budget <= 0:
        raise CLIError(f"--time-budget: expected a positive number of seconds, got {args.time_budget}")
    cases = select_cases(args)
    console = make_console()
    adapters, unavailable = [], {}
    for spec, conventions in impl_requests(args.impl):
        if any(a.spec == spec for a in adapters) or spec in unavailable:
            raise CLIError(f"--impl {spec}: given twice")
        try:
            adapters.append(resolve_spec(spec, conventions, device))
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
    with stop_on_signals(), Live(console, len(cases) * len(adapters), title) as live:
        def progress(spec, result, index, total):
            live.case_done(result, index, total, label=spec)

        comparison = compare_impls(adapters, cases, device, options, suite=args.suite, bench=args.bench,
                                   time_budget_s=args.time_budget, unavailable=unavailable, on_case=progress)
    print_comparison(comparison, console)
    if write_reports((("--json", args.json, lambda p: write_json(comparison, p)),
                       ("--markdown", args.markdown, lambda p: write_comparison_markdown(comparison, p)))):
        return EXIT_SETUP
    return EXIT_PASS if comparison.passed else EXIT_FAIL


def cmd_selfcheck(args) -> int:
    import importlib.util

    from gdn_verify.references import reference_agreement
    from gdn_verify.render import make_console
    from gdn_verify.report_tables import print_selfcheck

    if importlib.util.find_spec("jax") is None:
        raise CLIError("selfcheck: needs JAX for the second reference; install it with "
                       "pip install 'gdn-verify[jax]' (or: pip install jax)")
    device = resolve_device(args.device)
    rows = reference_agreement(select_cases(args), device)
    print_selfcheck(make_console(), rows)
    return EXIT_PASS if all(row["passed"] for row in rows) else EXIT_FAIL



def cmd_report_merge(args) -> int:
    """`report merge`: the shards' reports as one run's; its exit code is that run's (0, 1 or 2),
    or 2 when the reports do not make up one run (gdn_verify/report_merge.py says what is refused)."""
    from gdn_verify.report_merge import MergeError, headline, merge_files

    try:
        merged = merge_files(args.reports)
    except MergeError as exc:
        raise CLIError(f"report merge: {exc}") from exc
    problems = merged.write(args.json, args.markdown, args.junit)
    for problem in problems:
        print(f"gdn-verify: error: {problem}", file=sys.stderr)
    print(headline(merged))
    if problems:
        return EXIT_SETUP
    code = merged.exit_code()
    if code == EXIT_SETUP and merged.missing_goldens():
        flag = "golden diff" if merged.command == "golden diff" else "--require-goldens"
        print(f"gdn-verify: error: {flag}: {merged.missing_goldens()}", file=sys.stderr)
    return code
