"""Several implementations side by side over the same cases: one run, one report.

The order of work in `compare_impls`:
1. the compile-variant audit of each implementation, first, while nothing has compiled for the
   audit's shape yet: after the cases, variants compiled for other lengths would already be in
   the cache and hide a specialization on T;
2. with `bench`, the median latency of each implementation on the benchmark shapes
   (docs/design.md, 'Benchmark shapes and targets');
3. the cases, each run by every implementation before the next case starts, so that a time
   budget cuts every column at the same case (the cases left are listed as not run).
An interrupt (SIGINT, e.g. `timeout -s INT`) during steps 2 and 3 stops the work the same way,
so that the report of what ran is still written.

Results are grouped by dtype and by shape class (`shape_class`): a dense batch of sequences of
one chunk or less, a dense batch of longer sequences, and packed sequences (cu_seqlens), the
three paths a chunked kernel takes differently. Per group and implementation: the status
counts (pass / fail / error / changed / not supported), the worst RMS error ratio and max abs
error of o and of the final state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from gdn_verify.adapters import Adapter, NotSupported
from gdn_verify.conventions import l2_normalized
from gdn_verify.bench_shapes import BENCH_DENSE_T, BENCH_DTYPE, BENCH_MODEL, BENCH_PACKED_SEQS, bench_packed_lengths
from gdn_verify.cases import Case, dense, varlen
from gdn_verify.contract import CHUNK_SIZE
from gdn_verify.compare import TENSORS, backend_of
from gdn_verify.invariants import INVARIANTS
from gdn_verify.audit import variant_audit
from gdn_verify.results import CaseResult, RunOptions, RunResult, STATUS_NOT_SUPPORTED, STATUSES, VariantAudit
from gdn_verify.run_goldens import RunGoldens
from gdn_verify.runner import run_case
from gdn_verify.suites import DTYPES

# One chunk or more, or varlen (the label "packed" is the report's).
SHAPE_CLASSES = (f"dense, T <= {CHUNK_SIZE}", f"dense, T > {CHUNK_SIZE}", "packed")

# The benchmark shapes (gdn_verify/bench_shapes.py). q and k arrive normalized (no l2norm in
# the call): flash-linear-attention autotunes its l2norm kernel anew for every bucket of T (25
# configs each), which would spend the time of a one-call GPU run on compiling.
BENCH_REGIME = dict(dtype=BENCH_DTYPE, init_state="random", l2norm=False)


def shape_class(case: Case) -> str:
    if case.layout == "varlen":
        return SHAPE_CLASSES[2]
    return SHAPE_CLASSES[0] if case.T <= CHUNK_SIZE else SHAPE_CLASSES[1]


# ----------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------

def bench_cases() -> list[tuple[str, Case]]:
    lens = bench_packed_lengths()
    shapes = [(f"T = {T}", dense(T, **BENCH_MODEL, **BENCH_REGIME)) for T in BENCH_DENSE_T]
    shapes.append((f"{BENCH_PACKED_SEQS} packed sequences of 1..128 (T = {sum(lens)})",
                   varlen(lens, **BENCH_MODEL, **BENCH_REGIME)))
    return shapes


def bench_inputs(case: Case, device: str) -> dict[str, torch.Tensor]:
    """A benchmark case's inputs drawn on the device: timing needs the shapes and the value
    regime (q, k unit vectors, v normal, mild gates in [-0.1, 0], beta in (0, 1), a random
    initial state), not the CPU generator's bits, and 65536 tokens of 16 + 16 + 32 heads take
    seconds to draw on a host."""
    gen = torch.Generator(device=device).manual_seed(case.input_seed())
    dtype = getattr(torch, case.dtype)
    B, T, N = case.B, case.T, case.N

    def normal(*shape):
        return torch.randn(shape, generator=gen, device=device)

    q, k = normal(B, T, case.H, case.K), normal(B, T, case.H, case.K)
    if not case.l2norm:
        q, k = l2_normalized(q), l2_normalized(k)
    inputs = {"q": q.to(dtype), "k": k.to(dtype),
              "v": normal(B, T, case.HV, case.V).to(dtype),
              "g": -0.1 * torch.rand((B, T, case.HV), generator=gen, device=device),
              "beta": torch.sigmoid(normal(B, T, case.HV)).to(dtype),
              "initial_state": normal(N, case.HV, case.K, case.V)}
    if case.cu_seqlens is not None:
        inputs["cu_seqlens"] = torch.tensor(case.cu_seqlens, dtype=torch.int32, device=device)
    return inputs


@dataclass
class BenchRow:
    shape: str
    impl: str
    T: int
    sequences: int
    status: str  # "ok", "not supported", "error", "not run"
    median_ms: float | None = None
    first_call_s: float | None = None  # the first call's wall time: compile and autotune when cold
    detail: str = ""

    def to_json(self) -> dict:
        return dict(self.__dict__)


def time_call(adapter: Adapter, case: Case, inputs: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(median ms of the implementation's own call, first call's seconds). Conversions happen
    once, outside the timing."""
    import triton.testing

    call = adapter.prepare(case, inputs)
    start = time.perf_counter()
    call.run(adapter.fn)
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    median = triton.testing.do_bench(lambda: adapter.fn(*call.args, **call.kwargs), warmup=25, rep=100,
                                     return_mode="median")
    return float(median), first


