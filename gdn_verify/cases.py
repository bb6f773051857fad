"""Verification cases as data: one problem each, named by its id.

A `Case` is everything needed to regenerate one problem's inputs bit for bit: the layout and
sequence lengths, head counts and sizes, dtype, the gate / beta / initial-state regimes, the
l2norm flag, the dtype of beta, the scale and a seed. Its `id` is the one name used
everywhere: pytest ids, report rows and golden file names. The id spells out shape and dtype
always and adds a suffix only for a regime that differs from the default, so the common case
reads short: ``varlen-0.1.16.63-h4x8-d128-bf16`` or
``dense-b1-t64-h1x2-d16-f32-gstrong-beta1-state0``.

A field added after goldens were written has a default that leaves `to_dict` (and so the
input seed, the inputs and the stored case spec) of every existing case as it was: its key
appears only when it differs from the default.

The named suites built from cases: gdn_verify/suites.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Sequence

from gdn_verify.contract import CHUNK_SIZE, MAX_HEAD_DIM, SUPPORTED_DTYPES

LAYOUTS = ("dense", "varlen")
GATES = ("zero", "mild", "strong", "mixed", "extreme")
# The regimes the suites cycle through and sample; "extreme" (a few gates of -1e3 .. -inf
# among mild ones) joins each suite as hand-picked cases instead (`_extreme_gates`).
CYCLED_GATES = GATES[:4]
BETAS = ("zero", "one", "random")
INIT_STATES = ("none", "random")
# beta's dtype: None = the case dtype (a model's sigmoid in its activation dtype); "float32" = a
# gating kernel's float32 output beside 16-bit q, k, v (g is float32 in every case). The contract
# allows g and beta in q's dtype or float32; float32 is the default's own dtype for float32 cases
# and a narrowing for float64 ones, so the choice exists beside float16 and bfloat16 only.
BETA_DTYPES = (None, "float32")
BETA_DTYPE_CASE_DTYPES = ("float16", "bfloat16")

DTYPE_TAGS = {"float64": "f64", "float32": "f32", "float16": "f16", "bfloat16": "bf16"}
_GATE_TAGS = {"zero": "gzero", "mild": "", "strong": "gstrong", "mixed": "gmixed", "extreme": "gextreme"}
_BETA_TAGS = {"zero": "beta0", "one": "beta1", "random": ""}
_BETA_DTYPE_TAGS = {None: "", "float32": "betaf32"}
# Fields whose key `to_dict` leaves out at their default (see the module docstring).
_OMITTED_AT_DEFAULT = {"beta_dtype": None}

# Up to this many packed lengths are spelled out in the id; longer packs are named by count,
# total and a digest of the lengths (a 64-sequence id would not fit a file name otherwise).
_MAX_SPELLED_SEQS = 8
_ID_CHARS = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")

# Work (tokens x value heads x K x V) above which the JAX reference, a CPU-only NumPy path,
# is not worth running: it costs seconds per case there while the torch reference runs on
# the device. Cases this small finish in well under a second.
_JAX_MAX_WORK = 1 << 24


@dataclass(frozen=True)
class Case:
    layout: str
    seq_lens: tuple[int, ...]
    H: int
    HV: int
    K: int
    V: int
    dtype: str
    gate: str = "mild"
    beta: str = "random"
    init_state: str = "none"
    l2norm: bool = False
    scale: float | None = None
    seed: int = 0
    beta_dtype: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "seq_lens", tuple(int(n) for n in self.seq_lens))
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout: expected one of {LAYOUTS}, got {self.layout!r}")
        if not self.seq_lens or any(n < 0 for n in self.seq_lens):
            raise ValueError(f"seq_lens: expected a non-empty tuple of lengths >= 0, got {self.seq_lens}")
        if self.layout == "dense" and (len(set(self.seq_lens)) != 1 or self.seq_lens[0] < 1):
            raise ValueError(f"seq_lens: a dense case needs B equal lengths >= 1, got {self.seq_lens}")
        if self.H < 1 or self.HV < 1 or self.HV % self.H:
            raise ValueError(f"HV: expected a positive multiple of H = {self.H}, got {self.HV}")
        for name in ("K", "V"):
            if not 1 <= getattr(self, name) <= MAX_HEAD_DIM:
                raise ValueError(f"{name}: expected 1..{MAX_HEAD_DIM}, got {getattr(self, name)}")
        for name, allowed in (("dtype", SUPPORTED_DTYPES), ("gate", GATES), ("beta", BETAS),
                              ("init_state", INIT_STATES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        if not isinstance(self.l2norm, bool):
            raise ValueError(f"l2norm: expected a bool, got {self.l2norm!r}")
        if self.scale is not None and not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale)):
            raise ValueError(f"scale: expected None or a finite number, got {self.scale!r}")
        if self.seed < 0:
            raise ValueError(f"seed: expected >= 0, got {self.seed}")
        if self.beta_dtype not in BETA_DTYPES:
            raise ValueError(f"beta_dtype: expected one of {BETA_DTYPES}, got {self.beta_dtype!r}")
        if self.beta_dtype is not None and self.dtype not in BETA_DTYPE_CASE_DTYPES:
            raise ValueError(f"beta_dtype: {self.beta_dtype} applies beside dtype in {BETA_DTYPE_CASE_DTYPES} "
                             f"(beta is in the case dtype otherwise), got dtype {self.dtype}")

    # Sizes of the tensors the case becomes.
    @property
    def B(self) -> int:
        return len(self.seq_lens) if self.layout == "dense" else 1

    @property
    def T(self) -> int:
        """Token dimension of q (per sequence when dense, packed total when varlen)."""
        return self.seq_lens[0] if self.layout == "dense" else sum(self.seq_lens)

    @property
    def N(self) -> int:
        """Number of sequences (rows of the initial and final state)."""
        return len(self.seq_lens)

    @property
    def tokens(self) -> int:
        return sum(self.seq_lens)

    @property
    def cu_seqlens(self) -> tuple[int, ...] | None:
        if self.layout == "dense":
            return None
        offsets = [0]
        for n in self.seq_lens:
            offsets.append(offsets[-1] + n)
        return tuple(offsets)

    @property
    def id(self) -> str:
        parts = [self.layout, _lens_tag(self), f"h{self.H}x{self.HV}",
                 f"d{self.K}" if self.K == self.V else f"k{self.K}v{self.V}", DTYPE_TAGS[self.dtype],
                 _GATE_TAGS[self.gate], _BETA_TAGS[self.beta], _BETA_DTYPE_TAGS[self.beta_dtype],
                 "state0" if self.init_state == "random" else "", "l2n" if self.l2norm else ""]
        if self.scale is not None:
            parts.append(f"sc{self.scale:g}")
        if self.seed:
            parts.append(f"seed{self.seed}")
        return "-".join(p for p in parts if p)

    @property
    def references(self) -> tuple[str, ...]:
        """References that apply: the torch recurrence and the chunked reference always (the
        latter for stage diagnosis), the JAX recurrence only where its CPU cost is small."""
        refs = ("recurrent", "chunked")
        if self.tokens * self.HV * self.K * self.V <= _JAX_MAX_WORK:
            refs += ("jax",)
        return refs

    def with_(self, **changes) -> "Case":
        return Case(**{**self.to_dict(), **changes})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seq_lens"] = list(self.seq_lens)
        for name, default in _OMITTED_AT_DEFAULT.items():
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Case":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"case: unknown fields {sorted(unknown)}")
        return cls(**{**d, "seq_lens": tuple(d["seq_lens"])})

    def input_seed(self) -> int:
        """Seed of the CPU generator for this case's inputs: derived from every field, so
        two cases never share input streams and the value survives process restarts."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & ((1 << 63) - 1)


