"""Cases as serving models call the kernels: beta in float32 beside 16-bit q, k, v; q, k, v as
views of one fused projection output (the fused-qkv-views invariant); head groups of three;
V above the kernels' value blocks. And the committed golden stores still name cases of the
suites, with the same specs and inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gdn_verify.adapters import Adapter
from gdn_verify.cases import BETA_DTYPE_CASE_DTYPES, Case, dense, varlen
from gdn_verify.contract import validate
from gdn_verify.impls import resolve_impl
from gdn_verify.inputs import inputs_digest, make_inputs
from gdn_verify.invariants import INVARIANTS, check_invariants, fused_qkv
from gdn_verify.suites import suite

from gdn_doubles import rounded_reference

GOLDENS = Path(__file__).resolve().parent.parent / "goldens"
# The committed stores (platform directories under goldens/ and under each implementation's own
# root, goldens/<impl>/): interpreter stores hold the cpu suite, CUDA ones the gpu suite.
STORES = sorted({*GOLDENS.glob("*/manifest.json"), *GOLDENS.glob("*/*/manifest.json")})


# ----------------------------------------------------------------------------------------
# beta_dtype: the Case field
# ----------------------------------------------------------------------------------------

def test_beta_dtype_id_tag_round_trip_and_default_left_out():
    case = dense(65, B=2, H=1, HV=2, K=16, V=16, dtype="bfloat16", beta_dtype="float32", init_state="random")
    assert case.id == "dense-b2-t65-h1x2-d16-bf16-betaf32-state0"
    assert case.to_dict()["beta_dtype"] == "float32"
    assert Case.from_dict(case.to_dict()) == case
    assert Case.from_dict(json.loads(json.dumps(case.to_dict()))) == case
    default = case.with_(beta_dtype=None)
    # The default leaves the spec (and so the input seed and inputs) of a case as it was.
    assert "beta_dtype" not in default.to_dict() and default.id == "dense-b2-t65-h1x2-d16-bf16-state0"
    assert Case.from_dict(default.to_dict()) == default
    assert default.input_seed() != case.input_seed()


def test_beta_dtype_validation():
    with pytest.raises(ValueError, match="beta_dtype"):
        dense(8, H=1, HV=1, K=16, V=16, dtype="bfloat16", beta_dtype="float16")
    for dtype in ("float32", "float64"):
        with pytest.raises(ValueError, match="beta_dtype"):
            dense(8, H=1, HV=1, K=16, V=16, dtype=dtype, beta_dtype="float32")


@pytest.mark.parametrize("dtype", BETA_DTYPE_CASE_DTYPES)
def test_beta_dtype_inputs(dtype):
    case = varlen((3, 0, 20), H=1, HV=3, K=16, V=16, dtype=dtype, beta_dtype="float32", init_state="random")
    x = make_inputs(case)
    assert x["beta"].dtype == torch.float32 and x["g"].dtype == torch.float32
    assert x["q"].dtype == x["v"].dtype == getattr(torch, dtype)
    assert 0 < x["beta"].min() and x["beta"].max() < 1
    # float32 values, not 16-bit ones widened
    assert not torch.equal(x["beta"], x["beta"].to(getattr(torch, dtype)).float())
    validate(x["q"], x["k"], x["v"], x["g"], x["beta"], None, x["initial_state"], True, x["cu_seqlens"])
    assert make_inputs(case.with_(beta_dtype=None))["beta"].dtype == getattr(torch, dtype)


# ----------------------------------------------------------------------------------------
# The suites
# ----------------------------------------------------------------------------------------

def test_cpu_suite_reaches_model_calls():
    from gdn_verify.kernels.fused_recurrent import BLOCK_V
    from gdn_verify.kernels.output import VALUE_BLOCK

    cases = suite("cpu")
    assert {c.dtype for c in cases if c.beta_dtype == "float32"} == set(BETA_DTYPE_CASE_DTYPES)
    assert {c.layout for c in cases if c.beta_dtype == "float32"} == {"dense", "varlen"}
    group3 = [c for c in cases if c.HV == 3 * c.H]
    assert any(c.H >= 2 for c in group3) and {c.layout for c in group3} == {"dense", "varlen"}
    wide = [c for c in cases if c.V > max(VALUE_BLOCK, BLOCK_V) and c.HV >= 2]
    assert any(c.V % VALUE_BLOCK for c in wide)  # a partial last value block
    assert {c.dtype for c in wide} >= {"float32", "bfloat16"}


def test_gpu_suite_reaches_model_calls():
    cases = suite("gpu")
    assert {c.dtype for c in cases if c.beta_dtype == "float32"} == set(BETA_DTYPE_CASE_DTYPES)
    assert any(c.H == 16 and c.HV == 48 for c in cases)
    assert {c.layout for c in cases if c.HV == 3 * c.H} == {"dense", "varlen"}


def test_committed_stores_found():
    keys = {m.parent.name.split("-")[0] for m in STORES}
    assert {"cpu", "cuda"} <= keys


@pytest.mark.parametrize("manifest", STORES, ids=lambda m: str(m.parent.relative_to(GOLDENS)))
def test_committed_golden_cases_unchanged(manifest):
    """Every case of a committed store is still in its suite with the same spec (which seeds its
    inputs), so adding cases turns none of them into "missing" or "inputs changed"."""
    name = "cpu" if manifest.parent.name.startswith("cpu-interpreter") else "gpu"
    stored = json.loads(manifest.read_text())["cases"]
    cases = {c.id: c for c in suite(name)}
    assert set(stored) <= set(cases)
    assert all(cases[i].to_dict() == entry["case"] for i, entry in stored.items())
    # The inputs themselves, for every cpu case and the cheapest gpu ones.
    ids = sorted(stored, key=lambda i: cases[i].tokens * cases[i].HV * (cases[i].K + cases[i].V))
    for i in ids if name == "cpu" else ids[:20]:
        assert inputs_digest(make_inputs(cases[i])) == stored[i]["inputs_digest"], i


# ----------------------------------------------------------------------------------------
# The fused-qkv-views invariant
# ----------------------------------------------------------------------------------------

class Direct:
    """An implementation called with the inputs exactly as the invariant passes them (no
    adapter in between): fn(q, k, v, g, beta, ...) in the common signature."""

    supports_poison = False
    intermediates = None

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, case, inputs):
        return self.fn(inputs["q"], inputs["k"], inputs["v"], inputs["g"], inputs["beta"], scale=case.scale,
                       initial_state=inputs.get("initial_state"), output_final_state=True,
                       cu_seqlens=inputs.get("cu_seqlens"), use_qk_l2norm_in_kernel=case.l2norm)


def _packed_rows(x: torch.Tensor) -> bool:
    """x [B, T, heads, dim] has its rows laid out as the contiguous tensor would."""
    return x.stride() == torch.empty(x.shape).stride()


def stride_dependent(q, k, v, *args, **kwargs):
    """rounded_reference, with o one unit in the last place larger wherever q's strides are not
    those of a contiguous tensor (a kernel that indexes q by its own row size, not by its strides)."""
    o, final_state = rounded_reference(q, k, v, *args, **kwargs)
    if not _packed_rows(q):
        o = torch.nextafter(o, torch.full_like(o, float("inf")))
    return o, final_state


SMALL = [
    dense(20, B=2, H=2, HV=6, K=16, V=24, dtype="bfloat16", beta_dtype="float32"),
    varlen((5, 0, 30, 1), H=1, HV=3, K=16, V=16, dtype="float32", init_state="random", l2norm=True),
    dense(9, H=1, HV=2, K=12, V=20, dtype="float64", gate="mixed"),
]


def test_fused_qkv_gives_views_of_one_tensor():
    case = SMALL[0]
    x = make_inputs(case)
    f = fused_qkv(x)
    H, K, HV, V = case.H, case.K, case.HV, case.V
    row = 2 * H * K + HV * V
    for name in ("q", "k", "v"):
        assert torch.equal(f[name], x[name]) and f[name].dtype == x[name].dtype
        assert f[name].stride()[:2] == (case.T * row, row) and not _packed_rows(f[name])
        assert f[name].untyped_storage().data_ptr() == f["q"].untyped_storage().data_ptr()
    assert (f["q"].storage_offset(), f["k"].storage_offset(), f["v"].storage_offset()) == (0, H * K, 2 * H * K)
    for name in ("g", "beta", "initial_state", "cu_seqlens"):
        assert f.get(name) is x.get(name)
    assert "fused-qkv-views" in INVARIANTS


def _fused_check(impl, case):
    x = make_inputs(case)
    o, final_state = impl(case, x)
    (result,) = check_invariants(("fused-qkv-views",), impl, case, x, {"o": o, "final_state": final_state},
                                 None, "cpu-interpreter")
    return result


@pytest.mark.parametrize("case", SMALL, ids=lambda c: c.id)
def test_fused_qkv_views_passes_for_the_reference(case):
    result = _fused_check(Direct(rounded_reference), case)
    assert result.name == "fused-qkv-views" and result.passed, result.detail


@pytest.mark.parametrize("case", SMALL, ids=lambda c: c.id)
def test_fused_qkv_views_fails_for_a_stride_dependent_implementation(case):
    result = _fused_check(Direct(stride_dependent), case)
    assert not result.passed and result.detail.startswith("o: ")
    assert result.tensors["final_state"]["equal"] and not result.tensors["o"]["equal"]


@pytest.mark.parametrize("spec", ["gdn", "gdn-recurrent"])
def test_fused_qkv_views_passes_for_our_kernels(spec):
    """Our kernels called on the views themselves (they may copy them contiguous: the bits must
    not change)."""
    case = dense(20, B=2, H=2, HV=6, K=16, V=80, dtype="bfloat16", beta_dtype="float32", init_state="random")
    result = _fused_check(Direct(resolve_impl(spec, "cpu").fn), case)
    assert result.passed, result.detail


def _seen_by(fn):
    """fn, recording the strides and storages of the q, k, v it is called with."""
    seen = []

    def wrapped(q, k, v, *args, **kwargs):
        seen.append({"strides": [t.stride() for t in (q, k, v)],
                     "storages": {t.untyped_storage().data_ptr() for t in (q, k, v)}})
        return fn(q, k, v, *args, **kwargs)

    return wrapped, seen


def test_views_reach_the_implementation_through_the_adapter():
    case = SMALL[0]
    fn, seen = _seen_by(stride_dependent)
    result = _fused_check(Adapter(spec="stride-dependent", fn=fn), case)
    fused = fused_qkv(make_inputs(case))
    assert seen[-1]["strides"] == [fused[n].stride() for n in ("q", "k", "v")]
    assert len(seen[-1]["storages"]) == 1
    assert not result.passed
