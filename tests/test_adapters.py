"""The adapter layer: conversions between conventions are exact, a mis-declared convention is
caught, a case needing what an implementation lacks is "not supported" (neither passed nor
failed), and flash-linear-attention is skipped with its reason where it cannot run.

The implementations are tests/convention_doubles.py: our float64 reference behind other
conventions, so the direct reference call on the suite's inputs is the exact expectation.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from gdn_verify.adapters import Adapter, NotSupported
from gdn_verify.conventions import alpha_of, l2_normalized, mod_head_order
from gdn_verify.impls import ImplUnavailable
from gdn_verify.variants import triton_variants
from gdn_verify.bitwise import bit_diff
from gdn_verify.cases import dense, varlen
from gdn_verify.impls import ImplError, resolve_impl
from gdn_verify.inputs import make_inputs
from gdn_verify.invariants import INVARIANTS
from gdn_verify.report import markdown, verdict
from gdn_verify.results import RunOptions
from gdn_verify.runner import run_cases

import convention_doubles as doubles

QUICK = RunOptions(audit=False, diagnose=False)

# GVA with K != V and a random initial state; packed with a zero-length sequence, l2norm and
# bfloat16; one packed sequence in exact mode with mixed gates and three value heads per key head.
CASES = [
    dense(20, B=2, H=2, HV=4, K=8, V=12, dtype="float32", init_state="random"),
    varlen((5, 0, 9), H=1, HV=2, K=8, V=8, dtype="bfloat16", init_state="random", l2norm=True),
    varlen((7,), H=2, HV=6, K=8, V=4, dtype="float64", gate="mixed"),
]
EXACT = {
    "state [N, HV, V, K]": Adapter("state_vk", doubles.state_vk, state_layout="vk"),
    "packed [T, H, D]": Adapter("packed_layout", doubles.packed_layout, layout="varlen"),
    "key head h % H": Adapter("mod_heads", doubles.mod_heads, head_map="mod"),
    "no initial state": Adapter("no_initial_state", doubles.no_initial_state, lacks={"initial_state"}),
}


def expected(case, inputs):
    return doubles.rounded_reference(*(inputs[n] for n in ("q", "k", "v", "g", "beta")), case.scale,
                                     inputs.get("initial_state"), True, inputs.get("cu_seqlens"), case.l2norm)


def assert_bitwise(actual, wanted):
    for name, a, w in zip(("o", "final_state"), actual, wanted):
        diff = bit_diff(a, w)
        assert diff.equal, f"{name}: {diff.summary()}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("what", EXACT)
def test_conversions_are_exact(what, case):
    adapter, inputs = EXACT[what], make_inputs(case)
    if adapter.unsupported(case):
        with pytest.raises(NotSupported, match="initial state"):
            adapter(case, inputs)
        return
    assert_bitwise(adapter(case, inputs), expected(case, inputs))


def test_a_dense_batch_travels_packed_and_comes_back():
    case = CASES[0]
    seen = {}

    def spy(q, k, v, g, beta, **kwargs):
        seen.update(shape=tuple(q.shape), cu_seqlens=kwargs["cu_seqlens"].tolist())
        return doubles.packed_layout(q, k, v, g, beta, **kwargs)

    inputs = make_inputs(case)
    assert_bitwise(Adapter("spy", spy, layout="varlen")(case, inputs), expected(case, inputs))
    assert seen == {"shape": (2 * 20, 2, 8), "cu_seqlens": [0, 20, 40]}


def test_mod_head_order_pairs_each_value_head_with_the_same_key_head():
    H, HV = 2, 6
    order = mod_head_order(H, HV, "cpu")
    assert sorted(order.tolist()) == list(range(HV))
    assert [int(order[j]) // (HV // H) for j in range(HV)] == [j % H for j in range(HV)]


@pytest.mark.parametrize("case", [CASES[0], CASES[2]], ids=lambda c: c.id)
def test_alpha_gates_round_the_input_once(case):
    inputs = make_inputs(case)
    received = {}

    def spy(q, k, v, alpha, beta, *args, **kwargs):
        received["alpha"] = alpha
        return doubles.alpha_gates(q, k, v, alpha, beta, *args, **kwargs)

    o, final_state = Adapter("alpha", spy, gate_space="alpha")(case, inputs)
    wanted = torch.exp(inputs["g"].double()).to(torch.promote_types(inputs["g"].dtype, inputs["q"].dtype))
    assert_bitwise((received["alpha"],), (wanted,))
    ref = expected(case, inputs)
    if case.dtype == "float64":  # alpha stays float64 in exact mode: nothing is rounded
        assert_bitwise((o, final_state), ref)
    else:  # alpha rounded to float32 once: ~1e-7 relative, far inside the float32 tolerance
        for a, r in zip((o, final_state), ref):
            assert (a.double() - r.double()).norm() <= 1e-6 * r.double().norm()
    assert torch.equal(alpha_of(inputs["g"], inputs["q"].dtype), received["alpha"])


def test_outside_l2norm_normalizes_in_float64_and_rounds_to_the_input_dtype():
    case = CASES[1]
    inputs = make_inputs(case)
    adapter = Adapter("no_l2norm_flag", doubles.no_l2norm_flag, l2norm="outside")
    normalized = {**inputs, "q": l2_normalized(inputs["q"]), "k": l2_normalized(inputs["k"])}
    assert normalized["q"].dtype == torch.bfloat16
    assert_bitwise(adapter(case, inputs), expected(case.with_(l2norm=False), normalized))
    with pytest.raises(NotSupported, match="l2norm"):
        Adapter("x", doubles.no_l2norm_flag, l2norm="unsupported")(case, inputs)


# ----------------------------------------------------------------------------------------
# Through the runner: mis-declarations fail, missing arguments are not supported
# ----------------------------------------------------------------------------------------

MISDECLARED = {
    # the implementation's convention -> (its double, declared right, declared wrong, a case that tells)
    "state [N, HV, V, K]": (doubles.state_vk, dict(state_layout="vk"), {},
                            dense(20, H=1, HV=2, K=8, V=8, dtype="float32", init_state="random")),
    "key head h % H": (doubles.mod_heads, dict(head_map="mod"), {},
                       dense(20, H=2, HV=4, K=8, V=8, dtype="float32")),
    "alpha gates": (doubles.alpha_gates, dict(gate_space="alpha"), {}, dense(20, H=1, HV=2, K=8, V=8, dtype="float32")),
    "packed [T, H, D]": (doubles.packed_layout, dict(layout="varlen"), {},
                         varlen((5, 9), H=1, HV=2, K=8, V=8, dtype="float32")),
    "log gates (declared alpha)": (doubles.rounded_reference, {}, dict(gate_space="alpha"),
                                   dense(20, H=1, HV=2, K=8, V=8, dtype="float32", gate="strong")),
}


@pytest.mark.parametrize("what", MISDECLARED)
def test_a_misdeclared_convention_is_caught(what):
    fn, right, wrong, case = MISDECLARED[what]
    good = run_cases([case], Adapter("right", fn, **right), "cpu", QUICK).cases[0]
    assert good.status == "pass", good.failures
    bad = run_cases([case], Adapter("wrong", fn, **wrong), "cpu", QUICK).cases[0]
    assert bad.status in ("fail", "error") and bad.failures, bad.status
    if bad.status == "fail":
        assert any("RMS error ratio" in f for f in bad.failures), bad.failures


def test_cases_needing_a_missing_argument_are_not_supported_never_passed():
    cases = [dense(20, H=1, HV=2, K=8, V=8, dtype="float32"),
             dense(20, H=1, HV=2, K=8, V=8, dtype="float32", init_state="random"),
             varlen((4, 0, 9), H=1, HV=2, K=8, V=8, dtype="float32", init_state="random")]
    adapter = Adapter("no_initial_state", doubles.no_initial_state, lacks={"initial_state"})
    result = run_cases(cases, adapter, "cpu", QUICK)
    assert [r.status for r in result.cases] == ["pass", "not supported", "not supported"]
    assert result.totals["pass"] == 1 and result.totals["not supported"] == 2 and result.totals["fail"] == 0
    assert result.passed  # not supported is no failure...
    assert "1 pass" in verdict(result) and "2 not supported" in verdict(result)  # ...and no pass
    skipped = result.cases[1]
    assert skipped.checks == {} and skipped.invariants == [] and "initial state" in skipped.not_supported[0]
    # The passing case's split-equivalence chains two calls through a state it cannot take.
    assert [i.name for i in result.cases[0].invariants] == [n for n in INVARIANTS if n != "split-equivalence"]
    assert result.cases[0].not_supported == ["split-equivalence: needs an initial state: the implementation "
                                             "takes no initial_state"]
    md = markdown(result)
    assert "### Not supported by the implementation" in md and f"`{cases[1].id}`" in md


def test_a_packed_invariant_without_cu_seqlens_is_not_supported():
    case = dense(20, H=1, HV=2, K=8, V=8, dtype="float32")  # alone; batch invariance packs it with fillers
    result = run_cases([case], Adapter("dense-only", doubles.rounded_reference, lacks={"cu_seqlens"}), "cpu", QUICK)
    (r,) = result.cases
    assert r.status == "pass" and [i.name for i in r.invariants] == [n for n in INVARIANTS if n != "batch-invariance"]
    assert r.not_supported == ["batch-invariance: needs 3 packed sequences: the implementation takes no cu_seqlens"]


@pytest.mark.parametrize("changes, case, needs", [
    (dict(dtypes=("float32",)), dense(4, H=1, HV=1, K=8, V=8, dtype="bfloat16"), "dtype bfloat16"),
    (dict(lacks={"gva"}), dense(4, H=1, HV=2, K=8, V=8, dtype="float32"), "HV != H"),
    (dict(lacks={"scale"}), dense(4, H=1, HV=1, K=8, V=8, dtype="float32", scale=0.5), "scale 0.5"),
    (dict(lacks={"final_state"}), dense(4, H=1, HV=1, K=8, V=8, dtype="float32"), "final state"),
    (dict(lacks={"cu_seqlens"}), varlen((3, 4), H=1, HV=1, K=8, V=8, dtype="float32"), "2 packed sequences"),
    (dict(layout="varlen", lacks={"cu_seqlens"}), dense(4, B=2, H=1, HV=1, K=8, V=8, dtype="float32"),
     "2 packed sequences"),
    (dict(gate_floor=False), dense(4, H=1, HV=1, K=8, V=8, dtype="float32", gate="extreme"), "gate floor"),
])
def test_each_missing_capability_names_what_the_case_needs(changes, case, needs):
    adapter = Adapter("x", doubles.rounded_reference, **changes)
    assert needs in adapter.unsupported(case)
    assert Adapter("x", doubles.rounded_reference).unsupported(case) is None


def test_without_a_gate_floor_only_gates_under_it_are_not_supported():
    """Case-level (the extreme regime) and input-level (a derived call's gates, as the invariants
    make them): strong gates down to the floor itself still run."""
    adapter = Adapter("no-floor", doubles.rounded_reference, gate_floor=False)
    strong = dense(20, H=1, HV=2, K=8, V=8, dtype="float32", gate="strong")
    result = run_cases([strong, dense(20, H=1, HV=2, K=8, V=8, dtype="float32", gate="extreme")], adapter, "cpu",
                       QUICK)
    assert [r.status for r in result.cases] == ["pass", "not supported"]
    inputs = make_inputs(strong)
    adapter.prepare(strong, inputs)
    inputs["g"][0, 3, 1] = -31.0  # under float32's floor of -30
    with pytest.raises(NotSupported, match="gate floor"):
        adapter.prepare(strong, inputs)
    Adapter("x", doubles.rounded_reference).prepare(strong, inputs)
    # Not a call convention: the identity of a store written with or without it is the same.
    from gdn_verify.identity import implementation_identity, key
    assert key(implementation_identity(adapter)) == key(
        implementation_identity(Adapter("no-floor", doubles.rounded_reference)))


def test_one_packed_sequence_runs_on_an_implementation_without_cu_seqlens():
    case = varlen((9,), H=1, HV=2, K=8, V=8, dtype="float32", init_state="random")
    inputs = make_inputs(case)
    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return doubles.rounded_reference(*args, **kwargs)

    assert_bitwise(Adapter("x", spy, lacks={"cu_seqlens", "scale"})(case, inputs), expected(case, inputs))
    assert "cu_seqlens" not in seen and "scale" not in seen


# ----------------------------------------------------------------------------------------
# Declarations, resolution, built-ins
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    (dict(layout="bthd"), "layout"), (dict(state_layout="kvn"), "state_layout"), (dict(gate_space="lin"), "gate_space"),
    (dict(head_map="xor"), "head_map"), (dict(lacks={"beta"}), "lacks"), (dict(dtypes=("float8",)), "dtypes"),
    (dict(cu_seqlens_dtype="int8"), "cu_seqlens_dtype"), (dict(l2norm_arg="not a name"), "l2norm_arg"),
])
def test_bad_declarations_are_rejected_by_name(changes, message):
    with pytest.raises(ValueError, match=message):
        Adapter("x", doubles.rounded_reference, **changes)
    with pytest.raises(ImplError, match=message):
        resolve_impl("gdn_doubles:rounded_reference", **changes)


def test_resolve_applies_conventions_and_keeps_declared_gaps():
    adapter = resolve_impl("convention_doubles:state_vk", state_layout="vk", layout=None)
    assert adapter.state_layout == "vk" and adapter.layout == "dense" and not adapter.calls_common_signature
    assert resolve_impl("gdn_doubles:rounded_reference").calls_common_signature
    ours = resolve_impl("gdn")
    assert ours.ours and ours.calls_common_signature and ours.variants is not None
    narrowed = resolve_impl("convention_doubles:no_initial_state", lacks={"initial_state"})
    assert resolve_impl(narrowed.spec, lacks={"scale"}).lacks == {"scale"}
    from gdn_verify.adapters import with_conventions

    assert with_conventions(narrowed, lacks={"scale"}).lacks == {"initial_state", "scale"}


def test_triton_variants_count_compiled_kernels_through_wrappers(monkeypatch):
    class Compiled:  # what a compiled-mode JITFunction keeps: device -> (kernel cache, ...)
        def __init__(self, fn, cached):
            self.fn, self.device_caches = fn, {0: ({i: object() for i in range(cached)}, None, None)}

    class Autotuned:  # an autotuner or heuristics wrapper: the kernel is under .fn
        def __init__(self, fn):
            self.fn = fn

    def chunk_kernel():
        pass

    def idle_kernel():
        pass

    chunk_kernel.__module__ = idle_kernel.__module__ = "fakepkg.ops"
    module = types.ModuleType("fakepkg.ops")
    module.chunk = Autotuned(Autotuned(Compiled(chunk_kernel, 3)))
    module.idle = Compiled(idle_kernel, 0)
    module.helper = len
    monkeypatch.setitem(sys.modules, "fakepkg", types.ModuleType("fakepkg"))
    monkeypatch.setitem(sys.modules, "fakepkg.ops", module)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    count, forget = triton_variants("fakepkg")
    assert count() == {"ops.chunk_kernel": 3}
    forget()  # through the wrappers too
    assert count() == {}
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # interpreted kernels compile nothing
    assert triton_variants("fakepkg") == (None, None)
    monkeypatch.delenv("TRITON_INTERPRET")
    assert triton_variants("gdn_doubles") == (None, None)  # no Triton kernels


def _fla_or_skip(name: str, device: str):
    try:
        return resolve_impl(name, device=device)
    except ImplUnavailable as exc:
        assert "pip install" in str(exc) or "CUDA" in str(exc)
        pytest.skip(f"{name} unavailable: {exc}")


def test_fla_chunk_names_why_it_cannot_run_on_the_cpu():
    with pytest.raises(ImplUnavailable) as info:
        resolve_impl("fla-chunk", device="cpu")
    message = str(info.value)
    # Not installed: the install command; installed: the CUDA requirement and why.
    assert "pip install 'gdn-verify[fla]'" in message or ("CUDA" in message and "interpreter" in message)


def test_fla_recurrent_agrees_with_the_reference_where_it_runs(device):
    """flash-linear-attention's recurrent kernel (one autotune config: it runs under the
    interpreter too) through its declared conventions, on float32 cases of every layout."""
    adapter = _fla_or_skip("fla-recurrent", device)
    cases = [dense(20, B=2, H=1, HV=2, K=16, V=16, dtype="float32", init_state="random", l2norm=True),
             varlen((5, 0, 9), H=2, HV=4, K=16, V=8, dtype="float32", init_state="random"),
             dense(3, H=1, HV=1, K=16, V=16, dtype="float64"),
             dense(3, H=1, HV=1, K=16, V=16, dtype="bfloat16")]
    result = run_cases(cases, adapter, device, QUICK)
    bf16 = "pass" if device == "cuda" else "not supported"  # the interpreter truncates bf16 stores
    assert [r.status for r in result.cases] == ["pass", "pass", "not supported", bf16], [
        r.failures for r in result.cases]
    assert "not supported upstream" in result.cases[2].not_supported[0]


@pytest.mark.gpu
def test_fla_chunk_agrees_with_the_reference_on_cuda(device):
    if device != "cuda":
        pytest.skip("fla-chunk needs a CUDA device")
    adapter = _fla_or_skip("fla-chunk", device)
    cases = [dense(100, B=2, H=2, HV=4, K=64, V=64, dtype="float32", init_state="random"),
             varlen((5, 0, 70), H=2, HV=4, K=64, V=64, dtype="float32", init_state="random", l2norm=True)]
    result = run_cases(cases, adapter, device, QUICK)
    assert [r.status for r in result.cases] == ["pass", "pass"], [r.failures for r in result.cases]


def test_former_layout_names_are_accepted_everywhere(capsys):
    """--layout batched / packed, Adapter(layout=...) and stores that recorded them mean dense / varlen."""
    from gdn_verify import cli
    from gdn_verify.identity import key

    parser = cli.build_parser()
    for old, new in (("batched", "dense"), ("packed", "varlen")):
        assert cli.impl_requests(parser.parse_args(["run", "--layout", old]).impl) == [("gdn", {"layout": new})]
        assert Adapter("a", lambda *a, **k: None, layout=old).layout == new
        assert key({"spec": "m:f", "conventions": {"layout": old}}) == key({"spec": "m:f", "conventions": {"layout": new}})
    assert cli.main(["run", "--help"]) == 0
    assert "batched and packed, their former names" in " ".join(capsys.readouterr().out.split())
