"""The harness end to end: runner, invariants, goldens, reports and the CLI's exit codes.

Most runs use the implementations of tests/gdn_doubles.py (right by construction, or wrong in
one specific way), which cost nothing beyond the reference; one run puts our chunk kernel
through the whole smoke suite under the interpreter.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from gdn_verify import cli
from gdn_verify.cases import dense, varlen
from gdn_verify.adapters import Adapter
from gdn_verify.impls import resolve_impl
from gdn_verify.inputs import make_inputs
from gdn_verify.invariants import INVARIANTS, diagnose_stages
from gdn_verify.reference import chunked_gated_delta_rule
from gdn_verify.report import markdown
from gdn_verify.audit import variant_audit
from gdn_verify.results import RunOptions
from gdn_verify.runner import run_cases
from gdn_verify.suites import suite

import gdn_doubles

NO_EXTRAS = dict(audit=False, diagnose=False)


def run(*argv) -> int:
    return cli.main([str(a) for a in argv])


def double(name: str) -> Adapter:
    return resolve_impl(f"gdn_doubles:{name}")


# ----------------------------------------------------------------------------------------
# CLI end to end
# ----------------------------------------------------------------------------------------

def test_smoke_suite_with_our_kernel_passes_and_writes_reports(tmp_path, capsys):
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    assert run("run", "--suite", "smoke", "--impl", "gdn", "--device", "cpu", "--json", out_json,
               "--markdown", out_md) == 0
    report = json.loads(out_json.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert report["passed"] and report["suite"] == "smoke" and report["impl"] == "gdn"
    assert report["totals"]["cases"] == len(suite("smoke")) == report["totals"]["pass"]
    assert report["fingerprint"]["backend"] == "cpu-interpreter"
    case = report["cases"][0]
    assert {"o", "final_state"} == set(case["checks"]) and case["checks"]["o"]["n_unwritten"] == 0
    assert {i["name"] for i in case["invariants"]} == set(INVARIANTS)
    assert report["variant_audit"]["passed"] and report["variant_audit"]["after_sweep"]
    md = out_md.read_text()
    assert md.startswith("**gdn-verify PASS") and "### Worst errors per dtype" in md
    assert "### Compile-variant audit" in md
    assert "PASS" in capsys.readouterr().out


def test_a_wrong_implementation_exits_1_and_is_reported_first(tmp_path):
    out_md, repro = tmp_path / "r.md", tmp_path / "repro"
    assert run("run", "--suite", "smoke", "--impl", "gdn_doubles:zeros", "--device", "cpu",
               "--markdown", out_md, "--repro-dir", repro) == 1
    md = out_md.read_text()
    assert md.startswith("**gdn-verify FAIL") and md.index("### Changed and failed cases") < md.index("### Worst")
    assert "RMS error ratio 1 >" in md
    # Every smoke case has a non-zero reference, so zero outputs fail all of them.
    assert sorted(p.name for p in repro.iterdir()) == sorted(c.id for c in suite("smoke"))
    assert all((repro / c.id / "repro.py").is_file() for c in suite("smoke"))


@pytest.mark.parametrize("argv", [
    ["run", "--suite", "nightly"],
    ["run", "--suite", "smoke", "--impl", "no_such_module_anywhere:fn"],
    ["run", "--suite", "smoke", "--impl", "gdn_doubles:no_such_function"],
    ["run", "--suite", "smoke", "--impl", "not-a-spec"],
    ["run", "--suite", "smoke", "--cases", "("],
    ["run", "--suite", "smoke", "--device", "tpu"],
    ["frobnicate"],
])
def test_usage_errors_exit_2(argv):
    assert run(*argv) == 2


def test_missing_or_corrupt_goldens_exit_2(tmp_path, capsys):
    assert run("run", "--suite", "smoke", "--impl", "gdn_doubles:rounded_reference", "--device", "cpu",
               "--goldens", tmp_path / "absent") == 2
    store = tmp_path / "goldens"
    args = ["--suite", "smoke", "--cases", "t1-", "--impl", "gdn_doubles:rounded_reference", "--device", "cpu",
            "--goldens", store]
    assert run("golden", "regen", *args) == 0
    (golden_file,) = next(store.iterdir()).glob("*.safetensors")
    golden_file.write_bytes(golden_file.read_bytes()[:-4] + b"\0\0\0\0")
    capsys.readouterr()
    assert run("run", *args, "--no-audit") == 2
    assert "corrupt" in capsys.readouterr().err


def test_cases_and_selfcheck(capsys):
    assert run("cases", "--suite", "smoke") == 0
    assert capsys.readouterr().out.split() == [c.id for c in suite("smoke")]
    assert run("selfcheck", "--device", "cpu", "--max-cases", "2") == 0
    assert "chunked" in capsys.readouterr().out


def test_selfcheck_without_jax_says_how_to_install_it(monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jax" else find_spec(name, *a))
    assert run("selfcheck", "--device", "cpu", "--max-cases", "1") == 2
    assert "pip install 'gdn-verify[jax]'" in capsys.readouterr().err


def test_golden_cycle_catches_a_one_ulp_change(tmp_path, capsys):
    """regen -> equal -> a one-ULP change fails with its ULP stats -> regen --force -> equal."""
    store = tmp_path / "goldens"
    common = ["--suite", "smoke", "--device", "cpu", "--goldens", store]
    assert run("golden", "regen", *common, "--impl", "gdn_doubles:rounded_reference") == 0
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    assert run("run", *common, "--impl", "gdn_doubles:rounded_reference", "--json", out_json) == 0
    report = json.loads(out_json.read_text())
    assert report["totals"]["golden_equal"] == len(suite("smoke"))

    assert run("run", *common, "--impl", "gdn_doubles:one_ulp", "--against-impl", "--markdown", out_md, "--json", out_json) == 1
    report = json.loads(out_json.read_text())
    changed = [c for c in report["cases"] if c["status"] == "changed"]
    assert changed and all(c["golden"]["status"] == "different" for c in changed)
    diff = changed[0]["golden"]["diffs"]["o"]
    assert diff["n_different"] > 0 and diff["max_ulp"] == 1 and diff["histogram"]["1"] == diff["n_different"]
    md = out_md.read_text()
    assert md.startswith("**gdn-verify FAIL") and f"`{changed[0]['id']}`" in md
    assert f"| golden | o | {diff['n_different']}/{diff['n_elements']} | 1 |" in md  # differing, max ULP

    capsys.readouterr()
    assert run("golden", "diff", *common, "--impl", "gdn_doubles:one_ulp", "--against-impl") == 1
    assert run("golden", "regen", *common, "--impl", "gdn_doubles:one_ulp", "--against-impl") == 0
    assert "--force" in capsys.readouterr().out  # existing goldens left alone, with a hint
    assert run("golden", "diff", *common, "--impl", "gdn_doubles:one_ulp", "--against-impl") == 1
    assert run("golden", "regen", *common, "--impl", "gdn_doubles:one_ulp", "--against-impl", "--force") == 0
    assert "replaced" in capsys.readouterr().out
    assert run("golden", "diff", *common, "--impl", "gdn_doubles:one_ulp", "--against-impl") == 0


def test_golden_regen_refuses_failing_cases(tmp_path):
    store = tmp_path / "goldens"
    assert run("golden", "regen", "--suite", "smoke", "--device", "cpu", "--goldens", store,
               "--impl", "gdn_doubles:zeros") == 1
    # Every smoke case has a non-zero reference: zero outputs fail them all, and none is written.
    for platform_dir in store.iterdir():
        assert json.loads((platform_dir / "manifest.json").read_text())["cases"] == {}


def test_interrupted_regen_writes_the_cases_that_passed(tmp_path, capsys):
    """A regen stopped mid-run (what timeout's SIGTERM becomes) keeps the goldens of the cases
    that passed before the stop, exits 1, and never prunes on a partial run."""
    store = tmp_path / "goldens"
    common = ["--suite", "smoke", "--device", "cpu", "--goldens", store]
    assert run("golden", "regen", *common, "--impl", "gdn_doubles:rounded_reference", "--cases", "h1x2") == 0
    before = set(json.loads(next(store.iterdir()).joinpath("manifest.json").read_text())["cases"])
    gdn_doubles.interrupted_after_two_calls.calls = 0
    capsys.readouterr()
    assert run("golden", "regen", *common, "--impl", "gdn_doubles:interrupted_after_two_calls", "--against-impl", "--prune") == 1
    out = capsys.readouterr().out
    n_cases = len(suite("smoke"))
    assert f"interrupted after 2 of {n_cases} cases" in out and "--prune not applied" in out
    after = set(json.loads(next(store.iterdir()).joinpath("manifest.json").read_text())["cases"])
    first_two = {c.id for c in suite("smoke")[:2]}
    assert after == before | first_two and len(after - before) == len(first_two - before) > 0


def test_digest_only_goldens_catch_a_one_ulp_change(tmp_path, capsys):
    """Under --max-golden-bytes 0 every tensor is stored as its digest: equal bits still pass,
    a one-ULP change still exits 1, and the reports say the golden was digest only."""
    store = tmp_path / "goldens"
    common = ["--suite", "smoke", "--cases", "dense-b2-t65", "--device", "cpu", "--goldens", store]
    assert run("golden", "regen", *common, "--impl", "gdn_doubles:rounded_reference", "--max-golden-bytes", "0") == 0
    (platform_dir,) = store.iterdir()
    manifest = json.loads((platform_dir / "manifest.json").read_text())
    assert manifest["max_tensor_bytes"] == 0 and not list(platform_dir.glob("*.safetensors"))
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    assert run("run", *common, "--impl", "gdn_doubles:rounded_reference", "--no-audit", "--json", out_json) == 0
    assert json.loads(out_json.read_text())["cases"][0]["golden"]["status"] == "equal"

    assert run("run", *common, "--impl", "gdn_doubles:one_ulp", "--against-impl", "--no-audit", "--json", out_json,
               "--markdown", out_md) == 1
    (case,) = json.loads(out_json.read_text())["cases"]
    assert case["status"] == "changed" and case["golden"]["status"] == "different"
    o, final_state = case["golden"]["diffs"]["o"], case["golden"]["diffs"]["final_state"]
    assert o["digest_only"] and not o["equal"] and o["deltas"]["finite_sum"] != 0
    assert final_state["digest_only"] and final_state["equal"]
    md = out_md.read_text()
    assert f"| `{case['id']}` | golden | o | different (digest only) | - | - | no ULP statistics; finite_sum" in md
    assert "Digest-only goldens:" in md and "--max-golden-bytes" in md

    capsys.readouterr()
    assert run("golden", "diff", *common, "--impl", "gdn_doubles:one_ulp", "--against-impl") == 1
    out = capsys.readouterr().out
    assert "different (digest only)" in out and "hint:" in out
    assert run("golden", "regen", *common, "--impl", "gdn_doubles:one_ulp", "--against-impl", "--force") == 0
    assert "different (digest only)" in capsys.readouterr().out  # what the replacement changed
    assert run("golden", "diff", *common, "--impl", "gdn_doubles:one_ulp", "--against-impl") == 0


def _output_nbytes(case) -> list[int]:
    """Bytes of o ([B, T, HV, V], the case's dtype) and of the final state ([N, HV, K, V], float32;
    float64 in exact mode), from the case's fields."""
    size = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}
    state_size = 8 if case.dtype == "float64" else 4
    return [case.B * case.T * case.HV * case.V * size[case.dtype], case.N * case.HV * case.K * case.V * state_size]


