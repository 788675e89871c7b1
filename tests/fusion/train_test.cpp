#include "chorus/fusion/train.hpp"

#include <torch/cuda.h>

#include <algorithm>
#include <mutex>
#include <set>
#include <stop_token>
#include <thread>

#include "chorus/core/error.hpp"
#include "chorus/fusion/device.hpp"
#include "chorus/fusion/foe.hpp"
#include "chorus/fusion/optim.hpp"
#include "chorus/fusion/random.hpp"
#include "chorus/fusion/tae.hpp"
#include "support/doctest.hpp"
#include "synthetic.hpp"

namespace fu = chorus::fusion;
using chorus::testing::make_blobs;

namespace {

std::shared_ptr<fu::ClassifierImpl> small_mlp(std::int64_t classes,
                                              std::uint64_t seed = 0) {
  torch::manual_seed(seed);
  return fu::make_classifier(fu::ModelSpec{.arch = "mlp",
                                           .input_shape = {8},
                                           .num_classes = classes,
                                           .hidden = {32}});
}

}  // namespace

TEST_CASE("train: learns separable blobs and generalises") {
  auto data = make_blobs(600, 4, 8, /*seed=*/1);
  auto model = small_mlp(4);
  auto before = fu::accuracy(fu::predict_proba(*model, data.x), data.y);
  std::vector<double> losses;
  auto result = fu::train(
      *model, data.x.slice(0, 0, 500), data.y.slice(0, 0, 500),
      fu::TrainOptions().epochs(10).batch_size(32).lr(3e-3).on_epoch(
          [&](const fu::EpochReport& r) { losses.push_back(r.train_loss); }));
  CHECK(result.epochs_run == 10);
  CHECK(losses.size() == 10);
  CHECK(losses.back() < losses.front() / 2);
  auto after = fu::accuracy(fu::predict_proba(*model, data.x.slice(0, 500)),
                            data.y.slice(0, 500));
  CHECK(before < 0.6);
  CHECK(after > 0.95);
}

TEST_CASE("train: the same seed gives the same weights") {
  auto data = make_blobs(200, 3, 8, 2);
  auto run = [&] {
    auto model = small_mlp(3, 7);
    fu::train(*model, data.x, data.y, fu::TrainOptions().epochs(3).seed(5));
    return fu::predict_proba(*model, data.x);
  };
  CHECK(torch::equal(run(), run()));
}

TEST_CASE(
    "train: draws only from its own generator, so torch's default stream is "
    "untouched and the result does not depend on it") {
  auto data = make_blobs(100, 3, 8, 4);
  const fu::ModelSpec spec{
      .arch = "mlp", .input_shape = {8}, .num_classes = 3, .hidden = {32}};
  auto trained = [&](std::uint64_t global_seed) {
    auto gen = fu::make_generator(3);
    auto model = fu::make_classifier(spec, gen);
    torch::manual_seed(global_seed);
    const auto expected = torch::rand({5});
    torch::manual_seed(global_seed);
    fu::train(*model, data.x, data.y, fu::TrainOptions().epochs(2).seed(5));
    // Shuffling and dropout took nothing from the default generator.
    CHECK(torch::equal(torch::rand({5}), expected));
    CHECK_FALSE(model->noise().has_value());  // the generator was lent
    return fu::predict_proba(*model, data.x);
  };
  CHECK(torch::equal(trained(11), trained(12)));
}

TEST_CASE(
    "random: make_classifier with a generator draws LibTorch's own initial "
    "weights, whatever the default generator holds") {
  const std::vector<fu::ModelSpec> specs = {
      {.arch = "mlp", .input_shape = {1, 6, 6}, .num_classes = 3},
      {.arch = "lenet", .input_shape = {3, 8, 8}, .num_classes = 4},
      {.arch = "resnet", .input_shape = {1, 8, 8}, .num_classes = 2}};
  for (const auto& spec : specs) {
    CAPTURE(spec.to_string());
    torch::manual_seed(21);
    auto libtorch = fu::make_classifier(spec);  // LibTorch's initialisation
    torch::manual_seed(99);
    auto gen = fu::make_generator(21);
    auto ours = fu::make_classifier(spec, gen);
    auto a = libtorch->parameters(), b = ours->parameters();
    REQUIRE(a.size() == b.size());
    for (std::size_t i = 0; i < a.size(); ++i) CHECK(torch::equal(a[i], b[i]));
    auto other = fu::make_generator(22);
    CHECK_FALSE(
        torch::equal(fu::make_classifier(spec, other)->parameters()[0], a[0]));
  }
}

