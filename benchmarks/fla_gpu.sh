#!/usr/bin/env bash
# flash-linear-attention (fla-core, carried as a wheel in .whl/) through the gate on one CUDA GPU,
# in calls of about nine minutes each, run back to back so the next finds the last one's Triton
# cache warm. Everything lands under $OUT as a few archives (the device returns few files).
#
#   bash benchmarks/fla_gpu.sh calibrate   # pristine FLA over the gpu suite's bf16/f16/f32 cases:
#                                          #  1. which TF32 the GPU's dots use (tf32_rounding.py)
#                                          #  2. whole outputs of the cases in $FLA_PROBE (dump_outputs.py)
#                                          #  3. `run` with every check, one JSON report per shard
#                                          #     (the design factor's calibration data)
#                                          #  4. `golden regen` of the cases goldens/fla-chunk lacks
#                                          #  (then, on this machine: benchmarks/design_calibration.py
#                                          #  over the run reports, benchmarks/fla_summary.py)
#   bash benchmarks/fla_gpu.sh diff        # `golden diff` against goldens/fla-chunk in fresh
#                                          #  processes: all equal, exit 0
#   bash benchmarks/fla_gpu.sh change      # the one-line change (benchmarks/fla_one_line_change.toml)
#                                          #  in a copy of the package: `golden diff` exit 1; then
#                                          #  `mutate --mutants mutants/fla.toml`: all caught
#   bash benchmarks/fla_gpu.sh ours        # our kernels: goldens of gpu cases their stores lack
#   bash benchmarks/fla_gpu.sh record      # `golden regen --force` in one process: rewrites the
#                                          #  goldens this machine's bits differ from and records
#                                          #  the autotune choices (gdn_verify/autotune.py). First
#                                          #  every case runs in shards (`run`, every check: the
#                                          #  compiles and the calibration data); a call the limit
#                                          #  stops goes on in the next call on the same warm
#                                          #  machine (state in $FLA_STATE, default /tmp/fla-state-DTYPES)
#   FLA_FRESH_TUNING=1 bash benchmarks/fla_gpu.sh diff  # first delete the autotune choices
#                                          #  Triton cached on disk: nothing this machine tuned
#                                          #  before is reused, as on a fresh machine; without the
#                                          #  variant audit, whose autotuning in every shard at once
#                                          #  outlasted the step's limit
#   bash benchmarks/fla_gpu.sh proof       # diff, change and ours in one call
#
# record writes the store inside the tree the device call copied, and a later call copies the tree
# again: run the diff in the same call as the record, or unpack the record's fla_store.tgz into
# the tree the next call carries (each dtype's record adds to the store the one before wrote).
#
# Cases run in shards of one compile combination each (benchmarks/gpu_shards.py), P at a time:
# Triton compiles and FLA autotunes each combination cold, and compiling is what takes the time.
# Each step has a limit inside one overall deadline (FLA_BUDGET_S), so a slow step costs only
# itself; a stopped regen still writes the goldens of the cases it passed.
set -uo pipefail
cd "$(dirname "$0")/.."
PHASE=${1:-}
source benchmarks/gpu_steps.sh  # workspace, limit, step, gpu_setup, shard_files, shards
workspace out/fla "${FLA_BUDGET_S:-540}"
P=${FLA_PARALLEL:-12}
STORE=goldens/fla-chunk
DTYPES=${FLA_DTYPES:-bfloat16,float16,float32}  # FLA_DTYPES=float16: one dtype's cases only
MUTANT_CASES='h4x8-d128-bf16'

gpu_setup || exit 2
FLA=(--suite gpu --impl fla-chunk --device cuda --case-timeout 240)

phase_calibrate() {
  # Which TF32 reading the design's `tf32-trunc` assumes: cut or rounded operands (seconds).
  step tf32_rounding 45 python3 benchmarks/tf32_rounding.py --json "$LOGS/tf32_rounding.json"
  [ -n "${FLA_PROBE:-}" ] && step probe 60 python3 benchmarks/dump_outputs.py --impl fla-chunk --device cuda \
    --suite gpu --cases "$FLA_PROBE" --out "$WORK/probe.safetensors" && cp "$WORK/probe.safetensors" "$LOGS/"
  shard_files "$WORK/fla" --suite gpu --dtypes "$DTYPES" > /dev/null
  shards fla_run 400 "$WORK/fla" run "${FLA[@]}" --no-audit --json SHARD.run.json
  mkdir -p "$WORK/runs"; cp "$WORK"/fla/s???.run.json "$WORK/runs/" 2>/dev/null
  shard_files "$WORK/regen" --suite gpu --dtypes "$DTYPES" --missing-from "$STORE" > /dev/null
  [ -n "$(ls "$WORK/regen"/s??? 2>/dev/null)" ] && \
    shards fla_regen 120 "$WORK/regen" golden regen "${FLA[@]}" --goldens "$STORE"
  grep -h "not written\|wrote\|added" "$WORK"/regen/s???.log 2>/dev/null | sort | uniq -c | sort -rn | head -20
  tar czf "$FINAL/fla_store.tgz" "$STORE"
  tar czf "$FINAL/fla_runs.tgz" -C "$WORK" runs logs; }

