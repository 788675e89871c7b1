// bench_p1: protocol P1 of ALGORITHMS.md — complementary label-skew experts
// on Fashion-MNIST — measured in-process (no network).
//
//   bench_p1 [--seeds N] [--expert-epochs N] [--threads N] [--json FILE]
//            [--save-dir DIR]   (seed 0's fused models, for `chorus eval`)
//            [--only a,b,...]   (these methods only: algorithm names,
//                                "ablations", "frugal-sweep", "frugal-costs",
//                                "centralised")
//            [--student-epochs N] (the distilled students' epochs)
//            [--poison K]       (expert K answers confidently wrong)
//            [--robust]         (robust fusion: AlgorithmOptions::robust)
//            [--away K]         (expert K away when the fused model answers)
//            [--privacy LIST]   (experts trained with DP-SGD at each epsilon
//                                of LIST, e.g. off,1,3,8; delta 1e-5)
//            [--mechanism gnmax --teachers K --queries Q]
//                               (with --privacy: noisy-argmax answers
//                                instead, over K teachers per node)
//   bench_p1 --vs-pytorch PAIRS [--expert-epochs N] [--threads N]
//            [--json FILE] [--peer bench/p1/peer.py]
//
// For each seed: split the 60,000 training images (50,000 private in K = 5
// IID shards, 10,000 public transfer pool U, its first 500 labelled as V),
// train one expert per shard on its 4-class task, query every expert on U
// and on the 10,000 test images, and fuse. With --privacy the whole protocol
// runs once per epsilon, the experts trained with DP-SGD (a GroupNorm
// LeNet, each example's gradient clipped to norm 1, Poisson batches of
// expected size 64, the noise the RDP accountant allows for the recipe's
// steps at delta 1e-5; "off": the usual BatchNorm LeNet), rows prefixed by
// the epsilon. Prints one row per expert and per
// method, mean ± sd over seeds, and writes the rows as JSON.
//
// --mechanism gnmax: the experts are trained as usual (each a teacher
// ensemble of K LeNets on disjoint parts of its shard, K = 1: one LeNet),
// and every answer they give is GNMax — the argmax of their teachers' votes
// plus Gaussian noise (ALGORITHMS.md §6) — with the σ a node needs to give
// all of its answers within ε (delta 1e-5, data-independent RDP). The
// coordinator asks each node Q inputs of U (V, the first 500, among them).
// Two deployments, two budgets: foe-distill's student serves alone, so the
// node answers only those Q (σ for Q answers); B+ and foe serve through
// the experts, so the node also answers the 10,000 test inputs (σ for
// Q + 10,000 answers, the experts' rows too). With K > 1 each teacher
// trains on 1/K of the shard for 10 times the epochs (an expert's recipe
// otherwise). "off" in the list: the teachers' plurality without noise (no
// guarantee; what the noise costs). A reference row: the student trained
// on V's 500 labels alone, which foe-distill also learns from.
//
// --vs-pytorch: Chorus against the identical recipe in plain PyTorch
// (peer.py, Debian's python3-torch on the same libtorch), phase by phase:
// expert training, inference on U and the test set, the FoE fuser and
// foe-distill's student. Alternating pairs, medians, speed-up = PyTorch time
// / Chorus time, accuracies side by side.
#include <fmt/ranges.h>
#include <stdlib.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "../support/bench.hpp"
#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/memory.hpp"
#include "chorus/core/privacy.hpp"
#include "chorus/fusion/algorithms.hpp"
#include "chorus/fusion/datasets.hpp"
#include "chorus/fusion/distill.hpp"
#include "chorus/fusion/dp_sgd.hpp"
#include "chorus/fusion/ensemble.hpp"
#include "chorus/fusion/foe.hpp"
#include "chorus/fusion/gnmax.hpp"
#include "chorus/fusion/oracle.hpp"
#include "chorus/fusion/partition.hpp"
#include "chorus/fusion/random.hpp"
#include "chorus/fusion/robust.hpp"
#include "chorus/fusion/train.hpp"

namespace fu = chorus::fusion;
using Clock = std::chrono::steady_clock;

