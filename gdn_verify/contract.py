"""The input contract of every GDN entry point (references and kernels alike).

`validate` checks everything the contract promises about the arguments (docs/design.md,
'Input contract') and raises a `GDNInputError` (a ValueError) naming the argument, what was
expected and what was given, before any kernel runs. It accepts torch tensors and NumPy/JAX
arrays, so the JAX reference validates through the same code.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

MAX_HEAD_DIM = 256
# Tokens per chunk of the chunked form (docs/design.md, 'Chunked form'): our chunk kernel, the
# chunked reference, the per-chunk slices of the checks and of a reproducer.
CHUNK_SIZE = 64
# q and k are normalized as x / sqrt(sum(x^2) + L2NORM_EPS) per token and head when asked.
L2NORM_EPS = 1e-6
SUPPORTED_DTYPES = ("float64", "float32", "float16", "bfloat16")
# The lowest log decay a token keeps in the chunked algorithm, per compute dtype. A closed or
# huge gate (-1e30, -inf) would swallow the later gates of its chunk in their cumulative sum
# (their differences lose every bit to its magnitude; -inf gives NaN), and the chunk form's
# error grows with the magnitude of those sums, so the floor is as high as it can be while
# its decay is invisible in the compute dtype. float64: exp(-750) is exactly 0, so the floor
# changes nothing. float32: exp(-30) = 9.4e-14 instead of a smaller decay, a millionth of
# float32's resolution (2^-24); lower floors cost a larger error after such a gate
# (benchmarks/gate_floor.py, results/gate_floor_cpu.json). Gates of -30 and above are untouched.
GATE_FLOOR = {"float64": -750.0, "float32": -30.0}


class GDNInputError(ValueError):
    """A GDN argument violates the contract; the message names the argument."""


def _fail(name: str, expected: str, got: object) -> GDNInputError:
    return GDNInputError(f"{name}: expected {expected}, got {got}")


def dtype_name(x) -> str:
    """'float32', 'bfloat16', ... for a torch tensor or a NumPy/JAX array."""
    dt = x.dtype
    name = getattr(dt, "name", None)  # numpy / jax dtypes
    if name is None:  # torch.dtype prints as 'torch.float32'
        name = str(dt).removeprefix("torch.")
    return name


def _device_of(x) -> str:
    dev = getattr(x, "device", None)
    if dev is None or callable(dev):  # numpy has none; jax arrays have a method
        return "cpu"
    if getattr(dev, "platform", None) == "cpu":  # a JAX host device prints as 'cpu:0'
        return "cpu"
    return str(dev)


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


@dataclass(frozen=True)
class Problem:
    """Sizes derived from validated arguments."""

    B: int
    T: int
    H: int
    HV: int
    K: int
    V: int
    N: int  # number of sequences (B, or len(cu_seqlens) - 1)
    scale: float
    dtype: str  # dtype of q, k, v
    device: str
    seq_lens: tuple[int, ...]  # per sequence, from cu_seqlens or (T,) * B

    @property
    def group(self) -> int:
        """Value heads per key head."""
        return self.HV // self.H


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _check_array(name: str, x, ndim: int, shape_desc: str) -> None:
    if not _is_array(x):
        raise _fail(name, f"a tensor of shape {shape_desc}", type(x).__name__)
    if len(x.shape) != ndim:
        raise _fail(name, f"a {ndim}-D tensor of shape {shape_desc}", f"shape {tuple(x.shape)}")


def _finite_float(x) -> bool:
    """x converts to a finite float (an int beyond float's range does not)."""
    try:
        return math.isfinite(float(x))
    except OverflowError:
        return False


def _cu_seqlens_values(cu_seqlens) -> np.ndarray:
    if hasattr(cu_seqlens, "detach"):  # torch: one host read, needed to size the chunk map
        return cu_seqlens.detach().cpu().numpy()
    return np.asarray(cu_seqlens)


def validate(
    q,
    k,
    v,
    g,
    beta,
    scale=None,
    initial_state=None,
    output_final_state=False,
    cu_seqlens=None,
    l2norm=False,
    *,
    l2norm_arg: str = "l2norm",
) -> Problem:
    """Check the GDN arguments against the contract (docs/design.md, 'Input contract');
    return the problem sizes.

    l2norm_arg is the caller's name for the l2norm flag (the kernels call it
    use_qk_l2norm_in_kernel), so the error names the argument the user passed.
    """
    _check_array("q", q, 4, "[B, T, H, K]")
    B, T, H, K = (int(s) for s in q.shape)
    if _is_torch(q):
        # Torch callees (the kernels) use every array argument as a torch tensor.
        for name, x in (("k", k), ("v", v), ("g", g), ("beta", beta), ("initial_state", initial_state),
                        ("cu_seqlens", cu_seqlens)):
            if _is_array(x) and not _is_torch(x):
                raise _fail(name, "a torch tensor (q is one)", f"{type(x).__module__}.{type(x).__name__}")
    _check_array("k", k, 4, "[B, T, H, K]")
    if tuple(k.shape) != tuple(q.shape):
        raise _fail("k", f"shape {tuple(q.shape)} (same as q)", f"shape {tuple(k.shape)}")
    _check_array("v", v, 4, "[B, T, HV, V]")
    if tuple(v.shape[:2]) != (B, T):
        raise _fail("v", f"shape [{B}, {T}, HV, V] (B and T of q)", f"shape {tuple(v.shape)}")
    HV, V = int(v.shape[2]), int(v.shape[3])
    if H < 1:
        raise _fail("q", "at least one head (H >= 1)", f"shape {tuple(q.shape)}")
    if HV < 1 or HV % H != 0:
        raise _fail("v", f"a value-head count HV that is a positive multiple of H = {H}", f"HV = {HV}")
    for name, dim in (("q", K), ("v", V)):
        if not 1 <= dim <= MAX_HEAD_DIM:
            what = "K" if name == "q" else "V"
            raise _fail(name, f"head dimension {what} in 1..{MAX_HEAD_DIM}", f"{what} = {dim}")
    for name, x in (("g", g), ("beta", beta)):
        _check_array(name, x, 3, "[B, T, HV]")
        if tuple(x.shape) != (B, T, HV):
            raise _fail(name, f"shape ({B}, {T}, {HV}) = [B, T, HV]", f"shape {tuple(x.shape)}")

    dtype = dtype_name(q)
    if dtype not in SUPPORTED_DTYPES:
        raise _fail("q", f"dtype in {SUPPORTED_DTYPES}", dtype)
    for name, x in (("k", k), ("v", v)):
        if dtype_name(x) != dtype:
            raise _fail(name, f"dtype {dtype} (same as q)", dtype_name(x))
    gate_dtypes = tuple(sorted({dtype, "float32"}))
    for name, x in (("g", g), ("beta", beta)):
        if dtype_name(x) not in gate_dtypes:
            raise _fail(name, f"dtype in {gate_dtypes} (q's dtype or float32)", dtype_name(x))

    device = _device_of(q)
    for name, x in (("k", k), ("v", v), ("g", g), ("beta", beta)):
        if _device_of(x) != device:
            raise _fail(name, f"a tensor on {device} (q's device)", f"device {_device_of(x)}")

    if cu_seqlens is None:
        N = B
        seq_lens = (T,) * B
    else:
        if not _is_array(cu_seqlens):
            raise _fail("cu_seqlens", "a 1-D int32/int64 tensor [N+1]", type(cu_seqlens).__name__)
        if dtype_name(cu_seqlens) not in ("int32", "int64"):
            raise _fail("cu_seqlens", "dtype int32 or int64", dtype_name(cu_seqlens))
        if len(cu_seqlens.shape) != 1 or cu_seqlens.shape[0] < 2:
            raise _fail("cu_seqlens", "a 1-D tensor of at least 2 offsets [N+1]", f"shape {tuple(cu_seqlens.shape)}")
        if _device_of(cu_seqlens) != device:
            raise _fail("cu_seqlens", f"a tensor on {device} (q's device)", f"device {_device_of(cu_seqlens)}")
        if B != 1:
            raise _fail("q", "batch size B = 1 when cu_seqlens packs the sequences", f"B = {B}")
        offsets = _cu_seqlens_values(cu_seqlens).astype(np.int64)
        if offsets[0] != 0:
            raise _fail("cu_seqlens", "first offset 0", f"cu_seqlens[0] = {offsets[0]}")
        steps = np.diff(offsets)
        if (steps < 0).any():
            i = int(np.argmax(steps < 0))
            raise _fail(
                "cu_seqlens", "non-decreasing offsets",
                f"cu_seqlens[{i}] = {offsets[i]} > cu_seqlens[{i + 1}] = {offsets[i + 1]}",
            )
        if offsets[-1] != T:
            raise _fail("cu_seqlens", f"last offset equal to T = {T}", f"cu_seqlens[-1] = {offsets[-1]}")
        N = len(offsets) - 1
        seq_lens = tuple(int(s) for s in steps)

    if initial_state is not None:
        _check_array("initial_state", initial_state, 4, "[N, HV, K, V]")
        if tuple(initial_state.shape) != (N, HV, K, V):
            raise _fail("initial_state", f"shape ({N}, {HV}, {K}, {V}) = [N, HV, K, V]", f"shape {tuple(initial_state.shape)}")
        state_dtypes = ("float64",) if dtype == "float64" else ("float32",)
        if dtype_name(initial_state) not in state_dtypes:
            raise _fail("initial_state", f"dtype {state_dtypes[0]}", dtype_name(initial_state))
        if _device_of(initial_state) != device:
            raise _fail("initial_state", f"a tensor on {device} (q's device)", f"device {_device_of(initial_state)}")

    if scale is None:
        scale = K**-0.5
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not _finite_float(scale):
        text = repr(scale)
        shown = text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"
        raise _fail("scale", "None or a finite real number", shown)
    for name, flag in (("output_final_state", output_final_state), (l2norm_arg, l2norm)):
        if not isinstance(flag, bool):
            raise _fail(name, "a bool", repr(flag))

    return Problem(B=B, T=T, H=H, HV=HV, K=K, V=V, N=N, scale=float(scale), dtype=dtype,
                   device=device, seq_lens=seq_lens)
