import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from gdn_verify.cases import Case
from gdn_verify.inputs import make_inputs
from gdn_verify.repro import write_reproducer

TESTS_DIR = Path(__file__).resolve().parent
IMPORTS_SUITE = re.compile(r"^\s*(import|from)\s+gdn_verify\b", re.MULTILINE)

# Zero-length middle sequence, initial state and in-kernel l2norm: every branch of the
# script's inline reference.
VARLEN = Case(layout="varlen", seq_lens=(3, 0, 5), H=1, HV=2, K=8, V=8, dtype="float32",
              init_state="random", l2norm=True)
# 3 chunks per sequence, 2 sequences x 8 value heads: one chunk of one head is 1/48 of o.
DENSE = Case(layout="dense", seq_lens=(130, 130), H=2, HV=8, K=16, V=16, dtype="bfloat16", scale=0.3)


def write(tmp_path, case, impl) -> Path:
    return write_reproducer(case, make_inputs(case), impl, "o: RMS error ratio 1 > 1e-05", tmp_path)


def run_isolated(directory: Path, extra_path: list[Path]) -> subprocess.CompletedProcess:
    """python repro.py with only extra_path added to the import path, on the CPU."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    env["PYTHONPATH"] = os.pathsep.join(map(str, extra_path))
    return subprocess.run([sys.executable, "repro.py", "--device", "cpu"], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=300)


def run_in_process(directory: Path, monkeypatch, *args) -> int:
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    spec = importlib.util.spec_from_file_location(f"repro_{directory.name.replace('.', '_')}", directory / "repro.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.main(["--device", "cpu", *args])


def test_layout_and_inputs(tmp_path):
    directory = write(tmp_path, VARLEN, "repro_impls:returns_zeros")
    assert directory == tmp_path / VARLEN.id
    assert sorted(p.name for p in directory.iterdir()) == ["README.txt", "inputs.safetensors", "repro.py"]
    stored = load_file(directory / "inputs.safetensors")
    expected = make_inputs(VARLEN)
    assert stored.keys() == expected.keys()
    for name in expected:
        assert stored[name].dtype == expected[name].dtype and stored[name].equal(expected[name])
    script = (directory / "repro.py").read_text()
    assert not IMPORTS_SUITE.search(script)
    readme = (directory / "README.txt").read_text()
    assert VARLEN.id in readme and "RMS error ratio 1 > 1e-05" in readme and "repro_impls:returns_zeros" in readme


def test_broken_impl_fails_without_the_suite_importable(tmp_path):
    # A package named gdn_verify that refuses to import shadows the installed one: the
    # script and a torch-only implementation must not need it.
    shadow = tmp_path / "shadow"
    (shadow / "gdn_verify").mkdir(parents=True)
    (shadow / "gdn_verify" / "__init__.py").write_text("raise ImportError('the reproducer imported gdn_verify')\n")
    directory = write(tmp_path, VARLEN, "repro_impls:returns_zeros")
    done = run_isolated(directory, [shadow, TESTS_DIR])
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL" in done.stdout and "o: RMS error ratio 1 >" in done.stdout
    assert "final_state: RMS error ratio 1 >" in done.stdout


def test_correct_impl_passes_in_a_subprocess(tmp_path):
    directory = write(tmp_path, VARLEN, "repro_impls:reference_rounded")
    done = run_isolated(directory, [TESTS_DIR])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout


def test_one_bad_chunk_fails_on_the_worst_slice(tmp_path, monkeypatch, capsys):
    directory = write(tmp_path, DENSE, "repro_impls:reference_rounded")
    assert run_in_process(directory, monkeypatch) == 0
    assert run_in_process(directory, monkeypatch, "--impl", "repro_impls:one_chunk_off") == 1
    out = capsys.readouterr().out
    # The total global ratio stays within tolerance; the global error beyond rounding does not.
    assert not re.search(r"o: RMS error ratio \d", out.split("FAIL:")[-1])
    assert "o: RMS error ratio beyond rounding" in out and "o: worst slice ratio beyond rounding" in out
    assert "o: worst slice ratio" in out and "sequence 1, head 5, chunk 1 (tokens 64..127)" in out


def test_unimportable_impl_cannot_run(tmp_path, monkeypatch):
    directory = write(tmp_path, VARLEN, "no_such_module_anywhere:fn")
    assert run_in_process(directory, monkeypatch) == 2


def test_our_short_impl_names_become_importable_specs(tmp_path):
    directory = write(tmp_path, VARLEN, "gdn")
    assert '"impl": "gdn_verify.kernels:chunk_gated_delta_rule"' in (directory / "repro.py").read_text()
    with pytest.raises(ValueError, match="impl_spec"):
        write(tmp_path, VARLEN, "not-a-spec")
