// DP-SGD: per-example gradients against batches of one, clipping's bound on
// a step, the noise's scale, and private training that still learns.
#include "chorus/fusion/dp_sgd.hpp"

#include <torch/torch.h>

#include <cmath>

#include "chorus/core/error.hpp"
#include "chorus/core/privacy.hpp"
#include "chorus/fusion/gnmax.hpp"
#include "chorus/fusion/random.hpp"
#include "support/doctest.hpp"
#include "synthetic.hpp"

namespace fu = chorus::fusion;

namespace {

std::shared_ptr<fu::ClassifierImpl> model_of(const std::string& spec,
                                             std::uint64_t seed = 1) {
  auto gen = fu::make_generator(seed);
  return fu::make_classifier(fu::ModelSpec::parse(spec), gen);
}

// The gradient of each example's loss on its own: a batch of one each.
std::vector<std::vector<torch::Tensor>> one_at_a_time(fu::ClassifierImpl& m,
                                                      const torch::Tensor& x,
                                                      const torch::Tensor& y) {
  std::vector<std::vector<torch::Tensor>> out;
  for (std::int64_t i = 0; i < x.size(0); ++i) {
    m.zero_grad();
    auto loss = torch::nn::functional::cross_entropy(
        m.forward(x.slice(0, i, i + 1)), y.slice(0, i, i + 1));
    loss.backward();
    std::vector<torch::Tensor> grads;
    for (const auto& p : m.parameters()) grads.push_back(p.grad().clone());
    out.push_back(std::move(grads));
  }
  return out;
}

void check_per_example(const std::string& spec, const torch::Tensor& x) {
  auto m = model_of(spec);
  m->eval();  // No dropout: the two computations see the same network.
  auto y = torch::tensor({0, 2, 1, 2, 0}, torch::kLong).slice(0, 0, x.size(0));
  const auto fast = fu::per_example_gradients(*m, x, y);
  const auto slow = one_at_a_time(*m, x, y);
  const auto params = m->parameters();
  REQUIRE(fast.size() == params.size());
  for (std::size_t k = 0; k < params.size(); ++k) {
    REQUIRE(fast[k].size(0) == x.size(0));
    for (std::int64_t i = 0; i < x.size(0); ++i) {
      INFO(spec << ": parameter " << k << ", example " << i);
      CHECK(torch::allclose(fast[k][i], slow[static_cast<std::size_t>(i)][k],
                            /*rtol=*/1e-4, /*atol=*/1e-6));
    }
  }
}

}  // namespace

TEST_CASE("dp-sgd: per-example gradients equal those of batches of one") {
  auto gen = fu::make_generator(7);
  SUBCASE("mlp") {
    check_per_example("mlp in=6 classes=3 hidden=5,4",
                      torch::randn({5, 6}, gen));
  }
  SUBCASE("lenet with GroupNorm") {
    check_per_example("lenet in=2x8x8 classes=3 norm=group",
                      torch::randn({4, 2, 8, 8}, gen));
  }
}

TEST_CASE("dp-sgd: BatchNorm is refused by name, GroupNorm is in the spec") {
  auto m = model_of("lenet in=1x8x8 classes=3");
  CHECK_THROWS_WITH(fu::per_example_gradients(*m, torch::zeros({2, 1, 8, 8}),
                                              torch::zeros({2}, torch::kLong)),
                    doctest::Contains("'bn1.weight'"));
  auto spec = fu::ModelSpec::parse("lenet in=1x8x8 classes=3 norm=group");
  CHECK(spec.norm == "group");
  CHECK(spec.to_string() == "lenet in=1x8x8 classes=3 norm=group");
  CHECK_THROWS_WITH(fu::make_classifier(
                        fu::ModelSpec::parse("mlp in=4 classes=2 norm=group")),
                    doctest::Contains("norm=group is for lenet"));
  CHECK_THROWS_WITH(fu::ModelSpec::parse("lenet in=1x8x8 classes=3 norm=layer"),
                    doctest::Contains("norm must be 'group'"));
}

TEST_CASE(
    "dp-sgd: a step with every gradient clipped moves no further than "
    "the bound") {
  auto m = model_of("lenet in=1x8x8 classes=3 norm=group");
  m->train();
  auto gen = fu::make_generator(3);
  auto x = torch::randn({16, 1, 8, 8}, gen) * 10;
  auto y = torch::randint(3, {16}, gen, torch::kLong);
  const double clip = 1e-3, lr = 0.5;
  std::vector<torch::Tensor> before;
  for (const auto& p : m->parameters()) before.push_back(p.detach().clone());
  const auto norms = fu::private_gradient(*m, x, y, clip, /*noise=*/0,
                                          /*expected_batch=*/16, gen);
  REQUIRE(norms.size(0) == 16);
  CHECK(norms.min().item<double>() > clip);  // Every one is clipped.
  // Plain SGD: Δw = −lr · (Σ clipped) / 16, so ‖Δw‖ ≤ lr · C.
  double moved = 0;
  {
    torch::NoGradGuard no_grad;
    std::size_t k = 0;
    for (auto& p : m->parameters()) {
      p.sub_(lr * p.grad());
      moved += (p - before[k++]).pow(2).sum().item<double>();
    }
  }
  moved = std::sqrt(moved);
  CHECK(moved > 0);
  CHECK(moved <= lr * clip * (1 + 1e-4));
}

