# Helpers the integration scripts source: cleanup of the processes they
# start, and checks that print "ok: ..." or fail showing the logs' tails.
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
