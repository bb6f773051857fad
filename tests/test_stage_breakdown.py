"""benchmarks/stage_breakdown.py's parts that need no GPU: the kernel-name -> stage maps (checked
against the kernels our forward launches and the names in the installed flash-linear-attention),
the aggregation of profiler events, the byte counts of our stages and the Markdown report."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import stage_breakdown as sb  # noqa: E402


def test_our_map_names_every_kernel_our_forward_launches(monkeypatch, device):
    """The map must follow kernels/: a renamed or added stage kernel would land in 'other'."""
    from gdn_verify.kernels import _launch, chunk_gated_delta_rule

    monkeypatch.setattr(_launch, "_kernels", {})  # launch() records each kernel it starts here
    gen = torch.Generator().manual_seed(0)
    B, T, H, HV, K, V = 1, 70, 1, 2, 16, 16

    def randn(*shape):
        return torch.randn(shape, generator=gen).to(device)

    chunk_gated_delta_rule(randn(B, T, H, K), randn(B, T, H, K), randn(B, T, HV, V), -0.1 * randn(B, T, HV).abs(),
                           torch.sigmoid(randn(B, T, HV)), initial_state=randn(B, HV, K, V), output_final_state=True,
                           use_qk_l2norm_in_kernel=True)
    launched = dict(_launch._kernels)
    assert set(launched) == set(sb.OUR_KERNEL_STAGES)
    for name, kernel in launched.items():  # each kernel's stage is the kernels/ module it lives in
        assert getattr(kernel, "fn", kernel).__module__.rsplit(".", 1)[-1] == sb.OUR_KERNEL_STAGES[name]


@pytest.mark.skipif(importlib.util.find_spec("fla") is None, reason="flash-linear-attention not installed")
def test_fla_patterns_name_kernels_of_the_installed_fla():
    """Each substring names at least one @triton.jit function of the installed package (read as
    text: importing fla is not needed)."""
    root = Path(importlib.util.find_spec("fla").origin).parent
    kernels = set()
    for path in root.rglob("*.py"):
        kernels |= set(re.findall(r"@triton\.jit[^\n]*\n(?:@[^\n]*\n)*def (\w+)\(", path.read_text()))
    for pattern, stage in sb.FLA_KERNEL_STAGES:
        assert any(pattern in k for k in kernels), f"no fla kernel name contains {pattern!r} (stage {stage})"


def test_kernel_names_map_to_stages():
    assert sb.CLASSIFIERS["gdn"]("kkt_solve_kernel") == "kkt_solve"
    assert sb.CLASSIFIERS["gdn"]("recurrence_kernel") == "recurrence"
    # Ours match whole names: a torch op of the chunk map is not our cumsum stage.
    assert sb.CLASSIFIERS["gdn"]("void at::native::tensor_kernel_scan_innermost_dim<int>(int*, int const*)") == "other"
    assert sb.CLASSIFIERS["gdn"]("cumsum_kernel_0d1d") == "other"
    fla = sb.CLASSIFIERS["fla-chunk"]
    expected = {
        "chunk_local_cumsum_scalar_kernel": "cumsum",
        "l2norm_fwd_kernel": "l2norm",
        "chunk_gated_delta_rule_fwd_kkt_solve_kernel": "kkt_solve",
        "chunk_scaled_dot_kkt_fwd_kernel": "kkt_solve",
        "solve_tril_16x16_kernel": "kkt_solve",
        "merge_16x16_to_64x64_inverse_kernel": "kkt_solve",
        "recompute_w_u_fwd_kernel": "wy",
        "chunk_gated_delta_rule_fwd_kernel_h_blockdim64": "recurrence",
        "chunk_fwd_kernel_o": "output",
        "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<c10::BFloat16>>()": "other",
        "Memcpy DtoH (Device -> Pageable)": "other",
    }
    assert {name: fla(name) for name in expected} == expected


def test_events_aggregate_per_forward():
    events = [("cumsum_kernel", 10.0), ("kkt_solve_kernel", 30.0), ("output_kernel", 50.0), ("fill", 2.0),
              ("fill", 4.0),
              ("cumsum_kernel", 14.0), ("kkt_solve_kernel", 34.0), ("output_kernel", 54.0), ("fill", 2.0)]
    r = sb.summarize(events, calls=2, classify=sb.our_stage, stage_bytes={"output": 5_200_000, "cumsum": 1},
                     peak_gbs=200.0)
    assert r["total_us"] == pytest.approx(100.0)
    assert [k["name"] for k in r["kernels"]] == ["output_kernel", "kkt_solve_kernel", "cumsum_kernel", "fill"]
    fill = r["kernels"][-1]
    assert (fill["stage"], fill["calls"], fill["us"], fill["share"]) == ("other", 1.5, 4.0, pytest.approx(0.04))
    stages = {s["stage"]: s for s in r["stages"]}
    assert [s["stage"] for s in r["stages"]] == ["cumsum", "kkt_solve", "output", "other"]
    assert stages["kkt_solve"]["us"] == pytest.approx(32.0) and stages["kkt_solve"]["share"] == pytest.approx(0.32)
    assert sum(s["share"] for s in r["stages"]) == pytest.approx(1.0)
    # 5.2 MB in 52 us: 100 GB/s, half of the 200 given as peak; a stage without bytes has none.
    assert stages["output"]["gbs"] == pytest.approx(100.0) and stages["output"]["peak_fraction"] == pytest.approx(0.5)
    assert "gbs" not in stages["kkt_solve"]
    with pytest.raises(ValueError, match="no device activity"):
        sb.summarize([], calls=1, classify=sb.our_stage)


def test_annotation_ranges_are_not_device_work():
    """torch.profiler puts its step range ("ProfilerStep*", spanning the whole step) and any
    record_function range on the device timeline; counted, they would double stage "other"."""
    from torch.autograd import DeviceType

    def event(name, us, device=DeviceType.CUDA, user_annotation=False):
        return SimpleNamespace(name=name, device_type=device, is_user_annotation=user_annotation,
                               time_range=SimpleNamespace(elapsed_us=lambda: us))

    events = [event("ProfilerStep*", 500.0), event("ProfilerStep#2", 400.0),
              event("my_range", 300.0, user_annotation=True), event("aten::add", 7.0, device=DeviceType.CPU),
              event("output_kernel", 30.0), event("Memcpy DtoD (Device -> Device)", 2.0)]
    assert sb.device_events(events, DeviceType.CUDA) == [("output_kernel", 30.0),
                                                         ("Memcpy DtoD (Device -> Device)", 2.0)]
    # The aggregation drops the step range by name too (an event list or report without the flag).
    r = sb.summarize([("ProfilerStep*", 500.0), ("output_kernel", 30.0), ("fill", 2.0)], 1, sb.our_stage)
    assert r["total_us"] == pytest.approx(32.0)
    assert [k["name"] for k in r["kernels"]] == ["output_kernel", "fill"]
    assert {s["stage"]: s["us"] for s in r["stages"]} == {"output": pytest.approx(30.0), "other": pytest.approx(2.0)}
    with pytest.raises(ValueError, match="no device activity"):
        sb.summarize([("ProfilerStep*", 500.0)], 1, sb.our_stage)


def test_a_recorded_report_is_rerendered_from_its_kernel_rows(tmp_path):
    """--from-json: the stage rows and totals of a report that counted the step range as a
    kernel, recomputed from its per-kernel rows; byte counts and wall times kept."""
    # As recorded: per forward, the step range (900 us) beside output_kernel (30) and two fills (1 each).
    recorded = {"total_us": 932.0, "kernels": [
        {"name": "ProfilerStep*", "stage": "other", "calls": 1.0, "us": 900.0, "share": 900 / 932},
        {"name": "output_kernel", "stage": "output", "calls": 1.0, "us": 30.0, "share": 30 / 932},
        {"name": "fill", "stage": "other", "calls": 2.0, "us": 2.0, "share": 2 / 932}], "stages": [
        {"stage": "output", "kernels": ["output_kernel"], "us": 30.0, "share": 30 / 932, "bytes": 3_000_000,
         "gbs": 100.0, "peak_fraction": 100 / 3350},
        {"stage": "other", "kernels": ["ProfilerStep*", "fill"], "us": 902.0, "share": 902 / 932}]}
    report = _report([_run("T64", "gdn", wall_us=55.0, **recorded)])
    again = sb.rerender(report, "raw.json")
    run = again["runs"][0]
    assert run["total_us"] == pytest.approx(32.0) and run["wall_us"] == 55.0
    assert [(k["name"], k["calls"], k["us"]) for k in run["kernels"]] == [("output_kernel", 1.0, pytest.approx(30.0)),
                                                                           ("fill", 2.0, pytest.approx(2.0))]
    stages = {s["stage"]: s for s in run["stages"]}
    assert stages["other"]["us"] == pytest.approx(2.0) and stages["other"]["kernels"] == ["fill"]
    assert stages["output"]["bytes"] == 3_000_000 and stages["output"]["gbs"] == pytest.approx(100.0)
    assert again["rerendered"] == {"source": "raw.json", "annotations_left_out": ["ProfilerStep*"]}
    assert report["runs"][0]["total_us"] == 932.0  # the recorded report is left as it was
    assert sb.rerender(again, "raw.json")["runs"] == again["runs"]
    raw, md = tmp_path / "raw.json", tmp_path / "out.md"
    raw.write_text(json.dumps(report))
    assert sb.main(["--from-json", str(raw), "--markdown", str(md)]) == 0  # no GPU needed
    text = md.read_text()
    assert "| T64 | total (device) | 32.0 |" in text
    assert "left out as annotation ranges, not device work: ProfilerStep*" in text


def test_our_stage_bytes_count_inputs_and_outputs_once():
    # 2 sequences of 64 and 1 tokens: 3 chunks; bf16 q/k/v/beta, float32 g, h0 and intermediates.
    d = dict(tokens=65, chunks=3, sequences=2, H=1, HV=2, K=4, V=8, qkv=2, g=4, beta=2, h0=4, acc=4,
             l2norm=False, final_state=True)
    b = sb.our_stage_bytes(d)
    q = 65 * 1 * 4 * 2
    v = 65 * 2 * 8 * 2
    gam = 65 * 2 * 4
    tm = 65 * 2 * 64 * 4
    h = 3 * 2 * 4 * 8 * 4
    v_new = 65 * 2 * 8 * 4
    state = 2 * 2 * 4 * 8 * 4
    assert b == {"cumsum": 65 * 2 * 4 + gam,
                 "kkt_solve": q + 65 * 2 * 2 + gam + tm,
                 "recurrence": q + v + 65 * 2 * 2 + gam + tm + state + h + v_new + state,
                 "output": 2 * q + gam + h + v_new + v}  # q, k, g_cum, h, v' read; o written
    with_norms = sb.our_stage_bytes({**d, "l2norm": True, "h0": 0, "final_state": False})
    norms = 65 * 1 * 4
    assert with_norms["l2norm"] == 2 * q + 2 * norms
    assert with_norms["output"] == b["output"] + 2 * norms
    assert with_norms["recurrence"] == b["recurrence"] + norms - 2 * state


def _run(shape, impl, status="ok", **fields):
    run = {"shape": shape, "label": f"label {shape}", "impl": impl, "T": 64, "sequences": 1, "chunks": 1,
           "status": status, "detail": "" if status == "ok" else "why not"}
    if status == "ok":
        run.update(warnings=[], **fields)
    return run


def _report(runs, not_run=None):
    return {"benchmark": "stage_breakdown", "not_run": not_run or {}, "runs": runs,
            "machine": {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "triton": "3.6.0", "fla": "0.6.0",
                        "cuda": "12.8"},
            "settings": {"calls": 5, "warmup_calls": 3, "wall_calls": 20, "peak_gbs": 3350.0,
                         "model": {"H": 16, "HV": 32, "K": 128, "V": 128}, "dtype": "bfloat16"}}


def test_markdown_puts_stages_side_by_side():
    ours = sb.summarize([("cumsum_kernel", 10.0), ("output_kernel", 30.0)], 1, sb.our_stage, {"output": 3_000_000})
    fla = sb.summarize([("chunk_local_cumsum_scalar_kernel", 5.0), ("recompute_w_u_fwd_kernel", 20.0),
                        ("chunk_fwd_kernel_o", 60.0)], 1, sb.fla_stage)
    report = _report([_run("T64", "gdn", wall_us=55.0, **ours), _run("T64", "fla-chunk", wall_us=110.0, **fla),
                      _run("packed", "gdn", wall_us=1.0, **ours), _run("packed", "fla-chunk", status="error")])
    table = sb.summary_table(report)
    assert table[0].startswith("| shape | stage | ours us |") and "of 3350" in table[0]
    rows = {tuple(cells.strip() for cells in line.strip("|").split("|")[:2]): line for line in table[2:]}
    assert "| 10.0 | 25% | - | 5.0 | 6% | 2.00 |" in rows["T64", "cumsum"]
    assert "| 30.0 | 75% | 100 (3%) | 60.0 | 71% | 0.50 |" in rows["T64", "output"]  # 3 MB in 30 us
    assert "| - | - | - | 20.0 | 24% | - |" in rows["T64", "wy"]  # FLA's stage only
    assert "| 40.0 |  |  | 85.0 |  | 0.47 |" in rows["T64", "total (device)"]
    assert "| 55.0 |  |  | 110.0 |  | 0.50 |" in rows["T64", "wall (eager call)"]
    assert "| error | - |" in rows["packed", "output"] and rows["packed", "output"].rstrip().endswith("| - |")
    text = sb.render_markdown(report)
    assert "NVIDIA H100 80GB HBM3; torch 2.11.0, triton 3.6.0, fla 0.6.0." in text
    assert "| chunk_fwd_kernel_o | output | 1 | 60.0 | 70.6% |" in text
    assert "## label packed: fla-chunk\n\nerror: why not" in text


def test_an_implementation_not_run_is_said():
    ours = sb.summarize([("output_kernel", 30.0)], 1, sb.our_stage)
    report = _report([_run("T64", "gdn", wall_us=40.0, **ours), _run("T64", "fla-chunk", status="not run")],
                     not_run={"fla-chunk": "flash-linear-attention is not installed"})
    assert "| T64 | output | 30.0 | 100% | - | not run | not run | - |" in sb.summary_table(report)
    assert "Not run: fla-chunk: flash-linear-attention is not installed" in sb.render_markdown(report)


def test_options():
    args = sb.parse_args(["--shapes", "T65536", "packed", "--impl", "gdn", "--calls", "3"])
    assert (args.shapes, args.impl, args.calls, args.json) == (["T65536", "packed"], ["gdn"], 3, None)
    assert sb.parse_args([]).shapes == ["T1024", "T4096", "T16384", "T65536", "packed"]
    for bad in (["--shapes", "T7"], ["--calls", "0"], ["--impl", "fla-recurrent"]):
        with pytest.raises(SystemExit):
            sb.parse_args(bad)


def test_shape_names_are_the_bench_cases():
    from gdn_verify.compare_impls import bench_cases

    assert [sb.shape_name(case) for _, case in bench_cases()] == list(sb.SHAPES)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_refuses(capsys):
    assert sb.main(["--impl", "gdn"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
