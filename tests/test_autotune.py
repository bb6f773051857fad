"""Autotuned kernels' choices recorded with goldens and replayed against them (gdn_verify/autotune.py).

tests/autotuned_double.py holds an autotuned Triton kernel whose two configs give other float32
bits, and an implementation whose o depends on them. The interpreter cannot time configs, so a
test settles each "machine's" choice by hand in the autotuner's cache, as autotuning would.
"""

from __future__ import annotations

import json
import sys
import types

import autotuned_double as double
import pytest
import triton
import triton.language as tl

from gdn_verify import cli
from gdn_verify.autotune import autotuners, choices, config_json, conflicts, key_text, merged, replay, tuned_here

NAME = "autotuned_double.block_sum"
TUNER = double.block_sum
SMALL, LARGE = TUNER.configs  # BLOCK 8, BLOCK 32


@pytest.fixture(autouse=True)
def fresh_cache():
    TUNER.cache.clear()
    yield
    TUNER.cache.clear()


def bits(t) -> str:
    return t.item().hex()


def test_choices_are_found_recorded_and_replayed():
    tuners = autotuners("autotuned_double")
    assert tuners == {NAME: TUNER}
    TUNER.cache[double.KEY] = LARGE  # this machine's autotuning chose BLOCK 32
    recorded = choices(tuners)
    assert recorded == {NAME: {key_text(double.KEY): config_json(LARGE)}}
    assert json.loads(json.dumps(recorded)) == recorded  # what the manifest stores
    large = bits(double.summed(double.numbers()))

    TUNER.cache[double.KEY] = SMALL  # another machine chose BLOCK 8: other bits
    assert bits(double.summed(double.numbers())) != large
    done = replay(tuners, recorded)
    assert (done.recorded, done.replayed, done.not_replayed) == (1, 1, [])
    assert TUNER.cache[double.KEY] is LARGE
    assert bits(double.summed(double.numbers())) == large
    assert tuned_here(tuners, recorded) == {}

    other_key = (7, "torch.float32", "torch.float32")
    TUNER.cache[other_key] = SMALL
    assert tuned_here(tuners, recorded) == {NAME: {key_text(other_key): config_json(SMALL)}}


def test_what_cannot_be_replayed_is_reported_and_left_alone():
    recorded = {"gone.kernel": {key_text(double.KEY): config_json(LARGE)},
                NAME: {key_text(double.KEY): {**config_json(LARGE), "num_warps": 16}}}
    done = replay(autotuners("autotuned_double"), recorded)
    assert (done.recorded, done.replayed) == (2, 0)
    assert ["kernel not found" in x for x in done.not_replayed] == [True, False]
    assert "no longer among the kernel's configs" in done.not_replayed[1]
    assert TUNER.cache == {}


@triton.heuristics({"EVEN": lambda args: args["n"] % 2 == 0})
@triton.autotune(configs=[triton.Config({"BLOCK": 8}), triton.Config({"BLOCK": 16})], key=["n"])
@triton.jit
def under_heuristics(x_ptr, n, EVEN: tl.constexpr, BLOCK: tl.constexpr):
    tl.store(x_ptr, n)


def test_an_autotuner_under_heuristics_is_found_and_replayed(monkeypatch):
    """flash-linear-attention's chunk kernels are heuristics(autotune(jit)): the module attribute
    is the heuristics wrapper, and its autotuner's choices must be recorded and replayed too."""
    package = types.ModuleType("wrapped_package")
    package.kernel = under_heuristics
    monkeypatch.setitem(sys.modules, "wrapped_package", package)
    tuner = under_heuristics.fn
    name = f"{__name__}.under_heuristics"
    assert autotuners("wrapped_package") == {name: tuner}
    recorded = {name: {key_text((5, "torch.float32")): config_json(tuner.configs[1])}}
    try:
        assert replay(autotuners("wrapped_package"), recorded).replayed == 1
        assert tuner.cache[(5, "torch.float32")] is tuner.configs[1]
        assert choices(autotuners("wrapped_package")) == recorded
    finally:
        tuner.cache.clear()


def test_a_writer_adds_keys_and_keeps_recorded_choices():
    a, b = key_text((1,)), key_text((2,))
    old = {NAME: {a: config_json(SMALL)}}
    assert merged(old, {NAME: {a: config_json(LARGE), b: config_json(LARGE)}}) == {
        NAME: {a: config_json(SMALL), b: config_json(LARGE)}}
    assert merged(None, {}) == {}
    assert conflicts(old, {NAME: {a: config_json(LARGE), b: config_json(LARGE)}}) == [
        f"{NAME} {a}: recorded {config_json(SMALL)}, this run {config_json(LARGE)}"]
    assert conflicts(old, {NAME: {a: config_json(SMALL)}}) == conflicts(None, {NAME: {a: config_json(LARGE)}}) == []


