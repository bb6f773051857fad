"""`gdn-verify compare`: several implementations over the same cases, one side-by-side report.

End to end through the CLI on the smoke suite (our chunk kernel under the interpreter beside a
reference-backed double that uses every other convention), plus the parts of a comparison a
reviewer reads: failures shown with their case and metric, "not supported" counted apart,
unavailable implementations skipped with their reason, the time budget, the benchmark shapes.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from gdn_verify import cli
from gdn_verify.adapters import Adapter
from gdn_verify.cases import dense, varlen
from gdn_verify.bench_shapes import BENCH_DENSE_T, BENCH_MODEL
from gdn_verify.compare_impls import bench_cases, compare_impls, shape_class
from gdn_verify.impls import resolve_impl
from gdn_verify.report_compare import comparison_markdown
from gdn_verify.results import RunOptions
from gdn_verify.suites import suite

import gdn_doubles

EVERY_CONVENTION = ["--impl", "convention_doubles:every_convention", "--layout", "varlen", "--state-layout", "vk",
                    "--gate-space", "alpha", "--head-map", "mod", "--l2norm", "outside"]


def run(*argv) -> int:
    return cli.main([str(a) for a in argv])


def load(path):
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_compare_cli_puts_our_kernel_and_a_double_side_by_side(tmp_path, capsys):
    out_json, out_md = tmp_path / "c.json", tmp_path / "c.md"
    cases = suite("smoke")[:2]
    assert run("compare", "--suite", "smoke", "--max-cases", 2, "--device", "cpu", "--impl", "gdn",
               *EVERY_CONVENTION, "--json", out_json, "--markdown", out_md) == 0
    specs = ["gdn", "convention_doubles:every_convention"]
    report = load(out_json)
    assert report["passed"] and list(report["runs"]) == specs
    assert report["impls"][1]["conventions"]["state_layout"] == "vk"
    assert report["impls"][1]["conventions"]["head_map"] == "mod"
    for spec in specs:
        run_ = report["runs"][spec]
        assert [c["id"] for c in run_["cases"]] == [c.id for c in cases]
        assert run_["totals"]["pass"] == 2
    assert report["runs"]["gdn"]["variant_audit"]["passed"]
    assert report["runs"][specs[1]]["variant_audit"] is None and "n/a" in report["audit_notes"][specs[1]]
    groups = {(g["dtype"], g["shape"]): g for g in report["groups"]}
    assert set(groups) == {(c.dtype, shape_class(c)) for c in cases}
    for g in groups.values():
        assert set(g["impls"]) == set(specs) and all(s["pass"] == g["cases"] for s in g["impls"].values())
    assert report["invariants"]["determinism"]["gdn"] == {"pass": 2, "fail": 0, "not supported": 0}

    md = out_md.read_text()
    assert md.startswith("**gdn-verify PASS: compare")
    assert "| dtype | shape | cases | what | gdn | convention_doubles:every_convention |" in md
    assert "| invariants | determinism 1/1, batch-invariance 1/1, split-equivalence 1/1, causality 1/1, fused-qkv-views 1/1 |" in md
    assert "### Compiled variants across the T sweep" in md and "### Invariants" in md
    out = capsys.readouterr().out
    assert "gdn: PASS" in out and "convention_doubles:every_convention: PASS" in out


def test_a_failing_implementation_shows_which_case_and_how(tmp_path):
    out_json, out_md = tmp_path / "c.json", tmp_path / "c.md"
    assert run("compare", "--suite", "smoke", "--device", "cpu", "--no-audit", "--impl", "gdn_doubles:rounded_reference",
               "--impl", "gdn_doubles:one_broken_chunk", "--json", out_json, "--markdown", out_md) == 1
    report = load(out_json)
    broken = report["runs"]["gdn_doubles:one_broken_chunk"]
    assert report["runs"]["gdn_doubles:rounded_reference"]["passed"] and not broken["passed"]
    failing = [c for c in broken["cases"] if c["status"] == "fail"]
    assert failing
    md = out_md.read_text()
    assert md.startswith("**gdn-verify FAIL") and "### Failures of `gdn_doubles:one_broken_chunk`" in md
    assert "### Failures of `gdn_doubles:rounded_reference`" not in md
    for case in failing:  # each failing case with every check it failed: metric, value vs tolerance
        line = next(row for row in md.splitlines() if row.startswith(f"| `{case['id']}` | fail |"))
        assert "; ".join(case["failures"]).replace("|", "\\|") in line
    assert re.search(r"\| fail \| o: RMS error ratio \S+ > 1e-12; o: worst slice ratio \S+ > 1e-12 at sequence \d+, "
                     r"head \d+, chunk \d+", md)


def test_not_supported_cases_are_counted_apart(tmp_path):
    out_json, out_md = tmp_path / "c.json", tmp_path / "c.md"
    assert run("compare", "--suite", "smoke", "--device", "cpu", "--no-audit", "--impl", "gdn_doubles:rounded_reference",
               "--impl", "convention_doubles:no_initial_state", "--no-initial-state",
               "--json", out_json, "--markdown", out_md) == 0
    report = load(out_json)
    with_state = sum(c.init_state == "random" for c in suite("smoke"))
    lacking = report["runs"]["convention_doubles:no_initial_state"]["totals"]
    assert lacking["not supported"] == with_state and lacking["pass"] == len(suite("smoke")) - with_state
    assert lacking["fail"] == lacking["error"] == 0
    split = report["invariants"]["split-equivalence"]["convention_doubles:no_initial_state"]
    # Chained calls need a state; a one-token sequence is not split at all.
    assert split["not supported"] == sum(c.init_state == "none" and max(c.seq_lens) > 1 for c in suite("smoke"))
    md = out_md.read_text()
    assert "### Not supported by `convention_doubles:no_initial_state`" in md
    assert "needs an initial state" in md


def test_an_unavailable_implementation_is_skipped_with_its_reason(tmp_path, capsys):
    out_json = tmp_path / "c.json"
    assert run("compare", "--suite", "smoke", "--max-cases", 1, "--device", "cpu", "--no-audit",
               "--impl", "gdn_doubles:rounded_reference", "--impl", "fla-chunk", "--json", out_json) == 0
    report = load(out_json)
    reason = report["unavailable"]["fla-chunk"]
    assert "pip install 'gdn-verify[fla]'" in reason or "needs a CUDA device" in reason
    assert list(report["runs"]) == ["gdn_doubles:rounded_reference"]
    assert f"skipping fla-chunk: {reason}" in capsys.readouterr().out
    assert run("compare", "--suite", "smoke", "--device", "cpu", "--impl", "fla-chunk") == 2


@pytest.mark.parametrize("argv", [
    ["compare", "--suite", "smoke", "--device", "cpu", "--bench"],  # latency needs CUDA
    ["compare", "--suite", "smoke", "--device", "cpu", "--impl", "gdn", "--impl", "gdn"],
    ["compare", "--suite", "smoke", "--device", "cpu", "--time-budget", "0"],
    ["compare", "--suite", "smoke", "--device", "cpu", "--impl", "gdn", "--dtypes", "float8"],
    ["run", "--suite", "smoke", "--device", "cpu", "--impl", "gdn", "--impl", "gdn-recurrent"],
])
def test_compare_usage_errors_exit_2(argv):
    assert run(*argv) == 2


def test_convention_flags_apply_to_the_impl_before_them():
    parser = cli.build_parser()
    args = parser.parse_args(["compare", "--no-scale", "--impl", "a:f", "--state-layout", "vk", "--impl", "b:g",
                              "--no-cu-seqlens", "--no-gva", "--dtypes", "float32,bfloat16", "--keyword-tensors"])
    assert cli.impl_requests(args.impl) == [
        ("a:f", {"lacks": {"scale"}, "state_layout": "vk"}),
        ("b:g", {"lacks": {"cu_seqlens", "gva"}, "dtypes": ("float32", "bfloat16"), "keyword_tensors": True})]
    assert cli.impl_requests(parser.parse_args(["run", "--head-map", "mod"]).impl) == [("gdn", {"head_map": "mod"})]
    assert cli.impl_requests(parser.parse_args(["run", "--impl", "a:f", "--no-gate-floor"]).impl) == [
        ("a:f", {"gate_floor": False})]
    assert cli.impl_requests(parser.parse_args(["run"]).impl) == [("gdn", {})]


def test_the_time_budget_cuts_every_column_at_the_same_case():
    cases = [dense(8, H=1, HV=1, K=8, V=8, dtype="float32"), varlen((3, 4), H=1, HV=1, K=8, V=8, dtype="float32")]
    adapters = [resolve_impl("gdn_doubles:rounded_reference"), resolve_impl("gdn_doubles:zeros")]
    options = RunOptions(audit=False, invariants=())
    cmp = compare_impls(adapters, cases, "cpu", options, time_budget_s=1e-9)
    assert cmp.not_run == [c.id for c in cases] and all(run.cases == [] for run in cmp.runs.values())
    assert "### Not run: the time budget of 1e-09 s was reached" in comparison_markdown(cmp)
    full = compare_impls(adapters, cases, "cpu", options)
    assert full.not_run == [] and [len(run.cases) for run in full.runs.values()] == [2, 2]
    assert not full.passed and full.runs["gdn_doubles:rounded_reference"].passed


def test_an_interrupt_stops_the_cases_and_keeps_what_ran():
    cases = [dense(8, H=1, HV=1, K=8, V=8, dtype="float32"), varlen((3, 4), H=1, HV=1, K=8, V=8, dtype="float32")]

    def interrupted_on_packed(*args, cu_seqlens=None, **kwargs):
        if cu_seqlens is not None:
            raise KeyboardInterrupt  # what `timeout -s INT` delivers
        return gdn_doubles.rounded_reference(*args, cu_seqlens=cu_seqlens, **kwargs)

    adapters = [resolve_impl("gdn_doubles:rounded_reference"), Adapter("interrupted", interrupted_on_packed)]
    cmp = compare_impls(adapters, cases, "cpu", RunOptions(audit=False, invariants=()))
    assert cmp.interrupted and cmp.not_run == [cases[1].id]
    assert [len(run.cases) for run in cmp.runs.values()] == [1, 1]  # every column cut at the same case
    assert "### Not run: interrupted" in comparison_markdown(cmp)


def test_benchmark_shapes_are_designs():
    shapes = bench_cases()
    assert [c.T for _, c in shapes[:-1]] == list(BENCH_DENSE_T)
    packed = shapes[-1][1]
    assert packed.layout == "varlen" and packed.N == 256 and min(packed.seq_lens) >= 1 and max(packed.seq_lens) <= 128
    for _, case in shapes:
        assert (case.H, case.HV, case.K, case.V) == tuple(BENCH_MODEL.values())
        assert case.dtype == "bfloat16" and case.init_state == "random"


def test_bench_rows_per_shape_and_implementation(monkeypatch):
    """The benchmark's bookkeeping on small shapes, with the timer stubbed (do_bench needs CUDA)."""
    import triton.testing

    from gdn_verify import compare_impls as module

    calls = []

    def timed(fn, **kwargs):
        fn()
        calls.append(kwargs["return_mode"])
        return 0.25

    shapes = [("T = 8", dense(8, H=1, HV=2, K=8, V=8, dtype="bfloat16", init_state="random", l2norm=True)),
              ("packed", varlen((3, 0, 5), H=1, HV=2, K=8, V=8, dtype="bfloat16", init_state="random"))]
    monkeypatch.setattr(module, "bench_cases", lambda: shapes)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(triton.testing, "do_bench", timed)
    adapters = [resolve_impl("gdn_doubles:rounded_reference"), resolve_impl("gdn_doubles:raises"),
                Adapter("dense-only", gdn_doubles.rounded_reference, lacks={"cu_seqlens"})]
    rows = module.run_bench(adapters, "cpu")
    got = [(r.shape, r.impl, r.status) for r in rows]
    assert got == [("T = 8", "gdn_doubles:rounded_reference", "ok"), ("T = 8", "gdn_doubles:raises", "error"),
                   ("T = 8", "dense-only", "ok"), ("packed", "gdn_doubles:rounded_reference", "ok"),
                   ("packed", "gdn_doubles:raises", "error"), ("packed", "dense-only", "not supported")]
    assert all(r.median_ms == 0.25 and r.first_call_s >= 0 for r in rows if r.status == "ok")
    assert calls == ["median"] * 3 and "deliberate failure" in rows[1].detail
    assert "cu_seqlens" in rows[-1].detail and rows[3].T == 8 and rows[3].sequences == 3
    late = module.run_bench(adapters[:1], "cpu", deadline=0.0)
    assert [r.status for r in late] == ["not run", "not run"]


@pytest.mark.gpu
def test_bench_times_every_implementation_on_cuda(device):
    if device != "cuda":
        pytest.skip("latency is measured on CUDA only")
    from gdn_verify.compare_impls import run_bench

    rows = run_bench([resolve_impl("gdn", device=device)], device)
    assert len(rows) == len(bench_cases()) and all(r.status == "ok" and r.median_ms > 0 for r in rows)
    torch.cuda.empty_cache()
