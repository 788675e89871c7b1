#include "chorus/fusion/foe.hpp"

#include <map>

#include "chorus/core/error.hpp"
#include "chorus/fusion/algorithms.hpp"
#include "chorus/fusion/distill.hpp"
#include "chorus/fusion/ensemble.hpp"
#include "chorus/fusion/frugal.hpp"
#include "support/doctest.hpp"
#include "support/temp_dir.hpp"
#include "synthetic.hpp"

namespace fu = chorus::fusion;
using chorus::testing::Blobs;

namespace {

// Three experts on 4 classes of blobs, each knowing only part of them, and
// their answers on a labelled fusion set V and a test set.
struct World {
  Blobs train, v, test;
  fu::LocalOracle oracle{4};
  std::vector<torch::Tensor> answers_v, answers_test;

  World() {
    train = chorus::testing::make_blobs(600, 4, 8, /*seed=*/5, /*noise=*/1.2);
    v = chorus::testing::resample_blobs(200, 4, 8, 5, /*sample_seed=*/50, 1.2);
    test =
        chorus::testing::resample_blobs(400, 4, 8, 5, /*sample_seed=*/51, 1.2);
    const std::vector<std::vector<std::int64_t>> tasks = {
        {0, 1}, {1, 2, 3}, {0, 3}};
    for (std::size_t i = 0; i < tasks.size(); ++i) {
      oracle.add_expert({fmt::format("e{}", i), tasks[i]},
                        chorus::testing::train_expert(train, tasks[i], 10 + i));
    }
    answers_v = oracle.query_all(v.x);
    answers_test = oracle.query_all(test.x);
    oracle.reset_stats();
  }
};

World& world() {
  static World w;
  return w;
}

// The round data an algorithm is fitted on: answers on the training points,
// the first 200 of them labelled.
fu::FusionData round_data(World& w) {
  fu::FusionData data;
  data.num_classes = 4;
  data.experts = w.oracle.experts();
  data.transfer = w.train.x;
  data.answers = w.oracle.query_all(w.train.x);
  data.fusion_index = torch::arange(200, torch::kLong);
  data.fusion_labels = w.train.y.slice(0, 0, 200);
  return data;
}

fu::FoeOptions quick_foe() {
  return fu::FoeOptions().hidden({64, 64}).epochs(60).batch_size(32);
}

}  // namespace

TEST_CASE("foe: the fuser beats the B+ ensemble on complementary experts") {
  auto& w = world();
  double bplus = fu::accuracy(
      fu::ensemble_sum(fu::lift_all(w.answers_test, w.oracle)), w.test.y);
  for (auto form : {fu::FoeFeatures::kProbs, fu::FoeFeatures::kLogProbs}) {
    fu::Foe foe(quick_foe().features(form));
    foe.fit(w.answers_v, w.v.y, 4);
    double acc = fu::accuracy(foe.predict_proba(w.answers_test), w.test.y);
    CAPTURE(bplus);
    CHECK(acc > 0.85);
    CHECK(acc > bplus);
  }
}

TEST_CASE("foe: a saved fuser predicts identically after loading") {
  auto& w = world();
  chorus::testing::TempDir dir;
  fu::Foe foe(quick_foe().features(fu::FoeFeatures::kLogProbs));
  foe.fit(w.answers_v, w.v.y, 4);
  fu::save_fused_model(foe.to_fused_model(), dir / "foe.pt");
  auto loaded = fu::Foe::from_fused_model(fu::load_fused_model(dir / "foe.pt"));
  CHECK(loaded.options().features() == fu::FoeFeatures::kLogProbs);
  CHECK(torch::equal(loaded.predict_proba(w.answers_test),
                     foe.predict_proba(w.answers_test)));
}

