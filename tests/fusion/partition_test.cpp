#include "chorus/fusion/partition.hpp"

#include "chorus/core/error.hpp"
#include "support/doctest.hpp"

namespace fu = chorus::fusion;

namespace {

// Every index 0..n-1 exactly once across the parts.
bool covers_exactly(const std::vector<torch::Tensor>& parts, std::int64_t n) {
  auto all = torch::cat(parts);
  if (all.numel() != n) return false;
  return torch::equal(std::get<0>(all.sort()), torch::arange(n, torch::kLong));
}

torch::Tensor balanced_labels(std::int64_t n, std::int64_t classes) {
  return torch::arange(n, torch::kLong).remainder(classes);
}

}  // namespace

TEST_CASE("partition: iid parts cover every index once, near-equal, seeded") {
  auto parts = fu::iid_partition(103, 5, 7);
  CHECK(parts.size() == 5);
  CHECK(covers_exactly(parts, 103));
  for (const auto& p : parts) CHECK((p.numel() == 20 || p.numel() == 21));
  CHECK(torch::equal(parts[2], fu::iid_partition(103, 5, 7)[2]));
  CHECK_FALSE(torch::equal(parts[2], fu::iid_partition(103, 5, 8)[2]));
  CHECK_THROWS_AS(fu::iid_partition(3, 5, 0), chorus::Error);
}

TEST_CASE(
    "partition: dirichlet covers every index once and skews with small alpha") {
  auto labels = balanced_labels(5000, 10);
  auto skew_of = [&](double alpha) {
    auto parts = fu::dirichlet_partition(labels, 5, alpha, 3);
    REQUIRE(covers_exactly(parts, 5000));
    // Mean over parts of the largest class share.
    double sum = 0;
    for (const auto& p : parts) {
      if (p.numel() == 0) {
        sum += 1;
        continue;
      }
      auto counts = torch::bincount(labels.index_select(0, p), {}, 10);
      sum += counts.max().item<double>() / p.numel();
    }
    return sum / parts.size();
  };
  double skewed = skew_of(0.1), mild = skew_of(100.0);
  CHECK(skewed > 0.4);
  CHECK(mild < 0.15);
  CHECK_THROWS_AS(fu::dirichlet_partition(labels, 5, 0.0, 0), chorus::Error);
}

TEST_CASE("partition: P1 split has the protocol's sizes and tasks") {
  auto labels = balanced_labels(60000, 10);
  auto split = fu::p1_split(labels, fu::P1Options().seed(11));
  CHECK(split.transfer.numel() == 10000);
  CHECK(split.fusion.numel() == 500);
  CHECK(torch::equal(split.fusion, split.transfer.slice(0, 0, 500)));
  REQUIRE(split.shards.size() == 5);
  std::vector<torch::Tensor> everything = split.shards;
  everything.push_back(split.transfer);
  CHECK(covers_exactly(everything, 60000));
  for (std::int64_t i = 0; i < 5; ++i) {
    CAPTURE(i);
    const auto& task = split.tasks[i];
    CHECK(task.size() == 4);
    CHECK(std::count(task.begin(), task.end(), 2 * i) == 1);
    CHECK(std::count(task.begin(), task.end(), 2 * i + 1) == 1);
    CHECK(std::set<std::int64_t>(task.begin(), task.end()).size() == 4);
    CHECK(split.shards[i].numel() == 10000);
    // The expert trains on its shard's examples of its task, and only those.
    auto own = labels.index_select(0, split.expert_train[i]);
    auto in_task = torch::zeros_like(own, torch::kBool);
    for (auto c : task) in_task |= own.eq(c);
    CHECK(in_task.all().item<bool>());
    CHECK(
        torch::isin(split.expert_train[i], split.shards[i]).all().item<bool>());
    CHECK(split.expert_train[i].numel() == doctest::Approx(4000).epsilon(0.05));
  }
  auto again = fu::p1_split(labels, fu::P1Options().seed(11));
  CHECK(again.tasks == split.tasks);
  CHECK(torch::equal(again.transfer, split.transfer));
}

TEST_CASE("partition: P1 sizes that do not fit are INVALID_ARGUMENT") {
  auto labels = balanced_labels(1000, 10);
  CHECK_THROWS_AS(fu::p1_split(labels, fu::P1Options()), chorus::Error);
  CHECK_THROWS_AS(
      fu::p1_split(labels,
                   fu::P1Options().transfer_size(100).fusion_labels(101)),
      chorus::Error);
  CHECK_THROWS_AS(
      fu::p1_split(labels,
                   fu::P1Options().transfer_size(100).classes_per_expert(11)),
      chorus::Error);
  CHECK_NOTHROW(fu::p1_split(
      labels, fu::P1Options().transfer_size(100).fusion_labels(50)));
}
