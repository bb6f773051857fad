"""Adapters: any GDN implementation run on a case in the suite's conventions.

The suite's conventions are the input contract (docs/design.md, 'Input contract'): q, k
[B, T, H, K]; v [B, T, HV, V]; g (log-space decay) and beta [B, T, HV]; states [N, HV, K, V];
value head h reads key head h // (HV / H); varlen sequences travel as B = 1 plus cu_seqlens;
q and k are l2-normalized inside the call when asked. An `Adapter` declares where an
implementation differs, converts the inputs to its conventions and its outputs back:

* layout: "dense" [B, T, H, D], or "varlen" [T, H, D] (a dense batch of B > 1 sequences then
  travels as varlen, with cu_seqlens = 0, T, 2T, ...; the former names "batched" and "packed"
  are accepted);
* state_layout: "kv" [N, HV, K, V] or "vk" [N, HV, V, K];
* gate_space: "log" (g) or "alpha" (exp(g));
* head_map: "div" (key head h // (HV/H)) or "mod" (key head h % H): the value heads are
  reordered so that each meets the same key head as in the suite's convention;
* l2norm: "kernel" (the implementation's flag, named by `l2norm_arg`), "outside" (the
  harness normalizes q and k before the call) or "unsupported";
* lacks: arguments the implementation does not take (`OPTIONAL_ARGUMENTS`), and dtypes: the
  input dtypes it accepts. A case that needs something missing raises `NotSupported`; the
  runner reports it as "not supported", never as a pass and never as a failure;
* keyword_tensors: q, k, v, g, beta passed by keyword (when the positional order differs);
  cu_seqlens_dtype: the integer dtype it documents for cu_seqlens;
* design: its precision design (gdn_verify/designs.py): which quantities it stores rounded and
  how it rounds dot operands. One other than ours is judged against its emulated error instead
  of the tolerance table (tolerances.py), and a design whose state is narrower than the contract's
  final state (float32 arithmetic on float64 inputs) returns the final state in that dtype.

Calling an adapter guards the harness against the implementation: it gets copies of its
arguments, each compared bit for bit with the original after the call, and its outputs must
be what the contract promises (o [B, T, HV, V] in v's dtype, final_state [N, HV, K, V] in
float32, float64 in exact mode, both on the inputs' device). A breach raises
`ContractViolation`, which fails the case with what was broken.

Every conversion is a permutation, a reshape or an integer widening, so it is exact, with two
documented exceptions that round an input once: alpha = exp(g) is computed in float64 and
rounded to g's dtype, and "outside" l2norm is computed in float64 and rounds q and k to their
dtype (as a model that normalizes before such a call does). alpha's dtype is float32, or
float64 in exact mode (g's dtype promoted with q's: the gate dtypes the contract allows).

The vocabularies and conversions live in gdn_verify/conventions.py, the guard in
gdn_verify/call_guard.py, the built-in adapters in gdn_verify/impls.py.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable

import torch

from gdn_verify.call_guard import ContractViolation, PreparedCall, output_problems
from gdn_verify.cases import Case
from gdn_verify.contract import GATE_FLOOR, SUPPORTED_DTYPES
from gdn_verify.conventions import (CALL_DEFAULTS, CALL_FIELDS, CHOICES, CU_SEQLENS_DTYPES, LAYOUT_ALIASES,
                                    OPTIONAL_ARGUMENTS, TOKEN_TENSORS, alpha_of, gdn_args, l2_normalized,
                                    mod_head_order)
from gdn_verify.designs import PrecisionDesign


class NotSupported(Exception):
    """The implementation, as declared, cannot run this case: the message says what it lacks."""


# ----------------------------------------------------------------------------------------
# What a call needs
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Needs:
    """What one call asks of an implementation."""

    dtype: str
    gva: bool  # HV != H
    custom_scale: float | None  # a scale other than K ** -0.5
    l2norm: bool
    initial_state: bool
    sequences: int  # N
    varlen: bool  # cu_seqlens given
    below_gate_floor: bool  # some log gate under contract.GATE_FLOOR (the `extreme` regime)

    @classmethod
    def of_case(cls, case: Case) -> "_Needs":
        return cls(case.dtype, case.HV != case.H, _custom_scale(case.scale, case.K), case.l2norm,
                   case.init_state == "random", case.N, case.layout == "varlen", case.gate == "extreme")

    @classmethod
    def of_inputs(cls, case: Case, inputs: dict[str, torch.Tensor], scan_gates: bool) -> "_Needs":
        """scan_gates: look for gates under the floor (a reduction over g, and on a GPU a sync:
        only for an implementation that declares no floor)."""
        q, v, cu = inputs["q"], inputs["v"], inputs.get("cu_seqlens")
        floor = GATE_FLOOR["float64" if v.dtype == torch.float64 else "float32"]
        return cls(str(v.dtype).removeprefix("torch."), q.shape[2] != v.shape[2], _custom_scale(case.scale, q.shape[3]),
                   case.l2norm, inputs.get("initial_state") is not None,
                   q.shape[0] if cu is None else len(cu) - 1, cu is not None,
                   scan_gates and bool((inputs["g"] < floor).any()))


def _custom_scale(scale: float | None, K: int) -> float | None:
    return None if scale is None or scale == K ** -0.5 else scale


# ----------------------------------------------------------------------------------------
# The adapter
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Adapter:
    """An implementation under test and its conventions; called as adapter(case, inputs)."""

    spec: str
    fn: Callable
    # Our kernels allocate every output through gdn_verify.kernels.new_output, so they can be
    # poisoned; foreign code cannot.
    ours: bool = False
    # Stage intermediates (docs/design.md, 'Chunked form') of the same computation, for
    # diagnosis; our chunk kernel only.
    intermediates: Callable | None = None
    # Kernel name -> compiled variants so far, if known.
    variants: Callable[[], dict[str, int]] | None = None
    # Forgets the compiled variants `variants` counts, where the implementation may autotune:
    # the variant audit then settles every autotune key first and counts only what calls launch.
    forget_variants: Callable[[], None] | None = None
    layout: str = CALL_DEFAULTS["layout"]
    state_layout: str = CALL_DEFAULTS["state_layout"]
    gate_space: str = CALL_DEFAULTS["gate_space"]
    head_map: str = CALL_DEFAULTS["head_map"]
    l2norm: str = CALL_DEFAULTS["l2norm"]
    l2norm_arg: str = CALL_DEFAULTS["l2norm_arg"]
    lacks: frozenset[str] = CALL_DEFAULTS["lacks"]
    dtypes: tuple[str, ...] = SUPPORTED_DTYPES
    dtypes_note: str = ""  # why the others are left out, for the "not supported" reason
    # Whether log gates under contract.GATE_FLOOR are clamped as the contract says. Without
    # the floor, cases with such gates (the `extreme` regime: -1e3 .. -inf) are not supported.
    # Like dtypes, a domain and not a call convention: it is not part of the store identity.
    gate_floor: bool = True
    keyword_tensors: bool = CALL_DEFAULTS["keyword_tensors"]
    cu_seqlens_dtype: str | None = CALL_DEFAULTS["cu_seqlens_dtype"]
    notes: str = ""
    design: PrecisionDesign | None = None  # None: none declared (judged by the tolerance table)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layout", LAYOUT_ALIASES.get(self.layout, self.layout))
        object.__setattr__(self, "lacks", frozenset(self.lacks))
        object.__setattr__(self, "dtypes", tuple(self.dtypes))
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        unknown = sorted(self.lacks - set(OPTIONAL_ARGUMENTS))
        if unknown:
            raise ValueError(f"lacks: expected a subset of {OPTIONAL_ARGUMENTS}, got {unknown}")
        bad = [d for d in self.dtypes if d not in SUPPORTED_DTYPES]
        if not self.dtypes or bad:
            raise ValueError(f"dtypes: expected a non-empty subset of {SUPPORTED_DTYPES}, got {list(self.dtypes)}")
        if self.cu_seqlens_dtype not in (None, *CU_SEQLENS_DTYPES):
            raise ValueError(f"cu_seqlens_dtype: expected None or one of {tuple(CU_SEQLENS_DTYPES)}, "
                             f"got {self.cu_seqlens_dtype!r}")
        if self.l2norm == "kernel" and not self.l2norm_arg.isidentifier():
            raise ValueError(f"l2norm_arg: expected a keyword argument name, got {self.l2norm_arg!r}")
        if self.design is not None and not isinstance(self.design, PrecisionDesign):
            raise ValueError(f"design: expected a designs.PrecisionDesign, got {type(self.design).__name__}")

    @property
    def supports_poison(self) -> bool:
        return self.ours

    @property
    def calls_common_signature(self) -> bool:
        """The function is called exactly as the common GDN signature, with no conversion (so
        a standalone reproducer can call it the same way)."""
        return all(getattr(self, name) == default for name, default in CALL_DEFAULTS.items())

    def conventions(self) -> dict:
        """The declared conventions, for reports."""
        out = {name: getattr(self, name) for name in CALL_FIELDS if name != "lacks"}
        out["lacks"] = sorted(self.lacks)
        out["dtypes"] = list(self.dtypes)
        if self.dtypes_note:
            out["dtypes_note"] = self.dtypes_note
        if self.l2norm != "kernel":
            del out["l2norm_arg"]
        if self.notes:
            out["notes"] = self.notes
        if self.design is not None:
            out["design"] = f"{self.design.name} ({self.design.spec})"
        return out

    def unsupported(self, case: Case) -> str | None:
        """Why the case cannot run as declared, or None."""
        return self._why_not(_Needs.of_case(case))

    def _why_not(self, needs: _Needs) -> str | None:
        if "final_state" in self.lacks:
            return "needs the final state, which the suite checks in every case: the implementation returns none"
        if needs.dtype not in self.dtypes:
            why = f" ({self.dtypes_note})" if self.dtypes_note else ""
            return f"needs dtype {needs.dtype}: the implementation accepts {', '.join(self.dtypes)}{why}"
        if needs.gva and "gva" in self.lacks:
            return "needs HV != H (grouped value heads): not supported by the implementation"
        if needs.custom_scale is not None and "scale" in self.lacks:
            return f"needs scale {needs.custom_scale:g}: the implementation takes no scale (uses K ** -0.5)"
        if needs.l2norm and self.l2norm == "unsupported":
            return "needs l2norm of q and k: not supported by the implementation"
        if needs.below_gate_floor and not self.gate_floor:
            return ("needs log gates under the gate floor clamped (contract.GATE_FLOOR): the implementation "
                    "declares no gate floor")
        if needs.initial_state and "initial_state" in self.lacks:
            return "needs an initial state: the implementation takes no initial_state"
        if "cu_seqlens" in self.lacks and needs.sequences > 1 and (needs.varlen or self.layout == "varlen"):
            return f"needs {needs.sequences} packed sequences: the implementation takes no cu_seqlens"
        return None

    def __call__(self, case: Case, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(o, final_state) in the suite's conventions; raises NotSupported (before calling the
        implementation) when these inputs need something it lacks, and ContractViolation when
        the implementation wrote into its inputs or returned outputs the contract does not allow."""
        o, final_state = self.prepare(case, inputs).run_guarded(self.fn)
        problems = output_problems(inputs, o, final_state, self.design)
        if problems:
            raise ContractViolation(problems)
        return o, final_state

    def prepare(self, case: Case, inputs: dict[str, torch.Tensor]) -> PreparedCall:
        """The converted arguments of one call (what a benchmark times), after the support check."""
        reason = self._why_not(_Needs.of_inputs(case, inputs, scan_gates=not self.gate_floor))
        if reason is not None:
            raise NotSupported(reason)
        q, k, v, g, beta = gdn_args(inputs)
        h0, cu = inputs.get("initial_state"), inputs.get("cu_seqlens")
        B, T, H, HV = q.shape[0], q.shape[1], q.shape[2], v.shape[2]
        if cu is not None and len(cu) == 2 and "cu_seqlens" in self.lacks:
            cu = None  # one varlen sequence is a dense batch of one
        if case.l2norm and self.l2norm == "outside":
            q, k = l2_normalized(q), l2_normalized(k)
        if self.gate_space == "alpha":
            g = alpha_of(g, q.dtype)
        inverse = None
        if self.head_map == "mod" and HV != H:
            order = mod_head_order(H, HV, v.device)
            inverse = torch.argsort(order)
            v, g, beta = (x.index_select(2, order) for x in (v, g, beta))
            h0 = None if h0 is None else h0.index_select(1, order)
        if self.state_layout == "vk" and h0 is not None:
            h0 = h0.transpose(-1, -2).contiguous()
        if self.layout == "varlen":
            if B > 1:
                cu = torch.arange(0, (B + 1) * T, T, dtype=torch.int32, device=q.device)
            q, k, v, g, beta = (x.reshape(B * T, *x.shape[2:]) for x in (q, k, v, g, beta))
        if cu is not None and self.cu_seqlens_dtype is not None:
            cu = cu.to(CU_SEQLENS_DTYPES[self.cu_seqlens_dtype])

        kwargs: dict = {}
        if "scale" not in self.lacks:
            kwargs["scale"] = case.scale
        if "initial_state" not in self.lacks:
            kwargs["initial_state"] = h0
        kwargs["output_final_state"] = True
        if "cu_seqlens" not in self.lacks:
            kwargs["cu_seqlens"] = cu
        if self.l2norm == "kernel":
            kwargs[self.l2norm_arg] = case.l2norm
        tensors = dict(zip(TOKEN_TENSORS, (q, k, v, g, beta)))
        if self.keyword_tensors:
            args, kwargs = (), {**tensors, **kwargs}
        else:
            args = tuple(tensors.values())
        return PreparedCall(args, kwargs, functools.partial(self._restore, B=B, T=T, inverse=inverse))

    def _restore(self, result, B: int, T: int, inverse: torch.Tensor | None):
        if not (isinstance(result, (tuple, list)) and len(result) == 2):
            raise TypeError(f"{self.spec}: expected (o, final_state) from the implementation, got {type(result).__name__}")
        o, final_state = result
        for name, t in (("o", o), ("final_state", final_state)):
            if t is not None and not isinstance(t, torch.Tensor):
                raise ContractViolation([f"{name}: expected a torch.Tensor, got {type(t).__name__}"])
        if o is None:
            raise ContractViolation(["o: the implementation returned None"])
        if self.layout == "varlen":
            if o.ndim < 1 or o.shape[0] != B * T:
                raise ContractViolation([f"o: shape {tuple(o.shape)}, expected [T, HV, V] with T = {B * T} "
                                         "(declared layout varlen)"])
            o = o.reshape(B, T, *o.shape[1:])
        if final_state is not None and self.state_layout == "vk":
            final_state = final_state.transpose(-1, -2).contiguous()
        if inverse is not None:
            o = o.index_select(2, inverse)
            final_state = None if final_state is None else final_state.index_select(1, inverse)
        return o, final_state


def with_conventions(adapter: Adapter, **conventions) -> Adapter:
    """The adapter with some conventions declared otherwise (None values are left alone)."""
    changes = {name: value for name, value in conventions.items() if value is not None}
    if "lacks" in changes:  # declared missing arguments stay missing
        changes["lacks"] = adapter.lacks | frozenset(changes["lacks"])
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(Adapter)} - {"spec", "fn"})
    if unknown:
        raise ValueError(f"conventions: unknown {unknown}")
    return dataclasses.replace(adapter, **changes) if changes else adapter

