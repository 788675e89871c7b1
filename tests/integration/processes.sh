#!/usr/bin/env bash
# Fusion rounds with every party its own OS process, over mutual TLS on
# loopback: three `chorus node` processes, a `chorus coordinator`, and an
# operator's `chorus predict`.
#
#   processes.sh CHORUS WORKDIR
#
# 1. A node is killed (SIGKILL) in the middle of round 1: the round completes
#    with the two others and the progress line names the missing node.
# 2. The coordinator is killed (SIGKILL) once round 1 is checkpointed, the
#    node comes back, and `chorus coordinator --resume` finishes rounds 2
#    and 3 with all three nodes.
# 3. The resumed coordinator serves fused predictions; `chorus predict`
#    asks it for 200 test images.
# 4. The nodes' audit logs: every input of the transfer pool was answered by
#    every node exactly once (nothing answered before either crash was asked
#    again), and the operator's 200 images once more by each node.
# 5. Ctrl-C in the middle of a round: the coordinator cancels the round and
#    exits within its grace period (3 s) with status 130, having said why;
#    the answers it received stay checkpointed, and `--resume` asks none of
#    them again.
set -euo pipefail

chorus=$(realpath "$1")
work=$2
here=$(cd "$(dirname "$0")" && pwd)
fmnist=${CHORUS_DATA_DIR:-/usr/share/datasets/fashion-mnist}
transfer=1500
rounds=3

rm -rf "$work"
mkdir -p "$work"
cd "$work"

# shellcheck source=lib.sh
source "$here/lib.sh"
logs=("coordinator*.err" "state/*.log")

"$chorus" certs init --out pki --coordinator localhost,127.0.0.1 --nodes a,b,c >/dev/null
"$chorus" certs add-node ops --ca pki >/dev/null

declare -A labels=(
  [a]='["T-shirt/top", "Trouser", "Pullover", "Dress"]'
  [b]='["Coat", "Sandal", "Shirt", "Sneaker"]'
  [c]='["Bag", "Ankle boot", "Trouser", "Sandal"]'
)
shard=0
for n in a b c; do
  cat > "$n.toml" <<EOF
[node]
name = "$n"
state_dir = "state/$n"
[coordinator]
host = "localhost"
port = 1  # Set when the coordinator has chosen its port.
[tls]
ca = "pki/ca.crt"
cert = "pki/$n.crt"
key = "pki/$n.key"
[expert]
path = "state/$n/expert.pt"
labels = ${labels[$n]}
[policy]
max_batch = 100
[train]
epochs = 1
shard = $shard
shards = 20
EOF
  shard=$((shard + 1))
  "$chorus" node train --config "$n.toml" >/dev/null 2>&1 || fail "node train $n"
done

cat > coordinator.toml <<EOF
[coordinator]
listen = "127.0.0.1"
port = 0
roster = ["a", "b", "c"]
operators = ["ops"]
min_nodes = 2
quorum_timeout_s = 60
settle_s = 3
request_deadline_s = 30
query_batch = 100
rounds = $rounds
run_dir = "run"
[fusion]
algorithm = "foe"
[fusion.frugal]
costs = { "b" = 2 }   # what each served answer costs (b: 2, the others 1)
[data]
transfer_size = $transfer
fusion_labels = 100
EOF

port=0  # The first coordinator chooses; a restarted one listens there again.
start_coordinator() {  # start_coordinator LOG ARGS...
  local log=$1
  shift
  "$chorus" coordinator --config coordinator.toml --set coordinator.port="$port" "$@" \
    > "$log.out" 2> "$log.err" &
  pids+=($!)
  coordinator_pid=$!
  wait_for 30 "the coordinator to listen" grep -q "listening on" "$log.err"
  port=$(sed -n 's/.* listening on 127\.0\.0\.1:\([0-9]*\);.*/\1/p' "$log.err")
}
start_node() {  # start_node NAME [ARGS...]
  local n=$1
  shift
  "$chorus" node --config "$n.toml" --set coordinator.port="$port" \
    --set audit.seal_every=5 "$@" 2>> "state/$n.log" &
  pids+=($!)
  eval "node_$n=$!"
}

# --- 1. a node killed mid-round ----------------------------------------------
start_coordinator coordinator1
start_node a
start_node b
# c answers at 200 inputs/s: round 1 takes it 2.5 s, long enough to kill it
# in the middle.
start_node c --set policy.rate_limit=200
c_answered_some() { [ -f state/c/audit.jsonl ] && [ "$(ok_inputs c 1 1)" -ge 200 ]; }
wait_for 60 "c to answer its first requests" c_answered_some
kill -9 "$node_c"
wait_for 120 "round 1 to be checkpointed" test -f run/checkpoints/round-1.json
# The checkpoint is written before the progress line is printed: wait for
# both, or the kill below can fall between them.
round1_reported() { grep -q "round 1/$rounds:" coordinator1.err; }
wait_for 60 "round 1 to be reported" round1_reported
# --- 2. the coordinator killed after round 1 ---------------------------------
kill -9 "$coordinator_pid"
wait "$coordinator_pid" 2>/dev/null || true
check "round 1 completed with a and b, and named c as left out" \
  grep -Eq "round 1/$rounds: 2 nodes answered, 1 left out \(c: UNAVAILABLE" coordinator1.err
