#!/usr/bin/env bash
# The shipped examples, run the way the README tells a user to: each
# `examples/<name>/run.sh` unmodified, on a copy of its directory, in a
# network namespace of its own (the examples listen on 127.0.0.1:7700, which
# other tests may hold at the same time).
#
#   examples.sh CHORUS WORKDIR
#
# 1. three-institutions: certificates, three nodes trained, one round of
#    foe-distill on Fashion-MNIST, a fused model that beats chance by far,
#    each node's audit log with every request OK, and the README's audit
#    commands on its files: every log verifies with its writer's
#    certificate, and each node's log reconciles with the coordinator's.
# 2. tabular-hospitals: the same with breast-cancer records (prepare.py,
#    python3-sklearn) and a TorchScript expert of the clinic's own.
# 3. tabular-hospitals run a second time: what was made is reused (no
#    second CA, no retraining), the round runs again; the hospitals' audit
#    summaries count the inputs charged over both runs (their budgets keep
#    a ledger), the clinic's, which has no budget, since its last start,
#    and says so.
#
# Needs root and `ip netns`; skips (status 77) with a message otherwise.
set -euo pipefail

chorus=$(realpath "$1")
work=$2
here=$(cd "$(dirname "$0")" && pwd)
examples=$(cd "$here/../../examples" && pwd)

if [ "$(id -u)" -ne 0 ]; then
  echo "SKIP: needs root to make a network namespace (run the tests as root)"
  exit 77
fi
command -v ip >/dev/null || { echo "SKIP: 'ip' (iproute2) is not installed"; exit 77; }
ns="chorus-ex-$$"
if ! ip netns add "$ns" 2>/dev/null; then
  echo "SKIP: 'ip netns add' does not work here (no network namespaces)"
  exit 77
fi
ip netns exec "$ns" ip link set lo up

rm -rf "$work"
mkdir -p "$work"
cd "$work"
# shellcheck source=lib.sh
source "$here/lib.sh"
trap 'cleanup; ip netns del "$ns" 2>/dev/null || true' EXIT

# run NAME LOG: the example's run.sh in the namespace, output to LOG.
run() {
  logs=("$2")
  if ! timeout 600 ip netns exec "$ns" "$work/$1/run.sh" "$chorus" > "$2" 2>&1; then
    fail "examples/$1/run.sh exited with an error"
  fi
}
# fused_ok LOG: the coordinator printed a fused model's test accuracy of at
# least 0.70 (binary and 10-class tasks alike; chance is 0.5 or 0.1).
fused_ok() {
  grep -Eq "^fused model \([a-z-]+\): test accuracy (0\.[7-9]|1\.0)" "$1"
}
# audits_ok LOG N: N audit summaries, every request OK.
audits_ok() {
  test "$(grep -c '^by outcome ' "$1")" -eq "$2" &&
    ! grep '^by outcome ' "$1" | grep -vEq '^by outcome +OK [0-9]+$'
}

cp -r "$examples/three-institutions" "$examples/tabular-hospitals" .
rm -rf ./*/pki ./*/state ./*/runs ./*/data

run three-institutions three.out
check "three-institutions: three nodes answered round 1" \
  grep -q "^round 1/1: 3 nodes answered, 0 left out" three.out
check "three-institutions: the fused model's test accuracy is printed and at least 0.70" \
  fused_ok three.out
check "three-institutions: the fused model file exists" \
  test -s three-institutions/runs/coordinator/fused.pt
check "three-institutions: three audit summaries, every request OK" \
  audits_ok three.out 3
# The README's audit commands on the example's own files: each side's log
# verified with its writer's certificate, and the two sides reconciled.
(
  cd three-institutions
  for n in hospital-a lab-b clinic-c; do
    check "three-institutions: $n's audit log verifies with its certificate" \
      bash -c "'$chorus' audit verify state/$n/audit.jsonl --cert pki/$n.crt | grep -q intact"
    check "three-institutions: $n's log and the coordinator's agree" \
      bash -c "'$chorus' audit reconcile state/$n/audit.jsonl runs/coordinator/requests.jsonl | grep -q 'the two logs agree'"
  done
  check "three-institutions: the coordinator's request log verifies" \
    bash -c "'$chorus' audit verify runs/coordinator/requests.jsonl --cert pki/coordinator.crt | grep -q intact"
)

run tabular-hospitals tabular.out
check "tabular-hospitals: prepare.py wrote the task and the clinic's TorchScript expert" \
  test -s tabular-hospitals/data/task.toml -a -s tabular-hospitals/data/clinic-c.pt
check "tabular-hospitals: three nodes answered round 1" \
  grep -q "^round 1/1: 3 nodes answered, 0 left out" tabular.out
check "tabular-hospitals: the fused model's test accuracy is printed and at least 0.70" \
  fused_ok tabular.out
check "tabular-hospitals: three audit summaries, every request OK" \
  audits_ok tabular.out 3

ca_before=$(sha256sum tabular-hospitals/pki/ca.crt)
expert_before=$(sha256sum tabular-hospitals/state/hospital-a/expert.pt)
run tabular-hospitals tabular2.out
check "tabular-hospitals again: the round runs with the same three nodes" \
  grep -q "^round 1/1: 3 nodes answered, 0 left out" tabular2.out
check "tabular-hospitals again: the CA and hospital-a's expert are reused" \
  test "$ca_before" = "$(sha256sum tabular-hospitals/pki/ca.crt)" -a \
       "$expert_before" = "$(sha256sum tabular-hospitals/state/hospital-a/expert.pt)"
check "tabular-hospitals again: no 'training' the second time" \
  bash -c "! grep -q '^training ' tabular2.out"
# Each run asks each node for the 240 inputs of the transfer pool.
check "tabular-hospitals again: hospital-a's ledger counts both runs" \
  grep -q "^inputs charged   480 (since the budget ledger began)" tabular2.out
check "tabular-hospitals again: the clinic, without a budget, counts from its last start and says so" \
  grep -q "^inputs charged   240 (since the node last started: without a budget it keeps no ledger)" tabular2.out
echo "examples: all checks passed"