TEST_CASE("foe: misuse is refused") {
  auto& w = world();
  fu::Foe foe(quick_foe());
  try {
    foe.predict_proba(w.answers_test);
    FAIL("no error");
  } catch (const chorus::Error& e) {
    CHECK(e.code() == chorus::Code::kFailedPrecondition);
  }
  CHECK_THROWS_AS(foe.fit(w.answers_v, w.test.y, 4), chorus::Error);
  foe.fit(w.answers_v, w.v.y, 4);
  std::vector<torch::Tensor> two(w.answers_test.begin(),
                                 w.answers_test.begin() + 2);
  CHECK_THROWS_AS(foe.predict_proba(two), chorus::Error);
}

TEST_CASE(
    "distill: a student reproduces its teacher without querying experts") {
  auto& w = world();
  auto teacher =
      fu::ensemble_sum(fu::lift_all(w.oracle.query_all(w.train.x), w.oracle));
  auto options = fu::DistillOptions().arch("mlp").epochs(15).batch_size(32);
  auto result = fu::distill(w.train.x, teacher, options, "distill");
  CHECK(result.model.algorithm == "distill");
  REQUIRE(result.train.best_val_accuracy.has_value());
  CHECK(*result.train.best_val_accuracy > 0.9);
  auto test_teacher = fu::ensemble_sum(fu::lift_all(w.answers_test, w.oracle));
  CHECK(fu::accuracy(fu::predict_proba(*result.model.model, w.test.x),
                     test_teacher) > 0.9);

  auto imitators = fu::distill_imitators(
      w.train.x, w.oracle.query_all(w.train.x), w.oracle, options);
  REQUIRE(imitators.size() == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    CAPTURE(i);
    CHECK(imitators[i].model.attributes.at("expert") == fmt::format("e{}", i));
    CHECK(imitators[i].model.spec.num_classes ==
          static_cast<std::int64_t>(w.oracle.experts()[i].labels.size()));
    CHECK(fu::accuracy(fu::predict_proba(*imitators[i].model.model, w.test.x),
                       w.answers_test[i]) > 0.9);
  }
}

TEST_CASE("distill: sharpening follows t^(1/T)") {
  auto p = torch::tensor({{0.2f, 0.8f}});
  auto s = fu::sharpen(p, 0.5);
  CHECK(s[0][1].item<float>() == doctest::Approx(0.64 / 0.68));
  CHECK(torch::equal(fu::sharpen(p, 1.0), p));
  CHECK_THROWS_AS(fu::sharpen(p, 0.0), chorus::Error);
}

TEST_CASE(
    "frugal: λ trades experts queried against accuracy, and counts are "
    "honest") {
  auto& w = world();
  fu::FrugalFoe frugal(fu::FrugalOptions().fuser(quick_foe()));
  frugal.fit(w.answers_v, w.v.y, 4);

  w.oracle.reset_stats();
  auto stingy = frugal.predict(w.oracle, w.test.x, /*lambda=*/10.0);
  CHECK(stingy.mean_experts() == 1.0);
  CHECK(w.oracle.total_stats().inputs == 400);

  w.oracle.reset_stats();
  auto eager = frugal.predict(w.oracle, w.test.x, /*lambda=*/-1.0);
  CHECK(eager.mean_experts() == 3.0);
  CHECK(w.oracle.total_stats().inputs == 1200);

  w.oracle.reset_stats();
  auto balanced = frugal.predict(w.oracle, w.test.x, /*lambda=*/0.0);
  CHECK(balanced.queried.sum().item<std::int64_t>() ==
        w.oracle.total_stats().inputs);
  CHECK(balanced.mean_experts() >= 1.0);
  CHECK(balanced.mean_experts() <= 3.0);

  double acc_stingy = fu::accuracy(stingy.probs, w.test.y);
  double acc_eager = fu::accuracy(eager.probs, w.test.y);
  double acc_balanced = fu::accuracy(balanced.probs, w.test.y);
  CAPTURE(acc_stingy);
  CAPTURE(acc_balanced);
  CHECK(acc_eager > 0.85);
  CHECK(acc_eager > acc_stingy + 0.1);  // One expert cannot know all classes.
  CHECK(acc_balanced > acc_eager - 0.05);
  CHECK(frugal.fusers_trained() <= 7);
}

