# Steps with time limits inside one overall deadline, for the one-call GPU scripts
# (run_h200.sh, fla_gpu.sh, shards_gpu.sh, speed_gpu.sh): source it after setting DEADLINE (in
# $SECONDS) and LOGS, or call `workspace` first.

# workspace DEFAULT_OUT BUDGET_SECONDS: FINAL ($OUT, or DEFAULT_OUT: what comes back), WORK (a
# scratch directory), LOGS ($WORK/logs) and DEADLINE (BUDGET_SECONDS from now).
workspace() {
  FINAL=${OUT:-$1}; WORK=$(mktemp -d); LOGS=$WORK/logs
  mkdir -p "$FINAL" "$LOGS"; DEADLINE=$((SECONDS + $2)); }

# The smaller of $1 seconds and what is left before DEADLINE (at least 5).
limit() { local left=$((DEADLINE - SECONDS)); echo $(( left < $1 ? (left > 5 ? left : 5) : $1 )); }

# step NAME MAX_SECONDS COMMAND...: run it under its limit, output to $LOGS/NAME.log, print its
# exit code, time and last lines; return its exit code.
step() {
  local name=$1 t; t=$(limit "$2"); shift 2
  echo "== $name (limit ${t}s, $((DEADLINE - SECONDS))s left)"; local s=$SECONDS
  timeout -k 10 "$t" "$@" > "$LOGS/$name.log" 2>&1; local rc=$?
  echo "   exit $rc after $((SECONDS - s))s"; tail -n 20 "$LOGS/$name.log"; return $rc; }

# gpu_setup: compiled kernels (no interpreter), the package installed from this tree, the carried
# wheels in .whl/ (fla-core) importable from /tmp/site, the card's name in $LOGS/gpu.txt; returns
# non-zero when an install fails (the GPU image has no package registry).
gpu_setup() {
  unset TRITON_INTERPRET; export PYTHONUNBUFFERED=1
  python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . || return 2
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || return 2
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$LOGS/gpu.txt" 2>&1; }

# Shards of gdn-verify runs, P ($P) processes at a time, each with its exit code recorded.
shard_files() {  # dir, gpu_shards.py args...: one file per shard regex
  local dir=$1; shift; mkdir -p "$dir"
  python3 benchmarks/gpu_shards.py "$@" | split -l 1 -a 3 -d - "$dir/s"; ls "$dir"/s* 2>/dev/null; }
run_one() {  # shard file, gdn-verify args (SHARD in them becomes the shard's file name)
  local f=$1; shift
  python3 -m gdn_verify "${@//SHARD/$f}" --cases "$(cat "$f")" > "$f.log" 2>&1
  echo "$? $(basename "$f")" >> "$(dirname "$f")/exit_codes"; }
export -f run_one
pending() {  # dir: its shard files that have not reported an exit code (all, the first time)
  local f; for f in "$1"/s???; do
    grep -qx "[0-9]* $(basename "$f")" "$1/exit_codes" 2>/dev/null || echo "$f"; done; }
shards() {  # name max_seconds dir gdn-verify args...: every pending shard of dir, P at a time
  local name=$1 t; t=$(limit "$2"); local dir=$3; shift 3
  echo "== $name: $(pending "$dir" | wc -l) of $(ls "$dir"/s??? | wc -l) shards, $P at a time (limit ${t}s)"
  local s=$SECONDS
  pending "$dir" | timeout -k 10 "$t" xargs -P "$P" -I{} bash -c 'run_one "$@"' _ {} "$@"
  # A shard the limit stopped still writes the goldens of the cases it passed: let it finish
  # before anything reads the store (or the next call's copy of the tree replaces it).
  for _ in $(seq 30); do pgrep -f "python3 -m gdn_verify" > /dev/null || break; sleep 1; done
  echo "   done after $((SECONDS - s))s; exit codes: $(cut -d' ' -f1 "$dir/exit_codes" 2>/dev/null | sort | uniq -c | tr '\n' ' ')"
  cat "$dir"/s???.log > "$LOGS/$name.log" 2>/dev/null; }
