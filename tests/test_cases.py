"""Cases and inputs: ids, suites, sampling, input generation."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from gdn_verify.cases import BETAS, GATES, Case, dense, is_file_name_safe, select, varlen
from gdn_verify.sampling import sample_product
from gdn_verify.contract import validate
from gdn_verify.inputs import MILD_GATE_MIN, STRONG_GATE_RANGE, inputs_digest, make_inputs
from gdn_verify.suites import DTYPES, EDGE_T, SUITES, suite

ALL = {name: suite(name) for name in SUITES}


@pytest.mark.parametrize("name", SUITES)
def test_ids_unique_and_file_name_safe(name):
    ids = [c.id for c in ALL[name]]
    assert len(ids) == len(set(ids))
    assert all(is_file_name_safe(i) for i in ids), [i for i in ids if not is_file_name_safe(i)]


def test_id_spells_shape_and_only_non_default_regimes():
    assert varlen((0, 1, 16, 63), H=4, HV=8, K=128, V=128, dtype="bfloat16").id == "varlen-0.1.16.63-h4x8-d128-bf16"
    case = dense(63, B=2, H=1, HV=2, K=20, V=12, dtype="float32", gate="strong", beta="one", init_state="random",
                 l2norm=True, scale=0.5, seed=3)
    assert case.id == "dense-b2-t63-h1x2-k20v12-f32-gstrong-beta1-state0-l2n-sc0.5-seed3"
    long = varlen(tuple(range(1, 20)), H=1, HV=1, K=16, V=16, dtype="float16")
    assert long.id.startswith("varlen-n19t190.") and is_file_name_safe(long.id)


def test_every_field_changes_the_id():
    base = dense(64, H=1, HV=2, K=16, V=16, dtype="float32")
    variants = [base.with_(seq_lens=(65,)), base.with_(seq_lens=(64, 64)), base.with_(H=2), base.with_(HV=4),
                base.with_(K=32), base.with_(V=32), base.with_(dtype="float16"), base.with_(gate="zero"),
                base.with_(beta="one"), base.with_(init_state="random"), base.with_(l2norm=True),
                base.with_(scale=0.25), base.with_(seed=1), base.with_(layout="varlen")]
    ids = {base.id} | {c.id for c in variants}
    assert len(ids) == len(variants) + 1
    half = base.with_(dtype="bfloat16")
    assert half.with_(beta_dtype="float32").id != half.id


def test_ids_and_inputs_stable_across_processes():
    """Nothing depends on Python's per-process hash seed or on the global RNG."""
    code = ("from gdn_verify.suites import suite; from gdn_verify.inputs import make_inputs, inputs_digest;"
            "cs = suite('cpu'); print(','.join(c.id for c in cs)); print(inputs_digest(make_inputs(cs[-1])))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")]
    assert runs[0] == runs[1]
    ids, digest = runs[0].splitlines()
    assert ids.split(",") == [c.id for c in ALL["cpu"]]
    assert digest == inputs_digest(make_inputs(ALL["cpu"][-1]))


