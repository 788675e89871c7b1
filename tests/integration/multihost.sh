#!/usr/bin/env bash
# Separate hosts, for real: a coordinator host and three institution hosts,
# each a Linux network namespace with its own address, joined by veth pairs
# to a bridge (a "switch" namespace). Real `chorus` processes run in them.
#
#   multihost.sh CHORUS WORKDIR
#
# 1. Nodes dial out and listen on nothing (`ss -ltn` in each institution's
#    namespace); the coordinator listens on its address only.
# 2. Institution c sits behind a slow link (tbf, 2 Mbit/s toward it): the
#    round completes with it, and metrics.jsonl shows its slower answers.
# 3. Institution b's link is cut in the middle of round 1: b is left out,
#    named in the progress line.
# 4. The coordinator host is killed after round 1 and restarted with
#    --resume on another address of the subnet; the nodes know it by a host
#    name that now resolves there. b's link is back: b rejoins in round 2,
#    and no node is asked an answered query again (audit logs).
#
# Needs root and `ip netns`; skips (status 77) with a message otherwise.
set -euo pipefail

chorus=$(realpath "$1")
work=$2
here=$(cd "$(dirname "$0")" && pwd)

if [ "$(id -u)" -ne 0 ]; then
  echo "SKIP: needs root to make network namespaces (run the tests as root)"
  exit 77
fi
for tool in ip ss tc; do
  command -v "$tool" >/dev/null || { echo "SKIP: '$tool' (iproute2) is not installed"; exit 77; }
done
probe="chorus-probe-$$"
if ! ip netns add "$probe" 2>/dev/null; then
  echo "SKIP: 'ip netns add' does not work here (no network namespaces)"
  exit 77
fi
ip netns del "$probe"

rm -rf "$work"
mkdir -p "$work"
cd "$work"
# shellcheck source=lib.sh
source "$here/lib.sh"
logs=("coordinator*.err" "*.log")

tag="ch$$"      # short: interface names have at most 15 characters
sw="${tag}sw"
declare -A ns=([co]="${tag}co" [a]="${tag}a" [b]="${tag}b" [c]="${tag}c")
declare -A addr=([co]=10.77.0.1 [a]=10.77.0.11 [b]=10.77.0.12 [c]=10.77.0.13)
moved=10.77.0.2  # the coordinator's address after its restart
name=coordinator.chorus.test

teardown() {
  cleanup
  for h in "${!ns[@]}"; do
    ip netns del "${ns[$h]}" 2>/dev/null || true
    rm -rf "/etc/netns/${ns[$h]}"
  done
  ip netns del "$sw" 2>/dev/null || true
}
trap teardown EXIT

# --- the network -------------------------------------------------------------
ip netns add "$sw"
ip -n "$sw" link add br0 type bridge
ip -n "$sw" link set br0 up
for h in co a b c; do
  n=${ns[$h]}
  ip netns add "$n"
  ip link add "${tag}h$h" type veth peer name "${tag}s$h"
  ip link set "${tag}h$h" netns "$n"
  ip link set "${tag}s$h" netns "$sw"
  ip -n "$n" link set "${tag}h$h" name eth0
  ip -n "$n" addr add "${addr[$h]}/24" dev eth0
  ip -n "$n" link set eth0 up
  ip -n "$n" link set lo up
  ip -n "$sw" link set "${tag}s$h" master br0
  ip -n "$sw" link set "${tag}s$h" up
  if [ "$h" != co ]; then
    # `ip netns exec` shows this file as the namespace's /etc/hosts; it is
    # rewritten in place below, and glibc reads it at every lookup.
    mkdir -p "/etc/netns/$n"
    echo "${addr[co]} $name" > "/etc/netns/$n/hosts"
  fi
done
ip netns exec "${ns[a]}" ping -c 1 -W 2 "${addr[co]}" >/dev/null \
  || fail "institution a cannot reach the coordinator host over the bridge"
echo "ok: four hosts on one subnet (${addr[co]}, ${addr[a]}, ${addr[b]}, ${addr[c]})"

