#!/usr/bin/env bash
# Three institutions with tabular patient records and a fusion operator on
# one machine, each its own process, talking mutual TLS over loopback. Run
# from anywhere:
#   ./run.sh [path/to/chorus]
set -euo pipefail
# The binary first: a relative path is the caller's, not this directory's.
chorus=$(realpath -m "${1:-$(dirname "$0")/../../build/apps/chorus/chorus}")
[ -x "$chorus" ] || { echo "run.sh: no chorus binary at $chorus (build it with make, or pass its path)" >&2; exit 1; }
cd "$(dirname "$0")"
nodes=(hospital-a hospital-b clinic-c)

[ -f data/task.toml ] || /usr/bin/python3 prepare.py
[ -f pki/ca.crt ] || "$chorus" certs init --out pki --coordinator localhost,127.0.0.1 \
  --nodes "$(IFS=,; echo "${nodes[*]}")"
for n in hospital-a hospital-b; do
  [ -f "state/$n/expert.pt" ] || "$chorus" node train --config "$n.toml"
done
mkdir -p state
pids=()
for n in "${nodes[@]}"; do
  "$chorus" node --config "$n.toml" 2> "state/$n.log" & pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
"$chorus" coordinator --config coordinator.toml
# The rounds are done: stop the nodes and let them seal their audit logs.
kill "${pids[@]}" 2>/dev/null || true
wait "${pids[@]}" 2>/dev/null || true
for n in "${nodes[@]}"; do "$chorus" node audit --log "state/$n/audit.jsonl"; done
