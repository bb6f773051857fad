"""The compile-variant audit, and the time limit of a case or an audit call.

After T = 64 alone, the T sweep (dense single sequences and one varlen batch of the same
lengths) must compile no variant that T = 64 did not: no specialization may derive from T."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterable

import torch

from gdn_verify.adapters import Adapter, NotSupported
from gdn_verify.call_guard import ContractViolation
from gdn_verify.cases import Case, dense, varlen
from gdn_verify.compare import backend_of
from gdn_verify.inputs import make_inputs, to_device
from gdn_verify.platform import CUDA_BACKEND, INTERPRETER_BACKEND
from gdn_verify.results import SetupError, VariantAudit, exception_text

# The compile-variant audit's sweep: T = 64 alone first, then every length of the sweep.
AUDIT_T = {CUDA_BACKEND: (1, 16, 32, 63, 64, 65, 128, 1000), INTERPRETER_BACKEND: (1, 16, 32, 63, 64, 65, 128)}
# Without the in-kernel l2norm: flash-linear-attention autotunes its l2norm kernel anew for
# every bucket of T, which can spend a whole comparison run's time budget on the audit
# (benchmarks/results/design_history.md). Our l2norm stage's variants are audited by
# tests/test_kernels_chunk.py and benchmarks/bench_kernels.py instead.
AUDIT_SHAPE = {CUDA_BACKEND: dict(H=4, HV=8, K=128, V=128), INTERPRETER_BACKEND: dict(H=1, HV=2, K=16, V=16)}


class CaseTimeout(BaseException):
    """A case ran past its time limit. A BaseException, so that an implementation's own
    `except Exception` cannot swallow it."""

    def __init__(self, seconds: float):
        super().__init__(f"timed out after {seconds:g} s")


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise CaseTimeout in the main thread after `seconds` (None: no limit), by SIGALRM.

    A Python-level hang (a loop, time.sleep, the Triton interpreter between NumPy calls) is
    interrupted; a call stuck inside C code (a CUDA synchronize, one long NumPy or torch
    operation) is not: the signal is handled only when it returns to Python. The previous
    SIGALRM handler is restored afterwards; the timer (ITIMER_REAL) is the harness's while a
    limit is armed."""
    if seconds is None:
        yield
        return
    if threading.current_thread() is not threading.main_thread():
        raise SetupError("--case-timeout: works only in the main thread (it uses SIGALRM)")

    def expire(signum, frame):
        raise CaseTimeout(seconds)

    previous = signal.signal(signal.SIGALRM, expire)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        yield
    finally:
        # Disarm before restoring: SIGALRM's default action ends the process.
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def variant_audit(impl: Adapter, device: str, timeout_s: float | None = None) -> VariantAudit | None:
    """Compiled variants per kernel after T = 64 alone, then after the whole T sweep (dense
    single sequences and one packed batch of the same lengths). Shorter or longer sequences
    must not need new variants: no specialization may derive from T. Where the implementation
    can forget its variants (a package that may autotune), the calls run once before, unmeasured.

    A call that raises (anything but KeyboardInterrupt and NotSupported, which propagate) or
    breaks the contract fails the audit with what happened; `timeout_s` limits each call."""
    if impl.variants is None:
        return None
    backend = backend_of(device)
    lengths = AUDIT_T[backend]
    shape = AUDIT_SHAPE[backend]

    def run(cases: Iterable[Case]) -> None:
        for case in cases:
            with time_limit(timeout_s):
                impl(case, to_device(make_inputs(case), device))
                sync(device)

    t64 = [dense(64, dtype="bfloat16", **shape), varlen((64,), dtype="bfloat16", **shape)]
    sweep = [dense(T, dtype="bfloat16", **shape) for T in lengths] + [varlen(lengths, dtype="bfloat16", **shape)]
    settle = impl.forget_variants is not None
    try:
        if settle:
            # An autotuner compiles every config it times, and only where its choice is not
            # already in Triton's disk cache: every key is settled first, then the compiled
            # variants are forgotten, so the counts below are the variants the calls launch.
            run(t64 + sweep)
            impl.forget_variants()
        run(t64)
        after_t64 = impl.variants()
        run(sweep)
        after_sweep = impl.variants()
    except (KeyboardInterrupt, NotSupported, SetupError):
        raise
    except BaseException as exc:  # noqa: BLE001 - the implementation's failure is the audit's finding
        what = str(exc) if isinstance(exc, (CaseTimeout, ContractViolation)) else exception_text(exc)
        return VariantAudit(list(lengths), {}, {}, False, f"the audit's calls failed: {what}")
    added = {name: n - after_t64.get(name, 0) for name, n in after_sweep.items() if n != after_t64.get(name, 0)}
    detail = (f"{sum(after_sweep.values())} variants over {len(after_sweep)} kernels, "
              f"the same as after T = 64 alone" if not added
              else "the T sweep added variants: " + ", ".join(f"{k} +{n}" for k, n in added.items()))
    return VariantAudit(list(lengths), after_t64, after_sweep, not added, detail, settled=settle)
