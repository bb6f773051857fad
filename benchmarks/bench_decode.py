"""Decode latency of the recurrent kernel: one token per sequence, the anchor shapes of
docs/design.md, 'Benchmark shapes and targets' (H = 16, HV = 32, K = V = 128, bf16, initial
and final state), 1 / 64 / 256
sequences. CUDA only.

Each batch size is timed three ways (median of `triton.testing.do_bench`):
* dense: q [N, 1, H, K], no cu_seqlens; a plain Python call, so host work (validation,
  launch) is inside the time when it exceeds the kernel's;
* dense-graph: the same call replayed from a CUDA graph: the device time alone, what a
  server that captures its decode step sees;
* varlen: q [1, N, H, K] with cu_seqlens, the packed serving layout; validation reads
  cu_seqlens on the host (one device sync per call).

Bandwidth is the bytes every call must move (inputs read, outputs written; the float32 state
dominates) over the median time.

    python benchmarks/bench_decode.py [--json results.json]
"""

import argparse
import json
import sys

import torch
import triton
import triton.testing

from gdn_verify.bench_shapes import BENCH_DECODE_SEQUENCES, BENCH_DTYPE, BENCH_MODEL
from gdn_verify.kernels.fused_recurrent import BLOCK_V, fused_recurrent_gated_delta_rule, num_warps_for
from gdn_verify.platform import fingerprint

H, HV, K, V = BENCH_MODEL["H"], BENCH_MODEL["HV"], BENCH_MODEL["K"], BENCH_MODEL["V"]
DTYPE = getattr(torch, BENCH_DTYPE)
SEQUENCES = BENCH_DECODE_SEQUENCES
# Anchor kernels 0.20 / 0.24 / 0.37 ms (docs/design.md, 'Benchmark shapes and targets');
# targets below.
TARGET_MS = {1: 0.05, 64: 0.1, 256: 0.3}


def decode_inputs(n: int, packed: bool) -> dict:
    """One token for each of n sequences, on the GPU."""
    B, T = (1, n) if packed else (n, 1)
    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(n)

    def unit(shape):
        x = torch.randn(shape, device=dev, generator=gen)
        return (x / x.norm(dim=-1, keepdim=True)).to(DTYPE)

    inputs = dict(
        q=unit((B, T, H, K)), k=unit((B, T, H, K)),
        v=torch.randn((B, T, HV, V), device=dev, generator=gen).to(DTYPE),
        g=-0.1 * torch.rand((B, T, HV), device=dev, generator=gen),
        beta=torch.rand((B, T, HV), device=dev, generator=gen).to(DTYPE),
        initial_state=torch.randn((n, HV, K, V), device=dev, generator=gen),
        output_final_state=True,
    )
    if packed:
        inputs["cu_seqlens"] = torch.arange(n + 1, dtype=torch.int32, device=dev)
    return inputs


def bytes_moved(inputs: dict, o: torch.Tensor, final_state: torch.Tensor) -> int:
    tensors = [t for t in inputs.values() if isinstance(t, torch.Tensor)] + [o, final_state]
    return sum(t.numel() * t.element_size() for t in tensors)


def time_ms(fn, graph: bool) -> float:
    if graph:
        return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="bench_decode.json", help="results file (default: %(default)s)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_decode: needs a CUDA device", file=sys.stderr)
        return 2

    rows = []
    for n in SEQUENCES:
        for mode in ("dense", "dense-graph", "varlen"):
            inputs = decode_inputs(n, packed=mode == "varlen")

            def step():
                return fused_recurrent_gated_delta_rule(**inputs)

            o, final_state = step()  # compile outside the timing
            torch.cuda.synchronize()
            ms = time_ms(step, graph=mode == "dense-graph")
            moved = bytes_moved(inputs, o, final_state)
            rows.append({"sequences": n, "mode": mode, "median_ms": ms, "target_ms": TARGET_MS[n],
                         "bytes": moved, "bandwidth_tb_s": moved / (ms * 1e-3) / 1e12})
            del inputs, o, final_state

    env = fingerprint("cuda")
    config = {"BV": BLOCK_V, "num_warps": num_warps_for(K, BLOCK_V)}
    print(f"{env['gpu_name']}, torch {env['torch']}, triton {env['triton']}; "
          f"H={H} HV={HV} K={K} V={V} {str(DTYPE).removeprefix('torch.')}, {config}")
    print(f"{'seqs':>5} {'mode':<12} {'median ms':>10} {'target':>7} {'MB moved':>9} {'TB/s':>6}")
    for r in rows:
        mark = "ok" if r["median_ms"] <= r["target_ms"] else "MISS"
        print(f"{r['sequences']:>5} {r['mode']:<12} {r['median_ms']:>10.4f} {r['target_ms']:>7.2f} "
              f"{r['bytes'] / 1e6:>9.1f} {r['bandwidth_tb_s']:>6.2f}  {mark}")
    with open(args.json, "w") as f:
        json.dump({"benchmark": "decode", "environment": env,
                   "shape": {"H": H, "HV": HV, "K": K, "V": V, "dtype": str(DTYPE).removeprefix("torch.")},
                   "config": config, "rows": rows}, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
