"""Compile time of each fast-path kernel for sm_90 (H100 / H200), measured without a GPU.

Triton compiles for a given target without a device: this script compiles the variant that
benchmarks/bench_kernels.py runs (bf16, H = 16, HV = 32, K = V = 128, l2norm in kernel,
initial and final state; the recurrence for one long sequence and for packed ones) with each
stage module's launch constants, times every compiler stage, and reads registers and spills
from `ptxas -v`. Cold start on the card is the sum of these compiles (one of the two
recurrences) plus CUDA and torch start-up, so a compile-time regression shows here, on a CPU
machine, before any GPU run. Each kernel's floating-point PTX instructions, in order, are
counted and digested (`fp_ops`): a change meant to leave the bits alone (host path, indexing)
that leaves every digest as it was changed no floating-point operation of this variant.

    python benchmarks/compile_sm90.py [--json compile_sm90.json] [--max-registers N]

--max-registers sets kkt_solve's and the output stage's MAX_REGISTERS (ptxas's cap) before they
compile: the registers, spills and floating-point digest a cap would give, without a GPU.

Use the Triton version of the GPU image (3.6) for numbers that match the card.
"""

import os

os.environ.pop("TRITON_INTERPRET", None)  # before Triton is imported: compile, never interpret

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import CUDABackend  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from gdn_verify.kernels import cumsum, kkt_solve, l2norm, output, recurrence  # noqa: E402
from gdn_verify.kernels._common import DOT_PRECISION, block_size  # noqa: E402

H, HV, K, V = 16, 32, 128, 128
# The recurrence's value block depends on how many programs fill the card: it compiles as it
# runs one long sequence and 256 packed ones on an H100.
H100_SMS = 132
INPUT = "bf16"
PRECISION = DOT_PRECISION["bfloat16"]
# Runtime ints and their values in the benchmark (Triton specializes ints divisible by 16).
INTS = {"H": H, "HV": HV, "K": K, "V": V, "GROUP": HV // H}
RAW_INPUTS = {"q_ptr", "k_ptr", "v_ptr", "beta_ptr", "o_ptr"}
INDEX_MAPS = {"chunk_seq_ptr", "seq_start_ptr", "seq_first_chunk_ptr"}
FLOAT_SCALARS = {"scale_hi", "scale_lo"}


def kernels() -> list[tuple[str, object, dict, dict]]:
    """(name, jit function, constexprs, compile options) as each launcher would pass them."""
    bk = block_size(K)
    return [
        ("cumsum", cumsum.cumsum_kernel, dict(BLOCK_HV=triton.next_power_of_2(HV)),
         dict(num_warps=cumsum.NUM_WARPS)),
        ("l2norm", l2norm.l2norm_kernel, dict(ROWS=l2norm._ROWS, BK=bk), dict(num_warps=l2norm.NUM_WARPS)),
        ("kkt_solve", kkt_solve.kkt_solve_kernel,
         dict(BK=bk, K_STEP=min(bk, kkt_solve._K_STEP), L2NORM=True, STORE_A=False, PRECISION=PRECISION),
         dict(num_warps=kkt_solve.NUM_WARPS, maxnreg=kkt_solve.MAX_REGISTERS)),
        *((name, recurrence.recurrence_kernel,
           dict(BK=bk, BV=recurrence.state_value_block(K, V, pairs, H100_SMS), L2NORM=True, HAS_H0=True,
                STORE_FINAL=True, PRECISION=PRECISION),
           dict(num_warps=recurrence.NUM_WARPS, num_stages=recurrence.pipeline_stages(torch.bfloat16)))
          for name, pairs in (("recurrence", HV), ("recurrence_packed", 256 * HV))),
        ("output", output.output_kernel,
         dict(BK=bk, KB=min(bk, output.KEY_BLOCK), BV=output.VALUE_BLOCK, CHUNKS=output.CHUNKS_PER_PROGRAM,
              L2NORM=True, PRECISION=PRECISION),
         dict(num_warps=output.NUM_WARPS, num_stages=output.NUM_STAGES, maxnreg=output.MAX_REGISTERS)),
    ]


def source(fn, constexprs: dict) -> ASTSource:
    """The kernel's signature with the benchmark's argument types and 16-divisibility."""
    exempt = set((getattr(fn, "do_not_specialize", None) or ()))
    exempt |= {p.name for p in fn.params if getattr(p, "do_not_specialize", False)}
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in FLOAT_SCALARS:
            signature[name] = "fp32"
        elif name.endswith("_ptr"):
            signature[name] = ("*" + INPUT) if name in RAW_INPUTS else "*i32" if name in INDEX_MAPS else "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
            if name not in exempt and INTS.get(name, 1) % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)


