"""The mutation check: each known GDN kernel bug, applied to a copy of the kernels, fails the cpu suite.

The substitution machinery is tested directly (anchors, copies, import isolation). The mutation
run is `slow` but part of CI: every mutant on the cases its `kills` lists, in subprocesses, then
the unmutated kernels on the case that caught each one, so no catch can come from a case that
fails anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gdn_verify import cli, mutate
from gdn_verify.mutate import (AUDIT, KERNELS_PACKAGE, MUTANTS, Edit, Mutant, MutantError, MutationSetupError,
                               apply_edit, make_copy, mutant_by_name, mutated_sources, run_mutants, source_dirs)
from gdn_verify.suites import suite

GOLDEN_ONLY = next(m for m in MUTANTS if m.golden_only)


def tree_digests(dirs: dict[str, Path]) -> dict[str, str]:
    """Installed path (gdn_verify/kernels/chunk.py) -> sha256, for every file under the package
    directories (bytecode caches aside: other test workers may write them meanwhile)."""
    out = {}
    for name, root in dirs.items():
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                installed = f"{name.replace('.', '/')}/{path.relative_to(root)}"
                out[installed] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def kill_cases():
    by_id = {c.id: c for c in suite("cpu")}
    return [by_id[i] for i in sorted({i for m in MUTANTS for i in m.kills if i != AUDIT})]


# ----------------------------------------------------------------------------------------
# Substitutions
# ----------------------------------------------------------------------------------------

def test_apply_edit_replaces_the_one_occurrence():
    assert apply_edit("a = 1\nb = 2\n", Edit("x.py", "b = 2", "b = 3")) == "a = 1\nb = 3\n"


def test_missing_anchor_fails_loudly():
    with pytest.raises(MutantError, match=r"mutant m: pattern not found in kernels/x\.py"):
        apply_edit("a = 1\n", Edit("x.py", "b = 2", "b = 3"), "m")


def test_repeated_anchor_fails_loudly():
    with pytest.raises(MutantError, match="pattern matches 2 times in kernels/x.py"):
        apply_edit("b = 2\nb = 2\n", Edit("x.py", "b = 2", "b = 3"), "m")


def test_every_mutant_applies_to_the_real_kernels_and_still_compiles():
    kernels = source_dirs()[KERNELS_PACKAGE]
    for m in MUTANTS:
        texts = mutated_sources(m, kernels)
        for rel, text in texts.items():
            assert text != (kernels / rel).read_text(), f"{m.name}: no change to {rel}"
            compile(text, f"{m.name}:{rel}", "exec")


def test_mutants_are_named_once_and_kill_with_cpu_suite_cases():
    names = [m.name for m in MUTANTS]
    assert len(set(names)) == len(names)
    ids = {c.id for c in suite("cpu")} | {AUDIT}
    for m in MUTANTS:
        assert m.kills and set(m.kills) <= ids, f"{m.name}: kills names cases outside the cpu suite"


def test_unknown_mutant_names_are_rejected():
    with pytest.raises(MutantError, match="unknown.*no-such-bug"):
        mutant_by_name(["no-such-bug"])
    assert mutant_by_name(None) == list(MUTANTS)


# ----------------------------------------------------------------------------------------
# Copies
# ----------------------------------------------------------------------------------------

def test_copy_holds_the_mutant_and_the_real_tree_is_untouched(tmp_path):
    dirs = source_dirs()
    before = tree_digests(dirs)
    mutant = mutant_by_name(["gva-wrong-key-head"])[0]
    root = make_copy(tmp_path, mutant, dirs)
    assert tree_digests(dirs) == before

    copied = tree_digests({"gdn_verify": root / "gdn_verify"})  # the subpackages lie inside it
    edited = {f"gdn_verify/kernels/{e.file}" for e in mutant.edits}
    assert set(copied) == set(before)
    assert {key for key in before if copied[key] != before[key]} == edited
    for e in mutant.edits:
        assert e.replacement in (root / "gdn_verify" / "kernels" / e.file).read_text()


def test_a_missing_anchor_stops_the_copy_before_anything_is_written(tmp_path):
    broken = Mutant("broken", "test", (Edit("recurrence.py", "no such text in the kernels", "x"),), kills=(AUDIT,))
    with pytest.raises(MutantError, match="pattern not found in kernels/recurrence.py"):
        make_copy(tmp_path / "copy", broken)
    assert not (tmp_path / "copy").exists()


def test_cli_reports_a_broken_mutant_as_a_setup_error(monkeypatch, capsys):
    broken = Mutant("broken", "test", (Edit("chunk.py", "no such text in the kernels", "x"),), kills=(AUDIT,))
    monkeypatch.setattr(mutate, "MUTANTS", (broken,))
    assert cli.main(["mutate", "--mutant", "broken", "--cases", "^dense-b1-t1-"]) == cli.EXIT_SETUP
    assert "pattern not found in kernels/chunk.py" in capsys.readouterr().err


def test_a_subprocess_imports_the_copy_not_the_installed_tree(tmp_path):
    root = make_copy(tmp_path, None)
    code = ("import gdn_verify.kernels, gdn_verify.reference, gdn_verify.mutate as m, pathlib, sys; "
            "print(gdn_verify.kernels.__file__); m.assert_isolated(pathlib.Path(sys.argv[1]).resolve())")
    env = {**os.environ, **mutate.WORKER_ENV, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", code, str(root)], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve().is_relative_to(root.resolve())


def test_isolation_check_rejects_the_installed_tree(tmp_path):
    # This test process imports gdn_verify from the repository, not from tmp_path.
    with pytest.raises(MutationSetupError, match="not from the copy"):
        mutate.assert_isolated(tmp_path.resolve())


# ----------------------------------------------------------------------------------------
# Mutation runs
# ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_every_mutant_is_caught_by_its_cases():
    # run_mutants raises MutationSetupError if the unmutated kernels fail a case that caught a mutant.
    report = run_mutants(MUTANTS, kill_cases(), per_mutant_cases=True, workers=2)
    survivors = [f"{r.mutant.name} (golden comparisons: {r.run.golden_statuses})" for r in report.survivors]
    assert not survivors, f"mutants the suite does not catch: {survivors}"
    for r in report.results:
        # Caught by a check on one of its cases, not by a crash, a timeout or an exception.
        assert r.run.case in r.mutant.kills and r.run.check not in ("error", "import"), (r.mutant.name, r.run)
        assert (r.run.check == "golden") == r.mutant.golden_only, (r.mutant.name, r.run.check)
    confirmed = report.confirm_pass
    catching = {r.run.case for r in report.results}
    assert confirmed.cases_run == len(catching - {AUDIT}) and confirmed.audited == (AUDIT in catching)
    assert confirmed.golden_statuses == {"equal": confirmed.cases_run}


@pytest.mark.slow
def test_golden_only_mutant_survives_without_goldens_and_the_cli_exits_1(tmp_path, monkeypatch):
    # An empty store has no goldens for this platform: only the reference checks and the
    # invariants run, and they cannot see a change of a few ULPs. The store is named relative
    # to the working directory, as `nox -s mutants` does, while the workers run elsewhere.
    empty_store, out = tmp_path / "goldens", tmp_path / "mutate.json"
    empty_store.mkdir()
    monkeypatch.chdir(tmp_path)
    case = GOLDEN_ONLY.kills[0]
    argv = ["mutate", "--mutant", GOLDEN_ONLY.name, "--cases", f"^{case}$", "--goldens", "goldens",
            "--json", str(out)]
    assert cli.main(argv) == cli.EXIT_FAIL
    report = json.loads(out.read_text())
    assert report["survived"] == 1 and report["cases"] == 1
    (row,) = report["mutants"]
    assert row["verdict"] == "survived" and row["cases_run"] == 1
    assert row["golden_statuses"] == {"not comparable": 1}
