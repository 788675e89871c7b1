#!/usr/bin/env bash
# What an operator and a node's owner see of a federation while it runs,
# every party its own OS process over mutual TLS on loopback: a coordinator
# and two nodes, each serving Prometheus metrics on an HTTP port of its own.
#
#   observability.sh CHORUS WORKDIR
#
# 1. In the middle of round 1 (node b answers slowly) both endpoints are
#    scraped over HTTP: the nodes are counted connected, the round started,
#    and what the coordinator counts it received from a node is no more than
#    that node counts it answered.
#    `chorus status` (an operator) at the same time: round 1 of 2 in its
#    query phase, b answering with part of its inputs, both heard from
#    within seconds; a node's certificate asking is refused.
# 2. After the rounds, the counters agree with the nodes' audit logs line
#    for line: inputs answered, OK predict requests, model pushes; the
#    coordinator's per-node inputs, requests and latency observations match
#    the nodes'; the budget gauges add up to the node's total budget; and
#    `chorus status` says the rounds are done and serving, with the same
#    inputs per node.
set -euo pipefail

chorus=$(realpath "$1")
work=$2
here=$(cd "$(dirname "$0")" && pwd)
rounds=2
transfer=1200
total_budget=100000

rm -rf "$work"
mkdir -p "$work"
cd "$work"

# shellcheck source=lib.sh
source "$here/lib.sh"
logs=("coordinator.err" "state/*.log")

"$chorus" certs init --out pki --coordinator localhost,127.0.0.1 --nodes a,b >/dev/null
"$chorus" certs add-node ops --ca pki >/dev/null

declare -A labels=(
  [a]='["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]'
  [b]='["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]'
)
shard=0
for n in a b; do
  mkdir -p "state/$n"
  cat > "$n.toml" <<EOT
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
total_budget = $total_budget
[metrics]
listen = "127.0.0.1:0"
[train]
epochs = 1
shard = $shard
shards = 20
EOT
  shard=$((shard + 1))
  "$chorus" node train --config "$n.toml" >/dev/null 2>&1 || fail "node train $n"
done

cat > coordinator.toml <<EOT
[coordinator]
listen = "127.0.0.1"
port = 0
roster = ["a", "b"]
quorum_timeout_s = 60
settle_s = 1
query_batch = 100
rounds = $rounds
run_dir = "run"
serve = true
operators = ["ops"]
[metrics]
listen = "127.0.0.1:0"
[fusion]
algorithm = "foe"
[data]
transfer_size = $transfer
fusion_labels = 100
EOT

"$chorus" coordinator --config coordinator.toml > coordinator.out 2> coordinator.err &
pids+=($!)
coordinator_pid=$!
wait_for 30 "the coordinator to listen" grep -q "listening on" coordinator.err
port=$(sed -n 's/.* listening on 127\.0\.0\.1:\([0-9]*\);.*/\1/p' coordinator.err)
wait_for 10 "the coordinator's metrics port" grep -q "event=metrics_serving" coordinator.err
metrics_port() { sed -n 's/.*event=metrics_serving .* port=\([0-9]*\).*/\1/p' "$1" | tail -1; }
cport=$(metrics_port coordinator.err)

# b answers 100 inputs a second: round 1 takes it about 6 s, long enough
# for the mid-round checks below under sanitizers on a busy machine.
"$chorus" node --config a.toml --set coordinator.port="$port" 2>> state/a.log &
pids+=($!)
"$chorus" node --config b.toml --set coordinator.port="$port" \
  --set policy.rate_limit=100 2>> state/b.log &
pids+=($!)
for n in a b; do
  wait_for 30 "node $n's metrics port" grep -q "event=metrics_serving" "state/$n.log"
done
aport=$(metrics_port state/a.log)
bport=$(metrics_port state/b.log)

scrape() {  # scrape PORT: the text the endpoint serves
  /usr/bin/python3 -c 'import sys, urllib.request
r = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5)
assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain"), r.headers
sys.stdout.write(r.read().decode())' "$1"
}
metric() {  # metric FILE 'name{labels}': its value, 0 when absent
  awk -v key="$2" '$1 == key { v = $2 } END { printf "%d\n", v + 0 }' "$1"
}

# --- 1. in the middle of round 1 ---------------------------------------------
b_answering() { [ -f state/b/audit.jsonl ] && [ "$(ok_inputs b 1 1)" -ge 150 ]; }
wait_for 60 "b to answer its first requests" b_answering
scrape "$cport" > mid-coordinator.txt
scrape "$bport" > mid-b.txt
check "mid-round: the coordinator counts 2 nodes connected" \
  test "$(metric mid-coordinator.txt chorus_coordinator_nodes_connected)" -eq 2
check "mid-round: round 1 has started and none has completed" \
  test "$(metric mid-coordinator.txt chorus_coordinator_rounds_started_total)" -eq 1 \
    -a "$(metric mid-coordinator.txt chorus_coordinator_rounds_completed_total)" -eq 0
mid_b=$(metric mid-b.txt chorus_node_inputs_answered_total)
mid_cb=$(metric mid-coordinator.txt 'chorus_coordinator_inputs_queried_total{node="b"}')
check "mid-round: b has answered part of its slice ($mid_b of $((transfer / rounds)))" \
  test "$mid_b" -gt 0 -a "$mid_b" -lt $((transfer / rounds))
check "mid-round: the coordinator has received no more from b than b answered ($mid_cb <= $mid_b)" \
  test "$mid_cb" -le "$mid_b"