namespace {

struct Args {
  int seeds = 3;
  int expert_epochs = 3;
  int threads = 2;
  std::string json = "bench_p1.json";
  std::string save_dir;         // Where to save seed 0's fused models, if set.
  std::set<std::string> only;   // Empty: every method.
  int vs_pytorch = 0;           // Pairs of the PyTorch comparison; 0: off.
  int student_epochs = 0;       // 0: DistillOptions' default.
  int poison = -1;              // The poisoned expert; -1: none.
  int away = -1;                // An expert away at prediction; -1: none.
  bool robust = false;          // Robust fusion.
  std::vector<double> privacy;  // DP-SGD epsilons (0: off); empty: none.
  double epsilon = 0;           // The one this pass trains at; 0: off.
  bool gnmax = false;           // --mechanism gnmax: noisy-argmax answers.
  int teachers = 1;             // Teachers per node (gnmax).
  std::int64_t queries = 1000;  // Inputs of U each node answers (gnmax).
  std::string peer = CHORUS_P1_PEER;  // bench/p1/peer.py
  bool wants(const std::string& method) const {
    return only.empty() || only.count(method);
  }
};

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Accumulates one named row's metrics over seeds.
class Table {
 public:
  // Prepended to the rows added from now on (--privacy's epsilon).
  std::string prefix;
  void add(const std::string& name, const std::string& metric, double value) {
    const auto row = prefix + name;
    if (!rows_.count(row)) order_.push_back(row);
    rows_[row][metric].push_back(value);
  }
  static std::pair<double, double> mean_sd(const std::vector<double>& v) {
    double m = 0, s = 0;
    for (double x : v) m += x;
    m /= v.size();
    for (double x : v) s += (x - m) * (x - m);
    return {m, v.size() > 1 ? std::sqrt(s / (v.size() - 1)) : 0.0};
  }
  std::string cell(const std::string& row, const std::string& metric,
                   int precision = 3) const {
    auto r = rows_.find(row);
    if (r == rows_.end() || !r->second.count(metric)) return "-";
    auto [m, s] = mean_sd(r->second.at(metric));
    return fmt::format("{:.{}f} ± {:.{}f}", m, precision, s, precision);
  }
  void print() const {
    fmt::print("\n{:<36} {:>15} {:>15} {:>14} {:>14} {:>12} {:>8}\n", "method",
               "acc 10-way", "acc own task", "queries/img", "cost/img",
               "seconds", "sigma");
    for (const auto& row : order_) {
      const auto sigma = cell(row, "sigma", 1);
      fmt::print("{:<36} {:>15} {:>15} {:>14} {:>14} {:>12} {:>8}\n", row,
                 cell(row, "acc10"), cell(row, "acc_task"),
                 cell(row, "queries_per_image", 2),
                 cell(row, "cost_per_image", 2), cell(row, "seconds", 1),
                 sigma == "-" ? sigma : sigma.substr(0, sigma.find(' ')));
    }
  }
  nlohmann::json json() const {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& row : order_) {
      nlohmann::json r{{"method", row}};
      for (const auto& [metric, values] : rows_.at(row)) {
        auto [m, s] = mean_sd(values);
        r[metric] = {{"mean", m}, {"sd", s}, {"values", values}};
      }
      out.push_back(r);
    }
    return out;
  }

 private:
  std::vector<std::string> order_;
  std::map<std::string, std::map<std::string, std::vector<double>>> rows_;
};

constexpr std::int64_t kClasses = 10;

// Experts: a LeNet per shard, trained on its task only (peer.py's recipe).
// With --threads T ≥ 2 they train T at a time on one thread each (the last
// K mod T on all T: fusion::run_jobs).
void train_experts(std::uint64_t seed, const Args& args,
                   const fu::Dataset& train, const fu::P1Split& split,
                   fu::LocalOracle& oracle) {
  std::vector<std::shared_ptr<fu::ClassifierImpl>> models(split.tasks.size());
  fu::run_jobs(
      static_cast<std::int64_t>(models.size()), args.threads,
      [&](std::int64_t j, int threads) {
        const auto i = static_cast<std::size_t>(j);
        const auto& task = split.tasks[i];
        auto idx = split.expert_train[i];
        auto x = train.images.index_select(0, idx);
        auto y = fu::to_local_labels(train.labels.index_select(0, idx), task);
        auto gen = fu::make_generator(seed * 100 + i);
        auto model = fu::make_classifier(
            fu::ModelSpec{.arch = "lenet",
                          .num_classes = static_cast<std::int64_t>(task.size()),
                          .norm = args.epsilon > 0 ? "group" : ""},
            gen);
        const auto recipe = fu::TrainOptions()
                                .epochs(args.expert_epochs)
                                .batch_size(64)
                                .lr(2e-3)
                                .seed(seed * 100 + i)
                                .threads(threads);
        if (args.epsilon > 0) {
          fu::DpGuarantee g;
          fu::train_private(
              *model, x, y, recipe,
              fu::DpSgdOptions().epsilon(args.epsilon).delta(1e-5), &g);
          if (i == 0) {
            fmt::print(stderr,
                       "DP-SGD experts: epsilon {:.3g} delta {:.3g} "
                       "noise multiplier {:.4g} over {} steps at "
                       "q {:.4g}\n",
                       g.epsilon, g.delta, g.noise_multiplier, g.steps,
                       g.sample_rate);
          }
        } else {
          fu::train(*model, x, y, recipe);
        }
        models[i] = model;
      });
  for (std::size_t i = 0; i < models.size(); ++i)
    oracle.add_expert({fmt::format("expert-{}", i), split.tasks[i]}, models[i]);
}

// The mean accuracy of the experts on their own tasks' test images.
double own_task_accuracy(const std::vector<torch::Tensor>& answers_test,
                         const fu::P1Split& split, const fu::Dataset& test) {
  double sum = 0;
  for (std::size_t i = 0; i < split.tasks.size(); ++i) {
    auto local = fu::to_local_labels(test.labels, split.tasks[i]);
    auto known = local.ge(0).nonzero().flatten();
    sum += fu::accuracy(answers_test[i].index_select(0, known),
                        local.index_select(0, known));
  }
  return sum / static_cast<double>(split.tasks.size());
}

