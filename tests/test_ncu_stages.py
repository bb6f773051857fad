"""benchmarks/ncu_stages.py's parts that need no GPU: parsing ncu's raw CSV page, the per-kernel and
per-stage rows (checked against sums and duration-weighted means worked out here), the driver's
reports when ncu is missing, fails, times out or refuses a metric (a stand-in ncu script), and the
--from-csv report."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ncu_stages as ns  # noqa: E402

M = ns.METRICS
H, WY, O = "chunk_gated_delta_rule_fwd_kernel_h_blockdim64", "recompute_w_u_fwd_kernel", "chunk_fwd_kernel_o"
FIXED = ["ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream", "Block Size",
         "Grid Size", "Device", "CC"]


def quoted(cells: list[str]) -> str:
    return ",".join(f'"{c}"' for c in cells)


# Three kernels, four launches, in ncu's raw page: ==PROF== lines and the program's output first,
# then the header, the units row and a row per launch. WY's write bytes and occupancy are "n/a";
# O's wait stall is empty; the shared-memory and limit metrics are not reported at all.
CSV = "\n".join([
    "==PROF== Connected to process 4242 (/usr/bin/python3.11)",
    "some line the program printed",
    f'==PROF== Profiling "{H}" - 0: 0%....50%....100% - 12 passes',
    "==PROF== Disconnected from process 4242",
    quoted(FIXED + [M["dram_read"], M["dram_write"], M["duration_ns"], M["occupancy"], M["stall_long_scoreboard"],
                    M["stall_wait"], M["stall_barrier"], M["stall_selected"], M["registers"]]),
    quoted([""] * 11 + ["byte", "byte", "nsecond", "%", "", "", "", "", "register/thread"]),
    quoted(["0", "4242", "python3.11", "127.0.0.1", H, "1", "7", "(256, 1, 1)", "(2, 32, 1)", "0", "9.0",
            "2,000,000", "1,000,000", "1,000", "50", "4", "1", "0.5", "1", "128"]),
    quoted(["1", "4242", "python3.11", "127.0.0.1", WY, "1", "7", "(128, 1, 1)", "(1024, 32, 1)", "0", "9.0",
            "1000000", "n/a", "500", "n/a", "0.2", "3", "0.1", "1", "96"]),
    quoted(["2", "4242", "python3.11", "127.0.0.1", H, "1", "7", "(256, 1, 1)", "(2, 32, 1)", "0", "9.0",
            "4000000", "3000000", "3000", "70", "2", "1", "2.5", "1", "128"]),
    quoted(["3", "4242", "python3.11", "127.0.0.1", O, "1", "7", "(128, 1, 1)", "(1024, 32, 1)", "0", "9.0",
            "600000", "300000", "300", "30", "1", "", "0.3", "1", "64"]),
]) + "\n"


def test_launches_parse_in_base_units_with_unknowns_as_none():
    launches = ns.parse_ncu_csv(CSV)
    assert [launch["name"] for launch in launches] == [H, WY, H, O]
    assert launches[0]["dram_read"] == 2e6 and launches[0]["duration_ns"] == 1000  # thousands separators
    assert launches[1]["dram_write"] is None and launches[1]["occupancy"] is None  # "n/a"
    assert launches[3]["stall_wait"] is None  # empty
    assert launches[0]["smem_static"] is None and launches[0]["limit_registers"] is None  # not reported
    scaled = ns.parse_ncu_csv("\n".join([quoted(["ID", "Kernel Name", M["duration_ns"], M["dram_read"]]),
                                         quoted(["", "", "usecond", "Kbyte"]), quoted(["0", O, "1.5", "2.5"])]))
    assert scaled[0]["duration_ns"] == 1500 and scaled[0]["dram_read"] == 2500


def test_kernel_and_stage_rows():
    report = ns.summarize(ns.parse_ncu_csv(CSV), ns.sb.CLASSIFIERS["fla-chunk"], tokens=1000,
                          min_bytes={"recurrence": 5_000_000})
    kernels = {k["name"]: k for k in report["kernels"]}
    assert [k["name"] for k in report["kernels"]] == [H, WY, O]  # longest first
    h = kernels[H]
    assert (h["stage"], h["launches"], h["us"]) == ("recurrence", 2, 4.0)
    assert (h["dram_read"], h["dram_write"], h["bytes"]) == (6e6, 4e6, 1e7)
    assert h["gbs"] == pytest.approx(1e7 / 4000)
    assert h["occupancy"] == pytest.approx((50 * 1000 + 70 * 3000) / 4000)
    assert h["registers"] == 128 and h["smem"] is None and h["limiter"] is None
    assert [r for r, _ in h["top_stalls"]] == ["long_scoreboard", "barrier", "wait"]  # "selected" not ranked
    assert [v for _, v in h["top_stalls"]] == pytest.approx([(4 * 1000 + 2 * 3000) / 4000,
                                                             (0.5 * 1000 + 2.5 * 3000) / 4000, 1.0])
    wy = kernels[WY]
    assert wy["stage"] == "wy" and wy["dram_read"] == 1e6
    assert wy["bytes"] is None and wy["gbs"] is None and wy["occupancy"] is None  # unknown, not 0
    assert kernels[O]["top_stalls"] == [("long_scoreboard", 1.0), ("barrier", 0.3)]

    stages = {s["stage"]: s for s in report["stages"]}
    assert [s["stage"] for s in report["stages"]] == ["wy+recurrence", "output"]
    rec = stages["wy+recurrence"]
    assert set(rec["kernels"]) == {H, WY} and rec["launches"] == 3 and rec["us"] == pytest.approx(4.5)
    assert rec["dram_read"] == 7e6 and rec["bytes"] is None and rec["gbs"] is None and rec["over_min"] is None
    assert rec["min_bytes"] == 5_000_000  # our recurrence's least bytes land on the budget stage
    assert rec["occupancy"] == pytest.approx(65.0)  # WY's n/a left out of the mean
    assert dict(rec["top_stalls"]) == pytest.approx({"long_scoreboard": (4 * 1000 + 0.2 * 500 + 2 * 3000) / 4500,
                                                     "barrier": (0.5 * 1000 + 0.1 * 500 + 2.5 * 3000) / 4500,
                                                     "wait": (1000 + 3 * 500 + 3000) / 4500})
    out = stages["output"]
    assert (out["us"], out["bytes"], out["bytes_per_token"]) == (0.3, 9e5, 900.0)
    assert out["gbs"] == pytest.approx(9e5 / 300)
    assert report["total_us"] == pytest.approx(4.8)


@pytest.mark.parametrize("text, says", [
    ("", "Kernel Name"),
    ("==PROF== Connected to process 1\n==PROF== No kernels were profiled.\n", "Kernel Name"),
    ("\n".join(CSV.splitlines()[:6]), "no kernel rows"),  # header and units only
])
def test_output_without_launches_is_a_not_run_report(text, says):
    with pytest.raises(ValueError, match=says):
        ns.parse_ncu_csv(text)
    run = ns.finish({"impl": "gdn", "T": 1024}, text)
    assert run["status"] == "not run" and says in run["detail"] and run["ncu_output"] == text


def stand_in_ncu(tmp_path: Path, body: str) -> str:
    """An executable `ncu` that logs its arguments and runs `body` (sh): $last is the worker's --info."""
    script = tmp_path / "ncu"
    script.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\nfor last; do :; done\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def profile(ncu: str, timeout: int = 60, metrics: dict | None = None) -> dict:
    return ns.profile("fla-chunk", "T1024", dict(M) if metrics is None else metrics,
                      SimpleNamespace(ncu=ncu, warmup=1, timeout=timeout))


