"""The before/after proof: goldens that record which implementation (and which revision of it)
wrote them, `golden diff --markdown` for a pull request, and the refusal to compare one
implementation's goldens with another's unless asked.

The implementation under test is tests/standin_recurrent.py, copied into a temporary directory
as a module of its own; its "revision" changes by rewriting one line of the copy between
`golden regen` and `golden diff` (a re-association: a few ULPs, within every tolerance).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from gdn_verify import cli
from gdn_verify.golden_pr import StoreDiff
from gdn_verify.goldens import GoldenError, GoldenStore, regenerate, store_identity
from gdn_verify.identity import implementation_identity, legacy_identity, revision_changes
from gdn_verify.suites import suite

HERE = Path(__file__).parent
SPEC = "gdn_standin:gated_delta_rule"
LINE_A = "        u = beta[:, t, :, None, None] * (v[:, t, :, None, :] - k_t @ S)\n"
LINE_B = "        u = beta[:, t, :, None, None] * v[:, t, :, None, :] - beta[:, t, :, None, None] * (k_t @ S)\n"
SMOKE = ["--suite", "smoke", "--device", "cpu"]
N_SMOKE = len(suite("smoke"))



def run(*argv) -> int:
    return cli.main([str(a) for a in argv])


@pytest.fixture
def standin(tmp_path, monkeypatch):
    """Writes revision A or B of the stand-in module and makes the next import load it."""
    directory = tmp_path / "impl"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # a same-size rewrite must not load stale bytecode

    def write(line: str) -> None:
        text = (HERE / "standin_recurrent.py").read_text()
        assert text.count(LINE_A) == 1
        (directory / "gdn_standin.py").write_text(text.replace(LINE_A, line))
        sys.modules.pop("gdn_standin", None)

    write(LINE_A)
    yield write
    sys.modules.pop("gdn_standin", None)


def manifest_of(store: Path) -> dict:
    (path,) = store.glob("*/manifest.json")
    return json.loads(path.read_text())


def test_regen_records_the_identity_and_diff_names_the_changed_revision(tmp_path, standin, capsys):
    store, pr = tmp_path / "goldens", tmp_path / "pr.md"
    assert run("golden", "regen", *SMOKE, "--impl", SPEC, "--goldens", store) == 0
    manifest = manifest_of(store)
    identity = manifest["implementation"]
    assert identity["spec"] == SPEC and identity["module"] == "gdn_standin"
    assert len(identity["source_digest"]) == 64 and identity["source_files"] == 1
    assert len(manifest["cases"]) == N_SMOKE
    assert all(e["implementation"]["source_digest"] == identity["source_digest"] for e in manifest["cases"].values())

    # The same revision: every case bitwise equal, exit 0.
    assert run("golden", "diff", *SMOKE, "--impl", SPEC, "--goldens", store, "--markdown", pr) == 0
    md = pr.read_text()
    assert f"**{N_SMOKE}/{N_SMOKE} cases bitwise equal**" in md
    assert "No revision change recorded" in md and "### Cases that differ" not in md

    # Revision B re-associates one sum: exit 1, the cases and their ULP tables, the change named.
    standin(LINE_B)
    capsys.readouterr()
    assert run("golden", "diff", *SMOKE, "--impl", SPEC, "--goldens", store, "--markdown", pr,
               "--json", tmp_path / "pr.json") == 1
    md = pr.read_text()
    after = implementation_identity_of_copy(tmp_path)
    assert f"source_digest: {identity['source_digest'][:12]} -> {after[:12]}" in md
    assert "compared cases differ bit for bit" in md and "### Cases that differ" in md
    assert "| tensor | elements differing | max ULP | ULP histogram | first index |" in md
    report = json.loads((tmp_path / "pr.json").read_text())
    different = [c for c in report["cases"] if c["status"] == "different"]
    assert different and not report["all_equal"]
    o_or_state = next(iter(d for d in different[0]["detail"].values() if not d["equal"]))
    assert o_or_state["n_different"] > 0 and f"| {o_or_state['n_different']} of {o_or_state['n_elements']} |" in md
    assert "differ bit for bit" in capsys.readouterr().out


def implementation_identity_of_copy(tmp_path: Path) -> str:
    from gdn_verify.identity import source_digest

    return source_digest(tmp_path / "impl" / "gdn_standin.py")[0]


def test_another_implementations_store_is_refused_unless_asked(tmp_path, standin, capsys):
    store, pr = tmp_path / "goldens", tmp_path / "pr.md"
    assert run("golden", "regen", *SMOKE, "--impl", SPEC, "--goldens", store) == 0
    other = "gdn_doubles:rounded_reference"
    capsys.readouterr()
    for command in (["golden", "diff"], ["golden", "regen"], ["run"]):
        assert run(*command, *SMOKE, "--impl", other, "--goldens", store, "--no-audit") == 2
        err = capsys.readouterr().err
        assert f"written by implementation {SPEC!r}, not by {other!r}" in err, command
    assert manifest_of(store)["implementation"]["spec"] == SPEC  # the refused regen wrote nothing

    # Asked for explicitly: compared, and the report says so.
    assert run("golden", "diff", *SMOKE, "--impl", other, "--goldens", store, "--against-impl",
               "--markdown", pr) in (0, 1)
    assert "Compared with another implementation's goldens (`--against-impl`)" in pr.read_text()


def test_a_store_without_identity_is_our_chunk_kernels(tmp_path):
    # A manifest as written before identities were recorded (the committed CUDA store is one).
    committed = next(Path("goldens").glob("cpu-interpreter-*/manifest.json"))
    manifest = json.loads(committed.read_text())
    for key in ("implementation", "variant_audit"):
        manifest.pop(key, None)
    legacy = tmp_path / "goldens" / committed.parent.name
    legacy.mkdir(parents=True)
    (legacy / "manifest.json").write_text(json.dumps(manifest))
    identity = store_identity(manifest)
    assert identity == legacy_identity(manifest) and identity["spec"] == "gdn"
    assert identity["git_commit"] == manifest["git_commit"] and identity["recorded"] is False
    cuda = json.loads(next(Path("goldens").glob("cuda-*/manifest.json")).read_text())
    assert "implementation" not in cuda or cuda["implementation"]["spec"] == "gdn"

    # The runner's view: our kernel compares with it; anything else is refused unless asked.
    from gdn_verify.impls import resolve_impl
    from gdn_verify.results import SetupError
    from gdn_verify.run_goldens import RunGoldens

    fp, root = manifest["fingerprint"], tmp_path / "goldens"
    view = RunGoldens(str(root), fp, impl=resolve_impl("gdn"))
    assert view.summary["identity"]["store"]["spec"] == "gdn" and "against_impl" not in view.summary
    with pytest.raises(SetupError, match="written by implementation 'gdn'"):
        RunGoldens(str(root), fp, impl=resolve_impl("gdn_doubles:rounded_reference"))
    assert RunGoldens(str(root), fp, impl=resolve_impl("gdn_doubles:rounded_reference"), against_impl=True
                    ).summary["against_impl"]


def test_regenerate_refuses_another_implementation(tmp_path):
    from test_goldens import run_items

    fp = json.loads(next(Path("goldens").glob("cpu-interpreter-*/manifest.json")).read_text())["fingerprint"]
    mine = {"spec": "a:f", "conventions": {}, "source_digest": "1" * 64}
    regenerate(tmp_path, fp, run_items([("a", 1)]), identity=mine)
    with pytest.raises(GoldenError, match="written by implementation 'a:f', not by 'b:f'"):
        regenerate(tmp_path, fp, run_items([("b", 2)]), identity=dict(mine, spec="b:f"))
    # Same implementation, other conventions: another implementation too.
    with pytest.raises(GoldenError, match=r"not by 'a:f' \(layout=varlen\)"):
        regenerate(tmp_path, fp, run_items([("b", 2)]), identity=dict(mine, conventions={"layout": "varlen"}))
    # Another revision of it: allowed, and recorded.
    regenerate(tmp_path, fp, run_items([("b", 2)]), identity=dict(mine, source_digest="2" * 64))
    store = GoldenStore(tmp_path).for_platform(fp)
    assert store.identity["source_digest"] == "2" * 64
    assert store.case_revision("a")["source_digest"] == "1" * 64 and store.case_revision("b")["source_digest"] == "2" * 64


def test_revision_changes_and_identity_of_our_kernels():
    from gdn_verify.impls import resolve_impl

    ours = implementation_identity(resolve_impl("gdn"))
    assert ours["spec"] == "gdn" and ours["distribution"] == "gdn-verify" and ours["conventions"] == {}
    kernels = Path(__import__("gdn_verify.kernels").kernels.__file__).parent
    assert ours["source_files"] == len([p for p in kernels.rglob("*.py") if "__pycache__" not in p.parts])
    assert revision_changes(ours, dict(ours, version="9.9")) == [f"version: {ours['version']} -> 9.9"]
    assert revision_changes(ours, dict(ours, git_commit=None)) == []  # unknown is no change


def test_the_markdown_sets_variant_counts_before_against_after():
    audit = lambda counts: {"after_sweep": counts, "after_t64": counts, "passed": True, "detail": "", "ran": True}  # noqa: E731
    proof = StoreDiff(impl="fla-chunk", suite="gpu", platform_key="cuda-sm90-triton3.6.0", store="g",
                      before={"spec": "fla-chunk", "version": "0.6.0"}, after={"spec": "fla-chunk", "version": "0.6.1"},
                      changed=["version: 0.6.0 -> 0.6.1"], against_impl=None,
                      cases=[("a", "equal", {}), ("b", "equal", {})],
                      variants_before=audit({"chunk_fwd_o": 100, "fwd_h": 76}),
                      variants_after=audit({"chunk_fwd_o": 60, "fwd_h": 48}))
    md = proof.markdown()
    assert "**2/2 cases bitwise equal**" in md and proof.all_equal
    assert "176 over 2 kernels -> 108 over 2 kernels" in md
    assert "| chunk_fwd_o | 100 | 60 | -40 |" in md and "`version: 0.6.0 -> 0.6.1`" in md
    assert "not comparable" not in md
    settled = dict(proof.variants_after, settled=True)  # this run settled autotuning; the store's audit did not
    assert "not comparable" in replace(proof, variants_after=settled).variants_line()
    assert "not comparable" not in replace(proof, variants_before=settled, variants_after=settled).variants_line()


def test_a_missing_golden_is_never_all_equal():
    proof = StoreDiff(impl="x", suite="s", platform_key="k", store="g", before={}, after={}, changed=[],
                      against_impl=None, cases=[("a", "equal", {}), ("b", "missing", "no golden")],
                      variants_before=None, variants_after=None)
    assert not proof.all_equal and "1 missing" in proof.headline()


def test_the_copy_is_what_runs(tmp_path, standin):
    # Guards the fixture: the module imported is the temporary copy, not tests/standin_recurrent.py.
    import importlib

    module = importlib.import_module("gdn_standin")
    assert Path(module.__file__).parent == tmp_path / "impl"
    shutil.rmtree(tmp_path / "impl" / "__pycache__", ignore_errors=True)