void run_seed(std::uint64_t seed, const Args& args, const fu::Dataset& train,
              const fu::Dataset& test, Table& table) {
  auto split = fu::p1_split(train.labels, fu::P1Options().seed(seed));
  fu::LocalOracle local(kClasses, /*batch_size=*/256, args.threads);
  auto t_experts = Clock::now();
  train_experts(seed, args, train, split, local);
  const double expert_seconds = seconds_since(t_experts);
  fu::PoisonedOracle poisoned(local, args.poison, seed + 7);
  fu::QueryOracle& oracle =
      args.poison >= 0 ? static_cast<fu::QueryOracle&>(poisoned) : local;
  table.add("experts: training", "seconds", expert_seconds);

  // Query every expert on the transfer pool and the test set.
  auto u_x = train.images.index_select(0, split.transfer);
  auto v_labels = train.labels.index_select(0, split.fusion);
  const std::int64_t n_v = split.fusion.size(0);
  auto answers_u = oracle.query_all(u_x);
  auto answers_test = oracle.query_all(test.images);
  auto lifted_test = fu::lift_all(answers_test, oracle);

  for (std::size_t i = 0; i < split.tasks.size(); ++i) {
    const auto& task = split.tasks[i];
    auto local = fu::to_local_labels(test.labels, task);
    auto known = local.ge(0).nonzero().flatten();
    auto name = fmt::format("expert {} {}", i, fmt::join(task, ","));
    table.add(name, "acc_task",
              fu::accuracy(answers_test[i].index_select(0, known),
                           local.index_select(0, known)));
    table.add(name, "acc10", fu::accuracy(lifted_test[i], test.labels));
    table.add(name, "queries_per_image", 1);
  }
  // The algorithms as the coordinator runs them: fitted on the round's
  // answers on U (V = U's first 500, labelled), predicting the test set.
  fu::FusionData data;
  data.num_classes = kClasses;
  data.experts = oracle.experts();
  data.transfer = u_x;
  data.answers = answers_u;
  data.fusion_index = torch::arange(n_v, torch::kLong);
  data.fusion_labels = v_labels;
  auto options = fu::AlgorithmOptions()
                     .seed(seed)
                     .threads(args.threads)
                     .robust(args.robust);
  if (args.student_epochs > 0) options.distill().epochs(args.student_epochs);
  auto add_result = [&](const std::string& row, const fu::FusionResult& r) {
    table.add(row, "acc10", r.accuracy);
    table.add(row, "queries_per_image", r.queries_per_input);
    table.add(row, "seconds", r.fit_seconds + r.predict_seconds);
  };
  for (const auto& name : fu::algorithm_names()) {
    if (!args.wants(name)) continue;
    auto fuser = fu::make_fuser(name, options);
    add_result(name,
               fu::run_fusion(*fuser, data, oracle, test.images, test.labels));
    // Serving with an expert away: the fuser trained with all of them
    // answers with the absent one's answers uninformative (what a serving
    // coordinator does when a node is not connected).
    if (args.away >= 0 && fuser->needs_experts()) {
      std::vector<bool> mask(static_cast<std::size_t>(oracle.num_experts()));
      mask[static_cast<std::size_t>(args.away)] = true;
      fu::MaskedOracle masked(oracle, mask);
      oracle.reset_stats();
      const auto t = Clock::now();
      auto probs = fuser->predict(masked, test.images);
      const auto row = fmt::format("{}, expert {} away", name, args.away);
      table.add(row, "acc10", fu::accuracy(probs, test.labels));
      table.add(row, "queries_per_image",
                static_cast<double>(oracle.total_stats().inputs) /
                    static_cast<double>(test.images.size(0)));
      table.add(row, "seconds", seconds_since(t));
    }
    auto fused = fuser->fused_model();
    if (fused && seed == 0 && !args.save_dir.empty()) {
      fu::save_fused_model(
          *fused, std::filesystem::path(args.save_dir) / (name + ".pt"));
    }
  }

  // Ablations of FoE: the paper's recipe (probability features), and
  // self-training on U's unlabelled answers on top of log-probabilities.
  if (args.wants("ablations")) {
    auto paper = options;
    paper.foe(fu::FoeOptions());
    auto fuser = fu::make_fuser("foe", paper);
    add_result("ablation: foe paper",
               fu::run_fusion(*fuser, data, oracle, test.images, test.labels));
    auto self_train = options;
    self_train.foe().self_training_rounds(1);
    fuser = fu::make_fuser("foe", self_train);
    add_result("ablation: foe +self-tr",
               fu::run_fusion(*fuser, data, oracle, test.images, test.labels));
  }

  // Frugal FoE's trade-off: accuracy against experts queried, over λ.
  if (args.wants("frugal-sweep")) {
    fu::FrugalFoe frugal(
        options.frugal().fuser(options.foe().seed(seed).threads(args.threads)));
    frugal.fit(data.fusion_answers(), v_labels, kClasses, data.answers);
    for (double lambda : {0.0, 0.01, 0.02, 0.05, 0.1}) {
      auto t = Clock::now();
      oracle.reset_stats();
      auto pred = frugal.predict(oracle, test.images, lambda);
      auto name = fmt::format("frugal λ={:.2f}", lambda);
      table.add(name, "acc10", fu::accuracy(pred.probs, test.labels));
      table.add(name, "queries_per_image",
                static_cast<double>(oracle.total_stats().inputs) /
                    test.images.size(0));
      table.add(name, "seconds", seconds_since(t));
    }
  }

  // Frugal with a tariff: the expert equal-cost frugal asks most is priced
  // at 3 (by name, as [fusion.frugal] costs does); both policies' queries
  // are costed under that tariff, at λ = 0.02.
  if (args.wants("frugal-costs")) {
    const fu::FrugalOptions frugal_options =
        options.frugal().fuser(options.foe().seed(seed).threads(args.threads));
    fu::FrugalFoe equal(frugal_options);
    equal.fit(data.fusion_answers(), v_labels, kClasses, data.answers);
    auto t_equal = Clock::now();
    auto pred = equal.predict(oracle, test.images, 0.02);
    const double equal_seconds = seconds_since(t_equal);
    const auto dear = pred.queried.sum(0).argmax().item<std::int64_t>();
    const auto& dear_name = oracle.experts()[dear].name;
    std::vector<double> tariff(oracle.experts().size(), 1.0);
    tariff[static_cast<std::size_t>(dear)] = 3.0;
    auto row = [&](const std::string& name, const fu::FrugalPrediction& p,
                   double seconds) {
      auto costed = p;
      costed.costs = tariff;
      table.add(name, "acc10", fu::accuracy(p.probs, test.labels));
      table.add(name, "queries_per_image", p.mean_experts());
      table.add(name, "cost_per_image", costed.mean_cost());
      table.add(name, "seconds", seconds);
    };
    row("frugal, equal costs", pred, equal_seconds);
    fu::FrugalFoe priced(
        fu::FrugalOptions(frugal_options).costs_by_name({{dear_name, 3.0}}));
    priced.fit(data.fusion_answers(), v_labels, kClasses, data.answers);
    auto t = Clock::now();
    auto p3 = priced.predict(oracle, test.images, 0.02);
    fmt::print(
        "seed {}: frugal's most-asked expert is {} ({:.2f} of the "
        "inputs); priced at 3 it answers {:.2f}\n",
        seed, dear_name,
        pred.queried.select(1, dear).to(torch::kDouble).mean().item<double>(),
        p3.queried.select(1, dear).to(torch::kDouble).mean().item<double>());
    row("frugal, most-asked expert costs 3", p3, seconds_since(t));
  }

  // Centralised: one model on the union of the experts' training data.
  if (args.wants("centralised")) {
    auto t = Clock::now();
    auto idx = torch::cat(split.expert_train);
    auto gen = fu::make_generator(seed);
    auto model = fu::make_classifier(fu::ModelSpec{.arch = "lenet"}, gen);
    fu::train(*model, train.images.index_select(0, idx),
              train.labels.index_select(0, idx),
              fu::TrainOptions()
                  .epochs(args.expert_epochs)
                  .batch_size(64)
                  .lr(2e-3)
                  .seed(seed)
                  .threads(args.threads));
    table.add(
        "centralised", "acc10",
        fu::accuracy(fu::predict_proba(*model, test.images), test.labels));
    table.add("centralised", "seconds", seconds_since(t));
  }
  fmt::print(stderr, "seed {} done: experts trained in {:.1f} s\n", seed,
             expert_seconds);
}

