"""No silent pass, and reports are never lost.

A run asked to compare with goldens (`--require-goldens`, what the gate passes) that finds no
store for its platform, or compares fewer cases bit for bit than it ran, exits 2 saying what to
do; without the flag it may pass, but its headline says that nothing (or only k of n cases)
was compared. A selection of no case is a usage error. A report that cannot be written still
leaves the other report and the terminal summary, and exits 2 naming the path.
"""

from __future__ import annotations

import json
import os
import re
import stat

import pytest
import torch

from gdn_verify import cli
from gdn_verify.suites import suite

SMOKE = suite("smoke")
ONE = ["--suite", "smoke", "--cases", f"^{re.escape(SMOKE[0].id)}$"]
TWO = ["--suite", "smoke", "--max-cases", "2"]
GOOD = ["--impl", "gdn_doubles:rounded_reference", "--device", "cpu"]




def run(*argv) -> int:
    return cli.main([str(a) for a in argv])


# ----------------------------------------------------------------------------------------
# A selection of no case (probe finding 6)
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["run"], ["cases"], ["golden", "regen"], ["golden", "diff"]])
def test_a_selection_of_no_case_is_a_usage_error(tmp_path, command, capsys):
    extra = GOOD + ["--goldens", tmp_path] if command[0] == "golden" else GOOD if command == ["run"] else []
    assert run(*command, "--suite", "smoke", "--cases", "no-such-case", *extra) == 2
    err = capsys.readouterr().err
    assert "--cases 'no-such-case' matches no case of suite smoke" in err and "gdn-verify cases" in err


# ----------------------------------------------------------------------------------------
# No comparable store (probe finding 7)
# ----------------------------------------------------------------------------------------

def _store_elsewhere(root):
    """A store for another platform key under root."""
    from gdn_verify.goldens import regenerate
    from gdn_verify.platform import fingerprint

    other = {**fingerprint("cpu"), "triton": "0.0-elsewhere"}
    regenerate(root, other, [(SMOKE[0], "digest", {"o": torch.zeros(1), "final_state": torch.zeros(1)})])


def _deleted_manifest(root):
    assert run("golden", "regen", *ONE, *GOOD, "--goldens", root) == 0
    for manifest in root.glob("*/manifest.json"):
        manifest.unlink()


@pytest.mark.parametrize("make", [lambda root: None, _store_elsewhere, _deleted_manifest],
                         ids=["empty", "other-platform", "deleted-manifest"])
def test_no_comparable_store_is_a_setup_error_when_goldens_are_required(tmp_path, make, capsys):
    store = tmp_path / "goldens"
    store.mkdir()
    make(store)
    capsys.readouterr()
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    assert run("run", *ONE, *GOOD, "--no-audit", "--goldens", store, "--require-goldens") == 2
    err = capsys.readouterr().err
    assert "--require-goldens" in err and "no store for platform" in err and "gdn-verify golden regen" in err
    if make is _store_elsewhere:
        assert "0.0-elsewhere" in err  # the stores that exist are listed

    # Without the flag (nox -s verify) the run may pass, but says in words that nothing was compared.
    assert run("run", *ONE, *GOOD, "--no-audit", "--goldens", store, "--json", out_json, "--markdown", out_md) == 0
    out = capsys.readouterr().out
    assert "no bitwise comparison" in out
    assert "no bitwise comparison" in out_md.read_text().splitlines()[0]
    assert json.loads(out_json.read_text())["goldens"]["compared"] == 0


def test_require_goldens_needs_goldens(capsys):
    assert run("run", *ONE, *GOOD, "--require-goldens") == 2
    assert "--require-goldens: needs --goldens DIR" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# Cases without a golden (probe finding 8)
# ----------------------------------------------------------------------------------------

def _emptied_manifest(store):
    (manifest_path,) = store.glob("*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    manifest["cases"] = {}
    manifest_path.write_text(json.dumps(manifest))


def test_cases_without_a_golden_fail_the_gate_and_are_counted_in_words(tmp_path, capsys):
    store = tmp_path / "goldens"
    assert run("golden", "regen", *ONE, *GOOD, "--goldens", store) == 0
    capsys.readouterr()
    # One of two cases has a golden.
    assert run("run", *TWO, *GOOD, "--no-audit", "--goldens", store, "--require-goldens") == 2
    captured = capsys.readouterr()
    assert "1 of 2 cases compared bit for bit" in captured.out
    assert "--require-goldens: 1 of 2 cases have no golden" in captured.err and "golden regen" in captured.err
    assert run("golden", "diff", *TWO, *GOOD, "--goldens", store) == 2
    assert "1 of 2 cases have no golden" in capsys.readouterr().err

    # A manifest that lists no case: nothing compared.
    _emptied_manifest(store)
    out_md = tmp_path / "r.md"
    assert run("run", *ONE, *GOOD, "--no-audit", "--goldens", store, "--require-goldens") == 2
    assert run("golden", "diff", *ONE, *GOOD, "--goldens", store) == 2
    capsys.readouterr()
    assert run("run", *ONE, *GOOD, "--no-audit", "--goldens", store, "--markdown", out_md) == 0
    assert "0 of 1 cases compared bit for bit" in capsys.readouterr().out
    assert "0 of 1 cases compared bit for bit" in out_md.read_text().splitlines()[0]


def test_a_complete_store_passes_the_gate(tmp_path):
    store = tmp_path / "goldens"
    assert run("golden", "regen", *TWO, *GOOD, "--goldens", store) == 0
    out_json = tmp_path / "r.json"
    assert run("run", *TWO, *GOOD, "--no-audit", "--goldens", store, "--require-goldens", "--json", out_json) == 0
    goldens = json.loads(out_json.read_text())["goldens"]
    assert goldens["compared"] == goldens["ran"] == 2


# ----------------------------------------------------------------------------------------
# golden regen's exit code (item 4: any case errored or failed)
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["raises", "zeros"])
def test_regen_exits_1_when_a_case_errors_or_fails(tmp_path, name):
    assert run("golden", "regen", *TWO, "--impl", f"gdn_doubles:{name}", "--device", "cpu",
               "--goldens", tmp_path / "goldens") == 1


# ----------------------------------------------------------------------------------------
# Reports are never lost (item 5)
# ----------------------------------------------------------------------------------------

def test_a_report_that_cannot_be_written_leaves_the_other_and_exits_2(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad, out_md = blocker / "r.json", tmp_path / "r.md"
    assert run("run", *ONE, *GOOD, "--no-audit", "--json", bad, "--markdown", out_md) == 2
    captured = capsys.readouterr()
    assert out_md.read_text().startswith("**gdn-verify PASS") and "PASS: suite smoke" in captured.out
    assert f"--json {bad}: cannot write the report" in captured.err
    # The other way round.
    out_json = tmp_path / "r.json"
    assert run("run", *ONE, *GOOD, "--no-audit", "--json", out_json, "--markdown", blocker / "r.md") == 2
    assert json.loads(out_json.read_text())["passed"]
    assert f"--markdown {blocker / 'r.md'}: cannot write the report" in capsys.readouterr().err


def test_report_files_are_created_like_any_other_file(tmp_path):
    old = os.umask(0o022)
    try:
        out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
        assert run("run", *ONE, *GOOD, "--no-audit", "--json", out_json, "--markdown", out_md) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out_json.stat().st_mode) == 0o644 and stat.S_IMODE(out_md.stat().st_mode) == 0o644
