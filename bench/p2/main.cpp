// bench_p2: protocol P2 of ALGORITHMS.md — few-shot new tasks from black
// boxes trained on other tasks (the ICML 2020 protocol), in process.
//
//   bench_p2 [--tasks N] [--seed N] [--datasets mnist2,fmnist3] [--threads N]
//            [--epochs N] [--space classes|binary] [--beta X]
//            [--gibbs-weight X] [--no-union] [--relabel-prior X] [--no-relabel]
//            [--readout auto|features|prototypes] [--no-input-encoder]
//            [--head-steps N] [--answer-weight X] [--[no-]answer-encoder]
//            [--unlabelled N] [--unlabelled-weight X] [--unlabelled-rounds N]
//            [--conv-channels N] [--encoder-shift N] [--pool-centres N]
//            [--centre-weight X] [--centre-temperature X]
//            [--covariance-shrinkage X] [--paper]
//            [--test-per-class N] [--json FILE]
//
// Black boxes are binary classifiers on class pairs: MNIST-2 has two,
// (0,1) and (2,3); F-MNIST-3 has three, (0,1), (2,3) and (4,5). Each answers
// [p(first class), p(second class)] on the coordinator's unlabelled pool; tae
// learns from those answers with τ_i = [onehot(first), onehot(second)]. A new
// task is an ordered pair (a, b): seen (S) when both classes were some black
// box's, unseen (U) when neither was (our reading of "unseen"). For each
// task, k labelled shots per class (k = 1, 5) drawn from the training split,
// accuracy on the test images of a and b (at most --test-per-class of each,
// 500 by default: the first of a fixed shuffle of the test split). Rows: tae
// (PAC-Bayes adaptation with the shots, then TaeAdaptationOptions::readout:
// auto reads unseen tasks by the features head fitted on the shots and seen
// ones by the prototypes, relabelled unless --no-relabel), tae-proto (the
// same adaptation read out by the relabelled prototypes, where tae read by
// features: what the readout adds), tae-ncm (where tae's one-shot head used
// the pool's covariance, the same class means read by nearest class mean,
// covariance_shrinkage 1: what the covariance adds), tae+U (where tae read by
// features, its head refined over --unlabelled images of the task's two classes
// drawn from the training split, the shots possibly among them: a node that
// holds unlabelled data of the new task; the other rows use the shots alone),
// FS+U (tae+U's like-for-like: FS labels the same unlabelled images and a
// fresh model trains on the shots and those pseudo-labels, 10 epochs), B+
// (the black boxes' lifted sum, compared
// on a and b), FS (a model trained from scratch on the shots), FT (a student
// distilled from B+ on the pool, fine-tuned on the shots). Mean ± sd over
// tasks.
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/memory.hpp"
#include "chorus/fusion/datasets.hpp"
#include "chorus/fusion/distill.hpp"
#include "chorus/fusion/ensemble.hpp"
#include "chorus/fusion/models.hpp"
#include "chorus/fusion/random.hpp"
#include "chorus/fusion/tae.hpp"
#include "chorus/fusion/train.hpp"

namespace fu = chorus::fusion;
using Clock = std::chrono::steady_clock;