TEST_CASE(
    "random: dropout keeps 1 - p of the elements scaled by 1 / (1 - p), "
    "drawn from the caller's generator whatever the thread count") {
  const double p = 0.3;
  auto x = torch::ones({1000, 1000});
  auto draw = [&](std::uint64_t seed, int threads) {
    fu::ThreadGuard guard(threads);
    auto gen = fu::make_generator(seed);
    return fu::dropout(x, p, /*training=*/true, gen);
  };
  auto y = draw(4, 1);
  // Every value is 0 or 1 / (1 - p).
  const float scale = static_cast<float>(1 / (1 - p));
  CHECK(torch::logical_or(y.eq(0), y.eq(scale)).all().item<bool>());
  // Binomial(10^6, 0.3): the standard deviation of the dropped fraction
  // is 0.00046; 0.003 is more than six of them.
  const double dropped = y.eq(0).to(torch::kDouble).mean().item<double>();
  CHECK(dropped == doctest::Approx(p).epsilon(0.01));
  // Inverted dropout keeps the mean.
  CHECK(y.mean().item<double>() == doctest::Approx(1.0).epsilon(0.01));
  // Neighbours and rows are not correlated.
  auto kept = y.ne(0).to(torch::kDouble).flatten();
  auto centred = kept - kept.mean();
  const double lag1 =
      (centred.slice(0, 0, -1) * centred.slice(0, 1)).mean().item<double>() /
      centred.pow(2).mean().item<double>();
  CHECK(std::abs(lag1) < 0.01);
  auto rows = y.ne(0).to(torch::kDouble);
  const double rows_equal =
      rows[0].eq(rows[1]).to(torch::kDouble).mean().item<double>();
  CHECK(rows_equal < 0.7);  // 0.58 expected for independent rows
  // The seed decides the mask; the thread count does not.
  CHECK(torch::equal(draw(4, 2), y));
  CHECK_FALSE(torch::equal(draw(5, 1), y));
  // Two draws from one generator differ.
  auto gen = fu::make_generator(4);
  auto first = fu::dropout(x, p, true, gen);
  CHECK(torch::equal(first, y));
  CHECK_FALSE(torch::equal(fu::dropout(x, p, true, gen), first));
  // Gradients flow through the kept elements only, scaled.
  auto leaf = torch::ones({8, 8}, torch::requires_grad());
  auto out = fu::dropout(leaf, p, true, gen);
  out.sum().backward();
  CHECK(torch::equal(leaf.grad(), out.detach()));

  auto small = torch::rand({64, 16});
  CHECK(torch::equal(fu::dropout(small, p, false, gen), small));
  CHECK(torch::equal(fu::dropout(small, 0.0, true, gen), small));
  CHECK(fu::dropout(small, 1.0, true, gen).eq(0).all().item<bool>());
  CHECK_THROWS_WITH_AS(fu::dropout(small, 1.5, true, gen),
                       doctest::Contains("dropout probability 1.5"),
                       chorus::Error);
}

TEST_CASE(
    "random: a tae model's initialisation and predictions depend on its "
    "seed only") {
  auto x = torch::rand({6, 8});
  auto predicted = [&](std::uint64_t global_seed) {
    torch::manual_seed(global_seed);
    fu::TaeModel tae(8, 3, 3, fu::TaeOptions().seed(9));
    auto q = tae.prior(torch::ones({3}));
    return std::make_pair(tae.predict(x, q), tae.prototypes().clone());
  };
  auto [p1, z1] = predicted(1);
  auto [p2, z2] = predicted(2);
  CHECK(torch::equal(p1, p2));
  CHECK(torch::equal(z1, z2));
}

TEST_CASE("device: cpu, cuda and cuda:N parse and anything else is refused") {
  CHECK(fu::parse_device("cpu") == c10::Device(c10::kCPU));
  CHECK_THROWS_WITH_AS(fu::parse_device("tpu"),
                       doctest::Contains("expected cpu, cuda or cuda:N"),
                       chorus::Error);
  CHECK_THROWS_WITH_AS(fu::parse_device("cpu:1"),
                       doctest::Contains("the CPU has no index"),
                       chorus::Error);
  CHECK_THROWS_WITH_AS(fu::parse_device("cuda:99"),
                       doctest::Contains(fu::libtorch_description().c_str()),
                       chorus::Error);
  if (torch::cuda::is_available()) {
    CHECK(fu::parse_device("cuda").is_cuda());
  } else {
    MESSAGE("no CUDA in " << fu::libtorch_description()
                          << ": cuda is refused, naming it");
    CHECK(fu::libtorch_description().find("CPU only") != std::string::npos);
    CHECK_THROWS_WITH_AS(fu::parse_device("cuda"),
                         doctest::Contains("cannot use CUDA"), chorus::Error);
  }
}