def timed_stages(times: dict):
    """Wrap the CUDA backend's compiler stages so each one's seconds land in `times`."""
    original = CUDABackend.add_stages

    def add_stages(self, stages, options, *rest):
        original(self, stages, options, *rest)
        for name, stage in list(stages.items()):
            def timed(src, metadata, _stage=stage, _name=name):
                t = time.perf_counter()
                out = _stage(src, metadata)
                times[_name] = round(time.perf_counter() - t, 2)
                return out
            stages[name] = timed

    CUDABackend.add_stages = add_stages


# A floating-point PTX instruction: opcode and modifiers on an f32/f16/bf16/tf32/f64 type.
FP_OP = re.compile(r"^\s*((?:fma|add|sub|mul|div|rcp|ex2|lg2|sqrt|max|min|mma|wgmma|cvt)\.[a-z0-9.]*"
                   r"(?:f32|f16|bf16|f64|tf32)[a-z0-9.]*)", re.MULTILINE)


def fp_ops(ptx: str) -> dict:
    """The count and a digest of the floating-point instructions of `ptx`, in order."""
    ops = FP_OP.findall(ptx)
    return {"count": len(ops), "sha256": hashlib.sha256("\n".join(ops).encode()).hexdigest()[:16]}


def ptxas_report(ptx: str) -> dict:
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        done = subprocess.run([ptxas, "-arch=sm_90a", "-v", path, "-o", os.devnull], capture_output=True, text=True)
    err = done.stderr
    if done.returncode:  # Triton 3.9 emits PTX newer than the ptxas it ships at this path
        return {"registers": None, "spill_bytes": None, "ptxas_error": err.strip().splitlines()[-1]}
    regs = re.search(r"Used (\d+) registers", err)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", err)
    return {"registers": int(regs.group(1)) if regs else None,
            "spill_bytes": [int(spill.group(1)), int(spill.group(2))] if spill else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="compile_sm90.json", help="results file (default: %(default)s)")
    parser.add_argument("--max-registers", type=int, metavar="N",
                        help="kkt_solve's and output's MAX_REGISTERS (default: as shipped)")
    args = parser.parse_args()
    if args.max_registers is not None:
        kkt_solve.MAX_REGISTERS = output.MAX_REGISTERS = args.max_registers
    stage_times: dict = {}
    timed_stages(stage_times)
    rows = []
    # One throwaway compile first: the first compile of a process also loads the backend.
    name, fn, constexprs, options = kernels()[0]
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        triton.compile(source(fn, constexprs), target=GPUTarget("cuda", 90, 32), options=options)
    print(f"triton {triton.__version__}, target sm_90; bf16 H={H} HV={HV} K={K} V={V}, l2norm")
    print(f"{'kernel':<17} {'compile s':>9} {'registers':>9} {'spills st/ld':>13} {'fp ops':>6} {'fp digest':<16}  "
          "slowest stages")
    for name, fn, constexprs, options in kernels():
        stage_times.clear()
        with tempfile.TemporaryDirectory() as cache:
            os.environ["TRITON_CACHE_DIR"] = cache  # every kernel compiles cold
            t = time.perf_counter()
            compiled = triton.compile(source(fn, constexprs), target=GPUTarget("cuda", 90, 32), options=options)
            seconds = time.perf_counter() - t
        row = {"kernel": name, "compile_s": round(seconds, 2), "stages_s": dict(stage_times),
               "options": options, **ptxas_report(compiled.asm["ptx"]), "fp_ops": fp_ops(compiled.asm["ptx"])}
        rows.append(row)
        slow = ", ".join(f"{k} {v}" for k, v in sorted(stage_times.items(), key=lambda kv: -kv[1])[:2])
        fp = row["fp_ops"]
        print(f"{name:<17} {seconds:>9.2f} {row['registers'] or '-':>9} {str(row['spill_bytes']):>13} "
              f"{fp['count']:>6} {fp['sha256']:<16}  {slow}")
    total = sum(r["compile_s"] for r in rows)
    print(f"{'total':<17} {total:>9.2f}")
    from gdn_verify.platform import fingerprint

    with open(args.json, "w") as f:
        json.dump({"benchmark": "compile_sm90", "target": "cuda sm_90", "triton": triton.__version__,
                   "max_registers": {"kkt_solve": kkt_solve.MAX_REGISTERS, "output": output.MAX_REGISTERS},
                   "shape": {"H": H, "HV": HV, "K": K, "V": V, "dtype": "bfloat16", "l2norm": True},
                   "total_compile_s": round(total, 2), "rows": rows, "environment": fingerprint("cpu")}, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