status_field() {  # status_field FILE EXPRESSION: a field of the JSON status
  /usr/bin/python3 -c 'import json, sys
s = json.load(open(sys.argv[1]))
nodes = {n["name"]: n for n in s["nodes"]}
print(eval(sys.argv[2]))' "$1" "$2"
}
"$chorus" status --coordinator "localhost:$port" --pki pki --identity ops --json \
  > mid-status.json 2> mid-status.err || fail "chorus status: $(cat mid-status.err)"
# The table at once, before the checks below take their seconds: b answers
# its 600 inputs in 6 s and may finish its slice in the meantime (it did in
# a loaded CI run), so its row may say connected.
"$chorus" status --coordinator "localhost:$port" > mid-status.txt 2>&1 --pki pki --identity ops ||
  fail "chorus status (table): $(cat mid-status.txt)"
check "status mid-round: round 1 of $rounds, querying" \
  test "$(status_field mid-status.json 's["round"], s["rounds"], s["phase"]')" = "(1, $rounds, 'query')"
check "status mid-round: b is answering, part of its slice done" \
  test "$(status_field mid-status.json 'nodes["b"]["state"] == "answering" and 0 < nodes["b"]["round_answered"] < nodes["b"]["round_asked"]')" = True
check "status mid-round: both nodes heard from within 10 s" \
  test "$(status_field mid-status.json 'all(0 <= n["last_heard_ms"] < 10000 for n in s["nodes"])')" = True
check "status prints a table with a row per node" \
  grep -Eq "^b +(answering|connected) +[0-9]+/[0-9]+ \([0-9]+%\)" mid-status.txt
check "... a's row too" \
  grep -Eq "^a +(answering|connected) +[0-9]+/[0-9]+ \([0-9]+%\)" mid-status.txt
status=0
"$chorus" status --coordinator "localhost:$port" --pki pki --identity a > node-status.out 2>&1 || status=$?
check "a node's certificate asking for the status is refused (exit $status)" \
  grep -q "PERMISSION_DENIED: .*'a' is not an operator" node-status.out

# --- 2. after the rounds -----------------------------------------------------
wait_for 240 "the rounds to finish" grep -q "serving fused predictions" coordinator.err
scrape "$cport" > coordinator.txt
for n in a b; do
  p=${n}port
  scrape "${!p}" > "$n.txt"
  audit=state/$n/audit.jsonl
  answered=$(ok_inputs "$n" 1 "$rounds")
  check "$n: chorus_node_inputs_answered_total is its audit log's sum ($answered)" \
    test "$(metric "$n.txt" chorus_node_inputs_answered_total)" -eq "$answered"
  ok_lines=$(grep '"kind":"predict"' "$audit" | grep -c '"outcome":"OK"')
  check "$n: OK predict requests counted as the audit log has them ($ok_lines)" \
    test "$(metric "$n.txt" 'chorus_node_requests_total{code="OK",kind="predict"}')" -eq "$ok_lines"
  check "$n: the latency histogram observed every request the log has" \
    test "$(metric "$n.txt" 'chorus_node_request_duration_seconds_count{kind="predict"}')" -eq "$ok_lines"
  pushes=$(grep -c '"kind":"model_push"' "$audit" || true)
  stored=$(metric "$n.txt" 'chorus_node_model_pushes_total{outcome="stored"}')
  check "$n: a model stored per round ($stored), from $pushes push request(s) in its log" \
    test "$stored" -eq "$rounds" -a "$pushes" -ge "$rounds"
  check "$n: the coordinator counts the inputs $n answered ($answered)" \
    test "$(metric coordinator.txt "chorus_coordinator_inputs_queried_total{node=\"$n\"}")" -eq "$answered"
  check "$n: ... and its requests, each observed in the latency histogram" \
    test "$(metric coordinator.txt "chorus_coordinator_requests_total{node=\"$n\"}")" -eq "$ok_lines" \
      -a "$(metric coordinator.txt "chorus_coordinator_request_duration_seconds_count{node=\"$n\"}")" -eq "$ok_lines"
  spent=$(metric "$n.txt" chorus_node_budget_spent_inputs)
  left=$(metric "$n.txt" 'chorus_node_budget_remaining_inputs{scope="total"}')
  check "$n: budget spent + remaining = total_budget ($spent + $left)" \
    test $((spent + left)) -eq "$total_budget" -a "$spent" -eq "$answered"
  check "$n: the coordinator pushed it a model each round" \
    test "$(metric coordinator.txt "chorus_coordinator_model_pushes_total{node=\"$n\"}")" -eq "$rounds"
done
check "the coordinator completed $rounds rounds" \
  test "$(metric coordinator.txt chorus_coordinator_rounds_completed_total)" -eq "$rounds"
check "no request failed" bash -c '! grep -q chorus_coordinator_requests_failed_total coordinator.txt'
check "the metrics are in Prometheus's text format, with HELP and TYPE" \
  grep -q "^# TYPE chorus_coordinator_request_duration_seconds histogram" coordinator.txt

"$chorus" status --coordinator "localhost:$port" --pki pki --identity ops --json \
  > status.json 2> status.err || fail "chorus status: $(cat status.err)"
check "status after the rounds: $rounds of $rounds done, serving" \
  test "$(status_field status.json 's["rounds_done"], s["phase"]')" = "($rounds, 'serving')"
for n in a b; do
  answered=$(ok_inputs "$n" 1 "$rounds")
  check "status after the rounds: $n connected, $answered inputs answered" \
    test "$(status_field status.json "nodes['$n']['state'], nodes['$n']['inputs']")" = "('connected', $answered)"
done

kill -INT "$coordinator_pid"
wait "$coordinator_pid" || fail "the coordinator did not stop cleanly on SIGINT"
echo "all checks passed"
