"""The commands `golden regen` and `golden diff` (arguments: gdn_verify/cli.py)."""

from __future__ import annotations

import json

from gdn_verify.cli_common import (EXIT_FAIL, EXIT_PASS, EXIT_SETUP, CLIError, missing_goldens, resolve_device,
                                   run_with_progress, select_shard, shard_meta, single_impl, stop_on_signals,
                                   write_reports)


def cmd_golden_regen(args) -> int:
    from gdn_verify.goldens import GoldenError, regenerate
    from gdn_verify.identity import describe_key, describe_revision, implementation_identity
    from gdn_verify.report_tables import print_regen
    from gdn_verify.results import INTERRUPTED, STATUS_NOT_SUPPORTED, STATUS_PASS, RunOptions

    from gdn_verify.autotune import autotuners, choices, implementation_package, replay

    if args.prune and args.shard is not None:
        # A shard's run holds only its part of the suite: pruning would remove the other shards' goldens.
        raise CLIError(f"--prune with --shard {args.shard}: a shard runs part of the suite, and --prune would "
                       "remove the goldens of the other shards' cases; prune in a run without --shard")
    device = resolve_device(args.device)
    selection, cases = select_shard(args)
    impl = single_impl(args.impl, device)
    identity = implementation_identity(impl)
    existing = _existing_store(args.goldens, device)
    if existing is not None and not args.against_impl:
        _refuse_other_implementation(existing, identity)
    # Autotuned kernels take the configs the store's goldens were made with, where it records
    # them; the keys this run settles are recorded with its goldens (gdn_verify/autotune.py).
    tuners = autotuners(implementation_package(impl.fn))
    replayed = replay(tuners, existing.autotune if existing is not None else None)
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
        with stop_on_signals():
            result, console = run_with_progress(args, cases, impl, device, options, on_outputs=keep)
        fp, interrupted, results = result.fingerprint, result.interrupted, result.cases
        audit = result.variant_audit.to_json() if result.variant_audit is not None else None
    except KeyboardInterrupt:  # stopped outside the cases (before the first, or while reporting)
        from gdn_verify.platform import fingerprint
        from gdn_verify.render import make_console

        interrupted, fp, console = True, fingerprint(device), make_console()
    done = [r for r in results if r.failures != [INTERRUPTED]]
    done_ids = {r.id for r in done}
    bad = [r for r in done if r.status not in (STATUS_PASS, STATUS_NOT_SUPPORTED)]
    not_passed = [(r.id, f"{r.status}: {'; '.join(r.failures)}") for r in bad]
    not_passed += [(c.id, "not run: interrupted") for c in cases if c.id not in done_ids]
    # Pruning removes the goldens of cases not in this run: the store prunes only after a whole
    # suite in which every case passed, and says why otherwise. The other shards' cases are
    # selected but not run here: skipped, so that their goldens never count as unused.
    mine = {c.id for c in cases}
    others = [c.id for c in selection if c.id not in mine]
    try:
        regen = regenerate(args.goldens, fp, passing, force=args.force, prune=args.prune,
                           whole_suite=args.cases is None and args.max_cases is None, not_passed=not_passed,
                           skipped=[r.id for r in done if r.status == STATUS_NOT_SUPPORTED] + others,
                           max_tensor_bytes=args.max_golden_bytes, identity=identity, variant_audit=audit,
                           other_implementation=args.against_impl,
                           autotune=choices(autotuners(implementation_package(impl.fn))))
    except (GoldenError, OSError) as exc:
        raise CLIError(f"--goldens {args.goldens}: {exc}") from exc
    print_regen(console, regen, f"{describe_key(identity)}: {describe_revision(identity)}", audit,
                (len(done), len(cases), len(passing), args.prune) if interrupted else None)
    if replayed.recorded:
        console.print(f"autotune: {replayed.replayed} of the store's {replayed.recorded} recorded choices replayed"
                      + "".join(f"\n  not replayed (tuned on this machine): {x}" for x in replayed.not_replayed))
    return EXIT_FAIL if regen.incomplete or interrupted or regen.autotune_conflicts else EXIT_PASS


def _existing_store(goldens: str, device: str):
    """The store for this platform under goldens (golden_read.PlatformGoldens), or None."""
    from gdn_verify.goldens import GoldenError, GoldenStore
    from gdn_verify.platform import fingerprint

    try:
        return GoldenStore(goldens).for_platform(fingerprint(device))
    except (GoldenError, OSError) as exc:
        raise CLIError(f"--goldens {goldens}: {exc}") from exc


def _refuse_other_implementation(store, identity: dict) -> None:
    """Before a regen runs any case: CLIError when the store was written by another
    implementation (regenerate refuses it too, after the run)."""
    from gdn_verify.goldens import implementation_mismatch

    mismatch = implementation_mismatch(store.identity, identity, store.directory)
    if mismatch is not None:
        raise CLIError(f"{mismatch}; write its goldens to a store of their own (another --goldens DIR)")


def cmd_golden_diff(args) -> int:
    from gdn_verify.files import write_atomic
    from gdn_verify.golden_pr import StoreDiff
    from gdn_verify.report_json import write_shard_json
    from gdn_verify.report_tables import print_golden_diff
    from gdn_verify.results import RunOptions

    device = resolve_device(args.device)
    selection, cases = select_shard(args)
    impl = single_impl(args.impl, device)
    # The variant audit runs so that the report can set this revision's compiled-variant
    # counts against those the store recorded.
    options = RunOptions(reference=False, invariants=(), diagnose=False, audit=not args.no_audit,
                         goldens=args.goldens, case_timeout=args.case_timeout, against_impl=args.against_impl)
    with stop_on_signals():
        result, console = run_with_progress(args, cases, impl, device, options)
    if result.goldens["status"] == "not comparable":
        raise CLIError(f"nothing to diff against:\n{result.goldens['detail']}")
    proof = StoreDiff.from_run(result, args.goldens)
    print_golden_diff(console, result, f"golden diff: {args.suite} / {impl.spec} vs {result.goldens['platform_key']}",
                      proof)
    # A shard's --json is its run report with the shard key: `report merge` rebuilds the proof of
    # the whole selection from the shards' reports (the proof of one shard is not a part of it).
    meta = shard_meta(args, selection, "golden diff", options)
    if write_reports((("--markdown", args.markdown, lambda p: write_atomic(p, proof.markdown() + "\n")),
                      ("--json", args.json, lambda p: write_atomic(p, json.dumps(proof.to_json(), indent=1) + "\n")
                       if meta is None else write_shard_json(result, meta, p)))):
        return EXIT_SETUP
    if result.interrupted or any(r.golden.unexpected or r.status == "error" for r in result.cases):
        return EXIT_FAIL
    # A diff is a bitwise check by definition: a case without golden was not checked.
    missing = missing_goldens(result, args)
    if missing:
        raise CLIError(f"golden diff: {missing}")
    return EXIT_PASS

