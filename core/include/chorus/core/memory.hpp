#pragma once

/// Process-wide memory settings, applied once at the start of `main` of the
/// chorus binary and the benchmarks.
namespace chorus {

/// Tunes glibc's allocator for tensor work. LibTorch allocates every
/// activation afresh (a LeNet forward over 256 images allocates tensors of
/// 12 MB); with glibc's defaults such blocks are mmap'd and unmapped or
/// trimmed back to the system at every pass, so each pass pays page faults
/// for all of its memory. Keeping blocks of up to 256 MB in the heap and
/// trimming only beyond 1 GB of free top memory lets them be reused: 1.6-2x
/// inference throughput here (bench_node), at the cost of a resident set
/// that stays near its peak. `CHORUS_DEFAULT_MALLOC=1` in the environment
/// leaves glibc's defaults (and so does an explicit GLIBC_TUNABLES).
void tune_allocator();

}  // namespace chorus
