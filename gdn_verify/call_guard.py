"""The guard around a call of the implementation under test: it gets copies of its arguments,
each compared bit for bit with the original after the call, and its outputs must be what the
input contract promises; a breach raises `ContractViolation`, which fails the case."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from gdn_verify.conventions import TOKEN_TENSORS
from gdn_verify.designs import PrecisionDesign


class ContractViolation(Exception):
    """The implementation broke the contract of a call: wrote into an input, or returned
    outputs of another dtype, shape or device. `problems` says what, one line each."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = list(problems)


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
