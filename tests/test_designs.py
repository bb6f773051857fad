"""Precision designs: the spec syntax, the emulation in the chunked reference, and judging an
implementation by its declared design (stand-ins in tests/design_doubles.py)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gdn_verify import cli
from gdn_verify.cases import dense
from gdn_verify.compare import design_to_judge, rms_ratio
from gdn_verify.designs import DESIGNS, FLA, FLOAT32, GDN, PrecisionDesign, parse_design, tf32_round
from gdn_verify.impls import resolve_impl
from gdn_verify.inputs import make_inputs
from gdn_verify.reference import chunked_gated_delta_rule
from gdn_verify.results import RunOptions
from gdn_verify.runner import run_cases

ONLY_SPLIT = RunOptions(invariants=("split-equivalence",), audit=False, diagnose=False)


def _run(spec: str, cases, **conventions):
    result = run_cases(cases, resolve_impl(spec, device="cpu", **conventions), "cpu", ONLY_SPLIT)
    return {r.id: r for r in result.cases}


# ----------------------------------------------------------------------------------------
# Spec syntax
# ----------------------------------------------------------------------------------------

def test_named_designs_round_trip_through_their_spec():
    for design in DESIGNS.values():
        assert parse_design(design.name) is design
        assert parse_design(design.spec) is design


def test_spec_declares_per_quantity_dtypes_and_dots():
    d = parse_design("store=Tm,W:input; store=state:float32; dots=bf16")
    r = d.rounding(torch.bfloat16)
    assert (r.dtype_of("Tm"), r.dtype_of("W"), r.dtype_of("state"), r.dtype_of("A")) == (
        torch.bfloat16, torch.bfloat16, torch.float32, None)
    assert r.dots == "bf16" and d.rounding(torch.float64).dots == "ieee"
    assert d.final_state_dtype(torch.float64) == torch.float32
    assert GDN.final_state_dtype(torch.float64) == torch.float64


@pytest.mark.parametrize("text, names", [
    ("fast", "named design"),
    ("store=Tm,X:input", "quantity 'X'"),
    ("store=Tm:float8", "dtype 'float8'"),
    ("store=Tm", "store=NAME"),
    ("dots=tf16", "dot mode 'tf16'"),
    ("stor=Tm:input", "clause 'stor=Tm:input'"),
])
def test_parse_design_errors_name_the_bad_part(text, names):
    with pytest.raises(ValueError, match=names):
        parse_design(text)


def test_cli_rejects_a_bad_design_as_a_usage_error(capsys):
    assert cli.main(["run", "--suite", "smoke", "--impl", "design_doubles:per_fla", "--design", "store=Q:input"]) == 2
    assert "quantity 'Q'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# Emulation
# ----------------------------------------------------------------------------------------

def test_tf32_rounds_to_nearest_ties_away_from_zero_and_tf32_trunc_cuts():
    one = 1.0
    tie = one + 2.0 ** -11  # halfway between 1 and 1 + 2^-10
    above = one + 2.0 ** -10 - 2.0 ** -20  # just below 1 + 2^-10
    x = torch.tensor([tie, -tie, one + 2.0 ** -11 - 2.0 ** -20, above, -above, 3.0, float("inf"), float("nan")])
    rna = tf32_round(x)
    assert rna[:6].tolist() == [one + 2.0 ** -10, -(one + 2.0 ** -10), one, one + 2.0 ** -10, -(one + 2.0 ** -10), 3.0]
    cut = tf32_round(x, "tf32-trunc")  # toward zero, whatever the dropped bits
    assert cut[:6].tolist() == [one, -one, one, one, -one, 3.0]
    for got in (rna, cut):
        assert got[6] == float("inf") and got[7].isnan()
    bf = torch.randn(1000).to(torch.bfloat16).to(torch.float32)
    assert torch.equal(tf32_round(bf), bf) and torch.equal(tf32_round(bf, "tf32-trunc"), bf)
    with pytest.raises(ValueError, match="mode"):
        tf32_round(x, "bf16")


def test_exp2_clause_parses_round_trips_and_rounds_its_constant():
    d = parse_design("store=g_cum:compute;dots=tf32-trunc;exp2=1.4426950216")
    assert d.exp2 == 1.4426950216 and d.dots == "tf32-trunc"
    assert parse_design(d.spec).same_rules(d) and not d.same_rules(parse_design("store=g_cum:compute;dots=tf32-trunc"))
    # The constant as the implementation's compute dtype holds it; float64 problems keep it whole.
    assert FLA.rounding(torch.bfloat16).exp2 == torch.tensor(1.4426950216, dtype=torch.float32).item()
    assert FLA.rounding(torch.float64).exp2 == 1.4426950216
    assert GDN.rounding(torch.float32).exp2 is None
    for bad in ("exp2=0", "exp2=-1.4", "exp2=inf", "exp2=two"):
        with pytest.raises(ValueError, match="exp2"):
            parse_design(bad)


def test_base2_gates_add_the_exponent_rounding_to_the_decay():
    """A decayed initial state alone (beta = 0, g = -20 a token, g_cum = -60 after 3 tokens):
    with exp2 declared, the emulated final state carries the scaled gate's rounding, about
    |g_cum| 2^-24 relative (3.6e-6 at most); without it only float32 rounding of the state."""
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 3, 1, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(1, 3, 1, 16, generator=gen, dtype=torch.float64)
    g, beta = torch.full((1, 3, 1), -20.0, dtype=torch.float64), torch.zeros(1, 3, 1, dtype=torch.float64)
    h0 = torch.randn(1, 1, 16, 16, generator=gen, dtype=torch.float64)

    def final_state(design):
        args = (q, k, v, g, beta)
        if design is not None:  # float32 inputs, so the design's float32 rules apply
            args = tuple(t.float() for t in args)
        return chunked_gated_delta_rule(*args, initial_state=h0.float() if design else h0,
                                        output_final_state=True, design=design)[1]

    exact = final_state(None)
    natural = rms_ratio(final_state(PrecisionDesign("e", FLA.store, "ieee")), exact)
    base2 = rms_ratio(final_state(PrecisionDesign("e2", FLA.store, "ieee", exp2=FLA.exp2)), exact)
    assert natural < 2e-7 < 5e-7 < base2 < 4e-6, (natural, base2)


def test_base2_decays_below_the_smallest_normal_are_flushed_to_zero():
    """An initial state decayed by exp(-98) = 2^-141 alone (beta = 0): exact, a float32
    subnormal; with exp2 declared, 0, as the GPU's ex2.approx.ftz gives it. A decay of exp(-80)
    = 2^-115 stays (normal), so only the flushed head is 0."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 2, 16, generator=gen) for _ in range(3))
    g = torch.tensor([[[-49.0, -40.0], [-49.0, -40.0]]])  # g_cum -98 on head 0, -80 on head 1
    beta = torch.zeros(1, 2, 2)
    h0 = torch.randn(1, 2, 16, 16, generator=gen)

    def final_state(design):
        return chunked_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                        design=design)[1]

    exact = chunked_gated_delta_rule(*(t.double() for t in (q, k, v, g, beta)), initial_state=h0.double(),
                                     output_final_state=True)[1]
    assert (exact[:, 0].abs() < torch.finfo(torch.float32).tiny).all() and (exact[:, 0] != 0).all()
    base2 = final_state(PrecisionDesign("e2", FLA.store, "ieee", exp2=FLA.exp2))
    assert (base2[:, 0] == 0).all() and (base2[:, 1] != 0).all()
    natural = final_state(PrecisionDesign("e", FLA.store, "ieee"))  # natural exp: subnormals kept
    assert (natural[:, 0] != 0).float().mean() > 0.9