def test_the_cpu_suite_fits_the_interpreter_cap():
    # The committed interpreter goldens keep every tensor in full, hence ULP statistics for
    # every case; a larger cpu-suite case would silently turn into a digest-only golden.
    from gdn_verify.goldens import DEFAULT_MAX_TENSOR_BYTES
    from gdn_verify.platform import INTERPRETER_BACKEND

    largest = max(n for case in suite("cpu") for n in _output_nbytes(case))
    assert largest <= DEFAULT_MAX_TENSOR_BYTES[INTERPRETER_BACKEND]


def test_default_regen_stores_the_largest_cpu_suite_tensors_in_full(tmp_path):
    """...and so does `golden regen` with its default cap, on a new interpreter store."""
    largest = max(suite("cpu"), key=lambda c: max(_output_nbytes(c)))
    assert run("golden", "regen", "--suite", "cpu", "--cases", f"^{re.escape(largest.id)}$", "--device", "cpu",
               "--impl", "gdn_doubles:rounded_reference", "--goldens", tmp_path) == 0
    (manifest_path,) = tmp_path.glob("*/manifest.json")
    (entry,) = json.loads(manifest_path.read_text())["cases"].values()
    assert {meta["stored"] for meta in entry["tensors"].values()} == {"file"}


# ----------------------------------------------------------------------------------------
# Checks and invariants through the runner
# ----------------------------------------------------------------------------------------

