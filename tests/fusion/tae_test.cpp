// tae on a small synthetic multi-task problem: binary "images" of 16 pixels
// drawn around one pattern per class; two experts that each know two of the
// four classes (six in the relabelling test, whose last two no expert knows).
// Sampling uses torch's global generator: each test seeds it, so that a
// test's outcome does not depend on which tests ran before it.
#include "chorus/fusion/tae.hpp"

#include <fstream>

#include "chorus/core/error.hpp"
#include "support/corrupt.hpp"
#include "support/doctest.hpp"
#include "support/errors.hpp"
#include "support/temp_dir.hpp"

namespace fu = chorus::fusion;
using chorus::Code;
using chorus::testing::code_of;

namespace {

constexpr std::int64_t kPixels = 16, kClasses = 4;

struct Images {
  torch::Tensor x, y;
};

Images draw(std::int64_t n, std::uint64_t seed,
            std::int64_t classes = kClasses) {
  auto gen = at::detail::createCPUGenerator(seed);
  auto patterns_gen = at::detail::createCPUGenerator(99);
  auto patterns =
      (torch::rand({classes, kPixels}, patterns_gen) > 0.5).to(torch::kFloat32);
  auto y = torch::randint(classes, {n}, gen, torch::kLong);
  auto flip = torch::rand({n, kPixels}, gen) < 0.1;
  auto x = patterns.index_select(0, y);
  x = torch::where(flip, 1 - x, x);
  return {x, y};
}

// An expert that knows `task` perfectly and says nothing of other classes:
// its answers lifted into the outputs (uniform over its task elsewhere).
torch::Tensor expert_answers(const Images& d,
                             const std::vector<std::int64_t>& task,
                             std::int64_t outputs = kClasses) {
  auto out = torch::zeros({d.x.size(0), outputs});
  for (std::int64_t i = 0; i < d.x.size(0); ++i) {
    const auto c = d.y[i].item<std::int64_t>();
    const bool known = std::find(task.begin(), task.end(), c) != task.end();
    for (auto t : task) out[i][t] = known ? (t == c ? 0.95 : 0.05) : 0.5;
  }
  return out;
}

torch::Tensor multi_hot(const std::vector<std::int64_t>& classes,
                        std::int64_t width = kClasses) {
  auto t = torch::zeros({width});
  for (auto c : classes) t[c] = 1;
  return t;
}

fu::TaeData data(const Images& d) {
  return fu::TaeData{
      .inputs = d.x,
      .answers = {expert_answers(d, {0, 1}), expert_answers(d, {2, 3})},
      .tasks = {multi_hot({0, 1}), multi_hot({2, 3})}};
}

fu::TaeOptions quick() {
  // The defaults but for size. With the Gibbs loss off (its default since
  // the union task), moving q_λ alone hardly changes the votes on this
  // problem (prior 0.72, adapted 0.72); the relabelled votes do (1.0).
  return fu::TaeOptions()
      .network(fu::TaeNetworkOptions().prototypes(40))
      .training(fu::TaeTrainingOptions().epochs(12).batch_size(64))
      .adaptation(fu::TaeAdaptationOptions().samples(5).steps(80))
      .seed(3);
}

// Accuracy of `predict` (given the test inputs) on the test images of
// `classes`, labels as indices into `classes`.
template <typename Predict>
double accuracy_of(const Images& test, const std::vector<std::int64_t>& classes,
                   Predict predict) {
  auto mask = torch::zeros_like(test.y, torch::kBool);
  auto local = torch::full_like(test.y, -1);
  for (std::size_t j = 0; j < classes.size(); ++j) {
    mask |= test.y.eq(classes[j]);
    local.masked_fill_(test.y.eq(classes[j]), static_cast<std::int64_t>(j));
  }
  auto idx = mask.nonzero().flatten();
  const torch::Tensor pred = predict(test.x.index_select(0, idx)).argmax(1);
  return pred.eq(local.index_select(0, idx))
      .to(torch::kFloat64)
      .mean()
      .item<double>();
}

double accuracy_on(fu::TaeModel& m, const Images& test,
                   const fu::WDistribution& q,
                   const std::vector<std::int64_t>& classes) {
  return accuracy_of(test, classes, [&](const torch::Tensor& x) {
    return m.predict(x, q, classes);
  });
}

// The first `k` images of each of `classes` in `pool`, labelled by their
// index in `classes`.
std::pair<torch::Tensor, torch::Tensor> shots_of(
    const Images& pool, const std::vector<std::int64_t>& classes, int k) {
  std::vector<std::int64_t> rows, labels;
  for (std::size_t j = 0; j < classes.size(); ++j) {
    int taken = 0;
    for (std::int64_t i = 0; i < pool.y.size(0) && taken < k; ++i) {
      if (pool.y[i].item<std::int64_t>() != classes[j]) continue;
      rows.push_back(i);
      labels.push_back(static_cast<std::int64_t>(j));
      ++taken;
    }
    REQUIRE(taken == k);
  }
  return {pool.x.index_select(0, torch::tensor(rows, torch::kLong)),
          torch::tensor(labels, torch::kLong)};
}

// Accuracy of an adaptation of `m` to `task` (its classes' test images).
double adapted_accuracy(fu::TaeModel& m, const Images& test,
                        const std::vector<std::int64_t>& task,
                        const fu::TaeAdaptation& adapted) {
  return accuracy_of(test, task, [&](const torch::Tensor& t) {
    return m.predict(t, adapted, task);
  });
}

// `m` adapted to `task` with the first shot of each class in a fixed draw.
fu::TaeAdaptation adapt_one_shot(fu::TaeModel& m,
                                 const std::vector<std::int64_t>& task) {
  auto [x, y] = shots_of(draw(200, 3), task, 1);
  return m.adapt(multi_hot(task), x, y, task);
}

// Six classes of which the experts know {0, 1} and {2, 3}: 4 and 5 are
// classes no expert answered for.
constexpr std::int64_t kSix = 6;
fu::TaeModel six_class_model() {
  const auto d = draw(1500, 1, kSix);
  fu::TaeModel m(kPixels, kSix, kSix, quick());
  m.train(
      fu::TaeData{.inputs = d.x,
                  .answers = {expert_answers(d, {0, 1}, kSix),
                              expert_answers(d, {2, 3}, kSix)},
                  .tasks = {multi_hot({0, 1}, kSix), multi_hot({2, 3}, kSix)}});
  return m;
}

fu::TaeModel& trained() {
  static fu::TaeModel model = [] {
    torch::manual_seed(11);
    fu::TaeModel m(kPixels, kClasses, kClasses, quick());
    m.train(data(draw(1500, 1)));
    return m;
  }();
  return model;
}

}  // namespace