def _reference(case, design):
    inputs = make_inputs(case)
    return chunked_gated_delta_rule(inputs["q"], inputs["k"], inputs["v"], inputs["g"], inputs["beta"],
                                    initial_state=inputs.get("initial_state"), output_final_state=True,
                                    l2norm=case.l2norm, design=design)


def test_design_mode_stores_exactly_the_declared_quantities():
    case = dense(100, H=1, HV=2, K=16, V=16, dtype="bfloat16", init_state="random")
    _, _, exact = _reference(case, None)
    _, _, fla = _reference(case, FLA)
    for name in ("Tm", "W", "U", "h", "v_new"):  # stored in the input dtype
        x = getattr(fla, name)
        assert torch.equal(x.to(torch.bfloat16).double(), x), name
    assert not torch.equal(fla.A.to(torch.bfloat16).double(), fla.A)  # float32 in FLA's design
    assert torch.equal(fla.A.float().double(), fla.A)
    assert not torch.equal(exact.W.to(torch.bfloat16).double(), exact.W)


def test_a_design_that_rounds_nothing_in_float64_is_the_exact_reference():
    case = dense(70, H=1, HV=2, K=16, V=16, dtype="float64", init_state="random", gate="mixed")
    a, b = _reference(case, None), _reference(case, GDN)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ----------------------------------------------------------------------------------------
# Judging by design
# ----------------------------------------------------------------------------------------

