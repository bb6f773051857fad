"""Stage 1: gam, the inclusive cumulative sum of the log decay g inside each chunk.

Each gate is first raised to the compute dtype's floor (`GATE_FLOOR`): below it the decay is
exactly 0 anyway, and the sums after it keep their precision.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gdn_verify.contract import GATE_FLOOR

from ._alloc import new_output
from ._common import CHUNK, next_power_of_2
from ._launch import launch
from .chunk_map import ChunkMap, chunk_span

# A [64, HV] tile of gates: two warps are plenty.
NUM_WARPS = 2


@triton.jit(do_not_specialize=["seq_len"])
def cumsum_kernel(g_ptr, g_cum_ptr, chunk_seq_ptr, seq_start_ptr, seq_first_chunk_ptr, seq_len, HV,
                  BLOCK_HV: tl.constexpr, FLOOR: tl.constexpr):
    """One program per chunk, all value heads: the chunk's [len, HV] gates are contiguous."""
    chunk = tl.program_id(0)
    t0, length = chunk_span(chunk, chunk_seq_ptr, seq_start_ptr, seq_first_chunk_ptr, seq_len)
    rows = tl.arange(0, CHUNK)
    heads = tl.arange(0, BLOCK_HV)
    mask = (rows < length)[:, None] & (heads < HV)[None, :]
    offsets = (t0 + rows)[:, None] * HV + heads[None, :]
    g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(g_cum_ptr.dtype.element_ty)
    g = tl.where(g < FLOOR, FLOOR, g)  # a comparison, not a max: NaN stays NaN
    tl.store(g_cum_ptr + offsets, tl.cumsum(g, axis=0), mask=mask)


def cumsum(g: torch.Tensor, chunks: ChunkMap, acc_dtype: torch.dtype) -> torch.Tensor:
    """g [B, T, HV] -> g_cum [B, T, HV] in acc_dtype."""
    g = g.contiguous()
    g_cum = new_output(g.shape, acc_dtype, g.device)
    if chunks.n_chunks:
        HV = g.shape[2]
        launch(cumsum_kernel, (chunks.n_chunks,), g, g_cum, *chunks.span_args, HV,
               BLOCK_HV=next_power_of_2(HV), FLOOR=GATE_FLOOR[str(acc_dtype).removeprefix("torch.")],
               num_warps=NUM_WARPS)
    return g_cum
