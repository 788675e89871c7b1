#include "chorus/fusion/dro.hpp"

#include <torch/torch.h>

#include <filesystem>

#include "chorus/core/error.hpp"
#include "chorus/fusion/fused_model.hpp"
#include "chorus/fusion/random.hpp"
#include "chorus/fusion/train.hpp"
#include "support/doctest.hpp"

namespace fu = chorus::fusion;

namespace {

const fu::ModelSpec kSpec{
    .arch = "mlp", .input_shape = {8}, .num_classes = 2, .hidden = {16}};

// A family of linear tasks in R^8: task t labels x by the side of the
// hyperplane w_t·x = 0, with w_t = w_0 + noise; every task's model starts
// from the same weights (as the dro fuser's imitators do).
struct LinearFamily {
  torch::Tensor w0;
  explicit LinearFamily(std::uint64_t seed) {
    auto gen = at::detail::createCPUGenerator(seed);
    w0 = torch::randn({8}, gen);
  }
  std::pair<torch::Tensor, torch::Tensor> task(std::uint64_t seed,
                                               std::int64_t n) const {
    auto gen = at::detail::createCPUGenerator(seed);
    auto w = w0 + 0.3 * torch::randn({8}, gen);
    auto x = torch::randn({n, 8}, gen);
    auto y = x.matmul(w).gt(0).to(torch::kLong);
    return {x, y};
  }
};

std::shared_ptr<fu::ClassifierImpl> fresh(std::uint64_t seed) {
  auto gen = fu::make_generator(seed);
  return fu::make_classifier(kSpec, gen);
}

double accuracy_of(fu::ClassifierImpl& model, const torch::Tensor& x,
                   const torch::Tensor& y) {
  return fu::accuracy(fu::predict_proba(model, x), y);
}

}  // namespace

TEST_CASE("dro: a model's flat vector round-trips through unflatten") {
  auto a = fresh(1);
  auto b = fresh(2);
  auto flat = fu::flatten_model(*a);
  std::int64_t total = 0;
  for (auto n : fu::layer_sizes(*a)) total += n;
  CHECK(flat.numel() == total);
  CHECK_FALSE(torch::equal(flat, fu::flatten_model(*b)));
  fu::unflatten_into(*b, flat);
  CHECK(torch::equal(flat, fu::flatten_model(*b)));
  CHECK_THROWS_AS(fu::unflatten_into(*b, flat.slice(0, 1)), chorus::Error);
}

TEST_CASE("dro: the hypernetwork reproduces a single model trained on it") {
  auto model = fresh(3);
  auto theta = fu::flatten_model(*model);
  auto gen = fu::make_generator(4);
  fu::Hypernetwork hyper(fu::layer_sizes(*model), 50, 0.1, gen);
  auto e = torch::randn({50}, gen);
  auto initial = (hyper(e) - theta).abs().max().item<double>();
  CHECK(initial > 0.05);
  torch::optim::Adam adam({hyper.weight(), hyper.bias()},
                          torch::optim::AdamOptions(1e-2));
  for (int s = 0; s < 300; ++s) {
    auto loss = hyper.nll(theta, hyper(e));
    adam.zero_grad();
    loss.backward();
    adam.step();
  }
  torch::NoGradGuard no_grad;
  CHECK((hyper(e) - theta).abs().max().item<double>() < 1e-3);
  // meta_learn on one model (twice) returns that model as θ_init.
  auto fit = fu::meta_learn({theta, theta}, fu::layer_sizes(*model),
                            fu::DroOptions().meta_steps(50));
  CHECK((fit.init - theta).abs().max().item<double>() < 1e-3);
}

TEST_CASE(
    "dro: the inner step moves an embedding away from its peak, less "
    "for a larger gamma") {
  auto gen = fu::make_generator(5);
  std::vector<std::int64_t> layers = {40, 24};
  fu::Hypernetwork hyper(layers, 6, 0.1, gen);
  {
    torch::NoGradGuard no_grad;
    hyper.weight().normal_(0, 0.2, gen);
  }
  auto peak = torch::randn({6}, gen);
  torch::Tensor theta;
  {
    torch::NoGradGuard no_grad;
    theta = hyper(peak).clone();
  }
  auto nll_of = [&](const torch::Tensor& e) {
    return hyper.nll(theta, hyper.detached(e));
  };
  auto value = [&](const torch::Tensor& e) {
    torch::NoGradGuard no_grad;
    return nll_of(e).item<double>();
  };
  auto start = peak + 0.1 * torch::randn({6}, gen);
  const double at_start = value(start);
  CHECK(value(peak) < 1e-10);

  auto grad_of = [&](const torch::Tensor& e) {
    return hyper.grad_embedding(theta, e);
  };
  auto near = fu::Hypernetwork::worst_case(grad_of, start, 10.0, 1);
  auto far = fu::Hypernetwork::worst_case(grad_of, start, 0.5, 1);
  const double moved_near = (near - start).norm().item<double>();
  const double moved_far = (far - start).norm().item<double>();
  // Away from the peak: the likelihood of the model is lower there.
  CHECK(value(near) > at_start);
  CHECK(value(far) > value(near));
  // The step is the linearised maximiser: ∇nll(start) / (2γ), so its
  // length shrinks in proportion to γ.
  CHECK(moved_far / moved_near == doctest::Approx(20.0).epsilon(1e-3));
  auto x = start.clone().requires_grad_(true);
  auto g = torch::autograd::grad({nll_of(x)}, {x})[0];
  CHECK(moved_near ==
        doctest::Approx(g.norm().item<double>() / 20.0).epsilon(1e-4));
  // The robust objective nll − γ‖e′ − e‖² is no lower than at the start.
  CHECK(value(near) - 10.0 * moved_near * moved_near >= at_start);
  // γ = 0 is the ablation: no move at all.
  CHECK(torch::equal(fu::Hypernetwork::worst_case(grad_of, start, 0.0, 1),
                     start));
  // Several steps (where the step contracts: a γ large against the
  // curvature) converge to the fixed point e′ = e + ∇nll(e′)/(2γ).
  auto fixed = fu::Hypernetwork::worst_case(grad_of, start, 5000.0, 30);
  CHECK(
      (fixed - (start + grad_of(fixed) / 10000.0)).abs().max().item<double>() <
      1e-6);
  CHECK_FALSE(torch::equal(fixed, start));
}