def test_cases_listing_into_a_closed_pipe_ends_quietly():
    """`gdn-verify cases | head -1`: the listing stops at the closed pipe without a traceback.
    The full suite's ids (over 100 KB) overflow the pipe's buffer, so a write does fail."""
    proc = subprocess.Popen([sys.executable, "-m", "gdn_verify", "cases", "--suite", "full"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert first.strip().decode() == ALL["full"][0].id
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert proc.returncode != 0  # the listing is incomplete


def test_round_trip_and_validation():
    for case in ALL["cpu"]:
        assert Case.from_dict(case.to_dict()) == case
    with pytest.raises(ValueError, match="HV"):
        dense(8, H=2, HV=3, K=16, V=16, dtype="float32")
    with pytest.raises(ValueError, match="dtype"):
        dense(8, H=1, HV=1, K=16, V=16, dtype="int8")
    with pytest.raises(ValueError, match="seq_lens"):
        Case(layout="dense", seq_lens=(4, 5), H=1, HV=1, K=16, V=16, dtype="float32")
    with pytest.raises(ValueError, match="unknown fields"):
        Case.from_dict({**ALL["smoke"][0].to_dict(), "colour": "red"})


def test_suite_sizes():
    assert 3 <= len(ALL["smoke"]) <= 8
    assert 60 <= len(ALL["cpu"]) <= 200
    assert len(ALL["gpu"]) >= 500
    assert len(ALL["full"]) > len(ALL["gpu"])
    with pytest.raises(ValueError, match="suite"):
        suite("nightly")


def test_sampling_is_deterministic_distinct_and_prefix_stable():
    axes = {"a": range(5), "b": "xyz", "c": (True, False)}
    first = list(sample_product(axes, 12, seed=7))
    assert first == list(sample_product(axes, 12, seed=7))
    assert len({tuple(p.values()) for p in first}) == 12
    assert list(sample_product(axes, 20, seed=7))[:12] == first
    assert list(sample_product(axes, 12, seed=8)) != first
    assert len(list(sample_product(axes, 1000, seed=7))) == 30  # the whole product, no more
    assert suite("gpu", sampled=10) == suite("gpu", sampled=10)
    assert len(suite("cpu", sampled=0)) < len(ALL["cpu"])


def test_cpu_suite_covers_the_axes():
    cases = ALL["cpu"]
    assert {c.dtype for c in cases} == set(DTYPES)
    assert {c.gate for c in cases} == set(GATES)
    assert {c.beta for c in cases} == set(BETAS)
    assert {c.init_state for c in cases} == {"none", "random"}
    assert {c.l2norm for c in cases} == {False, True}
    assert {c.HV // c.H for c in cases} >= {1, 2, 3, 4, 8}
    assert {c.beta_dtype for c in cases} == {None, "float32"}
    assert any(c.K != c.V for c in cases)
    assert any(c.K & (c.K - 1) or c.V & (c.V - 1) for c in cases)  # a non-power of two
    assert set(EDGE_T) <= {c.T for c in cases if c.layout == "dense"}
    packs = [c.seq_lens for c in cases if c.layout == "varlen"]
    assert any(p[0] == 0 and len(p) > 1 for p in packs)  # leading zero-length
    assert any(0 in p[1:-1] for p in packs)  # middle
    assert any(p[-1] == 0 and len(p) > 1 for p in packs)  # trailing
    assert any(len(p) >= 8 for p in packs)  # many short
    assert any(max(p) > 128 and min(p) <= 2 for p in packs)  # long + short


def test_gpu_suite_covers_every_t_and_realistic_sizes():
    cases = ALL["gpu"]
    assert set(range(1, 130)) <= {c.T for c in cases if c.layout == "dense"}
    assert max(c.T for c in cases) >= 3000
    assert {c.HV // c.H for c in cases} >= {1, 2, 3, 4, 8}
    assert {c.beta_dtype for c in cases} == {None, "float32"}
    assert sum(c.K == c.V == 128 for c in cases) > len(cases) // 2


def test_select():
    cases = ALL["cpu"]
    assert all("varlen" in c.id for c in select(cases, "^varlen"))
    assert len(select(cases, None, 3)) == 3
    with pytest.raises(ValueError, match="regular expression"):
        select(cases, "(")


# ----------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------

def test_inputs_deterministic_and_independent_of_global_rng():
    case = ALL["smoke"][2]
    torch.manual_seed(0)
    a = make_inputs(case)
    torch.manual_seed(1)
    torch.randn(10)
    b = make_inputs(case)
    assert inputs_digest(a) == inputs_digest(b)
    assert inputs_digest(make_inputs(case.with_(seed=1))) != inputs_digest(a)


def test_inputs_satisfy_the_contract():
    for case in ALL["smoke"] + ALL["cpu"][:40]:
        x = make_inputs(case)
        p = validate(x["q"], x["k"], x["v"], x["g"], x["beta"], case.scale, x.get("initial_state"), True,
                     x.get("cu_seqlens"), case.l2norm)
        assert p.seq_lens == case.seq_lens and p.HV == case.HV and p.dtype == case.dtype


def test_gate_and_beta_regimes():
    base = dense(64, B=2, H=1, HV=4, K=16, V=16, dtype="float32")
    g = {gate: make_inputs(base.with_(gate=gate))["g"] for gate in GATES}
    assert (g["zero"] == 0).all()
    assert g["mild"].min() >= MILD_GATE_MIN and g["mild"].max() <= 0
    assert g["strong"].min() >= STRONG_GATE_RANGE[0] and g["strong"].max() <= STRONG_GATE_RANGE[1]
    mixed = g["mixed"]
    assert (mixed == 0).any() and (mixed < -1).any() and ((mixed < 0) & (mixed >= MILD_GATE_MIN)).any()
    beta = {b: make_inputs(base.with_(beta=b))["beta"] for b in BETAS}
    assert (beta["zero"] == 0).all() and (beta["one"] == 1).all()
    assert 0 < beta["random"].min() and beta["random"].max() < 1


def test_unit_keys_without_in_kernel_l2norm():
    """Without in-kernel l2norm the keys arrive normalized (as a model gives them); with it they
    are raw normals and the kernel normalizes."""
    base = dense(16, H=2, HV=2, K=32, V=16, dtype="float32")
    norms = make_inputs(base)["k"].norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    raw = make_inputs(base.with_(l2norm=True))["k"].norm(dim=-1)
    assert raw.mean() > 3  # ~sqrt(32)


def test_initial_state_non_symmetric_and_cu_seqlens():
    case = varlen((3, 0, 5), H=1, HV=1, K=8, V=8, dtype="bfloat16", init_state="random")
    x = make_inputs(case)
    s = x["initial_state"]
    assert s.dtype == torch.float32 and not torch.equal(s, s.transpose(-1, -2))
    assert x["cu_seqlens"].tolist() == [0, 3, 3, 8]
    assert make_inputs(case.with_(dtype="float64"))["initial_state"].dtype == torch.float64
    assert "initial_state" not in make_inputs(case.with_(init_state="none"))


def test_digest_sees_every_byte():
    x = make_inputs(ALL["smoke"][1])
    before = inputs_digest(x)
    x["v"].view(torch.int16)[0, 5, 1, 3] ^= 1
    assert inputs_digest(x) != before
