#!/usr/bin/env bash
# A certificate lifecycle where private keys never leave their owner, and a
# federation whose membership changes without restarts — real `chorus`
# processes over mutual TLS on loopback.
#
#   certificates.sh CHORUS WORKDIR
#
# 1. Institution c makes its own key and a CSR (`certs request`); the CA
#    signs it (`certs sign`, 7 days) and refuses to sign the name twice
#    without --renew; a tampered CSR is refused.
# 2. c dials a coordinator whose roster lacks it: refused, said once, and
#    retried slowly. c is added to coordinator.toml, SIGHUP: c joins without
#    a restart and the round runs with a, b and c. c warns that its
#    certificate expires within 14 days.
# 3. `certs revoke a`, SIGHUP: the coordinator drops a's live connection,
#    refuses its reconnects at the TLS handshake, warns that a is still on
#    the roster, and agrees with `openssl verify -crl_check` on every
#    certificate.
# 4. b's certificate is renewed (new key at b, --renew at the CA), the old
#    one revoked by serial, SIGHUP: b is dropped and comes back with the
#    renewed certificate, without a restart.
# 5. A key SIGHUP does not reload (coordinator.max_inflight_mb) is named as
#    waiting for a restart; the roster is still applied.
# 6. A broken configuration on SIGHUP changes nothing and is said.
set -euo pipefail

chorus=$(realpath "$1")
work=$2
here=$(cd "$(dirname "$0")" && pwd)

rm -rf "$work"
mkdir -p "$work"
cd "$work"

# shellcheck source=lib.sh
source "$here/lib.sh"
logs=("coordinator.err" "state/*.log")

command -v openssl >/dev/null || { echo "SKIP: openssl (the command) is not installed"; exit 77; }

# --- 1. keys at home, certificates from the CA -------------------------------
"$chorus" certs init --out pki --coordinator localhost,127.0.0.1 --nodes a,b >/dev/null
"$chorus" certs request --name c --out inst-c >/dev/null
"$chorus" certs request --name ops --out inst-ops >/dev/null
check "c's private key was made at c with mode 0600" \
  test "$(stat -c %a inst-c/c.key)" = 600
check "the request holds no private key" bash -c '! grep -q "PRIVATE KEY" inst-c/c.csr'
"$chorus" certs sign --ca pki --days 7 inst-c/c.csr >/dev/null
"$chorus" certs sign --ca pki --operator inst-ops/ops.csr >/dev/null
check "the CA wrote c's certificate beside its request" test -s inst-c/c.crt
status=0
"$chorus" certs sign --ca pki inst-c/c.csr > /dev/null 2> sign-again.err || status=$?
check "the CA refuses to sign c a second time without --renew (status $status)" \
  test "$status" -eq 1
check "... naming the certificate c holds" grep -q "already holds a certificate" sign-again.err
sed 's/^MI/MA/' inst-c/c.csr > tampered.csr
status=0
"$chorus" certs sign --ca pki tampered.csr > /dev/null 2> tampered.err || status=$?
check "a tampered request is refused (status $status)" test "$status" -eq 1
"$chorus" certs list --ca pki > list.out
check "the CA's list shows c as a node and ops as an operator" \
  bash -c 'grep -Eq "^c +node +valid" list.out && grep -Eq "^ops +operator +valid" list.out'

declare -A labels=(
  [a]='["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]'
  [b]='["Coat", "Sandal", "Shirt", "Sneaker", "Bag"]'
  [c]='["Bag", "Ankle boot", "Trouser", "Sandal", "T-shirt/top"]'
)
for n in a b c; do
  if [ "$n" = c ]; then cert=inst-c/c.crt key=inst-c/c.key; else cert=pki/$n.crt key=pki/$n.key; fi
  cat > "$n.toml" <<EOF
[node]
name = "$n"
state_dir = "state/$n"
[coordinator]
host = "localhost"
port = 1
refused_retry_s = 1
retry_max_s = 1
[tls]
ca = "pki/ca.crt"
cert = "$cert"
key = "$key"
[expert]
path = "state/$n/expert.pt"
labels = ${labels[$n]}
[policy]
max_batch = 100
[train]
epochs = 1
shard = $([ $n = a ] && echo 0 || ([ $n = b ] && echo 1 || echo 2))
shards = 30
EOF
  "$chorus" node train --config "$n.toml" >/dev/null 2>&1 || fail "node train $n"
