#pragma once

// Element loops that LibTorch would run as several tensor operations, each
// written as one pass that the compiler vectorises (kernels.cpp is built at
// -O3 without errno, with an AVX2 clone chosen at run time). No torch here.

#include <cstdint>

namespace chorus::fusion::kernels {

/// out[i] = `scale` when element i is kept, else 0, for i in [begin, end).
/// Element i is kept when a hash of (`key`, i) is below `keep_below`
/// (out of 2^32): counter-based, so the result does not depend on how the
/// range is split between threads.
void dropout_mask(float* out, std::int64_t begin, std::int64_t end,
                  std::uint64_t key, std::uint32_t keep_below, float scale);

/// One Adam step over [begin, end) of a parameter `p` with gradient `g`
/// and moments `m`, `v`, in the order torch::optim::Adam (L2 decay added to
/// the gradient) or, when `decoupled`, torch::optim::AdamW (the weights
/// decayed) apply it.
struct AdamStep {
  float lr, beta1, beta2, eps, weight_decay;
  bool decoupled;
  float bias_correction1, bias_correction2_sqrt;
};
void adam(float* p, const float* g, float* m, float* v, std::int64_t begin,
          std::int64_t end, const AdamStep& step);

}  // namespace chorus::fusion::kernels