def _cli(*args, cases="^dense-b1-t1-h1x1-d16-f32$") -> int:
    return cli.main([*args, "--suite", "smoke", "--cases", cases, "--device", "cpu", "--no-audit",
                     "--impl", "autotuned_double:tuned_reference"])


def _machine(config) -> None:
    """A process whose autotuning settled `config` for KEY."""
    TUNER.cache.clear()
    TUNER.cache[double.KEY] = config


def _store(tmp_path):
    """(store, its manifest's path): goldens written where autotuning chose BLOCK 32."""
    store = tmp_path / "goldens"
    _machine(LARGE)
    assert _cli("golden", "regen", "--goldens", str(store)) == 0
    (manifest_path,) = store.glob("*/manifest.json")
    return store, manifest_path


def _edit_manifest(path, edit) -> None:
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=0, sort_keys=True))


def test_goldens_record_the_choices_and_a_diff_on_another_machine_replays_them(tmp_path, capsys):
    store, manifest_path = _store(tmp_path)
    assert json.loads(manifest_path.read_text())["autotune"] == {NAME: {key_text(double.KEY): config_json(LARGE)}}
    assert "autotune record: 1 choice, 1 added by this run" in capsys.readouterr().out
    # A second writer replays the recorded choice and adds none.
    assert _cli("golden", "regen", "--goldens", str(store), cases="^dense-b2-t65") == 0
    assert "autotune record: 1 choice, 0 added by this run" in capsys.readouterr().out

    # Another machine, whose autotuning chose BLOCK 8: the recorded choice is replayed, bits equal.
    _machine(SMALL)
    report = tmp_path / "diff.json"
    assert _cli("golden", "diff", "--goldens", str(store), "--json", str(report)) == 0
    proof = json.loads(report.read_text())
    assert proof["all_equal"] and proof["autotune"]["replayed"] == 1 and proof["autotune"]["tuned_here"] == []

    # The same, from a store that did not record the choice: BLOCK 8 runs, o differs, and the
    # report names the key tuned on this machine.
    _edit_manifest(manifest_path, lambda m: m.pop("autotune"))
    _machine(SMALL)
    capsys.readouterr()
    assert _cli("golden", "diff", "--goldens", str(store), "--json", str(report)) == 1
    proof = json.loads(report.read_text())
    assert [c["status"] for c in proof["cases"]] == ["different"]
    assert proof["autotune"]["tuned_here"] == [f"{NAME} {key_text(double.KEY)}"]
    assert "1 key tuned on this machine" in capsys.readouterr().out
    # A run against the store says the same in its reports.
    _machine(SMALL)
    md = tmp_path / "run.md"
    assert _cli("run", "--goldens", str(store), "--markdown", str(md)) == 1
    assert "1 key tuned on this machine" in md.read_text() and "1 key tuned" in capsys.readouterr().out


def test_a_store_older_than_the_record_starts_one_only_when_its_goldens_are_rewritten(tmp_path, capsys):
    store, manifest_path = _store(tmp_path)
    _edit_manifest(manifest_path, lambda m: m.pop("autotune"))  # as written before stores recorded them

    # Adding a case records nothing: the old golden may have been made with another choice.
    capsys.readouterr()
    assert _cli("golden", "regen", "--goldens", str(store), cases="^dense-b1-t1-h1x1-d16-f32$|^dense-b2-t65") == 0
    assert "predate autotune records" in capsys.readouterr().out
    assert "autotune" not in json.loads(manifest_path.read_text())
    # --force rewrites what differs, and the record starts.
    assert _cli("golden", "regen", "--goldens", str(store), "--force") == 0
    assert json.loads(manifest_path.read_text())["autotune"] == {NAME: {key_text(double.KEY): config_json(LARGE)}}


def test_a_writer_that_chose_otherwise_than_the_record_fails_and_says_so(tmp_path, capsys):
    """Shards that start on a store without the key tune side by side and may choose differently."""
    store, manifest_path = _store(tmp_path)
    _edit_manifest(manifest_path, lambda m: m["autotune"][NAME].update(
        {key_text(double.KEY): config_json(SMALL)}))  # the other shard's choice
    TUNER.cache.clear()
    capsys.readouterr()
    # This writer replays SMALL, so to show a conflict its autotuner must settle LARGE after the
    # replay: a case of another key would; here the replay is undone by hand in the impl's call.
    original = double.summed

    def retuned(x):
        TUNER.cache[double.KEY] = LARGE
        return original(x)

    double.summed = retuned
    try:
        assert _cli("golden", "regen", "--goldens", str(store), cases="^dense-b2-t65") == 1
    finally:
        double.summed = original
    assert "autotune conflict" in capsys.readouterr().out
    assert json.loads(manifest_path.read_text())["autotune"][NAME][key_text(double.KEY)] == config_json(SMALL)
