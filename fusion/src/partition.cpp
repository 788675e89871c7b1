#include "chorus/fusion/partition.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "chorus/core/error.hpp"

namespace chorus::fusion {
namespace {

torch::Tensor to_tensor(std::vector<std::int64_t> v, bool sort = true) {
  if (sort) std::sort(v.begin(), v.end());
  return torch::tensor(v, torch::kLong);
}

std::vector<std::int64_t> shuffled(std::int64_t n, std::mt19937_64& rng) {
  std::vector<std::int64_t> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  std::shuffle(v.begin(), v.end(), rng);
  return v;
}

}  // namespace

torch::Tensor class_subset_indices(const torch::Tensor& labels,
                                   const std::vector<std::int64_t>& classes) {
  auto mask = torch::zeros_like(labels, torch::kBool);
  for (auto c : classes) mask |= labels.eq(c);
  return mask.nonzero().flatten();
}

torch::Tensor to_local_labels(const torch::Tensor& labels,
                              const std::vector<std::int64_t>& task) {
  auto out = torch::full_like(labels, -1);
  for (std::size_t j = 0; j < task.size(); ++j) {
    out.masked_fill_(labels.eq(task[j]), static_cast<std::int64_t>(j));
  }
  return out;
}

std::vector<torch::Tensor> iid_partition(std::int64_t n, std::int64_t parts,
                                         std::uint64_t seed) {
  CHORUS_CHECK(parts > 0 && n >= parts,
               "iid partition: cannot deal {} examples into {} parts", n,
               parts);
  std::mt19937_64 rng(seed);
  auto order = shuffled(n, rng);
  std::vector<torch::Tensor> out;
  for (std::int64_t p = 0; p < parts; ++p) {
    auto begin = order.begin() + p * n / parts;
    auto end = order.begin() + (p + 1) * n / parts;
    out.push_back(to_tensor({begin, end}));
  }
  return out;
}

std::vector<torch::Tensor> dirichlet_partition(const torch::Tensor& labels,
                                               std::int64_t parts, double alpha,
                                               std::uint64_t seed) {
  CHORUS_CHECK(parts > 0, "dirichlet partition: parts must be positive");
  CHORUS_CHECK(alpha > 0, "dirichlet partition: alpha must be positive, got {}",
               alpha);
  std::mt19937_64 rng(seed);
  std::gamma_distribution<double> gamma(alpha, 1.0);
  auto labels_cpu = labels.to(torch::kLong).contiguous();
  const std::int64_t num_classes =
      labels.numel() ? labels_cpu.max().item<std::int64_t>() + 1 : 0;
  std::vector<std::vector<std::int64_t>> members(parts);
  for (std::int64_t c = 0; c < num_classes; ++c) {
    auto idx = labels_cpu.eq(c).nonzero().flatten();
    std::vector<std::int64_t> items(idx.data_ptr<std::int64_t>(),
                                    idx.data_ptr<std::int64_t>() + idx.numel());
    std::shuffle(items.begin(), items.end(), rng);
    std::vector<double> w(parts);
    double sum = 0;
    for (auto& x : w) sum += (x = gamma(rng));
    std::size_t start = 0;
    double acc = 0;
    for (std::int64_t p = 0; p < parts; ++p) {
      acc += w[p] / sum;
      std::size_t end = p + 1 == parts
                            ? items.size()
                            : static_cast<std::size_t>(acc * items.size());
      end = std::max(end, start);
      members[p].insert(members[p].end(), items.begin() + start,
                        items.begin() + end);
      start = end;
    }
  }
  std::vector<torch::Tensor> out;
  for (auto& m : members) out.push_back(to_tensor(std::move(m)));
  return out;
}

P1Split p1_split(const torch::Tensor& labels, const P1Options& o) {
  const std::int64_t n = labels.size(0);
  const std::int64_t c = o.num_classes();
  CHORUS_CHECK(o.experts() > 0, "p1: experts must be positive");
  CHORUS_CHECK(o.classes_per_expert() >= 2 && o.classes_per_expert() <= c,
               "p1: classes_per_expert must be in 2..{}, got {}", c,
               o.classes_per_expert());
  CHORUS_CHECK(o.transfer_size() > 0 && o.transfer_size() < n,
               "p1: transfer_size must be in 1..{}, got {}", n - 1,
               o.transfer_size());
  CHORUS_CHECK(o.fusion_labels() >= 0 && o.fusion_labels() <= o.transfer_size(),
               "p1: fusion_labels must be in 0..transfer_size ({}), got {}",
               o.transfer_size(), o.fusion_labels());
  CHORUS_CHECK(n - o.transfer_size() >= o.experts(),
               "p1: {} private examples cannot feed {} experts",
               n - o.transfer_size(), o.experts());

  std::mt19937_64 rng(o.seed());
  auto order = shuffled(n, rng);
  P1Split split;
  // U first (its first `fusion_labels` form V), the rest private.
  std::vector<std::int64_t> transfer(order.begin(),
                                     order.begin() + o.transfer_size());
  split.transfer = to_tensor(transfer, /*sort=*/false);
  split.fusion = split.transfer.slice(0, 0, o.fusion_labels()).clone();
  std::vector<std::int64_t> priv(order.begin() + o.transfer_size(),
                                 order.end());
  auto labels_cpu = labels.to(torch::kLong);
  for (std::int64_t i = 0; i < o.experts(); ++i) {
    auto begin = priv.begin() + i * std::ssize(priv) / o.experts();
    auto end = priv.begin() + (i + 1) * std::ssize(priv) / o.experts();
    auto shard = to_tensor({begin, end});
    std::vector<std::int64_t> task = {(2 * i) % c, (2 * i + 1) % c};
    std::vector<std::int64_t> others;
    for (std::int64_t k = 0; k < c; ++k) {
      if (std::find(task.begin(), task.end(), k) == task.end()) {
        others.push_back(k);
      }
    }
    std::shuffle(others.begin(), others.end(), rng);
    task.insert(task.end(), others.begin(),
                others.begin() + (o.classes_per_expert() - 2));
    std::sort(task.begin(), task.end());
    auto keep = class_subset_indices(labels_cpu.index_select(0, shard), task);
    split.expert_train.push_back(shard.index_select(0, keep));
    split.shards.push_back(std::move(shard));
    split.tasks.push_back(std::move(task));
  }
  return split;
}

}  // namespace chorus::fusion