TEST_CASE("dp-sgd: the noise has the stated standard deviation") {
  auto m = model_of("lenet in=1x28x28 classes=10 norm=group");
  auto gen = fu::make_generator(5);
  // An empty Poisson batch: the gradient is σ·C·N(0, 1) / (q·N) alone.
  fu::private_gradient(*m, torch::zeros({0, 1, 28, 28}),
                       torch::zeros({0}, torch::kLong), /*clip=*/2.0,
                       /*noise=*/1.5, /*expected_batch=*/4, gen);
  std::vector<torch::Tensor> grads;
  for (const auto& p : m->parameters()) grads.push_back(p.grad().flatten());
  auto all = torch::cat(grads);
  REQUIRE(all.numel() > 100000);
  CHECK(std::abs(all.mean().item<double>()) < 0.01);
  CHECK(all.std().item<double>() ==
        doctest::Approx(2.0 * 1.5 / 4).epsilon(0.02));
}

TEST_CASE("dp-sgd: private training learns within its budget and says so") {
  auto train = chorus::testing::make_blobs(2000, 3, 8, /*seed=*/11);
  auto test = chorus::testing::resample_blobs(500, 3, 8, 11, 12);
  auto m = model_of("mlp in=8 classes=3 hidden=32");
  fu::DpGuarantee g;
  auto r = fu::train_private(
      *m, train.x, train.y,
      fu::TrainOptions().epochs(3).batch_size(64).lr(1e-2).seed(4),
      fu::DpSgdOptions().epsilon(3).delta(1e-5).max_grad_norm(1.0), &g);
  CHECK(r.epochs_run == 3);
  CHECK(g.steps == 3 * 32);
  CHECK(g.sample_rate == doctest::Approx(64.0 / 2000));
  CHECK(g.epsilon <= 3.0);
  CHECK(g.epsilon > 2.9);  // The smallest noise that fits spends it.
  CHECK(g.epsilon == doctest::Approx(chorus::privacy::dp_sgd_epsilon(
                         g.sample_rate, g.noise_multiplier, g.steps, 1e-5)));
  const double acc = fu::accuracy(fu::predict_proba(*m, test.x), test.y);
  CHECK(acc > 0.9);
  // The guarantee travels as JSON.
  auto back = fu::DpGuarantee::from_json(g.to_json());
  CHECK(back.epsilon == g.epsilon);
  CHECK(back.noise_multiplier == g.noise_multiplier);
  CHECK(back.steps == g.steps);
  CHECK_THROWS_WITH(fu::DpGuarantee::from_json("{\"epsilon\": 1}"),
                    doctest::Contains("privacy guarantee"));
  // A BatchNorm model is refused before any step.
  auto bn = model_of("lenet in=1x8x8 classes=3");
  CHECK_THROWS_WITH(
      fu::train_private(*bn, torch::zeros({8, 1, 8, 8}),
                        torch::zeros({8}, torch::kLong),
                        fu::TrainOptions().epochs(1).batch_size(8),
                        fu::DpSgdOptions().noise_multiplier(1), nullptr),
      doctest::Contains("BatchNorm"));
}

TEST_CASE(
    "gnmax: votes count each teacher's first choice, and the noisy argmax "
    "follows a clear plurality and is one-hot") {
  auto a = torch::tensor({{0.7, 0.2, 0.1}, {0.1, 0.1, 0.8}});
  auto b = torch::tensor({{0.6, 0.3, 0.1}, {0.2, 0.5, 0.3}});
  auto c = torch::tensor({{0.1, 0.8, 0.1}, {0.1, 0.2, 0.7}});
  auto votes = fu::vote_histogram({a, b, c});
  CHECK(torch::equal(votes, torch::tensor({{2.f, 1.f, 0.f}, {0.f, 1.f, 2.f}})));
  auto gen = fu::make_generator(1);
  auto big = torch::zeros({1000, 4});
  big.select(1, 2).fill_(50);  // 50 votes for class 2, none elsewhere.
  auto answer = fu::noisy_argmax(big, 5.0, gen);
  CHECK(answer.sum(1).eq(1).all().item<bool>());
  CHECK(answer.select(1, 2).eq(1).all().item<bool>());
  // Noise as large as the lead: the plurality wins less often, but wins
  // more often than any other class.
  auto close = torch::zeros({4000, 4});
  close.select(1, 0).fill_(2);
  auto wins = fu::noisy_argmax(close, 2.0, gen).sum(0);
  CHECK(wins[0].item<float>() < 4000);
  CHECK(wins[0].item<float>() > wins.slice(0, 1).max().item<float>());
  CHECK_THROWS_WITH(fu::noisy_argmax(close, 0, gen),
                    doctest::Contains("sigma must be positive"));
  CHECK_THROWS_WITH(fu::vote_histogram({a, torch::zeros({3, 3})}),
                    doctest::Contains("every teacher must answer the same"));
}
