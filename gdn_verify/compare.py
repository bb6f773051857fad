"""Comparison of an implementation's outputs with the float64 reference.

Per tensor: the RMS error ratio ||a - r|| / ||r|| and the max abs error over the whole tensor,
and the same ratio over the worst slice (o: per sequence, value head and 64-token chunk;
final_state: per sequence and value head), so one broken chunk among hundreds cannot hide in
the global ratio. A slice's error is measured against its own reference norm, floored at the
norm it would have if the reference's energy were spread evenly: a slice where the reference
has all but vanished (strong decay of a zero-input state) is then judged at the tensor's
scale rather than against a denominator of 1e-300. The tensor's norm itself is floored at
the output dtype's smallest normal number per element. Non-finite values are counted, and outputs
still holding the poison pattern (never written by the kernel) are counted apart from NaNs
the kernel computed.

For o in float16 / bfloat16, rounding the exact result into the dtype alone costs about 2.2e-4 /
1.7e-3, more than a kernel bug of TF32 grade (about 5e-4) adds. So o is also judged by its error
beyond rounding: sqrt(max(err^2 - err_round^2, 0)) over the same denominator, err_round being
the error of the reference rounded into o's dtype (rounding and arithmetic errors are
uncorrelated and add in quadrature), globally and over the worst slice.

Tolerances live in `tolerances.TOLERANCES`, one table keyed by (tensor, dtype, backend). No environment
variable changes them. They hold our kernels, and any implementation that declares no design or
ours.

An implementation that declares another precision design (gdn_verify/designs.py) is judged
against that design instead: the float64 chunked reference rounded as the design stores and
multiplies (`emulate`) gives the error the design should have, and the implementation passes
when its error is within DESIGN_FACTOR times that error plus DESIGN_FLOOR, globally and on every
slice (each slice against its own emulated error, so a broken chunk cannot hide behind a noisy
one).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from gdn_verify.cases import Case
from gdn_verify.contract import CHUNK_SIZE
from gdn_verify.designs import GDN, PrecisionDesign
from gdn_verify.platform import CUDA_BACKEND, INTERPRETER_BACKEND
from gdn_verify.tolerances import BACKENDS, DESIGN_FACTOR, DESIGN_FLOOR, TOLERANCES, Tolerance

TENSORS = ("o", "final_state")



def design_to_judge(impl) -> PrecisionDesign | None:
    """The design an implementation is judged by, or None for the strict tolerance table: our
    kernels, and implementations declaring no design or ours, keep the table."""
    design = getattr(impl, "design", None)
    if design is None or getattr(impl, "ours", False) or GDN.same_rules(design):
        return None
    return design


def emulate(design: PrecisionDesign, case: Case, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The outputs an implementation of `design` should give on `inputs` (the suite's
    conventions): the chunked reference rounded as the design, o cast to v's dtype and the final
    state to the design's final-state dtype."""
    from gdn_verify.conventions import gdn_args, gdn_kwargs
    from gdn_verify.reference import chunked_gated_delta_rule

    state = inputs.get("initial_state")
    if state is not None:  # a chained call's state in the design's dtype: widened exactly for validation
        inputs = dict(inputs, initial_state=state.to(torch.float64 if inputs["v"].dtype == torch.float64
                                                     else torch.float32))
    o, final_state, _ = chunked_gated_delta_rule(*gdn_args(inputs), **gdn_kwargs(case, inputs),
                                                 l2norm=case.l2norm, design=design)
    v = inputs["v"]
    return {"o": o.to(v.dtype), "final_state": final_state.to(design.final_state_dtype(v.dtype))}


def tolerance(tensor: str, dtype: str, backend: str) -> Tolerance:
    try:
        return TOLERANCES[(tensor, dtype, backend)]
    except KeyError:
        raise ValueError(f"no tolerance for tensor={tensor!r} dtype={dtype!r} backend={backend!r}; "
                         f"backends are {BACKENDS}") from None


