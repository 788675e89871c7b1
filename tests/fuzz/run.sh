#!/usr/bin/env bash
# Builds the fuzz targets with clang and libFuzzer (ASan + UBSan) and runs
# each, growing a corpus from the committed seeds. Prints one line per
# target: executions, seconds, corpus size; exits non-zero on a crash
# (libFuzzer leaves the input as crash-* in the build directory).
#
#   tests/fuzz/run.sh [--runs N | --seconds S] [--build DIR] [--merge]
#                     [TARGET...]
#
#   --runs N      executions per target (default 10,000,000)
#   --seconds S   run each target for S seconds instead
#   --build DIR   where to build and keep the corpora (default build-fuzz)
#   --merge       add to tests/fuzz/corpus/TARGET the grown corpus's inputs
#                 that reach new code
#   TARGET        npy, csv, config, envelope, idx, image, archive,
#                 dispatch (default: all)
#
# Exits 77 (skipped) when clang++-14 or libFuzzer's runtime is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
runs=10000000
seconds=
build=$root/build-fuzz
merge=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --merge) merge=1; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(npy csv config envelope idx image archive dispatch)

if ! command -v clang++-14 >/dev/null 2>&1; then
  echo "fuzz: SKIP: clang++-14 is not installed (scripts/install-deps.sh installs it)"
  exit 77
fi
if ! ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a \
    >/dev/null 2>&1; then
  echo "fuzz: SKIP: libFuzzer's runtime is missing (Debian: libclang-rt-14-dev)"
  exit 77
fi

if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$here" -B "$build" -G Ninja -DCMAKE_CXX_COMPILER=clang++-14 \
    >"$build.configure.log" 2>&1 || { cat "$build.configure.log"; exit 1; }
fi
cmake --build "$build" -j "$(nproc)" >"$build/build.log" 2>&1 ||
  { tail -50 "$build/build.log"; exit 1; }

status=0
for t in "${targets[@]}"; do
  corpus=$build/corpus/$t
  mkdir -p "$corpus"
  if [ -n "$seconds" ]; then
    limit=(-max_total_time="$seconds")
  else
    limit=(-runs="$runs")
  fi
  log=$build/$t.log
  start=$(date +%s%N)
  if (cd "$build" && "./chorus_fuzz_$t" "${limit[@]}" -rss_limit_mb=2048 \
      -print_final_stats=1 "$corpus" "$here/corpus/$t" >"$log" 2>&1); then
    result="no crash"
  else
    result="CRASH (see $log and $build/crash-*)"
    status=1
  fi
  end=$(date +%s%N)
  done_runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ "${done_runs:-0}" -lt 1 ]; then
    result="NO EXECUTIONS (see $log)"
    status=1
  fi
  files=$(find "$corpus" -type f | wc -l)
  bytes=$(du -sb "$corpus" | cut -f1)
  printf 'fuzz %-8s %12s executions in %6.0f s, corpus %5d files (%d bytes): %s\n' \
    "$t" "${done_runs:-?}" "$(((end - start) / 1000000000))" "$files" "$bytes" \
    "$result"
  if [ "$merge" = 1 ] && [ "$result" = "no crash" ]; then
    # Adds to the committed seeds only the inputs that reach new code.
    (cd "$build" && "./chorus_fuzz_$t" -merge=1 "$here/corpus/$t" \
      "$corpus" >"$build/$t.merge.log" 2>&1)
    echo "fuzz $t: tests/fuzz/corpus/$t now $(ls "$here/corpus/$t" | wc -l) files"
  fi
done
exit $status
