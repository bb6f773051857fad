"""Implementations that cheat or crash: the harness catches each in the case where it happens.

An implementation gets copies of its inputs and is failed when it writes into them; its
outputs must have the contract's dtypes, shapes and device; SystemExit, KeyboardInterrupt and
other BaseExceptions raised inside it end its case, never the report; a hung case times out.
The implementations are tests/gdn_doubles.py's.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gdn_verify import cli
from gdn_verify.cases import dense
from gdn_verify.adapters import Adapter
from gdn_verify.impls import resolve_impl
from gdn_verify.inputs import make_inputs
from gdn_verify.audit import variant_audit
from gdn_verify.results import RunOptions
from gdn_verify.runner import run_cases
from gdn_verify.suites import suite

import gdn_doubles

SMOKE = suite("smoke")
NO_EXTRAS = dict(audit=False, diagnose=False)


def run(*argv) -> int:
    return cli.main([str(a) for a in argv])


def _one(case, name, **options):
    return run_cases([case], resolve_impl(f"gdn_doubles:{name}"), "cpu",
                     RunOptions(**{**NO_EXTRAS, **options})).cases[0]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.view(torch.uint8).equal(b.view(torch.uint8))


# ----------------------------------------------------------------------------------------
# Inputs written in place (probe findings 1-3)
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, tensor", [("zeroes_its_inputs", "v"), ("overwrites_beta", "beta")])
def test_an_implementation_that_writes_into_its_inputs_fails_every_case(tmp_path, name, tensor):
    out_json = tmp_path / "r.json"
    assert run("run", "--suite", "smoke", "--impl", f"gdn_doubles:{name}", "--device", "cpu", "--no-audit",
               "--json", out_json) == 1
    report = json.loads(out_json.read_text())
    # Writing 1 into a beta that is already 1 changes nothing, and is no failure.
    unchanged = {c.id for c in SMOKE if tensor == "beta" and c.beta == "one"}
    assert [c["status"] for c in report["cases"]] == ["pass" if c.id in unchanged else "fail" for c in SMOKE]
    assert all(f"implementation modified its input {tensor}" in c["failures"] for c in report["cases"]
               if c["id"] not in unchanged)


def test_the_reference_and_the_reported_digest_use_the_true_inputs():
    case = dense(8, H=1, HV=2, K=8, V=8, dtype="float32", init_state="random")
    result = _one(case, "zeroes_its_inputs")
    from gdn_verify.inputs import inputs_digest

    assert result.status == "fail" and result.inputs_digest == inputs_digest(make_inputs(case))
    assert result.failures == ["implementation modified its input v", "implementation modified its input initial_state"]


def test_regen_writes_no_golden_for_an_implementation_that_writes_into_its_inputs(tmp_path):
    store = tmp_path / "goldens"
    assert run("golden", "regen", "--suite", "smoke", "--device", "cpu", "--goldens", store,
               "--impl", "gdn_doubles:zeroes_its_inputs") == 1
    manifests = list(store.glob("*/manifest.json"))
    assert all(json.loads(m.read_text())["cases"] == {} for m in manifests)
    assert not list(store.glob("*/*.safetensors"))


def test_a_reproducer_holds_the_true_inputs_and_catches_the_write(tmp_path):
    case = SMOKE[0]
    repro = tmp_path / "repro"
    assert run("run", "--suite", "smoke", "--cases", f"^{re.escape(case.id)}$", "--impl",
               "gdn_doubles:zeroes_its_inputs", "--device", "cpu", "--no-audit", "--repro-dir", repro) == 1
    saved = load_file(repro / case.id / "inputs.safetensors")
    expected = make_inputs(case)
    assert set(saved) == set(expected) and all(_same_bits(saved[n], expected[n]) for n in expected)
    tests_dir = Path(__file__).resolve().parent
    proc = subprocess.run([sys.executable, str(repro / case.id / "repro.py"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(tests_dir)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "modified its input v" in proc.stdout


# ----------------------------------------------------------------------------------------
# Outputs: dtype, shape, device (probe finding 4)
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, dtype, message", [
    ("float32_o", "bfloat16", "o: dtype float32, expected bfloat16 (v's dtype)"),
    ("float32_o", "float16", "o: dtype float32, expected float16 (v's dtype)"),
    ("float64_state", "float32", "final_state: dtype float64, expected float32"),
    ("float64_state", "bfloat16", "final_state: dtype float64, expected float32"),
    ("o_on_meta", "float32", "o: device meta, expected cpu (the inputs' device)"),
    ("o_transposed", "float32", "o: shape (1, 8, 8, 2), expected (1, 8, 2, 8) = [B, T, HV, V]"),
    ("no_final_state", "float32", "final_state: the implementation returned None"),
])
def test_outputs_of_the_wrong_dtype_shape_or_device_fail(name, dtype, message):
    result = _one(dense(8, H=1, HV=2, K=8, V=8, dtype=dtype), name)
    assert result.status == "fail" and any(message in f for f in result.failures), result.failures


def test_exact_mode_keeps_its_float64_state():
    result = _one(dense(8, H=1, HV=2, K=8, V=8, dtype="float64"), "rounded_reference")
    assert result.status == "pass", result.failures
    assert _one(dense(8, H=1, HV=2, K=8, V=8, dtype="float64"), "float32_o").status == "fail"


# ----------------------------------------------------------------------------------------
# BaseExceptions, import failures, hangs (probe finding 5)
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, what", [("exits_0", "SystemExit: 0"), ("raises_base_exception", "_Escape: deliberate")])
def test_a_base_exception_inside_the_implementation_errors_its_case_and_reports_are_written(tmp_path, name, what):
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    assert run("run", "--suite", "smoke", "--impl", f"gdn_doubles:{name}", "--device", "cpu", "--no-audit",
               "--json", out_json, "--markdown", out_md) == 1
    report = json.loads(out_json.read_text())
    assert [c["status"] for c in report["cases"]] == ["error"] * len(SMOKE)
    assert all(c["failures"] == [what] for c in report["cases"])
    assert out_md.read_text().startswith("**gdn-verify FAIL")


def test_keyboard_interrupt_stops_the_run_and_the_reports_keep_the_cases_done(tmp_path, capsys):
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    assert SMOKE[1].id.startswith("dense-b2-t65-")
    assert run("run", "--suite", "smoke", "--impl", "gdn_doubles:interrupted_on_two_sequences_of_65", "--device", "cpu",
               "--no-audit", "--json", out_json, "--markdown", out_md) == 1
    report = json.loads(out_json.read_text())
    assert report["interrupted"] and [c["status"] for c in report["cases"]] == ["pass", "error"]
    assert report["cases"][1]["failures"] == ["KeyboardInterrupt: the run was interrupted"]
    out = " ".join(capsys.readouterr().out.split())
    assert f"interrupted: {len(SMOKE) - 2} of {len(SMOKE)} cases not run" in out
    assert f"interrupted: {len(SMOKE) - 2} of {len(SMOKE)} cases not run" in out_md.read_text()


def test_an_implementation_that_fails_to_import_is_a_setup_error(capsys):
    assert run("run", "--suite", "smoke", "--impl", "impl_fails_on_import:fn", "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert "impl_fails_on_import:fn" in err and "RuntimeError: deliberate failure at import" in err


def test_a_hung_case_times_out_and_the_run_goes_on(tmp_path):
    out_json = tmp_path / "r.json"
    gdn_doubles.hangs_on_first_call.calls = 0
    before = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    assert run("run", "--suite", "smoke", "--max-cases", "2", "--impl", "gdn_doubles:hangs_on_first_call",
               "--device", "cpu", "--no-audit", "--case-timeout", "1.5", "--json", out_json) == 1
    assert time.monotonic() - start < 40
    assert signal.getsignal(signal.SIGALRM) is before and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    first, second = json.loads(out_json.read_text())["cases"]
    assert first["status"] == "error" and first["failures"] == ["timed out after 1.5 s"]
    assert second["status"] == "pass"


@pytest.mark.parametrize("command", [["golden", "regen"], ["golden", "diff"]])
def test_golden_commands_take_a_case_timeout(tmp_path, command):
    gdn_doubles.hangs_on_first_call.calls = 0
    store = tmp_path / "goldens"
    if command[1] == "diff":
        assert run("golden", "regen", "--suite", "smoke", "--max-cases", "2", "--device", "cpu", "--goldens", store,
                   "--impl", "gdn_doubles:rounded_reference") == 0
        gdn_doubles.hangs_on_first_call.calls = 0
    assert run(*command, "--suite", "smoke", "--max-cases", "2", "--device", "cpu", "--goldens", store,
               "--impl", "gdn_doubles:hangs_on_first_call", "--against-impl", "--case-timeout", "1") == 1


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_a_bad_case_timeout_is_a_usage_error(value, capsys):
    assert run("run", "--suite", "smoke", "--device", "cpu", "--case-timeout", value) == 2
    assert "--case-timeout" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# The variant audit survives what the cases survive
# ----------------------------------------------------------------------------------------

def test_a_raising_implementation_fails_the_variant_audit_instead_of_crashing_the_run():
    audit = variant_audit(Adapter("raises", gdn_doubles.raises, ours=False, variants=lambda: {}), "cpu")
    assert not audit.passed and "RuntimeError: deliberate failure inside the implementation" in audit.detail


def test_our_kernel_declared_packed_errors_its_cases_and_fails_the_audit(tmp_path):
    out_json = tmp_path / "r.json"
    assert run("run", "--suite", "smoke", "--max-cases", "1", "--impl", "gdn", "--layout", "packed",
               "--device", "cpu", "--json", out_json) == 1
    report = json.loads(out_json.read_text())
    assert report["cases"][0]["status"] == "error" and "q: expected a 4-D tensor" in report["cases"][0]["failures"][0]
    assert not report["variant_audit"]["passed"] and "q: expected a 4-D tensor" in report["variant_audit"]["detail"]