namespace {

struct Args {
  int tasks = 100;
  std::uint64_t seed = 0;
  std::vector<std::string> datasets = {"mnist2", "fmnist3"};
  int threads = 2;
  int epochs = 20;
  /// tae's output space: "classes" (the experts' answers lifted into the 10
  /// classes, τ the multi-hot of a task's classes; a new task reads G on its
  /// two classes) or "binary" (η = [p(first), p(second)] of each task, τ
  /// = [onehot(first), onehot(second)]).
  std::string space = "classes";
  /// β of G (TaeOptions::likelihood_scale); 0: its default.
  double beta = 0;
  /// TaeOptions::gibbs_weight.
  double gibbs_weight = fu::TaeTrainingOptions().gibbs_weight();
  /// TaeOptions::union_task (only in the classes space).
  bool union_task = true;
  /// TaeOptions::relabel and relabel_prior.
  bool relabel = fu::TaeAdaptationOptions().relabel();
  double relabel_prior = fu::TaeAdaptationOptions().relabel_prior();
  /// TaeAdaptationOptions::readout and head_steps.
  std::string readout = fu::to_string(fu::TaeAdaptationOptions().readout());
  std::int64_t head_steps = fu::TaeAdaptationOptions().head_steps();
  /// TaeNetworkOptions::input_encoder.
  bool input_encoder = fu::TaeNetworkOptions().input_encoder();
  /// TaeTrainingOptions::answer_weight and
  /// TaeNetworkOptions::answer_encoder.
  double answer_weight = fu::TaeTrainingOptions().answer_weight();
  bool answer_encoder = fu::TaeNetworkOptions().answer_encoder();
  /// TaeNetworkOptions::conv_channels (the images are 1×28×28).
  std::int64_t conv_channels = fu::TaeNetworkOptions().conv_channels();
  /// TaeTrainingOptions::encoder_shift.
  std::int64_t encoder_shift = fu::TaeTrainingOptions().encoder_shift();
  /// TaeTrainingOptions::pool_centres, TaeAdaptationOptions::centre_weight
  /// and centre_temperature.
  std::int64_t pool_centres = fu::TaeTrainingOptions().pool_centres();
  double centre_weight = fu::TaeAdaptationOptions().centre_weight();
  double centre_temperature = fu::TaeAdaptationOptions().centre_temperature();
  /// TaeAdaptationOptions::covariance_shrinkage.
  double covariance_shrinkage =
      fu::TaeAdaptationOptions().covariance_shrinkage();
  /// Unlabelled images of each task for the tae+U row (0: no such row), and
  /// TaeAdaptationOptions::unlabelled_weight and unlabelled_rounds.
  std::int64_t unlabelled = 1000;
  double unlabelled_weight = fu::TaeAdaptationOptions().unlabelled_weight();
  std::int64_t unlabelled_rounds =
      fu::TaeAdaptationOptions().unlabelled_rounds();
  /// Test images per class of a task (the first of a fixed shuffle).
  std::int64_t test_per_class = 500;
  std::string json = "bench_p2.json";
};

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::pair<double, double> mean_sd(const std::vector<double>& v) {
  double m = 0, s = 0;
  for (double x : v) m += x;
  m /= static_cast<double>(v.size());
  for (double x : v) s += (x - m) * (x - m);
  return {
      m, v.size() > 1 ? std::sqrt(s / static_cast<double>(v.size() - 1)) : 0.0};
}

struct Split {
  torch::Tensor train_x, train_y, test_x, test_y, pool_x;
};

Split load(const std::string& name, std::uint64_t seed) {
  auto gen = fu::make_generator(seed);
  Split s;
  if (name == "mnist2") {
    auto d = fu::load_mnist_digits(chorus::path_or_env({}, "CHORUS_MNIST_DIR"));
    auto perm = torch::randperm(d.size(), gen, torch::kLong);
    const auto n_train = d.size() * 8 / 10;
    auto tr = perm.slice(0, 0, n_train), te = perm.slice(0, n_train);
    s.train_x = d.images.index_select(0, tr);
    s.train_y = d.labels.index_select(0, tr);
    s.test_x = d.images.index_select(0, te);
    s.test_y = d.labels.index_select(0, te);
    s.pool_x = s.train_x;
  } else {
    auto train = fu::load_fashion_mnist(
        fu::Split::kTrain, chorus::path_or_env({}, "CHORUS_DATA_DIR"));
    auto test = fu::load_fashion_mnist(
        fu::Split::kTest, chorus::path_or_env({}, "CHORUS_DATA_DIR"));
    auto perm =
        torch::randperm(train.size(), gen, torch::kLong).slice(0, 0, 20000);
    s.train_x = train.images.index_select(0, perm);
    s.train_y = train.labels.index_select(0, perm);
    auto test_perm = torch::randperm(test.size(), gen, torch::kLong);
    s.test_x = test.images.index_select(0, test_perm);
    s.test_y = test.labels.index_select(0, test_perm);
    s.pool_x = s.train_x.slice(0, 0, 10000);
  }
  return s;
}

torch::Tensor rows_of(const torch::Tensor& y, std::int64_t c) {
  return y.eq(c).nonzero().flatten();
}

// A binary black box on (a, b): a LeNet trained on those two classes.
std::shared_ptr<fu::ClassifierImpl> black_box(const Split& s, std::int64_t a,
                                              std::int64_t b,
                                              std::uint64_t seed, int threads) {
  auto ia = rows_of(s.train_y, a), ib = rows_of(s.train_y, b);
  auto idx = torch::cat({ia, ib});
  auto y = torch::cat({torch::zeros({ia.numel()}, torch::kLong),
                       torch::ones({ib.numel()}, torch::kLong)});
  auto gen = fu::make_generator(seed);
  auto m = fu::make_classifier(fu::ModelSpec{.arch = "lenet", .num_classes = 2},
                               gen);
  fu::train(
      *m, s.train_x.index_select(0, idx), y,
      fu::TrainOptions().epochs(2).batch_size(64).lr(2e-3).seed(seed).threads(
          threads));
  return m;
}

struct Row {
  std::vector<double> values;
};

}  // namespace

