"""Standalone reproducers for failing cases.

`write_reproducer` writes <out_dir>/<case_id>/ with the case's inputs (inputs.safetensors), a
script (repro.py) and a README.txt. The script needs only torch, safetensors (triton if the
implementation uses it) and the implementation under test: it imports the implementation
by "module:function", runs it with the common GDN signature, computes a float64 reference
with its own naive recurrence, prints the RMS error ratio, the worst slice, the max abs
error and the NaN/Inf count of o and final_state, and exits 1 when the recorded tolerance
is exceeded, the implementation wrote into its inputs (it is given copies) or returned o in
another dtype than v's or a state in another than float32 (float64 in exact mode); 2 when it
cannot run at all. The metrics follow gdn_verify.compare (global
RMS ratio; worst (sequence, head, 64-token chunk) slice for o and (sequence, head) for the
final state, each against its own reference norm floored at the evenly spread share; for o
in float16 / bfloat16 also both ratios of the error beyond rounding the reference into o's
dtype), so the script fails where the suite failed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from gdn_verify.contract import CHUNK_SIZE, L2NORM_EPS
from gdn_verify.platform import CUDA_BACKEND, INTERPRETER_BACKEND

SCRIPT_NAME = "repro.py"
INPUTS_NAME = "inputs.safetensors"
README_NAME = "README.txt"

# The script. Kept free of gdn_verify imports (tests check the generated text); CONFIG and the
# __NAME__ constants are filled in per case.
_SCRIPT = r'''#!/usr/bin/env python3
"""Reproducer for gdn-verify case __CASE_ID__ (see README.txt). Needs torch and safetensors
(and triton if the implementation uses it); it does not use the gdn-verify suite itself."""

import argparse
import importlib
import json
import math
import os
import sys
import traceback
from pathlib import Path

import torch
from safetensors.torch import load_file

CONFIG = json.loads(r"""
__CONFIG__
""")
HERE = Path(__file__).resolve().parent
CHUNK = __CHUNK_SIZE__


class CannotRun(Exception):
    """Exit code 2: the reproducer could not run the implementation at all."""


def load_impl(spec):
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CannotRun(f"--impl: expected 'module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise CannotRun(f"cannot import {module_name!r} ({err}); put its directory on PYTHONPATH") from err
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise CannotRun(f"module {module_name!r} has no callable {attr!r}")
    return fn


def same_bits(a, b):
    """The same bits (NaNs included) in the same dtype and shape."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        a, b = a.view(ints), b.view(ints)
    return torch.equal(a.cpu(), b.cpu())


def l2norm(x, eps):
    return x / (x * x).sum(-1, keepdim=True).add(eps).sqrt()