def backend_of(device: str) -> str:
    return CUDA_BACKEND if str(device).startswith("cuda") else INTERPRETER_BACKEND


# ----------------------------------------------------------------------------------------
# Slices
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Slice:
    sequence: int
    chunk: int | None  # None for final_state (one slice per sequence and head)
    start: int  # token range [start, end) along o's T axis (packed position when varlen)
    end: int


def chunk_slices(case: Case) -> tuple[list[Slice], torch.Tensor]:
    """The 64-token chunks of every sequence, and the chunk number of each flat token of o
    ([B*T], in o.reshape(B*T, ...) order). Chunks never cross a sequence."""
    slices: list[Slice] = []
    owner: list[int] = []
    starts = [0] * case.B if case.layout == "dense" else list(case.cu_seqlens[:-1])
    for n, (start, length) in enumerate(zip(starts, case.seq_lens)):
        for c in range(math.ceil(length / CHUNK_SIZE)):
            lo = start + c * CHUNK_SIZE
            hi = min(start + length, lo + CHUNK_SIZE)
            owner.extend([len(slices)] * (hi - lo))
            slices.append(Slice(n, c, lo, hi))
    return slices, torch.tensor(owner, dtype=torch.int64)


# ----------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------

def rms_ratio(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """||a - r|| / ||r|| in float64; 0 when both are zero, inf when only r is (or a is not finite)."""
    a, r = actual.double(), reference.double()
    err = torch.linalg.vector_norm(a - r).item() if a.numel() else 0.0
    ref = torch.linalg.vector_norm(r).item() if r.numel() else 0.0
    return _ratio(err, ref)


def _ratio(err: float, ref: float) -> float:
    if not math.isfinite(err):
        return math.inf
    if ref == 0.0:
        return 0.0 if err == 0.0 else math.inf
    return err / ref


def _first_index(mask: torch.Tensor) -> list[int] | None:
    hits = mask.nonzero()
    return [int(i) for i in hits[0]] if len(hits) else None


@dataclass
class TensorCheck:
    """How one output tensor compares with the reference, and whether that passes."""

    tensor: str
    tolerance: dict  # {"key": [tensor, dtype, backend], "rms": ..., "slice": ..., "excess": [global, slice] | None}
    rms_ratio: float
    max_abs: float
    ref_max_abs: float
    worst_slice: dict | None  # {"sequence", "head", "chunk", "tokens": [start, end], "ratio"}
    # Error beyond rounding into the output dtype (None where tolerance has no excess bound):
    # global ratio, and the worst slice by that measure (same keys as worst_slice).
    excess_ratio: float | None
    worst_excess_slice: dict | None
    n_nan: int  # computed NaNs (poisoned elements excluded)
    n_inf: int
    first_nonfinite: list[int] | None
    n_unwritten: int | None  # None when the implementation cannot be poisoned
    first_unwritten: list[int] | None
    failures: list[str] = field(default_factory=list)
    # Judged by a declared design: {"name", "spec", "factor", "floor", "emulated_rms",
    # "emulated_slice" (at worst_slice), "actual_over_emulated"}; None under the tolerance table.
    design: dict | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def _slice_ratios(err2: torch.Tensor, ref2: torch.Tensor, owner: torch.Tensor, slices: list[Slice],
                  per_element: int, ref_total2: float, n_total: int) -> torch.Tensor:
    """[slices, HV] error ratio of every slice and head. err2, ref2: [rows, HV] sums of squares
    per row (token or sequence) and head; owner maps each row to its slice."""
    n_heads = err2.shape[1]
    e = torch.zeros(len(slices), n_heads, dtype=torch.float64).index_add_(0, owner, err2)
    r = torch.zeros(len(slices), n_heads, dtype=torch.float64).index_add_(0, owner, ref2)
    rows = torch.bincount(owner, minlength=len(slices)).to(torch.float64)[:, None]
    floor2 = ref_total2 * rows * per_element / n_total
    denom = torch.maximum(r, floor2).sqrt()
    # err2 may be an excess (error minus rounding error, squared), negative per slice.
    err = e.clamp_min(0).sqrt()
    ratio = torch.where(denom > 0, err / denom, torch.where(err > 0, math.inf, 0.0))
    return torch.nan_to_num(ratio, nan=math.inf)


def _slice_at(slices: list[Slice], ratio: torch.Tensor, flat: int) -> dict:
    s, h = divmod(flat, ratio.shape[1])
    where = slices[s]
    return {"sequence": where.sequence, "head": h, "chunk": where.chunk, "tokens": [where.start, where.end],
            "ratio": float(ratio[s, h])}


def _worst_slice(err2: torch.Tensor, ref2: torch.Tensor, owner: torch.Tensor, slices: list[Slice],
                 per_element: int, ref_total2: float, n_total: int) -> dict | None:
    """The slice and head of the largest `_slice_ratios`."""
    if not slices or n_total == 0:
        return None
    ratio = _slice_ratios(err2, ref2, owner, slices, per_element, ref_total2, n_total)
    return _slice_at(slices, ratio, int(ratio.argmax()))


def compare_tensor(tensor: str, actual: torch.Tensor, reference: torch.Tensor, case: Case, backend: str,
                   poisoned: bool, design: PrecisionDesign | None = None,
                   emulated: torch.Tensor | None = None) -> TensorCheck:
    """Compare `actual` (any float dtype) with the float64 `reference` of the same shape.

    tensor is "o" ([B, T, HV, V]) or "final_state" ([N, HV, K, V]); poisoned says the
    outputs were allocated poisoned, so still-poisoned elements are reported unwritten. With a
    design, `emulated` is that design's output (`emulate`) and sets the bounds instead of
    TOLERANCES.
    """
    tol = tolerance(tensor, case.dtype, backend) if design is None else None
    if tuple(actual.shape) != tuple(reference.shape):
        raise ValueError(f"{tensor}: implementation returned shape {tuple(actual.shape)}, "
                         f"reference has {tuple(reference.shape)}")
    actual, reference = actual.detach().cpu(), reference.detach().cpu()
    unwritten = None
    if poisoned:
        from gdn_verify.kernels import unwritten_mask

        unwritten = unwritten_mask(actual)
    a, r = actual.double(), reference.double()
    nan = a.isnan() if unwritten is None else a.isnan() & ~unwritten
    inf = a.isinf()
    diff = a - r
    max_abs = diff.abs().max().item() if diff.numel() else 0.0
    ref_max_abs = r.abs().max().item() if r.numel() else 0.0

    slices, owner, row_shape = _rows(tensor, case)
    err2 = (diff.reshape(row_shape) ** 2).sum(-1)
    ref2 = (r.reshape(row_shape) ** 2).sum(-1)
    ref_total2 = _ref_total2(ref2, actual.dtype, r.numel())
    rms = _ratio(math.sqrt(err2.sum().item()), math.sqrt(ref_total2))
    judged = None
    if design is not None:
        tol, worst, judged = _design_bounds(design, emulated, r, row_shape, err2, ref2, owner, slices, ref_total2,
                                            rms, case.dtype)
    else:
        worst = _worst_slice(err2, ref2, owner, slices, row_shape[2], ref_total2, r.numel())
    excess_ratio = worst_excess = None
    if tol.excess is not None:
        # r.to(dtype) is round to nearest even; where r is subnormal or zero in that dtype both
        # errors are absolute amounts over the same floored norm, so their difference stays small.
        round2 = ((reference.to(actual.dtype).double() - r).reshape(row_shape) ** 2).sum(-1)
        excess2 = err2 - round2
        # max() keeps a NaN (a non-finite output), which _ratio reports as inf.
        excess_ratio = _ratio(math.sqrt(max(excess2.sum().item(), 0.0)), math.sqrt(ref_total2))
        worst_excess = _worst_slice(excess2, ref2, owner, slices, row_shape[2], ref_total2, r.numel())
    check = TensorCheck(
        tensor=tensor,
        tolerance={"key": [tensor, case.dtype, backend], "rms": tol.rms, "slice": tol.slice,
                   "excess": None if tol.excess is None else list(tol.excess),
                   **({} if design is None else {"design": design.name})},
        rms_ratio=rms,
        max_abs=max_abs if math.isfinite(max_abs) else math.inf,
        ref_max_abs=ref_max_abs,
        worst_slice=worst,
        excess_ratio=excess_ratio,
        worst_excess_slice=worst_excess,
        n_nan=int(nan.sum()),
        n_inf=int(inf.sum()),
        first_nonfinite=_first_index(nan | inf),
        n_unwritten=None if unwritten is None else int(unwritten.sum()),
        first_unwritten=None if unwritten is None else _first_index(unwritten),
        design=judged,
    )
    check.failures = _failures(check, tol)
    return check


def _design_bounds(design: PrecisionDesign, emulated: torch.Tensor | None, r: torch.Tensor, row_shape: tuple,
                   err2: torch.Tensor, ref2: torch.Tensor, owner: torch.Tensor, slices: list[Slice],
                   ref_total2: float, rms: float, dtype: str) -> tuple[Tolerance, dict | None, dict]:
    """The bounds of one tensor under `design`: (Tolerance with the global bound and the bound
    of the reported slice, that slice: the one nearest its bound, the check's design record)."""
    if emulated is None:
        raise ValueError(f"judging by design {design.name!r} needs the design's emulated outputs")
    floor = DESIGN_FLOOR[dtype]
    emul2 = ((emulated.detach().cpu().double() - r).reshape(row_shape) ** 2).sum(-1)
    emul_rms = _ratio(math.sqrt(emul2.sum().item()), math.sqrt(ref_total2))
    worst, emul_slice, slice_bound = None, None, math.inf
    if slices and r.numel():
        args = (owner, slices, row_shape[2], ref_total2, r.numel())
        actual = _slice_ratios(err2, ref2, *args)
        emul = _slice_ratios(emul2, ref2, *args)
        bound = DESIGN_FACTOR * emul + floor
        flat = int(torch.nan_to_num(actual / bound, nan=math.inf).argmax())
        worst = _slice_at(slices, actual, flat)
        emul_slice = float(emul.flatten()[flat])
        slice_bound = float(bound.flatten()[flat])
    record = {"name": design.name, "spec": design.spec, "factor": DESIGN_FACTOR, "floor": floor,
              "emulated_rms": emul_rms, "emulated_slice": emul_slice,
              "actual_over_emulated": _ratio(rms, emul_rms) if math.isfinite(rms) else math.inf}
    return Tolerance(rms=DESIGN_FACTOR * emul_rms + floor, slice=slice_bound), worst, record


def _rows(tensor: str, case: Case) -> tuple[list[Slice], torch.Tensor, tuple[int, int, int]]:
    """(slices, the slice of each row, row shape): rows are tokens (o) or sequences
    (final_state), each [HV, elements per head]."""
    if tensor == "o":
        slices, owner = chunk_slices(case)
        return slices, owner, (case.B * case.T, case.HV, case.V)
    slices = [Slice(n, None, *_seq_range(case, n)) for n in range(case.N)]
    return slices, torch.arange(case.N), (case.N, case.HV, case.K * case.V)


def _ref_total2(ref2: torch.Tensor, dtype: torch.dtype, n: int) -> float:
    # A reference below the output dtype's smallest normal number cannot be matched relatively
    # (a state decayed by exp(-200) is 1e-90: float32 holds 0 there), so the denominator never
    # drops below that number per element.
    return max(ref2.sum().item(), torch.finfo(dtype).tiny ** 2 * n)


def error_ratios(tensor: str, case: Case, x: torch.Tensor, reference: torch.Tensor) -> tuple[float, list[Slice], torch.Tensor]:
    """x's global RMS error ratio against the float64 reference and its [slices, HV] slice
    ratios, measured as `check_tensor` measures an implementation's (x's dtype sets the floor)."""
    slices, owner, row_shape = _rows(tensor, case)
    r = reference.detach().cpu().double()
    err2 = ((x.detach().cpu().double() - r).reshape(row_shape) ** 2).sum(-1)
    ref2 = (r.reshape(row_shape) ** 2).sum(-1)
    ref_total2 = _ref_total2(ref2, x.dtype, r.numel())
    rms = _ratio(math.sqrt(err2.sum().item()), math.sqrt(ref_total2))
    return rms, slices, _slice_ratios(err2, ref2, owner, slices, row_shape[2], ref_total2, r.numel())


def slice_index(slices: list[Slice], where: dict) -> int:
    """The row of `error_ratios`' slice ratios that a reported worst slice names."""
    for i, s in enumerate(slices):
        if s.sequence == where["sequence"] and s.chunk == where.get("chunk") and [s.start, s.end] == list(where["tokens"]):
            return i
    raise ValueError(f"no slice {where}")


def _seq_range(case: Case, n: int) -> tuple[int, int]:
    if case.layout == "dense":
        return 0, case.T
    return case.cu_seqlens[n], case.cu_seqlens[n + 1]


def _failures(c: TensorCheck, tol: Tolerance) -> list[str]:
    out = []
    why = "" if c.design is None else (f" (design {c.design['name']}: {c.design['factor']:g} x emulated "
                                       f"{{emul:.3g}} + {c.design['floor']:g})")
    if c.n_unwritten:
        out.append(f"{c.tensor}: {c.n_unwritten} elements never written (first at {c.first_unwritten})")
    if c.n_nan or c.n_inf:
        out.append(f"{c.tensor}: {c.n_nan} NaN and {c.n_inf} Inf (first at {c.first_nonfinite})")
    if not c.rms_ratio <= tol.rms:
        emul = c.design["emulated_rms"] if c.design else 0.0
        out.append(f"{c.tensor}: RMS error ratio {c.rms_ratio:.3g} > {tol.rms:.3g}" + why.format(emul=emul))
    if c.worst_slice is not None and not c.worst_slice["ratio"] <= tol.slice:
        w = c.worst_slice
        emul = c.design["emulated_slice"] if c.design else 0.0
        out.append(f"{c.tensor}: worst slice ratio {w['ratio']:.3g} > {tol.slice:.3g} at {_slice_label(w)}"
                   + why.format(emul=emul))
    if tol.excess is not None:
        bound, slice_bound = tol.excess
        if not c.excess_ratio <= bound:
            out.append(f"{c.tensor}: RMS error ratio beyond rounding {c.excess_ratio:.3g} > {bound:.3g}")
        w = c.worst_excess_slice
        if w is not None and not w["ratio"] <= slice_bound:
            out.append(f"{c.tensor}: worst slice ratio beyond rounding {w['ratio']:.3g} > {slice_bound:.3g} "
                       f"at {_slice_label(w)}")
    return out


def _slice_label(w: dict) -> str:
    where = f"sequence {w['sequence']}, head {w['head']}"
    if w["chunk"] is not None:
        where += f", chunk {w['chunk']} (tokens {w['tokens'][0]}..{w['tokens'][1] - 1})"
    return where


def compare_outputs(outputs: dict[str, torch.Tensor | None], reference: dict[str, torch.Tensor], case: Case,
                    backend: str, poisoned: bool, design: PrecisionDesign | None = None,
                    emulated: dict[str, torch.Tensor] | None = None) -> dict[str, TensorCheck]:
    """compare_tensor for o and final_state; a missing final_state is itself a failure."""
    checks = {}
    for name in TENSORS:
        if outputs.get(name) is None:
            raise ValueError(f"{name}: the implementation returned None (output_final_state=True was passed)")
        checks[name] = compare_tensor(name, outputs[name], reference[name], case, backend, poisoned, design,
                                      None if emulated is None else emulated[name])
    return checks
