#include "chorus/fusion/ensemble.hpp"

#include <torch/torch.h>

#include "chorus/core/error.hpp"

namespace chorus::fusion {
torch::Tensor normalise_rows(const torch::Tensor& scores) {
  return scores / scores.sum(1, /*keepdim=*/true).clamp_min(1e-12);
}

torch::Tensor lift(const torch::Tensor& probs,
                   const std::vector<std::int64_t>& labels,
                   std::int64_t num_classes) {
  CHORUS_CHECK(probs.dim() == 2 &&
                   probs.size(1) == static_cast<std::int64_t>(labels.size()),
               "lift: {} columns for {} labels",
               probs.dim() == 2 ? probs.size(1) : -1, labels.size());
  auto out = torch::zeros({probs.size(0), num_classes}, probs.options());
  out.index_copy_(1, torch::tensor(labels, torch::kLong), probs);
  return out;
}

std::vector<torch::Tensor> lift_all(const std::vector<torch::Tensor>& answers,
                                    const std::vector<ExpertInfo>& experts,
                                    std::int64_t num_classes) {
  CHORUS_CHECK(answers.size() == experts.size(),
               "lift_all: {} answers for {} experts", answers.size(),
               experts.size());
  std::vector<torch::Tensor> out;
  for (std::size_t i = 0; i < answers.size(); ++i) {
    out.push_back(lift(answers[i], experts[i].labels, num_classes));
  }
  return out;
}

std::vector<torch::Tensor> lift_all(const std::vector<torch::Tensor>& answers,
                                    const QueryOracle& oracle) {
  return lift_all(answers, oracle.experts(), oracle.num_classes());
}

torch::Tensor ensemble_sum(const std::vector<torch::Tensor>& lifted) {
  CHORUS_CHECK(!lifted.empty(), "ensemble of no experts");
  return normalise_rows(torch::stack(lifted).sum(0));
}

torch::Tensor ensemble_max(const std::vector<torch::Tensor>& lifted) {
  CHORUS_CHECK(!lifted.empty(), "ensemble of no experts");
  return normalise_rows(std::get<0>(torch::stack(lifted).max(0)));
}

}  // namespace chorus::fusion