TEST_CASE(
    "frugal: errors estimated on the transfer pool, labelled by the full "
    "fuser") {
  auto& w = world();
  const auto transfer =
      w.oracle.query_all(w.train.x);  // U: 600 unlabelled points.
  fu::FrugalFoe on_u(fu::FrugalOptions().fuser(quick_foe()));
  on_u.fit(w.answers_v, w.v.y, 4, transfer);
  w.oracle.reset_stats();
  auto eager = on_u.predict(w.oracle, w.test.x, /*lambda=*/-1.0);
  w.oracle.reset_stats();
  auto balanced = on_u.predict(w.oracle, w.test.x, /*lambda=*/0.0);
  CHECK(balanced.queried.sum().item<std::int64_t>() ==
        w.oracle.total_stats().inputs);
  CHECK(balanced.mean_experts() >= 1.0);
  CHECK(balanced.mean_experts() < 3.0);
  const double acc_eager = fu::accuracy(eager.probs, w.test.y);
  const double acc_balanced = fu::accuracy(balanced.probs, w.test.y);
  CAPTURE(acc_balanced);
  CHECK(acc_balanced > acc_eager - 0.03);

  // Switched off, the transfer answers change nothing (V's labels only).
  fu::FrugalFoe v_only(fu::FrugalOptions().fuser(quick_foe()));
  v_only.fit(w.answers_v, w.v.y, 4);
  fu::FrugalFoe off(
      fu::FrugalOptions().fuser(quick_foe()).estimate_on_transfer(false));
  off.fit(w.answers_v, w.v.y, 4, transfer);
  const auto v_only_queried = v_only.predict(w.oracle, w.test.x, 0.0).queried;
  CHECK(torch::equal(v_only_queried,
                     off.predict(w.oracle, w.test.x, 0.0).queried));
  // ... and switched on, they change which experts are asked.
  CHECK_FALSE(torch::equal(v_only_queried, balanced.queried));

  std::vector<torch::Tensor> two(transfer.begin(), transfer.begin() + 2);
  CHECK_THROWS_AS(on_u.fit(w.answers_v, w.v.y, 4, two), chorus::Error);
}

TEST_CASE(
    "frugal: costs by expert name steer which experts are asked, and the "
    "prediction reports what the queries cost") {
  auto& w = world();
  fu::FrugalFoe equal(fu::FrugalOptions().fuser(quick_foe()));
  equal.fit(w.answers_v, w.v.y, 4);
  w.oracle.reset_stats();
  const auto cheap = equal.predict(w.oracle, w.test.x, 0.02);
  // e1 knows three of the four classes: asked for most inputs at cost 1.
  REQUIRE(cheap.queried.select(1, 1).sum().item<std::int64_t>() > 200);
  CHECK(cheap.costs == std::vector<double>{1, 1, 1});
  CHECK(cheap.mean_cost() == doctest::Approx(cheap.mean_experts()));

  // Priced at 50, no error estimate can pay for e1 at λ = 0.02: it is never
  // asked, not even first. A name no expert has is ignored (a node absent
  // from this round).
  fu::FrugalFoe priced(
      fu::FrugalOptions()
          .fuser(quick_foe())
          .costs_by_name({{"e1", 50.0}, {"e0", 2.5}, {"absent", 7.0}}));
  priced.fit(w.answers_v, w.v.y, 4);
  w.oracle.reset_stats();
  const auto dear = priced.predict(w.oracle, w.test.x, 0.02);
  CHECK(dear.queried.select(1, 1).sum().item<std::int64_t>() == 0);
  CHECK(w.oracle.stats(1).inputs == 0);
  CHECK(w.oracle.total_stats().inputs ==
        dear.queried.sum().item<std::int64_t>());
  CHECK(dear.costs == std::vector<double>{2.5, 50, 1});
  const double expected = (dear.queried.select(1, 0).to(torch::kDouble) * 2.5 +
                           dear.queried.select(1, 2).to(torch::kDouble))
                              .mean()
                              .item<double>();
  CHECK(dear.mean_cost() == doctest::Approx(expected));
  CHECK(dear.mean_cost() > dear.mean_experts());  // e0 costs 2.5.

  // Refused: a cost that is not positive, costs by position and by name.
  fu::FrugalFoe bad(
      fu::FrugalOptions().fuser(quick_foe()).costs_by_name({{"e2", -1.0}}));
  bad.fit(w.answers_v, w.v.y, 4);
  std::string message;
  CHECK(chorus::testing::code_of([&] { bad.predict(w.oracle, w.test.x); },
                                 &message) == chorus::Code::kInvalidArgument);
  CHECK(message.find("the cost of expert 'e2' must be finite and positive") !=
        std::string::npos);
  fu::FrugalFoe both(fu::FrugalOptions()
                         .fuser(quick_foe())
                         .costs({1, 1, 1})
                         .costs_by_name({{"e0", 2.0}}));
  CHECK_THROWS_AS(both.fit(w.answers_v, w.v.y, 4), chorus::Error);
}