def _one(case, impl, **options):
    return run_cases([case], impl, "cpu", RunOptions(**{**NO_EXTRAS, **options})).cases[0]


def test_one_broken_chunk_is_caught_by_the_worst_slice():
    case = dense(192, H=1, HV=2, K=8, V=8, dtype="float32")
    result = _one(case, double("one_broken_chunk"), invariants=())
    o = result.checks["o"]
    # At most the chunk's own 3% (its denominator is floored at the tensor's scale, never below).
    assert result.status == "fail" and o.tolerance["slice"] < o.worst_slice["ratio"] <= 0.03 * (1 + 1e-6)
    assert (o.worst_slice["sequence"], o.worst_slice["head"], o.worst_slice["chunk"]) == (0, 0, 1)
    assert "chunk 1 (tokens 64..127)" in result.failures[-1]


@pytest.mark.parametrize("case", [dense(20, H=1, HV=2, K=8, V=8, dtype="float32"),
                                  varlen((3, 0, 9), H=1, HV=2, K=8, V=8, dtype="float32")], ids=lambda c: c.id)
def test_invariants_catch_what_they_guard(case):
    good = _one(case, double("rounded_reference"))
    assert good.status == "pass" and [i.passed for i in good.invariants] == [True] * len(INVARIANTS)
    noisy = _one(case, double("noisy"), invariants=("determinism",))
    assert noisy.status == "fail" and "determinism" in noisy.failures[0]
    dependent = _one(case, double("batch_dependent"), invariants=("batch-invariance", "split-equivalence"))
    assert [(i.name, i.passed) for i in dependent.invariants] == [("batch-invariance", False),
                                                                 ("split-equivalence", True)]