c_round1=$(ok_inputs c 1 1)
check "c answered part of its first slice before it was killed ($c_round1 inputs)" \
  test "$c_round1" -gt 0 -a "$c_round1" -lt $((transfer / rounds))

start_coordinator coordinator2 --resume --serve
start_node c
serving() {
  kill -0 "$coordinator_pid" || fail "the resumed coordinator exited: $(tail -n 3 coordinator2.err)"
  grep -q "serving fused predictions" coordinator2.err
}
wait_for 240 "the resumed rounds to finish" serving
check "the resumed coordinator took round 1 from its checkpoint" \
  grep -q "round 1/$rounds: complete in a checkpoint, not repeated" coordinator2.err
check "round $rounds ran with all three nodes" \
  grep -Eq "round $rounds/$rounds: 3 nodes answered, 0 left out" coordinator2.err
check "the run directory holds the resolved config" \
  grep -q "^operators = \[\"ops\"\]" run/config.toml
check "report.json lists the rounds, round 1 from the checkpoint" \
  grep -Eq "\"resumed\": true" run/report.json

# --- 3. an operator asks for fused predictions -------------------------------
"$chorus" predict --coordinator "localhost:$port" --pki pki --identity ops \
  --input "$fmnist/t10k-images-idx3-ubyte.gz" --labels "$fmnist/t10k-labels-idx1-ubyte.gz" \
  --limit 200 > predict.out 2> predict.err || fail "chorus predict: $(cat predict.err)"
check "the operator got foe's fused answer from all three experts" \
  grep -Eq "expert queries +600 \(3\.00 per image\)" predict.out
check "and what those answers cost, b's at 2 each" \
  grep -Eq "their cost +800\.00 \(4\.00 per image\)" predict.out
check "the fused answer is accurate" \
  grep -Eq "accuracy +0\.([6-9])" predict.out

kill -INT "$coordinator_pid"
wait "$coordinator_pid" || fail "the coordinator did not stop cleanly on SIGINT"
echo "ok: the coordinator stopped cleanly on SIGINT"

# --- 4. the audit logs -------------------------------------------------------
for n in a b c; do
  answered=$(ok_inputs "$n" 1 "$rounds")
  check "$n answered each of the $transfer pool inputs once ($answered)" \
    test "$answered" -eq "$transfer"
  served=$(ok_inputs "$n" $((rounds + 1)) $((rounds + 1)))
  check "$n answered the operator's 200 images once ($served)" test "$served" -eq 200
  # Its log's hash chain holds across the SIGKILL and restart (c), sealed
  # with its key.
  check "$n's audit log verifies: chain unbroken, seals by $n" \
    bash -c "'$chorus' node audit --verify --log state/$n/audit.jsonl --cert pki/$n.crt | grep -q \"^intact .* seal(s) by '$n'\""
done

# --- 5. Ctrl-C in the middle of a round --------------------------------------
for n in a b c; do eval "kill \$node_$n"; done
wait "$node_a" "$node_b" "$node_c" 2>/dev/null || true
int_run=(--set coordinator.run_dir=run-int --set coordinator.rounds=1
         --set coordinator.min_nodes=3)
c_before=$(ok_inputs c 1 1)
start_coordinator coordinator3 "${int_run[@]}"
start_node a
start_node b
start_node c --set policy.rate_limit=300  # 1,500 inputs: 5 s.
c_mid_round() { ls run-int/checkpoints/answers/c.slice0.part*.pt >/dev/null 2>&1; }
wait_for 60 "c's first answers to be checkpointed" c_mid_round
sleep 0.5
interrupted_at=$(date +%s%N)
kill -INT "$coordinator_pid"
status=0
wait "$coordinator_pid" || status=$?
elapsed_ms=$((($(date +%s%N) - interrupted_at) / 1000000))
check "Ctrl-C mid-round: the coordinator exited with status 130 ($status)" \
  test "$status" -eq 130
check "... within the 3 s grace period (${elapsed_ms} ms)" test "$elapsed_ms" -lt 3000
check "... by cancelling the round, not by force" \
  grep -q "chorus coordinator: interrupted (round 1 interrupted" coordinator3.err
check "... with no forced shutdown" \
  bash -c '! grep -q shutdown_forced coordinator3.err'
c_parts=$(ls run-int/checkpoints/answers/c.slice0.part*.pt | wc -l)
check "c's answers received before Ctrl-C are checkpointed ($c_parts requests)" \
  test "$c_parts" -ge 1
start_coordinator coordinator4 "${int_run[@]}" --resume
wait "$coordinator_pid" || fail "the resumed coordinator failed: $(tail -n 3 coordinator4.err)"
check "the resumed run finished the round with all three nodes" \
  grep -Eq "round 1/1: 3 nodes answered, 0 left out" coordinator4.err
c_delta=$(($(ok_inputs c 1 1) - c_before))
check "c answered each input of the interrupted round once ($c_delta)" \
  test "$c_delta" -eq "$transfer"
echo "all checks passed"
