#pragma once
// What the tae sources share: the Gaussian helpers, the ELBO and the
// PAC-Bayes bound (each written once). Private to fusion/src.

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "chorus/fusion/tae.hpp"

namespace chorus::fusion::tae_internal {

inline constexpr double kLogvarMin = -8.0, kLogvarMax = 6.0;

inline torch::Tensor clamp_logvar(const torch::Tensor& v) {
  return v.clamp(kLogvarMin, kLogvarMax);
}

// Offsets from the model's seed of the generators that draw w: the
// bound's fixed draws, adaptation's, prediction's and the input encoder's
// training draws.
inline constexpr std::uint64_t kBoundStream = 7919, kAdaptStream = 7927,
                               kPredictStream = 7933,
                               kInputEncoderStream = 7937,
                               kAnswerEncoderStream = 7949,
                               kCentreStream = 7951, kShiftStream = 7963;

// Whether the encoders of the input get the convolutional trunk: channels
// asked for, and images [C, H, W] of at least 4×4 (two 2×2 poolings).
inline bool takes_conv_trunk(const TaeNetworkOptions& o) {
  const auto& shape = o.image_shape();
  return o.conv_channels() > 0 && shape.size() == 3 && shape[1] >= 4 &&
         shape[2] >= 4;
}

// log p(x) of pixels in [0, 1] under Bernoulli logits, summed per row [N].
inline torch::Tensor bernoulli_log_likelihood(const torch::Tensor& logits,
                                              const torch::Tensor& x) {
  return -torch::binary_cross_entropy_with_logits(logits, x, {}, {},
                                                  at::Reduction::None)
              .sum(1);
}

// A draw of N(mean, exp(logvar)) from `gen`.
inline torch::Tensor sample(const torch::Tensor& mean,
                            const torch::Tensor& logvar, at::Generator& gen) {
  return mean + torch::exp(0.5 * logvar) *
                    torch::randn(mean.sizes(), gen, mean.options());
}

// KL(N(m1, v1) ‖ N(m2, v2)) summed over the last dimension.
inline torch::Tensor kl_gauss(const torch::Tensor& m1, const torch::Tensor& lv1,
                              const torch::Tensor& m2,
                              const torch::Tensor& lv2) {
  return 0.5 * (lv2 - lv1 +
                (torch::exp(lv1) + (m1 - m2).pow(2)) / torch::exp(lv2) - 1)
                   .sum(-1);
}

// How many classes a task has: `classes`, or every output when empty.
inline std::int64_t task_width(const std::vector<std::int64_t>& classes,
                               std::int64_t outputs) {
  return classes.empty() ? outputs : static_cast<std::int64_t>(classes.size());
}

// Restricts log-scores [N, C] to `classes` and renormalises.
inline torch::Tensor restrict(const torch::Tensor& log_scores,
                              const std::vector<std::int64_t>& classes) {
  if (classes.empty()) return torch::log_softmax(log_scores, 1);
  auto idx = torch::tensor(classes, torch::kLong);
  return torch::log_softmax(log_scores.index_select(1, idx), 1);
}

// The PAC-Bayes objective of ALGORITHMS.md (tae, adaptation) for `shots`
// labelled examples: Ĝ + sqrt((KL + ln(d/δ)) / (2d − 1)). T is a tensor
// (adaptation, differentiable) or a double (reports).
template <class T>
T pac_bayes_bound(const T& gibbs, const T& kl, std::int64_t shots,
                  double delta) {
  using std::sqrt;
  using torch::sqrt;
  const double d = static_cast<double>(shots);
  return gibbs +
         sqrt((kl + std::log(d / delta)) / std::max(1.0, 2.0 * d - 1.0));
}

// The ELBO of rows (x, η, τ): log p_θ(x|w,z) + λ log p_α(η|z) − KL(q(z) ‖
// N(0, I)) − KL(q(w) ‖ p_γ(w|τ)) [N], with w and z drawn from q_φ with
// `draw` (training) or at their means when it is null (evaluation); `w` is
// the one used.
struct Elbo {
  torch::Tensor value;
  torch::Tensor w;
};
Elbo elbo(TaeNetImpl& net, const torch::Tensor& x, const torch::Tensor& eta,
          const torch::Tensor& tau, double label_weight, at::Generator* draw);

// The ELBO of the input alone under q_φ(w,z|x) and the shared decoder,
// log p_θ(x|w,z) − KL(q(w,z|x) ‖ N(0, I)) [N], with (w, z) drawn from `draw`
// (the training term of `encoder`), and the encoder's hidden layer
// [N, hidden] it was computed from.
struct InputElbo {
  torch::Tensor value;
  torch::Tensor features;
};
/// `seen`: what the encoder reads, when not x itself (a shifted view of
/// it: the encoder learns to find x's code from it).
InputElbo input_elbo(TaeNetImpl& net, const torch::Tensor& x,
                     at::Generator& draw,
                     TaeNetImpl::Encoder encoder = TaeNetImpl::Encoder::kInput,
                     const torch::Tensor& seen = {});

/// Each image of flat rows x (images of `shape` [C, H, W]) moved by its
/// own random offset of at most `r` pixels in each direction, the space
/// left behind filled with zeros.
torch::Tensor random_shifts(const torch::Tensor& x,
                            const std::vector<std::int64_t>& shape,
                            std::int64_t r, at::Generator& gen);

}  // namespace chorus::fusion::tae_internal
