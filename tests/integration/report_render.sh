#!/usr/bin/env bash
# `chorus report`'s page as a browser shows it: a small `chorus simulate`
# run (wine, 5 nodes) writes runs/report.html; headless Chromium renders it
# to a PNG, which must not be blank, and logs no console error.
#
#   report_render.sh CHORUS WORKDIR
#
# Chromium is installed here when it is missing and this runs as root
# (Debian's chromium); the test skips (exit 77) only when it cannot be.
set -euo pipefail

chorus=$(realpath "$1")
work=$2
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$work"
mkdir -p "$work"
cd "$work"
# shellcheck source=lib.sh
source "$here/lib.sh"
logs=("simulate.out" "chromium.err")

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for this test"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      chromium >apt.log 2>&1 || { echo "SKIP: chromium cannot be installed: $(tail -n 2 apt.log)"; exit 77; }
  else
    echo "SKIP: chromium is not installed and this is not root (apt-get install chromium)"
    exit 77
  fi
fi

"$chorus" simulate --dataset wine --algorithm foe,bmax --out run > simulate.out 2>&1 ||
  fail "chorus simulate"
check "simulate printed where its report is" grep -q "^report: run/report.html" simulate.out
check "the page exists" test -s run/report.html
"$chorus" report run --out again.html > report.out || fail "chorus report"
check "chorus report writes the same page again" cmp -s run/report.html again.html

flags=(--headless --no-sandbox --disable-gpu --no-first-run
       --disable-background-networking --disable-component-update --disable-sync
       --user-data-dir="$work/profile" --enable-logging=stderr --v=0)
timeout 120 chromium "${flags[@]}" --window-size=1100,2000 \
  --screenshot="$work/report.png" "file://$work/run/report.html" \
  > chromium.out 2> chromium.err || fail "chromium could not render the page"
check "chromium wrote a screenshot" test -s report.png
check "the page logged no console error" \
  bash -c '! grep -E "CONSOLE\\(|Uncaught|console.*(error|ERROR)" chromium.err'
/usr/bin/python3 - "$work/report.png" <<'PY' || fail "the screenshot is blank"
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat, width, height = 8, b"", 0, 0
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if kind == b"IHDR":
        width, height, depth, colour = struct.unpack(">IIBB", body[:10])
        assert depth == 8 and colour in (2, 6), (depth, colour)
        channels = 3 if colour == 2 else 4
    elif kind == b"IDAT":
        idat += body
    pos += 12 + n
raw = zlib.decompress(idat)
stride = width * channels + 1
# Unfiltered or not, a blank page decodes to rows of one byte value; count
# the distinct bytes of the scanlines (filter bytes excluded).
distinct = set()
for y in range(0, height, 7):
    distinct.update(raw[y * stride + 1:(y + 1) * stride:5])
print(f"screenshot {width}x{height}, {len(distinct)} distinct byte values")
assert len(distinct) > 20, "the page is blank"
PY
echo "all checks passed"
