"""What the kernel test files share: a case's call in the common signature, the error ratio
against a float64 reference, bitwise equality, and the invariants both kernels keep."""

import math

import torch

from gdn_verify.bitwise import bit_diff
from gdn_verify.cases import dense
from gdn_verify.conventions import TOKEN_TENSORS, gdn_args, gdn_kwargs
from gdn_verify.inputs import make_inputs, to_device

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


# Invariants both kernels must keep, each given the kernel as run(inputs, case, device) -> (o, final_state).

def check_empty_sequences_keep_state(run, case, device: str) -> None:
    """A zero-length sequence of a varlen batch returns its initial state (zeros without one), bit for bit."""
    inputs = make_inputs(case)
    _, final_state = run(inputs, case, device)
    initial = inputs.get("initial_state", torch.zeros(case.N, case.HV, case.K, case.V))
    for n, length in enumerate(case.seq_lens):
        if length == 0:
            assert_same_bits(final_state[n], initial[n], f"final_state of empty sequence {n}")


def check_deterministic(run, case, device: str) -> None:
    """The same call twice gives the same bits."""
    inputs = make_inputs(case)
    first = run(inputs, case, device)
    second = run(inputs, case, device)
    for name, a, b in zip(("o", "final_state"), first, second):
        assert_same_bits(a, b, name)


def check_alone_equals_varlen(run, case, device: str) -> None:
    """Batch invariance: every sequence of a varlen batch with an initial state, run on its own
    (dense, B = 1, its inputs views into the batch's), gives the same bits as inside the batch,
    where its chunks start at other offsets."""
    inputs = make_inputs(case)
    o, final_state = run(inputs, case, device)
    offsets = case.cu_seqlens
    for n, length in enumerate(case.seq_lens):
        if length == 0:
            continue
        lo, hi = offsets[n], offsets[n + 1]
        alone_case = dense(length, H=case.H, HV=case.HV, K=case.K, V=case.V, dtype=case.dtype, init_state="random")
        alone = {name: inputs[name][:, lo:hi] for name in TOKEN_TENSORS}
        alone["initial_state"] = inputs["initial_state"][n:n + 1]
        o_alone, state_alone = run(alone, alone_case, device)
        assert_same_bits(o[:, lo:hi], o_alone, f"o of sequence {n}")
        assert_same_bits(final_state[n:n + 1], state_alone, f"final_state of sequence {n}")
