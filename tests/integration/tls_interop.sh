#!/usr/bin/env bash
# Chorus's TLS channel against another implementation: OpenSSL's own
# `s_client` and `s_server`, over real sockets, with frames made and read
# by `protoc --encode/--decode` from protocol/chorus/v1/chorus.proto.
#
#   tls_interop.sh CHORUS PROTO_DIR WORKDIR
#
# 1. s_client with a node's certificate completes a handshake with the
#    coordinator over TLS 1.2 and over TLS 1.3; TLS 1.1 is refused; a client
#    without a certificate is refused.
# 2. A Hello sent through s_client (TLS 1.3) is admitted: a Welcome comes
#    back. A KeyUpdate that asks the coordinator to update its keys too is
#    followed by frames the client still reads (heartbeats).
# 3. A clean close (close_notify) and an abrupt one (the client killed) each
#    end only that connection: the coordinator stays up and says why.
# 4. A chorus node dialling `openssl s_server` (TLS 1.2 and 1.3) verifies
#    its certificate, presents its own, and sends a Hello that protoc
#    decodes; with no Welcome it gives up after its handshake timeout and
#    says so.
set -euo pipefail

chorus=$(realpath "$1")
proto_dir=$(realpath "$2")
work=$3
here=$(cd "$(dirname "$0")" && pwd)
for tool in openssl protoc; do
  command -v "$tool" >/dev/null || { echo "SKIP: '$tool' is not installed"; exit 77; }
done

rm -rf "$work"
mkdir -p "$work"
cd "$work"
# shellcheck source=lib.sh
source "$here/lib.sh"
logs=("*.err" "*.log")

