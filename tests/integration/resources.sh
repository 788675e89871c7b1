#!/usr/bin/env bash
# Exhausted resources at the coordinator's door, with real processes over
# loopback:
#  1. Out of file descriptors (`ulimit -n 40`, 150 TCP connections held
#     open): the listener backs off instead of spinning — at most a few
#     "accept_failed" lines and little CPU while the flood lasts — and once
#     it ends a node's TLS handshake is accepted again.
#  2. `coordinator.max_unauthenticated = 5` and 20 idle TCP connections
#     that never start TLS: the first 5 are held (until the handshake
#     timeout), the other 15 are closed at once, and the refusals are
#     logged (rate-limited).
set -euo pipefail

chorus=$(realpath "$1")
work=$2
here=$(cd "$(dirname "$0")" && pwd)
py=/usr/bin/python3

rm -rf "$work"
mkdir -p "$work"
cd "$work"

# shellcheck source=lib.sh
source "$here/lib.sh"
logs=("coordinator*.err")

"$chorus" certs init --out pki --coordinator localhost,127.0.0.1 --nodes a >/dev/null

cat > coordinator.toml <<EOF
[coordinator]
listen = "127.0.0.1"
port = 0
roster = ["a"]
quorum_timeout_s = 120
run_dir = "run"
[fusion]
algorithm = "bplus"
[data]
dataset = "iris"
transfer_size = 60
fusion_labels = 10
EOF

start_coordinator() {  # start_coordinator LOG ARGS...
  local log=$1
  shift
  "$chorus" coordinator --config coordinator.toml "$@" > "$log.out" 2> "$log.err" &
  pids+=($!)
  coordinator_pid=$!
  wait_for 30 "the coordinator to listen" grep -q "listening on" "$log.err"
  port=$(sed -n 's/.* listening on 127\.0\.0\.1:\([0-9]*\);.*/\1/p' "$log.err")
}
cpu_ticks() {  # user + system clock ticks of a process
  awk '{ print $14 + $15 }' "/proc/$1/stat"
}
# A TLS handshake as node "a": the coordinator accepts and authenticates.
handshake() {
  "$py" - "$port" <<'EOF'
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.load_verify_locations("pki/ca.crt")
ctx.load_cert_chain("pki/a.crt", "pki/a.key")
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as s:
    with ctx.wrap_socket(s) as t:
        print("handshake", t.version())
EOF
}

# --- 1. out of file descriptors -----------------------------------------------
(ulimit -n 40 && exec "$chorus" coordinator --config coordinator.toml \
   > coordinator1.out 2> coordinator1.err) &
pids+=($!)
coordinator_pid=$!
wait_for 30 "the coordinator to listen" grep -q "listening on" coordinator1.err
port=$(sed -n 's/.* listening on 127\.0\.0\.1:\([0-9]*\);.*/\1/p' coordinator1.err)
before=$(cpu_ticks "$coordinator_pid")
"$py" - "$port" <<'EOF'
import socket, sys, time
held = []
for _ in range(150):
    try:
        held.append(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2))
    except OSError:
        pass
time.sleep(4)
for s in held:
    s.close()
EOF
after=$(cpu_ticks "$coordinator_pid")
failures=$(grep -c "event=accept_failed" coordinator1.err || true)
echo "accept_failed lines: $failures; coordinator CPU during the flood: $((after - before)) ticks"
check "the coordinator ran out of descriptors (an accept failed)" test "$failures" -ge 1
check "... and logged it at most 3 times" test "$failures" -le 3
check "... without spinning (< 1 s of CPU in 4 s)" test $((after - before)) -lt 100
grep -q "Too many open files" coordinator1.err || fail "the failure names EMFILE"
echo "ok: the failure names the cause (Too many open files)"
wait_for 10 "a node's handshake after the flood" handshake
echo "ok: a node's handshake is accepted once descriptors are free"
kill -INT "$coordinator_pid"
wait "$coordinator_pid" || true

# --- 2. a cap on unauthenticated connections ----------------------------------
start_coordinator coordinator2 --set coordinator.max_unauthenticated=5
closed=$("$py" - "$port" <<'EOF'
import socket, sys, time
conns = [socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
         for _ in range(20)]
time.sleep(1.5)
closed = 0
for s in conns:
    s.settimeout(0.2)
    try:
        closed += s.recv(1) == b""
    except socket.timeout:
        pass
    except ConnectionResetError:
        closed += 1
print(closed)
for s in conns:
    s.close()
EOF
)
echo "idle connections closed by the coordinator: $closed of 20"
check "15 of 20 unauthenticated connections closed at once (limit 5)" test "$closed" -eq 15
grep -q 'event=connection_refused reason="5 connections are already unauthenticated (limit)"' \
  coordinator2.err || fail "the refusal is logged with the limit"
echo "ok: the refusal is logged, naming the limit"
refusals=$(grep -c "event=connection_refused" coordinator2.err || true)
check "... once, not 15 times ($refusals)" test "$refusals" -eq 1
kill -INT "$coordinator_pid"
wait "$coordinator_pid" || true
echo "resources: all checks passed"