int main(int argc, char** argv) {
  chorus::tune_allocator();
  Args args;
  for (int i = 1; i < argc; ++i) {
    auto next = [&] {
      return i + 1 < argc ? std::string(argv[++i]) : std::string();
    };
    const std::string a = argv[i];
    if (a == "--tasks")
      args.tasks = std::stoi(next());
    else if (a == "--seed")
      args.seed = std::stoull(next());
    else if (a == "--threads")
      args.threads = std::stoi(next());
    else if (a == "--epochs")
      args.epochs = std::stoi(next());
    else if (a == "--json")
      args.json = next();
    else if (a == "--space")
      args.space = next();
    else if (a == "--beta")
      args.beta = std::stod(next());
    else if (a == "--gibbs-weight")
      args.gibbs_weight = std::stod(next());
    else if (a == "--no-union")
      args.union_task = false;
    else if (a == "--relabel-prior")
      args.relabel_prior = std::stod(next());
    else if (a == "--no-relabel")
      args.relabel = false;
    else if (a == "--readout")
      args.readout = next();
    else if (a == "--head-steps")
      args.head_steps = std::stoll(next());
    else if (a == "--no-input-encoder")
      args.input_encoder = false;
    else if (a == "--answer-weight")
      args.answer_weight = std::stod(next());
    else if (a == "--answer-encoder")
      args.answer_encoder = true;
    else if (a == "--no-answer-encoder")
      args.answer_encoder = false;
    else if (a == "--unlabelled")
      args.unlabelled = std::stoll(next());
    else if (a == "--unlabelled-weight")
      args.unlabelled_weight = std::stod(next());
    else if (a == "--unlabelled-rounds")
      args.unlabelled_rounds = std::stoll(next());
    else if (a == "--conv-channels")
      args.conv_channels = std::stoll(next());
    else if (a == "--encoder-shift")
      args.encoder_shift = std::stoll(next());
    else if (a == "--pool-centres")
      args.pool_centres = std::stoll(next());
    else if (a == "--centre-weight")
      args.centre_weight = std::stod(next());
    else if (a == "--centre-temperature")
      args.centre_temperature = std::stod(next());
    else if (a == "--covariance-shrinkage")
      args.covariance_shrinkage = std::stod(next());
    else if (a == "--paper") {
      // The paper's configuration as we read it (ALGORITHMS.md §4): none of
      // our additions, G's Gibbs loss trained with the ELBO.
      args.union_task = args.relabel = args.input_encoder = false;
      args.answer_weight = 0;
      args.answer_encoder = false;
      args.conv_channels = 0;
      args.encoder_shift = 0;
      args.pool_centres = 0;
      args.unlabelled = 0;
      args.readout = "prototypes";
      args.gibbs_weight = 50;
    } else if (a == "--test-per-class")
      args.test_per_class = std::stoll(next());
    else if (a == "--datasets") {
      args.datasets.clear();
      std::stringstream in(next());
      std::string d;
      while (std::getline(in, d, ',')) args.datasets.push_back(d);
    } else {
      fmt::print(
          stderr,
          "usage: bench_p2 [--tasks N] [--seed N] [--datasets mnist2,fmnist3] "
          "[--threads N] [--epochs N] [--space classes|binary] [--beta X] "
          "[--gibbs-weight X] [--no-union] [--relabel-prior X] [--no-relabel] "
          "[--readout auto|features|prototypes] [--no-input-encoder] "
          "[--head-steps N] [--answer-weight X] [--[no-]answer-encoder] "
          "[--unlabelled N] [--unlabelled-weight X] [--unlabelled-rounds N] "
          "[--conv-channels N] [--encoder-shift N] [--pool-centres N] "
          "[--centre-weight X] [--centre-temperature X] "
          "[--covariance-shrinkage X] [--paper] "
          "[--test-per-class N] [--json FILE]\n");
      return 2;
    }
  }
  // The union of task-relative answers means nothing.
  if (args.space == "binary") args.union_task = false;
  try {
    torch::set_num_threads(args.threads);
    const auto t_all = Clock::now();
    nlohmann::json out{{"benchmark", "p2"},
                       {"seed", args.seed},
                       {"tasks", args.tasks},
                       {"tae_output_space", args.space},
                       {"tae_beta", args.beta},
                       {"tae_gibbs_weight", args.gibbs_weight},
                       {"tae_union_task", args.union_task},
                       {"tae_relabel", args.relabel},
                       {"tae_relabel_prior", args.relabel_prior},
                       {"tae_readout", args.readout},
                       {"tae_head_steps", args.head_steps},
                       {"tae_input_encoder", args.input_encoder},
                       {"tae_answer_weight", args.answer_weight},
                       {"tae_answer_encoder", args.answer_encoder},
                       {"tae_conv_channels", args.conv_channels},
                       {"tae_encoder_shift", args.encoder_shift},
                       {"tae_pool_centres", args.pool_centres},
                       {"tae_centre_weight", args.centre_weight},
                       {"tae_centre_temperature", args.centre_temperature},
                       {"tae_covariance_shrinkage", args.covariance_shrinkage},
                       {"unlabelled", args.unlabelled},
                       {"tae_unlabelled_weight", args.unlabelled_weight},
                       {"tae_unlabelled_rounds", args.unlabelled_rounds},
                       {"threads", args.threads},
                       {"tae_epochs", args.epochs},
                       {"test_per_class", args.test_per_class}};
    // The paper's Table 1 (MNIST-2), printed beside ours.
    const std::map<std::string, double> paper = {
        {"mnist2 S 1 tae", 94.25}, {"mnist2 S 5 tae", 95.07},
        {"mnist2 U 1 tae", 78.56}, {"mnist2 U 5 tae", 88.77},
        {"mnist2 S 1 B+", 96.25},  {"mnist2 U 1 B+", 50.25},
        {"mnist2 S 1 FS", 80.75},  {"mnist2 U 1 FS", 76.75},
        {"mnist2 U 5 FS", 89.21}};
    std::vector<std::string> table;
    for (const auto& name : args.datasets) {
      CHORUS_CHECK(name == "mnist2" || name == "fmnist3",
                   "unknown data set '{}' (expected mnist2 or fmnist3)", name);
      const auto t_ds = Clock::now();
      auto s = load(name, args.seed);
      std::vector<std::pair<std::int64_t, std::int64_t>> pairs =
          name == "mnist2"
              ? std::vector<std::pair<std::int64_t, std::int64_t>>{{0, 1},
                                                                   {2, 3}}
              : std::vector<std::pair<std::int64_t, std::int64_t>>{
                    {0, 1}, {2, 3}, {4, 5}};
      std::vector<bool> seen(10, false);
      std::vector<std::shared_ptr<fu::ClassifierImpl>> boxes;
      std::vector<fu::ExpertInfo> infos;
      fu::TaeData data;
      data.inputs = s.pool_x;
      std::vector<torch::Tensor> raw_answers;
      const bool binary = args.space == "binary";
      CHORUS_CHECK(binary || args.space == "classes",
                   "--space must be classes or binary, got '{}'", args.space);
      auto task_of = [binary](std::int64_t a, std::int64_t b) {
        auto t = torch::zeros({binary ? 20 : 10});
        t[a] = 1;
        t[binary ? 10 + b : b] = 1;
        return t;
      };
      for (std::size_t i = 0; i < pairs.size(); ++i) {
        auto [a, b] = pairs[i];
        seen[static_cast<std::size_t>(a)] = seen[static_cast<std::size_t>(b)] =
            true;
        boxes.push_back(black_box(s, a, b, args.seed * 10 + i, args.threads));
        infos.push_back({fmt::format("box{}", i), {a, b}});
        auto answers = fu::predict_proba(*boxes.back(), s.pool_x);
        data.answers.push_back(binary ? answers
                                      : fu::lift(answers, {a, b}, 10));
        raw_answers.push_back(answers);
        data.tasks.push_back(task_of(a, b));
      }
      const double boxes_seconds = since(t_ds);
      fmt::print(stderr, "{}: {} black boxes trained in {:.1f} s\n", name,
                 boxes.size(), boxes_seconds);

      // tae on R, over the binary output space.
      const auto t_tae = Clock::now();
      auto tae_options =
          fu::TaeOptions()
              .network(fu::TaeNetworkOptions()
                           .input_encoder(args.input_encoder)
                           .answer_encoder(args.answer_encoder)
                           .image_shape({1, 28, 28})
                           .conv_channels(args.conv_channels))
              .training(fu::TaeTrainingOptions()
                            .epochs(args.epochs)
                            .union_task(args.union_task)
                            .answer_weight(args.answer_weight)
                            .gibbs_weight(args.gibbs_weight)
                            .encoder_shift(args.encoder_shift)
                            .pool_centres(args.pool_centres))
              .adaptation(fu::TaeAdaptationOptions()
                              .steps(60)
                              .samples(5)
                              .likelihood_scale(args.beta)
                              .relabel(args.relabel)
                              .relabel_prior(args.relabel_prior)
                              .readout(fu::parse_tae_readout(args.readout))
                              .head_steps(args.head_steps)
                              .unlabelled_weight(args.unlabelled_weight)
                              .unlabelled_rounds(args.unlabelled_rounds)
                              .centre_weight(args.centre_weight)
                              .centre_temperature(args.centre_temperature)
                              .covariance_shrinkage(args.covariance_shrinkage))
              .seed(args.seed)
              .threads(args.threads);
      fu::TaeModel tae(
          28 * 28, binary ? 2 : 10, binary ? 20 : 10,
          tae_options.on_epoch([&](std::int64_t e, double nelbo) {
            fmt::print(stderr, "{} tae epoch {}/{}: -ELBO {:.1f} ({:.0f} s)\n",
                       name, e, args.epochs, nelbo, since(t_tae));
          }));
      tae.train(data);
      const double tae_seconds = since(t_tae);

      // FT's student: distilled from B+ (lifted into the 10 classes) on the
      // pool.
      std::vector<torch::Tensor> lifted;
      for (std::size_t i = 0; i < boxes.size(); ++i) {
        lifted.push_back(fu::lift(raw_answers[i], infos[i].labels, 10));
      }
      auto bplus_pool = fu::ensemble_sum(lifted);
      auto student = fu::distill(s.pool_x, bplus_pool,
                                 fu::DistillOptions()
                                     .arch("lenet")
                                     .epochs(3)
                                     .seed(args.seed)
                                     .threads(args.threads),
                                 "ft-student")
                         .model;
      std::ostringstream student_bytes;
      {
        torch::serialize::OutputArchive archive;
        student.model->save(archive);
        archive.save_to(student_bytes);
      }
      auto bplus_test = [&] {
        std::vector<torch::Tensor> l;
        for (std::size_t i = 0; i < boxes.size(); ++i) {
          l.push_back(fu::lift(fu::predict_proba(*boxes[i], s.test_x),
                               infos[i].labels, 10));
        }
        return fu::ensemble_sum(l);
      }();

      std::vector<std::int64_t> seen_c, unseen_c;
      for (std::int64_t c = 0; c < 10; ++c)
        (seen[c] ? seen_c : unseen_c).push_back(c);
      std::mt19937_64 rng(args.seed + 1234);
      for (const char* kind : {"S", "U"}) {
        const auto& pool = std::string(kind) == "S" ? seen_c : unseen_c;
        for (int k : {1, 5}) {
          std::map<std::string, std::vector<double>> acc;
          std::map<std::string, double> secs;
          for (int t = 0; t < args.tasks; ++t) {
            std::uniform_int_distribution<std::size_t> pick(0, pool.size() - 1);
            std::int64_t a = pool[pick(rng)], b = a;
            while (b == a) b = pool[pick(rng)];
            // Shots: k of each class from the training split.
            auto ia = rows_of(s.train_y, a), ib = rows_of(s.train_y, b);
            std::uniform_int_distribution<std::int64_t> ra(0, ia.numel() - 1),
                rb(0, ib.numel() - 1);
            std::vector<std::int64_t> shot_rows, shot_labels;
            for (int j = 0; j < k; ++j) {
              shot_rows.push_back(ia[ra(rng)].item<std::int64_t>());
              shot_labels.push_back(0);
              shot_rows.push_back(ib[rb(rng)].item<std::int64_t>());
              shot_labels.push_back(1);
            }
            auto sx = s.train_x.index_select(
                0, torch::tensor(shot_rows, torch::kLong));
            auto sy = torch::tensor(shot_labels, torch::kLong);
            auto ta = rows_of(s.test_y, a).slice(0, 0, args.test_per_class),
                 tb = rows_of(s.test_y, b).slice(0, 0, args.test_per_class);
            auto tidx = torch::cat({ta, tb});
            auto tx = s.test_x.index_select(0, tidx);
            auto ty = torch::cat({torch::zeros({ta.numel()}, torch::kLong),
                                  torch::ones({tb.numel()}, torch::kLong)});
            auto score = [&](const torch::Tensor& p) {
              return 100.0 * p.argmax(1)
                                 .eq(ty)
                                 .to(torch::kFloat64)
                                 .mean()
                                 .item<double>();
            };
            // tae: adapt q_λ(w) with the shots, recompose.
            auto tau = task_of(a, b);
            const auto classes = binary ? std::vector<std::int64_t>{}
                                        : std::vector<std::int64_t>{a, b};
            auto t_method = Clock::now();
            auto adapted = tae.adapt(tau, sx, sy, classes);
            acc["tae"].push_back(score(tae.predict(tx, adapted, classes)));
            secs["tae"] += since(t_method);
            if (adapted.head_weight.defined()) {
              // The same adaptation read out by the relabelled prototypes.
              auto votes =
                  adapted.votes.defined()
                      ? adapted.votes
                      : tae.relabel(sx, sy, adapted.posterior, classes);
              acc["tae-proto"].push_back(
                  score(tae.predict(tx, adapted.posterior, classes, votes)));
            }
            if (adapted.head_weight.defined() && k == 1 &&
                tae.pool_covariance().defined() &&
                args.covariance_shrinkage < 1) {
              // The same class means read by nearest class mean.
              const auto with = tae.options().adaptation();
              tae.set_adaptation(
                  fu::TaeAdaptationOptions(with).covariance_shrinkage(1));
              auto ncm = adapted;
              std::tie(ncm.head_weight, ncm.head_bias) =
                  tae.fit_head(sx, sy, classes);
              tae.set_adaptation(with);
              acc["tae-ncm"].push_back(score(tae.predict(tx, ncm, classes)));
            }
            // A generator of this task's own for a method's draws (`stream`
            // tells the methods apart): the tasks and the other rows stay as
            // without them.
            auto task_gen = [&](std::uint64_t stream) {
              return fu::make_generator(args.seed * 1000003 +
                                        static_cast<std::uint64_t>(t) * 11 +
                                        static_cast<std::uint64_t>(k) + stream);
            };
            torch::Tensor ux;  // tae+U's unlabelled images, FS+U's too
            if (adapted.head_weight.defined() && args.unlabelled > 0) {
              // tae+U: the same adaptation, its head refined over unlabelled
              // images of a and b.
              t_method = Clock::now();
              auto both = torch::cat({ia, ib});
              auto ugen = task_gen(0);
              auto pick_rows = torch::randperm(both.numel(), ugen)
                                   .slice(0, 0, args.unlabelled);
              ux = s.train_x.index_select(0, both.index_select(0, pick_rows));
              auto semi = adapted;
              std::tie(semi.head_weight, semi.head_bias) =
                  tae.fit_head(sx, sy, classes, ux);
              acc["tae+U"].push_back(score(tae.predict(tx, semi, classes)));
              secs["tae+U"] += since(t_method);
            }
            // B+: the black boxes' lifted sum on a and b.
            auto bp = bplus_test.index_select(0, tidx).index_select(
                1, torch::tensor({a, b}, torch::kLong));
            // Ties (a U task: neither class is any box's) broken by the
            // task's own generator, not the global one that the other
            // methods' training draws from.
            auto tie_gen = task_gen(500009);
            acc["B+"].push_back(
                score(bp + 1e-6 * at::rand(bp.sizes(), tie_gen)));
            // FS: an MLP 784-100-2 from scratch on the shots.
            const auto task_seed = args.seed + static_cast<std::uint64_t>(t);
            auto from_scratch = [&](const torch::Tensor& x,
                                    const torch::Tensor& y, std::uint64_t init,
                                    std::int64_t epochs, std::int64_t batch) {
              auto gen = fu::make_generator(init);
              auto m = fu::make_classifier(
                  fu::ModelSpec{
                      .arch = "mlp", .num_classes = 2, .hidden = {100}},
                  gen);
              fu::train(*m, x, y,
                        fu::TrainOptions()
                            .epochs(epochs)
                            .batch_size(batch)
                            .lr(3e-3)
                            .seed(task_seed));
              return m;
            };
            t_method = Clock::now();
            auto fs = from_scratch(sx, sy, task_seed, 60, 16);
            acc["FS"].push_back(score(fu::predict_proba(*fs, tx)));
            secs["FS"] += since(t_method);
            if (ux.defined()) {
              // FS+U, tae+U's like-for-like: self-training. FS labels the
              // unlabelled images; a fresh model learns from the shots and
              // those pseudo-labels.
              t_method = Clock::now();
              auto pseudo = fu::predict_proba(*fs, ux).argmax(1);
              auto st =
                  from_scratch(torch::cat({sx, ux}), torch::cat({sy, pseudo}),
                               task_seed + 77, 10, 64);
              acc["FS+U"].push_back(score(fu::predict_proba(*st, tx)));
              secs["FS+U"] += since(t_method);
            }
            t_method = Clock::now();
            // FT: the distilled student, fine-tuned on the shots (10-way head,
            // compared on a and b).
            auto ft = fu::make_classifier(student.spec);
            {
              torch::serialize::InputArchive archive;
              std::istringstream in(student_bytes.str());
              archive.load_from(in);
              ft->load(archive);
            }
            auto sy10 = torch::where(sy.eq(0), torch::full_like(sy, a),
                                     torch::full_like(sy, b));
            fu::train(
                *ft, sx, sy10,
                fu::TrainOptions().epochs(20).batch_size(16).lr(1e-3).seed(
                    args.seed));
            auto pf = fu::predict_proba(*ft, tx).index_select(
                1, torch::tensor({a, b}, torch::kLong));
            acc["FT"].push_back(score(pf));
            secs["FT"] += since(t_method);
          }
          for (const char* method : {"tae", "tae+U", "tae-proto", "tae-ncm",
                                     "B+", "FS", "FS+U", "FT"}) {
            if (acc[method].empty()) continue;
            auto [m, sd] = mean_sd(acc[method]);
            const auto key = fmt::format("{} {} {} {}", name, kind, k, method);
            auto p = paper.find(key);
            table.push_back(fmt::format(
                "{:<9} {:<2} {:>5}-shot {:<9} {:>7.2f} ± {:>5.2f}   {}", name,
                kind, k, method, m, sd,
                p == paper.end() ? std::string("")
                                 : fmt::format("{:.2f}", p->second)));
            out["rows"].push_back({{"dataset", name},
                                   {"tasks", kind},
                                   {"shots", k},
                                   {"method", method},
                                   {"mean", m},
                                   {"sd", sd},
                                   {"values", acc[method]},
                                   {"seconds", secs[method]}});
          }
          fmt::print(stderr,
                     "{} {} {}-shot: {} tasks done ({:.0f} s so far; tae "
                     "{:.0f} s, FS {:.0f} "
                     "s, FT {:.0f} s)\n",
                     name, kind, k, args.tasks, since(t_all), secs["tae"],
                     secs["FS"], secs["FT"]);
        }
      }
      out["datasets"][name] = {{"black_boxes_seconds", boxes_seconds},
                               {"tae_training_seconds", tae_seconds},
                               {"seconds", since(t_ds)}};
    }
    const double total = since(t_all);
    fmt::print("\n{:<9} {:<2} {:>10} {:<9} {:>15}   {}\n", "data set", "", "",
               "method", "accuracy (%)", "paper");
    for (const auto& line : table) fmt::print("{}\n", line);
    fmt::print(
        "\ntasks={} seed={} threads={} tae_epochs={} tae_space={} "
        "tae_union_task={} "
        "tae_gibbs_weight={} tae_relabel={} tae_relabel_prior={} "
        "tae_readout={} tae_head_steps={} tae_input_encoder={} "
        "tae_answer_weight={} tae_answer_encoder={} tae_conv_channels={} "
        "tae_encoder_shift={} tae_pool_centres={} tae_centre_weight={} "
        "tae_centre_temperature={} tae_covariance_shrinkage={} "
        "unlabelled={} tae_unlabelled_weight={} tae_unlabelled_rounds={} "
        "total={:.1f} s\n",
        args.tasks, args.seed, args.threads, args.epochs, args.space,
        args.union_task, args.gibbs_weight, args.relabel, args.relabel_prior,
        args.readout, args.head_steps, args.input_encoder, args.answer_weight,
        args.answer_encoder, args.conv_channels, args.encoder_shift,
        args.pool_centres, args.centre_weight, args.centre_temperature,
        args.covariance_shrinkage, args.unlabelled, args.unlabelled_weight,
        args.unlabelled_rounds, total);
    out["total_seconds"] = total;
    chorus::write_file_atomic(args.json, out.dump(2) + "\n");
    fmt::print("wrote {}\n", args.json);
  } catch (const chorus::Error& e) {
    fmt::print(stderr, "bench_p2: {}\n", chorus::describe(e));
    return 1;
  }
  return 0;
}
