#!/usr/bin/env bash
# A federation about the user's own task, every party its own OS process,
# over mutual TLS on loopback (issue "your data, your task"):
#
#   own_task.sh CHORUS WORKDIR
#
# 1. The coordinator declares a task of 3x32x32 uint8 images with 5 named
#    classes (task.toml), and takes its transfer pool from .npy, its labelled
#    fusion set from a folder of PNG files and its test set from .npz.
# 2. Node "rgb" serves a TorchScript expert of that shape: the round runs,
#    inputs travel as uint8 (3072 bytes per image, not 12288), and the
#    coordinator reports the fused model's test accuracy.
# 3. Node "gray" serves a 1x28x28 expert: it is refused at its Hello, and
#    both ends say why, naming both shapes.
set -euo pipefail

chorus=$(realpath "$1")
work=$2
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$work"
mkdir -p "$work"
cd "$work"

# shellcheck source=lib.sh
source "$here/lib.sh"
logs=(coordinator.err coordinator.out rgb.log gray.log)

/usr/bin/python3 "$here/write_pets.py" data || fail "write_pets.py"
"$chorus" certs init --out pki --coordinator localhost,127.0.0.1 --nodes rgb,gray >/dev/null

cat > coordinator.toml <<TOML
[coordinator]
listen = "127.0.0.1"
port = 0
roster = ["rgb", "gray"]
min_nodes = 1
quorum_timeout_s = 60
settle_s = 4
query_batch = 200
run_dir = "run"
[fusion]
algorithm = "distill"
[task]
file = "data/task.toml"
[data]
dataset = "files"
transfer = "data/pool.npy"
fusion = "data/labelled"
test = "data/test.npz"
TOML

"$chorus" coordinator --config coordinator.toml > coordinator.out 2> coordinator.err &
pids+=($!)
coordinator_pid=$!
wait_for 60 "the coordinator to listen" grep -q "listening on" coordinator.err
port=$(sed -n 's/.* listening on 127\.0\.0\.1:\([0-9]*\);.*/\1/p' coordinator.err)
check "the coordinator announces the task it read" \
  grep -q "task 'pets': 5 labels, inputs uint8 \[3, 32, 32\], normalise per-channel; transfer pool 640 inputs, 40 labelled, test set 200" coordinator.err

# The gray node's expert: a builtin LeNet on Fashion-MNIST, 1x28x28.
cat > gray.toml <<TOML
[node]
name = "gray"
state_dir = "state/gray"
[coordinator]
host = "localhost"
port = $port
[tls]
ca = "pki/ca.crt"
cert = "pki/gray.crt"
key = "pki/gray.key"
[expert]
path = "state/gray/expert.pt"
labels = ["Bag", "Sandal"]
[train]
epochs = 1
shard = 0
shards = 30
TOML
"$chorus" node train --config gray.toml > gray-train.log 2>&1 || fail "node train gray"
"$chorus" node --config gray.toml 2> gray.log &
pids+=($!)

cat > rgb.toml <<TOML
[node]
name = "rgb"
state_dir = "state/rgb"
[coordinator]
host = "localhost"
port = $port
[tls]
ca = "pki/ca.crt"
cert = "pki/rgb.crt"
key = "pki/rgb.key"
[expert]
kind = "torchscript"
path = "data/expert.pt"
input_shape = [3, 32, 32]
labels = ["cat", "dog", "bird", "fish", "horse"]
TOML
"$chorus" node --config rgb.toml 2> rgb.log &
pids+=($!)

wait_for 120 "the coordinator to finish" grep -q "test accuracy" coordinator.out
wait "$coordinator_pid" || fail "the coordinator exited with an error"

why="node 'gray' takes inputs of shape \[1, 28, 28\], but the federation's task 'pets' has inputs of shape \[3, 32, 32\]"
check "the coordinator refused gray naming both shapes" grep -q "$why" coordinator.err
check "gray's node says why it was refused" grep -q "refused this client: $why" gray.log
check "the round ran with rgb" grep -q "round 1/1: 1 nodes answered" coordinator.err
check "the test accuracy is reported" \
  grep -Eq "fused model \(distill\): test accuracy [01]\.[0-9]+ on 200 inputs" coordinator.out
# 640 inputs of 3x32x32 bytes, plus framing: far below the 7.9 MB of float32.
sent=$(sed -n 's/.*"bytes_sent": *\([0-9]*\).*/\1/p' run/report.json | head -1)
check "inputs travelled as uint8 ($sent bytes for 640 images)" \
  test "$sent" -ge $((640 * 3072)) -a "$sent" -lt $((640 * 3072 + 100000))
acc=$(sed -n 's/.*"test_accuracy": *\([0-9.]*\).*/\1/p' run/report.json)
check "the fused model learnt the task from the expert (test accuracy $acc > 0.6)" \
  awk -v a="$acc" 'BEGIN { exit !(a > 0.6) }'
check "the resolved config records the task" grep -q 'input_shape = \[3, 32, 32\]' run/config.toml
echo "own task: all checks passed"