TEST_CASE("tae: training lowers the negative ELBO on a multi-task problem") {
  auto d = data(draw(1500, 1));
  fu::TaeModel fresh(kPixels, kClasses, kClasses, quick());
  const double before = fresh.negative_elbo(d);
  auto history = fresh.train(d);
  REQUIRE(history.size() == 12);
  const double after = fresh.negative_elbo(d);
  CHECK(after < before);
  CHECK(history.back() < history.front());
  for (double h : history) CHECK(std::isfinite(h));
}

TEST_CASE("tae: the prior of an expert's own task recomposes that expert") {
  auto& m = trained();
  torch::manual_seed(12);
  auto test = draw(400, 2);
  CHECK(accuracy_on(m, test, m.prior(multi_hot({0, 1})), {0, 1}) > 0.8);
  CHECK(accuracy_on(m, test, m.prior(multi_hot({2, 3})), {2, 3}) > 0.8);
}

TEST_CASE(
    "tae: adapting to a new task with 5 shots tightens the PAC-Bayes bound "
    "and does not lose to the prior") {
  auto& m = trained();
  torch::manual_seed(13);
  auto shots = draw(200, 4);
  // A task no expert had: class 1 against class 2, five shots of each.
  std::vector<std::int64_t> xs;
  std::vector<std::int64_t> ys;
  int ones = 0, twos = 0;
  for (std::int64_t i = 0; i < shots.y.size(0) && (ones < 5 || twos < 5); ++i) {
    auto c = shots.y[i].item<std::int64_t>();
    if (c == 1 && ones < 5) {
      xs.push_back(i);
      ys.push_back(0);
      ++ones;
    }
    if (c == 2 && twos < 5) {
      xs.push_back(i);
      ys.push_back(1);
      ++twos;
    }
  }
  auto x = shots.x.index_select(0, torch::tensor(xs, torch::kLong));
  auto y = torch::tensor(ys, torch::kLong);
  auto tau = multi_hot({1, 2});

  fu::TaeModel& model = m;
  auto prior = model.prior(tau);
  auto at_prior = model.bound(tau, x, y, prior, {1, 2});
  auto adapted = model.adapt(tau, x, y, {1, 2});
  CHECK(std::isfinite(adapted.bound));
  CHECK(adapted.bound < at_prior.bound);
  // Evaluated again, the returned q_λ has the bound reported.
  CHECK(model.bound(tau, x, y, adapted.posterior, {1, 2}).bound ==
        doctest::Approx(adapted.bound));
  auto test = draw(600, 5);
  const double acc_prior = accuracy_on(model, test, prior, {1, 2});
  const double acc_adapted =
      accuracy_on(model, test, adapted.posterior, {1, 2});
  // q_λ with the prototypes' votes relabelled by the shots (the prototypes
  // readout).
  const double acc_served =
      accuracy_of(test, {1, 2}, [&](const torch::Tensor& t) {
        return model.predict(t, adapted.posterior, {1, 2}, adapted.votes);
      });
  MESSAGE("prior " << acc_prior << " adapted " << acc_adapted << " relabelled "
                   << acc_served << " bound " << adapted.bound);
  CHECK(acc_adapted >= acc_prior - 0.02);
  // (How far the prior is from it depends on the draws of training: 0.2 or
  // 0.9 on this toy.)
  CHECK(acc_served >= acc_prior);
  CHECK(acc_served > 0.95);
}

TEST_CASE(
    "tae: one shot per class gives a finite bound, and bad shots are refused") {
  auto& m = trained();
  torch::manual_seed(14);
  auto shots = draw(50, 6);
  auto x = shots.x.slice(0, 0, 2);
  auto y = torch::tensor({0, 1}, torch::kLong);
  auto a = m.adapt(multi_hot({0, 3}), x, y, {0, 3});
  CHECK(std::isfinite(a.bound));
  CHECK(torch::isfinite(a.posterior.mean).all().item<bool>());
  CHECK(torch::isfinite(a.posterior.logvar).all().item<bool>());
  auto nan = x.clone();
  nan[0][0] = std::nanf("");
  CHECK(code_of([&] {
          m.adapt(multi_hot({0, 3}), nan, y, {0, 3});
        }) == Code::kInvalidArgument);
  CHECK(code_of([&] {
          m.adapt(multi_hot({0, 3}), x, torch::tensor({0, 2}), {0, 3});
        }) == Code::kInvalidArgument);
}