TEST_CASE(
    "algorithms: every named algorithm fits, predicts and accounts queries") {
  auto& w = world();
  auto data = round_data(w);
  auto options = fu::AlgorithmOptions().seed(3);
  options.foe(quick_foe().features(fu::FoeFeatures::kLogProbs));
  options.distill().arch("mlp").epochs(10);
  options.frugal().fuser(quick_foe());
  // Gibbs loss on, as in tae_test: with the default 0 tae reaches 0.28 on
  // these blobs (chance 0.25).
  options.tae()
      .network(fu::TaeNetworkOptions().prototypes(60))
      .training(fu::TaeTrainingOptions().epochs(20).gibbs_weight(50))
      .adaptation(fu::TaeAdaptationOptions().samples(5).steps(40));

  std::map<std::string, fu::FusionResult> results;
  for (const auto& name : fu::algorithm_names()) {
    CAPTURE(name);
    auto fuser = fu::make_fuser(name, options);
    CHECK(fuser->name() == name);
    results[name] = fu::run_fusion(*fuser, data, w.oracle, w.test.x, w.test.y);
    CHECK(results[name].algorithm == name);
    // tae models pixels in [0, 1] (a Bernoulli likelihood): on Gaussian
    // blobs, clamped to that range, it only has to beat chance (0.25).
    CHECK(results[name].accuracy > (name == "tae" ? 0.3 : 0.5));
    const bool has_model = fuser->fused_model().has_value();
    CHECK(has_model == (name == "distill" || name == "foe" ||
                        name == "foe-distill" || name == "foe-select" ||
                        name == "dro"));
  }
  CHECK(results["bplus"].queries_per_input == 3.0);
  CHECK(results["bplus"].bytes_sent == 3 * 400 * 8 * 4);
  CHECK(results["foe"].queries_per_input == 3.0);
  CHECK(results["distill"].queries_per_input == 0.0);
  CHECK(results["foe-distill"].queries_per_input == 0.0);
  CHECK(results["foe-select"].queries_per_input == 1.0);
  CHECK(results["frugal"].queries_per_input >= 1.0);
  CHECK(results["frugal"].queries_per_input <= 3.0);
  CHECK(results["foe"].accuracy > results["bplus"].accuracy);
  CHECK(results["foe-distill"].accuracy > results["foe"].accuracy - 0.05);
}

TEST_CASE("algorithms: unknown names and unlabelled data are refused") {
  try {
    fu::make_fuser("fedavg");
    FAIL("no error");
  } catch (const chorus::Error& e) {
    CHECK(std::string(e.what()).find("expected one of: bplus, bmax") !=
          std::string::npos);
  }
  auto& w = world();
  auto data = round_data(w);
  data.fusion_index = torch::Tensor();
  data.fusion_labels = torch::Tensor();
  auto foe = fu::make_fuser("foe");
  CHECK_THROWS_AS(foe->fit(data), chorus::Error);  // No V.
  data.answers.pop_back();
  CHECK_THROWS_AS(fu::make_fuser("bplus")->fit(data), chorus::Error);
}
