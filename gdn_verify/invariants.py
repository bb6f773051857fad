"""Invariants of an implementation, checked on a case's own inputs.

* determinism: a second run on the same inputs gives the same bits;
* batch invariance: one sequence run alone gives the same bits as inside the case's batch
  (for a case of one sequence: inside a packed batch with two filler sequences around it);
* split equivalence: the same sequence run as two calls chained through the final state
  agrees with the float64 reference within the case's tolerance;
* causality: other data at a sequence's tokens >= t changes no bit of its outputs before t,
  nor any bit of the other sequences' outputs (finite data: a NaN or Inf in a chunk reaches
  every output of that chunk through the chunk form's matrix products, 0 * NaN being NaN);
* fused-qkv-views: q, k and v given as strided views of one fused projection output
  [B, T, H*K + H*K + HV*V] (how vLLM splits its fused qkv tensor), holding the same values,
  give the same bits as the contiguous tensors;
* stage diagnosis (chunk kernel only, after a failure): the kernel's stage intermediates
  against the chunked reference's, in the order of docs/design.md, 'Chunked form'; the first
  stage beyond the case's tolerance is named.

Bitwise comparisons use integer views (`bitwise.bit_diff`); the tolerance checks reuse
`compare.compare_tensor`, with the sequence as a case of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gdn_verify.bitwise import bit_diff
from gdn_verify.cases import Case
from gdn_verify.compare import TENSORS, compare_tensor, design_to_judge, emulate, rms_ratio, tolerance
from gdn_verify.conventions import gdn_args, gdn_kwargs
from gdn_verify.adapters import Adapter
from gdn_verify.inputs import make_inputs

INVARIANTS = ("determinism", "batch-invariance", "split-equivalence", "causality", "fused-qkv-views")
STAGES = ("g_cum", "A", "Tm", "W", "U", "h", "v_new", "o", "final_state")
# Filler sequences around a lone sequence when the case has no other: a partial chunk before
# it (so it starts mid-block) and a short one after.
FILLER_LENS = (37, 5)


@dataclass
class InvariantResult:
    name: str
    passed: bool
    detail: str
    # Per tensor: BitDiff.to_json() (bitwise invariants) or TensorCheck.to_json() (split).
    tensors: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "passed": self.passed, "detail": self.detail, "tensors": self.tensors}


# ----------------------------------------------------------------------------------------
# Sequences cut out of a case's inputs and packed again
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SequenceInputs:
    """One sequence's inputs: token tensors [L, heads, dim], state [HV, K, V] or None."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g: torch.Tensor
    beta: torch.Tensor
    state: torch.Tensor | None

    @property
    def length(self) -> int:
        return self.q.shape[0]


_TOKEN_TENSORS = ("q", "k", "v", "g", "beta")


def token_range(case: Case, n: int) -> tuple[int, int, int]:
    """(batch row, first token, end token) of sequence n in the case's tensors."""
    if case.layout == "dense":
        return n, 0, case.T
    return 0, case.cu_seqlens[n], case.cu_seqlens[n + 1]


def sequence(case: Case, inputs: dict[str, torch.Tensor], n: int) -> SequenceInputs:
    b, s, e = token_range(case, n)
    state = inputs.get("initial_state")
    return SequenceInputs(*(inputs[name][b, s:e] for name in _TOKEN_TENSORS),
                    state=None if state is None else state[n])


