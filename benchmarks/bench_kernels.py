"""Chunked forward (kernels/chunk.py) at the anchor shapes (docs/design.md, 'Benchmark shapes
and targets'): latency, bf16 accuracy, compiled variants and cold start. CUDA only.

Shapes: H = 16, HV = 32, K = V = 128, bfloat16, initial and final state, l2norm in the
kernel; one sequence of T = 1024 / 4096 / 16384 / 65536, and 256 packed sequences of 1..128
tokens. Each is timed with `triton.testing.do_bench` (median):
* eager: a plain Python call (validation, chunk map, launches included when the host is
  slower than the device);
* graph: the same call replayed from a CUDA graph, the device time alone (dense only: a packed
  call reads cu_seqlens on the host once, which a graph cannot capture).

Stages: the chunk map, cumsum, kkt_solve, the recurrence and the output timed
alone from CUDA graphs at T = 65536 and packed, to say what limits the time.

Accuracy: RMS error ratio of o against the float64 recurrent reference computed on the GPU,
for T = 1, 63, 64, 65, 1000, 16384, beside the ratio that rounding the exact o to bf16 alone
gives. Compiled variants: per kernel, after T = 64 alone and after the sweep T = 1, 16, 32,
63, 64, 65, 128, 1000 (they must be equal). Cold start: the first call's wall time with an
empty Triton cache (a fresh TRITON_CACHE_DIR unless one is set), its inputs already on the
device (benchmarks/cold_start.py measures it over several fresh processes).

    python benchmarks/bench_kernels.py [--json bench_kernels.json]
"""

import os
import tempfile

# Before Triton is imported: the first call below then compiles from scratch.
os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="triton-cache-"))

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import triton  # noqa: E402
import triton.testing  # noqa: E402

from gdn_verify.bench_shapes import BENCH_DENSE_T, BENCH_DTYPE, BENCH_MODEL, bench_packed_lengths  # noqa: E402
from gdn_verify.compare import rms_ratio  # noqa: E402
from gdn_verify.kernels import chunk_gated_delta_rule, compiled_variants  # noqa: E402
from gdn_verify.kernels.chunk import chunk_stage_calls  # noqa: E402
from gdn_verify.platform import fingerprint  # noqa: E402
from gdn_verify.reference import recurrent_gated_delta_rule  # noqa: E402

H, HV, K, V = BENCH_MODEL["H"], BENCH_MODEL["HV"], BENCH_MODEL["K"], BENCH_MODEL["V"]
DTYPE = getattr(torch, BENCH_DTYPE)
DENSE_TS = BENCH_DENSE_T
ACCURACY_TS = (1, 63, 64, 65, 1000, 16384)
SWEEP_TS = (1, 16, 32, 63, 64, 65, 128, 1000)
# docs/design.md, 'Benchmark shapes and targets': upstream anchor times, and this project's
# targets (about half).
ANCHOR_MS = {1024: 0.43, 4096: 0.42, 16384: 0.96, 65536: 3.87, "packed": 1.54}
TARGET_MS = {1024: 0.1, 65536: 1.9, "packed": 0.75}
TARGET_RMS_RATIO = 0.0020
COPY_BANDWIDTH = 4.27e12  # bytes/s (docs/design.md, 'Benchmark shapes and targets')


def make_inputs(seq_lens: list[int], packed: bool, seed: int, dev: str = "cuda") -> dict:
    """bf16 inputs on dev (the GPU): q, k, v normal (l2norm in the kernel), g mild in [-0.1, 0],
    beta = sigmoid(normal), a random initial state."""
    gen = torch.Generator(device=dev).manual_seed(seed)
    B, T = (1, sum(seq_lens)) if packed else (len(seq_lens), seq_lens[0])
    N = len(seq_lens)

    def randn(*shape):
        return torch.randn(shape, device=dev, generator=gen)

    inputs = dict(
        q=randn(B, T, H, K).to(DTYPE), k=randn(B, T, H, K).to(DTYPE), v=randn(B, T, HV, V).to(DTYPE),
        g=-0.1 * torch.rand((B, T, HV), device=dev, generator=gen),
        beta=torch.sigmoid(randn(B, T, HV)).to(DTYPE),
        initial_state=randn(N, HV, K, V), output_final_state=True, use_qk_l2norm_in_kernel=True,
    )
    if packed:
        offsets = torch.tensor([0] + seq_lens, device=dev).cumsum(0)
        inputs["cu_seqlens"] = offsets.to(torch.int32)
    return inputs


def packed_lengths() -> list[int]:
    return bench_packed_lengths()


def bytes_moved(inputs: dict, o: torch.Tensor, final_state: torch.Tensor) -> int:
    tensors = [t for t in inputs.values() if isinstance(t, torch.Tensor)] + [o, final_state]
    return sum(t.numel() * t.element_size() for t in tensors)


def variant_sweep() -> dict:
    def run(T: int) -> None:
        chunk_gated_delta_rule(**make_inputs([T], packed=False, seed=T))

    first = make_inputs([64], packed=False, seed=64)
    torch.cuda.synchronize()  # CUDA is initialised and the inputs are made before the clock starts
    start = time.perf_counter()
    chunk_gated_delta_rule(**first)
    torch.cuda.synchronize()
    first_call_s = time.perf_counter() - start
    after_t64 = compiled_variants()
    for T in SWEEP_TS:
        run(T)
    torch.cuda.synchronize()
    after_sweep = compiled_variants()
    return {"first_call_s": first_call_s, "after_t64": after_t64, "after_sweep": after_sweep,
            "same": after_t64 == after_sweep}