def test_split_equivalence_fails_when_the_state_is_not_carried():
    case = dense(40, H=1, HV=1, K=8, V=8, dtype="float32", init_state="random")
    impl = Adapter("ignores-initial-state", lambda *a, initial_state=None, **kw: gdn_doubles.rounded_reference(*a, **kw),
                ours=False)
    result = _one(case, impl, invariants=("split-equivalence",))
    assert result.status == "fail" and not result.invariants[0].passed


def test_an_implementation_that_raises_is_an_error_case():
    result = _one(dense(4, H=1, HV=1, K=8, V=8, dtype="float32"), double("raises"))
    assert result.status == "error" and "deliberate failure" in result.failures[0]
    assert "RuntimeError" in result.traceback


def test_stage_diagnosis_names_the_first_divergent_stage():
    case = varlen((70, 5), H=1, HV=2, K=8, V=8, dtype="float32")
    inputs = make_inputs(case)

    def wrong_wy(*args, use_qk_l2norm_in_kernel=False, **kwargs):
        stages = chunked_gated_delta_rule(*args, l2norm=use_qk_l2norm_in_kernel, **kwargs)[-1]
        return {**stages.__dict__, "W": stages.W * 1.01}

    impl = Adapter("wrong-wy", gdn_doubles.rounded_reference, ours=False, intermediates=wrong_wy)
    diagnosis = diagnose_stages(impl, case, inputs, "cpu-interpreter")
    assert diagnosis["first_divergent"] == "W"
    assert diagnosis["stages"]["g_cum"] == 0 and diagnosis["stages"]["A"] == 0

    # The runner diagnoses only after an end-to-end failure, and the report shows it.
    assert _one(case, impl, invariants=(), diagnose=True).stages is None
    broken = Adapter("broken", gdn_doubles.one_broken_chunk, ours=False, intermediates=wrong_wy)
    result = run_cases([case], broken, "cpu", RunOptions(invariants=(), audit=False))
    assert result.cases[0].stages["first_divergent"] == "W"
    assert "| `" + case.id + "` | W |" in markdown(result)


def test_our_kernel_stages_match_the_chunked_reference():
    case = varlen((0, 70, 5), H=1, HV=2, K=16, V=8, dtype="float32", init_state="random")
    diagnosis = diagnose_stages(resolve_impl("gdn"), case, make_inputs(case), "cpu-interpreter")
    assert diagnosis["first_divergent"] is None
    assert set(diagnosis["stages"]) == {"g_cum", "A", "Tm", "W", "U", "h", "v_new", "o", "final_state"}


def test_variant_audit_fails_when_short_sequences_compile_new_variants():
    seen: set[int] = set()

    def tile_from_t(q, *args, **kwargs):
        seen.add(min(64, 1 << (q.shape[1] - 1).bit_length()))  # the seed's bug: tile size from T
        return gdn_doubles.rounded_reference(q, *args, **kwargs)

    audit = variant_audit(Adapter("t-tiles", tile_from_t, ours=False, variants=lambda: {"o_kernel": len(seen)}), "cpu")
    assert not audit.passed and audit.after_t64 == {"o_kernel": 1} and audit.after_sweep["o_kernel"] > 1
    fixed = Adapter("fixed", gdn_doubles.rounded_reference, ours=False, variants=lambda: {"o_kernel": 1})
    assert variant_audit(fixed, "cpu").passed
    assert variant_audit(double("rounded_reference"), "cpu") is None


