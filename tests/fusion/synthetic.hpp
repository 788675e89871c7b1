#pragma once
// Small synthetic problems for fusion tests: Gaussian blobs in R^d, one per
// class, and experts trained on subsets of the classes.
#include <memory>
#include <vector>

#include "chorus/fusion/models.hpp"
#include "chorus/fusion/oracle.hpp"
#include "chorus/fusion/train.hpp"
#include "support/doctest.hpp"

namespace chorus::testing {

struct Blobs {
  torch::Tensor x;  // float [N, dim]
  torch::Tensor y;  // int64 [N]
};

/// `n` points of `classes` well-separated Gaussian blobs in R^dim.
inline Blobs make_blobs(std::int64_t n, std::int64_t classes,
                        std::int64_t dim = 8, std::uint64_t seed = 0,
                        double noise = 0.5) {
  auto gen = at::detail::createCPUGenerator(seed);
  auto centres = torch::randn({classes, dim}, gen) * 3.0;
  auto y = torch::randint(classes, {n}, gen, torch::kLong);
  auto x = centres.index_select(0, y) + noise * torch::randn({n, dim}, gen);
  return {x, y};
}

/// Draws a second sample from the same blobs (same centres, other noise).
inline Blobs resample_blobs(std::int64_t n, std::int64_t classes,
                            std::int64_t dim, std::uint64_t seed,
                            std::uint64_t sample_seed, double noise = 0.5) {
  auto gen = at::detail::createCPUGenerator(seed);
  auto centres = torch::randn({classes, dim}, gen) * 3.0;
  auto gen2 = at::detail::createCPUGenerator(sample_seed);
  auto y = torch::randint(classes, {n}, gen2, torch::kLong);
  auto x = centres.index_select(0, y) + noise * torch::randn({n, dim}, gen2);
  return {x, y};
}

/// Trains an MLP expert on the points of `task` (labels remapped to
/// 0..|task|-1) and returns it.
inline std::shared_ptr<fusion::ClassifierImpl> train_expert(
    const Blobs& data, const std::vector<std::int64_t>& task,
    std::uint64_t seed) {
  auto mask = torch::zeros_like(data.y, torch::kBool);
  auto local = torch::full_like(data.y, -1);
  for (std::size_t j = 0; j < task.size(); ++j) {
    mask |= data.y.eq(task[j]);
    local.masked_fill_(data.y.eq(task[j]), static_cast<std::int64_t>(j));
  }
  auto idx = mask.nonzero().flatten();
  torch::manual_seed(seed);
  auto model = fusion::make_classifier(
      fusion::ModelSpec{.arch = "mlp",
                        .input_shape = {data.x.size(1)},
                        .num_classes = static_cast<std::int64_t>(task.size()),
                        .hidden = {32}});
  fusion::train(
      *model, data.x.index_select(0, idx), local.index_select(0, idx),
      fusion::TrainOptions().epochs(15).batch_size(32).lr(3e-3).seed(seed));
  return model;
}

}  // namespace chorus::testing