# --- parties -------------------------------------------------------------------
"$chorus" certs init --out pki --coordinator "$name" --nodes a,b,c >/dev/null
declare -A labels=(
  [a]='["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]'
  [b]='["Coat", "Sandal", "Shirt", "Sneaker", "Bag"]'
  [c]='["Bag", "Ankle boot", "Trouser", "Sandal", "T-shirt/top"]'
)
shard=0
for h in a b c; do
  cat > "$h.toml" <<EOF
[node]
name = "$h"
state_dir = "state/$h"
[coordinator]
host = "$name"
port = 7700
retry_max_s = 1
[tls]
ca = "pki/ca.crt"
cert = "pki/$h.crt"
key = "pki/$h.key"
[expert]
path = "state/$h/expert.pt"
labels = ${labels[$h]}
[policy]
max_batch = 100
[train]
epochs = 1
shard = $shard
shards = 30
EOF
  shard=$((shard + 1))
  "$chorus" node train --config "$h.toml" >/dev/null 2>&1 || fail "node train $h"
done
transfer=1200
rounds=2
cat > coordinator.toml <<EOF
[coordinator]
listen = "${addr[co]}"
port = 7700
roster = ["a", "b", "c"]
min_nodes = 2
quorum_timeout_s = 60
settle_s = 30
request_deadline_s = 6
query_batch = 100
rounds = $rounds
run_dir = "run"
[tls]
ca = "pki/ca.crt"
cert = "pki/coordinator.crt"
key = "pki/coordinator.key"
[fusion]
algorithm = "foe"
[data]
transfer_size = $transfer
fusion_labels = 100
EOF

start_coordinator() {  # start_coordinator LOG ARGS...
  local log=$1
  shift
  ip netns exec "${ns[co]}" "$chorus" coordinator --config coordinator.toml "$@" \
    > "$log.out" 2> "$log.err" &
  pids+=($!)
  coordinator_pid=$!
  wait_for 30 "the coordinator to listen" grep -q "listening on" "$log.err"
}
start_node() {  # start_node NAME [ARGS...]
  local h=$1
  shift
  ip netns exec "${ns[$h]}" "$chorus" node --config "$h.toml" "$@" 2>> "$h.log" &
  pids+=($!)
}

# c's link is slow toward it: the inputs it is sent cross 2 Mbit/s.
ip netns exec "$sw" tc qdisc add dev "${tag}sc" root tbf rate 2mbit burst 16kb latency 2s
start_coordinator coordinator1
start_node a
start_node b --set policy.rate_limit=150   # 600 inputs: 4 s, to cut it mid-round
start_node c

# --- 1. nobody at an institution listens ---------------------------------------
all_joined() { [ "$(grep -c "event=joined" coordinator1.err)" -ge 3 ]; }
wait_for 30 "a, b and c to join" all_joined
for h in a b c; do
  listening=$(ip netns exec "${ns[$h]}" ss -Hltn | wc -l)
  check "institution $h listens on nothing ($listening sockets)" test "$listening" -eq 0
done
check "the coordinator host listens on ${addr[co]}:7700 only" \
  test "$(ip netns exec "${ns[co]}" ss -Hltn | awk '{print $4}')" = "${addr[co]}:7700"

# --- 3. b's link cut in the middle of round 1 -----------------------------------
b_mid_round() { [ -f state/b/audit.jsonl ] && [ "$(ok_inputs b 1 1)" -ge 100 ]; }
wait_for 60 "b to answer its first requests" b_mid_round
ip -n "${ns[b]}" link set eth0 down
wait_for 60 "round 1 to be checkpointed" test -f run/checkpoints/round-1.json
round1_reported() { grep -q "round 1/$rounds:" coordinator1.err; }
wait_for 30 "round 1 to be reported" round1_reported
check "round 1 left b out, naming it" \
  grep -Eq "round 1/$rounds: 2 nodes answered, 1 left out \(b: " coordinator1.err

