#include "chorus/fusion/gnmax.hpp"

#include <fmt/ostream.h>
#include <torch/torch.h>

#include <cmath>

#include "chorus/core/error.hpp"

namespace chorus::fusion {

torch::Tensor vote_histogram(const std::vector<torch::Tensor>& teachers) {
  CHORUS_CHECK(!teachers.empty(), "GNMax needs at least one teacher");
  const auto& first = teachers.front();
  CHORUS_CHECK(first.dim() == 2 && first.size(1) > 0,
               "a teacher's answers must be [N, C], got {}",
               fmt::streamed(first.sizes()));
  auto votes = torch::zeros({first.size(0), first.size(1)}, torch::kFloat32);
  for (const auto& t : teachers) {
    CHORUS_CHECK(t.sizes() == first.sizes(),
                 "teachers answered {} and {}: every teacher must answer the "
                 "same inputs over the same classes",
                 fmt::streamed(first.sizes()), fmt::streamed(t.sizes()));
    votes.scatter_add_(1, t.argmax(1, /*keepdim=*/true),
                       torch::ones({t.size(0), 1}, torch::kFloat32));
  }
  return votes;
}

torch::Tensor noisy_argmax(const torch::Tensor& votes, double sigma,
                           at::Generator& gen) {
  CHORUS_CHECK(sigma > 0 && std::isfinite(sigma),
               "GNMax's sigma must be positive and finite, got {}", sigma);
  CHORUS_CHECK(votes.dim() == 2 && votes.size(1) > 0,
               "GNMax's votes must be [N, C], got {}",
               fmt::streamed(votes.sizes()));
  auto v = votes.to(torch::kFloat32);
  auto noisy = v + at::normal(0.0, sigma, v.sizes(), gen);
  return torch::zeros_like(v)
      .scatter_(1, noisy.argmax(1, /*keepdim=*/true), 1.0)
      .contiguous();
}

}  // namespace chorus::fusion
