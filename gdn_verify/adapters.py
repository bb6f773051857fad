"""Adapters: any GDN implementation run on a case in the suite's conventions.

The suite's conventions are the input contract (docs/design.md, 'Input contract'): q, k
[B, T, H, K]; v [B, T, HV, V]; g (log-space decay) and beta [B, T, HV]; states [N, HV, K, V];
value head h reads key head h // (HV / H); packed sequences travel as B = 1 plus cu_seqlens;
q and k are l2-normalized inside the call when asked. An `Adapter` declares where an
implementation differs, converts the inputs to its conventions and its outputs back:

* layout: "batched" [B, T, H, D], or "packed" [T, H, D] (a dense batch of B > 1 sequences then
  travels packed, with cu_seqlens = 0, T, 2T, ...);
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
  of the tolerance table (compare.py), and a design whose state is narrower than the contract's
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

Built-in adapters (`BUILTINS`): ours ("gdn", "gdn-recurrent") and flash-linear-attention's
("fla-chunk", "fla-recurrent", package fla-core, imported only when resolved).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch

from gdn_verify.cases import Case
from gdn_verify.contract import L2NORM_EPS, SUPPORTED_DTYPES
from gdn_verify.designs import FLA, GDN, PrecisionDesign

LAYOUTS = ("batched", "packed")
STATE_LAYOUTS = ("kv", "vk")
GATE_SPACES = ("log", "alpha")
HEAD_MAPS = ("div", "mod")
L2NORM_MODES = ("kernel", "outside", "unsupported")
OPTIONAL_ARGUMENTS = ("initial_state", "final_state", "cu_seqlens", "scale", "gva")
CU_SEQLENS_DTYPES = {"int32": torch.int32, "int64": torch.int64}
TOKEN_TENSORS = ("q", "k", "v", "g", "beta")

KERNELS_MODULE = "gdn_verify.kernels"
OURS = {"gdn": "chunk_gated_delta_rule", "gdn-recurrent": "fused_recurrent_gated_delta_rule"}

FLA_MODULE = "fla.ops.gated_delta_rule"
FLA_INSTALL = "pip install 'gdn-verify[fla]' (or: pip install fla-core)"


class ImplError(ValueError):
    """The --impl spec cannot be resolved to a callable."""


class ImplUnavailable(ImplError):
    """A built-in implementation cannot run here (not installed, or needs another device)."""


class NotSupported(Exception):
    """The implementation, as declared, cannot run this case: the message says what it lacks."""


class ContractViolation(Exception):
    """The implementation broke the contract of a call: wrote into an input, or returned
    outputs of another dtype, shape or device. `problems` says what, one line each."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def gdn_args(inputs: dict[str, torch.Tensor]) -> tuple:
    """q, k, v, g, beta of a case's inputs, in the common signature's order."""
    return tuple(inputs[name] for name in TOKEN_TENSORS)


def gdn_kwargs(case: Case, inputs: dict[str, torch.Tensor]) -> dict:
    """Keyword arguments of the common signature (the l2norm flag's name differs by callee)."""
    return {"scale": case.scale, "initial_state": inputs.get("initial_state"), "output_final_state": True,
            "cu_seqlens": inputs.get("cu_seqlens")}


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
    packed: bool  # cu_seqlens given

    @classmethod
    def of_case(cls, case: Case) -> "_Needs":
        return cls(case.dtype, case.HV != case.H, _custom_scale(case.scale, case.K), case.l2norm,
                   case.init_state == "random", case.N, case.layout == "varlen")

    @classmethod
    def of_inputs(cls, case: Case, inputs: dict[str, torch.Tensor]) -> "_Needs":
        q, v, cu = inputs["q"], inputs["v"], inputs.get("cu_seqlens")
        return cls(str(v.dtype).removeprefix("torch."), q.shape[2] != v.shape[2], _custom_scale(case.scale, q.shape[3]),
                   case.l2norm, inputs.get("initial_state") is not None,
                   q.shape[0] if cu is None else len(cu) - 1, cu is not None)


def _custom_scale(scale: float | None, K: int) -> float | None:
    return None if scale is None or scale == K ** -0.5 else scale


# ----------------------------------------------------------------------------------------
# The guard: inputs unchanged, outputs as promised
# ----------------------------------------------------------------------------------------

_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """a and b hold the same bits (NaNs included) in the same dtype, shape and device."""
    if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
        return False
    if a.is_floating_point() and a.element_size() in _SAME_SIZE_INT:
        a, b = a.view(_SAME_SIZE_INT[a.element_size()]), b.view(_SAME_SIZE_INT[b.element_size()])
    return torch.equal(a, b)