def run_bench(adapters: Sequence[Adapter], device: str, deadline: float | None = None,
              rows: list[BenchRow] | None = None) -> list[BenchRow]:
    """One row per (shape, implementation), appended to `rows` as each is timed (so that an
    interrupt keeps those done)."""
    rows = [] if rows is None else rows
    for label, case in bench_cases():
        inputs = None
        for adapter in adapters:
            row = BenchRow(label, adapter.spec, case.tokens, case.N, "ok")
            reason = adapter.unsupported(case)
            if deadline is not None and time.perf_counter() > deadline:
                row.status, row.detail = "not run", "time budget reached"
            elif reason is not None:
                row.status, row.detail = STATUS_NOT_SUPPORTED, reason
            else:
                try:
                    if inputs is None:
                        inputs = bench_inputs(case, device)
                    row.median_ms, row.first_call_s = time_call(adapter, case, inputs)
                except NotSupported as exc:
                    row.status, row.detail = STATUS_NOT_SUPPORTED, str(exc)
                except Exception as exc:  # an implementation failing a shape is a finding
                    row.status, row.detail = "error", f"{type(exc).__name__}: {exc}"
            rows.append(row)
        del inputs
        torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------------------
# The comparison
# ----------------------------------------------------------------------------------------

@dataclass
class Comparison:
    suite: str
    device: str
    backend: str
    fingerprint: dict
    impls: list[dict]  # per implementation: spec and declared conventions
    runs: dict[str, RunResult]  # spec -> its results over the cases that ran
    unavailable: dict[str, str] = field(default_factory=dict)  # spec -> why it could not run here
    audit_notes: dict[str, str] = field(default_factory=dict)  # spec -> why there is no variant audit
    not_run: list[str] = field(default_factory=list)  # case ids the time budget (or an interrupt) left out
    interrupted: bool = False
    time_budget_s: float | None = None
    bench: list[BenchRow] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def specs(self) -> list[str]:
        return list(self.runs)

    @property
    def passed(self) -> bool:
        return all(run.passed for run in self.runs.values())

    def groups(self) -> list[dict]:
        """One row per (dtype, shape class) present: {"dtype", "shape", "cases", "impls": {spec: summary}}."""
        keys = {(r.case.dtype, shape_class(r.case)) for run in self.runs.values() for r in run.cases}
        order = {d: i for i, d in enumerate(DTYPES)}
        rows = []
        for dtype, shape in sorted(keys, key=lambda k: (order.get(k[0], 9), SHAPE_CLASSES.index(k[1]))):
            summaries = {spec: summarize([r for r in run.cases if r.case.dtype == dtype and shape_class(r.case) == shape])
                         for spec, run in self.runs.items()}
            rows.append({"dtype": dtype, "shape": shape, "cases": max(s["cases"] for s in summaries.values()),
                         "impls": summaries})
        return rows

    def invariants(self) -> dict[str, dict[str, dict[str, int]]]:
        """invariant -> spec -> {"pass", "fail", "not supported"} over the cases that ran."""
        out = {}
        for name in INVARIANTS:
            out[name] = {}
            for spec, run in self.runs.items():
                results = [i for r in run.cases for i in r.invariants if i.name == name]
                out[name][spec] = {"pass": sum(i.passed for i in results), "fail": sum(not i.passed for i in results),
                                   "not supported": sum(n.startswith(name + ":") for r in run.cases
                                                        for n in r.not_supported)}
        return out

    def to_json(self) -> dict:
        return {
            "suite": self.suite,
            "device": self.device,
            "backend": self.backend,
            "passed": self.passed,
            "impls": self.impls,
            "unavailable": self.unavailable,
            "audit_notes": self.audit_notes,
            "time_budget_s": self.time_budget_s,
            "not_run": self.not_run,
            "interrupted": self.interrupted,
            "wall_s": self.wall_s,
            "fingerprint": self.fingerprint,
            "groups": self.groups(),
            "invariants": self.invariants(),
            "bench": [row.to_json() for row in self.bench],
            "runs": {spec: run.to_json() for spec, run in self.runs.items()},
        }