// --mechanism gnmax, one seed: each node's teachers trained once, their
// votes on the queried part of U and on the test set computed once, then
// for each epsilon the noisy answers a node with that budget gives and what
// the coordinator fuses from them.
void run_gnmax_seed(std::uint64_t seed, const Args& args,
                    const fu::Dataset& train, const fu::Dataset& test,
                    Table& table) {
  constexpr double kDelta = 1e-5;
  auto split = fu::p1_split(train.labels, fu::P1Options().seed(seed));
  const auto n_experts = static_cast<std::int64_t>(split.tasks.size());
  const std::int64_t k = args.teachers;
  const std::int64_t q =
      std::min<std::int64_t>(args.queries, split.transfer.size(0));
  const std::int64_t n_v = split.fusion.size(0);
  CHORUS_CHECK(q >= n_v, "--queries {} must cover V's {} inputs", q, n_v);
  auto u_x = train.images.index_select(0, split.transfer.slice(0, 0, q));
  auto v_labels = train.labels.index_select(0, split.fusion);

  // Teachers: expert i's shard in k disjoint parts, one LeNet each.
  auto t_train = Clock::now();
  std::vector<std::shared_ptr<fu::ClassifierImpl>> models(
      static_cast<std::size_t>(n_experts * k));
  fu::run_jobs(n_experts * k, args.threads, [&](std::int64_t j, int threads) {
    const auto i = static_cast<std::size_t>(j / k);
    const auto part = j % k;
    const auto& task = split.tasks[i];
    auto rows = split.expert_train[i];
    const auto per = rows.size(0) / k;
    rows = rows.slice(0, part * per,
                      part + 1 == k ? rows.size(0) : (part + 1) * per);
    auto x = train.images.index_select(0, rows);
    auto y = fu::to_local_labels(train.labels.index_select(0, rows), task);
    const auto s = seed * 100000 + i * 1000 + static_cast<std::uint64_t>(part);
    auto gen = fu::make_generator(s);
    auto model = fu::make_classifier(
        fu::ModelSpec{.arch = "lenet",
                      .num_classes = static_cast<std::int64_t>(task.size())},
        gen);
    fu::train(*model, x, y,
              fu::TrainOptions()
                  .epochs(args.expert_epochs * (k > 1 ? 10 : 1))
                  .batch_size(64)
                  .lr(2e-3)
                  .seed(s)
                  .threads(threads));
    models[static_cast<std::size_t>(j)] = model;
  });
  table.add(fmt::format("gnmax K={}: training", k), "seconds",
            seconds_since(t_train));

  // Votes, once: on the queried part of U and on the test set.
  fu::LocalOracle experts(kClasses);
  std::vector<torch::Tensor> votes_u, votes_test;
  for (std::int64_t i = 0; i < n_experts; ++i) {
    const auto& task = split.tasks[static_cast<std::size_t>(i)];
    experts.add_expert({fmt::format("expert-{}", i), task},
                       models[static_cast<std::size_t>(i * k)]);
    std::vector<torch::Tensor> on_u, on_test;
    for (std::int64_t t = 0; t < k; ++t) {
      auto& m = *models[static_cast<std::size_t>(i * k + t)];
      on_u.push_back(fu::predict_proba(m, u_x));
      on_test.push_back(fu::predict_proba(m, test.images));
    }
    votes_u.push_back(fu::vote_histogram(on_u));
    votes_test.push_back(fu::vote_histogram(on_test));
  }

  auto options = fu::AlgorithmOptions().seed(seed).threads(args.threads);
  if (args.student_epochs > 0) options.distill().epochs(args.student_epochs);
  if (args.wants("foe-distill")) {
    // What V's labels alone teach the student (foe-distill trains on them
    // too): the floor under every foe-distill row.
    auto v_x = train.images.index_select(0, split.fusion);
    auto one_hot =
        torch::zeros({n_v, kClasses}).scatter_(1, v_labels.unsqueeze(1), 1.0);
    auto alone = fu::distill(v_x, one_hot,
                             options.distill().seed(seed).threads(args.threads),
                             "v-alone");
    table.add("reference: student on V's labels alone", "acc10",
              fu::accuracy(fu::predict_proba(*alone.model.model, test.images),
                           test.labels));
  }
  for (double eps : args.privacy) {
    // eps 0 ("off"): the plurality of the votes, no noise, no guarantee.
    const double sigma_fit =
        eps > 0 ? chorus::privacy::gnmax_sigma(eps, q, kDelta) : 0;
    const double sigma_serve =
        eps > 0
            ? chorus::privacy::gnmax_sigma(eps, q + test.images.size(0), kDelta)
            : 0;
    table.prefix = eps > 0 ? fmt::format("ε={:g} gnmax K={} ", eps, k)
                           : fmt::format("no noise, K={} ", k);
    auto gen = fu::make_generator(seed * 7919 +
                                  static_cast<std::uint64_t>(eps * 1000));
    auto noisy = [&](const std::vector<torch::Tensor>& votes, double sigma) {
      std::vector<torch::Tensor> out;
      for (const auto& v : votes) {
        out.push_back(sigma > 0 ? fu::noisy_argmax(v, sigma, gen)
                                : torch::zeros_like(v).scatter_(
                                      1, v.argmax(1, true), 1.0));
      }
      return out;
    };
    // Serving through the experts: Q + 10,000 answers per node.
    auto served_u = noisy(votes_u, sigma_serve);
    auto served_test = noisy(votes_test, sigma_serve);
    auto lifted_test = fu::lift_all(served_test, experts);
    for (std::int64_t i = 0; i < n_experts; ++i) {
      const auto& task = split.tasks[static_cast<std::size_t>(i)];
      auto local = fu::to_local_labels(test.labels, task);
      auto known = local.ge(0).nonzero().flatten();
      const auto row = fmt::format("expert {} {}", i, fmt::join(task, ","));
      table.add(
          row, "acc_task",
          fu::accuracy(
              served_test[static_cast<std::size_t>(i)].index_select(0, known),
              local.index_select(0, known)));
      table.add(
          row, "acc10",
          fu::accuracy(lifted_test[static_cast<std::size_t>(i)], test.labels));
      table.add(row, "queries_per_image", 1);
      table.add(row, "sigma", sigma_serve);
    }
    if (args.wants("bplus")) {
      table.add("bplus", "acc10",
                fu::accuracy(fu::ensemble_sum(lifted_test), test.labels));
      table.add("bplus", "queries_per_image", n_experts);
      table.add("bplus", "sigma", sigma_serve);
    }
    if (args.wants("foe")) {
      auto t = Clock::now();
      std::vector<torch::Tensor> on_v;
      for (const auto& a : served_u) on_v.push_back(a.slice(0, 0, n_v));
      fu::Foe foe(options.foe().seed(seed).threads(args.threads));
      foe.fit(on_v, v_labels, kClasses, served_u);
      table.add("foe", "acc10",
                fu::accuracy(foe.predict_proba(served_test), test.labels));
      table.add("foe", "queries_per_image", n_experts);
      table.add("foe", "seconds", seconds_since(t));
      table.add("foe", "sigma", sigma_serve);
    }
    if (args.wants("foe-distill")) {
      // The student serves alone: the nodes answer U's Q inputs only.
      fu::FusionData data;
      data.num_classes = kClasses;
      data.experts = experts.experts();
      data.transfer = u_x;
      data.answers = noisy(votes_u, sigma_fit);
      data.fusion_index = torch::arange(n_v, torch::kLong);
      data.fusion_labels = v_labels;
      auto fuser = fu::make_fuser("foe-distill", options);
      auto r = fu::run_fusion(*fuser, data, experts, test.images, test.labels);
      CHORUS_CHECK(r.queries_per_input == 0,
                   "foe-distill asked the experts at serving time");
      table.add("foe-distill", "acc10", r.accuracy);
      table.add("foe-distill", "queries_per_image", 0);
      table.add("foe-distill", "seconds", r.fit_seconds + r.predict_seconds);
      table.add("foe-distill", "sigma", sigma_fit);
    }
    fmt::print(stderr,
               "seed {} epsilon {:g}: sigma {:.1f} for {} answers per node "
               "(foe-distill), {:.1f} for {} (serving through the experts)\n",
               seed, eps, sigma_fit, q, sigma_serve, q + test.images.size(0));
  }
  table.prefix.clear();
}

