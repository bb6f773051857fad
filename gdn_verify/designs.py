"""Precision designs: where an implementation of the chunk algorithm rounds, declared and emulated.

A design says, per input dtype, which quantities of the chunk algorithm an implementation
stores rounded, into which dtype, and how it rounds dot operands. The float64 chunked
reference (`reference.chunked_gated_delta_rule(..., design=)`) rounds exactly those
quantities at the points where they are stored, so each case gets the error that design
should have; `compare` judges an implementation that declares a design other than ours
against that error (our kernels keep their strict tolerance table).

Quantities, in the order the chunk algorithm makes them:

    inputs   q, k, v, g, beta and the initial state as the computation takes them
    qk       q and k after the in-kernel l2norm (the inputs themselves without it)
    g_cum    the cumulative gate inside each chunk
    A        beta_i (k_i . k_j) exp(g_cum_i - g_cum_j), strictly lower
    Tm       (I + A)^-1
    W, U     Tm diag(beta exp(g_cum)) K, Tm diag(beta) V
    h        the state entering a chunk, as V' = U - W h and the output read it
    v_new    V'
    state    the state carried from chunk to chunk, returned as final_state
    o        the output before its cast to v's dtype (the cast itself is the contract's and is
             always applied)

Gate base (`exp2=C`): the implementation multiplies the cumulative gate by C (its float
constant for 1/ln 2, rounded to the compute dtype), rounds the product as it stores g_cum, and
exponentiates base 2. The product's rounding is a relative error of the exponent: for a
cumulative gate of -250 about 1.5e-5 of the decay, far above float32 roundoff of the decay
itself, so a design that scales its gates so must say so. Base-2 decays below the compute
dtype's smallest normal (2^-126 in float32) are 0: Triton lowers exp2 to the GPU's
ex2.approx.ftz, which flushes subnormal results (a head decayed by 2^-141 then returns a final
state of exactly 0 where the exact one is subnormal). Default: natural exp of g_cum.

Dtype words: `input` (the input dtype), `compute` (float32, or float64 for float64 inputs:
exact mode), `float32`, `float16`, `bfloat16`. Rounding is round to nearest even (torch
casts); a dtype at least as wide as the input's float64 value is no rounding.

Dot modes, for the operands of every matrix product of float32, float16 and bfloat16 problems
(float64 problems have no rounded dots): `ieee` (not rounded); `tf32` (rounded to 10 explicit
mantissa bits, to nearest with ties away from zero, as cvt.rna.tf32.f32 does); `tf32-trunc` (cut
to 10 bits, the 13 below dropped: how tensor cores read the float32 operands that Triton's
default tl.dot hands them unrounded; benchmarks/tf32_rounding.py tells the two apart on a GPU);
both keep the float32 range and subnormals and pass bfloat16 and float16 values unchanged;
`bf16` (rounded to bfloat16).

Spec syntax (`parse_design`): a named design (`gdn`, `fla`, `float32`) or clauses joined by `;`

    store=NAME[,NAME...]:DTYPE    these quantities are stored in DTYPE (later clauses win)
    dots=MODE                     dot operands (default ieee)
    exp2=C                        gates scaled by C and exponentiated base 2 (default: exp)

for example `store=Tm,W,U,h,v_new:input;store=A,state:compute;dots=tf32`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

QUANTITIES = ("inputs", "qk", "g_cum", "A", "Tm", "W", "U", "h", "v_new", "state", "o")
DTYPE_WORDS = ("input", "compute", "float32", "float16", "bfloat16")
DOT_MODES = ("ieee", "tf32", "tf32-trunc", "bf16")
_TORCH = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16}


def _name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tf32_round(x: torch.Tensor, mode: str = "tf32") -> torch.Tensor:
    """x (any float dtype) rounded to float32 and then to TF32 as dot mode `mode` does, returned
    in x's dtype.

    "tf32" adds half a unit of TF32's 10th mantissa bit to the magnitude bits and clears the 13
    bits below, which is round to nearest, ties away from zero (the sign bit is apart);
    "tf32-trunc" only clears them (toward zero). Inf and NaN pass."""
    x32 = x.to(torch.float32)
    bits = x32.view(torch.int32)
    if mode == "tf32":
        bits = bits + 0x1000
    elif mode != "tf32-trunc":
        raise ValueError(f"mode: expected tf32 or tf32-trunc, got {mode!r}")
    rounded = (bits & ~0x1FFF).view(torch.float32)
    return torch.where(x32.isfinite(), rounded, x32).to(x.dtype)


@dataclass(frozen=True)
class Rounding:
    """A design resolved for one input dtype: what `store` and `dot` do to float64 values."""

    stored: tuple[tuple[str, torch.dtype], ...] = ()  # quantity -> the dtype it is rounded into
    dots: str = "ieee"
    exp2: float | None = None  # the gate scale C in the compute dtype, or None: natural exp
    ftz: float | None = None  # with exp2: the compute dtype's smallest normal; exps below it are 0

    def exp(self, x: torch.Tensor) -> torch.Tensor:
        """exp(x) as the implementation computes the decays: with exp2, results below the compute
        dtype's smallest normal are 0, as the GPU's ex2.approx.ftz (Triton's exp2) flushes them."""
        e = x.exp()
        return e if self.ftz is None else e.masked_fill(e < self.ftz, 0.0)

    def dtype_of(self, quantity: str) -> torch.dtype | None:
        return dict(self.stored).get(quantity)

    def store(self, quantity: str, x: torch.Tensor) -> torch.Tensor:
        """x as the implementation stores it (x itself where the design does not round it)."""
        dtype = self.dtype_of(quantity)
        if dtype is None or torch.finfo(dtype).bits >= torch.finfo(x.dtype).bits:
            return x
        return x.to(dtype).to(x.dtype)

    def operand(self, x: torch.Tensor) -> torch.Tensor:
        if self.dots in ("tf32", "tf32-trunc"):
            return tf32_round(x, self.dots)
        if self.dots == "bf16":
            return x.to(torch.bfloat16).to(x.dtype)
        return x

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.dots == "ieee":
            return a @ b
        return self.operand(a) @ self.operand(b)


EXACT = Rounding()


def _contract_state_dtype(input_dtype: str) -> torch.dtype:
    return torch.float64 if input_dtype == "float64" else torch.float32


@dataclass(frozen=True)
class PrecisionDesign:
    """Which quantities (QUANTITIES) are stored in which dtype word, and the dot mode."""

    name: str
    store: tuple[tuple[str, str], ...] = ()
    dots: str = "ieee"
    description: str = ""
    exp2: float | None = None

    def __post_init__(self) -> None:
        for quantity, word in self.store:
            if quantity not in QUANTITIES:
                raise ValueError(f"unknown quantity {quantity!r}: expected one of {', '.join(QUANTITIES)}")
            if word not in DTYPE_WORDS:
                raise ValueError(f"unknown dtype {word!r}: expected one of {', '.join(DTYPE_WORDS)}")
        if self.dots not in DOT_MODES:
            raise ValueError(f"unknown dot mode {self.dots!r}: expected one of {', '.join(DOT_MODES)}")
        if self.exp2 is not None and not (isinstance(self.exp2, float) and math.isfinite(self.exp2) and self.exp2 > 0):
            raise ValueError(f"exp2: expected a finite positive float, got {self.exp2!r}")
        object.__setattr__(self, "store", tuple(sorted(dict(self.store).items(), key=lambda kv: QUANTITIES.index(kv[0]))))

    def rounding(self, input_dtype) -> Rounding:
        """The design for inputs of input_dtype (a torch dtype or its name)."""
        name = _name(input_dtype)
        words = {"input": name, "compute": "float64" if name == "float64" else "float32"}
        exp2 = None if self.exp2 is None else torch.tensor(self.exp2, dtype=torch.float64).to(_TORCH[words["compute"]]).item()
        # float64 problems have no TF32 or bf16 tensor-core dots: their operands are never rounded.
        ftz = None if exp2 is None else torch.finfo(_TORCH[words["compute"]]).tiny
        return Rounding(tuple((q, _TORCH[words.get(w, w)]) for q, w in self.store),
                        "ieee" if name == "float64" else self.dots, exp2, ftz)

    def final_state_dtype(self, input_dtype) -> torch.dtype:
        """The returned final state's dtype: the contract's (float32, float64 in exact mode),
        or the design's state dtype where that is narrower (a float32 design on float64 inputs)."""
        contract = _contract_state_dtype(_name(input_dtype))
        state = self.rounding(input_dtype).dtype_of("state")
        if state is not None and torch.finfo(state).bits < torch.finfo(contract).bits:
            return state
        return contract

    @property
    def spec(self) -> str:
        """The design in spec syntax (parse_design(d.spec) has d's rules)."""
        by_word: dict[str, list[str]] = {}
        for quantity, word in self.store:
            by_word.setdefault(word, []).append(quantity)
        clauses = [f"store={','.join(qs)}:{word}" for word, qs in by_word.items()] + [f"dots={self.dots}"]
        return ";".join(clauses + ([f"exp2={self.exp2!r}"] if self.exp2 is not None else []))

    def same_rules(self, other: "PrecisionDesign | None") -> bool:
        return other is not None and (self.store, self.dots, self.exp2) == (other.store, other.dots, other.exp2)

    def to_json(self) -> dict:
        return {"name": self.name, "spec": self.spec, "description": self.description}


_ALL_BUT_INPUTS = tuple(q for q in QUANTITIES if q != "inputs")

GDN = PrecisionDesign(
    "gdn", tuple((q, "compute") for q in _ALL_BUT_INPUTS), "ieee",
    "ours (kernels/_common.py): float32 intermediates and state for float32/float16/bfloat16 inputs, "
    "float64 throughout for float64 inputs; IEEE float32 dots (bf16x3 on the GPU for 16-bit inputs, "
    "about 2^-16 relative, treated as IEEE)")
FLA = PrecisionDesign(
    "fla", tuple((q, "input") for q in ("qk", "Tm", "W", "U", "h", "v_new"))
    + tuple((q, "compute") for q in ("g_cum", "A", "state", "o")), "tf32-trunc",
    "flash-linear-attention chunk_gated_delta_rule: l2-normalized q and k, Tm = solve_tril(A), W, U, the "
    "per-chunk states h and V' stored in the input dtype; A (chunk_scaled_dot_kkt_fwd, output_dtype "
    "float32), the cumulative gate and the carried state in float32; float32 dots in TF32 as Triton's "
    "tensor cores read float32 operands; the cumulative gate scaled by its RCP_LN2 (chunk_local_cumsum's "
    "scale) and exponentiated base 2",
    exp2=1.4426950216)
FLOAT32 = PrecisionDesign(
    "float32", tuple((q, "float32") for q in QUANTITIES), "ieee",
    "everything in float32 whatever the input dtype, o returned in the input dtype (Hugging Face "
    "transformers' torch_chunk_gated_delta_rule)")

DESIGNS = {d.name: d for d in (GDN, FLA, FLOAT32)}


def parse_design(text: str) -> PrecisionDesign:
    """A named design or a spec (module docstring); ValueError naming the bad part."""
    text = text.strip()
    if text in DESIGNS:
        return DESIGNS[text]
    if "=" not in text:
        raise ValueError(f"design {text!r}: expected a named design ({', '.join(DESIGNS)}) or a spec such as "
                         "'store=Tm,W,U,h,v_new:input;dots=tf32'")
    store: dict[str, str] = {}
    dots, exp2 = "ieee", None
    for clause in text.split(";"):
        clause = clause.strip()
        if not clause:
            continue
        key, sep, value = clause.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in ("store", "dots", "exp2"):
            raise ValueError(f"design clause {clause!r}: expected store=NAMES:DTYPE, dots=MODE or exp2=C")
        if key == "exp2":
            try:
                exp2 = float(value)
            except ValueError:
                exp2 = math.nan
            if not (math.isfinite(exp2) and exp2 > 0):
                raise ValueError(f"design clause {clause!r}: exp2 needs a finite positive number, got {value!r}")
            continue
        if key == "dots":
            if value not in DOT_MODES:
                raise ValueError(f"design clause {clause!r}: dot mode {value!r} is not one of {', '.join(DOT_MODES)}")
            dots = value
            continue
        names, sep, word = value.rpartition(":")
        if not sep or not names.strip():
            raise ValueError(f"design clause {clause!r}: expected store=NAME[,NAME...]:DTYPE")
        word = word.strip()
        if word not in DTYPE_WORDS:
            raise ValueError(f"design clause {clause!r}: dtype {word!r} is not one of {', '.join(DTYPE_WORDS)}")
        for quantity in (n.strip() for n in names.split(",")):
            if quantity not in QUANTITIES:
                raise ValueError(f"design clause {clause!r}: quantity {quantity!r} is not one of "
                                 f"{', '.join(QUANTITIES)}")
            store[quantity] = word
    design = PrecisionDesign("custom", tuple(store.items()), dots, exp2=exp2)
    for named in DESIGNS.values():
        if named.same_rules(design):
            return named
    return PrecisionDesign(design.spec, design.store, design.dots, "declared by spec", exp2)


def resolve_design(design: "PrecisionDesign | str | None") -> PrecisionDesign | None:
    return parse_design(design) if isinstance(design, str) else design
