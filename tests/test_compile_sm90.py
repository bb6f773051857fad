"""benchmarks/compile_sm90.py compiles every fast-path kernel for sm_90 without a GPU; run it, so
a kernel signature or launch constant it reads cannot drift away from it unnoticed."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compile_sm90.py"


def test_compile_sm90_compiles_every_fast_path_kernel(tmp_path):
    out = tmp_path / "compile.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["kernel"] for r in rows] == ["cumsum", "l2norm", "kkt_solve", "recurrence", "recurrence_packed",
                                              "output"]
    assert all(r["compile_s"] > 0 and r["stages_s"] for r in rows), rows