TEST_CASE("tae: a saved and reloaded global model predicts identically") {
  auto& m = trained();
  chorus::testing::TempDir dir;
  m.save(dir / "tae.pt");
  auto again = fu::TaeModel::load(dir / "tae.pt");
  auto test = draw(100, 7);
  auto w = torch::tensor({0.3f, -0.7f});
  CHECK(
      torch::allclose(m.log_g(test.x, w), again.log_g(test.x, w), 1e-5, 1e-6));
  CHECK(torch::equal(m.prototypes(), again.prototypes()));
  auto p = m.prior(multi_hot({0, 1}));
  auto p2 = again.prior(multi_hot({0, 1}));
  CHECK(torch::allclose(p.mean, p2.mean));
  CHECK(code_of([&] { fu::TaeModel::load(dir / "absent.pt"); }) ==
        Code::kNotFound);
  std::ofstream(dir / "junk.pt") << "not a model";
  CHECK(code_of([&] { fu::TaeModel::load(dir / "junk.pt"); }) ==
        Code::kDataLoss);
  // Bytes of the prototypes flipped on disk: refused, not used.
  REQUIRE(chorus::testing::flip_payload(dir / "tae.pt", m.prototypes()));
  std::string msg;
  CHECK(code_of([&] { fu::TaeModel::load(dir / "tae.pt"); }, &msg) ==
        Code::kDataLoss);
  CHECK(msg.find("checksum") != std::string::npos);
}

TEST_CASE(
    "tae: the default task is saved with the model, so its file alone "
    "predicts as the model that wrote it") {
  chorus::testing::TempDir dir;
  trained().save(dir / "plain.pt");
  auto m = fu::TaeModel::load(dir / "plain.pt");
  // No default stored: the prior of every output.
  CHECK(m.default_task().source == "prior of all outputs");
  std::vector<std::int64_t> all;
  for (std::int64_t c = 0; c < kClasses; ++c) all.push_back(c);
  auto [x, y] = shots_of(draw(400, 3), all, 5);
  auto adapted = m.adapt(torch::ones({kClasses}), x, y);
  REQUIRE(adapted.votes.defined());
  m.set_default_task(fu::TaeTask{
      .q = adapted.posterior, .votes = adapted.votes, .source = "on V"});
  auto test = draw(300, 9);
  const auto expected = m.predict(test.x, adapted.posterior, {}, adapted.votes);
  CHECK(m.default_task().source == "on V");
  CHECK(torch::allclose(m.predict(test.x, m.default_task()), expected));
  m.save(dir / "with-default.pt");
  auto again = fu::TaeModel::load(dir / "with-default.pt");
  CHECK(again.default_task().source == "on V");
  CHECK(torch::allclose(again.predict(test.x, again.default_task()), expected));
  // And it differs from the prior's predictions (the test can fail).
  CHECK_FALSE(
      torch::equal(again.predict(test.x, again.task_of_all_outputs()).argmax(1),
                   expected.argmax(1)));
  // A default that does not fit the model is refused.
  CHECK_THROWS_WITH(
      m.set_default_task(fu::TaeTask{
          .q = {torch::zeros({7}), torch::zeros({7})}, .source = "bad"}),
      doctest::Contains("embedding must have"));
}

TEST_CASE("tae: the model file is versioned with named fields") {
  chorus::testing::TempDir dir;
  // A file of version 1 (positional "dims" and "scalars") is still read.
  const auto o = fu::TaeOptions().network(
      fu::TaeNetworkOptions().hidden(16).prototypes(7));
  {
    fu::TaeNet net(8, 3, 3, o);
    torch::serialize::OutputArchive archive;
    archive.write("format", c10::IValue(std::string("chorus.tae.v1")));
    archive.write("dims",
                  torch::tensor({8, 3, 3, 2, 5, 16, 7, 4}, torch::kLong), true);
    archive.write(
        "scalars",
        torch::tensor({0.1, 0.02, 33.0, 0.5, 0.0, 0.3}, torch::kDouble), true);
    archive.write("prototypes", torch::randn({7, 5}), true);
    archive.write("labels", c10::IValue(std::string("a\nb\nc\n")));
    torch::serialize::OutputArchive tensors;
    for (const auto& item : net->named_parameters())
      tensors.write("param." + item.key(), item.value().detach(), true);
    for (const auto& item : net->named_buffers())
      tensors.write("buffer." + item.key(), item.value(), true);
    archive.write("tensors", tensors);
    archive.save_to((dir / "v1.pt").string());
  }
  REQUIRE(fu::TaeModel::is_model_file(dir / "v1.pt"));
  auto old = fu::TaeModel::load(dir / "v1.pt");
  CHECK(old.prototypes().size(0) == 7);
  CHECK(old.options().network().hidden() == 16);
  CHECK(old.options().adaptation().samples() == 4);
  CHECK(old.options().adaptation().steps() == 33);
  CHECK(old.options().adaptation().relabel() == false);
  CHECK(old.options().adaptation().relabel_prior() == doctest::Approx(0.3));
  CHECK(old.labels() == std::vector<std::string>{"a", "b", "c"});

  // Saved again, it is version 2 and reads back the same settings.
  old.save(dir / "v2.pt");
  {
    torch::serialize::InputArchive archive;
    archive.load_from((dir / "v2.pt").string());
    c10::IValue format, version, hidden;
    archive.read("format", format);
    archive.read("version", version);
    archive.read("network.hidden", hidden);
    CHECK(format.toStringRef() == "chorus.tae");
    CHECK(version.toInt() == 2);
    CHECK(hidden.toInt() == 16);
  }
  auto again = fu::TaeModel::load(dir / "v2.pt");
  CHECK(again.options().adaptation().steps() == 33);
  CHECK(again.options().adaptation().delta() == doctest::Approx(0.1));

  // A newer version, or a field missing, is DATA_LOSS naming it.
  auto write_header = [&](const std::filesystem::path& path, std::int64_t v,
                          bool with_dims) {
    torch::serialize::OutputArchive archive;
    archive.write("format", c10::IValue(std::string("chorus.tae")));
    archive.write("version", c10::IValue(v));
    if (with_dims) archive.write("dims.input", c10::IValue(std::int64_t{8}));
    archive.save_to(path.string());
  };
  write_header(dir / "v3.pt", 3, true);
  std::string msg3, msg_p;
  CHECK(code_of([&] { fu::TaeModel::load(dir / "v3.pt"); }, &msg3) ==
        Code::kDataLoss);
  CHECK(msg3.find("version 3") != std::string::npos);
  write_header(dir / "partial.pt", 2, true);
  CHECK(code_of([&] { fu::TaeModel::load(dir / "partial.pt"); }, &msg_p) ==
        Code::kDataLoss);
  CHECK(msg_p.find("dims.outputs") != std::string::npos);
}

