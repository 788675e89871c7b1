// bench_p1: protocol P1 of ALGORITHMS.md — complementary label-skew experts
// on Fashion-MNIST — measured in-process (no network).
//
//   bench_p1 [--seeds N] [--expert-epochs N] [--threads N] [--json FILE]
//            [--save-dir DIR]   (seed 0's fused models, for `chorus eval`)
//            [--only a,b,...]   (these methods only: algorithm names,
//                                "ablations", "frugal-sweep", "centralised")
//
// For each seed: split the 60,000 training images (50,000 private in K = 5
// IID shards, 10,000 public transfer pool U, its first 500 labelled as V),
// train one expert per shard on its 4-class task, query every expert on U
// and on the 10,000 test images, and fuse. Prints one row per expert and per
// method, mean ± sd over seeds, and writes the rows as JSON.
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/fusion/algorithms.hpp"
#include "chorus/fusion/datasets.hpp"
#include "chorus/fusion/ensemble.hpp"
#include "chorus/fusion/foe.hpp"
#include "chorus/fusion/oracle.hpp"
#include "chorus/fusion/partition.hpp"
#include "chorus/fusion/train.hpp"

namespace fu = chorus::fusion;
using Clock = std::chrono::steady_clock;

namespace {

struct Args {
  int seeds = 3;
  int expert_epochs = 3;
  int threads = 2;
  std::string json = "bench_p1.json";
  std::string save_dir;        // Where to save seed 0's fused models, if set.
  std::set<std::string> only;  // Empty: every method.
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
  void add(const std::string& row, const std::string& metric, double value) {
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
    fmt::print("\n{:<22} {:>15} {:>15} {:>14} {:>12}\n", "method", "acc 10-way",
               "acc own task", "queries/img", "seconds");
    for (const auto& row : order_) {
      fmt::print("{:<22} {:>15} {:>15} {:>14} {:>12}\n", row,
                 cell(row, "acc10"), cell(row, "acc_task"),
                 cell(row, "queries_per_image", 2), cell(row, "seconds", 1));
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

void run_seed(std::uint64_t seed, const Args& args, const fu::Dataset& train,
              const fu::Dataset& test, Table& table) {
  const std::int64_t kClasses = 10;
  auto split = fu::p1_split(train.labels, fu::P1Options().seed(seed));
  fu::LocalOracle oracle(kClasses);

  // Experts: a LeNet per shard, trained on its task only.
  auto t_experts = Clock::now();
  for (std::size_t i = 0; i < split.tasks.size(); ++i) {
    const auto& task = split.tasks[i];
    auto idx = split.expert_train[i];
    auto x = train.images.index_select(0, idx);
    auto y = fu::to_local_labels(train.labels.index_select(0, idx), task);
    torch::manual_seed(seed * 100 + i);
    auto model = fu::make_classifier(
        fu::ModelSpec{.arch = "lenet",
                      .num_classes = static_cast<std::int64_t>(task.size())});
    fu::train(*model, x, y,
              fu::TrainOptions()
                  .epochs(args.expert_epochs)
                  .batch_size(64)
                  .lr(2e-3)
                  .seed(seed * 100 + i)
                  .threads(args.threads));
    oracle.add_expert({fmt::format("expert-{}", i), task}, model);
  }
  const double expert_seconds = seconds_since(t_experts);
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
  auto options = fu::AlgorithmOptions().seed(seed).threads(args.threads);
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

  // Centralised: one model on the union of the experts' training data.
  if (args.wants("centralised")) {
    auto t = Clock::now();
    auto idx = torch::cat(split.expert_train);
    torch::manual_seed(seed);
    auto model = fu::make_classifier(fu::ModelSpec{.arch = "lenet"});
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

}  // namespace

int main(int argc, char** argv) {
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
    else if (!std::strcmp(argv[i], "--only")) {
      std::stringstream list(next());
      for (std::string item; std::getline(list, item, ',');)
        args.only.insert(item);
    } else {
      fmt::print(
          stderr,
          "usage: bench_p1 [--seeds N] [--expert-epochs N] "
          "[--threads N] [--json FILE] [--save-dir DIR] [--only a,b,...]\n");
      return 2;
    }
  }
  try {
    torch::set_num_threads(args.threads);
    auto t0 = Clock::now();
    auto train = fu::load_fashion_mnist(
        fu::Split::kTrain, chorus::path_or_env({}, "CHORUS_DATA_DIR"));
    auto test = fu::load_fashion_mnist(
        fu::Split::kTest, chorus::path_or_env({}, "CHORUS_DATA_DIR"));
    Table table;
    for (int s = 0; s < args.seeds; ++s) run_seed(s, args, train, test, table);
    table.print();
    const double total = seconds_since(t0);
    fmt::print("\nseeds={} expert_epochs={} threads={} total={:.1f} s\n",
               args.seeds, args.expert_epochs, args.threads, total);
    nlohmann::json out{{"benchmark", "p1"},
                       {"seeds", args.seeds},
                       {"expert_epochs", args.expert_epochs},
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
