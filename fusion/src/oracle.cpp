#include "chorus/fusion/oracle.hpp"

#include <fmt/ostream.h>
#include <torch/torch.h>

#include "chorus/core/error.hpp"
#include "chorus/fusion/train.hpp"

namespace chorus::fusion {

QueryStats& QueryStats::operator+=(const QueryStats& other) {
  requests += other.requests;
  inputs += other.inputs;
  bytes_sent += other.bytes_sent;
  bytes_received += other.bytes_received;
  seconds += other.seconds;
  return *this;
}

torch::Tensor QueryOracle::query(std::int64_t expert,
                                 const torch::Tensor& inputs) {
  CHORUS_CHECK(expert >= 0 && expert < num_experts(),
               "no expert {} (there are {})", expert, num_experts());
  CHORUS_CHECK(inputs.defined() && inputs.dim() >= 1 && inputs.size(0) > 0,
               "a query needs at least one input");
  return accept(expert, inputs, do_query(expert, inputs));
}

torch::Tensor QueryOracle::accept(std::int64_t expert,
                                  const torch::Tensor& inputs,
                                  torch::Tensor out) {
  const auto& info = experts()[static_cast<std::size_t>(expert)];
  const auto width = static_cast<std::int64_t>(info.labels.size());
  CHORUS_CHECK_CODE(
      out.dim() == 2 && out.size(0) == inputs.size(0) && out.size(1) == width,
      Code::kDataLoss, "expert '{}' answered {} for {} inputs over {} labels",
      info.name, fmt::format("{}", fmt::streamed(out.sizes())), inputs.size(0),
      width);
  out = out.to(torch::kFloat32);
  CHORUS_CHECK_CODE(torch::isfinite(out).all().item<bool>(), Code::kDataLoss,
                    "expert '{}' answered non-finite probabilities", info.name);
  std::lock_guard lock(mutex_);
  if (stats_.size() < experts().size()) stats_.resize(experts().size());
  auto& s = stats_[static_cast<std::size_t>(expert)];
  s.requests += 1;
  s.inputs += inputs.size(0);
  s.bytes_sent += shipped_bytes(inputs);
  s.bytes_received +=
      out.numel() * static_cast<std::int64_t>(out.element_size());
  return out;
}

std::int64_t QueryOracle::shipped_bytes(const torch::Tensor& inputs) const {
  return inputs.numel() * static_cast<std::int64_t>(inputs.element_size());
}

std::vector<torch::Tensor> QueryOracle::query_all(const torch::Tensor& inputs) {
  std::vector<torch::Tensor> out;
  for (std::int64_t i = 0; i < num_experts(); ++i)
    out.push_back(query(i, inputs));
  return out;
}

QueryStats QueryOracle::stats(std::int64_t expert) const {
  std::lock_guard lock(mutex_);
  auto i = static_cast<std::size_t>(expert);
  return i < stats_.size() ? stats_[i] : QueryStats{};
}

QueryStats QueryOracle::total_stats() const {
  std::lock_guard lock(mutex_);
  QueryStats total;
  for (const auto& s : stats_) total += s;
  return total;
}

void QueryOracle::reset_stats() {
  std::lock_guard lock(mutex_);
  stats_.assign(stats_.size(), QueryStats{});
}

LocalOracle::LocalOracle(std::int64_t num_classes, std::int64_t batch_size,
                         int workers)
    : num_classes_(num_classes), batch_size_(batch_size), workers_(workers) {
  CHORUS_CHECK(num_classes > 0, "an oracle needs a positive number of classes");
  CHORUS_CHECK(batch_size > 0, "batch_size must be positive");
}

void LocalOracle::add_expert(ExpertInfo info,
                             std::shared_ptr<ClassifierImpl> model) {
  CHORUS_CHECK(model != nullptr, "expert '{}' has no model", info.name);
  CHORUS_CHECK(!info.labels.empty(), "expert '{}' has no labels", info.name);
  for (auto label : info.labels) {
    CHORUS_CHECK(label >= 0 && label < num_classes_,
                 "expert '{}': label {} outside 0..{}", info.name, label,
                 num_classes_ - 1);
  }
  infos_.push_back(std::move(info));
  models_.push_back(std::move(model));
}

std::vector<torch::Tensor> LocalOracle::query_all(const torch::Tensor& inputs) {
  std::vector<torch::Tensor> out(static_cast<std::size_t>(num_experts()));
  run_jobs(num_experts(), workers_, [&](std::int64_t i, int) {
    out[static_cast<std::size_t>(i)] = query(i, inputs);
  });
  return out;
}

torch::Tensor LocalOracle::do_query(std::int64_t expert,
                                    const torch::Tensor& inputs) {
  return predict_proba(*models_[static_cast<std::size_t>(expert)], inputs,
                       batch_size_);
}

}  // namespace chorus::fusion