TEST_CASE(
    "tae: relabelling the prototypes with the shots beats the prior on a pair "
    "of "
    "classes no expert knew") {
  // Six classes; the experts know {0, 1} and {2, 3}; the new task is 4 vs 5,
  // on which p_α(y|z) never saw a label.
  auto m = six_class_model();
  torch::manual_seed(15);
  const std::vector<std::int64_t> task = {4, 5};
  const auto tau = multi_hot(task, kSix);
  auto [x, y] = shots_of(draw(300, 8, kSix), task, 5);
  auto adapted = m.adapt(tau, x, y, task);
  REQUIRE(adapted.votes.defined());
  CHECK(adapted.votes.sizes() ==
        torch::IntArrayRef{quick().network().prototypes(), 2});
  CHECK(torch::allclose(adapted.votes.sum(1),
                        torch::ones({quick().network().prototypes()})));

  const auto test = draw(600, 9, kSix);
  const auto prior = m.prior(tau);
  const double acc_prior = accuracy_of(test, task, [&](const torch::Tensor& t) {
    return m.predict(t, prior, task);
  });
  const double acc_moved = accuracy_of(test, task, [&](const torch::Tensor& t) {
    return m.predict(t, adapted.posterior, task);
  });
  const double acc_relabelled =
      accuracy_of(test, task, [&](const torch::Tensor& t) {
        return m.predict(t, adapted.posterior, task, adapted.votes);
      });
  MESSAGE("prior " << acc_prior << ", q_λ alone " << acc_moved
                   << ", relabelled " << acc_relabelled);
  CHECK(acc_relabelled > acc_prior + 0.1);
  CHECK(acc_relabelled > acc_moved);
  CHECK(acc_relabelled > 0.85);

  // Votes of the wrong shape are refused.
  CHECK(code_of([&] {
          m.predict(test.x, adapted.posterior, task, torch::ones({3, 2}));
        }) == Code::kInvalidArgument);

  // The relabelling settings travel with the saved model.
  chorus::testing::TempDir dir;
  m.save(dir / "tae.pt");
  auto again = fu::TaeModel::load(dir / "tae.pt");
  CHECK(again.options().adaptation().relabel() ==
        m.options().adaptation().relabel());
  CHECK(again.options().adaptation().relabel_prior() ==
        doctest::Approx(m.options().adaptation().relabel_prior()));
}

TEST_CASE(
    "tae: the features readout reads a pair of classes no expert knew from "
    "the input encoder's features, and its head travels with the task") {
  // As in the relabelling test: the experts know {0, 1} and {2, 3} of six
  // classes; the new task is 4 vs 5, one shot each.
  auto m = six_class_model();
  // Trained, it knows which classes the experts answered for.
  REQUIRE(m.reads_out_features({4, 5}));
  CHECK_FALSE(m.reads_out_features({0, 3}));
  torch::manual_seed(16);
  const std::vector<std::int64_t> task = {4, 5};
  auto [x, y] = shots_of(draw(300, 8, kSix), task, 1);
  auto adapted = m.adapt(multi_hot(task, kSix), x, y, task);
  const auto hidden = m.feature_dim();
  REQUIRE(adapted.head_weight.defined());
  CHECK(adapted.head_weight.sizes() == torch::IntArrayRef{2, hidden});
  CHECK(adapted.head_bias.sizes() == torch::IntArrayRef{2});
  const auto f = m.features(x);
  CHECK(f.sizes() == torch::IntArrayRef{2, hidden});
  CHECK(torch::allclose(f.norm(2, 1), torch::ones({2}), 1e-4, 1e-4));

  const auto test = draw(600, 9, kSix);
  const double acc_features = adapted_accuracy(m, test, task, adapted);
  // Adaptation's head is fit_head's on the same shots.
  auto [w0, b0] = m.fit_head(x, y, task);
  const double acc_prototypes =
      accuracy_of(test, task, [&](const torch::Tensor& t) {
        return m.predict(t, adapted.posterior, task, adapted.votes);
      });
  MESSAGE("one shot each: features " << acc_features << ", prototypes "
                                     << acc_prototypes);
  CHECK(acc_features > 0.9);
  CHECK(torch::allclose(w0, adapted.head_weight));
  CHECK(torch::allclose(b0, adapted.head_bias));

  // A task with the head predicts by it, and the model's file keeps it as
  // the default task's.
  fu::TaeTask t{.classes = task,
                .q = adapted.posterior,
                .head_weight = adapted.head_weight,
                .head_bias = adapted.head_bias};
  const auto expected = m.predict(test.x, t);
  CHECK(torch::allclose(expected.sum(1), torch::ones({test.x.size(0)})));
  chorus::testing::TempDir dir;
  std::vector<std::int64_t> all(kSix);
  for (std::int64_t c = 0; c < kSix; ++c) all[c] = c;
  auto [vx, vy] = shots_of(draw(600, 10, kSix), all, 3);
  auto on_v = m.adapt(torch::ones({kSix}), vx, vy);
  m.set_default_task(fu::TaeTask{.q = on_v.posterior,
                                 .head_weight = on_v.head_weight,
                                 .head_bias = on_v.head_bias,
                                 .source = "on V"});
  const auto by_default = m.predict(test.x, m.default_task());
  m.save(dir / "tae.pt");
  auto again = fu::TaeModel::load(dir / "tae.pt");
  CHECK(again.reads_out_features({4, 5}));
  // Auto: the experts' classes read out by prototypes.
  CHECK_FALSE(again.reads_out_features({0, 2}));
  CHECK(again.known_outputs().sum().item<std::int64_t>() == 4);
  CHECK(again.options().adaptation().head_steps() ==
        m.options().adaptation().head_steps());
  CHECK(
      torch::allclose(again.predict(test.x, again.default_task()), by_default));
  CHECK(torch::allclose(again.predict(test.x, t), expected));

  // Heads that do not fit are refused, naming what is wrong.
  auto bad = t;
  bad.head_weight = torch::zeros({2, hidden + 1});
  CHECK_THROWS_WITH(m.predict(test.x, bad), doctest::Contains("head must be"));
  bad = t;
  bad.head_bias = torch::full({2}, std::nanf(""));
  CHECK_THROWS_WITH(m.predict(test.x, bad), doctest::Contains("NaN"));
  CHECK(code_of([] { fu::parse_tae_readout("nearest"); }) ==
        Code::kInvalidArgument);
  // A model without the input encoder reads out by prototypes, and refuses
  // a features head.
  fu::TaeModel plain(kPixels, kSix, kSix,
                     quick().network(quick().network().input_encoder(false)));
  CHECK_FALSE(plain.reads_out_features(task));
  CHECK(plain.adapt(multi_hot(task, kSix), x, y, task).head_weight.defined() ==
        false);
  CHECK_THROWS_WITH(plain.predict(test.x, t),
                    doctest::Contains("no input encoder"));
  plain.save(dir / "plain.pt");
  CHECK_FALSE(fu::TaeModel::load(dir / "plain.pt").reads_out_features(task));
}

