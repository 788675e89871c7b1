#include "kernels.hpp"

#include <cmath>

// An AVX2 clone beside the default, picked at load time by an ifunc
// resolver. Not under ThreadSanitizer: the dynamic loader runs the resolver
// while relocating, before TSan's runtime is initialised, and GCC
// instruments it (a call to __tsan_func_entry), so every binary linking
// chorus_fusion crashed before main.
#if defined(__SANITIZE_THREAD__)
#define CHORUS_TARGET_CLONES
#else
#define CHORUS_TARGET_CLONES __attribute__((target_clones("avx2", "default")))
#endif

namespace chorus::fusion::kernels {
namespace {

// A 32-bit integer hash with good avalanche (Wellons' "lowbias32").
inline std::uint32_t mix32(std::uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

template <bool Decoupled>
CHORUS_TARGET_CLONES void adam_loop(
    float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
    float* __restrict__ v, std::int64_t n, float beta1, float beta2, float eps,
    float weight_decay, float decay, float step_size,
    float bias_correction2_sqrt) {
  for (std::int64_t i = 0; i < n; ++i) {
    float w = p[i];
    float grad = g[i];
    if constexpr (Decoupled) {
      w *= decay;
    } else {
      grad += weight_decay * w;
    }
    const float mi = m[i] * beta1 + (1 - beta1) * grad;
    const float vi = v[i] * beta2 + (1 - beta2) * grad * grad;
    m[i] = mi;
    v[i] = vi;
    const float denom = std::sqrt(vi) / bias_correction2_sqrt + eps;
    p[i] = w - step_size * (mi / denom);
  }
}

}  // namespace

CHORUS_TARGET_CLONES void dropout_mask(float* __restrict__ out,
                                       std::int64_t begin, std::int64_t end,
                                       std::uint64_t key,
                                       std::uint32_t keep_below, float scale) {
  const auto k0 = static_cast<std::uint32_t>(key);
  const auto k1 = static_cast<std::uint32_t>(key >> 32);
  // Compared as signed after flipping the top bit: SSE2 and AVX2 have no
  // unsigned 32-bit comparison.
  const auto limit = static_cast<std::int32_t>(keep_below ^ 0x80000000U);
  for (std::int64_t i = begin; i < end; ++i) {
    const std::uint32_t h =
        mix32(mix32(static_cast<std::uint32_t>(i) + k0) ^ k1);
    out[i] = static_cast<std::int32_t>(h ^ 0x80000000U) < limit ? scale : 0.0f;
  }
}

void adam(float* p, const float* g, float* m, float* v, std::int64_t begin,
          std::int64_t end, const AdamStep& s) {
  const float decay = 1 - s.lr * s.weight_decay;
  const float step_size = s.lr / s.bias_correction1;
  const auto n = end - begin;
  if (s.decoupled) {
    adam_loop<true>(p + begin, g + begin, m + begin, v + begin, n, s.beta1,
                    s.beta2, s.eps, s.weight_decay, decay, step_size,
                    s.bias_correction2_sqrt);
  } else {
    adam_loop<false>(p + begin, g + begin, m + begin, v + begin, n, s.beta1,
                     s.beta2, s.eps, s.weight_decay, decay, step_size,
                     s.bias_correction2_sqrt);
  }
}

}  // namespace chorus::fusion::kernels