TEST_CASE("train: on an explicit device the model is back on the CPU after") {
  auto data = make_blobs(60, 3, 8, 2);
  auto model = small_mlp(3);
  fu::train(*model, data.x, data.y,
            fu::TrainOptions().epochs(1).device(fu::parse_device("cpu")));
  for (const auto& p : model->parameters()) CHECK(p.device().is_cpu());
  CHECK(fu::predict_proba(*model, data.x).device().is_cpu());
}

TEST_CASE(
    "run_jobs: every job once, side by side on one thread each, the rest on "
    "every thread, and the first error rethrown") {
  std::mutex mutex;
  std::vector<std::pair<std::int64_t, int>> ran;
  std::set<std::thread::id> threads_seen;
  fu::run_jobs(5, 2, [&](std::int64_t i, int threads) {
    std::lock_guard lock(mutex);
    ran.emplace_back(i, threads);
    threads_seen.insert(std::this_thread::get_id());
    CHECK(torch::get_num_threads() == threads);  // set for the job already
  });
  REQUIRE(ran.size() == 5);
  std::sort(ran.begin(), ran.end());
  for (std::int64_t i = 0; i < 5; ++i) {
    CHECK(ran[static_cast<std::size_t>(i)].first == i);
    // 4 side by side on two workers; the fifth alone on both threads.
    CHECK(ran[static_cast<std::size_t>(i)].second == (i < 4 ? 1 : 2));
  }
  CHECK(threads_seen.size() >= 2);
  int calls = 0;
  CHECK_THROWS_WITH_AS(fu::run_jobs(4, 2,
                                    [&](std::int64_t i, int) {
                                      std::lock_guard lock(mutex);
                                      ++calls;
                                      if (i == 0)
                                        chorus::fail(chorus::Code::kInternal,
                                                     "job 0 failed");
                                    }),
                       doctest::Contains("job 0 failed"), chorus::Error);
  CHECK(calls >= 1);
  CHECK(calls <= 4);
}

TEST_CASE("train: soft targets are matched (distillation loss)") {
  auto data = make_blobs(400, 3, 8, 3);
  auto teacher = torch::one_hot(data.y, 3).to(torch::kFloat32) * 0.8 + 0.2 / 3;
  auto model = small_mlp(3);
  fu::train(*model, data.x, teacher, fu::TrainOptions().epochs(15).lr(3e-3));
  auto p = fu::predict_proba(*model, data.x);
  CHECK(fu::accuracy(p, teacher) > 0.95);
  // The student learns the teacher's uncertainty (max 0.867), not one-hot
  // labels, which would drive its confidence towards 1.
  const double confidence = std::get<0>(p.max(1)).mean().item<double>();
  CHECK(confidence > 0.6);
  CHECK(confidence < 0.9);
}

TEST_CASE("train: early stopping keeps the best validation epoch") {
  auto data = make_blobs(300, 3, 8, 4);
  // Validation labels are noise: accuracy peaks early, patience stops it.
  auto gen = at::detail::createCPUGenerator(9);
  auto noise = torch::randint(3, {100}, gen, torch::kLong);
  auto model = small_mlp(3);
  auto result = fu::train(
      *model, data.x.slice(0, 0, 200), data.y.slice(0, 0, 200),
      fu::TrainOptions().epochs(40).patience(3), data.x.slice(0, 200), noise);
  REQUIRE(result.best_val_accuracy.has_value());
  CHECK(result.epochs_run < 40);
  CHECK(result.epochs_run - result.best_epoch == 3);
  auto val_acc =
      fu::accuracy(fu::predict_proba(*model, data.x.slice(0, 200)), noise);
  CHECK(val_acc == doctest::Approx(*result.best_val_accuracy));
}

TEST_CASE("train: mismatched inputs and targets are INVALID_ARGUMENT") {
  auto model = small_mlp(3);
  CHECK_THROWS_AS(
      fu::train(*model, torch::rand({10, 8}), torch::zeros({9}, torch::kLong),
                fu::TrainOptions()),
      chorus::Error);
  CHECK_THROWS_AS(fu::train(*model, torch::rand({10, 8}), torch::zeros({10}),
                            fu::TrainOptions()),
                  chorus::Error);
  CHECK_THROWS_AS(
      fu::accuracy(torch::rand({4, 3}), torch::zeros({5}, torch::kLong)),
      chorus::Error);
  CHECK(fu::accuracy(torch::tensor({{0.1, 0.9}, {0.8, 0.2}}),
                     torch::tensor({1, 1}, torch::kLong)) == 0.5);
}