# --- 2. the slow link ------------------------------------------------------------
node_seconds() {  # node_seconds ROUND NODE: its answering time in metrics.jsonl
  /usr/bin/python3 -c '
import json, sys
for line in open("run/metrics.jsonl"):
    m = json.loads(line)
    if m["round"] == int(sys.argv[1]):
        print(m["per_node"][sys.argv[2]]["seconds"])' "$1" "$2"
}
sa=$(node_seconds 1 a)
sc=$(node_seconds 1 c)
check "c behind 2 Mbit/s answered its slice, slower than a (${sc} s vs ${sa} s)" \
  /usr/bin/python3 -c "import sys; sys.exit(0 if $sc > 2 * $sa and $sc > 1.5 else 1)"

# --- 4. the coordinator moves ----------------------------------------------------
declare -A log_lines
for h in a c; do log_lines[$h]=$(wc -l < "$h.log"); done
kill -9 "$coordinator_pid"
wait "$coordinator_pid" 2>/dev/null || true
# The requests the dead coordinator sent still trickle through c's slow
# link until the queue is gone; a and c notice the end of their connection
# and finish what they were answering before the restart is looked at.
ip netns exec "$sw" tc qdisc del dev "${tag}sc" root
for h in a c; do
  wait_for 20 "$h to see its connection end" \
    bash -c "tail -n +$((log_lines[$h] + 1)) $h.log | grep -q 'event=closed'"
done
sleep 1
ip -n "${ns[co]}" addr add "$moved/24" dev eth0
for h in a b c; do
  # In place (same file): the running nodes' namespaces see it.
  echo "$moved $name" > "/etc/netns/${ns[$h]}/hosts"
done
ip -n "${ns[b]}" link set eth0 up
# What the coordinator had when it died: the slices each node completed, and
# where each node's audit log stood (what it answers from here on is what
# the restarted coordinator asked of it).
complete=$(cd run/checkpoints/answers && ls ./*.slice?.pt 2>/dev/null | tr '\n' ' ')
declare -A audit_lines
for h in a b c; do audit_lines[$h]=$(wc -l < "state/$h/audit.jsonl"); done
start_coordinator coordinator2 --resume --set coordinator.listen="$moved"
wait "$coordinator_pid" || fail "the resumed coordinator failed: $(tail -n 3 coordinator2.err)"
check "the restarted coordinator listened on its new address" \
  grep -q "listening on $moved:7700" coordinator2.err
check "round 1 came from its checkpoint" \
  grep -q "round 1/$rounds: complete in a checkpoint, not repeated" coordinator2.err
check "b rejoined: round 2 ran with all three nodes" \
  grep -Eq "round $rounds/$rounds: 3 nodes answered, 0 left out" coordinator2.err
# Round 1 was asked once: a and c answered its slice once each.
for h in a c; do
  answered=$(ok_inputs "$h" 1 1)
  check "$h answered round 1's $((transfer / rounds)) inputs once ($answered)" \
    test "$answered" -eq $((transfer / rounds))
done
# The restarted coordinator asked each node for exactly what it had not
# received: the slices the node had not completed, less the answers
# checkpointed for them ("resumed_slice ... answered=K"). Answers a node sent
# while the coordinator died, which it never received, are asked again.
for h in a b c; do
  after=$(tail -n +$((audit_lines[$h] + 1)) "state/$h/audit.jsonl" \
    | awk '/"kind":"predict"/ && /"outcome":"OK"/ {
        match($0, /"inputs":[0-9]+/); s += substr($0, RSTART + 9, RLENGTH - 9)
      } END { print s + 0 }')
  expected=0
  for slice in 0 1; do
    case " $complete " in *"./$h.slice$slice.pt "*) continue ;; esac
    k=$(sed -n "s/.*node=$h slice=$slice event=resumed_slice answered=\([0-9]*\).*/\1/p" coordinator2.err)
    expected=$((expected + transfer / rounds - ${k:-0}))
  done
  check "the restarted coordinator asked $h only what it had not received ($after of $expected)" \
    test "$after" -eq "$expected"
done
echo "all checks passed"
