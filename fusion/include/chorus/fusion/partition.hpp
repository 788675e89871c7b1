#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

/// Deterministic splits of a labelled data set among experts.
namespace chorus::fusion {

/// Indices (int64, ascending) of the examples whose label is in `classes`.
torch::Tensor class_subset_indices(const torch::Tensor& labels,
                                   const std::vector<std::int64_t>& classes);

/// Labels of the shared space [N] as an expert's local output indices: the
/// position of each label in `task`, -1 for labels outside it.
torch::Tensor to_local_labels(const torch::Tensor& labels,
                              const std::vector<std::int64_t>& task);

/// `n` indices shuffled with `seed` and dealt into `parts` near-equal parts.
std::vector<torch::Tensor> iid_partition(std::int64_t n, std::int64_t parts,
                                         std::uint64_t seed);

/// Label-skewed split: for every class, its examples are dealt to the parts
/// in proportions drawn from Dirichlet(alpha). Smaller alpha, more skew.
std::vector<torch::Tensor> dirichlet_partition(const torch::Tensor& labels,
                                               std::int64_t parts, double alpha,
                                               std::uint64_t seed);

/// Protocol P1 of ALGORITHMS.md over a training set of N examples.
struct P1Split {
  /// Indices kept private (N − transfer_size), dealt IID into `shards`.
  std::vector<torch::Tensor> shards;
  /// Expert i's task: sorted class indices, {2i, 2i+1} (mod C) plus random
  /// others.
  std::vector<std::vector<std::int64_t>> tasks;
  /// Expert i's training indices: its shard restricted to its task.
  std::vector<torch::Tensor> expert_train;
  /// The public transfer pool U (labels unused by the algorithms).
  torch::Tensor transfer;
  /// The labelled fusion set V: the first `fusion_labels` indices of U.
  torch::Tensor fusion;
};

/// Options of `p1_split`.
struct P1Options {
  TORCH_ARG(std::int64_t, experts) = 5;
  TORCH_ARG(std::int64_t, classes_per_expert) = 4;
  TORCH_ARG(std::int64_t, num_classes) = 10;
  TORCH_ARG(std::int64_t, transfer_size) = 10'000;
  TORCH_ARG(std::int64_t, fusion_labels) = 500;
  TORCH_ARG(std::uint64_t, seed) = 0;
};

/// Splits `labels` (int64 [N]) per protocol P1. Throws `chorus::Error`
/// (INVALID_ARGUMENT) when the sizes do not fit.
P1Split p1_split(const torch::Tensor& labels, const P1Options& options);

}  // namespace chorus::fusion