// The phases peer.py times, measured on Chorus's side with the same data,
// recipe and threads.
struct Phases {
  std::map<std::string, double> seconds, accuracy;
};

const std::vector<std::string>& phase_names() {
  static const std::vector<std::string> kNames = {"experts", "inference", "foe",
                                                  "student"};
  return kNames;
}

Phases chorus_phases(std::uint64_t seed, const Args& args,
                     const fu::Dataset& train, const fu::Dataset& test,
                     const fu::P1Split& split) {
  Phases out;
  fu::LocalOracle oracle(kClasses, /*batch_size=*/256, args.threads);
  auto t = Clock::now();
  train_experts(seed, args, train, split, oracle);
  out.seconds["experts"] = seconds_since(t);

  auto u_x = train.images.index_select(0, split.transfer);
  t = Clock::now();
  auto answers_u = oracle.query_all(u_x);
  auto answers_test = oracle.query_all(test.images);
  out.seconds["inference"] = seconds_since(t);
  out.accuracy["experts"] = own_task_accuracy(answers_test, split, test);

  // foe-distill as make_fuser builds it: the fuser on V, the student on U.
  const auto n_v = split.fusion.size(0);
  auto v_labels = train.labels.index_select(0, split.fusion);
  std::vector<torch::Tensor> answers_v;
  for (const auto& a : answers_u) answers_v.push_back(a.slice(0, 0, n_v));
  auto options = fu::AlgorithmOptions();
  if (args.student_epochs > 0) options.distill().epochs(args.student_epochs);
  t = Clock::now();
  fu::Foe foe(options.foe().seed(seed).threads(args.threads));
  foe.fit(answers_v, v_labels, kClasses, answers_u);
  auto teacher = foe.predict_proba(answers_u);
  out.seconds["foe"] = seconds_since(t);
  out.accuracy["foe"] =
      fu::accuracy(foe.predict_proba(answers_test), test.labels);

  t = Clock::now();
  // Every epoch (no early stop), so both sides train the same number.
  auto student = fu::distill(
      u_x, teacher,
      options.distill().seed(seed).threads(args.threads).patience(0),
      "foe-distill", u_x.slice(0, 0, n_v), v_labels);
  out.seconds["student"] = seconds_since(t);
  out.accuracy["student"] = fu::accuracy(
      fu::predict_proba(*student.model.model, test.images), test.labels);
  return out;
}

