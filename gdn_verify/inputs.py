"""Inputs of a case, generated on the CPU from the case alone.

Every tensor comes from one `torch.Generator` on the CPU seeded by `Case.input_seed()`, drawn in
a fixed order and in float32 before the cast to the case's dtype, so the same case gives the
same bits on any machine and any device (the device RNG is never used). `inputs_digest` names
those bits, so a golden written from other inputs is reported as such instead of compared.

Ranges follow what a serving model feeds the kernel:
* q, k: standard normal per element. Without in-kernel l2norm they are l2-normalized here, as
  a model does before calling such a kernel; un-normalized keys of length ~sqrt(K) would make
  the delta rule's update I - beta k k^T expand and the state blow up, which no model does.
* v: standard normal.
* g (float32, log-space decay): zero = 0; mild = uniform in [-0.1, 0]; strong = uniform in
  [-30, -1] per token; mixed = each element zero, mild or strong (1 : 2 : 1); extreme = mild,
  but about one element in 15 and the middle token of every sequence (value head 0) closed
  or huge: -1e3, -1e4, -1e30 or -inf (a hard reset of the head's state mid-chunk).
* beta (case dtype, as a model's sigmoid output would be; float32 beside 16-bit q, k, v when
  `case.beta_dtype` says so, as a gating kernel's float32 output would be): zero = 0, one = 1,
  random = sigmoid(normal), in (0, 1).
* initial state (float32, float64 in exact mode): standard normal, which is non-symmetric
  (K x V with independent entries).
"""

from __future__ import annotations

import hashlib

import torch

from gdn_verify.cases import Case
from gdn_verify.contract import L2NORM_EPS

TORCH_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

MILD_GATE_MIN = -0.1
STRONG_GATE_RANGE = (-30.0, -1.0)
EXTREME_GATES = (-1e3, -1e4, -1e30, -float("inf"))


def _uniform(shape, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=gen, dtype=torch.float32) * (high - low) + low


def _gate(case: Case, shape, gen: torch.Generator) -> torch.Tensor:
    # Every regime draws the same streams in the same order, so the mild values of a mixed
    # case are those of the mild case: the regimes differ only where they must.
    mild = _uniform(shape, MILD_GATE_MIN, 0.0, gen)
    strong = _uniform(shape, *STRONG_GATE_RANGE, gen)
    choice = torch.randint(0, 4, shape, generator=gen)
    if case.gate == "zero":
        return torch.zeros(shape)
    if case.gate == "mild":
        return mild
    if case.gate == "strong":
        return strong
    if case.gate == "extreme":
        return _extreme(case, mild, strong)
    return torch.where(choice == 0, 0.0, torch.where(choice == 3, strong, mild))


def _extreme(case: Case, mild: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
    """Mild gates with extreme ones placed by the strong stream: where a strong value falls below
    -28, one of EXTREME_GATES chosen by its next digit; and the middle token of each sequence on
    value head 0, so that every sequence of one or more tokens meets one."""
    extremes = torch.tensor(EXTREME_GATES)
    pick = torch.remainder(torch.floor(strong * 8), len(EXTREME_GATES)).long()
    g = torch.where(strong < -28.0, extremes[pick], mild)
    for n, length in enumerate(case.seq_lens):
        if length:
            row, start = (n, 0) if case.layout == "dense" else (0, case.cu_seqlens[n])
            g[row, start + length // 2, 0] = extremes[n % len(EXTREME_GATES)]
    return g


def _beta(case: Case, shape, gen: torch.Generator) -> torch.Tensor:
    logits = torch.randn(shape, generator=gen)
    if case.beta == "zero":
        return torch.zeros(shape)
    if case.beta == "one":
        return torch.ones(shape)
    return torch.sigmoid(logits)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + L2NORM_EPS)


def make_inputs(case: Case) -> dict[str, torch.Tensor]:
    """q, k, v, g, beta, plus initial_state (random init only) and cu_seqlens (varlen only),
    all on the CPU. The scale is the case's (`case.scale`, None for the default)."""
    gen = torch.Generator(device="cpu").manual_seed(case.input_seed())
    dtype = TORCH_DTYPES[case.dtype]
    B, T, H, HV, K, V = case.B, case.T, case.H, case.HV, case.K, case.V
    q = torch.randn((B, T, H, K), generator=gen)
    k = torch.randn((B, T, H, K), generator=gen)
    v = torch.randn((B, T, HV, V), generator=gen)
    if not case.l2norm:
        q, k = _unit(q), _unit(k)
    g = _gate(case, (B, T, HV), gen)
    beta = _beta(case, (B, T, HV), gen)
    state = torch.randn((case.N, HV, K, V), generator=gen)
    beta_dtype = dtype if case.beta_dtype is None else TORCH_DTYPES[case.beta_dtype]
    inputs = {"q": q.to(dtype), "k": k.to(dtype), "v": v.to(dtype), "g": g, "beta": beta.to(beta_dtype)}
    if case.init_state == "random":
        inputs["initial_state"] = state.to(torch.float64 if case.dtype == "float64" else torch.float32)
    if case.cu_seqlens is not None:
        inputs["cu_seqlens"] = torch.tensor(case.cu_seqlens, dtype=torch.int32)
    return inputs


def to_device(inputs: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {name: t.to(device) for name, t in inputs.items()}


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor (any dtype, bf16 included), row-major, from any device."""
    t = t.detach().contiguous().cpu()
    if t.numel() == 0:
        return b""
    return t.view(_INT_VIEW[t.element_size()]).numpy().tobytes()


def inputs_digest(inputs: dict[str, torch.Tensor]) -> str:
    """sha256 over each tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(inputs):
        t = inputs[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()
