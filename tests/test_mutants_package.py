"""`gdn-verify mutate --package NAME --mutants FILE`: mutants of any installed package, from a file.

The mechanism runs under the interpreter with our own kernels as the package
(gdn_verify.kernels): one mutant that a check catches, one equivalent mutant (IEEE products
commute) that survives, on one cheap case; the real sources stay untouched. The public FLA
mutants (mutants/fla.toml) need fla's chunk kernels on a GPU: here only their form is checked,
and their anchors against the installed fla sources where fla is installed.
"""

from __future__ import annotations

import importlib.util
import textwrap
import json
from pathlib import Path

import pytest

from gdn_verify import cli
from gdn_verify.mutants import MutantError, load_mutants, parse_mutants
from gdn_verify.mutate import PACKAGES, MutationSetupError, package_target, source_dirs

from test_mutants import tree_digests

FLA_MUTANTS = Path(__file__).parent.parent / "mutants" / "fla.toml"
CASE = "dense-b1-t1-h1x1-d16-f32"

OURS = '''
package = "gdn_verify.kernels"
impl = "gdn"
device = "cpu"

[[mutant]]
name = "state-transposed"
bug_class = "final state stored [V, K]"
[[mutant.edit]]
file = "recurrence.py"
anchor = "tl.store(ht_ptr + head_state + state_tile, state, mask=state_mask)"
replacement = "tl.store(ht_ptr + head_state + vcols[None, :] * K + kcols[:, None], state, mask=state_mask)"

[[mutant]]
name = "decay-commuted"
bug_class = "equivalent: the decay's product written the other way round (IEEE products commute)"
[[mutant.edit]]
file = "recurrence.py"
anchor = "state = state * tl.exp(gam_last) + raw_dot("
replacement = "state = tl.exp(gam_last) * state + raw_dot("
'''


def run(*argv) -> int:
    return cli.main([str(a) for a in argv])


@pytest.mark.slow
def test_our_kernels_as_a_package_one_caught_one_survived(tmp_path):
    mutants = tmp_path / "ours.toml"
    mutants.write_text(OURS)
    before = tree_digests(source_dirs())
    out = tmp_path / "mutants.json"
    # A survivor fails the run (exit 1): an equivalent mutant has nothing to catch.
    assert run("mutate", "--package", "gdn_verify.kernels", "--mutants", mutants, "--suite", "smoke",
               "--cases", f"^{CASE}$", "--no-audit", "--json", out) == 1
    report = json.loads(out.read_text())
    assert report["package"] == "gdn_verify.kernels" and report["impl"] == "gdn"
    assert report["goldens"].startswith("unmutated sources' outputs") and report["unmutated"]["golden_pass"]
    verdicts = {m["mutant"]: m for m in report["mutants"]}
    caught, survived = verdicts["state-transposed"], verdicts["decay-commuted"]
    assert caught["verdict"] == "caught" and caught["case"] == CASE and caught["check"] == "reference:final_state"
    assert survived["verdict"] == "survived" and survived["golden_statuses"] == {"equal": 1}
    assert report["unmutated"]["confirm_pass"]["cases_run"] == 1
    assert tree_digests(source_dirs()) == before


def test_package_target_copies_what_shadows_the_install():
    ours = package_target("gdn_verify.kernels")
    assert ours.copies == PACKAGES and ours.compare_all and ours.where == "kernels/"
    other = package_target("rich")  # any installed top-level package
    assert other.copies == ("rich",) and other.where == "rich/"
    with pytest.raises(MutationSetupError, match="no_such_package_anywhere"):
        package_target("no_such_package_anywhere")
    with pytest.raises(MutationSetupError, match="gdn-verify's own distribution"):
        package_target("gdn_verify.nothing")


@pytest.mark.parametrize("argv, message", [
    (["--package", "gdn_verify.kernels"], "--package: needs --mutants FILE"),
    (["--impl", "gdn-recurrent"], "--impl: needs --mutants FILE"),
])
def test_package_flags_need_a_mutants_file(argv, message, capsys):
    assert run("mutate", "--suite", "smoke", *argv) == 2
    assert message in capsys.readouterr().err


def test_a_missing_anchor_stops_the_run_before_anything_runs(tmp_path, capsys):
    mutants = tmp_path / "bad.toml"
    mutants.write_text(OURS.replace("state = state * tl.exp(gam_last)", "state = state * tl.exp(nothing)"))
    assert run("mutate", "--mutants", mutants, "--suite", "smoke", "--cases", f"^{CASE}$", "--device", "cpu") == 2
    assert "mutant decay-commuted: pattern not found in kernels/recurrence.py" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (lambda d: d["mutant"].append(dict(d["mutant"][0])), "named twice"),
    (lambda d: d["mutant"][0]["edit"][0].pop("anchor"), "expected exactly the keys"),
    (lambda d: d["mutant"][0]["edit"][0].update(replacement=d["mutant"][0]["edit"][0]["anchor"]), "differs"),
    (lambda d: d["mutant"][0]["edit"][0].update(file="../outside.py"), "relative to the package"),
    (lambda d: d["mutant"][0].update(edit=[]), "no [[mutant.edit]]"),
    (lambda d: d.update(extra=1), "unknown keys ['extra']"),
    (lambda d: d.update(mutant=[]), "no [[mutant]]"),
])
def test_malformed_mutant_files_are_refused(change, message):
    import tomllib

    data = tomllib.loads(OURS)
    change(data)
    with pytest.raises(MutantError, match=__import__("re").escape(message)):
        parse_mutants(data, "f.toml")


def test_json_mutant_files_read_the_same(tmp_path):
    import tomllib

    path = tmp_path / "m.json"
    path.write_text(json.dumps(tomllib.loads(OURS)))
    toml_path = tmp_path / "m.toml"
    toml_path.write_text(OURS)
    assert load_mutants(path).mutants == load_mutants(toml_path).mutants


def test_the_public_fla_mutants_are_well_formed():
    mutant_set = load_mutants(FLA_MUTANTS)
    assert mutant_set.package == "fla" and mutant_set.impl == "fla-chunk" and mutant_set.device == "cuda"
    assert 5 <= len(mutant_set.mutants) <= 8
    for m in mutant_set.mutants:
        assert m.name.startswith("fla-") and m.bug_class and not m.golden_only
        for edit in m.edits:
            assert edit.file.startswith("ops/") and edit.file.endswith(".py")
            assert edit.anchor.strip() and edit.anchor != edit.replacement
            # Both sides are whole Python statements of the same indentation.
            indent = len(edit.anchor) - len(edit.anchor.lstrip())
            assert len(edit.replacement) - len(edit.replacement.lstrip()) == indent
            compile(textwrap.dedent(edit.replacement), m.name, "exec")


@pytest.mark.skipif(importlib.util.find_spec("fla") is None, reason="fla (fla-core) is not installed here")
def test_the_fla_anchors_apply_to_the_installed_fla():
    from gdn_verify.mutate import mutated_sources

    target = package_target("fla", "fla-chunk", "cuda")
    directory = source_dirs(target.names)["fla"]
    for m in load_mutants(FLA_MUTANTS).mutants:
        for rel, text in mutated_sources(m, directory, target.where).items():
            compile(text, f"{m.name}:{rel}", "exec")