TEST_CASE(
    "tae: the answer target makes the features separate what the experts "
    "tell apart, and leaves R's model as it was") {
  // Four classes told apart by two pixels only; the other 62 are coin
  // flips. The pixels' likelihood is mostly noise, so the features of a
  // plain input encoder hardly see the class; the experts see nothing else.
  // With label weight 0, R's decoder does not learn the answers either (it
  // would pass them to the input encoder that inverts it): only the answer
  // target can bring them into the features.
  constexpr std::int64_t kWide = 64;
  auto noisy = [](std::int64_t n, std::uint64_t seed) {
    auto gen = at::detail::createCPUGenerator(seed);
    auto y = torch::randint(kClasses, {n}, gen, torch::kLong);
    auto x = (torch::rand({n, kWide}, gen) > 0.5).to(torch::kFloat32);
    x.select(1, 0).copy_(y.remainder(2).to(torch::kFloat32));
    x.select(1, 1).copy_(y.div(2, "floor").to(torch::kFloat32));
    return Images{x, y};
  };
  const auto pool = noisy(1500, 21);
  auto options = [](double weight) {
    auto o = quick();
    o.network().answer_encoder(false);
    o.training().answer_weight(weight).label_weight(0);
    o.adaptation().readout(fu::TaeReadout::kFeatures);
    return o;
  };
  fu::TaeModel plain(kWide, kClasses, kClasses, options(0));
  fu::TaeModel aux(kWide, kClasses, kClasses, options(100));
  plain.train(data(pool));
  aux.train(data(pool));
  const std::vector<std::int64_t> task = {0, 3};
  auto [x, y] = shots_of(noisy(200, 22), task, 1);
  const auto test = noisy(600, 23);
  auto acc = [&](fu::TaeModel& m) {
    return adapted_accuracy(m, test, task,
                            m.adapt(multi_hot(task), x, y, task));
  };
  const double acc_plain = acc(plain), acc_aux = acc(aux);
  MESSAGE("one shot each, features: plain " << acc_plain << ", answer target "
                                            << acc_aux);
  CHECK(acc_aux > 0.95);
  CHECK(acc_aux > acc_plain + 0.1);
  // The head is training's only: R's model, and so the prototypes' readout,
  // is the same with and without it, and the saved file holds no more.
  const auto prior = plain.prior(multi_hot({0, 1}));
  CHECK(
      torch::equal(plain.predict(test.x, prior, {0, 1}),
                   aux.predict(test.x, aux.prior(multi_hot({0, 1})), {0, 1})));
  chorus::testing::TempDir dir;
  aux.save(dir / "aux.pt");
  auto again = fu::TaeModel::load(dir / "aux.pt");
  CHECK(torch::allclose(again.features(test.x), aux.features(test.x)));

  // A bad weight is refused, naming it.
  fu::TaeModel negative(kWide, kClasses, kClasses, options(-1));
  CHECK_THROWS_WITH(negative.train(data(pool)),
                    doctest::Contains("answer_weight must be"));
}