std::vector<std::int64_t> to_vector(const torch::Tensor& t) {
  auto c = t.to(torch::kLong).contiguous();
  return {c.data_ptr<std::int64_t>(), c.data_ptr<std::int64_t>() + c.numel()};
}

// peer.py's side: runs it on the split and reads the JSON it writes.
Phases peer_phases(std::uint64_t seed, const Args& args,
                   const std::filesystem::path& split_file,
                   const std::filesystem::path& out_file) {
  const auto data_dir = chorus::path_or_env({}, "CHORUS_DATA_DIR");
  std::string command = fmt::format(
      "/usr/bin/python3 '{}' --split '{}' --threads {} --seed {} "
      "--expert-epochs {} --student-epochs {} --patience 0 --out '{}'{} > "
      "/dev/null",
      args.peer, split_file.string(), args.threads, seed, args.expert_epochs,
      args.student_epochs > 0 ? args.student_epochs
                              : fu::DistillOptions().epochs(),
      out_file.string(),
      data_dir ? fmt::format(" --data-dir '{}'", data_dir->string()) : "");
  const int rc = std::system(command.c_str());
  CHORUS_CHECK_CODE(rc == 0, chorus::Code::kInternal,
                    "the PyTorch peer failed (exit status {}): {}", rc,
                    command);
  auto j = nlohmann::json::parse(chorus::read_file(out_file));
  Phases out;
  for (const auto& phase : phase_names()) {
    out.seconds[phase] = j.at(phase + "_seconds").get<double>();
  }
  for (const auto& phase : {"experts", "foe", "student"}) {
    out.accuracy[phase] = j.at(std::string(phase) + "_accuracy").get<double>();
  }
  return out;
}

