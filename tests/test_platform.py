import datetime
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import triton

import gdn_verify
from gdn_verify import platform as gplatform
from gdn_verify.platform import comparable, fingerprint, platform_key

KEY_CHARS = re.compile(r"^[A-Za-z0-9._-]+$")


def interpreter_fp(**changes) -> dict:
    fp = {
        "backend": "cpu-interpreter",
        "numpy_simd": "X86_V3",
        "torch_cpu_capability": "AVX2",
        "blas_core": "Haswell",
        "triton": "3.9.0",
        "torch": "2.13.0+cpu",
        "numpy": "2.4.6",
        "threads": {"torch": 1, "blas": 1, "env": {}},
        "python": "3.11.7",
        "git_commit": "abc",
        "date": "2026-01-01T00:00:00+00:00",
        "cpu_model": "AMD EPYC",
        "gdn_verify": "0.1.0",
    }
    fp.update(changes)
    return fp


def test_key_format():
    # The format is the spec: readable components, file-name safe.
    assert platform_key(interpreter_fp()) == (
        "cpu-interpreter-x86-64-v3-triton3.9.0-torch2.13.0_cpu-numpy2.4.6"
    )
    cuda = {"backend": "cuda", "cuda_arch": "sm90", "gpu_name": "NVIDIA H200", "triton": "3.6.0", "torch": "2.9.0"}
    assert platform_key(cuda) == "cuda-sm90-triton3.6.0"


def test_key_ignores_provenance_and_tracks_what_changes_bits():
    base = platform_key(interpreter_fp())
    for same in (
        {"python": "3.12.1"},
        {"git_commit": None},
        {"date": "2030-01-01"},
        {"cpu_model": "Intel Xeon"},
        {"gdn_verify": "9.9"},
        # Neither OpenBLAS's kernels nor thread counts reach the interpreter's bits any more.
        {"blas_core": "SkylakeX"},
        {"threads": {"torch": 2, "blas": 2}},
    ):
        assert platform_key(interpreter_fp(**same)) == base, same
    for different in (
        {"triton": "3.6.0"},
        {"torch": "2.9.0"},
        {"numpy": "2.3.0"},
        {"numpy_simd": "X86_V4"},
        {"numpy_simd": "AVX512_ICL"},
        {"numpy_simd": None},
        {"torch_cpu_capability": "AVX512"},
        {"torch_cpu_capability": "DEFAULT"},
    ):
        key = platform_key(interpreter_fp(**different))
        assert key != base and KEY_CHARS.match(key), different
    cuda = {"backend": "cuda", "cuda_arch": "sm90", "triton": "3.6.0", "torch": "2.9.0"}
    assert comparable(cuda, dict(cuda, torch="2.10.0", gpu_name="NVIDIA H100"))
    assert not comparable(cuda, dict(cuda, cuda_arch="sm100"))
    assert not comparable(cuda, dict(cuda, triton="3.7.0"))
    with pytest.raises(ValueError, match="backend"):
        platform_key(dict(cuda, backend="tpu"))
    with pytest.raises(ValueError, match="missing"):
        platform_key({"backend": "cuda"})