TEST_CASE("dro: the learned initialisation adapts faster than a random one") {
  LinearFamily family(11);
  std::vector<torch::Tensor> models;
  for (std::uint64_t t = 0; t < 10; ++t) {
    auto [x, y] = family.task(100 + t, 400);
    auto model = fresh(7);  // one common starting point
    fu::train(*model, x, y,
              fu::TrainOptions().epochs(15).batch_size(50).lr(1e-2).seed(t));
    models.push_back(fu::flatten_model(*model));
  }
  auto layers = fu::layer_sizes(*fresh(7));
  auto options = fu::DroOptions().embedding_dim(8).meta_steps(200).seed(3);
  auto fit = fu::meta_learn(models, layers, options);
  CHECK(fit.validation_nll.size() == 3);
  CHECK(fit.gamma > 0);
  auto init = fu::dro_model(kSpec, fit, "weights", 10);
  auto random = fu::dro_model(
      kSpec, fu::DroFit{.init = fu::flatten_model(*fresh(99))}, "random", 0);

  double learned = 0, from_random = 0;
  for (std::uint64_t t = 0; t < 8; ++t) {
    auto [sx, sy] = family.task(500 + t, 10);
    auto [qx, qy] = family.task(500 + t, 400);
    // the query set: same hyperplane, other points
    qx = qx.slice(0, 10);
    qy = qy.slice(0, 10);
    auto a = fu::adapt_initialisation(init, sx, sy, 2, 5, 0.03);
    auto b = fu::adapt_initialisation(random, sx, sy, 2, 5, 0.03);
    learned += accuracy_of(*a, qx, qy) / 8;
    from_random += accuracy_of(*b, qx, qy) / 8;
  }
  MESSAGE("adapted from dro " << learned << ", from random " << from_random);
  CHECK(learned > from_random + 0.1);
  CHECK(learned > 0.8);
}

TEST_CASE("dro: a head of another width starts from its mean row") {
  auto model = fresh(8);
  fu::FusedModel init{
      .algorithm = "dro", .spec = kSpec, .attributes = {}, .model = model};
  auto wide = fu::resize_head(init, 5);
  auto out = wide->forward(torch::randn({4, 8}));
  CHECK(out.size(1) == 5);
  // Every class starts with the same score.
  CHECK((out - out.select(1, 0).unsqueeze(1)).abs().max().item<double>() <
        1e-6);
  CHECK_THROWS_AS(fu::resize_head(init, 1), chorus::Error);
  CHECK_THROWS_AS(
      fu::adapt_initialisation(init, torch::randn({4, 8}),
                               torch::tensor({0, 1, 2, 5}), 3, 1, 0.1),
      chorus::Error);
}

TEST_CASE("dro: an initialisation saves and loads unchanged") {
  auto model = fresh(9);
  fu::DroFit fit{.init = fu::flatten_model(*model),
                 .gamma = 2,
                 .embeddings = torch::zeros({3, 50})};
  auto saved = fu::dro_model(kSpec, fit, "imitators", 3);
  const auto path = std::filesystem::temp_directory_path() /
                    ("chorus-dro-" + std::to_string(::getpid()) + ".pt");
  fu::save_fused_model(saved, path);
  auto loaded = fu::load_fused_model(path);
  std::filesystem::remove(path);
  CHECK(loaded.algorithm == "dro");
  CHECK(loaded.spec == kSpec);
  CHECK(loaded.attributes.at("gamma") == "2");
  CHECK(loaded.attributes.at("source") == "imitators");
  CHECK(loaded.attributes.at("models") == "3");
  CHECK(torch::equal(fu::flatten_model(*loaded.model), fit.init));
  CHECK_FALSE(fu::needs_experts_at_prediction("dro"));
}

TEST_CASE("dro: bad models and options are refused by name") {
  auto model = fresh(10);
  auto theta = fu::flatten_model(*model);
  auto layers = fu::layer_sizes(*model);
  CHECK_THROWS_WITH_AS(fu::meta_learn({theta}, layers, {}),
                       doctest::Contains("at least 2 models"), chorus::Error);
  CHECK_THROWS_WITH_AS(
      fu::meta_learn({theta, theta.slice(0, 0, 3)}, layers, {}),
      doctest::Contains("model 1 has 3 parameters, the architecture"),
      chorus::Error);
  auto bad = theta.clone();
  bad[0] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH_AS(fu::meta_learn({theta, bad}, layers, {}),
                       doctest::Contains("not finite"), chorus::Error);
  CHECK_THROWS_WITH_AS(
      fu::meta_learn({theta, theta}, layers, fu::DroOptions().gammas({-1})),
      doctest::Contains("γ"), chorus::Error);
}
