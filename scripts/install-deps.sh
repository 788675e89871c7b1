#!/usr/bin/env bash
# Installs the Debian packages Chorus builds and runs with — only those that are
# missing. Idempotent: a second run installs nothing and exits 0.
#
# Usage: scripts/install-deps.sh [--check]
#   --check   list what is missing and exit 1 if anything is; install nothing.
set -euo pipefail

packages=(
  g++ cmake ninja-build ccache make
  # `make format` and CI's format check (.ci/run) use it.
  clang-format
  # libFuzzer (tests/fuzz/run.sh and its 30-second ctest runs).
  clang-14 libclang-rt-14-dev
  libtorch-dev libopenblas0-openmp
  libprotobuf-dev protobuf-compiler
  libasio-dev libssl-dev
  libspdlog-dev libfmt-dev
  doctest-dev zlib1g-dev
  libtomlplusplus-dev libcli11-dev nlohmann-json3-dev
  # Prometheus metrics over HTTP ([metrics] listen; docs/observability.md).
  prometheus-cpp-dev
  # Data readers: PNG, JPEG and .npz (zip) files.
  pkg-config libspng-dev libturbojpeg0-dev libzip-dev
  dataset-fashion-mnist
  # PyTorch for Python: the bring-your-own-expert example exports a
  # TorchScript model with it, and tests check that Python reads our files.
  python3-torch
  # Small real tabular data sets (breast cancer, wine, iris, digits) for
  # `chorus simulate --dataset NAME`, and numpy for tests that write .npy.
  python3-sklearn
  # Validates docker-compose.yml in the tests (`docker-compose config`; no
  # container engine is installed or needed).
  docker-compose
  # ip, ss and tc: the multihost test's network namespaces, veth pairs and
  # slow link; ping checks the link. OpenSSL's command line checks our CRLs.
  iproute2 iputils-ping openssl
)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$status" = "installed" ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

if [ "${1:-}" = "--check" ]; then
  echo "install-deps: missing: ${missing[*]}"
  exit 1
fi

echo "install-deps: installing: ${missing[*]}"

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "install-deps: error: not root and sudo is not available;" \
       "install as root: apt-get install ${missing[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if ! "${sudo[@]}" apt-get update -qq; then
  echo "install-deps: error: apt-get update failed; check network access to" \
       "the Debian mirrors (/etc/apt/sources.list)" >&2
  exit 1
fi

unavailable=()
for p in "${missing[@]}"; do
  if ! apt-cache show "$p" >/dev/null 2>&1; then unavailable+=("$p"); fi
done
if [ ${#unavailable[@]} -gt 0 ]; then
  echo "install-deps: error: apt cannot find: ${unavailable[*]}" >&2
  echo "  Chorus needs Debian 12 (bookworm) or later with the 'main' component." >&2
  exit 1
fi

# apt's progress goes to a log; it is shown only when something fails.
log=$(mktemp -t chorus-install-deps.XXXXXX.log)
if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends \
    "${missing[@]}" >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "install-deps: error: apt-get install failed for: ${missing[*]}" \
       "(full log: $log)" >&2
  exit 1
fi
rm -f "$log"
echo "install-deps: done"