def sequence_output(case: Case, outputs: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Sequence n's o [1, L, HV, V] and final_state [1, HV, K, V] out of the case's outputs."""
    b, s, e = token_range(case, n)
    return {"o": outputs["o"][b:b + 1, s:e], "final_state": outputs["final_state"][n:n + 1]}


def pack(seqs: list[SequenceInputs], layout: str) -> dict[str, torch.Tensor]:
    """Inputs of a batch of these sequences: dense (equal lengths, stacked) or varlen (packed)."""
    inputs = {}
    for name in _TOKEN_TENSORS:
        parts = [getattr(s, name) for s in seqs]
        inputs[name] = torch.stack(parts) if layout == "dense" else torch.cat(parts)[None]
    if seqs[0].state is not None:
        inputs["initial_state"] = torch.stack([s.state for s in seqs])
    if layout == "varlen":
        lens = torch.tensor([0] + [s.length for s in seqs], dtype=torch.int32)
        inputs["cu_seqlens"] = torch.cumsum(lens, 0, dtype=torch.int32).to(seqs[0].q.device)
    return inputs


def subject_index(case: Case) -> int:
    """The sequence the invariants follow: the longest (the first of equals; dense: the last
    row, so a batch row other than 0 is checked)."""
    if case.layout == "dense":
        return case.N - 1
    return max(range(case.N), key=lambda n: (case.seq_lens[n], -n))


def _run(impl: Adapter, case: Case, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    o, final_state = impl(case, inputs)
    return {"o": o, "final_state": final_state}


def _bitwise(name: str, got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> InvariantResult:
    diffs = {t: bit_diff(got[t], expected[t]) for t in TENSORS}
    changed = [f"{t}: {d.summary()}" for t, d in diffs.items() if not d.equal]
    return InvariantResult(name, not changed, "; ".join(changed) if changed else f"{what}: bitwise equal",
                           {t: d.to_json() for t, d in diffs.items()})


# ----------------------------------------------------------------------------------------
# The invariants
# ----------------------------------------------------------------------------------------

def determinism(impl: Adapter, case: Case, inputs: dict[str, torch.Tensor],
                outputs: dict[str, torch.Tensor]) -> InvariantResult:
    return _bitwise("determinism", _run(impl, case, inputs), outputs, "second run")


def _fillers(case: Case, device) -> list[SequenceInputs]:
    """Two sequences of other data with the case's heads, dims and regimes."""
    other = case.with_(layout="varlen", seq_lens=FILLER_LENS)
    inputs = {name: t.to(device) for name, t in make_inputs(other).items()}
    return [sequence(other, inputs, n) for n in range(other.N)]


def batch_invariance(impl: Adapter, case: Case, inputs: dict[str, torch.Tensor],
                     outputs: dict[str, torch.Tensor]) -> InvariantResult:
    n = subject_index(case)
    subject = sequence(case, inputs, n)
    in_batch = sequence_output(case, outputs, n)
    if case.N > 1:
        # The case's batch is the packed run; the sequence alone is the new one.
        alone = _run(impl, case, pack([subject], case.layout))
        return _bitwise("batch-invariance", alone, in_batch, f"sequence {n} alone vs in the batch")
    before, after = _fillers(case, subject.q.device)
    packed = _run(impl, case, pack([before, subject, after], "varlen"))
    start = before.length
    in_packed = {"o": packed["o"][:, start:start + subject.length], "final_state": packed["final_state"][1:2]}
    return _bitwise("batch-invariance", in_packed, in_batch,
                    f"the sequence packed between sequences of {FILLER_LENS} tokens vs alone")


def split_point(length: int) -> int:
    """Where to cut a sequence in two: mid-sequence, so both calls get tokens and, for most
    lengths, the cut falls inside a chunk."""
    return (length + 1) // 2


def split_equivalence(impl: Adapter, case: Case, inputs: dict[str, torch.Tensor],
                      reference: dict[str, torch.Tensor], backend: str) -> InvariantResult:
    n = subject_index(case)
    subject = sequence(case, inputs, n)
    L = subject.length
    if L < 2:
        return InvariantResult("split-equivalence", True, f"not applicable: sequence {n} has {L} token(s)")
    p = split_point(L)

    def chain(run) -> dict[str, torch.Tensor]:
        first = SequenceInputs(*(getattr(subject, name)[:p] for name in _TOKEN_TENSORS), state=subject.state)
        head = run(case, pack([first], case.layout))
        second = SequenceInputs(*(getattr(subject, name)[p:] for name in _TOKEN_TENSORS),
                                state=head["final_state"][0])
        tail = run(case, pack([second], case.layout))
        return {"o": torch.cat([head["o"], tail["o"]], dim=1), "final_state": tail["final_state"]}

    chained = chain(lambda c, i: _run(impl, c, i))
    # An implementation judged by its precision design: the same chain, emulated (compare.emulate).
    design = design_to_judge(impl)
    emulated = None if design is None else chain(lambda c, i: emulate(design, c, i))
    expected = sequence_output(case, reference, n)
    alone = case.with_(layout="dense", seq_lens=(L,))
    checks = {t: compare_tensor(t, chained[t], expected[t], alone, backend, poisoned=impl.supports_poison,
                                design=design, emulated=None if emulated is None else emulated[t])
              for t in TENSORS}
    failures = [f for c in checks.values() for f in c.failures]
    what = f"sequence {n} as calls of {p} + {L - p} tokens chained through the final state"
    return InvariantResult("split-equivalence", not failures, "; ".join(failures) or f"{what}: within tolerance",
                           {t: c.to_json() for t, c in checks.items()})


def causality(impl: Adapter, case: Case, inputs: dict[str, torch.Tensor],
              outputs: dict[str, torch.Tensor]) -> InvariantResult:
    n = subject_index(case)
    b, s, e = token_range(case, n)
    L = e - s
    if L < 2:
        return InvariantResult("causality", True, f"not applicable: sequence {n} has {L} token(s)")
    t = split_point(L)
    # Other tokens from the same case drawn with another seed: the same dtypes, ranges and regimes.
    other = make_inputs(case.with_(seed=case.seed + 1))
    changed = dict(inputs)
    for name in _TOKEN_TENSORS:
        changed[name] = inputs[name].clone()
        changed[name][b, s + t:e] = other[name][b, s + t:e].to(inputs[name].device)
    got = _run(impl, case, changed)
    # Everything but sequence n's outputs from token t on, and its final state.
    keep_o = torch.ones(outputs["o"].shape[:2], dtype=torch.bool, device=outputs["o"].device)
    keep_o[b, s + t:e] = False
    keep_state = torch.ones(outputs["final_state"].shape[0], dtype=torch.bool, device=outputs["o"].device)
    keep_state[n] = False
    diffs = {"o": bit_diff(got["o"][keep_o], outputs["o"][keep_o]),
             "final_state": bit_diff(got["final_state"][keep_state], outputs["final_state"][keep_state])}
    changed_text = [f"{name}: {d.summary()}" for name, d in diffs.items() if not d.equal]
    what = (f"sequence {n}'s tokens {t}..{L - 1} replaced: its outputs before token {t} and the other "
            "sequences' outputs")
    return InvariantResult("causality", not changed_text,
                           "; ".join(changed_text) + f" ({what} changed)" if changed_text else f"{what}: bitwise equal",
                           {name: d.to_json() for name, d in diffs.items()})


def fused_qkv(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inputs with q, k and v replaced by views of one fused tensor [B, T, H*K + H*K + HV*V]
    on their device (same values, same dtype): each view keeps the fused row stride, so the
    token and batch strides are those of the fused tensor and k and v start at an offset into
    its storage. g, beta, the state and cu_seqlens are passed as they are."""
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    fused = torch.cat([q.reshape(B, T, H * K), k.reshape(B, T, H * K), v.reshape(B, T, HV * V)], dim=-1)
    q_view, k_view, v_view = torch.split(fused, [H * K, H * K, HV * V], dim=-1)
    return {**inputs, "q": q_view.unflatten(-1, (H, K)), "k": k_view.unflatten(-1, (H, K)),
            "v": v_view.unflatten(-1, (HV, V))}


def fused_qkv_views(impl: Adapter, case: Case, inputs: dict[str, torch.Tensor],
                    outputs: dict[str, torch.Tensor]) -> InvariantResult:
    return _bitwise("fused-qkv-views", _run(impl, case, fused_qkv(inputs)), outputs,
                    "q, k, v as views of one fused qkv tensor vs contiguous")


def check_invariants(names, impl: Adapter, case: Case, inputs: dict[str, torch.Tensor],
                     outputs: dict[str, torch.Tensor], reference: dict[str, torch.Tensor] | None,
                     backend: str) -> list[InvariantResult]:
    results = []
    for name in names:
        if name == "determinism":
            results.append(determinism(impl, case, inputs, outputs))
        elif name == "batch-invariance":
            results.append(batch_invariance(impl, case, inputs, outputs))
        elif name == "split-equivalence" and reference is not None:
            results.append(split_equivalence(impl, case, inputs, reference, backend))
        elif name == "causality":
            results.append(causality(impl, case, inputs, outputs))
        elif name == "fused-qkv-views":
            results.append(fused_qkv_views(impl, case, inputs, outputs))
    return results


# ----------------------------------------------------------------------------------------
# Stage diagnosis
# ----------------------------------------------------------------------------------------

def _stage(intermediates, name: str):
    if isinstance(intermediates, dict):
        return intermediates.get(name)
    return getattr(intermediates, name, None)


def diagnose_stages(impl: Adapter, case: Case, inputs: dict[str, torch.Tensor], backend: str) -> dict | None:
    """Stage-by-stage RMS ratios of the kernel's intermediates against the chunked reference's.

    Returns {"stages": {name: ratio}, "first_divergent": name or None, "threshold": ...},
    or None when the implementation exposes no intermediates.
    """
    if impl.intermediates is None:
        return None
    from gdn_verify.reference import chunked_gated_delta_rule

    ours = impl.intermediates(*gdn_args(inputs), **gdn_kwargs(case, inputs), use_qk_l2norm_in_kernel=case.l2norm)
    ref = chunked_gated_delta_rule(*gdn_args(inputs), **gdn_kwargs(case, inputs), l2norm=case.l2norm)
    ref = ref[-1] if isinstance(ref, tuple) else ref
    # An intermediate is float32 even for half inputs, so anything past the output's own
    # tolerance is a stage gone wrong, not rounding.
    threshold = tolerance("o", case.dtype, backend).rms
    ratios: dict[str, float] = {}
    first = None
    for name in STAGES:
        mine, theirs = _stage(ours, name), _stage(ref, name)
        if mine is None or theirs is None:
            continue
        if tuple(mine.shape) != tuple(theirs.shape):
            ratios[name] = float("inf")
        else:
            ratios[name] = rms_ratio(mine.cpu(), theirs.cpu())
        if first is None and not ratios[name] <= threshold:
            first = name
    return {"stages": ratios, "first_divergent": first, "threshold": threshold}
