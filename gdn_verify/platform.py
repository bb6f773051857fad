"""Platform fingerprints: what a result's bits depend on, recorded with every result.

Golden tensors are compared bit for bit only between runs whose `platform_key` is equal.

Compiled (CUDA): the bits depend on the GPU architecture and the Triton compiler (which
brings its own ptxas), so the key is backend + arch + Triton version.

Interpreter (CPU): Triton's interpreter runs elementwise math as NumPy ufuncs and each `tl.dot`
as `numpy.matmul`. Three things made those bits depend on the CPU model, and each is removed:

* BLAS: `numpy.matmul` is OpenBLAS, whose kernel family (Haswell, SkylakeX, ...) and thread
  count set the summation order. Our kernels' `dot` never calls it under the interpreter
  (`kernels/_triton_compat.py`: exactly rounded products summed in a fixed pairwise order),
  so neither OpenBLAS's kernels nor its threads reach the bits, and `OPENBLAS_CORETYPE` is
  left as the machine sets it.
* NumPy's SIMD dispatch: exp, log and other ufuncs have one implementation per ISA level.
  `pin_cpu_dispatch` disables NumPy's targets above x86-64-v3 (AVX2 + FMA) before NumPy loads
  (`NPY_DISABLE_CPU_FEATURES`), so an AVX-512 machine runs the same code as an AVX2 one.
* torch's CPU kernels (input generation, the launchers' torch ops): capped the same way with
  `ATEN_CPU_CAPABILITY=avx2`.

The key names that baseline ("x86-64-v3") when both caps are in effect, and the dispatch
levels actually in effect otherwise, so a run without the caps never claims the baseline.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import re
import subprocess
import sys
from pathlib import Path

BLAS_THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
INTERPRETER_BACKEND = "cpu-interpreter"
CUDA_BACKEND = "cuda"

# The interpreter's ISA baseline: what NumPy and torch dispatch to once capped by
# CPU_DISPATCH_ENV, on every x86-64 CPU with AVX2 and FMA.
INTERPRETER_BASELINE = "x86-64-v3"
BASELINE_NUMPY_SIMD = "X86_V3"
BASELINE_TORCH_CAPABILITY = "AVX2"
CPU_DISPATCH_ENV = {
    # NumPy's dispatch targets above X86_V3 (NumPy >= 2.4 names; older releases' AVX-512
    # names too, which newer ones ignore).
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR AVX512F AVX512CD AVX512_KNL AVX512_KNM "
                                "AVX512_SKX AVX512_CLX AVX512_CNL AVX512_FP16",
    "ATEN_CPU_CAPABILITY": "avx2",
}


# --- OpenBLAS (NumPy's BLAS): what the fingerprint records ----------------------------------
# NumPy's wheels bundle OpenBLAS with prefixed symbols (scipy_openblas..., 64-bit-int builds
# with a "64_" suffix); the same calls threadpoolctl makes, without depending on it.
_OPENBLAS_PREFIXES = ("scipy_openblas", "openblas")
_OPENBLAS_SUFFIXES = ("64_", "")


def _loaded_openblas() -> list[ctypes.CDLL]:
    """The OpenBLAS libraries mapped into this process (Linux /proc only; else none)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line}
    except OSError:
        return []
    libs = []
    for path in sorted(paths):
        try:
            libs.append(ctypes.CDLL(path))
        except OSError:
            continue
    return libs


def _openblas_function(lib: ctypes.CDLL, stem: str):
    for prefix in _OPENBLAS_PREFIXES:
        for suffix in _OPENBLAS_SUFFIXES:
            fn = getattr(lib, f"{prefix}_{stem}{suffix}", None)
            if fn is not None:
                return fn
    return None