def summarize(results: Sequence[CaseResult]) -> dict:
    """Status counts, invariants passed of those run, and the worst errors of o and final_state
    over some cases."""
    out = {"cases": len(results), **{s: sum(r.status == s for r in results) for s in STATUSES}}
    ran = {name: [i.passed for r in results for i in r.invariants if i.name == name] for name in INVARIANTS}
    out["invariants"] = {name: {"passed": sum(passed), "run": len(passed)} for name, passed in ran.items()}
    for tensor in TENSORS:
        checks = [(r.id, r.checks[tensor]) for r in results if tensor in r.checks]
        worst = max(checks, key=lambda c: c[1].rms_ratio, default=None)
        out[tensor] = None if worst is None else {
            "rms": worst[1].rms_ratio, "rms_case": worst[0], "tolerance": worst[1].tolerance["rms"],
            "max_abs": max(c.max_abs for _, c in checks)}
    return out


def _audit(adapter: Adapter, device: str) -> tuple[VariantAudit | None, str | None]:
    if adapter.variants is None:
        return None, ("n/a: no compiled Triton kernels found in the implementation's package "
                      "(Triton's interpreter compiles none)")
    try:
        return variant_audit(adapter, device), None
    except NotSupported as exc:
        return None, f"the audit's cases are not supported: {exc}"
    except Exception as exc:  # the audit's own calls failing is reported, the cases still run
        return None, f"the audit failed: {type(exc).__name__}: {exc}"


def compare_impls(adapters: Sequence[Adapter], cases: Sequence[Case], device: str, options: RunOptions,
                  suite: str = "custom", bench: bool = False, time_budget_s: float | None = None,
                  unavailable: dict[str, str] | None = None,
                  on_case: Callable[[str, CaseResult, int, int], None] | None = None) -> Comparison:
    """Run every adapter over `cases` (see the module notes for the order);
    `on_case(spec, result, index, total)` after each implementation's run of each case."""
    from gdn_verify.platform import fingerprint

    start = time.perf_counter()
    deadline = None if time_budget_s is None else start + time_budget_s
    fp = fingerprint(device)
    comparison = Comparison(suite=suite, device=device, backend=backend_of(device), fingerprint=fp,
                            impls=[{"spec": a.spec, "conventions": a.conventions()} for a in adapters],
                            runs={}, unavailable=dict(unavailable or {}), time_budget_s=time_budget_s)
    audits = {}
    for adapter in adapters:
        audits[adapter.spec], note = _audit(adapter, device) if options.audit else (None, "not asked")
        if note:
            comparison.audit_notes[adapter.spec] = note
    goldens = RunGoldens(None, fp)
    results: dict[str, list[CaseResult]] = {a.spec: [] for a in adapters}
    spent = {a.spec: 0.0 for a in adapters}
    done = 0  # cases every implementation finished
    try:
        if bench:
            run_bench(adapters, device, deadline, rows=comparison.bench)
        for case in cases:
            if deadline is not None and time.perf_counter() > deadline:
                break
            outcome = []
            for adapter in adapters:
                t = time.perf_counter()
                outcome.append(run_case(case, adapter, device, options, goldens)[0])
                spent[adapter.spec] += time.perf_counter() - t
            for adapter, result in zip(adapters, outcome):
                results[adapter.spec].append(result)
                if on_case is not None:
                    on_case(adapter.spec, result, done, len(cases))
            done += 1
    except KeyboardInterrupt:
        comparison.interrupted = True
    comparison.not_run = [c.id for c in cases[done:]]
    for adapter in adapters:
        comparison.runs[adapter.spec] = RunResult(
            suite=suite, impl=adapter.spec, device=device, backend=comparison.backend, fingerprint=fp,
            cases=results[adapter.spec], goldens=goldens.summary, variant_audit=audits[adapter.spec],
            wall_s=spent[adapter.spec])
    comparison.wall_s = time.perf_counter() - start
    return comparison
