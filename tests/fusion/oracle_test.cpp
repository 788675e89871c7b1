#include "chorus/fusion/oracle.hpp"

#include "chorus/core/error.hpp"
#include "chorus/fusion/ensemble.hpp"
#include "support/doctest.hpp"
#include "synthetic.hpp"

namespace fu = chorus::fusion;

namespace {

// A broken black box: answers with a fixed tensor whatever it is asked.
class FixedAnswer : public fu::ClassifierImpl {
 public:
  explicit FixedAnswer(torch::Tensor logits) : logits_(std::move(logits)) {}
  torch::Tensor forward(torch::Tensor x) override {
    return logits_.expand({x.size(0), logits_.size(0)});
  }

 private:
  torch::Tensor logits_;
};

}  // namespace

TEST_CASE("ensemble: lift places each expert's columns in the shared space") {
  auto p = torch::tensor({{0.7f, 0.3f}, {0.1f, 0.9f}});
  auto lifted = fu::lift(p, {3, 1}, 4);
  CHECK(torch::equal(
      lifted, torch::tensor({{0.f, 0.3f, 0.f, 0.7f}, {0.f, 0.9f, 0.f, 0.1f}})));
  CHECK_THROWS_AS(fu::lift(p, {1, 2, 3}, 4), chorus::Error);
}

TEST_CASE("ensemble: B+ sums and Bmax takes the maximum, then normalise") {
  auto a = torch::tensor({{0.6f, 0.4f, 0.f}});
  auto b = torch::tensor({{0.f, 0.45f, 0.55f}});
  auto sum = fu::ensemble_sum({a, b});
  CHECK(torch::allclose(sum, torch::tensor({{0.3f, 0.425f, 0.275f}})));
  auto max = fu::ensemble_max({a, b});
  CHECK(torch::allclose(max, torch::tensor({{0.6f, 0.45f, 0.55f}}) / 1.6f));
  // B+ picks class 1 where both experts half-agree; Bmax follows the surest.
  CHECK(sum.argmax(1).item<std::int64_t>() == 1);
  CHECK(max.argmax(1).item<std::int64_t>() == 0);
  CHECK_THROWS_AS(fu::ensemble_sum({}), chorus::Error);
}

TEST_CASE(
    "oracle: answers are probabilities over the expert's labels, counted") {
  fu::LocalOracle oracle(4, /*batch_size=*/7);
  auto data = chorus::testing::make_blobs(200, 4);
  oracle.add_expert({"a", {0, 1}},
                    chorus::testing::train_expert(data, {0, 1}, 1));
  oracle.add_expert({"b", {1, 2, 3}},
                    chorus::testing::train_expert(data, {1, 2, 3}, 2));
  auto x = data.x.slice(0, 0, 20);
  auto answers = oracle.query_all(x);
  REQUIRE(answers.size() == 2);
  CHECK(answers[0].sizes().vec() == std::vector<std::int64_t>{20, 2});
  CHECK(answers[1].sizes().vec() == std::vector<std::int64_t>{20, 3});
  CHECK(torch::allclose(answers[1].sum(1), torch::ones({20})));
  oracle.query(1, x.slice(0, 0, 5));
  CHECK(oracle.stats(0).inputs == 20);
  CHECK(oracle.stats(1).inputs == 25);
  CHECK(oracle.stats(1).requests == 2);
  CHECK(oracle.stats(1).bytes_sent == 25 * 8 * 4);
  CHECK(oracle.stats(1).bytes_received == 25 * 3 * 4);
  CHECK(oracle.total_stats().inputs == 45);
  oracle.reset_stats();
  CHECK(oracle.total_stats().inputs == 0);
}

TEST_CASE("oracle: bad requests and bad answers are refused precisely") {
  fu::LocalOracle oracle(3);
  CHECK_THROWS_AS(
      oracle.add_expert({"x", {0, 3}},
                        std::make_shared<FixedAnswer>(torch::zeros({2}))),
      chorus::Error);
  oracle.add_expert({"wrong-width", {0, 1}},
                    std::make_shared<FixedAnswer>(torch::zeros({3})));
  oracle.add_expert({"nan", {0, 2}},
                    std::make_shared<FixedAnswer>(torch::tensor({NAN, 1.0f})));
  auto x = torch::rand({4, 8});
  auto code_of = [&](std::int64_t expert, const torch::Tensor& in) {
    try {
      oracle.query(expert, in);
    } catch (const chorus::Error& e) {
      return e.code();
    }
    return chorus::Code::kOk;
  };
  CHECK(code_of(0, x) == chorus::Code::kDataLoss);
  CHECK(code_of(1, x) == chorus::Code::kDataLoss);
  CHECK(code_of(2, x) == chorus::Code::kInvalidArgument);
  CHECK(code_of(0, torch::rand({0, 8})) == chorus::Code::kInvalidArgument);
  CHECK(oracle.total_stats().inputs == 0);  // Refused answers are not counted.
}