def reference(inputs, scale, use_l2norm, eps):
    """float64 naive recurrence: per token, S <- exp(g) S; u = beta (v - S^T k); S <- S + k u^T;
    o = scale S^T q. Returns (o [B, T, HV, V], final_state [N, HV, K, V])."""
    q, k, v, g, beta = (inputs[n].double() for n in ("q", "k", "v", "g", "beta"))
    if use_l2norm:
        q, k = l2norm(q, eps), l2norm(k, eps)
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    q, k = q.repeat_interleave(HV // H, dim=2), k.repeat_interleave(HV // H, dim=2)
    cu = inputs.get("cu_seqlens")
    seqs = [(b, 0, T) for b in range(B)] if cu is None else [(0, int(cu[n]), int(cu[n + 1])) for n in range(len(cu) - 1)]
    h0 = inputs.get("initial_state")
    o = torch.zeros(B, T, HV, V, dtype=torch.float64, device=v.device)
    finals = []
    for n, (b, start, end) in enumerate(seqs):
        S = h0[n].double().clone() if h0 is not None else torch.zeros(HV, K, V, dtype=torch.float64, device=v.device)
        for t in range(start, end):
            S = S * g[b, t].exp()[:, None, None]
            u = beta[b, t][:, None] * (v[b, t] - torch.einsum("hk,hkv->hv", k[b, t], S))
            S = S + k[b, t][:, :, None] * u[:, None, :]
            o[b, t] = scale * torch.einsum("hk,hkv->hv", q[b, t], S)
        finals.append(S)
    return o, torch.stack(finals) if finals else torch.zeros(0, HV, K, V, dtype=torch.float64)


def slices(inputs, name, shape):
    """(label, index) pairs: o per (sequence, head, 64-token chunk); final_state per (sequence, head)."""
    cu = inputs.get("cu_seqlens")
    B, T = inputs["q"].shape[:2]
    seqs = [(b, 0, T) for b in range(B)] if cu is None else [(0, int(cu[n]), int(cu[n + 1])) for n in range(len(cu) - 1)]
    for n, (b, start, end) in enumerate(seqs):
        for h in range(shape[2] if name == "o" else shape[1]):
            if name == "final_state":
                yield f"sequence {n}, head {h}", (n, h)
                continue
            for c, lo in enumerate(range(start, end, CHUNK)):
                hi = min(end, lo + CHUNK)
                yield f"sequence {n}, head {h}, chunk {c} (tokens {lo}..{hi - 1})", (b, slice(lo, hi), h)


def ratio(err, ref):
    if not math.isfinite(err):
        return math.inf
    if ref == 0.0:
        return 0.0 if err == 0.0 else math.inf
    return err / ref


def beyond_rounding(diff, rounding):
    """sqrt(max(||diff||^2 - ||rounding||^2, 0)): the error beyond rounding into the output dtype."""
    return math.sqrt(max(float((diff * diff).sum() - (rounding * rounding).sum()), 0.0))


def check(name, actual, expected, inputs, tol):
    a, r = actual.detach().double().cpu(), expected.detach().double().cpu()
    if a.shape != r.shape:
        return [f"{name}: shape {tuple(a.shape)}, expected {tuple(r.shape)}"], {}
    diff = a - r
    excess = tol.get("excess")  # [global, slice] bounds beyond rounding, or None
    rounding = r.to(actual.dtype).double() - r if excess else None
    n_nan, n_inf = int(a.isnan().sum()), int(a.isinf().sum())
    ref_norm = float(torch.linalg.vector_norm(r)) if r.numel() else 0.0
    rms = ratio(float(torch.linalg.vector_norm(diff)) if diff.numel() else 0.0, ref_norm)
    worst, worst_where, worst_excess, worst_excess_where = 0.0, None, 0.0, None
    for where, index in slices(inputs, name, r.shape):
        d, s = diff[index], r[index]
        floor = ref_norm * math.sqrt(s.numel() / r.numel()) if r.numel() else 0.0
        denom = max(float(torch.linalg.vector_norm(s)), floor)
        x = ratio(float(torch.linalg.vector_norm(d)), denom)
        if not x <= worst:
            worst, worst_where = (math.inf if math.isnan(x) else x), where
        if excess:
            x = ratio(beyond_rounding(d, rounding[index]), denom)
            if not x <= worst_excess:
                worst_excess, worst_excess_where = (math.inf if math.isnan(x) else x), where
    max_abs = float(diff.abs().max()) if diff.numel() else 0.0
    metrics = {"rms_ratio": rms, "worst_slice_ratio": worst, "worst_slice": worst_where,
               "max_abs_error": max_abs, "ref_max_abs": float(r.abs().max()) if r.numel() else 0.0,
               "nan": n_nan, "inf": n_inf}
    failures = []
    if n_nan or n_inf:
        failures.append(f"{name}: {n_nan} NaN, {n_inf} Inf")
    if not rms <= tol["rms"]:
        failures.append(f"{name}: RMS error ratio {rms:.3g} > {tol['rms']:.3g}")
    if not worst <= tol["slice"]:
        failures.append(f"{name}: worst slice ratio {worst:.3g} > {tol['slice']:.3g} at {worst_where}")
    if excess:
        rms_excess = ratio(beyond_rounding(diff, rounding), ref_norm)
        metrics.update(beyond_rounding_ratio=rms_excess, worst_slice_beyond_rounding=worst_excess,
                       worst_slice_beyond_rounding_at=worst_excess_where)
        if not rms_excess <= excess[0]:
            failures.append(f"{name}: RMS error ratio beyond rounding {rms_excess:.3g} > {excess[0]:.3g}")
        if not worst_excess <= excess[1]:
            failures.append(f"{name}: worst slice ratio beyond rounding {worst_excess:.3g} > {excess[1]:.3g} "
                            f"at {worst_excess_where}")
    return failures, metrics


def main(argv=None):
    parser = argparse.ArgumentParser(description=f"Reproduce gdn-verify case {CONFIG['case_id']}")
    parser.add_argument("--impl", default=CONFIG["impl"], help="module:function under test (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        # Triton kernels decide interpreter or compiler when they are decorated (at import).
        os.environ.setdefault("TRITON_INTERPRET", "1")
    inputs = {name: t.to(device) for name, t in load_file(HERE / "inputs.safetensors").items()}
    try:
        fn = load_impl(args.impl)
    except CannotRun as err:
        print(f"CANNOT RUN: {err}", file=sys.stderr)
        return 2
    K = inputs["q"].shape[-1]
    scale = CONFIG["scale"] if CONFIG["scale"] is not None else K ** -0.5
    print(f"case {CONFIG['case_id']}  impl {args.impl}  device {device}  torch {torch.__version__}")
    print(f"recorded failure: {CONFIG['failure']}")
    # The implementation gets copies: the reference is computed from the inputs as saved, and
    # an implementation that writes into its inputs fails.
    given = {name: t.clone() for name, t in inputs.items()}
    try:
        o, final_state = fn(given["q"], given["k"], given["v"], given["g"], given["beta"],
                            scale=CONFIG["scale"], initial_state=given.get("initial_state"),
                            output_final_state=True, cu_seqlens=given.get("cu_seqlens"),
                            use_qk_l2norm_in_kernel=CONFIG["l2norm"])
    except BaseException:
        traceback.print_exc()
        print("FAIL: the implementation raised")
        return 1
    failures = [f"the implementation modified its input {name}" for name in inputs
                if not same_bits(given[name], inputs[name])]
    expected = reference(inputs, scale, CONFIG["l2norm"], CONFIG["l2norm_eps"])
    backend = "__CUDA_BACKEND__" if device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1" else "__INTERPRETER_BACKEND__"
    state_dtype = torch.float64 if inputs["v"].dtype == torch.float64 else torch.float32
    for name, actual, ref, dtype in (("o", o, expected[0], inputs["v"].dtype),
                                     ("final_state", final_state, expected[1], state_dtype)):
        tol = CONFIG["tolerances"][backend][name]
        if actual is None:
            failures.append(f"{name}: the implementation returned None")
            continue
        if actual.dtype != dtype:
            failures.append(f"{name}: dtype {actual.dtype}, expected {dtype}")
        found, metrics = check(name, actual, ref, inputs, tol)
        failures += found
        shown = {k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in metrics.items()}
        print(f"{name}: {shown}  tolerance {tol}")
    if failures:
        print("FAIL: " + "; ".join(failures))
        return 1
    print("PASS: within the recorded tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''

_README = """gdn-verify reproducer for case {case_id}

Failure recorded by the suite:
  {failure}

Implementation under test: {impl}

Run (needs torch, safetensors, triton if the implementation uses it, and the implementation
importable, e.g. PYTHONPATH=/path/to/its/package):

  python repro.py                      # cuda if available, else the CPU (TRITON_INTERPRET=1)
  python repro.py --device cpu
  python repro.py --impl other.module:function

It loads inputs.safetensors ({names}), calls the implementation with the common signature
(q, k, v, g, beta, scale=..., initial_state=..., output_final_state=True, cu_seqlens=...,
use_qk_l2norm_in_kernel=...), computes a float64 reference with its own naive recurrence,
and prints for o and final_state the RMS error ratio, the worst slice ratio (per sequence,
head and 64-token chunk; per sequence and head for the state), the max abs error and the
NaN/Inf counts. Exit 0: within the tolerance recorded below; 1: exceeded (or the
implementation raised); 2: could not run.

Tolerances (per backend, tensor): {tolerances}

Case:
{case}
"""


def _default_tolerances(dtype: str) -> dict:
    from gdn_verify.compare import TENSORS, tolerance
    from gdn_verify.tolerances import BACKENDS

    return {
        backend: {name: _tolerance_entry(tolerance(name, dtype, backend)) for name in TENSORS}
        for backend in BACKENDS
    }


def _tolerance_entry(tol) -> dict:
    entry = {"rms": tol.rms, "slice": tol.slice}
    if tol.excess is not None:
        entry["excess"] = list(tol.excess)
    return entry


def _importable_spec(spec: str) -> str:
    """'module:function' for an --impl spec (our short names map to the kernels module)."""
    from gdn_verify import impls

    if spec in impls.OURS:
        return f"{impls.KERNELS_MODULE}:{impls.OURS[spec]}"
    module_name, sep, attr = spec.partition(":")
    if not (module_name and sep and attr):
        raise ValueError(f"impl_spec: expected 'gdn', 'gdn-recurrent' or 'module:function', got {spec!r}")
    return spec


def write_reproducer(case, inputs: dict[str, torch.Tensor], impl_spec: str, failure: str,
                     out_dir: str | os.PathLike, tolerances: dict | None = None) -> Path:
    """Write <out_dir>/<case.id>/{inputs.safetensors, repro.py, README.txt}; returns that directory.

    tolerances: {backend: {tensor: {"rms", "slice"[, "excess": [global, slice]]}}}; default: gdn_verify.compare's table
    for the case's dtype.
    """
    impl_spec = _importable_spec(impl_spec)
    directory = Path(out_dir) / case.id
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in inputs.items() if isinstance(t, torch.Tensor)}
    save_file(tensors, directory / INPUTS_NAME, metadata={"case_id": case.id})
    config = {
        "case_id": case.id,
        "case": case.to_dict(),
        "impl": impl_spec,
        "failure": failure,
        "scale": case.scale,
        "l2norm": bool(case.l2norm),
        "l2norm_eps": L2NORM_EPS,
        "tolerances": tolerances if tolerances is not None else _default_tolerances(case.dtype),
    }
    config_text = json.dumps(config, indent=1, sort_keys=True)
    script = (_SCRIPT.replace("__CASE_ID__", case.id).replace("__CONFIG__", config_text)
              .replace("__CHUNK_SIZE__", str(CHUNK_SIZE)).replace("__CUDA_BACKEND__", CUDA_BACKEND)
              .replace("__INTERPRETER_BACKEND__", INTERPRETER_BACKEND))
    (directory / SCRIPT_NAME).write_text(script)
    (directory / README_NAME).write_text(
        _README.format(
            case_id=case.id,
            failure=failure,
            impl=impl_spec,
            names=", ".join(f"{n} {str(t.dtype).removeprefix('torch.')}{list(t.shape)}" for n, t in tensors.items()),
            tolerances=json.dumps(config["tolerances"]),
            case=json.dumps(case.to_dict(), sort_keys=True),
        )
    )
    return directory