TEST_CASE(
    "tae: the answer encoder reads beside the input encoder, trains nothing "
    "else, and travels with the model") {
  auto options = [](bool answer_encoder) {
    auto o = quick();
    o.network().answer_encoder(answer_encoder);
    o.training().answer_weight(answer_encoder ? 100 : 0);
    o.adaptation().readout(fu::TaeReadout::kFeatures);
    return o;
  };
  const auto pool = draw(1500, 1);
  fu::TaeModel plain(kPixels, kClasses, kClasses, options(false));
  fu::TaeModel both(kPixels, kClasses, kClasses, options(true));
  plain.train(data(pool));
  both.train(data(pool));
  const auto hidden = quick().network().hidden();
  REQUIRE(plain.feature_dim() == hidden);
  REQUIRE(both.feature_dim() == 2 * hidden);
  const auto test = draw(300, 2);
  const auto f = both.features(test.x);
  CHECK(f.sizes() == torch::IntArrayRef{300, 2 * hidden});
  CHECK(torch::allclose(f.norm(2, 1), torch::ones({300}), 1e-4, 1e-4));
  // Its first half is the input encoder's, trained exactly as without the
  // answer encoder (streams of their own), and so is R's model.
  CHECK(torch::allclose(f.slice(1, 0, hidden) * std::sqrt(2.0),
                        plain.features(test.x), 1e-5, 1e-5));
  CHECK(torch::equal(
      plain.predict(test.x, plain.prior(multi_hot({2, 3})), {2, 3}),
      both.predict(test.x, both.prior(multi_hot({2, 3})), {2, 3})));
  // A head over both halves: adapted, saved, reloaded, refused elsewhere.
  const std::vector<std::int64_t> task = {1, 2};
  auto adapted = adapt_one_shot(both, task);
  CHECK(adapted.head_weight.sizes() == torch::IntArrayRef{2, 2 * hidden});
  CHECK(adapted_accuracy(both, test, task, adapted) > 0.9);
  chorus::testing::TempDir dir;
  both.save(dir / "both.pt");
  auto again = fu::TaeModel::load(dir / "both.pt");
  CHECK(again.options().network().answer_encoder());
  CHECK(torch::allclose(again.features(test.x), f));
  fu::TaeTask t{.classes = task,
                .q = adapted.posterior,
                .head_weight = adapted.head_weight,
                .head_bias = adapted.head_bias};
  CHECK(torch::allclose(again.predict(test.x, t), both.predict(test.x, t)));
  CHECK_THROWS_WITH(plain.predict(test.x, t),
                    doctest::Contains("head must be"));
  // Without the input encoder there is nothing to put it beside: the model
  // has neither, and trains with the answer weight ignored.
  auto none = options(true);
  none.network().input_encoder(false);
  fu::TaeModel without(kPixels, kClasses, kClasses, none);
  CHECK_FALSE(without.options().network().answer_encoder());
  CHECK(without.feature_dim() == 0);
  CHECK(without.train(data(pool)).size() == 12);
  CHECK_THROWS_WITH(without.features(test.x),
                    doctest::Contains("no input encoder"));
}

TEST_CASE(
    "tae: unlabelled images of a new task refine the features head's class "
    "means") {
  torch::manual_seed(17);
  fu::TaeModel m = six_class_model();
  // Classes 4 and 5: no expert answered for them, so auto reads by features.
  const std::vector<std::int64_t> task = {4, 5};
  const auto pool = draw(600, 31, kSix);
  const auto test = draw(900, 32, kSix);
  // One shot per class, the least typical of its class in the pool (the
  // most pixels away from the class's other images): a poor class mean.
  auto atypical = [&](std::int64_t c) {
    auto rows = pool.y.eq(c).nonzero().flatten();
    auto xs = pool.x.index_select(0, rows);
    auto far = torch::cdist(xs, xs.mean(0, true)).flatten().argmax();
    return rows[far].item<std::int64_t>();
  };
  auto sx = pool.x.index_select(
      0, torch::tensor({atypical(4), atypical(5)}, torch::kLong));
  auto sy = torch::tensor({0, 1}, torch::kLong);
  auto of_task = pool.y.eq(4) | pool.y.eq(5);
  auto ux = pool.x.index_select(0, of_task.nonzero().flatten());

  auto plain = m.adapt(multi_hot(task, kSix), sx, sy, task);
  auto refined = m.adapt(multi_hot(task, kSix), sx, sy, task, ux);
  CHECK(plain.unlabelled == 0);
  CHECK(refined.unlabelled == ux.size(0));
  // The same PAC-Bayes adaptation; only the head differs.
  CHECK(torch::equal(plain.posterior.mean, refined.posterior.mean));
  // The refined head is a nearest class mean over unit-norm means.
  REQUIRE(refined.head_weight.sizes() == plain.head_weight.sizes());
  CHECK(torch::allclose(refined.head_weight.norm(2, 1), torch::full({2}, 2.0),
                        1e-4, 1e-4));
  CHECK(torch::allclose(refined.head_bias, torch::full({2}, -1.0), 1e-4, 1e-4));
  // Its means are closer to the true ones (the unlabelled images' class
  // means, which the head never saw the labels of) than the shots' are.
  auto f = m.features(ux);
  auto uy = pool.y.index_select(0, of_task.nonzero().flatten());
  namespace F = torch::nn::functional;
  const auto unit = F::NormalizeFuncOptions().dim(1);
  auto truth = F::normalize(
      torch::stack({f.index_select(0, uy.eq(4).nonzero().flatten()).mean(0),
                    f.index_select(0, uy.eq(5).nonzero().flatten()).mean(0)}),
      unit);
  auto cosine = [&](const torch::Tensor& w) {
    return (F::normalize(w, unit) * truth).sum(1).mean().item<double>();
  };
  const double c_plain = cosine(plain.head_weight),
               c_refined = cosine(refined.head_weight);
  auto acc = [&](const fu::TaeAdaptation& a) {
    return accuracy_of(test, task, [&](const torch::Tensor& t) {
      return m.predict(t, a, task);
    });
  };
  const double acc_plain = acc(plain), acc_refined = acc(refined);
  MESSAGE("atypical shots: cosine to the true means "
          << c_plain << " -> " << c_refined << ", accuracy " << acc_plain
          << " -> " << acc_refined);
  CHECK(c_refined > c_plain);
  CHECK(acc_refined >= acc_plain);
  CHECK(acc_refined > 0.95);

  // A task of known classes reads out by the prototypes and uses none.
  auto [kx, ky] = shots_of(pool, {0, 1}, 1);
  CHECK(m.adapt(multi_hot({0, 1}, kSix), kx, ky, {0, 1}, ux).unlabelled == 0);
  // Bad unlabelled inputs are refused, naming them.
  CHECK_THROWS_WITH(m.fit_head(sx, sy, task, torch::full({3, kPixels}, NAN)),
                    doctest::Contains("unlabelled inputs hold NaN"));
  CHECK_THROWS_WITH(m.fit_head(sx, sy, task, torch::zeros({3, kPixels + 1})),
                    doctest::Contains("the model takes 16"));
  // Its settings travel with the model; bad ones are refused.
  auto tuned = quick();
  tuned.adaptation()
      .unlabelled_rounds(5)
      .unlabelled_weight(0.5)
      .unlabelled_temperature(7);
  fu::TaeModel small(kPixels, kClasses, kClasses, tuned);
  chorus::testing::TempDir dir;
  small.save(dir / "tuned.pt");
  auto again = fu::TaeModel::load(dir / "tuned.pt");
  CHECK(again.options().adaptation().unlabelled_rounds() == 5);
  CHECK(again.options().adaptation().unlabelled_weight() ==
        doctest::Approx(0.5));
  CHECK(again.options().adaptation().unlabelled_temperature() ==
        doctest::Approx(7));
  auto bad = quick();
  bad.adaptation().unlabelled_weight(-1);
  CHECK_THROWS_WITH(fu::TaeModel(kPixels, kClasses, kClasses, bad),
                    doctest::Contains("unlabelled_weight must be"));
}