def _copier() -> Callable:
    """A function copying tensors for one call: each distinct storage is cloned once and every
    tensor rebuilt on the clone with its own offset, shape and strides, so views of one buffer
    (q, k, v split from a fused projection) reach the implementation as such views."""
    clones: dict[tuple, torch.UntypedStorage] = {}

    def copy(x):
        if not isinstance(x, torch.Tensor):
            return x
        storage = x.untyped_storage()
        key = (x.device, storage.data_ptr())
        if key not in clones:
            clones[key] = storage.clone()
        return torch.empty(0, dtype=x.dtype, device=x.device).set_(clones[key], x.storage_offset(), x.shape,
                                                                   x.stride())

    return copy


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def output_problems(inputs: dict[str, torch.Tensor], o, final_state,
                    design: PrecisionDesign | None = None) -> list[str]:
    """How the outputs of a call on `inputs` (the suite's conventions) break the contract:
    o [B, T, HV, V] in v's dtype and final_state [N, HV, K, V] in float32 (float64 when the
    inputs are: exact mode; the design's state dtype where that is narrower), both on the
    inputs' device."""
    q, v, cu = inputs["q"], inputs["v"], inputs.get("cu_seqlens")
    B, T, _, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    N = B if cu is None else len(cu) - 1
    exact = v.dtype == torch.float64
    state_dtype = torch.float64 if exact else torch.float32
    state_why = "exact mode: float64 inputs" if exact else "float32 whatever the input dtype; float64 in exact mode"
    if design is not None and design.final_state_dtype(v.dtype) != state_dtype:
        state_dtype = design.final_state_dtype(v.dtype)
        state_why = f"the state dtype of its declared design {design.name}"
    expected = (("o", o, (B, T, HV, V), "[B, T, HV, V]", v.dtype, "v's dtype"),
                ("final_state", final_state, (N, HV, K, V), "[N, HV, K, V]", state_dtype, state_why))
    problems = []
    for name, t, shape, dims, dtype, why in expected:
        if t is None:
            problems.append(f"{name}: the implementation returned None (output_final_state=True was passed)"
                            if name == "final_state" else f"{name}: the implementation returned None")
            continue
        if not isinstance(t, torch.Tensor):
            problems.append(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
            continue
        if tuple(t.shape) != shape:
            problems.append(f"{name}: shape {tuple(t.shape)}, expected {shape} = {dims}")
        if t.dtype != dtype:
            problems.append(f"{name}: dtype {_dtype(t.dtype)}, expected {_dtype(dtype)} ({why})")
        if t.device != v.device:
            problems.append(f"{name}: device {t.device}, expected {v.device} (the inputs' device)")
    return problems


# ----------------------------------------------------------------------------------------
# Conversions (exact, except the two documented input roundings)
# ----------------------------------------------------------------------------------------

def mod_head_order(H: int, HV: int, device) -> torch.Tensor:
    """perm with perm[j] = the suite's value head that an h % H implementation's value head j
    must hold: both then read key head j % H (the suite's head perm[j] reads perm[j] // (HV/H))."""
    j = torch.arange(HV, device=device)
    return (j % H) * (HV // H) + j // H


def alpha_of(g: torch.Tensor, q_dtype: torch.dtype) -> torch.Tensor:
    """exp(g) computed in float64, rounded once (the input's one rounding) to g's dtype promoted
    with q's: float32, or float64 in exact mode, where rounding alpha to float32 would cost
    the implementation six digits the mode exists to check."""
    return torch.exp(g.to(torch.float64)).to(torch.promote_types(g.dtype, q_dtype))


def l2_normalized(x: torch.Tensor) -> torch.Tensor:
    """x / sqrt(sum(x^2) + L2NORM_EPS) over the last axis, in float64, rounded to x's dtype."""
    wide = x.to(torch.float64)
    return (wide * torch.rsqrt((wide * wide).sum(-1, keepdim=True) + L2NORM_EPS)).to(x.dtype)


@dataclass(frozen=True)
class PreparedCall:
    """The implementation's arguments for one call, and how to bring its outputs back."""

    args: tuple
    kwargs: dict
    restore: Callable[[object], tuple[torch.Tensor, torch.Tensor | None]]

    def run(self, fn: Callable) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The call as prepared, unguarded (what a benchmark times)."""
        return self.restore(fn(*self.args, **self.kwargs))

    def run_guarded(self, fn: Callable) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The call on copies of the arguments; raises ContractViolation naming every
        argument the implementation wrote into."""
        copy = _copier()
        args, kwargs = tuple(copy(x) for x in self.args), {k: copy(x) for k, x in self.kwargs.items()}
        result = fn(*args, **kwargs)
        # Positional tensors are always the token tensors, in TOKEN_TENSORS order.
        given = list(zip(TOKEN_TENSORS, self.args, args)) + [(k, self.kwargs[k], kwargs[k]) for k in self.kwargs]
        modified = [name for name, original, copy in given
                    if isinstance(original, torch.Tensor) and not same_bits(original, copy)]
        if modified:
            raise ContractViolation([f"implementation modified its input {name}" for name in modified])
        return self.restore(result)


# ----------------------------------------------------------------------------------------
# The adapter
# ----------------------------------------------------------------------------------------

# Fields that change how the function is called (dtypes and notes do not).
_CALL_FIELDS = ("layout", "state_layout", "gate_space", "head_map", "l2norm", "l2norm_arg", "lacks",
                "keyword_tensors", "cu_seqlens_dtype")
_CHOICES = {"layout": LAYOUTS, "state_layout": STATE_LAYOUTS, "gate_space": GATE_SPACES, "head_map": HEAD_MAPS,
            "l2norm": L2NORM_MODES}


@dataclass(frozen=True)
class Adapter:
    """An implementation under test and its conventions; called as adapter(case, inputs)."""

    spec: str
    fn: Callable
    # Our kernels allocate every output through kernels._alloc.new_output, so they can be
    # poisoned; foreign code cannot.
    ours: bool = False
    # Stage intermediates (docs/design.md, 'Chunked form') of the same computation, for
    # diagnosis; our chunk kernel only.
    intermediates: Callable | None = None
    # Kernel name -> compiled variants so far, if known.
    variants: Callable[[], dict[str, int]] | None = None
    layout: str = "batched"
    state_layout: str = "kv"
    gate_space: str = "log"
    head_map: str = "div"
    l2norm: str = "kernel"
    l2norm_arg: str = "use_qk_l2norm_in_kernel"
    lacks: frozenset[str] = frozenset()
    dtypes: tuple[str, ...] = SUPPORTED_DTYPES
    dtypes_note: str = ""  # why the others are left out, for the "not supported" reason
    keyword_tensors: bool = False
    cu_seqlens_dtype: str | None = None
    notes: str = ""
    design: PrecisionDesign | None = None  # None: none declared (judged by the tolerance table)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lacks", frozenset(self.lacks))
        object.__setattr__(self, "dtypes", tuple(self.dtypes))
        for name, allowed in _CHOICES.items():
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
        defaults = {f.name: f.default for f in dataclasses.fields(Adapter)}
        return all(getattr(self, name) == defaults[name] for name in _CALL_FIELDS)

    def conventions(self) -> dict:
        """The declared conventions, for reports."""
        out = {name: getattr(self, name) for name in _CALL_FIELDS if name != "lacks"}
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
        if needs.initial_state and "initial_state" in self.lacks:
            return "needs an initial state: the implementation takes no initial_state"
        if "cu_seqlens" in self.lacks and needs.sequences > 1 and (needs.packed or self.layout == "packed"):
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
        reason = self._why_not(_Needs.of_inputs(case, inputs))
        if reason is not None:
            raise NotSupported(reason)
        q, k, v, g, beta = gdn_args(inputs)
        h0, cu = inputs.get("initial_state"), inputs.get("cu_seqlens")
        B, T, H, HV = q.shape[0], q.shape[1], q.shape[2], v.shape[2]
        if cu is not None and len(cu) == 2 and "cu_seqlens" in self.lacks:
            cu = None  # one packed sequence is a dense batch of one
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
        if self.layout == "packed":
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
        if self.layout == "packed":
            if o.ndim < 1 or o.shape[0] != B * T:
                raise ContractViolation([f"o: shape {tuple(o.shape)}, expected [T, HV, V] with T = {B * T} "
                                         "(declared layout packed)"])
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


# ----------------------------------------------------------------------------------------
# Compiled variants of any Triton code
# ----------------------------------------------------------------------------------------

def _compiled_kernel(value) -> object | None:
    """The compiled-mode Triton kernel under `value` (autotuner and heuristics wrappers keep it
    in `.fn`), or None. Any module attribute may come here: lookups that raise mean no kernel."""
    for _ in range(8):
        try:
            if isinstance(getattr(value, "device_caches", None), dict):
                return value
            value = getattr(value, "fn", None)
        except Exception:
            return None
        if value is None:
            return None
    return None


def _jit_kernels(package: str) -> dict[str, object]:
    """Every compiled-mode Triton kernel in the imported modules of `package`, by 'module.function'."""
    found: dict[str, object] = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == package or name.startswith(package + ".")):
            continue
        for value in list(vars(module).values()):
            kernel = _compiled_kernel(value)
            if kernel is not None:
                fn = getattr(kernel, "fn", kernel)
                module_name = str(getattr(fn, "__module__", name)).removeprefix(package + ".")
                found.setdefault(f"{module_name}.{getattr(fn, '__name__', type(fn).__name__)}", kernel)
    return found


def triton_variants(package: str) -> Callable[[], dict[str, int]] | None:
    """A counter of compiled variants per kernel of `package` (Triton's per-device JIT cache,
    every autotune config that was compiled counting as one), or None where nothing compiles:
    under the interpreter (TRITON_INTERPRET=1, read when a kernel is decorated), or when the
    package has no Triton kernels."""
    if os.environ.get("TRITON_INTERPRET") == "1" or not _jit_kernels(package):
        return None
    from gdn_verify.kernels._launch import _jit_cache_size

    def count() -> dict[str, int]:
        sizes = {name: _jit_cache_size(kernel) for name, kernel in _jit_kernels(package).items()}
        return dict(sorted((name, n) for name, n in sizes.items() if n))

    return count


# ----------------------------------------------------------------------------------------
# Built-in adapters
# ----------------------------------------------------------------------------------------

def our_compiled_variants() -> dict[str, int]:
    from gdn_verify.kernels._launch import compiled_variants

    return compiled_variants()


def _ours(name: str, device: str | None) -> Adapter:
    kernels = importlib.import_module(KERNELS_MODULE)
    fn = getattr(kernels, OURS[name], None)
    if fn is None:
        raise ImplError(f"--impl {name!r}: {KERNELS_MODULE} has no {OURS[name]}")
    inter = getattr(kernels, "chunk_gated_delta_rule_intermediates", None) if name == "gdn" else None
    return Adapter(spec=name, fn=fn, ours=True, intermediates=inter, variants=our_compiled_variants, design=GDN)


def fla_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("fla-core", "flash-linear-attention"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


# flash-linear-attention's entry points (fla-core 0.6.0): q, k [B, T, H, K]; v [B, T, HV, V]
# with HV a multiple of H (GVA, key head = h // (HV/H)); g log-space [B, T, HV]; beta
# [B, T, HV]; scale (default K ** -0.5); initial_state and final_state [N, HV, K, V], final
# float32; cu_seqlens documented as a LongTensor, with B = 1; use_qk_l2norm_in_kernel
# (x / sqrt(sum x^2 + 1e-6)). fused_recurrent's positional order is q, k, v, g, gk, gv,
# beta, so tensors go by keyword. float64 is neither documented nor tested upstream (the
# recurrent kernel computes it in float32). The chunk kernels autotune over several configs,
# which Triton's interpreter cannot run ("0 active drivers"); the recurrent one has a single
# config and runs there, except in bfloat16: the interpreter truncates its float32 -> bfloat16
# stores (measured on o: 99.9% of elements equal the truncated reference, 50% the rounded one).
_FLA = {
    "fla-chunk": ("chunk_gated_delta_rule", True),
    "fla-recurrent": ("fused_recurrent_gated_delta_rule", False),
}


def _fla(name: str, device: str | None) -> Adapter:
    entry, needs_cuda = _FLA[name]
    if importlib.util.find_spec("fla") is None:
        raise ImplUnavailable(f"--impl {name}: flash-linear-attention is not installed; install it with {FLA_INSTALL}")
    if needs_cuda and not str(device or "").startswith("cuda"):
        raise ImplUnavailable(
            f"--impl {name}: needs a CUDA device (device here: {device or 'none'}): its chunk kernels autotune "
            "over several configs, which Triton's interpreter cannot run; use --device cuda on a GPU machine")
    try:
        module = importlib.import_module(FLA_MODULE)
    except ImportError as exc:
        raise ImplUnavailable(f"--impl {name}: cannot import {FLA_MODULE} ({exc}); install it with {FLA_INSTALL}") from exc
    fn = getattr(module, entry, None)
    if fn is None:
        raise ImplUnavailable(f"--impl {name}: {FLA_MODULE} has no {entry} (fla {fla_version()})")
    dtypes, note = ("float32", "float16", "bfloat16"), "float64 is not supported upstream"
    if not str(device or "").startswith("cuda"):
        dtypes, note = dtypes[:2], note + "; bfloat16 is not run under Triton's interpreter, which truncates its stores"
    return Adapter(spec=name, fn=fn, variants=triton_variants("fla"), keyword_tensors=True, dtypes=dtypes,
                   dtypes_note=note, cu_seqlens_dtype="int64", notes=f"{FLA_MODULE}.{entry}, fla {fla_version()}",
                   design=FLA)


@dataclass(frozen=True)
class Builtin:
    description: str
    make: Callable[[str, str | None], Adapter] = field(repr=False)


BUILTINS: dict[str, Builtin] = {
    "gdn": Builtin("our chunked Triton kernel", _ours),
    "gdn-recurrent": Builtin("our token-by-token (decode) Triton kernel", _ours),
    "fla-chunk": Builtin(f"flash-linear-attention {FLA_MODULE}.chunk_gated_delta_rule (CUDA only)", _fla),
    "fla-recurrent": Builtin(f"flash-linear-attention {FLA_MODULE}.fused_recurrent_gated_delta_rule", _fla),
}
