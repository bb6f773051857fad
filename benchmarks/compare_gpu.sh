#!/usr/bin/env bash
# Our chunk kernel beside flash-linear-attention's chunk_gated_delta_rule on one CUDA GPU, in one
# call of at most about nine minutes, with one report (JSON + Markdown) under $OUT:
#
#   bash benchmarks/compare_gpu.sh            # bf16: cases, invariants, variant audit, latency
#   bash benchmarks/compare_gpu.sh f32-f16    # float32 and float16 cases (a second call)
#
# Needs the wheels in .whl/ (carry it): fla-core and the pure-Python packages it imports
# (einops, packaging); the GPU image has torch and Triton but no package registry.
#
# The cases are the `gpu` suite's on one model shape (H = 4, HV = 8, K = V = 128): each new
# shape, dtype or flag combination compiles both implementations cold (flash-linear-attention
# also autotunes), so few combinations fit the time. Float64 is not run: flash-linear-attention
# does not support it. The budget counts from the start: on a machine whose Triton cache is
# cold, the variant audit and the latency bench alone took 150 s (two runs, 2026-11-29, in
# which no case started within the former 150 s budget). --time-budget stops starting cases
# after that many seconds and reports the rest as not run; `timeout` interrupts a run that
# still overruns (SIGTERM, which `compare` turns into a stop), and the report of what ran is
# written all the same.
set -uo pipefail
cd "$(dirname "$0")/.."

PHASE=${1:-bf16}
OUT=${OUT:-out/compare}
case "$PHASE" in
  bf16) SELECT='h4x8-d128-bf16'; EXTRA=(--bench); BUDGET=420; NAME=compare ;;
  f32-f16) SELECT='h4x8-d128-(f32|f16)'; EXTRA=(--no-audit); BUDGET=420; NAME=compare-f32-f16 ;;
  *) echo "usage: $0 [bf16|f32-f16]" >&2; exit 2 ;;
esac
mkdir -p "$OUT"

# Install the package first, without the carried wheels on the path.
python3 -c "import gdn_verify.kernels, gdn_verify.reference" 2>/dev/null \
  || python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . || exit 2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 2
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1

timeout -k 15 500 python3 -m gdn_verify compare --impl gdn --impl fla-chunk --suite gpu \
  --cases "$SELECT" --device cuda "${EXTRA[@]}" --time-budget "$BUDGET" \
  --json "$OUT/$NAME.json" --markdown "$OUT/$NAME.md" > "$OUT/$NAME.log" 2>&1
rc=$?
tail -n 40 "$OUT/$NAME.log"
echo "gdn-verify compare exit code $rc: 0 all passed, 1 a case failed (a finding, in the report)," \
     "2 setup error, 124 interrupted by timeout (the report of what ran is still written)"
exit "$rc"