def test_fingerprint_of_this_process():
    fp = fingerprint("cpu")
    assert json.loads(json.dumps(fp)) == fp
    assert fp["backend"] == "cpu-interpreter" and fp["cuda_arch"] is None
    assert (fp["triton"], fp["torch"], fp["numpy"]) == (triton.__version__, torch.__version__, np.__version__)
    assert fp["python"] == ".".join(map(str, sys.version_info[:3]))
    assert fp["gdn_verify"] == gdn_verify.__version__
    assert fp["threads"]["torch"] == torch.get_num_threads()
    assert set(fp["threads"]["env"]) == {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"}
    datetime.datetime.fromisoformat(fp["date"])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(gdn_verify.__file__),
                          capture_output=True, text=True)
    assert fp["git_commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    # Stable within a process: only provenance (date) may change between calls.
    assert platform_key(fingerprint("cpu")) == platform_key(fp)
    assert KEY_CHARS.match(platform_key(fp))


def test_git_commit_never_fails(monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert gplatform.git_commit() == {"commit": None, "dirty": None}


def test_device_errors():
    with pytest.raises(ValueError, match="device"):
        fingerprint("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            fingerprint("cuda")


# Our chunk kernel under the interpreter on a case with K = V = 64 dots, in a fresh process with
# the given thread counts; prints the sha256 of its outputs' bytes.
_KERNEL_DIGEST = """
import hashlib, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from gdn_verify.cases import dense
from gdn_verify.conventions import gdn_args, gdn_kwargs
from gdn_verify.inputs import make_inputs
from gdn_verify.kernels import chunk_gated_delta_rule
case = dense(130, H=2, HV=4, K=64, V=64, dtype="float32", init_state="random", l2norm=True)
inputs = make_inputs(case)
o, s = chunk_gated_delta_rule(*gdn_args(inputs), **gdn_kwargs(case, inputs), use_qk_l2norm_in_kernel=True)
print(hashlib.sha256(o.numpy().tobytes() + s.numpy().tobytes()).hexdigest())
"""


def test_interpreter_bits_do_not_depend_on_thread_counts():
    """Why nothing pins thread counts: the interpreter's dots bypass BLAS (kernels/_triton_compat.py),
    so one and two torch / OpenBLAS / OpenMP threads give the same output bits."""
    digests = set()
    for n in ("1", "2"):
        env = dict(os.environ, TRITON_INTERPRET="1", **{var: n for var in gplatform.BLAS_THREAD_ENV_VARS})
        done = subprocess.run([sys.executable, "-c", _KERNEL_DIGEST, n], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        digests.add(done.stdout.strip())
    assert len(digests) == 1


# --- the interpreter's ISA baseline: each pin takes effect, and a changed pin changes the key ---

_DISPATCH = """
import json, numpy, torch
from numpy._core import _multiarray_umath as umath
from gdn_verify.platform import fingerprint, platform_key
fp = fingerprint("cpu")
dispatched = [t for t in umath.__cpu_dispatch__ if umath.__cpu_features__.get(t)]
print(json.dumps({"dispatched": dispatched, "torch": torch.backends.cpu.get_cpu_capability(),
                  "key": platform_key(fp)}))
"""


def _host_has_baseline() -> bool:
    from numpy._core import _multiarray_umath as umath

    return os.uname().machine == "x86_64" and bool(umath.__cpu_features__.get("AVX2")) and bool(
        umath.__cpu_features__.get("FMA3"))


def _dispatch_in(env_changes: dict, code: str = _DISPATCH) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in gplatform.CPU_DISPATCH_ENV}
    env.update(env_changes)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


needs_baseline = pytest.mark.skipif(not _host_has_baseline(), reason="needs an x86-64 CPU with AVX2 and FMA")


@needs_baseline
def test_dispatch_pins_take_effect_and_name_the_baseline():
    pinned = _dispatch_in(gplatform.CPU_DISPATCH_ENV)
    # NumPy dispatches to nothing above x86-64-v3, torch to AVX2, whatever this CPU has.
    assert pinned["dispatched"][-1] == gplatform.BASELINE_NUMPY_SIMD, pinned
    assert pinned["torch"] == gplatform.BASELINE_TORCH_CAPABILITY
    assert f"-{gplatform.INTERPRETER_BASELINE}-" in pinned["key"]
    # This process runs under the same pins (conftest), so it has the same key.
    assert platform_key(fingerprint("cpu")) == pinned["key"]


@needs_baseline
def test_a_changed_pin_changes_the_key():
    pinned = _dispatch_in(gplatform.CPU_DISPATCH_ENV)["key"]
    lower_numpy = _dispatch_in(dict(gplatform.CPU_DISPATCH_ENV, NPY_DISABLE_CPU_FEATURES=(
        gplatform.CPU_DISPATCH_ENV["NPY_DISABLE_CPU_FEATURES"] + " X86_V3")))
    assert lower_numpy["dispatched"] == [] and lower_numpy["key"] != pinned
    lower_torch = _dispatch_in(dict(gplatform.CPU_DISPATCH_ENV, ATEN_CPU_CAPABILITY="default"))
    assert lower_torch["torch"] == "DEFAULT" and lower_torch["key"] != pinned


@needs_baseline
def test_pin_cpu_dispatch_reexecutes_a_process_that_loaded_numpy_first():
    # The process imported NumPy before pinning, as an embedding program might: the pins can
    # only act in a fresh process, which pin_cpu_dispatch starts with the given arguments.
    code = ("import sys, numpy\n"
            "from gdn_verify.platform import pin_cpu_dispatch\n"
            f"pin_cpu_dispatch(reexec=['-c', {_DISPATCH!r}])\n"
            "print('not re-executed')\n")
    assert _dispatch_in({}, code)["dispatched"][-1] == gplatform.BASELINE_NUMPY_SIMD


@needs_baseline
def test_cli_pins_before_numpy_loads(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in gplatform.CPU_DISPATCH_ENV}
    report = tmp_path / "r.json"
    done = subprocess.run([sys.executable, "-m", "gdn_verify", "run", "--suite", "smoke", "--max-cases", "1",
                           "--device", "cpu", "--no-audit", "--json", str(report)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    fp = json.loads(report.read_text())["fingerprint"]
    assert (fp["numpy_simd"], fp["torch_cpu_capability"]) == (gplatform.BASELINE_NUMPY_SIMD,
                                                              gplatform.BASELINE_TORCH_CAPABILITY)
    assert f"-{gplatform.INTERPRETER_BASELINE}-" in platform_key(fp)