// Chorus against the same recipe in plain PyTorch (bench/p1/peer.py), on
// seed 0's split: --vs-pytorch pairs, alternating which runs first
// (A B, B A, ...), medians per phase and their ratio.
int vs_pytorch(const Args& args, const fu::Dataset& train,
               const fu::Dataset& test) {
  const std::uint64_t seed = 0;
  auto split = fu::p1_split(train.labels, fu::P1Options().seed(seed));
  nlohmann::json split_json{{"tasks", split.tasks},
                            {"transfer", to_vector(split.transfer)},
                            {"fusion", to_vector(split.fusion)}};
  for (const auto& rows : split.expert_train)
    split_json["expert_train"].push_back(to_vector(rows));
  std::string pattern =
      (std::filesystem::temp_directory_path() / "bench-p1-peer-XXXXXX")
          .string();
  CHORUS_CHECK_CODE(::mkdtemp(pattern.data()) != nullptr,
                    chorus::Code::kInternal, "cannot create {}", pattern);
  const std::filesystem::path dir = pattern;
  const auto split_file = dir / "split.json";
  chorus::write_file_atomic(split_file, split_json.dump());

  std::map<std::string, std::vector<double>> ours, theirs, ours_acc, theirs_acc;
  for (int r = 0; r < args.vs_pytorch; ++r) {
    for (int k = 0; k < 2; ++k) {
      const bool chorus_turn = (r + k) % 2 == 0;
      const auto t = Clock::now();
      auto p = chorus_turn
                   ? chorus_phases(seed, args, train, test, split)
                   : peer_phases(seed, args, split_file, dir / "peer.json");
      for (const auto& [phase, s] : p.seconds)
        (chorus_turn ? ours : theirs)[phase].push_back(s);
      for (const auto& [phase, a] : p.accuracy)
        (chorus_turn ? ours_acc : theirs_acc)[phase].push_back(a);
      fmt::print(stderr, "pair {} {}: {:.1f} s\n", r + 1,
                 chorus_turn ? "chorus " : "pytorch", seconds_since(t));
    }
  }
  fmt::print(
      "\nChorus vs the same recipe in PyTorch (bench/p1/peer.py), "
      "{} pairs alternating, medians, {} threads\n",
      args.vs_pytorch, args.threads);
  fmt::print("{:<11} {:>10} {:>11} {:>10} {:>11} {:>12}\n", "phase", "chorus s",
             "pytorch s", "speed-up", "chorus acc", "pytorch acc");
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& phase : phase_names()) {
    const double a = chorus::bench::median(ours[phase]),
                 b = chorus::bench::median(theirs[phase]);
    std::string acc_a = "-", acc_b = "-";
    nlohmann::json row{{"phase", phase},
                       {"chorus_seconds", ours[phase]},
                       {"pytorch_seconds", theirs[phase]},
                       {"chorus_median", a},
                       {"pytorch_median", b},
                       {"speedup", b / a}};
    if (ours_acc.count(phase)) {
      acc_a = fmt::format("{:.4f}", chorus::bench::median(ours_acc[phase]));
      acc_b = fmt::format("{:.4f}", chorus::bench::median(theirs_acc[phase]));
      row["chorus_accuracy"] = chorus::bench::median(ours_acc[phase]);
      row["pytorch_accuracy"] = chorus::bench::median(theirs_acc[phase]);
    }
    fmt::print("{:<11} {:>10.2f} {:>11.2f} {:>9.2f}x {:>11} {:>12}\n", phase, a,
               b, b / a, acc_a, acc_b);
    rows.push_back(row);
  }
  fmt::print(
      "speed-up = PyTorch time / Chorus time (above 1: Chorus is "
      "faster)\n");
  nlohmann::json out{{"benchmark", "p1_vs_pytorch"},
                     {"pairs", args.vs_pytorch},
                     {"expert_epochs", args.expert_epochs},
                     {"threads", args.threads},
                     {"seed", seed},
                     {"rows", rows}};
  chorus::write_file_atomic(args.json, out.dump(2) + "\n");
  fmt::print("wrote {}\n", args.json);
  std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  chorus::tune_allocator();
  Args args;
  for (int i = 1; i < argc; ++i) {
    auto next = [&] { return i + 1 < argc ? argv[++i] : ""; };
    if (!std::strcmp(argv[i], "--seeds"))
      args.seeds = std::atoi(next());
    else if (!std::strcmp(argv[i], "--expert-epochs"))
      args.expert_epochs = std::atoi(next());
    else if (!std::strcmp(argv[i], "--threads"))
      args.threads = std::atoi(next());
    else if (!std::strcmp(argv[i], "--json"))
      args.json = next();
    else if (!std::strcmp(argv[i], "--save-dir"))
      args.save_dir = next();
    else if (!std::strcmp(argv[i], "--student-epochs"))
      args.student_epochs = std::atoi(next());
    else if (!std::strcmp(argv[i], "--poison"))
      args.poison = std::atoi(next());
    else if (!std::strcmp(argv[i], "--away"))
      args.away = std::atoi(next());
    else if (!std::strcmp(argv[i], "--privacy")) {
      std::stringstream list(next());
      for (std::string item; std::getline(list, item, ',');) {
        const double eps = item == "off" ? 0 : std::atof(item.c_str());
        if (item != "off" && !(eps > 0)) {
          fmt::print(stderr,
                     "bench_p1: --privacy takes epsilons > 0 or 'off', got "
                     "'{}'\n",
                     item);
          return 2;
        }
        args.privacy.push_back(eps);
      }
    } else if (!std::strcmp(argv[i], "--mechanism")) {
      const std::string m = next();
      if (m != "gnmax" && m != "dp-sgd") {
        fmt::print(stderr,
                   "bench_p1: --mechanism is dp-sgd or gnmax, got '{}'\n", m);
        return 2;
      }
      args.gnmax = m == "gnmax";
    } else if (!std::strcmp(argv[i], "--teachers"))
      args.teachers = std::atoi(next());
    else if (!std::strcmp(argv[i], "--queries"))
      args.queries = std::atoll(next());
    else if (!std::strcmp(argv[i], "--robust"))
      args.robust = true;
    else if (!std::strcmp(argv[i], "--vs-pytorch"))
      args.vs_pytorch = std::atoi(next());
    else if (!std::strcmp(argv[i], "--peer"))
      args.peer = next();
    else if (!std::strcmp(argv[i], "--only")) {
      std::stringstream list(next());
      for (std::string item; std::getline(list, item, ',');)
        args.only.insert(item);
    } else {
      fmt::print(
          stderr,
          "usage: bench_p1 [--seeds N] [--expert-epochs N] "
          "[--threads N] [--json FILE] [--save-dir DIR] [--only a,b,...] "
          "[--student-epochs N] [--poison K] [--robust] [--away K] "
          "[--privacy off,1,3,8 [--mechanism dp-sgd|gnmax] [--teachers K] "
          "[--queries Q]]\n"
          "       bench_p1 --vs-pytorch PAIRS [--expert-epochs N] [--threads "
          "N] [--json FILE] [--peer peer.py]\n");
      return 2;
    }
  }
  {
    // An unknown method in --only would run nothing and print an empty
    // table: refuse it by name.
    std::set<std::string> known{"ablations", "frugal-sweep", "frugal-costs",
                                "centralised"};
    for (const auto& name : fu::algorithm_names()) known.insert(name);
    for (const auto& item : args.only) {
      if (!known.count(item)) {
        fmt::print(stderr,
                   "bench_p1: --only: unknown method '{}' (known: {})\n", item,
                   fmt::join(known, ", "));
        return 2;
      }
    }
  }
  try {
    torch::set_num_threads(args.threads);
    auto t0 = Clock::now();
    auto train = fu::load_fashion_mnist(
        fu::Split::kTrain, chorus::path_or_env({}, "CHORUS_DATA_DIR"));
    auto test = fu::load_fashion_mnist(
        fu::Split::kTest, chorus::path_or_env({}, "CHORUS_DATA_DIR"));
    if (args.vs_pytorch > 0) {
      if (args.json == "bench_p1.json") args.json = "bench_p1_vs_pytorch.json";
      return vs_pytorch(args, train, test);
    }
    Table table;
    if (args.gnmax) {
      if (args.privacy.empty() || args.teachers < 1 || args.queries < 1) {
        fmt::print(stderr,
                   "bench_p1: --mechanism gnmax needs --privacy with "
                   "epsilons, --teachers >= 1 and --queries >= 1\n");
        return 2;
      }
      for (int s = 0; s < args.seeds; ++s)
        run_gnmax_seed(s, args, train, test, table);
    } else if (args.privacy.empty()) {
      for (int s = 0; s < args.seeds; ++s)
        run_seed(s, args, train, test, table);
    }
    for (double eps : args.gnmax ? std::vector<double>{} : args.privacy) {
      args.epsilon = eps;
      table.prefix = eps > 0 ? fmt::format("ε={:g} ", eps) : "non-private ";
      for (int s = 0; s < args.seeds; ++s)
        run_seed(s, args, train, test, table);
    }
    table.prefix.clear();
    table.print();
    const double total = seconds_since(t0);
    fmt::print(
        "\nseeds={} expert_epochs={} threads={} poison={} robust={} away={} "
        "privacy=[{}] mechanism={} teachers={} queries={} total={:.1f} s\n",
        args.seeds, args.expert_epochs, args.threads, args.poison, args.robust,
        args.away, fmt::join(args.privacy, ","),
        args.gnmax ? "gnmax" : "dp-sgd", args.teachers, args.queries, total);
    nlohmann::json out{{"benchmark", "p1"},
                       {"seeds", args.seeds},
                       {"poison", args.poison},
                       {"robust", args.robust},
                       {"away", args.away},
                       {"expert_epochs", args.expert_epochs},
                       {"privacy_epsilons", args.privacy},
                       {"privacy_delta", 1e-5},
                       {"privacy_mechanism", args.gnmax ? "gnmax" : "dp-sgd"},
                       {"teachers", args.teachers},
                       {"queries", args.queries},
                       {"threads", args.threads},
                       {"total_seconds", total},
                       {"rows", table.json()}};
    chorus::write_file_atomic(args.json, out.dump(2) + "\n");
    fmt::print("wrote {}\n", args.json);
  } catch (const chorus::Error& e) {
    fmt::print(stderr, "bench_p1: {}\n", chorus::describe(e));
    return 1;
  }
  return 0;
}
