"""`nox -s gpu -- --per-gpu` (noxfile.py): the commands of one shard per GPU (gdn_verify/per_gpu.py).
No GPU here: the plan is checked as data, then its commands are run on the CPU (with --device
cpu) through the CLI, in this process, and their merge must be the single run's verdict."""

from __future__ import annotations

import json

import pytest

from gdn_verify import cli
from gdn_verify.per_gpu import PER_GPU_ENV, per_gpu_plan, visible_gpus, wants_per_gpu


@pytest.mark.parametrize("count, env, expected", [
    (4, None, ["0", "1", "2", "3"]), (2, "", ["0", "1"]), (0, None, []),
    (2, "3,5", ["3", "5"]), (2, " 3 , 5 ,", ["3", "5"]), (1, "GPU-1a2b,GPU-3c4d", ["GPU-1a2b"]),
])
def test_visible_gpus_pin_what_the_session_sees(count, env, expected):
    assert visible_gpus(count, env) == expected


def test_per_gpu_is_a_flag_or_an_environment_variable():
    assert wants_per_gpu(["--per-gpu", "--case-timeout", "600"], {}) == (True, ["--case-timeout", "600"])
    assert wants_per_gpu(["--case-timeout", "600"], {PER_GPU_ENV: "1"}) == (True, ["--case-timeout", "600"])
    assert wants_per_gpu([], {PER_GPU_ENV: "0"}) == (False, [])


def test_plan_pins_one_shard_per_gpu():
    plan = per_gpu_plan(["2", "5", "7"], "gdn-recurrent", "goldens/gdn-recurrent", "out", "-recurrent",
                        ["--case-timeout", "900"])
    assert [s.env for s in plan.shards] == [{"CUDA_VISIBLE_DEVICES": g} for g in ("2", "5", "7")]
    assert plan.shards[1].argv == (
        "python", "-m", "gdn_verify", "run", "--suite", "gpu", "--impl", "gdn-recurrent", "--device", "cuda",
        "--goldens", "goldens/gdn-recurrent", "--shard", "2/3", "--json", "out/gpu-recurrent.shard2.json",
        "--case-timeout", "900")
    assert [s.log for s in plan.shards] == [f"out/gpu-recurrent.shard{i}.log" for i in (1, 2, 3)]
    assert plan.merge == (
        "python", "-m", "gdn_verify", "report", "merge", "out/gpu-recurrent.shard1.json",
        "out/gpu-recurrent.shard2.json", "out/gpu-recurrent.shard3.json", "--json", "out/gpu-recurrent.json",
        "--markdown", "out/gpu-recurrent.md", "--junit", "out/junit-gpu-recurrent.xml")


@pytest.mark.parametrize("gpus, extra, message", [
    ([], [], "no GPU is visible"), (["0"], ["--shard", "1/2"], "--shard is set per shard"),
    (["0"], ["--json=x.json"], "--json is set per shard"), (["0"], ["--device", "cpu"], "--device is set per shard"),
])
def test_plan_refusals(gpus, extra, message):
    with pytest.raises(ValueError, match=message):
        per_gpu_plan(gpus, "gdn", "goldens", "out", extra=extra)


def test_plan_commands_run_and_merge_into_the_single_run(tmp_path):
    """The plan's commands, on the CPU: three shards and their merge give one run's verdict."""
    extra = ["--cases", "^dense-", "--no-audit"]
    (tmp_path / "goldens").mkdir()  # an empty store: no golden to compare (not a failure)
    plan = per_gpu_plan(["0", "1", "2"], "gdn_doubles:one_broken_chunk", str(tmp_path / "goldens"), str(tmp_path),
                        extra=extra, suite="smoke", device="cpu")
    codes = [cli.main(list(s.argv[3:])) for s in plan.shards]
    assert cli.EXIT_FAIL in codes
    assert cli.main(list(plan.merge[3:])) == cli.EXIT_FAIL
    single = tmp_path / "single.json"
    assert cli.main(["run", "--suite", "smoke", "--impl", "gdn_doubles:one_broken_chunk", "--device", "cpu",
                     "--goldens", str(tmp_path / "goldens"), *extra, "--json", str(single)]) == cli.EXIT_FAIL
    merged, one = json.loads((tmp_path / "gpu.json").read_text()), json.loads(single.read_text())
    assert merged["totals"] == one["totals"] and merged["passed"] is one["passed"] is False
    assert [c["id"] for c in merged["cases"]] == [c["id"] for c in one["cases"]]
    assert (tmp_path / "gpu.md").exists() and (tmp_path / "junit-gpu.xml").exists()
