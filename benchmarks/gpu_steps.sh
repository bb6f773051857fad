# Steps with time limits inside one overall deadline, for the one-call GPU scripts
# (run_h200.sh, fla_gpu.sh, shards_gpu.sh): source it after setting DEADLINE (in $SECONDS) and
# LOGS, or call `workspace` first.

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
