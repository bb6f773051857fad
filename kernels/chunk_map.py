"""The chunk index map: which tokens each 64-token chunk covers.

Dense inputs (B sequences of T tokens) are treated as B packed sequences of the flattened
[B * T] token axis, so every stage sees one layout. Chunks never cross a sequence; the last
chunk of a sequence may be partial and a zero-length sequence has none. Chunks are numbered
globally in sequence order (docs/design.md, 'Chunked form').

For dense inputs the map is arithmetic: the kernels compute a chunk's sequence and span from T
(`seq_len`), and no map tensor is built, so a dense call spends no torch op on it and a
CUDA-graph capture of one records no map. For packed inputs it is built with torch ops on the
inputs' device, without reading anything back: each sequence's first token and first chunk, and
each chunk's sequence. Its size, the chunk count NT, is known on the host because the contract
already read cu_seqlens once to validate it (Problem.seq_lens); that read is the only host sync
of a packed call. No map is kept between calls: one kept per cu_seqlens could go stale when
the caller rewrites that tensor in place, and one built inside a CUDA-graph capture holds values
only once the graph replays.

Both kinds of call launch the same compiled variant of each kernel: `seq_len` is a runtime
argument exempt from specialization (-1 for packed inputs) and a dense call passes one
never-read int32 placeholder for the map's pointers, so no specialization key depends on T,
on sequence lengths or on the kind of call.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from gdn_verify.contract import Problem

from ._common import CHUNK, CHUNK_SIZE

# seq_len of a packed map: the kernels read the map's tensors.
PACKED = -1


class ChunkMap(NamedTuple):
    # Packed inputs: [N + 1] int32 first (flattened) token of each sequence, then B * T.
    # Dense inputs: the placeholder (the kernels never read it).
    seq_start: torch.Tensor
    seq_first_chunk: torch.Tensor  # [N + 1] int32: first chunk of each sequence, then NT (dense: the placeholder)
    chunk_seq: torch.Tensor  # [NT] int32: sequence of each chunk (dense: the placeholder)
    n_chunks: int  # NT
    n_seqs: int  # N
    seq_len: int  # tokens of every sequence for dense inputs, PACKED for packed ones

    @property
    def span_args(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """The arguments of `chunk_span` after the chunk, in its order."""
        return self.chunk_seq, self.seq_start, self.seq_first_chunk, self.seq_len

    @property
    def sequence_args(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The arguments of `sequence_span` after the sequence, in its order."""
        return self.seq_start, self.seq_first_chunk, self.seq_len


def chunk_count(seq_lens) -> int:
    return sum(-(-n // CHUNK_SIZE) for n in seq_lens)


@functools.cache
def _placeholder(device: torch.device) -> torch.Tensor:
    """The dense map's pointer arguments: one int32 element per device, allocated once and never
    read or written (torch.empty launches nothing, so a first call inside a CUDA-graph capture
    records nothing for it either)."""
    return torch.empty(1, dtype=torch.int32, device=device)


def build_chunk_map(problem: Problem, cu_seqlens: torch.Tensor | None, device) -> ChunkMap:
    n_chunks = chunk_count(problem.seq_lens)
    if cu_seqlens is None:
        unused = _placeholder(torch.device(device))
        return ChunkMap(unused, unused, unused, n_chunks, problem.B, problem.T)
    seq_start = cu_seqlens.to(device=device, dtype=torch.int32)
    counts = torch.div(torch.diff(seq_start) + (CHUNK_SIZE - 1), CHUNK_SIZE, rounding_mode="floor")
    seq_first_chunk = torch.nn.functional.pad(torch.cumsum(counts, 0, dtype=torch.int32), (1, 0))
    chunk_seq = torch.repeat_interleave(
        torch.arange(problem.N, dtype=torch.int32, device=device), counts, output_size=n_chunks)
    return ChunkMap(seq_start, seq_first_chunk, chunk_seq, n_chunks, problem.N, PACKED)


@triton.jit
def sequence_span(seq, seq_start_ptr, seq_first_chunk_ptr, seq_len):
    """(first token, end token, both int64, first chunk, end chunk) of sequence `seq`: read from
    the map for packed inputs (seq_len < 0), computed from seq_len for dense ones."""
    if seq_len < 0:
        bos = tl.load(seq_start_ptr + seq).to(tl.int64)
        eos = tl.load(seq_start_ptr + seq + 1).to(tl.int64)
        first_chunk = tl.load(seq_first_chunk_ptr + seq)
        end_chunk = tl.load(seq_first_chunk_ptr + seq + 1)
    else:
        per_seq = tl.cdiv(seq_len, CHUNK)
        bos = tl.cast(seq, tl.int64) * seq_len
        eos = bos + seq_len
        first_chunk = seq * per_seq
        end_chunk = first_chunk + per_seq
    return bos, eos, first_chunk, end_chunk


@triton.jit
def chunk_span(chunk, chunk_seq_ptr, seq_start_ptr, seq_first_chunk_ptr, seq_len):
    """(first token as int64, number of tokens) of chunk `chunk`."""
    if seq_len < 0:
        seq = tl.load(chunk_seq_ptr + chunk)
    else:
        seq = chunk // tl.cdiv(seq_len, CHUNK)
    bos, eos, first_chunk, _ = sequence_span(seq, seq_start_ptr, seq_first_chunk_ptr, seq_len)
    first_token = bos + CHUNK * (chunk - first_chunk)
    length = tl.minimum(eos - first_token, CHUNK)
    return first_token, length
