"""An implementation with an autotuned kernel whose config changes its output bits, for testing
the autotune record and replay (gdn_verify/autotune.py) through `--impl autotuned_double:tuned_reference`.

`block_sum` adds 100 numbers in blocks of BLOCK: the association, so the float32 bits of the sum,
depend on the config the autotuner chose. Under Triton's interpreter an autotuner cannot time
configs (no driver), so a test settles the choice itself by setting `block_sum.cache[KEY]`,
as a machine's autotuning would have.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gdn_verify.reference import recurrent_gated_delta_rule

N = 100


@triton.autotune(configs=[triton.Config({"BLOCK": 8}), triton.Config({"BLOCK": 32}, num_warps=2)], key=["n"])
@triton.jit
def block_sum(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(out_ptr, tl.sum(acc, axis=0))


KEY = (N, "torch.float32", "torch.float32")  # the autotune key of every call here: n and the tensors' dtypes


def summed(x: torch.Tensor) -> torch.Tensor:
    out = torch.empty(1, dtype=torch.float32)
    block_sum[(1,)](x, out, x.numel())
    return out


def numbers() -> torch.Tensor:
    """2^24, then 99 ones: a one added to 2^24 in float32 is lost, so the sum depends on how
    many ones share a block lane with 2^24 (12 with BLOCK = 8, 3 with BLOCK = 32)."""
    x = torch.ones(N, dtype=torch.float32)
    x[0] = 2.0 ** 24
    return x


def tuned_reference(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                    use_qk_l2norm_in_kernel=False):
    """The float64 reference, o scaled by (block sum / exact sum), a factor within float32
    rounding of 1 whose bits depend on the autotuner's choice; rounded to the input dtype."""
    o, final_state = recurrent_gated_delta_rule(q, k, v, g, beta, scale, initial_state, True, cu_seqlens,
                                                use_qk_l2norm_in_kernel, dtype=torch.float64)
    x = numbers()
    factor = summed(x).double() / x.double().sum()
    state_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return (o * factor).to(v.dtype), final_state.to(state_dtype)
