#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "chorus/fusion/oracle.hpp"

/// Algorithm 1 of ALGORITHMS.md: the B+ and Bmax ensembles (baselines; they
/// need every expert online at prediction time).
namespace chorus::fusion {

/// Maps probabilities over an expert's `labels` [N, |labels|] into the shared
/// space [N, num_classes], zeros for classes the expert does not know.
torch::Tensor lift(const torch::Tensor& probs,
                   const std::vector<std::int64_t>& labels,
                   std::int64_t num_classes);

/// Lifts every expert's answer (in `experts` order).
std::vector<torch::Tensor> lift_all(const std::vector<torch::Tensor>& answers,
                                    const std::vector<ExpertInfo>& experts,
                                    std::int64_t num_classes);

/// Lifts every expert's answer (in `oracle`'s expert order).
std::vector<torch::Tensor> lift_all(const std::vector<torch::Tensor>& answers,
                                    const QueryOracle& oracle);

/// Rows of non-negative scores [N, C] divided by their sums: distributions.
/// A row that sums to zero stays zero (no NaN).
torch::Tensor normalise_rows(const torch::Tensor& scores);

/// B+(x) = normalise(Σ_i lift(η_i(x))), from already lifted answers.
torch::Tensor ensemble_sum(const std::vector<torch::Tensor>& lifted);

/// Bmax(x) = normalise(max_i lift(η_i(x))), from already lifted answers.
torch::Tensor ensemble_max(const std::vector<torch::Tensor>& lifted);

}  // namespace chorus::fusion