proto=(protoc -I "$proto_dir" chorus/v1/chorus.proto)
free_port() {
  /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# frame FILE.txt > FILE.bin: a text-format Envelope as a length-prefixed frame.
frame() {
  "${proto[@]}" --encode=chorus.v1.Envelope < "$1" > body.bin
  /usr/bin/python3 -c '
import struct, sys
body = open("body.bin", "rb").read()
sys.stdout.buffer.write(struct.pack(">I", len(body)) + body)'
}
# frames FILE.bin [full]: the body kind of each frame in a byte stream, or
# with "full" each frame in text format.
frames() {
  /usr/bin/python3 - "$1" "$proto_dir" "${2:-}" <<'EOF'
import struct, subprocess, sys
data = open(sys.argv[1], "rb").read()
full = sys.argv[3] == "full"
at = 0
while at + 4 <= len(data):
    (n,) = struct.unpack(">I", data[at:at + 4])
    body = data[at + 4:at + 4 + n]
    if len(body) < n:
        break
    text = subprocess.run(
        ["protoc", "-I", sys.argv[2], "--decode=chorus.v1.Envelope",
         "chorus/v1/chorus.proto"], input=body, capture_output=True,
        check=True).stdout.decode()
    print(text if full else (text.split()[0] if text.split() else "(empty)"))
    at += 4 + n
EOF
}

"$chorus" certs init --out pki --coordinator localhost,127.0.0.1 --nodes a >/dev/null
port=$(free_port)
cat > coordinator.toml <<EOF
[coordinator]
listen = "127.0.0.1"
port = $port
roster = ["a", "b"]
quorum_timeout_s = 120
rounds = 1
run_dir = "run"
[tls]
ca = "pki/ca.crt"
cert = "pki/coordinator.crt"
key = "pki/coordinator.key"
[data]
transfer_size = 500
fusion_labels = 50
EOF
"$chorus" coordinator --config coordinator.toml > coordinator.out 2> coordinator.err &
pids+=($!)
coordinator_pid=$!
wait_for 60 "the coordinator to listen" grep -q "listening on" coordinator.err

client=(openssl s_client -connect "127.0.0.1:$port" -servername localhost
        -CAfile pki/ca.crt -verify_return_error -cert pki/a.crt -key pki/a.key)

# --- 1. handshakes -------------------------------------------------------------
for version in tls1_2 tls1_3; do
  timeout 10 "${client[@]}" "-$version" -brief < /dev/null > "$version.out" 2>&1 \
    || fail "s_client -$version: $(tail -n 3 "$version.out")"
  check "s_client -$version: the handshake completes and verifies the coordinator" \
    grep -q "Verification: OK" "$version.out"
  want=${version/tls1_/TLSv1.}
  check "... over $want" grep -q "Protocol version: $want" "$version.out"
done
status=0
timeout 10 "${client[@]}" -tls1_1 -brief < /dev/null > tls1_1.out 2>&1 || status=$?
check "TLS 1.1 is refused (s_client status $status)" test "$status" -ne 0
status=0
timeout 10 openssl s_client -connect "127.0.0.1:$port" -servername localhost \
  -CAfile pki/ca.crt -tls1_3 -quiet < /dev/null > nocert.out 2>&1 || true
wait_for 10 "the coordinator to refuse a client without a certificate" \
  grep -q "event=tls_refused" coordinator.err

# --- 2. a Hello over OpenSSL's TLS 1.3, then a KeyUpdate ---------------------------
cat > hello.txt <<'EOF'
hello {
  protocol_major: 1
  protocol_minor: 4
  software: "openssl s_client"
  expert {
    input_shape: [1, 28, 28]
    input_dtype: DTYPE_UINT8
    labels: ["T-shirt/top", "Trouser"]
  }
  policy { max_batch: 10 }
}
EOF
frame hello.txt > hello.bin
# 'K' at the start of what s_client reads asks for a KeyUpdate with
# update_requested (and sends nothing). Heartbeats come every 5 s.
# (-no_ign_eof after -quiet: s_client takes command letters only then.)
{ cat hello.bin; sleep 1; printf K; sleep 7; } \
  | timeout 15 "${client[@]}" -tls1_3 -quiet -no_ign_eof > session.bin 2> session.err || true
frames session.bin > session.frames
check "the coordinator admitted a Hello sent through OpenSSL: Welcome came back" \
  test "$(head -n 1 session.frames)" = welcome
check "after the KeyUpdate the client still read the coordinator's frames ($(tr '\n' ' ' < session.frames))" \
  grep -q heartbeat session.frames
check "the coordinator logged the node's admission" grep -q "peer=a event=admitted" coordinator.err
check "s_client performed the KeyUpdate (it took 'K' as a command, sent nothing)" \
  bash -c "! grep -q 'event=bad_frame' coordinator.err"

# --- 3. a clean close and an abrupt one --------------------------------------------
left() { grep -c "node=a event=disconnected" coordinator.err || true; }
left_before=$(left)
{ cat hello.bin; sleep 1; } | timeout 10 "${client[@]}" -tls1_3 -quiet -no_ign_eof \
  > clean.bin 2> clean.err || true
wait_for 10 "a clean close (close_notify) to end the session" \
  bash -c "[ \$(grep -c 'node=a event=disconnected' coordinator.err) -ge $((left_before + 1)) ]"
check "... which was admitted first" test "$(frames clean.bin | head -n 1)" = welcome
{ cat hello.bin; sleep 30; } | "${client[@]}" -tls1_3 -quiet > abrupt.bin 2> abrupt.err &
abrupt=$!
abrupt_admitted() { [ -s abrupt.bin ] && frames abrupt.bin | grep -q welcome; }
wait_for 10 "the next session to be admitted" abrupt_admitted
kill -9 "$abrupt" 2>/dev/null || true
wait_for 10 "an abrupt close (the client killed) to end the session" \
  bash -c "[ \$(grep -c 'node=a event=disconnected' coordinator.err) -ge $((left_before + 2)) ]"
check "the coordinator is still up after both" kill -0 "$coordinator_pid"
kill -INT "$coordinator_pid"
wait "$coordinator_pid" 2>/dev/null || true

# --- 4. a chorus node against openssl s_server ---------------------------------------
cat > node.toml <<EOF
[node]
name = "a"
state_dir = "state"
[coordinator]
host = "localhost"
port = 1
retry_max_s = 1
[tls]
ca = "pki/ca.crt"
cert = "pki/a.crt"
key = "pki/a.key"
[expert]
path = "state/expert.pt"
labels = ["T-shirt/top", "Trouser", "Pullover"]
[train]
epochs = 1
shards = 60
EOF
"$chorus" node train --config node.toml > train.log 2>&1 || fail "node train"
for version in tls1_2 tls1_3; do
  sport=$(free_port)
  # s_server ends a session when its stdin ends: keep it open.
  sleep 60 | openssl s_server -accept "$sport" -cert pki/coordinator.crt \
    -key pki/coordinator.key -CAfile pki/ca.crt -Verify 1 -verify_return_error \
    "-$version" -quiet > "server-$version.bin" 2> "server-$version.err" &
  server=$!
  pids+=($server)
  sleep 0.5
  "$chorus" node --config node.toml --set coordinator.port="$sport" 2> "node-$version.log" &
  node=$!
  pids+=($node)
  hello_received() { [ -s "server-$version.bin" ] && frames "server-$version.bin" | grep -q hello; }
  wait_for 20 "s_server ($version) to receive the node's Hello" hello_received
  frames "server-$version.bin" full > "server-$version.txt"
  check "$version: the node verified s_server's certificate and sent a Hello protoc decodes" \
    grep -q 'software: "chorus' "server-$version.txt"
  check "... announcing its expert's labels" grep -q 'labels: "Pullover"' "server-$version.txt"
  # s_server ends the connection without a Welcome: the node says why and
  # dials again.
  kill "$server" 2>/dev/null || true
  wait_for 20 "the node ($version) to report the failed session" \
    grep -q "event=connect_failed" "node-$version.log"
  check "$version: the node reported it, naming the coordinator" \
    grep -Eq "event=connect_failed host=localhost port=$sport" "node-$version.log"
  kill "$node" 2>/dev/null || true
  wait "$node" 2>/dev/null || true
done
echo "all checks passed"