def test_ours_keep_the_tolerance_table():
    ours = resolve_impl("gdn", device="cpu")
    assert ours.design is GDN and design_to_judge(ours) is None
    assert design_to_judge(resolve_impl("design_doubles:per_fla", device="cpu", design=GDN)) is None
    assert design_to_judge(resolve_impl("design_doubles:per_fla", device="cpu")) is None
    assert design_to_judge(resolve_impl("design_doubles:per_fla", device="cpu", design=FLA)) is FLA


FLA_CASES = [dense(70, H=1, HV=2, K=16, V=16, dtype=dt, init_state="random", gate="mixed")
             for dt in ("float32", "bfloat16")]


def test_an_implementation_exactly_per_its_design_passes_and_fails_without_it():
    judged = _run("design_doubles:per_fla", FLA_CASES, design=FLA)
    assert all(r.status == "pass" for r in judged.values()), {k: r.failures for k, r in judged.items()}
    checks = judged[FLA_CASES[0].id].checks["o"]
    assert checks.design["name"] == "fla" and checks.design["actual_over_emulated"] == pytest.approx(1.0)
    strict = _run("design_doubles:per_fla", FLA_CASES)  # the same, judged by the tolerance table
    assert all(r.status == "fail" for r in strict.values())


def test_float32_arithmetic_per_the_fla_design_passes():
    cases = [dense(130, H=1, HV=2, K=16, V=16, dtype="bfloat16", init_state="random", l2norm=True),
             dense(65, B=2, H=2, HV=4, K=16, V=32, dtype="float32", gate="strong")]
    got = _run("design_doubles:fla_like", cases, design=FLA, lacks=frozenset({"cu_seqlens"}))
    assert all(r.status == "pass" for r in got.values()), {k: r.failures for k, r in got.items()}


def test_one_more_rounded_intermediate_fails_where_it_matters():
    # One token, beta = 1, no initial state: FLA's design rounds nothing the final state depends
    # on, so a carried state stored in bfloat16 is all of its error.
    case = dense(1, H=1, HV=2, K=16, V=16, dtype="bfloat16", beta="one")
    assert _run("design_doubles:fla_like", [case], design=FLA,
                lacks=frozenset({"cu_seqlens"}))[case.id].status == "pass"
    rounded = _run("design_doubles:fla_like_state_rounded", [case], design=FLA, lacks=frozenset({"cu_seqlens"}))
    assert rounded[case.id].status == "fail"
    assert any(f.startswith("final_state: RMS error ratio") and "design fla" in f for f in rounded[case.id].failures)


def test_tf32_dots_where_the_design_says_ieee_fail():
    cases = [dense(70, H=1, HV=2, K=16, V=16, dtype=dt, init_state="random") for dt in ("float64", "float32")]
    assert all(r.status == "pass" for r in _run("design_doubles:per_float32", cases, design=FLOAT32).values())
    tf32 = _run("design_doubles:per_float32_tf32", cases, design=FLOAT32)
    case = cases[1]  # float64 problems have no TF32 dots
    assert tf32[cases[0].id].status == "pass" and tf32[case.id].status == "fail"
    assert any("split-equivalence" in f for f in tf32[case.id].failures)


# ----------------------------------------------------------------------------------------
# Hugging Face transformers' torch_chunk_gated_delta_rule, declared float32
# ----------------------------------------------------------------------------------------

HF = "transformers.models.qwen3_next.modeling_qwen3_next:torch_chunk_gated_delta_rule"


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                    reason="transformers is not installed (pip install 'gdn-verify[hf]')")
def test_transformers_passes_its_float32_design(tmp_path):
    # A subprocess outside the checkout: transformers imports the PyPI package `kernels`, which the
    # checkout's top-level kernels/ directory would shadow were the repository root on sys.path.
    env = dict(os.environ, PYTHONPATH="")
    cases = r"^dense-b1-t(1|17|33|65|129)-h1x2-d16-(f64|f32|bf16)"
    argv = [sys.executable, "-m", "gdn_verify", "run", "--suite", "cpu", "--device", "cpu", "--cases", cases,
            "--impl", HF, "--no-cu-seqlens", "--no-scale", "--design", "float32", "--no-audit",
            "--json", str(tmp_path / "hf.json")]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    import json

    report = json.loads(Path(tmp_path / "hf.json").read_text())
    float64 = [c for c in report["cases"] if c["case"]["dtype"] == "float64" and c["status"] == "pass"]
    assert float64 and all(c["checks"]["o"]["design"]["name"] == "float32" for c in float64)