def _openblas_info() -> dict:
    """Thread count and kernel family of NumPy's OpenBLAS, as in effect now (None if unknown)."""
    import numpy  # noqa: F401  (loads NumPy's BLAS, so it can be found)

    for lib in _loaded_openblas():
        get_threads = _openblas_function(lib, "get_num_threads")
        get_core = _openblas_function(lib, "get_corename")
        if get_threads is None:
            continue
        core = None
        if get_core is not None:
            get_core.restype = ctypes.c_char_p
            core = get_core().decode()
        return {"threads": int(get_threads()), "core": core}
    return {"threads": None, "core": None}


def pin_cpu_dispatch(reexec: list[str] | None = None) -> bool:
    """Cap NumPy's and torch's SIMD dispatch at the interpreter baseline (CPU_DISPATCH_ENV).

    Both libraries read these variables once, when they load, so they are set here in the
    environment, leaving any value the user set. If NumPy or torch is already loaded in this
    process, the caps cannot act on it: with `reexec` (the arguments after the Python
    executable, e.g. ["-m", "gdn_verify", "run", ...]) the process replaces itself with a fresh
    one that has them set; without it, `fingerprint` records what is in effect and the key
    says so. Returns True when the caps are in effect for NumPy and torch as they load.
    Only on x86-64: other machines keep their own dispatch, which their key names.
    """
    if os.uname().machine != "x86_64":
        return False
    missing = {var: value for var, value in CPU_DISPATCH_ENV.items() if var not in os.environ}
    os.environ.update(missing)
    if not missing or not {"numpy", "torch"} & set(sys.modules):
        return True
    if reexec is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, *reexec])
    return False


# --- fingerprint -----------------------------------------------------------------------------


def _numpy_simd_level() -> str | None:
    """The highest SIMD target NumPy dispatches to on this CPU, e.g. 'X86_V3' or 'ASIMDHP'."""
    try:
        from numpy._core import _multiarray_umath as umath
    except ImportError:  # NumPy 1.x
        try:
            from numpy.core import _multiarray_umath as umath
        except ImportError:
            return None
    features = getattr(umath, "__cpu_features__", {})
    available = [t for t in getattr(umath, "__cpu_dispatch__", []) if features.get(t)]
    if available:
        return available[-1]
    baseline = list(getattr(umath, "__cpu_baseline__", []))
    return baseline[-1] if baseline else None


def _numpy_blas_library() -> str | None:
    import numpy

    try:
        deps = numpy.show_config(mode="dicts").get("Build Dependencies", {})
        blas = deps.get("blas", {})
        return f"{blas.get('name')} {blas.get('version')}".strip()
    except Exception:  # show_config's format is not a stable API; provenance only
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform as stdlib_platform

    return stdlib_platform.processor() or None


def run_git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit() -> dict:
    """{"commit": sha or None, "dirty": bool or None} of the checkout this package runs from.

    None when the package is not inside a git checkout of this project (e.g. an installed
    wheel), or git is missing; never raises.
    """
    package_root = Path(__file__).resolve().parent.parent
    toplevel = run_git(["rev-parse", "--show-toplevel"], package_root)
    if toplevel is None or Path(toplevel).resolve() != package_root:
        return {"commit": None, "dirty": None}
    commit = run_git(["rev-parse", "HEAD"], package_root)
    if commit is None:  # e.g. a checkout without commits
        return {"commit": None, "dirty": None}
    status = run_git(["status", "--porcelain", "--untracked-files=no"], package_root)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _parse_device(device: str) -> tuple[str, int | None]:
    match = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", str(device))
    if match is None:
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return match.group(1), None if match.group(2) is None else int(match.group(2))