TEST_CASE("train: a requested stop cancels at the next batch, naming it") {
  auto data = make_blobs(400, 3, 8, 4);
  auto model = small_mlp(3);
  std::stop_source stop;
  std::int64_t epochs_seen = 0;
  auto options =
      fu::TrainOptions().epochs(50).batch_size(32).stop(stop.get_token());
  options.on_epoch([&](const fu::EpochReport& r) {
    epochs_seen = r.epoch;
    if (r.epoch == 2) stop.request_stop();
  });
  try {
    fu::train(*model, data.x, data.y, options);
    FAIL("training was not cancelled");
  } catch (const chorus::Error& e) {
    CHECK(e.code() == chorus::Code::kCancelled);
    CHECK(chorus::testing::contains(e.what(), "training cancelled"));
  }
  CHECK(epochs_seen == 2);
  // An algorithm's fit honours the same token.
  auto answers =
      std::vector<torch::Tensor>{torch::softmax(torch::randn({60, 3}), 1),
                                 torch::softmax(torch::randn({60, 3}), 1)};
  fu::Foe foe(fu::FoeOptions().epochs(5).stop(stop.get_token()));
  CHECK_THROWS_AS(foe.fit(answers, torch::randint(0, 3, {60}), 3),
                  chorus::Error);
}

TEST_CASE(
    "optim: the fused Adam and AdamW follow LibTorch's, step for step, "
    "weight decay and channels-last weights included") {
  auto gen = fu::make_generator(3);
  auto make = [&] {
    // A channels-last 4-d weight, a matrix and a vector.
    return std::vector<torch::Tensor>{
        torch::randn({8, 3, 3, 3}, gen)
            .contiguous(torch::MemoryFormat::ChannelsLast)
            .requires_grad_(),
        torch::randn({16, 40}, gen).requires_grad_(),
        torch::randn({5}, gen).requires_grad_()};
  };
  auto clone = [](const std::vector<torch::Tensor>& ps) {
    std::vector<torch::Tensor> out;
    for (const auto& p : ps)
      out.push_back(
          p.detach().clone(torch::MemoryFormat::Preserve).requires_grad_());
    return out;
  };
  auto grads = [&](int step) {
    std::vector<torch::Tensor> g;
    auto gg = fu::make_generator(100 + step);
    for (auto size : {std::vector<std::int64_t>{8, 3, 3, 3}, {16, 40}, {5}})
      g.push_back(torch::randn(size, gg));
    return g;
  };
  auto run = [&](torch::optim::Optimizer& reference,
                 torch::optim::Optimizer& fused, std::vector<torch::Tensor>& a,
                 std::vector<torch::Tensor>& b) {
    for (int step = 0; step < 20; ++step) {
      auto g = grads(step);
      for (std::size_t i = 0; i < a.size(); ++i) {
        a[i].mutable_grad() = g[i].clone();
        b[i].mutable_grad() =
            g[i].contiguous(a[i].suggest_memory_format()).clone();
      }
      // The learning rate changes as a cosine schedule changes it.
      for (auto* o : {&reference, &fused})
        for (auto& group : o->param_groups())
          group.options().set_lr(1e-2 / (1 + step));
      reference.step();
      fused.step();
    }
    for (std::size_t i = 0; i < a.size(); ++i) {
      CHECK(b[i].is_contiguous(a[i].suggest_memory_format()));
      CHECK(torch::allclose(a[i], b[i], /*rtol=*/1e-5, /*atol=*/1e-6));
      // It moved: the comparison is not between two untouched tensors.
      CHECK_FALSE(torch::allclose(a[i], make()[i]));
    }
  };
  SUBCASE("adam with L2 weight decay") {
    auto a = make(), b = clone(a);
    torch::optim::Adam reference(
        a, torch::optim::AdamOptions(1e-2).weight_decay(0.1));
    fu::FusedAdam fused(b, torch::optim::AdamOptions(1e-2).weight_decay(0.1));
    run(reference, fused, a, b);
  }
  SUBCASE("adamw with decoupled weight decay") {
    auto a = make(), b = clone(a);
    torch::optim::AdamW reference(
        a, torch::optim::AdamWOptions(1e-2).weight_decay(0.05));
    fu::FusedAdamW fused(b,
                         torch::optim::AdamWOptions(1e-2).weight_decay(0.05));
    run(reference, fused, a, b);
  }
  SUBCASE("amsgrad takes LibTorch's own step") {
    auto a = make(), b = clone(a);
    torch::optim::Adam reference(a,
                                 torch::optim::AdamOptions(1e-2).amsgrad(true));
    fu::FusedAdam fused(b, torch::optim::AdamOptions(1e-2).amsgrad(true));
    run(reference, fused, a, b);
  }
}
