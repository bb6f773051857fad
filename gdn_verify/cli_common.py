"""What the command modules share (gdn_verify/commands.py, golden_commands.py): exit codes, the
usage error, the device, the cases (and a shard of them), the implementation(s) of a command, signals, progress and
report files. Heavy modules are imported inside the functions: on the CPU, TRITON_INTERPRET
must be set (resolve_device) before anything imports the kernels."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

EXIT_PASS, EXIT_FAIL, EXIT_SETUP = 0, 1, 2


class CLIError(Exception):
    """A usage or setup problem: printed, exit code 2."""


def resolve_device(requested: str) -> str:
    """Resolve --device and prepare the process for it (before the kernels are imported)."""
    import torch

    device = requested
    if requested == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        kernels = sys.modules.get("gdn_verify.kernels")
        if kernels is not None and not getattr(kernels, "INTERPRET", True):
            raise CLIError("--device cpu: the kernels were imported before TRITON_INTERPRET=1 was set; "
                           "run gdn-verify in a fresh process")
        os.environ["TRITON_INTERPRET"] = "1"
    elif device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CLIError(f"--device {requested}: torch sees no CUDA device")
        if os.environ.get("TRITON_INTERPRET") == "1":
            raise CLIError(f"--device {requested}: TRITON_INTERPRET=1 is set, so the kernels would be "
                           "interpreted instead of compiled; unset it")
    else:
        raise CLIError(f"--device: expected auto, cpu, cuda or cuda:N, got {requested!r}")
    return device


def select_cases(args):
    from gdn_verify.cases import select
    from gdn_verify.suites import suite

    try:
        cases = select(suite(args.suite), args.cases, args.max_cases)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    if not cases:  # nothing to check is never a pass
        raise CLIError(f"--cases {args.cases!r} matches no case of suite {args.suite} ({len(suite(args.suite))} "
                       f"cases; list their ids with `gdn-verify cases --suite {args.suite}`)")
    return cases


def select_shard(args):
    """(selection, cases): the selected cases, and the part of them this process runs: with
    --shard I/N shard I of the selection (gdn_verify/shard.py), otherwise all of it."""
    selection = select_cases(args)
    shard = getattr(args, "shard", None)
    if shard is None:
        return selection, selection
    from gdn_verify.shard import shard_cases

    try:
        return selection, shard_cases(selection, shard.index, shard.count)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc


def shard_meta(args, selection, command: str, options) -> dict | None:
    """The "shard" key of this process's JSON report (None without --shard)."""
    if getattr(args, "shard", None) is None:
        return None
    from gdn_verify.shard import shard_metadata

    return shard_metadata(selection, args.shard, command, options)


def write_reports(writes) -> list[str]:
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


def missing_goldens(result, args) -> str | None:
    """Why a run with goldens compared fewer cases bit for bit than it ran, or None."""
    missing = result.totals["golden_missing"]
    if not missing:
        return None
    _, ran = result.golden_coverage
    return (f"{missing} of {ran} cases have no golden in {result.goldens['root']} "
            f"(platform {result.goldens['platform_key']}), so they were not compared bit for bit; write them with "
            f"`gdn-verify golden regen --suite {args.suite} --goldens {args.goldens}` on this platform")


def impl_requests(requests) -> list[tuple[str, dict]]:
    """(spec, conventions) per --impl; our chunk kernel when no --impl was given."""
    return [(spec or "gdn", conventions) for spec, conventions in (requests or [(None, {})])]


def resolve_spec(spec: str, conventions: dict, device: str):
    from gdn_verify.impls import resolve_impl

    return resolve_impl(spec, device=device, **conventions)


def single_impl(requests, device: str):
    """The one implementation of run / golden commands."""
    from gdn_verify.impls import ImplError

    requests = impl_requests(requests)
    if len(requests) > 1:
        raise CLIError(f"--impl: this command takes one implementation, got {len(requests)}; "
                       "use `gdn-verify compare` for several")
    try:
        return resolve_spec(*requests[0], device)
    except ImplError as exc:
        raise CLIError(str(exc)) from exc


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM (timeout's) and SIGINT raise KeyboardInterrupt inside the block, so a command
    under a wall-clock limit can stop and still report or keep what it finished; installed here
    because a shell may start the process with SIGINT ignored."""
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_with_progress(args, cases, impl, device, options, on_outputs=None):
    from gdn_verify.render import Live, make_console
    from gdn_verify.results import SetupError
    from gdn_verify.runner import run_cases

    console = make_console()
    try:
        shard = getattr(args, "shard", None)
        title = f"{args.suite} / {impl.spec}" + (f" (shard {shard})" if shard is not None else "")
        with Live(console, len(cases), title) as live:
            result = run_cases(cases, impl, device, options, suite=args.suite, on_case=live.case_done,
                               on_outputs=on_outputs)
    except SetupError as exc:
        raise CLIError(str(exc)) from exc
    return result, console