def fingerprint(device: str) -> dict:
    """Everything a run's bits may depend on, plus provenance (JSON-serializable)."""
    import numpy
    import torch
    import triton

    from gdn_verify import __version__

    kind, index = _parse_device(device)
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    fp: dict = {
        # The interpreter computes on the host whatever the tensors' device, so its bits are
        # the CPU interpreter's.
        "backend": INTERPRETER_BACKEND if kind == "cpu" or interpret else CUDA_BACKEND,
        "device": str(device),
        "triton_interpret": interpret,
        "cuda_arch": None,
        "gpu_name": None,
        "cuda_runtime": torch.version.cuda,
        "triton": triton.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "machine": os.uname().machine if hasattr(os, "uname") else None,
        "cpu_model": _cpu_model(),
        "numpy_simd": _numpy_simd_level(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas_library": _numpy_blas_library(),
    }
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} asked for, but torch sees no CUDA device")
        dev = torch.device("cuda", torch.cuda.current_device() if index is None else index)
        major, minor = torch.cuda.get_device_capability(dev)
        fp["cuda_arch"] = f"sm{major}{minor}"
        fp["gpu_name"] = torch.cuda.get_device_name(dev)
    blas = _openblas_info()
    fp["blas_core"] = blas["core"]
    fp["threads"] = {
        "torch": torch.get_num_threads(),
        "blas": blas["threads"],
        "env": {var: os.environ.get(var) for var in BLAS_THREAD_ENV_VARS},
    }
    git = git_commit()
    fp["gdn_verify"] = __version__
    fp["git_commit"] = git["commit"]
    fp["git_dirty"] = git["dirty"]
    fp["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return fp


# --- keys --------------------------------------------------------------------------------------


def _safe(text) -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", str(text))


def simd_baseline(fp: dict) -> str:
    """The interpreter's dispatch level as the key names it: the baseline, or what is in effect."""
    numpy_simd, torch_cap = fp.get("numpy_simd"), fp.get("torch_cpu_capability")
    if numpy_simd == BASELINE_NUMPY_SIMD and torch_cap == BASELINE_TORCH_CAPABILITY:
        return INTERPRETER_BASELINE
    return f"numpy{numpy_simd or 'NA'}-aten{torch_cap or 'NA'}"


def platform_key(fp: dict) -> str:
    """A short, file-name-safe key; two fingerprints' bits are comparable iff their keys are equal.

    e.g. "cuda-sm90-triton3.6.0" or
    "cpu-interpreter-x86-64-v3-triton3.9.0-torch2.13.0_cpu-numpy2.4.6".
    """
    try:
        if fp["backend"] == CUDA_BACKEND:
            parts = ["cuda", fp["cuda_arch"], f"triton{fp['triton']}"]
        elif fp["backend"] == INTERPRETER_BACKEND:
            parts = [INTERPRETER_BACKEND, simd_baseline(fp), f"triton{fp['triton']}", f"torch{fp['torch']}",
                     f"numpy{fp['numpy']}"]
        else:
            raise ValueError(f"fp['backend']: expected 'cuda' or 'cpu-interpreter', got {fp['backend']!r}")
    except KeyError as missing:
        raise ValueError(f"fp: not a fingerprint, missing {missing}") from None
    return "-".join(_safe(p) for p in parts)


def comparable(a: dict, b: dict) -> bool:
    """True when bits of runs with these fingerprints should match exactly."""
    return platform_key(a) == platform_key(b)


def describe(fp: dict) -> str:
    """One line for "not comparable" messages."""
    if fp.get("backend") == CUDA_BACKEND:
        where = f"cuda {fp.get('cuda_arch')} ({fp.get('gpu_name')})"
    else:
        t = fp.get("threads", {})
        where = (
            f"cpu-interpreter on {fp.get('cpu_model')} [numpy {fp.get('numpy_simd')}, "
            f"torch {fp.get('torch_cpu_capability')}, OpenBLAS {fp.get('blas_core')}], "
            f"threads torch={t.get('torch')} blas={t.get('blas')}"
        )
    return (
        f"{where}; triton {fp.get('triton')}, torch {fp.get('torch')}, numpy {fp.get('numpy')}, "
        f"python {fp.get('python')}; gdn-verify {fp.get('gdn_verify')} @ {fp.get('git_commit')} on {fp.get('date')}"
    )