def test_variant_audit_counts_launched_variants_once_autotuning_settled():
    """An autotuner compiles every config of a key it has not tuned (none, where Triton's disk
    cache holds its choice): an implementation that can forget its variants is counted after
    every key is settled, so the count is the same whether this process tuned or not."""
    configs, tuned, compiled = 4, set(), set()

    def autotuned(q, *args, **kwargs):
        key = "long" if q.shape[1] > 64 else "short"  # a key from T: still a new variant after settling
        if key not in tuned:
            compiled.update((key, c) for c in range(configs))  # timing every config
            tuned.add(key)
        compiled.add((key, 0))  # the chosen config, launched
        return gdn_doubles.rounded_reference(q, *args, **kwargs)

    count = lambda: {"o_kernel": len(compiled)}  # noqa: E731
    unsettled = variant_audit(Adapter("tuning", autotuned, ours=False, variants=count), "cpu")
    assert unsettled.after_t64 == {"o_kernel": configs} and not unsettled.settled  # timing compiles counted
    tuned.clear()
    compiled.clear()
    audit = variant_audit(Adapter("tuning", autotuned, ours=False, variants=count, forget_variants=compiled.clear),
                          "cpu")
    assert audit.settled and audit.after_t64 == {"o_kernel": 1} and audit.after_sweep == {"o_kernel": 2}
    assert not audit.passed and audit.to_json()["settled"]  # the T-dependent key is still found


def test_goldens_of_another_platform_are_not_comparable(tmp_path):
    from gdn_verify.goldens import regenerate
    from gdn_verify.platform import fingerprint

    case = suite("smoke")[0]
    other = {**fingerprint("cpu"), "triton": "0.0-elsewhere"}
    regenerate(tmp_path, other, [(case, "digest", {"o": torch.zeros(1), "final_state": torch.zeros(1)})])
    out_md, out_json = tmp_path / "r.md", tmp_path / "r.json"
    assert run("run", "--suite", "smoke", "--cases", case.id, "--impl", "gdn_doubles:rounded_reference",
               "--device", "cpu", "--goldens", tmp_path, "--no-audit", "--markdown", out_md, "--json", out_json) == 0
    report = json.loads(out_json.read_text())
    assert report["goldens"]["status"] == "not comparable"
    assert report["cases"][0]["golden"]["status"] == "not comparable"
    assert "0.0-elsewhere" in report["goldens"]["detail"] and "### Goldens" in out_md.read_text()


def test_changed_inputs_are_reported_not_compared(tmp_path):
    args = ["--suite", "smoke", "--cases", "t1-", "--impl", "gdn_doubles:rounded_reference", "--device", "cpu",
            "--goldens", tmp_path]
    assert run("golden", "regen", *args) == 0
    (manifest_path,) = tmp_path.glob("*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["cases"].values():
        entry["inputs_digest"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    out_json = tmp_path / "r.json"
    assert run("run", *args, "--no-audit", "--json", out_json) == 1
    (case,) = json.loads(out_json.read_text())["cases"]
    assert case["status"] == "changed" and case["golden"]["status"] == "inputs-changed"


def test_jax_reference_agrees_on_request():
    result = _one(suite("smoke")[2], double("rounded_reference"), invariants=(), jax=True)
    agreement = result.reference_agreement
    assert agreement["reference"] == "jax" and agreement["passed"] and agreement["o"] < 1e-12


@pytest.mark.parametrize("tty", [True, False])
def test_progress_is_a_bar_on_a_tty_and_lines_elsewhere(tty):
    import io

    from rich.console import Console

    from gdn_verify.render import Live
    from gdn_verify.report import print_summary

    out = io.StringIO()
    console = Console(file=out, force_terminal=tty, width=120)
    cases = suite("smoke")[:2]
    with Live(console, len(cases), "smoke") as live:
        result = run_cases(cases, double("zeros"), "cpu", RunOptions(invariants=(), audit=False),
                           on_case=live.case_done)
    print_summary(result, console)
    text = out.getvalue()
    assert ("[1/2] FAIL" in text) is not tty  # numbered plain lines only off a TTY
    assert all(c.id in text for c in cases) and "FAIL: suite" in text