phase_diff() {
  [ -f "$STORE/"*/manifest.json ] || { echo "no $STORE store: run the calibrate phase first" >&2; exit 2; }
  if [ -n "${FLA_FRESH_TUNING:-}" ]; then
    local cache=${TRITON_CACHE_DIR:-$HOME/.triton/cache}
    echo "== deleting $(find "$cache" -name '*.autotune.json' 2>/dev/null | wc -l) autotune choices from Triton's disk cache"
    find "$cache" -name '*.autotune.json' -delete 2>/dev/null
  fi
  shard_files "$WORK/diff" --suite gpu --dtypes "$DTYPES" > /dev/null
  shards fla_diff 200 "$WORK/diff" golden diff "${FLA[@]}" --goldens "$STORE" --json SHARD.diff.json \
    ${FLA_FRESH_TUNING:+--no-audit}
  mkdir -p "$WORK/diffs"; cp "$WORK"/diff/s???.diff.json "$WORK/diffs/" 2>/dev/null
  tar czf "$FINAL/fla_diff.tgz" -C "$WORK" diffs logs; }

phase_change() {
  # The one-line change, in a copy of the package first on the path.
  python3 - /tmp/site /tmp/site-changed benchmarks/fla_one_line_change.toml <<'PY'
import shutil, sys
from pathlib import Path
from gdn_verify.mutants import apply_edit, load_mutants
src, dst, spec = Path(sys.argv[1]), Path(sys.argv[2]), load_mutants(sys.argv[3])
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(src, dst)
for mutant in spec.mutants:
    for edit in mutant.edits:
        path = dst / spec.package / edit.file
        path.write_text(apply_edit(path.read_text(), edit, mutant.name))
        print(f"{mutant.name}: {path}")
PY
  # Against the committed store (tensors over 64 KiB as digests), then against whole tensors
  # of the unchanged package (a scratch store), which give every difference its ULPs.
  PYTHONPATH=/tmp/site-changed step one_line_change 90 python3 -m gdn_verify golden diff "${FLA[@]}" \
    --goldens "$STORE" --cases "$MUTANT_CASES" --markdown "$WORK/one_line_change.md" --json "$WORK/one_line_change.json"
  shard_files "$WORK/full" --suite gpu --cases "$MUTANT_CASES" > /dev/null
  shards full_tensor_regen 120 "$WORK/full" golden regen "${FLA[@]}" --goldens /tmp/fla-full --max-golden-bytes 1G
  PYTHONPATH=/tmp/site-changed step one_line_change_full 90 python3 -m gdn_verify golden diff "${FLA[@]}" \
    --goldens /tmp/fla-full --cases "$MUTANT_CASES" --markdown "$WORK/one_line_change_full_tensors.md" \
    --json "$WORK/one_line_change_full_tensors.json"
  echo "   (exit 1 expected: the change alters bits)"
  step fla_mutants 200 python3 -m gdn_verify mutate --mutants mutants/fla.toml --suite gpu --device cuda \
    --cases "$MUTANT_CASES" --goldens "$STORE" --workers 6 --json "$WORK/fla_mutants.json"
  tar czf "$FINAL/fla_change.tgz" -C "$WORK" logs one_line_change.md one_line_change.json \
    one_line_change_full_tensors.md one_line_change_full_tensors.json fla_mutants.json; }

phase_record() {
  # Every case first, in shards (compiling is what takes the time; the reports are calibration
  # data under the committed design), then the regen in one process, which then finds every
  # kernel compiled: each autotune key is tuned once and the record holds the choice every golden
  # was made with (shards tuning side by side may choose differently: an autotune conflict).
  local state=${FLA_STATE:-/tmp/fla-state-${DTYPES//,/-}}
  [ -d "$state/warm" ] || shard_files "$state/warm" --suite gpu --dtypes "$DTYPES" > /dev/null
  shards fla_run 480 "$state/warm" run "${FLA[@]}" --no-audit --json SHARD.run.json
  mkdir -p "$WORK/runs"; cp "$state"/warm/s???.run.json "$WORK/runs/" 2>/dev/null
  if [ -z "$(pending "$state/warm")" ]; then
    # DTYPES' cases as one --cases regex (the shards above select by dtype). A regen stopped by
    # its limit still writes and records what it did: run the phase again.
    local only="-($(python3 -c "import sys; from gdn_verify.cases import DTYPE_TAGS
print('|'.join(DTYPE_TAGS[d] for d in sys.argv[1].split(',')))" "$DTYPES"))(-|\$)"
    step record 500 python3 -m gdn_verify golden regen "${FLA[@]}" --cases="$only" --goldens "$STORE" --force
    tar czf "$FINAL/fla_store.tgz" "$STORE"
  else
    echo "   $(pending "$state/warm" | wc -l) shards left: run the phase again (same machine) before the regen"
  fi
  tar czf "$FINAL/fla_record_logs.tgz" -C "$WORK" logs runs; }

phase_ours() {
  # Our kernels: the gpu-suite cases whose goldens their stores lack (new cases).
  for spec in "gdn goldens" "gdn-recurrent goldens/gdn-recurrent"; do
    set -- $spec
    shard_files "$WORK/ours-$1" --suite gpu --missing-from "$2" --per-shard 32 > /dev/null
    [ -n "$(ls "$WORK/ours-$1"/s??? 2>/dev/null)" ] && \
      shards "regen_$1" 120 "$WORK/ours-$1" golden regen --suite gpu --impl "$1" --device cuda --goldens "$2"
  done
  tar czf "$FINAL/our_stores.tgz" goldens/cuda* goldens/gdn-recurrent; }

case "$PHASE" in
calibrate|diff|change|ours|record) "phase_$PHASE" ;;
proof) phase_diff; phase_change; phase_ours ;;
*) echo "usage: $0 calibrate|diff|change|ours|record|proof" >&2; exit 2 ;;
esac
ls -la "$FINAL"
