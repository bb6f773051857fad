#!/usr/bin/env bash
# Issue #15's GPU work on one card, one phase per `device` call (each at most about nine
# minutes), from the repository root; what comes back lands under $OUT (default out/speed):
#
#   bash benchmarks/speed_gpu.sh bits       # `golden diff` over the gpu suite against the
#                                           #  committed store of each of SPEED_IMPLS (default:
#                                           #  gdn, our chunk kernel), in shards of one compile
#                                           #  combination, SPEED_PARALLEL at a time; SPEED_CASES
#                                           #  (a case-id regex) narrows it, e.g. to the cases an
#                                           #  earlier call's limit left uncompared
#   bash benchmarks/speed_gpu.sh breakdown  # stage_breakdown.py (device time per stage, eager
#                                           #  wall, ours beside FLA)
#   bash benchmarks/speed_gpu.sh ncu        # ncu_stages.py (counters, stall reasons) at T = 65536
#   bash benchmarks/speed_gpu.sh bench      # bench_kernels.py: latency, accuracy, compiled
#                                           #  variants, cold start
#   bash benchmarks/speed_gpu.sh sweep      # sweep_stages.py over the recurrence and output
#                                           #  stages: time, accuracy, bits against shipped
#   bash benchmarks/speed_gpu.sh cold       # cold_start.py: the first call in fresh processes,
#                                           #  3 runs (issue #15's done-when: the median)
#   bash benchmarks/speed_gpu.sh bits breakdown   # phases in order, in one call and budget
#
# Needs the wheels in .whl/ (carry it) for FLA's side of the breakdown.
set -uo pipefail
cd "$(dirname "$0")/.."
PHASES="bits breakdown bench ncu sweep cold"
usage() { echo "usage: $0 PHASE... (PHASE: ${PHASES// /, })" >&2; exit 2; }
[ $# -gt 0 ] || usage
for phase in "$@"; do [[ " $PHASES " == *" $phase "* ]] || usage; done
source benchmarks/gpu_steps.sh  # workspace, limit, step, gpu_setup, shard_files, shards
workspace out/speed "${SPEED_BUDGET_S:-540}"
P=${SPEED_PARALLEL:-16}

gpu_setup || exit 2

phase_bits() {
  local impl
  for impl in ${SPEED_IMPLS:-gdn}; do
    local store=goldens; [ "$impl" = gdn ] || store=goldens/$impl
    shard_files "$WORK/$impl" --suite gpu ${SPEED_CASES:+--cases "$SPEED_CASES"} > /dev/null
    shards "diff_$impl" 300 "$WORK/$impl" golden diff --suite gpu --impl "$impl" --device cuda \
      --goldens "$store" --no-audit --json SHARD.diff.json
    mkdir -p "$WORK/diffs/$impl"; cp "$WORK/$impl"/s???.diff.json "$WORK/diffs/$impl/" 2>/dev/null
  done
  tar czf "$FINAL/speed_bits.tgz" -C "$WORK" diffs logs; }

phase_breakdown() {
  step stage_breakdown 240 python3 benchmarks/stage_breakdown.py ${SPEED_SHAPES:+--shapes $SPEED_SHAPES} \
    --json "$FINAL/stage_breakdown.json" --markdown "$FINAL/stage_breakdown.md"
  # SPEED_BASE: a tree of the kernels before a change, timed in the same call, on the same card,
  # as the change: our side of the breakdown only. It needs only `git archive REV gdn_verify
  # kernels reference benchmarks/stage_breakdown.py pyproject.toml` (a call carries 64 MiB).
  if [ -n "${SPEED_BASE:-}" ]; then
    ln -sfn ../kernels "$SPEED_BASE/gdn_verify/kernels"; ln -sfn ../reference "$SPEED_BASE/gdn_verify/reference"
    PYTHONPATH=$SPEED_BASE:$PYTHONPATH step stage_breakdown_base 120 python3 "$SPEED_BASE/benchmarks/stage_breakdown.py" \
      --impl gdn ${SPEED_SHAPES:+--shapes $SPEED_SHAPES} --json "$FINAL/stage_breakdown_base.json" \
      --markdown "$FINAL/stage_breakdown_base.md"
  fi
  tar czf "$FINAL/speed_logs.tgz" -C "$WORK" logs; }

phase_ncu() {
  local ncu
  ncu=$(command -v ncu || ls -d /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | sort -V | tail -1)
  step ncu_stages 280 python3 benchmarks/ncu_stages.py --ncu "${ncu:-ncu}" --timeout 130 \
    --json "$FINAL/ncu_stages.json" --markdown "$FINAL/ncu_stages.md"
  tar czf "$FINAL/speed_logs.tgz" -C "$WORK" logs; }

phase_bench() {
  step bench_kernels 120 python3 benchmarks/bench_kernels.py --json "$FINAL/bench_kernels.json"
  tar czf "$FINAL/speed_logs.tgz" -C "$WORK" logs; }

phase_sweep() {
  # SPEED_SWEEP: sweep_stages.py's selection (default: every recurrence and output configuration)
  step sweep 500 python3 benchmarks/sweep_stages.py ${SPEED_SWEEP:---stage recurrence --stage output} \
    --json "$FINAL/sweep_stages.json"
  tar czf "$FINAL/speed_logs.tgz" -C "$WORK" logs; }

phase_cold() {
  step cold_start 200 python3 benchmarks/cold_start.py --repeats 3 --json "$FINAL/cold_start.json"
  tar czf "$FINAL/speed_logs.tgz" -C "$WORK" logs; }

for phase in "$@"; do "phase_$phase"; done