def latency_rows() -> list[dict]:
    rows = []
    cases = [(T, [T], False) for T in DENSE_TS] + [("packed", packed_lengths(), True)]
    for name, lens, packed in cases:
        inputs = make_inputs(lens, packed, seed=7)

        def step():
            return chunk_gated_delta_rule(**inputs)

        o, final_state = step()  # compiled outside the timing
        torch.cuda.synchronize()
        moved = bytes_moved(inputs, o, final_state)
        for mode in ("eager", "graph") if not packed else ("eager",):
            if mode == "graph":
                ms = triton.testing.do_bench_cudagraph(step, rep=200, return_mode="median")
            else:
                ms = triton.testing.do_bench(step, warmup=25, rep=200, return_mode="median")
            rows.append({"shape": name, "T": sum(lens), "sequences": len(lens), "mode": mode,
                         "median_ms": ms, "anchor_ms": ANCHOR_MS[name], "target_ms": TARGET_MS.get(name),
                         "bytes": moved, "copy_floor_ms": moved / COPY_BANDWIDTH * 1e3})
        del inputs, o, final_state
        torch.cuda.empty_cache()
    return rows


STAGE_SHAPES = ((65536, [65536], False), ("packed", None, True))  # None: packed_lengths()


def stage_rows() -> list[dict]:
    """Each stage of the fast path timed alone (device time, CUDA graph) at T = 65536 and packed."""
    rows = []
    for name, lens, packed in STAGE_SHAPES:
        x = make_inputs(lens or packed_lengths(), packed, seed=7)
        for stage, fn in chunk_stage_calls(**x).items():
            fn()
            torch.cuda.synchronize()
            ms = triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")
            rows.append({"shape": name, "stage": stage, "median_ms": ms})
        del x
        torch.cuda.empty_cache()
    return rows


def accuracy_rows(ts: tuple[int, ...] = ACCURACY_TS) -> list[dict]:
    rows = []
    for T in ts:
        inputs = make_inputs([T], packed=False, seed=T + 1)
        o, final_state = chunk_gated_delta_rule(**inputs)
        ref_args = {name: x for name, x in inputs.items() if name != "use_qk_l2norm_in_kernel"}
        ref_o, ref_state = recurrent_gated_delta_rule(**ref_args, l2norm=True)
        rows.append({"T": T, "o_rms_ratio": rms_ratio(o, ref_o),
                     "bf16_rounding_rms_ratio": rms_ratio(ref_o.to(DTYPE), ref_o),
                     "final_state_rms_ratio": rms_ratio(final_state, ref_state),
                     "finite": bool(torch.isfinite(o).all() and torch.isfinite(final_state).all())})
        del inputs, o, final_state, ref_o, ref_state
        torch.cuda.empty_cache()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="bench_kernels.json", help="results file (default: %(default)s)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernels: needs a CUDA device", file=sys.stderr)
        return 2

    variants = variant_sweep()
    latency = latency_rows()
    stages = stage_rows()
    accuracy = accuracy_rows()

    env = fingerprint("cuda")
    print(f"{env['gpu_name']}, torch {env['torch']}, triton {env['triton']}; "
          f"H={H} HV={HV} K={K} V={V} {str(DTYPE).removeprefix('torch.')}, h0 + final state, l2norm")
    print(f"{'shape':>8} {'T':>6} {'mode':<6} {'median ms':>10} {'anchor':>7} {'target':>7} {'copy floor':>11}")
    for r in latency:
        target = r["target_ms"]
        mark = "" if target is None else ("ok" if r["median_ms"] <= target else "MISS")
        print(f"{r['shape']!s:>8} {r['T']:>6} {r['mode']:<6} {r['median_ms']:>10.4f} {r['anchor_ms']:>7.2f} "
              f"{'' if target is None else f'{target:.2f}':>7} {r['copy_floor_ms']:>11.4f}  {mark}")
    print("stages alone (device time, CUDA graph): " + ", ".join(
        f"{r['shape']}/{r['stage']} {r['median_ms']:.4f} ms" for r in stages))
    print(f"{'T':>6} {'o RMS ratio':>12} {'bf16 rounding':>14} {'state RMS ratio':>16}")
    for r in accuracy:
        mark = "ok" if r["o_rms_ratio"] <= TARGET_RMS_RATIO and r["finite"] else "MISS"
        print(f"{r['T']:>6} {r['o_rms_ratio']:>12.5f} {r['bf16_rounding_rms_ratio']:>14.5f} "
              f"{r['final_state_rms_ratio']:>16.3g}  {mark}")
    print(f"compiled variants after T=64: {variants['after_t64']}")
    print(f"compiled variants after sweep {SWEEP_TS}: {variants['after_sweep']} "
          f"({'same' if variants['same'] else 'DIFFERENT'})")
    print(f"cold start (first call, empty cache): {variants['first_call_s']:.2f} s")
    with open(args.json, "w") as f:
        json.dump({"benchmark": "chunk_gated_delta_rule", "environment": env,
                   "shape": {"H": H, "HV": HV, "K": K, "V": V, "dtype": str(DTYPE).removeprefix("torch."),
                             "initial_state": True, "final_state": True, "l2norm": True},
                   "latency": latency, "stages": stages, "accuracy": accuracy, "target_rms_ratio": TARGET_RMS_RATIO,
                   "variants": variants}, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
