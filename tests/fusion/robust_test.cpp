#include "chorus/fusion/robust.hpp"

#include <torch/torch.h>

#include "chorus/core/error.hpp"
#include "chorus/fusion/algorithms.hpp"
#include "chorus/fusion/random.hpp"
#include "support/doctest.hpp"
#include "synthetic.hpp"

namespace fu = chorus::fusion;
using chorus::testing::Blobs;

namespace {

// Five experts on three of six classes each; expert 1 can be poisoned.
struct PoisonWorld {
  Blobs train, test;
  fu::LocalOracle honest{6};
  fu::PoisonedOracle poisoned{honest, 1, 9};

  PoisonWorld() {
    train = chorus::testing::make_blobs(1200, 6, 8, /*seed=*/3, /*noise=*/1.5);
    test = chorus::testing::resample_blobs(600, 6, 8, 3, 33, 1.5);
    const std::vector<std::vector<std::int64_t>> tasks = {
        {0, 1, 2}, {2, 3, 4}, {4, 5, 0}, {1, 3, 5}, {0, 2, 4}};
    for (std::size_t i = 0; i < tasks.size(); ++i) {
      honest.add_expert({fmt::format("e{}", i), tasks[i]},
                        chorus::testing::train_expert(train, tasks[i], 20 + i));
    }
  }

  fu::FusionData data(fu::QueryOracle& oracle) {
    fu::FusionData d;
    d.num_classes = 6;
    d.experts = oracle.experts();
    d.transfer = train.x;
    d.answers = oracle.query_all(train.x);
    d.fusion_index = torch::arange(300, torch::kLong);
    d.fusion_labels = train.y.slice(0, 0, 300);
    return d;
  }
};

PoisonWorld& poison_world() {
  static PoisonWorld w;
  return w;
}

double fused_accuracy(const std::string& algorithm, bool robust,
                      fu::QueryOracle& oracle) {
  auto& w = poison_world();
  auto fuser = fu::make_fuser(
      algorithm, fu::AlgorithmOptions().seed(1).threads(1).robust(robust));
  fuser->fit(w.data(oracle));
  return fu::accuracy(fuser->predict(oracle, w.test.x), w.test.y);
}

}  // namespace

TEST_CASE(
    "robust: an expert answering confidently wrong is judged untrusted, "
    "against V's labels and against the others without them") {
  auto& w = poison_world();
  auto d = w.data(w.poisoned);
  for (bool labelled : {true, false}) {
    CAPTURE(labelled);
    auto verdicts =
        fu::judge_experts(d.fusion_answers(), d.experts, 6,
                          labelled ? d.fusion_labels : torch::Tensor(), 0.5);
    REQUIRE(verdicts.size() == 5);
    for (std::size_t i = 0; i < verdicts.size(); ++i) {
      CAPTURE(i);
      CHECK(verdicts[i].trusted == (i != 1));
      CHECK(verdicts[i].against == (labelled ? "labels" : "consensus"));
      CHECK(verdicts[i].chance == doctest::Approx(1.0 / 3));
    }
    CHECK(verdicts[1].agreement < 0.15);
    CHECK(verdicts[0].agreement > (labelled ? 0.9 : 0.6));
    CHECK_MESSAGE(verdicts[1].reason.find(labelled ? "V's labels"
                                                   : "the other experts") !=
                      std::string::npos,
                  verdicts[1].reason);
  }
  // Honest experts: nobody is left out.
  auto honest = w.data(w.honest);
  for (bool labelled : {true, false}) {
    for (const auto& v : fu::judge_experts(
             honest.fusion_answers(), honest.experts, 6,
             labelled ? honest.fusion_labels : torch::Tensor(), 0.5)) {
      CHECK_MESSAGE(v.trusted, v.name, " ", v.reason);
    }
  }
}

TEST_CASE(
    "robust: at most half the experts are left out, the least agreeing "
    "first") {
  // Four experts on two classes; three answer at random, one is right.
  auto labels =
      torch::tensor({0, 1, 0, 1, 0, 1, 0, 1}, torch::kLong).repeat({10});
  std::vector<fu::ExpertInfo> experts;
  std::vector<torch::Tensor> answers;
  auto gen = fu::make_generator(2);
  for (int i = 0; i < 4; ++i) {
    experts.push_back({fmt::format("e{}", i), {0, 1}});
    answers.push_back(i == 0
                          ? torch::one_hot(labels, 2).to(torch::kFloat32)
                          : torch::one_hot(1 - labels, 2).to(torch::kFloat32));
  }
  auto verdicts = fu::judge_experts(answers, experts, 2, labels, 0.5);
  int left = 0;
  for (const auto& v : verdicts) left += v.trusted ? 0 : 1;
  CHECK(left == 2);
  CHECK(verdicts[0].trusted);
  CHECK_THROWS_WITH_AS(fu::judge_experts(answers, experts, 2, labels, 1.5),
                       doctest::Contains("fraction 1.5"), chorus::Error);
  CHECK_THROWS_WITH_AS(
      fu::make_fuser("foe",
                     fu::AlgorithmOptions().robust(true).robust_fraction(-0.1)),
      doctest::Contains("fraction -0.1"), chorus::Error);
}

TEST_CASE(
    "robust: fusion with a poisoned node stays near the honest run and "
    "never asks the untrusted node") {
  auto& w = poison_world();
  const double honest = fused_accuracy("foe", false, w.honest);
  w.poisoned.reset_stats();
  const double robust = fused_accuracy("foe", true, w.poisoned);
  MESSAGE("foe honest ", honest, ", robust with a poisoned node ", robust);
  CHECK(robust > honest - 0.03);
  // The untrusted node answered U for the fit, and nothing at prediction.
  CHECK(w.poisoned.stats(1).inputs == w.train.x.size(0));
  CHECK(w.poisoned.stats(0).inputs == w.train.x.size(0) + w.test.x.size(0));
  // An ensemble trusts every vote: the poison shows, robust fusion mends it.
  const double bmax_plain = fused_accuracy("bmax", false, w.poisoned);
  const double bmax_robust = fused_accuracy("bmax", true, w.poisoned);
  MESSAGE("bmax with a poisoned node ", bmax_plain, ", robust ", bmax_robust);
  CHECK(bmax_robust > bmax_plain + 0.05);
  // The saved model names who was left out.
  auto fuser = fu::make_fuser("foe", fu::AlgorithmOptions().robust(true));
  fuser->fit(w.data(w.poisoned));
  REQUIRE(fuser->fused_model().has_value());
  CHECK(fuser->fused_model()->attributes.at("left_out") == "e1");
  auto verdicts = fu::expert_verdicts(*fuser);
  REQUIRE(verdicts.size() == 5);
  CHECK_FALSE(verdicts[1].trusted);
  CHECK(fu::expert_verdicts(*fu::make_fuser("foe")).empty());
}
