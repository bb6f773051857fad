"""The chunk index map: which tokens each 64-token chunk covers.

Dense inputs (B sequences of T tokens) are treated as B packed sequences of the flattened
[B * T] token axis, so every stage sees one layout. Chunks never cross a sequence; the last
chunk of a sequence may be partial and a zero-length sequence has none. Chunks are numbered
globally in sequence order (docs/design.md, 'Chunked form').

The map is built with torch ops on the inputs' device, without reading anything back. Its size,
the chunk count NT, is known on the host because the contract already read cu_seqlens once to
validate it (Problem.seq_lens); that read is the only host sync of a packed call and none
happens for dense inputs. Kernels receive these tensors and every T-dependent count as runtime
values, so no specialization key depends on sequence lengths.

What is stored is the smallest map a kernel can read a chunk from: each sequence's first token
and first chunk, and each chunk's sequence. A chunk's first token and length follow from those
with two scalar loads (`chunk_span`), which keeps the map to 4 small device ops for a dense call
and 8 for a packed one: at short sequences the host's per-op cost, not the device, bounds the
latency.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from gdn_verify.contract import Problem

from ._common import CHUNK, CHUNK_SIZE


class ChunkMap(NamedTuple):
    seq_start: torch.Tensor  # [N + 1] int32: first (flattened) token of each sequence, then B * T
    seq_first_chunk: torch.Tensor  # [N + 1] int32: first chunk of each sequence, then NT
    chunk_seq: torch.Tensor  # [NT] int32: sequence of each chunk
    n_chunks: int  # NT

    @property
    def span_args(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The pointer arguments of `chunk_span`, in its order."""
        return self.chunk_seq, self.seq_start, self.seq_first_chunk

    @property
    def n_seqs(self) -> int:
        return self.seq_start.shape[0] - 1

    @property
    def chunk_start(self) -> torch.Tensor:
        """[NT] first (flattened) token of each chunk, as `chunk_span` computes it."""
        index = torch.arange(self.n_chunks, device=self.chunk_seq.device)
        seq = self.chunk_seq.long()
        return self.seq_start[seq] + CHUNK_SIZE * (index - self.seq_first_chunk[seq])

    @property
    def chunk_len(self) -> torch.Tensor:
        """[NT] tokens in each chunk, 1..64, as `chunk_span` computes it."""
        return torch.clamp(self.seq_start[self.chunk_seq.long() + 1] - self.chunk_start, max=CHUNK_SIZE)


def chunk_count(seq_lens) -> int:
    return sum(-(-n // CHUNK_SIZE) for n in seq_lens)


def _multiples(count: int, step: int, device) -> torch.Tensor:
    """[0, step, 2 step, ...] (count values), int32, in one op."""
    if step == 0:
        return torch.zeros(count, dtype=torch.int32, device=device)
    return torch.arange(0, count * step, step, dtype=torch.int32, device=device)


def build_chunk_map(problem: Problem, cu_seqlens: torch.Tensor | None, device) -> ChunkMap:
    n_chunks = chunk_count(problem.seq_lens)
    if cu_seqlens is None:
        per_seq = -(-problem.T // CHUNK_SIZE)
        seq_start = _multiples(problem.B + 1, problem.T, device)
        seq_first_chunk = _multiples(problem.B + 1, per_seq, device)
        chunk_seq = torch.div(torch.arange(n_chunks, dtype=torch.int32, device=device), max(per_seq, 1),
                              rounding_mode="floor")
    else:
        seq_start = cu_seqlens.to(device=device, dtype=torch.int32)
        counts = torch.div(torch.diff(seq_start) + (CHUNK_SIZE - 1), CHUNK_SIZE, rounding_mode="floor")
        seq_first_chunk = torch.nn.functional.pad(torch.cumsum(counts, 0, dtype=torch.int32), (1, 0))
        chunk_seq = torch.repeat_interleave(
            torch.arange(problem.N, dtype=torch.int32, device=device), counts, output_size=n_chunks)
    return ChunkMap(seq_start, seq_first_chunk, chunk_seq, n_chunks)


@triton.jit
def chunk_span(chunk, chunk_seq_ptr, seq_start_ptr, seq_first_chunk_ptr):
    """(first token as int64, number of tokens) of chunk `chunk`."""
    seq = tl.load(chunk_seq_ptr + chunk)
    first_token = tl.load(seq_start_ptr + seq).to(tl.int64) + CHUNK * (chunk - tl.load(seq_first_chunk_ptr + seq))
    length = tl.minimum(tl.load(seq_start_ptr + seq + 1) - first_token, CHUNK)
    return first_token, length
