"""What the kernel test files share: a case's call in the common signature, the error ratio
against a float64 reference, and bitwise equality."""

import math

import torch

from gdn_verify.adapters import TOKEN_TENSORS, gdn_args, gdn_kwargs
from gdn_verify.bitwise import bit_diff
from gdn_verify.inputs import to_device

# Below float32's normal range (1.2e-38) a value cannot be carried, and strong decay takes the
# reference's state there (17 tokens of g <= -1 with beta = 0: about 1e-111). Errors are
# measured against the reference's norm floored at this size per element, far below any value
# that matters and far above what float32 can hold, so such a state compares as equal to zero
# instead of giving a ratio of 1.
NORM_FLOOR_PER_ELEMENT = 1e-30


def case_kwargs(inputs: dict, case, device: str) -> dict:
    """Keyword arguments of the common signature for `case` on `device` (without the l2norm flag,
    whose name differs between kernels and references)."""
    x = to_device(inputs, device)
    return dict(zip(TOKEN_TENSORS, gdn_args(x)), **gdn_kwargs(case, x))


def error_ratio(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """||actual - reference|| / max(||reference||, floor), in float64."""
    a, r = actual.detach().cpu().double(), reference.detach().cpu().double()
    floor = NORM_FLOOR_PER_ELEMENT * math.sqrt(max(r.numel(), 1))
    return (torch.linalg.vector_norm(a - r) / max(torch.linalg.vector_norm(r).item(), floor)).item()


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    diff = bit_diff(actual.detach().cpu(), expected.detach().cpu())
    assert diff.equal, f"{what}: {diff.summary()}"
