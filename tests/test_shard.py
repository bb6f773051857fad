"""Sharded runs (issue 17): the split, the shard spec, merging shard reports, and shards writing
goldens into one store.

The merge tests run the real CLI in this process with an implementation that costs only the
reference (tests/gdn_doubles.py), once over the whole selection and once per shard
(`run --shard I/N`, `golden diff --shard I/N`), and check that the shard reports merged by
`gdn-verify report merge` are the single run's report: JSON (but for timing and host fields),
Markdown, JUnit, verdict and exit code.

The concurrent-writers test runs our chunk kernel under the interpreter in subprocesses: three
`golden regen --shard I/3` processes at once into one store, and one process over all their
cases into another; the stores must hold the same goldens bit for bit. Then three
`run --shard I/3` processes against that store, merged, must give the single run's report.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gdn_verify import cli
from gdn_verify.cases import case_cost, select
from gdn_verify.platform import BLAS_THREAD_ENV_VARS
from gdn_verify.render import to_json_text
from gdn_verify.report import markdown as run_markdown
from gdn_verify.report_json import run_result_from_json, shard_report
from gdn_verify.report_junit import junit_xml
from gdn_verify.report_merge import MergeError, comparable, load_report, merge_files, merge_reports
from gdn_verify.results import RunOptions
from gdn_verify.shard import (Shard, assign, parse_shard, selection_digest, shard_argument, shard_cases,
                              shard_metadata, split)
from gdn_verify.suites import suite

CPU = suite("cpu")
SMOKE = suite("smoke")

# ----------------------------------------------------------------------------------------
# The split
# ----------------------------------------------------------------------------------------

selections = st.lists(st.sampled_from(CPU), min_size=1, max_size=40, unique_by=lambda c: c.id)


@given(selections, st.integers(1, 12), st.randoms(use_true_random=False))
def test_split_is_a_balanced_partition_independent_of_order(cases, count, rnd):
    shards = split(cases, count)
    assert len(shards) == count
    ids = [c.id for s in shards for c in s]
    assert sorted(ids) == sorted(c.id for c in cases)  # complete, and each case exactly once
    assert len(set(ids)) == len(ids)
    position = {c.id: i for i, c in enumerate(cases)}
    for s in shards:  # each shard in the selection's order
        assert [position[c.id] for c in s] == sorted(position[c.id] for c in s)
    # Stable under reordering: the split depends on the set of cases only.
    shuffled = list(cases)
    rnd.shuffle(shuffled)
    assert [{c.id for c in s} for s in split(shuffled, count)] == [{c.id for c in s} for s in shards]
    # Balanced within the largest case's cost; no empty shard while there are enough cases.
    loads = [sum(case_cost(c) for c in s) for s in shards]
    assert max(loads) - min(loads) <= max(case_cost(c) for c in cases)
    if count <= len(cases):
        assert all(shards)
        assert [shard_cases(shuffled, i, count) for i in range(1, count + 1)] == [
            [c for c in shuffled if c.id in {x.id for x in s}] for s in shards]


@pytest.mark.parametrize("name", ["cpu", "gpu", "full"])
def test_suites_split_evenly(name):
    cases = suite(name)
    for count in (2, 3, 4, 8):
        shards = split(cases, count)
        loads = [sum(case_cost(c) for c in s) for s in shards]
        assert max(loads) - min(loads) <= max(case_cost(c) for c in cases)
        assert sum(map(len, shards)) == len(cases)


def test_split_rejects_repeated_ids_and_too_many_shards():
    with pytest.raises(ValueError, match="appears twice"):
        assign([SMOKE[0], SMOKE[0]], 2)
    with pytest.raises(ValueError, match=r"--shard 1/6: the selection has 5 cases, fewer than 6 shards"):
        shard_cases(SMOKE, 1, 6)
    with pytest.raises(ValueError, match=r"--shard: I .* must be in 1\.\.5, got 0"):
        shard_cases(SMOKE, 0, 5)
    with pytest.raises(ValueError, match=r"--shard: N .* must be >= 1"):
        shard_cases(SMOKE, 1, 0)


# ----------------------------------------------------------------------------------------
# The spec
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [("1/1", (1, 1)), ("2/4", (2, 4)), (" 4 / 4 ", (4, 4)), ("10/12", (10, 12))])
def test_shard_spec_parses(text, expected):
    assert parse_shard(text) == Shard(*expected) and str(Shard(*expected)) == f"{expected[0]}/{expected[1]}"


@pytest.mark.parametrize("text, problem", [
    ("", "expected I/N"), ("2", "expected I/N"), ("a/b", "expected I/N"), ("1.5/4", "expected I/N"),
    ("1/4/2", "expected I/N"), ("1/", "expected I/N"), ("0/4", r"in 1\.\.4"), ("5/4", r"in 1\.\.4"),
    ("-1/4", r"in 1\.\.4"), ("1/0", "must be >= 1"), ("0/0", "must be >= 1"), ("1/-2", "must be >= 1"),
])
def test_bad_shard_specs_name_the_flag(text, problem):
    with pytest.raises(ValueError, match=r"^--shard: .*" + problem):
        parse_shard(text)


def test_shard_argument_is_an_argparse_type(capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="gdn-verify run")
    parser.add_argument("--shard", type=shard_argument)
    assert parser.parse_args(["--shard", "3/4"]).shard == Shard(3, 4)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--shard", "5/4"])
    assert exc.value.code == 2
    assert "argument --shard: I (this shard, counted from 1) must be in 1..4, got '5/4'" in capsys.readouterr().err


def test_shard_metadata_places_each_case():
    shards = split(SMOKE, 3)
    metas = [shard_metadata(SMOKE, Shard(i, 3), options=RunOptions()) for i in (1, 2, 3)]
    assert sorted(p for m in metas for p in m["positions"]) == list(range(len(SMOKE)))
    for meta, cases in zip(metas, shards):
        assert [SMOKE[p].id for p in meta["positions"]] == [c.id for c in cases]
        assert meta["selection_digest"] == selection_digest(SMOKE) and meta["selected"] == len(SMOKE)
        assert meta["options"]["invariants"] == list(RunOptions().invariants)


# ----------------------------------------------------------------------------------------
# Report merge: shard reports of the real CLI against one run
# ----------------------------------------------------------------------------------------

BROKEN = "gdn_doubles:one_broken_chunk"  # passes dense-b1-t1 only of the smoke cases
RIGHT = "gdn_doubles:rounded_reference"  # passes every case


def _cases_regex(ids) -> str:
    return "^(" + "|".join(re.escape(i) for i in ids) + ")$"


def _merge(*argv) -> int:
    """`gdn-verify report merge ARGV...` in this process: its exit code."""
    return cli.main(["report", "merge", *map(str, argv)])


class _Scenario:
    """One selection run once whole and once as N shards (`--shard I/N`) through the CLI, with
    `run` and with `golden diff`."""

    def __init__(self, tmp: Path, name: str, impl: str, golden_ids, args: list[str], selection, count: int):
        self.dir = tmp / name
        self.dir.mkdir()
        self.selection, self.count, self.args = selection, count, args
        store = str(self.dir / "goldens")
        assert cli.main(["golden", "regen", "--suite", "smoke", "--impl", impl, "--device", "cpu", "--no-audit",
                         "--goldens", store, "--cases", _cases_regex(golden_ids)]) == 0
        self.base = ["--suite", "smoke", "--impl", impl, "--device", "cpu", "--goldens", store, "--no-audit",
                     "--cases", _cases_regex(c.id for c in selection)]
        shards = [f"{i}/{count}" for i in range(1, count + 1)]
        run = ["run", *self.base, *args]
        self.single_json, self.single_md = self.dir / "single.json", self.dir / "single.md"
        self.single_code = cli.main(run + ["--json", str(self.single_json), "--markdown", str(self.single_md)])
        self.shard_paths = [self.dir / f"shard{i}.json" for i in range(1, count + 1)]
        self.shard_codes = [cli.main(run + ["--shard", shard, "--json", str(path)])
                            for shard, path in zip(shards, self.shard_paths)]
        diff = ["golden", "diff", *self.base]
        self.diff_json, self.diff_md = self.dir / "diff.json", self.dir / "diff.md"
        self.diff_code = cli.main(diff + ["--json", str(self.diff_json), "--markdown", str(self.diff_md)])
        self.diff_paths = [self.dir / f"diff{i}.json" for i in range(1, count + 1)]
        self.diff_codes = [cli.main(diff + ["--shard", shard, "--json", str(path)])
                           for shard, path in zip(shards, self.diff_paths)]

    def shards(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in self.shard_paths]


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    """mixed: the five smoke cases, a broken implementation (1 pass, 4 fail) and the golden of its
    passing case, in 3 shards: exit 1. required: three smoke cases, a right implementation,
    goldens of two, --require-goldens, in 2 shards: exit 2 (one case without golden)."""
    saved_env = {var: os.environ.get(var) for var in BLAS_THREAD_ENV_VARS}
    threads = torch.get_num_threads()
    tmp = tmp_path_factory.mktemp("shards")
    try:
        yield {"mixed": _Scenario(tmp, "mixed", BROKEN, [SMOKE[0].id], [], SMOKE, 3),
               "required": _Scenario(tmp, "required", RIGHT, [c.id for c in SMOKE[:2]], ["--require-goldens"],
                                     SMOKE[:3], 2)}
    finally:
        for var, value in saved_env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        torch.set_num_threads(threads)


def _md_comparable(text: str) -> str:
    text = re.sub(r"; \d+\.\d s\*\*", "; <wall> s**", text)  # the verdict's wall time
    return re.sub(r" on \d{4}-\d\d-\d\dT[\d:+]+", " on <date>", text)  # the fingerprint's date


@pytest.mark.parametrize("name, code", [("mixed", cli.EXIT_FAIL), ("required", cli.EXIT_SETUP)])
def test_merged_shards_are_the_single_run(scenarios, name, code, tmp_path):
    s = scenarios[name]
    assert s.single_code == code
    merged = merge_files(reversed(s.shard_paths))  # any order
    single = json.loads(s.single_json.read_text())
    out = merged.run_json()
    assert comparable(out) == comparable(single)
    assert [c["id"] for c in out["cases"]] == [c["id"] for c in single["cases"]]
    assert out["totals"] == single["totals"] and out["passed"] == single["passed"]
    assert merged.exit_code() == code
    assert _md_comparable(merged.markdown()) == _md_comparable(s.single_md.read_text())
    assert [m["index"] for m in out["merged_from"]] == list(range(1, len(s.shard_paths) + 1))
    assert out["wall_s"] == max(m["wall_s"] for m in out["merged_from"])
    # The command: same exit code, the three reports written.
    paths = [tmp_path / f"merged.{ext}" for ext in ("json", "md", "xml")]
    assert _merge(*s.shard_paths, "--json", paths[0], "--markdown", paths[1], "--junit", paths[2]) == code
    assert comparable(json.loads(paths[0].read_text())) == comparable(single)
    assert _md_comparable(paths[1].read_text()) == _md_comparable(s.single_md.read_text())
    suite_el = ET.parse(paths[2]).getroot().find("testsuite")
    t = single["totals"]
    assert int(suite_el.get("tests")) == t["cases"]
    assert int(suite_el.get("failures")) == t["fail"] + t["changed"] and int(suite_el.get("errors")) == t["error"]
    assert [tc.get("name") for tc in suite_el.iter("testcase")] == [c["id"] for c in single["cases"]]


def test_one_shard_of_one_is_the_run_itself(scenarios):
    s = scenarios["mixed"]
    single = json.loads(s.single_json.read_text())
    data = shard_report(run_result_from_json(single), shard_metadata(SMOKE, Shard(1, 1), "run", RunOptions()))
    assert list(data)[-2:] == ["shard", "cases"]
    merged = merge_reports([data])
    assert comparable(merged.run_json()) == comparable(single) and merged.result.wall_s == single["wall_s"]


def test_mixed_scenario_is_what_it_claims(scenarios):
    single = json.loads(scenarios["mixed"].single_json.read_text())
    t = single["totals"]
    assert (t["pass"], t["fail"], t["golden_equal"], t["golden_missing"]) == (1, 4, 1, 4)
    assert cli.EXIT_FAIL in scenarios["mixed"].shard_codes
    required = json.loads(scenarios["required"].single_json.read_text())
    assert required["passed"] and required["totals"]["golden_missing"] == 1
    assert cli.EXIT_SETUP in scenarios["required"].shard_codes


def test_shard_reports_record_their_shard(scenarios):
    """`run --shard I/N --json` writes the run's report with the shard's metadata; `golden diff
    --shard` writes the same, with its command."""
    for s in scenarios.values():
        options = RunOptions(goldens=str(s.dir / "goldens"), require_goldens="--require-goldens" in s.args,
                             audit=False)
        for i, (path, diff) in enumerate(zip(s.shard_paths, s.diff_paths), start=1):
            data, diff_data = json.loads(path.read_text()), json.loads(diff.read_text())
            meta = shard_metadata(s.selection, Shard(i, s.count), "run", options)
            assert data["shard"] == json.loads(json.dumps(meta))
            assert [c["id"] for c in data["cases"]] == [s.selection[p].id for p in meta["positions"]]
            assert diff_data["shard"]["command"] == "golden diff"
            assert diff_data["shard"]["positions"] == meta["positions"]


def test_a_report_round_trips_through_run_result(scenarios):
    for s in scenarios.values():
        for path in [s.single_json, *s.shard_paths]:
            text = path.read_text()
            data = json.loads(text)
            data.pop("shard", None)
            assert json.loads(to_json_text(run_result_from_json(json.loads(text)))) == data
            if path == s.single_json:
                assert to_json_text(run_result_from_json(data)) == text
            result = run_result_from_json(json.loads(text))
            assert run_markdown(result).startswith("**gdn-verify FAIL") or run_markdown(result).startswith(
                "**gdn-verify PASS")


def test_nonfinite_numbers_round_trip(scenarios):
    data = json.loads(scenarios["mixed"].single_json.read_text())
    check = next(c for c in data["cases"] if c["status"] == "fail")["checks"]["o"]
    check["rms_ratio"], check["max_abs"] = "inf", "nan"
    result = run_result_from_json(data)
    o = next(r for r in result.cases if r.status == "fail").checks["o"]
    assert o.rms_ratio == float("inf") and o.max_abs != o.max_abs
    assert json.loads(to_json_text(result)) == data
    assert "inf" in run_markdown(result)


# ----------------------------------------------------------------------------------------
# Report merge: refusals
# ----------------------------------------------------------------------------------------

def _edit(reports, index, fn):
    reports = copy.deepcopy(reports)
    fn(reports[index])
    return reports


def _pop(d: dict, key: str) -> None:
    d.pop(key)


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.__setitem__("impl", "gdn"), "differ in implementation"),
    (lambda r: r.__setitem__("suite", "cpu"), "differ in suite"),
    (lambda r: r["fingerprint"].__setitem__("torch", "2.0.0"), "differ in platform fingerprint: torch"),
    (lambda r: r["fingerprint"].__setitem__("git_commit", "0" * 40), "differ in platform fingerprint: git_commit"),
    (lambda r: r["shard"]["options"].__setitem__("require_goldens", True), "differ in options"),
    (lambda r: r["shard"]["options"].__setitem__("invariants", []), "differ in options"),
    (lambda r: r["shard"].__setitem__("selection_digest", "0" * 64), "differ in selection"),
    (lambda r: r["shard"].__setitem__("selected", 6), "differ in selection"),
    (lambda r: r["shard"].__setitem__("count", 4), "differ in shard count"),
    (lambda r: r["shard"].__setitem__("command", "golden diff"), "differ in command"),
    (lambda r: r["goldens"].__setitem__("platform_key", "cuda-sm90-triton3.6.0"), "differ in golden store"),
    (lambda r: _pop(r, "shard"), "not a shard report"),
    (lambda r: r["totals"].__setitem__("pass", 99), "are not those of its cases"),
])
def test_merge_refuses_shards_of_other_runs(scenarios, edit, message):
    reports = scenarios["mixed"].shards()
    with pytest.raises(MergeError, match=message):
        merge_reports(_edit(reports, 1, edit))


def test_merge_accepts_host_differences(scenarios):
    reports = scenarios["mixed"].shards()

    def other_host(r):
        r["fingerprint"].update(date="2030-01-01T00:00:00+00:00", cpu_model="another CPU", threads={"torch": 64})
        r["shard"]["options"]["repro_dir"] = "/elsewhere"
        r["goldens"]["detail"] = "this run: another CPU on 2030-01-01T00:00:00+00:00"  # describes the host

    merged = merge_reports(_edit(reports, 2, other_host))
    assert merged.shards[2]["host"]["cpu_model"] == "another CPU"
    assert merged.result.fingerprint == reports[0]["fingerprint"]


def test_merge_refuses_incomplete_duplicate_and_overlapping_shards(scenarios):
    reports = scenarios["mixed"].shards()
    with pytest.raises(MergeError, match=r"incomplete: shard 2/3 missing \(got 2 of 3\)"):
        merge_reports([reports[0], reports[2]])
    with pytest.raises(MergeError, match="are both shard 1/3"):
        merge_reports([reports[0], reports[0], reports[1], reports[2]])

    def steal(r):  # shard 3 claims shard 1's first case too
        r["shard"]["positions"] = reports[0]["shard"]["positions"][:1] + r["shard"]["positions"]
        r["cases"] = reports[0]["cases"][:1] + r["cases"]
        r["totals"] = run_result_from_json(r).totals

    with pytest.raises(MergeError, match="overlapping shards"):
        merge_reports(_edit(reports, 2, steal))

    def lose_a_case(r):  # a shard that ran fewer cases than it was given, not interrupted
        r["cases"] = r["cases"][:-1]
        r["totals"] = run_result_from_json(r).totals

    many = max(range(3), key=lambda i: len(reports[i]["cases"]))
    with pytest.raises(MergeError, match="cases ran, and the run was not interrupted"):
        merge_reports(_edit(reports, many, lose_a_case))


def test_merge_command_errors_exit_2(scenarios, tmp_path, capsys):
    s = scenarios["mixed"]
    paths = s.shard_paths
    assert _merge(paths[0], paths[1]) == 2
    assert "gdn-verify: error: report merge: incomplete" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert _merge(bad, *paths) == 2
    assert "bad.json: not a JSON report" in capsys.readouterr().err
    assert _merge(tmp_path / "none.json") == 2
    assert _merge(*paths, "--json", tmp_path) == 2  # a directory: cannot write
    assert "cannot write the report" in capsys.readouterr().err
    assert _merge(s.single_json) == 2  # a run without --shard
    assert "not a shard report" in capsys.readouterr().err
    assert _merge(*paths[:2], s.diff_paths[2]) == 2  # a golden diff shard among run shards
    assert "differ in command" in capsys.readouterr().err
    assert _merge() == 2  # argparse: at least one report
    with pytest.raises(MergeError, match="given twice"):
        merge_files([paths[0], paths[0]])
    with pytest.raises(MergeError, match="not a gdn-verify run report"):
        bad.write_text("[]")
        load_report(bad)


def test_an_interrupted_shard_makes_an_interrupted_merge(scenarios):
    reports = scenarios["mixed"].shards()
    many = max(range(3), key=lambda i: len(reports[i]["cases"]))

    def interrupt(r):
        r["cases"] = r["cases"][:1]
        r["cases"][0].update(status="error", failures=["KeyboardInterrupt: the run was interrupted"])
        r["interrupted"] = True
        r["totals"] = run_result_from_json(r).totals

    merged = merge_reports(_edit(reports, many, interrupt))
    assert merged.result.interrupted and merged.exit_code() == cli.EXIT_FAIL
    assert merged.result.selected == len(SMOKE)
    assert len(merged.result.cases) == len(SMOKE) - len(reports[many]["cases"]) + 1
    assert f"interrupted: {len(reports[many]['cases']) - 1} of {len(SMOKE)} cases not run" in merged.markdown()
    root = ET.fromstring(junit_xml(merged.result).split("\n", 1)[1])
    assert any(tc.get("name") == "not-run" for tc in root.iter("testcase"))


@pytest.mark.parametrize("name", ["mixed", "required"])
def test_golden_diff_shards_merge_into_the_proof(scenarios, name, tmp_path):
    """`golden diff --shard I/N` shards merged: the proof (JSON and Markdown) and the exit code of
    one `golden diff` over the whole selection."""
    s = scenarios[name]
    assert s.diff_code == cli.EXIT_SETUP  # nothing differs bitwise, cases without golden
    merged = merge_files(s.diff_paths)
    assert merged.command == "golden diff" and merged.exit_code() == s.diff_code
    assert json.loads(merged.json_text()) == json.loads(s.diff_json.read_text())
    assert merged.markdown() == s.diff_md.read_text()
    out_json, out_md = tmp_path / "proof.json", tmp_path / "proof.md"
    assert _merge(*s.diff_paths, "--json", out_json, "--markdown", out_md) == s.diff_code
    assert out_json.read_text() == s.diff_json.read_text() and out_md.read_text() == s.diff_md.read_text()


def test_cases_lists_a_shard(capsys):
    assert cli.main(["cases", "--suite", "cpu"]) == 0
    everything = capsys.readouterr().out.split()
    shards = []
    for i in range(1, 5):
        assert cli.main(["cases", "--suite", "cpu", "--shard", f"{i}/4"]) == 0
        shards.append(capsys.readouterr().out.split())
    assert [s.id for s in split(CPU, 4)[2]] == shards[2]
    assert sorted(sum(shards, [])) == sorted(everything) and all(shards)
    assert cli.main(["cases", "--suite", "smoke", "--shard", "1/6"]) == 2
    assert "--shard 1/6: the selection has 5 cases, fewer than 6 shards" in capsys.readouterr().err
    assert cli.main(["cases", "--suite", "smoke", "--shard", "7/6"]) == 2
    assert "argument --shard: I (this shard, counted from 1) must be in 1..6" in capsys.readouterr().err


def test_prune_with_shard_is_refused(tmp_path, capsys):
    assert cli.main(["golden", "regen", "--suite", "smoke", "--device", "cpu", "--goldens", str(tmp_path),
                     "--prune", "--shard", "1/2"]) == 2
    err = capsys.readouterr().err
    assert "--prune with --shard 1/2" in err and "other shards' cases" in err
    assert not any(tmp_path.iterdir())  # refused before anything ran or was written


# ----------------------------------------------------------------------------------------
# Goldens from shards: concurrent writers into one store
# ----------------------------------------------------------------------------------------

# Twelve of the cpu suite's cheapest cases (one 16x16 value head pair, T <= 17).
REGEN_PATTERN = r"^dense-b1-t(1|2|3|15|16|17)-h1x2-d16-"
REGEN_CASES = select(CPU, REGEN_PATTERN)
N_WRITERS = 3
# Four of them for the run shards (a run also checks the invariants: a few kernel calls a case).
RUN_PATTERN = r"^dense-b1-t(1|2)-h1x2-d16-"


def _cli(log: Path, *argv: str, pattern: str = REGEN_PATTERN) -> subprocess.Popen:
    """`gdn-verify ARGV...` over the cpu suite's cases matching pattern, our chunk kernel under the
    interpreter, in a process of its own (output in log)."""
    argv = [sys.executable, "-m", "gdn_verify", *argv, "--suite", "cpu", "--cases", pattern, "--device", "cpu",
            "--impl", "gdn", "--no-audit"]
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1", COLUMNS="200")  # progress lines as they come
    with open(log, "w") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)


def _store_contents(store: Path) -> tuple[dict, dict[str, bytes], set[str]]:
    """(manifest without dates, golden file bytes by name, every file name) of the one platform
    store under store."""
    (directory,) = [d for d in store.iterdir() if d.is_dir()]
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest.pop("date")
    manifest["fingerprint"].pop("date")
    for entry in manifest["cases"].values():
        entry.pop("written")
    files = {p.name: p.read_bytes() for p in directory.glob("*.safetensors")}
    return manifest, files, {p.name for p in directory.iterdir()}


def _logs(logs) -> str:
    return "\n".join(log.read_text()[-3000:] for log in logs)


def test_concurrent_shard_writers_equal_one_writer(tmp_path):
    """Three `golden regen --shard I/3` processes write into one store at once, and must wait for
    each other: this test holds the store's lock until every shard has run its last case (each
    is then about to write, or waiting for the lock), then lets them race for it. The store they
    leave equals the store of one process over all their cases, bit for bit. Then two
    `run --shard I/2` processes against it, merged by `report merge`, give the report and exit
    code of one run."""
    from gdn_verify.goldens import GoldenStore, store_lock
    from gdn_verify.platform import fingerprint, platform_key

    assert len(REGEN_CASES) == 12
    shards = split(REGEN_CASES, N_WRITERS)
    sharded = tmp_path / "sharded"
    directory = sharded / platform_key(fingerprint("cpu"))
    logs = [tmp_path / f"shard{i}.log" for i in range(1, N_WRITERS + 1)]
    with store_lock(directory):
        procs = [_cli(log, "golden", "regen", "--goldens", str(sharded), "--shard", f"{i}/{N_WRITERS}")
                 for i, log in enumerate(logs, start=1)]
        procs.append(_cli(tmp_path / "single.log", "golden", "regen", "--goldens", str(tmp_path / "single")))
        deadline = time.monotonic() + 300
        while not all(f"[{len(c)}/{len(c)}]" in log.read_text() for c, log in zip(shards, logs)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs[:N_WRITERS]), _logs(logs)
            time.sleep(0.1)
        time.sleep(0.5)
        assert [p.poll() for p in procs[:N_WRITERS]] == [None] * N_WRITERS  # all waiting for the lock
        assert not (directory / "manifest.json").exists()
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0] * (N_WRITERS + 1), _logs(logs + [tmp_path / "single.log"])
    for cases, log in zip(shards, logs):  # each wrote its own cases; the others' goldens are not "unused"
        text = " ".join(log.read_text().split())
        assert f" {len(cases)} added, 0 replaced," in text and " 0 unused," in text, text
    sharded_store, single = _store_contents(sharded), _store_contents(tmp_path / "single")
    assert sorted(sharded_store[0]["cases"]) == sorted(c.id for c in REGEN_CASES)
    assert sharded_store[0] == single[0]  # every entry: inputs digest, tensors' sha256, file name and digest
    assert sharded_store[1] == single[1]  # the safetensors bytes
    # No writer left its temp files or its record of a write under way.
    assert sharded_store[2] == set(sharded_store[1]) | {"manifest.json", ".lock"}
    store = GoldenStore(sharded).for_platform(fingerprint("cpu"))
    for case_id in sharded_store[0]["cases"]:
        store.load(case_id)  # verifies each file against the manifest's digests

    # Two run shards against the store, side by side, and one run of all: the merge is the run.
    reports = [tmp_path / f"run{i}.json" for i in (1, 2)]
    run_logs = [tmp_path / f"run{i}.log" for i in (1, 2, 3)]
    gate = ["run", "--goldens", str(sharded), "--require-goldens"]
    procs = [_cli(log, *gate, "--shard", f"{i}/2", "--json", str(path), pattern=RUN_PATTERN)
             for i, (path, log) in enumerate(zip(reports, run_logs), start=1)]
    procs.append(_cli(run_logs[2], *gate, "--json", str(tmp_path / "run.json"), pattern=RUN_PATTERN))
    assert [p.wait(timeout=300) for p in procs] == [0] * 3, _logs(run_logs)
    merged_json, junit = tmp_path / "merged.json", tmp_path / "merged.xml"
    assert _merge(*reports, "--json", merged_json, "--junit", junit) == 0
    single_run, merged = json.loads((tmp_path / "run.json").read_text()), json.loads(merged_json.read_text())
    assert comparable(merged) == comparable(single_run)
    assert merged["passed"] and merged["totals"]["golden_equal"] == 4
    assert [tc.get("name") for tc in ET.parse(junit).getroot().iter("testcase")] == [
        c.id for c in select(CPU, RUN_PATTERN)]


def test_shard_equivalence_script_tells_a_merged_report_that_differs(tmp_path, capsys):
    """benchmarks/shard_equivalence.py (the GPU proof that N shards merged are one run): timing
    and host fields may differ, anything else is a difference named by its path."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import shard_equivalence

    case = {"id": "c1", "status": "pass", "checks": {"o": {"rms": 1e-3}}, "timing": {"total_s": 1.0}}
    single = {"passed": True, "totals": {"pass": 1}, "wall_s": 5.0, "device": "cuda",
              "fingerprint": {"gpu_name": "G", "date": "d1", "torch": "2"}, "cases": [case]}
    merged = copy.deepcopy(single)
    merged.update(wall_s=9.0, merged_from=[{}, {}])
    merged["fingerprint"]["date"], merged["cases"][0]["timing"] = "d2", {"total_s": 3.0}
    paths = [tmp_path / "single.json", tmp_path / "merged.json"]
    for path, report in zip(paths, (single, merged)):
        path.write_text(json.dumps(report))
    out = tmp_path / "eq.json"
    assert shard_equivalence.main([str(p) for p in paths] + ["--wall", "single=5", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["equal"] is True

    merged["cases"][0]["checks"]["o"]["rms"] = 2e-3
    paths[1].write_text(json.dumps(merged))
    assert shard_equivalence.main([str(p) for p in paths] + ["--json", str(out)]) == 1
    assert json.loads(out.read_text())["differences"] == ["/cases/c1/checks/o/rms"]