done

write_coordinator_toml() {  # write_coordinator_toml ROSTER [EXTRA]
  cat > coordinator.toml <<EOF
[coordinator]
listen = "127.0.0.1"
port = 0
roster = $1
operators = ["ops"]
min_nodes = 3
quorum_timeout_s = 120
settle_s = 0
rounds = 1
run_dir = "run"
${2:-}
[tls]
ca = "pki/ca.crt"
cert = "pki/coordinator.crt"
key = "pki/coordinator.key"
crl = "pki/crl.pem"
[fusion]
algorithm = "foe"
[data]
transfer_size = 600
fusion_labels = 100
EOF
}
write_coordinator_toml '["a", "b", "pending"]'

# --- 2. membership without restarts ------------------------------------------
"$chorus" coordinator --config coordinator.toml --serve > coordinator.out 2> coordinator.err &
pids+=($!)
coordinator_pid=$!
wait_for 30 "the coordinator to listen" grep -q "listening on" coordinator.err
port=$(sed -n 's/.* listening on 127\.0\.0\.1:\([0-9]*\);.*/\1/p' coordinator.err)
mkdir -p state
start_node() {
  "$chorus" node --config "$1.toml" --set coordinator.port="$port" 2>> "state/$1.log" &
  pids+=($!)
  eval "node_$1=$!"
}
start_node a
start_node b
start_node c
joined() { grep -q "node=$1 event=joined" coordinator.err; }
wait_for 30 "a and b to join" bash -c "grep -q 'node=a event=joined' coordinator.err && grep -q 'node=b event=joined' coordinator.err"
refused_c() { [ "$(grep -c "node 'c' is not on this coordinator's roster" coordinator.err)" -ge 3 ]; }
wait_for 30 "c to be refused three times" refused_c
check "c was told it is refused once, not at every retry" \
  test "$(grep -c 'event=refused_waiting' state/c.log)" -eq 1
check "c warned that its certificate expires within 14 days" \
  grep -Eq "event=certificate_expiring .*days_left=[0-9]" state/c.log

write_coordinator_toml '["a", "b", "c"]'
kill -HUP "$coordinator_pid"
wait_for 10 "the coordinator to reload" grep -q "reloaded (SIGHUP): roster a, b, c (added c, removed pending)" coordinator.err
wait_for 30 "c to join after the reload" joined c
wait_for 120 "the round to finish and serving to start" grep -q "serving fused predictions" coordinator.err
check "the round ran with a, b and c" grep -Eq "round 1/1: 3 nodes answered, 0 left out" coordinator.err
check "the coordinator is the same process (no restart)" kill -0 "$coordinator_pid"

# --- 3. revocation ------------------------------------------------------------
"$chorus" certs revoke a --ca pki > revoke-a.out
kill -HUP "$coordinator_pid"
wait_for 10 "a's connection to be dropped" grep -q "peer=a event=dropped reason=\"its certificate (serial [0-9A-F]*) is revoked\"" coordinator.err
wait_for 20 "a's reconnect to be refused at the handshake" \
  grep -q "event=tls_refused .*CN=a.*certificate revoked" coordinator.err
sleep 1
check "a stays out: no second join" test "$(grep -c 'node=a event=joined' coordinator.err)" -eq 1
check "the reload warns that a, still on the roster, holds a revoked certificate" \
  grep -q "warning: a (serial [0-9A-F]*) on the roster, certificate revoked: it rejoins only with a new certificate" coordinator.err
check "... in the log too" grep -q "event=roster_revoked nodes=\[a (serial [0-9A-F]*)\]" coordinator.err
cp pki/ca.crt inst-ops/ca.crt
"$chorus" status --coordinator "127.0.0.1:$port" --pki inst-ops --identity ops --json \
  > revoked-status.json 2> revoked-status.err || fail "chorus status: $(cat revoked-status.err)"
check "chorus status says a is refused, its certificate revoked" \
  /usr/bin/python3 -c 'import json, sys
n = {x["name"]: x for x in json.load(open(sys.argv[1]))["nodes"]}
sys.exit(not (n["a"]["state"] == "refused" and "is revoked" in n["a"]["reason"]
              and n["b"]["state"] == "connected"))' revoked-status.json
"$chorus" status --coordinator "127.0.0.1:$port" --pki inst-ops --identity ops \
  > revoked-status.txt 2>&1 || fail "chorus status (table): $(cat revoked-status.txt)"
check "... and its table gives the reason under a's row" \
  grep -Eq "^  refused: its certificate \(serial [0-9A-F]+\) is revoked" revoked-status.txt
check "a reload that changes only membership names no unapplied key" \
  bash -c "! grep -q 'not applied until the next start' coordinator.err"
for f in pki/a.crt pki/b.crt inst-c/c.crt; do
  if openssl verify -crl_check -CAfile pki/ca.crt -CRLfile pki/crl.pem "$f" >/dev/null 2>&1; then
    verdict=valid
  else
    verdict=revoked
  fi
  n=$(basename "$f" .crt)
  if [ "$n" = a ]; then expected=revoked; else expected=valid; fi
  check "openssl verify -crl_check says $n is $verdict, as the coordinator does" \
    test "$verdict" = "$expected"
done

# --- 4. a renewal picked up at the next reconnect ------------------------------
old_serial=$("$chorus" certs show pki/b.crt | awk '/^serial/ {print $2}')
"$chorus" certs request --name b --out inst-b >/dev/null
"$chorus" certs sign --ca pki --renew inst-b/b.csr >/dev/null
new_serial=$("$chorus" certs show inst-b/b.crt | awk '/^serial/ {print $2}')
# The node's files are replaced in place (each by a rename: never torn).
cp inst-b/b.key pki/b.key.new && mv pki/b.key.new pki/b.key
cp inst-b/b.crt pki/b.crt.new && mv pki/b.crt.new pki/b.crt
"$chorus" certs revoke b --serial "$old_serial" --ca pki > revoke-b.out
kill -HUP "$coordinator_pid"
wait_for 10 "b's old certificate to be dropped" grep -q "peer=b event=dropped reason=\"its certificate (serial $old_serial) is revoked\"" coordinator.err
wait_for 30 "b to join again" bash -c "grep -c 'node=b event=joined' coordinator.err | grep -q 2"
check "b read its renewed certificate without a restart" grep -q "event=tls_reloaded" state/b.log
check "this reload names a again (no longer connected) and b's old certificate" \
  grep -q "event=roster_revoked nodes=\[a (serial [0-9A-F]*), b (serial $old_serial)\]" coordinator.err
check "b is the same process" kill -0 "$node_b"
check "b's renewed certificate (serial $new_serial) is valid for openssl too" \
  openssl verify -crl_check -CAfile pki/ca.crt -CRLfile pki/crl.pem pki/b.crt

# --- 5. keys a reload cannot apply are named ----------------------------------
write_coordinator_toml '["a", "b", "c"]' 'max_inflight_mb = 32'
kill -HUP "$coordinator_pid"
wait_for 10 "the partial reload to be said" grep -q "reload (SIGHUP): not applied until the next start: coordinator.max_inflight_mb (only" coordinator.err
check "... in the log, the key named" grep -q "event=reload_partial keys=\[coordinator.max_inflight_mb\]" coordinator.err
check "the roster part of it was still applied" test "$(grep -c 'reloaded (SIGHUP): roster a, b, c' coordinator.err)" -eq 4

# --- 6. a reload that cannot work changes nothing -----------------------------
write_coordinator_toml '["a", "b", "c"]' 'no_such_key = 1'
kill -HUP "$coordinator_pid"
wait_for 10 "the failed reload to be said" grep -q "reload (SIGHUP) failed, nothing changed" coordinator.err
check "... naming the unknown key" grep -q "no_such_key" coordinator.err
check "the coordinator is still up" kill -0 "$coordinator_pid"
check "c is still connected" bash -c "! grep -q 'node=c event=disconnected' coordinator.err"

kill -INT "$coordinator_pid"
wait "$coordinator_pid" || fail "the coordinator did not stop cleanly on SIGINT"
echo "all checks passed"
