#!/usr/bin/env bash
# Progress bars on a terminal only: a small `chorus simulate` run (breast
# cancer, 3 nodes) under a pseudo-terminal (util-linux `script`) draws the
# live view — expert training, each node's answers in the round, the fit,
# the push — and the same run with stderr on a pipe, or with
# CHORUS_PROGRESS=0, prints the plain lines and not one escape sequence.
#
#   progress.sh CHORUS WORKDIR
set -euo pipefail

chorus=$(realpath "$1")
work=$2
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$work"
mkdir -p "$work"
cd "$work"
# shellcheck source=lib.sh
source "$here/lib.sh"
logs=("tty.txt" "pipe.txt" "off.txt")

if ! command -v script >/dev/null 2>&1; then
  echo "SKIP: util-linux 'script' is not installed (apt-get install bsdutils)"
  exit 77
fi
esc=$'\x1b'
run="$chorus simulate --dataset breast-cancer --experts 3 --algorithm foe-distill,foe"

# A terminal: `script` runs the command on a pty and copies what it shows.
TERM=xterm script -q -e -c "$run --out tty" tty.txt > /dev/null ||
  fail "chorus simulate on a terminal"
check "the terminal got escape sequences that redraw the view" grep -q "${esc}\[[0-9]*A" tty.txt
check "a bar per expert in training, with examples and the epoch" \
  grep -qE "train (alpha|beta|gamma) +mlp \[[#-]+\] +[0-9]+% .* examples" tty.txt
check "the round's line with its phase" grep -q "round 1/1 .*foe-distill: query" tty.txt
for node in alpha beta gamma; do
  check "a line for $node's answers in the round" \
    grep -qE "^  $node +\[[#-]+\] +[0-9]+% [0-9]+/237 inputs" tty.txt
done
check "the fit's bar" grep -qE "fit: FoE fuser \[[#-]+\]" tty.txt
check "the push's bar" grep -qE "push round 1 to 3 node\(s\) \[[#-]+\].* bytes" tty.txt
check "the plain lines are there too" grep -q "round 1/1: 3 nodes answered" tty.txt
check "and the table" grep -q "^foe-distill (broadcast)" tty.txt

# A pipe: the same lines, no bars.
$run --out pipe > pipe.txt 2>&1 || fail "chorus simulate on a pipe"
check "a pipe gets no escape sequence" bash -c "! grep -q '$esc' pipe.txt"
check "a pipe gets no bar" bash -c '! grep -qE "\[[#-]{20}\]|ETA" pipe.txt'
check "a pipe gets the plain lines" grep -q "^trained alpha" pipe.txt
check "a pipe gets the round's line" grep -q "^round 1/1: 3 nodes answered" pipe.txt

# A terminal with CHORUS_PROGRESS=0: no bars either.
CHORUS_PROGRESS=0 TERM=xterm script -q -e -c "$run --out off" off.txt > /dev/null ||
  fail "chorus simulate on a terminal with CHORUS_PROGRESS=0"
check "CHORUS_PROGRESS=0 draws no bar" bash -c '! grep -qE "\[[#-]{20}\]" off.txt'
check "CHORUS_PROGRESS=0 keeps the lines" grep -q "^round 1/1: 3 nodes answered" off.txt
echo "all checks passed"
