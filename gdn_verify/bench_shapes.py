"""The benchmark shapes (docs/design.md, 'Benchmark shapes and targets'), defined once for the
benchmark scripts (benchmarks/bench_kernels.py, bench_decode.py) and `gdn-verify compare --bench`:
H = 16, HV = 32, K = V = 128, bfloat16, initial and final state; one sequence of each T, 256
packed sequences of 1..128 tokens (fixed seed), and decode steps of one token for 1, 64, 256
sequences. Standard library only, so a benchmark script can import it before torch."""

from __future__ import annotations


BENCH_MODEL = dict(H=16, HV=32, K=128, V=128)
BENCH_DTYPE = "bfloat16"
BENCH_DENSE_T = (1024, 4096, 16384, 65536)
BENCH_PACKED_SEQS = 256
BENCH_PACKED_MAX_LEN = 128
BENCH_PACKED_SEED = 1234
BENCH_DECODE_SEQUENCES = (1, 64, 256)


def bench_packed_lengths() -> list[int]:
    """The 256 packed sequences' lengths, 1..128, drawn by torch from the fixed seed."""
    import torch

    gen = torch.Generator().manual_seed(BENCH_PACKED_SEED)
    return torch.randint(1, BENCH_PACKED_MAX_LEN + 1, (BENCH_PACKED_SEQS,), generator=gen).tolist()