def test_a_metric_ncu_refuses_is_dropped_and_the_run_retried(tmp_path):
    gmma = M["tensor_gmma_pct"]
    (tmp_path / "out.csv").write_text(CSV)
    ncu = stand_in_ncu(tmp_path, f'case "$*" in *{gmma}*) echo "==ERROR== Failed to find metric {gmma}" >&2; '
                                 f'exit 1;; esac\ncat {tmp_path}/out.csv')
    metrics = dict(M)
    run = profile(ncu, metrics=metrics)
    assert run["status"] == "ok" and run["metrics_unavailable"] == [gmma] and "tensor_gmma_pct" not in metrics
    assert run["T"] == 1024 and run["ncu_output"] == CSV and run["total_us"] == pytest.approx(4.8)
    first, second = (tmp_path / "calls").read_text().splitlines()
    assert gmma in first and gmma not in second
    for flags in (" ".join(ns.NCU_FLAGS), "--worker --impl fla-chunk --shapes T1024 --warmup 1 --info"):
        assert flags in second


@pytest.mark.parametrize("body, timeout, says", [
    ('echo "==ERROR== ERR_NVGPUCTRPERM - The user does not have permission"; exit 1', 60,
     "ncu exited 1: ==ERROR== ERR_NVGPUCTRPERM"),
    ('echo "==PROF== No kernels were profiled."', 60, "No kernels were profiled"),
    ("sleep 30", 1, "ncu timed out after 1 s"),
])
def test_ncu_failing_is_reported_as_not_run(tmp_path, body, timeout, says):
    run = profile(stand_in_ncu(tmp_path, body), timeout)
    assert run["status"] == "not run" and says in run["detail"]


def test_a_missing_ncu_is_reported_as_not_run(tmp_path):
    run = profile(str(tmp_path / "no-ncu"))
    assert run["status"] == "not run" and "ncu could not be started" in run["detail"]


def test_the_workers_status_is_the_runs(tmp_path):
    body = """echo '{"status": "not supported", "detail": "no such layout"}' > "$last" """
    run = profile(stand_in_ncu(tmp_path, body))
    assert (run["status"], run["detail"]) == ("not supported", "no such layout")


def test_saved_output_is_reported_side_by_side(tmp_path):
    (tmp_path / "fla.csv").write_text(CSV)
    (tmp_path / "ours.csv").write_text("==PROF== No kernels were profiled.\n")
    assert ns.main(["--from-csv", f"fla-chunk={tmp_path / 'fla.csv'}", f"gdn={tmp_path / 'ours.csv'}", "--shapes",
                    "T1024", "--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    runs = {r["impl"]: r for r in report["runs"]}
    assert runs["fla-chunk"]["status"] == "ok" and runs["fla-chunk"]["ncu_output"] == CSV
    assert runs["gdn"]["status"] == "not run"
    md = (tmp_path / "r.md").read_text()
    assert "ours not run: no CSV header" in md
    assert "| wy+recurrence | - | 4.5 | - |" in md and "| output | - | 0.3 | - |" in md
    assert f"| {H} | recurrence | 2 | 4.0 | 2500 |" in md
    assert "long_scoreboard 2.50, barrier 2.00, wait 1.00" in md
    assert ns.main(["--from-csv", f"gdn={tmp_path / 'ours.csv'}", "--shapes", "T1024"]) == 1  # nothing ran
