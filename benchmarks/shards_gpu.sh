#!/usr/bin/env bash
# Sharded runs on one CUDA GPU: the same selection of the gpu suite in one process, then in
# N shard processes at once (`run --shard I/N`), merged by `gdn-verify report merge`; the merged
# report must be the single one (benchmarks/shard_equivalence.py), and both compare every case
# bit for bit with the committed store. Every compile combination runs once first (its shortest
# case), so neither wall time includes compiling. Results land under $OUT as one archive.
#
#   OUT=out/shards bash benchmarks/shards_gpu.sh            # the gpu suite's bfloat16 cases, 4 shards
#   SHARD_CASES=. SHARDS=4 bash benchmarks/shards_gpu.sh    # the whole suite
#   SHARD_THREADS=4 bash benchmarks/shards_gpu.sh           # each shard with 4 CPU threads (torch's
#                                                           #  default is every core, in each process)
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_steps.sh  # workspace, limit, step
workspace out/shards "${SHARDS_BUDGET_S:-540}"
N=${SHARDS:-4}
CASES=${SHARD_CASES:-bf16}
IMPL=${SHARD_IMPL:-gdn}
SUITE=${SHARD_SUITE:-gpu}
DEVICE=${SHARD_DEVICE:-cuda}  # cpu (with TRITON_INTERPRET=1) tries the script out

[ "$DEVICE" = cpu ] || unset TRITON_INTERPRET
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . || exit 2
SEL=(--suite "$SUITE" --cases "$CASES" --impl "$IMPL" --device "$DEVICE" --goldens goldens --require-goldens)
python3 benchmarks/gpu_shards.py --suite "$SUITE" --cases "$CASES" --missing-from goldens --device "$DEVICE" --warm "$WORK/warm" \
  > /dev/null 2> "$LOGS/warm_list.log"
step warm 120 bash -c "xargs -a '$WORK/warm' -d '\n' -P 8 -I{} python3 -m gdn_verify run --suite '$SUITE' \
  --impl '$IMPL' --device '$DEVICE' --no-audit --cases '{}'"

s=$SECONDS
step single 300 python3 -m gdn_verify run "${SEL[@]}" --json "$WORK/single.json"
echo "$?" > "$WORK/single.exit"; SINGLE_S=$((SECONDS - s))

s=$SECONDS
t=$(limit 240)
for i in $(seq "$N"); do
  ( b=$SECONDS; [ -n "${SHARD_THREADS:-}" ] && export OMP_NUM_THREADS=$SHARD_THREADS
    timeout -k 10 "$t" python3 -m gdn_verify run "${SEL[@]}" --shard "$i/$N" \
      --json "$WORK/shard$i.json" > "$LOGS/shard$i.log" 2>&1
    echo "$? $((SECONDS - b))" > "$WORK/shard$i.exit" ) &
done
wait
SHARDS_S=$((SECONDS - s))
WALLS=(--wall "single=$SINGLE_S" --wall "shards_together=$SHARDS_S")
for i in $(seq "$N"); do
  read -r rc secs < "$WORK/shard$i.exit"; echo "shard $i/$N: exit $rc after ${secs}s"
  WALLS+=(--wall "shard$i=$secs")
done
step merge 60 python3 -m gdn_verify report merge "$WORK"/shard*.json --json "$WORK/merged.json" \
  --markdown "$WORK/merged.md" --junit "$WORK/merged.xml"
echo "merge exit $? (single run exit $(cat "$WORK/single.exit"))"
python3 benchmarks/shard_equivalence.py "$WORK/single.json" "$WORK/merged.json" "${WALLS[@]}" \
  --json "$WORK/shards_one_gpu.json"
echo "equivalence exit $?"
tar czf "$FINAL/shards.tgz" -C "$WORK" .
ls -la "$FINAL"
