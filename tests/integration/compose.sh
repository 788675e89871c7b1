#!/usr/bin/env bash
# The container deployment, checked without a container engine:
#
#   compose.sh CHORUS SOURCE_DIR WORKDIR
#
# 1. `docker-compose config` accepts docker-compose.yml, and every path,
#    port, role and command it and the Dockerfile name exists in the project
#    (compose_check.py).
# 2. The image's entrypoint (deploy/compose/entrypoint.sh) runs its parties
#    as the compose file does — a CA, a coordinator and nodes a, b and c,
#    each with a home directory of its own and one shared exchange
#    directory — here as local processes: each party makes its own key,
#    only requests and certificates cross the exchange, and a round runs
#    with all three nodes.
set -euo pipefail

chorus=$(realpath "$1")
src=$(realpath "$2")
work=$3
here=$(cd "$(dirname "$0")" && pwd)

if ! command -v docker-compose >/dev/null; then
  echo "SKIP: docker-compose is not installed (scripts/install-deps.sh installs it)"
  exit 77
fi

rm -rf "$work"
mkdir -p "$work"
cd "$work"
# shellcheck source=lib.sh
source "$here/lib.sh"
logs=("*.log")

# --- 1. the compose file and the Dockerfile ------------------------------------
docker-compose -f "$src/docker-compose.yml" config > resolved.yml 2> config.err \
  || fail "docker-compose config refused docker-compose.yml: $(cat config.err)"
echo "ok: docker-compose config accepts docker-compose.yml"
/usr/bin/python3 "$here/compose_check.py" resolved.yml "$src" "$chorus" \
  || fail "compose_check.py"

# --- 2. the entrypoint's parties, as local processes ----------------------------
port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p exchange etc
cp "$src"/deploy/compose/*.toml etc/
entry="$src/deploy/compose/entrypoint.sh"
party() {  # party HOME_NAME ROLE [ARGS...]
  local dir=$1
  shift
  mkdir -p "$dir"
  CHORUS="$chorus" CHORUS_HOME="$PWD/$dir" CHORUS_EXCHANGE="$PWD/exchange" \
    CHORUS_ETC="$PWD/etc" CHORUS_PORT="$port" \
    CHORUS_COORDINATOR_HOSTS=localhost,127.0.0.1 "$entry" "$@" > "$dir.log" 2>&1 &
  pids+=($!)
}
party ca ca
party coordinator coordinator --set coordinator.port="$port" \
  --set coordinator.listen=127.0.0.1 --set data.transfer_size=600 --set data.fusion_labels=100
shard=0
for n in a b c; do
  party "node-$n" node "$n" --set train.shard=$shard --set train.epochs=1 --set train.shards=30 \
    --set coordinator.host=localhost --set coordinator.port="$port"
  shard=$((shard + 1))
done
serving() {
  for p in "${pids[@]}"; do
    kill -0 "$p" 2>/dev/null || fail "a party exited before the round ended"
  done
  grep -q "serving fused predictions" coordinator.log
}
wait_for 240 "the round to finish and the coordinator to serve" serving
check "the round ran with a, b and c" \
  grep -Eq "round 1/1: 3 nodes answered, 0 left out" coordinator.log
for p in coordinator node-a node-b node-c; do
  name=${p#node-}
  check "$p made its own key, mode 0600, in its own home" \
    test "$(stat -c %a "$p/pki/$name.key")" = 600
  check "$p is healthy by the image's health check" \
    env CHORUS="$chorus" CHORUS_HOME="$PWD/$p" CHORUS_EXCHANGE="$PWD/exchange" \
      CHORUS_PORT="$port" "$entry" health
done
keys=$(grep -rl "PRIVATE KEY" exchange ca/pki 2>/dev/null || true)
check "no private key crossed the exchange (${keys:-none})" test -z "$keys"
check "the CA's key is in the CA's home only" \
  test "$(grep -rl "PRIVATE KEY" . | grep -c "ca\.key$")" -eq 1
check "the CA signed four requests" \
  test "$(grep -c "signed .*'s request" ca.log)" -eq 4
echo "all checks passed"