def _lens_tag(case: Case) -> str:
    if case.layout == "dense":
        return f"b{case.B}-t{case.T}"
    if len(case.seq_lens) <= _MAX_SPELLED_SEQS:
        return ".".join(str(n) for n in case.seq_lens)
    digest = hashlib.sha256(",".join(map(str, case.seq_lens)).encode()).hexdigest()[:8]
    return f"n{case.N}t{case.tokens}.{digest}"


def dense(T: int, B: int = 1, **kw) -> Case:
    return Case(layout="dense", seq_lens=(T,) * B, **kw)


def varlen(seq_lens: Sequence[int], **kw) -> Case:
    return Case(layout="varlen", seq_lens=tuple(seq_lens), **kw)


def case_cost(case: Case) -> int:
    """Relative interpreter cost of a case: one program per (chunk or sequence, value head).

    Fitted on a cpu-suite run: time ~ 0.5 s + 0.06 s x cost, correlation 0.85.
    """
    return (case.N + sum(-(-n // CHUNK_SIZE) for n in case.seq_lens)) * case.HV


def select(cases: Sequence[Case], pattern: str | None = None, max_cases: int | None = None) -> list[Case]:
    """Cases whose id matches `pattern` (a regular expression, searched), at most `max_cases`."""
    if pattern:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"cases: not a valid regular expression {pattern!r} ({exc})") from exc
        cases = [c for c in cases if regex.search(c.id)]
    if max_cases is not None:
        if max_cases < 1:
            raise ValueError(f"max_cases: expected >= 1, got {max_cases}")
        cases = list(cases)[:max_cases]
    return list(cases)


def is_file_name_safe(case_id: str) -> bool:
    return bool(_ID_CHARS.match(case_id)) and len(case_id) <= 200
