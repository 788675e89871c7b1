# Helpers the integration scripts source: cleanup of the processes they
# start, checks that print "ok: ..." or fail showing the logs' tails, and
# the sum of a node's answered inputs in its audit log.
#   pids+=($!)             a process to kill on exit
#   logs=(a.err b.log)     what `fail` shows (globs allowed)

pids=()
logs=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

fail() {
  echo "FAILED: $*" >&2
  for pattern in "${logs[@]}"; do
    for f in $pattern; do
      [ -f "$f" ] && { echo "--- $f" >&2; tail -n 30 "$f" >&2; }
    done
  done
  exit 1
}
check() {  # check DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@"; then echo "ok: $what"; else fail "$what"; fi
}
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq $((seconds * 10))); do
    if "$@" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  fail "timed out after ${seconds}s waiting for: $what"
}

ok_inputs() {  # OK predict inputs in a node's audit log, rounds FROM..TO
  awk -v from="$2" -v to="$3" '
    /"kind":"predict"/ && /"outcome":"OK"/ {
      match($0, /"round":[0-9]+/); r = substr($0, RSTART + 8, RLENGTH - 8) + 0
      match($0, /"inputs":[0-9]+/); n = substr($0, RSTART + 9, RLENGTH - 9) + 0
      if (r >= from && r <= to) sum += n
    }
    END { print sum + 0 }' "state/$1/audit.jsonl"
}
