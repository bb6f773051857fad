#!/usr/bin/env bash
# The one-call GPU session behind the committed H200 results: run on one H200 (device image:
# Python 3.12, torch 2.11, Triton 3.6, no package registry) from the repository root, with the
# carried wheels in .whl/ (fla-core, einops, packaging). Everything lands under $OUT:
#   goldens_h200.tgz   the gpu suite's golden store for this platform (goldens/<platform key>/)
#   results.tgz        gpu.json/.md (the gpu suite against those goldens, from a separate warm
#                      process), bench_*.json (kernel, decode, reference benchmarks), compare*.json/.md
#                      (ours beside flash-linear-attention's chunk kernel) and logs/ (every step)
# Steps have their own time limits inside one overall deadline, so a slow step costs only
# itself. Phase A shards the gpu suite over processes: Triton compiles each shape/dtype/flag
# combination cold, and shards compile theirs in parallel (the golden store is locked against
# concurrent writers). A shard stopped by its time limit still writes the goldens of the cases
# it passed (`golden regen` turns timeout's SIGTERM into a stop), so a rerun continues from there.
set -uo pipefail
cd "$(dirname "$0")/.."
FINAL=${OUT:-out/h200}
OUT=$(mktemp -d)  # results collect here and travel as one archive (the device returns few files)
LOGS=$OUT/logs; mkdir -p "$LOGS"
DEADLINE=$((SECONDS + ${H200_BUDGET_S:-520}))
limit() { local left=$((DEADLINE - SECONDS)); echo $(( left < $1 ? (left > 5 ? left : 5) : $1 )); }
step() { local name=$1 max=$2; shift 2; local t; t=$(limit "$max")
  echo "== $name (limit ${t}s, $((DEADLINE - SECONDS))s left)"; local s=$SECONDS
  timeout -k 10 "$t" "$@" > "$LOGS/$name.log" 2>&1; local rc=$?
  echo "   exit $rc after $((SECONDS - s))s"; tail -n 25 "$LOGS/$name.log"; }
mkdir -p "$FINAL"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
unset TRITON_INTERPRET

python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . || exit 2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 2
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$LOGS/gpu.txt"

# Phase A: the gpu suite in shards (goldens written as they pass), and the fla comparison's
# correctness half beside them (it needs the wheels; ours does not).
python3 - > "$LOGS/shards.txt" <<'PY'
import re
from collections import defaultdict
from gdn_verify.cases import suite
groups = defaultdict(list)
for c in suite("gpu"):
    groups[(c.H, c.HV, c.K, c.V, c.dtype, c.l2norm, c.init_state)].append(c.id)
shards = [[] for _ in range(12)]
for ids in sorted(groups.values(), key=len, reverse=True):
    min(shards, key=len).extend(ids)
for ids in shards:
    print("^(" + "|".join(re.escape(i) for i in ids) + ")$")
PY
shard() { python3 -m gdn_verify golden regen --suite gpu --device cuda --goldens goldens --cases "$1"; }
export -f shard
A_LIMIT=$(limit 200)
echo "== phase A: 12 shards of the gpu suite + compare (limit ${A_LIMIT}s)"; s=$SECONDS
(PYTHONPATH=/tmp/site timeout -k 10 "$A_LIMIT" python3 -m gdn_verify compare --impl gdn --impl fla-chunk \
   --suite gpu --cases 'h4x8-d128-(bf16|f16|f32)' --max-cases 60 --device cuda --no-audit \
   --json "$OUT/compare.json" --markdown "$OUT/compare.md" > "$LOGS/compare.log" 2>&1; echo "compare exit $?" >> "$LOGS/compare.log") &
n=0; while IFS= read -r regex; do
  timeout -k 10 "$A_LIMIT" bash -c 'shard "$0"' "$regex" > "$LOGS/shard$n.log" 2>&1 &
  n=$((n + 1)); done < "$LOGS/shards.txt"
wait
echo "   phase A done after $((SECONDS - s))s"; grep -h -iE "added|failed|error|exit" "$LOGS"/shard*.log | head -40; tail -n 30 "$LOGS/compare.log"

# Phase B0: compute-sanitizer over the odd head sizes (K = 100, V = 60: the shapes where Triton
# 3.6 has compiled out-of-bounds shared-memory reads before), kernels already compiled by phase A.
step sanitizer 70 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m gdn_verify run --suite gpu \
  --device cuda --cases 'k100v60-(bf16|f16)' --max-cases 6 --no-audit

# Phase B: the kernel benchmark on a quiet GPU (it measures its own cold start).
step bench_kernels 130 python3 benchmarks/bench_kernels.py --json "$OUT/bench_kernels.json"

# Phase C: the whole gpu suite against the goldens phase A wrote, in one warm process.
step gpu_suite 150 python3 -m gdn_verify run --suite gpu --device cuda --goldens goldens \
  --json "$OUT/gpu.json" --markdown "$OUT/gpu.md"

# If time is left: the decode and reference benchmarks (their code is not what a kernel change
# touches, so these come last).
step bench_decode 50 python3 benchmarks/bench_decode.py --json "$OUT/bench_decode.json"
step bench_reference 40 python3 benchmarks/bench_reference.py --device cuda --repeats 3 --json "$OUT/bench_reference_cuda.json"

# Phase D, if time is left: latency of both implementations on the anchor shapes.
step compare_bench 150 env PYTHONPATH=/tmp/site python3 -m gdn_verify compare --impl gdn --impl fla-chunk \
  --suite gpu --cases 'h4x8-d128-bf16' --max-cases 1 --device cuda --bench --no-audit \
  --json "$OUT/compare_bench.json" --markdown "$OUT/compare_bench.md"

tar czf "$FINAL/goldens_h200.tgz" goldens
tar czf "$FINAL/results.tgz" -C "$OUT" .
ls -la "$FINAL"; tar tzvf "$FINAL/results.tgz"