TEST_CASE(
    "tae: image inputs get convolutional encoders, which travel with the "
    "model") {
  torch::manual_seed(19);
  auto o = quick();
  o.network().image_shape({1, 4, 4});
  o.adaptation().readout(fu::TaeReadout::kFeatures);
  fu::TaeModel m(kPixels, kClasses, kClasses, o);
  REQUIRE(m.options().network().conv_channels() ==
          fu::TaeNetworkOptions().conv_channels());
  const auto pool = draw(1500, 1);
  m.train(data(pool));
  const auto test = draw(300, 2);
  const auto f = m.features(test.x);
  const auto hidden = quick().network().hidden();
  CHECK(f.sizes() == torch::IntArrayRef{300, 2 * hidden});
  CHECK(torch::allclose(f.norm(2, 1), torch::ones({300}), 1e-4, 1e-4));
  // A task read by its features from one shot per class.
  const std::vector<std::int64_t> task = {1, 2};
  CHECK(adapted_accuracy(m, test, task, adapt_one_shot(m, task)) > 0.9);
  chorus::testing::TempDir dir;
  m.save(dir / "conv.pt");
  auto again = fu::TaeModel::load(dir / "conv.pt");
  CHECK(again.options().network().conv_channels() ==
        m.options().network().conv_channels());
  CHECK(again.options().network().image_shape() ==
        std::vector<std::int64_t>{1, 4, 4});
  CHECK(torch::allclose(again.features(test.x), f));
  // Batches of 2 rows of R's 3 tasks still give its BatchNorm two rows.
  auto tiny = o;
  tiny.training().batch_size(2).epochs(1);
  fu::TaeModel small_batches(kPixels, kClasses, kClasses, tiny);
  CHECK(small_batches.train(data(draw(40, 5))).size() == 1);
  // Flat inputs, images under 4×4 or conv_channels 0: the one-layer trunk,
  // and a file that says so.
  CHECK(fu::TaeModel(kPixels, kClasses, kClasses, quick())
            .options()
            .network()
            .conv_channels() == 0);
  auto small = quick();
  small.network().image_shape({4, 2, 2});
  CHECK(fu::TaeModel(kPixels, kClasses, kClasses, small)
            .options()
            .network()
            .conv_channels() == 0);
  trained().save(dir / "flat.pt");
  CHECK(
      fu::TaeModel::load(dir / "flat.pt").options().network().conv_channels() ==
      0);
  // Shapes that are not the inputs' are refused, naming the shape.
  auto wrong = quick();
  wrong.network().image_shape({1, 4, 5});
  std::string msg;
  CHECK(code_of([&] { fu::TaeModel(kPixels, kClasses, kClasses, wrong); },
                &msg) == Code::kInvalidArgument);
  CHECK(msg.find("image_shape [1, 4, 5]") != std::string::npos);
  auto negative = quick();
  negative.network().conv_channels(-1);
  CHECK(code_of([&] { fu::TaeModel(kPixels, kClasses, kClasses, negative); }) ==
        Code::kInvalidArgument);
}

TEST_CASE(
    "tae: encoders trained on shifted views give features that a shift "
    "moves less") {
  torch::manual_seed(23);
  auto o = quick();
  o.network().image_shape({1, 4, 4});
  const auto pool = draw(1500, 1);
  const auto test = draw(300, 2);
  // Each test image moved one pixel right (zeros on the left): how close
  // its features stay, as the mean cosine.
  auto steadiness = [&](fu::TaeModel& m) {
    auto img = test.x.reshape({-1, 4, 4});
    auto moved = torch::zeros_like(img);
    moved.slice(2, 1, 4).copy_(img.slice(2, 0, 3));
    return (m.features(test.x) * m.features(moved.reshape({-1, kPixels})))
        .sum(1)
        .mean()
        .item<double>();
  };
  fu::TaeModel plain(kPixels, kClasses, kClasses, o);
  plain.train(data(pool));
  auto s = o;
  s.training().encoder_shift(1);
  fu::TaeModel shifted(kPixels, kClasses, kClasses, s);
  shifted.train(data(pool));
  const double before = steadiness(plain), after = steadiness(shifted);
  MESSAGE("cosine of a test image's features and its 1-pixel shift's: "
          << before << " (no shifts), " << after << " (encoder_shift 1)");
  CHECK(after > before);
  // The shifts train the encoders only: R's model, and so the prototypes'
  // readout of the experts' classes, is the same.
  CHECK(torch::allclose(plain.predict(test.x, plain.task_of_all_outputs()),
                        shifted.predict(test.x, shifted.task_of_all_outputs()),
                        1e-5, 1e-6));
  auto bad = o;
  bad.training().encoder_shift(-1);
  CHECK_THROWS_WITH(fu::TaeModel(kPixels, kClasses, kClasses, bad),
                    doctest::Contains("encoder_shift must be non-negative"));
}

TEST_CASE(
    "tae: the pool's feature centres are a prior over a new task's class "
    "means") {
  torch::manual_seed(23);
  fu::TaeModel m = six_class_model();
  const auto k = fu::TaeTrainingOptions().pool_centres();
  const auto& mu = m.pool_centres();
  REQUIRE(mu.defined());
  CHECK(mu.sizes() == torch::IntArrayRef{k, m.feature_dim()});
  CHECK(torch::allclose(mu.norm(2, 1), torch::ones({k}), 1e-4, 1e-4));
  // One shot per class of a task no expert knew: the class means are the
  // shots' pulled toward the centres near them, worth centre_weight shots,
  // and the head reads them with the pool's covariance, without head steps.
  const std::vector<std::int64_t> task = {4, 5};
  const auto pool = draw(600, 41, kSix);
  auto [x1, y1] = shots_of(pool, task, 1);
  const auto a = m.options().adaptation();
  auto f = m.features(x1);  // one row per class, in task order
  auto near = torch::softmax(a.centre_temperature() * f.matmul(mu.t()), 1);
  auto want = torch::nn::functional::normalize(
      f + a.centre_weight() * near.matmul(mu),
      torch::nn::functional::NormalizeFuncOptions().dim(1));
  // The covariance is the pool's features' about their nearest centre's
  // cluster mean.
  const auto& cov = m.pool_covariance();
  REQUIRE(cov.defined());
  {
    auto fp = m.features(draw(1500, 1, kSix).x);
    auto nearest = fp.matmul(mu.t()).argmax(1);
    auto sums = torch::zeros_like(mu).index_add_(0, nearest, fp);
    auto counts = torch::bincount(nearest, {}, mu.size(0)).clamp_min(1);
    auto dev = fp - (sums / counts.unsqueeze(1)).index_select(0, nearest);
    CHECK(torch::allclose(cov, dev.t().matmul(dev) / fp.size(0), 1e-4, 1e-6));
  }
  const auto s = a.covariance_shrinkage();
  REQUIRE(s < 1);
  auto shrunk =
      (1 - s) * cov / cov.diagonal().mean() + s * torch::eye(cov.size(0));
  auto p = torch::linalg_solve(shrunk, want.t()).t();  // S⁻¹c per class
  auto [w1, b1] = m.fit_head(x1, y1, task);
  CHECK(torch::allclose(w1, 2 * p, 1e-3, 1e-4));
  CHECK(torch::allclose(b1, -(p * want).sum(1), 1e-3, 1e-4));
  // Shrinkage 1 is the nearest pulled class mean.
  m.set_adaptation(fu::TaeAdaptationOptions(a).covariance_shrinkage(1));
  auto [w1n, b1n] = m.fit_head(x1, y1, task);
  CHECK(torch::allclose(w1n, 2 * want, 1e-4, 1e-5));
  CHECK(torch::allclose(b1n, -torch::ones({2}), 1e-4, 1e-5));
  CHECK(code_of([&] {
          m.set_adaptation(
              fu::TaeAdaptationOptions(a).covariance_shrinkage(1.5));
        }) == Code::kInvalidArgument);
  m.set_adaptation(a);
  // With two shots per class the head steps start from the pulled means.
  auto [x2, y2] = shots_of(pool, task, 2);
  auto [w2, b2] = m.fit_head(x2, y2, task);
  CHECK_FALSE(torch::allclose(b2, -torch::ones({2}), 1e-3, 1e-3));
  const auto test = draw(900, 42, kSix);
  CHECK(accuracy_of(test, task, [&](const torch::Tensor& t) {
          return torch::matmul(m.features(t), w2.t()) + b2;
        }) > 0.9);
  // Saved and read back with the model.
  chorus::testing::TempDir dir;
  m.save(dir / "centres.pt");
  auto again = fu::TaeModel::load(dir / "centres.pt");
  CHECK(torch::equal(again.pool_centres(), mu));
  CHECK(torch::equal(again.pool_covariance(), cov));
  CHECK(again.options().adaptation().centre_weight() == a.centre_weight());
  CHECK(again.options().adaptation().covariance_shrinkage() == s);
  auto [w1b, b1b] = again.fit_head(x1, y1, task);
  CHECK(torch::allclose(w1b, w1, 1e-5, 1e-6));
  // A model trained without centres has none (the shots' own means, then
  // the head steps).
  auto none = quick();
  none.training().pool_centres(0);
  fu::TaeModel plain(kPixels, kClasses, kClasses, none);
  plain.train(data(draw(600, 1)));
  CHECK_FALSE(plain.pool_centres().defined());
  CHECK_FALSE(plain.pool_covariance().defined());
  auto bad = quick();
  bad.adaptation().centre_weight(-1);
  CHECK(code_of([&] { fu::TaeModel(kPixels, kClasses, kClasses, bad); }) ==
        Code::kInvalidArgument);
}
