#include "chorus/simulate/simulate.hpp"

#include <fmt/ranges.h>
#include <torch/torch.h>

#include <optional>
#include <sstream>

#include "chorus/coordinator/coordinator.hpp"
#include "chorus/coordinator/registry.hpp"
#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/log.hpp"
#include "chorus/core/progress.hpp"
#include "chorus/core/version.hpp"
#include "chorus/fusion/data_files.hpp"
#include "chorus/fusion/datasets.hpp"
#include "chorus/fusion/device.hpp"
#include "chorus/fusion/ensemble.hpp"
#include "chorus/fusion/frugal.hpp"
#include "chorus/fusion/partition.hpp"
#include "chorus/fusion/train.hpp"
#include "chorus/node/adapt.hpp"
#include "chorus/node/local_data.hpp"
#include "chorus/simulate/html_report.hpp"
#include "cluster.hpp"
#include "experts.hpp"
#include "report.hpp"

namespace chorus::simulate {
namespace {

namespace fs = std::filesystem;
namespace fu = chorus::fusion;

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

// A data set directory: task.toml and train.* / test.* in a format
// fusion::read_examples reads.
fu::DataRef find_split(const fs::path& dir, const std::string& split) {
  for (const auto& name : {split + ".npz", split + ".csv", split + ".csv.gz"}) {
    if (fs::is_regular_file(dir / name)) return fu::DataRef{.path = dir / name};
  }
  if (fs::is_directory(dir / split)) return fu::DataRef{.path = dir / split};
  fail(Code::kNotFound,
       "data set directory '{}' has no {} split: expected {}.npz, {}.csv(.gz) "
       "or a folder "
       "{}/ of images in one sub-folder per class",
       dir.string(), split, split, split, split);
}

fu::BuiltinData load_simulation_data(const std::string& dataset,
                                     const std::optional<fs::path>& data_dir) {
  if (fu::is_builtin_source(dataset))
    return fu::load_builtin(dataset, data_dir);
  const fs::path dir(dataset);
  CHORUS_CHECK_CODE(
      fs::is_directory(dir), Code::kNotFound,
      "--dataset '{}' is neither a built-in data set ({}) nor a directory",
      dataset, fmt::join(fu::builtin_sources(), ", "));
  CHORUS_CHECK_CODE(
      fs::is_regular_file(dir / "task.toml"), Code::kNotFound,
      "data set directory '{}' has no task.toml (the [task] table: labels, "
      "input_shape, dtype, normalise)",
      dir.string());
  TaskSpec fallback;
  fallback.name = dir.filename().string();
  fu::BuiltinData b;
  b.task = read_task_file(dir / "task.toml", fallback);
  b.train = fu::read_examples(find_split(dir, "train"), b.task, true);
  b.test = fu::read_examples(find_split(dir, "test"), b.task, true);
  return b;
}

void write_config(const SimulateOptions& o, const fs::path& run_dir) {
  auto text = fmt::format(
      "# chorus simulate, resolved options (chorus {})\n"
      "experts = {}\nalgorithm = \"{}\"\ndataset = \"{}\"\nrounds = {}\nseed = "
      "{}\n"
      "classes_per_expert = {}\ntransfer_size = {}\nfusion_labels = {}\n"
      "expert_epochs = {}\nprocesses = {}\nthreads = {}\ndevice = \"{}\"\n",
      kVersion, o.experts, o.algorithm, o.dataset, o.rounds, o.seed,
      o.classes_per_expert, o.transfer_size, o.fusion_labels, o.expert_epochs,
      o.processes, o.threads, o.device);
  write_file_atomic(run_dir / "config.toml", text);
}

// P1's sizes, scaled down for data sets smaller than Fashion-MNIST: U at
// most half the training split, V at most a fifth of U, and no more classes
// per expert than there are.
struct Sizes {
  std::int64_t transfer_size, fusion_labels, classes_per_expert;
};
Sizes resolve_sizes(const SimulateOptions& o, std::int64_t train_size,
                    std::int64_t classes) {
  Sizes s;
  s.transfer_size = o.transfer_size > 0
                        ? o.transfer_size
                        : std::min<std::int64_t>(10'000, train_size / 2);
  s.fusion_labels = o.fusion_labels >= 0
                        ? o.fusion_labels
                        : std::min<std::int64_t>(500, s.transfer_size / 5);
  s.classes_per_expert = std::min<std::int64_t>(o.classes_per_expert, classes);
  CHORUS_CHECK(
      s.transfer_size < train_size,
      "--transfer-size {} leaves no private data: the training split has {} "
      "examples",
      s.transfer_size, train_size);
  return s;
}

// `per_class` labelled examples of each of `e`'s classes from its shard
// `idx` of `train`, labels indexing its own classes.
std::shared_ptr<const node::LabelledShots> shots_of(const SimExpert& e,
                                                    const fu::Examples& train,
                                                    const torch::Tensor& idx,
                                                    std::int64_t per_class) {
  auto y = train.labels.index_select(0, idx);
  std::vector<std::int64_t> rows, local;
  for (std::size_t j = 0; j < e.task.size(); ++j) {
    auto r = idx.index_select(0, y.eq(e.task[j]).nonzero().flatten())
                 .slice(0, 0, per_class);
    for (std::int64_t k = 0; k < r.numel(); ++k) {
      rows.push_back(r[k].item<std::int64_t>());
      local.push_back(static_cast<std::int64_t>(j));
    }
  }
  return std::make_shared<const node::LabelledShots>(node::LabelledShots{
      train.inputs.index_select(0, torch::tensor(rows, torch::kLong)),
      torch::tensor(local, torch::kLong)});
}

// tae and dro: each node adapts the broadcast model with k of its own
// labelled examples per class (k = 0: tae's prior for the task alone) and
// is scored on the test examples of its classes; the mean over the nodes
// per k. Empty for the other algorithms.
std::vector<SimulateResult::AdaptationPoint> adaptation_by_shots(
    fu::Fuser& fuser, const std::vector<SimExpert>& experts,
    const fu::Examples& train, const fu::Examples& test,
    const std::vector<torch::Tensor>& shards) {
  std::vector<SimulateResult::AdaptationPoint> out;
  auto* tae = fu::tae_model(fuser);
  std::optional<fu::FusedModel> dro;
  if (tae == nullptr && fuser.name() == "dro") dro = fuser.fused_model();
  if (tae == nullptr && !dro) return out;
  progress::Bar bar("adaptation by shots",
                    static_cast<double>(experts.size() * (tae ? 4 : 3)),
                    "adaptations");
  for (std::int64_t k : {0, 1, 2, 5}) {
    if (k == 0 && tae == nullptr) continue;
    double sum = 0;
    std::int64_t nodes = 0;
    for (std::size_t i = 0; i < experts.size(); ++i) {
      const auto& e = experts[i];
      auto local = fu::to_local_labels(test.labels, e.task);
      auto known = local.ge(0).nonzero().flatten();
      if (known.numel() == 0) continue;
      auto tx = test.inputs.index_select(0, known);
      auto ty = local.index_select(0, known);
      torch::Tensor probs;
      if (tae != nullptr) {
        const auto classes = node::classes_of(*tae, e.labels);
        if (k == 0) {
          probs = tae->predict(
              tx, tae->prior(fu::task_descriptor(classes, tae->task_dim())),
              classes);
        } else {
          auto outcome =
              node::adapt_tae(*tae, classes, *shots_of(e, train, shards[i], k));
          probs = tae->predict(tx, outcome.adaptation, classes);
        }
      } else {
        auto outcome =
            node::adapt_dro(*dro, node::classes_in_space(*dro, e.labels),
                            e.labels, *shots_of(e, train, shards[i], k));
        probs = fu::predict_proba(*outcome.model, tx);
      }
      sum += fu::accuracy(probs, ty);
      ++nodes;
      bar.advance(1);
    }
    if (nodes > 0) {
      out.push_back({.shots = k,
                     .accuracy = sum / static_cast<double>(nodes),
                     .nodes = nodes});
    }
  }
  return out;
}

}  // namespace

SimulateResult run_simulation(const SimulateOptions& o) {
  const auto t_start = Clock::now();
  auto log = log::get("simulate");
  CHORUS_CHECK(o.experts >= 1 && o.experts <= 64,
               "--experts must be 1..64, got {}", o.experts);
  CHORUS_CHECK(o.rounds >= 1, "--rounds must be at least 1, got {}", o.rounds);
  CHORUS_CHECK(o.threads >= 1, "--threads must be at least 1");
  (void)fu::parse_device(o.device);  // A device it cannot use fails here.
  auto algorithms = split_list(o.algorithm);
  CHORUS_CHECK(!algorithms.empty(), "--algorithm names no algorithm");
  for (const auto& a : algorithms)
    (void)fu::make_fuser(a);  // Unknown names fail here.
  for (const auto& [name, cost] : o.algorithms.frugal.costs) {
    std::vector<std::string> names;
    for (int i = 0; i < o.experts; ++i) names.push_back(node_name(i));
    CHORUS_CHECK(std::find(names.begin(), names.end(), name) != names.end(),
                 "--frugal costs names '{}', which is not one of the {} "
                 "nodes ({})",
                 name, o.experts, fmt::join(names, ", "));
  }
  fu::ThreadGuard threads(o.threads);

  SimulateResult result;
  result.run_dir = o.out;
  fs::create_directories(o.out);
  write_config(o, o.out);

  auto raw = load_simulation_data(
      o.dataset, path_or_env(o.data_dir, fu::data_dir_variable(o.dataset)));
  TaskSpec task = raw.task;
  const std::int64_t classes = task.labels.size();
  result.classes = classes;
  const auto sizes = resolve_sizes(o, raw.train.size(), classes);
  auto split = fu::p1_split(raw.train.labels,
                            fu::P1Options()
                                .experts(o.experts)
                                .classes_per_expert(sizes.classes_per_expert)
                                .num_classes(classes)
                                .transfer_size(sizes.transfer_size)
                                .fusion_labels(sizes.fusion_labels)
                                .seed(o.seed));
  // Normalisation statistics, when the task asks for them, come from the
  // public pool U (what a coordinator has).
  fu::fit_normalisation(task, raw.train.inputs.index_select(0, split.transfer));
  const fu::Examples train{fu::to_model_inputs(raw.train.inputs, task),
                           raw.train.labels};
  const fu::Examples test{fu::to_model_inputs(raw.test.inputs, task),
                          raw.test.labels};
  progress::println(
      "data set {}: {} labels, inputs {}, normalise {}; {} training and "
      "{} test "
      "examples; U {} (V {}), {} classes per expert\n",
      task.name, classes, task.describe_input(),
      normalisation_name(task.normalisation), train.size(), test.size(),
      sizes.transfer_size, sizes.fusion_labels, sizes.classes_per_expert);
  const std::int64_t shard = (train.size() - sizes.transfer_size) / o.experts;
  const int epochs =
      o.expert_epochs > 0
          ? o.expert_epochs
          : static_cast<int>(std::clamp<std::int64_t>(
                30'000 / std::max<std::int64_t>(1, shard), 3, 200));
  auto experts =
      prepare_experts(o, task, train, split, epochs, o.out / "experts", result);
  const auto pki = o.out / "pki";
  ensure_pki(pki, experts);

  // Five private labelled examples per class of each node's task, from
  // its own shard: what an in-process node adapts a pushed model with.
  LocalClusterOptions cluster_options{.task = task,
                                      .experts = experts,
                                      .shots = {},
                                      .pki = pki,
                                      .out = o.out,
                                      .processes = o.processes,
                                      .chorus_binary = o.chorus_binary,
                                      .dataset = o.dataset,
                                      .seed = o.seed,
                                      .device = o.device};
  if (!o.processes) {
    for (std::size_t i = 0; i < experts.size(); ++i) {
      cluster_options.shots.push_back(
          shots_of(experts[i], train, split.expert_train[i], 5));
    }
  }
  LocalCluster cluster(std::move(cluster_options));
  auto& registry = cluster.registry();

  try {
    coordinator::CoordinatorOptions co;
    co.task = task;
    co.algorithm = algorithms.front();
    co.algorithm_options =
        fu::AlgorithmOptions().seed(o.seed).threads(o.threads).device(
            fu::parse_device(o.device));
    coordinator::apply_algorithm_settings(o.algorithms, co.algorithm_options);
    co.rounds = o.rounds;
    co.min_nodes = static_cast<std::size_t>(o.experts);
    co.quorum_timeout = std::chrono::seconds(o.processes ? 120 : 30);
    co.run_dir = o.out;
    co.resume = o.resume;
    // On a terminal, the rounds' live view: the phase, each node's answers.
    co.status = std::make_shared<coordinator::StatusBoard>(
        "simulate", co.algorithm, static_cast<std::uint32_t>(o.rounds));
    co.on_round = [tae = co.algorithm ==
                         "tae"](const coordinator::RoundReport& r) {
      if (r.resumed) {
        progress::println(
            "round {}/{}: complete in a checkpoint, not repeated\n", r.round,
            r.rounds);
        return;
      }
      progress::println(
          "round {}/{}: {} nodes answered, {}, {} inputs queried, "
          "{:.1f} MB sent, {:.1f} MB received, pushed to {}{}, {:.1f} s "
          "({})\n",
          r.round, r.rounds, r.experts.size(),
          coordinator::describe_left_out(r), r.inputs_queried,
          static_cast<double>(r.bytes_sent) / 1e6,
          static_cast<double>(r.bytes_received) / 1e6, r.pushed_to.size(),
          r.adapted.empty()
              ? std::string()
              : fmt::format(", {} adapted it{}", r.adapted.size(),
                            tae ? " and sent their embedding" : ""),
          r.seconds, coordinator::describe_phases(r));
    };
    coordinator::PoolData pool{
        .inputs = train.inputs.index_select(0, split.transfer),
        .fusion_index = torch::arange(split.fusion.size(0), torch::kLong),
        .fusion_labels = train.labels.index_select(0, split.fusion)};
    coordinator::Coordinator coordinator(registry, pool, co);
    const auto t_rounds = Clock::now();
    auto reports = coordinator.run();
    const double round_seconds = since(t_rounds);
    std::int64_t train_queries = 0;
    std::map<std::string, fu::QueryStats> per_node;
    for (const auto& r : reports) {
      train_queries += r.inputs_queried;
      for (const auto& [n, s] : r.per_node) per_node[n] += s;
    }

    // The test set, asked of every expert once over the network.
    auto& oracle = coordinator.oracle();
    oracle.reset_stats();
    auto test_answers = oracle.query_all(test.inputs);
    const auto& fused_experts = coordinator.experts();
    // What the test queries cost, at the nodes' --frugal costs.
    const auto& costs = o.algorithms.frugal.costs;
    for (std::size_t k = 0; k < fused_experts.size(); ++k) {
      const auto& info = fused_experts[k];
      auto local = fu::to_local_labels(test.labels, info.labels);
      auto known = local.ge(0).nonzero().flatten();
      const auto& stats = per_node[info.name];
      result.rows.push_back(ResultRow{
          .method = fmt::format("expert {} ({})", info.name,
                                fmt::join(info.labels, ",")),
          .accuracy = fu::accuracy(
              fu::lift(test_answers[k], info.labels, classes), test.labels),
          .task_accuracy = fu::accuracy(test_answers[k].index_select(0, known),
                                        local.index_select(0, known)),
          .train_queries = stats.inputs,
          .queries_per_input = 1,
          .cost_per_input = fu::expert_cost(costs, info.name),
          .bytes_sent = stats.bytes_sent,
          .bytes_received = stats.bytes_received,
          .seconds = 0});
    }
    auto cost_per_input = [&](const fu::QueryOracle& asked) {
      double total = 0;
      for (std::int64_t i = 0; i < asked.num_experts(); ++i) {
        total += static_cast<double>(asked.stats(i).inputs) *
                 fu::expert_cost(
                     costs, asked.experts()[static_cast<std::size_t>(i)].name);
      }
      return total / static_cast<double>(test.size());
    };
    ReplayOracle replay(classes, fused_experts, test.inputs, test_answers,
                        task.dtype == InputDType::kUInt8 ? 1 : 4);
    std::vector<std::string> methods = {"bplus", "bmax"};
    for (const auto& a : algorithms) {
      if (std::find(methods.begin(), methods.end(), a) == methods.end())
        methods.push_back(a);
    }
    for (const auto& name : methods) {
      const auto t0 = Clock::now();
      std::unique_ptr<fu::Fuser> own;
      fu::Fuser* fuser = nullptr;
      if (name == algorithms.front()) {
        fuser = &coordinator.fuser();
      } else {
        own = fu::make_fuser(name, co.algorithm_options);
        own->fit(coordinator.data());
        fuser = own.get();
      }
      replay.reset_stats();
      auto probs = fuser->predict(replay, test.inputs);
      const auto s = replay.total_stats();
      if (name == algorithms.front()) {
        const auto c = classes;
        auto flat = torch::zeros({c * c}, torch::kLong);
        flat.index_add_(0, test.labels.to(torch::kLong) * c + probs.argmax(1),
                        torch::ones({test.size()}, torch::kLong));
        result.confusion_method = name;
        result.label_names = task.labels.names();
        result.confusion.assign(static_cast<std::size_t>(c), {});
        auto acc = flat.accessor<std::int64_t, 1>();
        for (std::int64_t i = 0; i < c; ++i)
          for (std::int64_t j = 0; j < c; ++j)
            result.confusion[static_cast<std::size_t>(i)].push_back(
                acc[i * c + j]);
      }
      result.rows.push_back(ResultRow{
          .method = name == algorithms.front() ? name + " (broadcast)" : name,
          .accuracy = fu::accuracy(probs, test.labels),
          .task_accuracy = -1,
          .train_queries =
              name == "bplus" || name == "bmax" ? 0 : train_queries,
          .queries_per_input =
              static_cast<double>(s.inputs) / static_cast<double>(test.size()),
          .cost_per_input = cost_per_input(replay),
          .bytes_sent = s.bytes_sent,
          .bytes_received = s.bytes_received,
          .seconds =
              since(t0) + (name == algorithms.front() ? round_seconds : 0.0)});
      // Frugal's λ trades accuracy for queries: the curve, on the same
      // recorded answers (the subset fusers trained once, cached).
      if (auto* frugal = fu::frugal_model(*fuser)) {
        for (double lambda : {0.0, 0.01, 0.02, 0.05, 0.1, 0.2}) {
          replay.reset_stats();
          auto curve = frugal->predict(replay, test.inputs, lambda);
          result.frugal_curve.push_back(SimulateResult::FrugalPoint{
              .lambda = lambda,
              .accuracy = fu::accuracy(curve.probs, test.labels),
              .queries_per_input =
                  static_cast<double>(replay.total_stats().inputs) /
                  static_cast<double>(test.size()),
              .cost_per_input = curve.mean_cost()});
        }
      }
    }
    result.adaptation_by_shots = adaptation_by_shots(
        coordinator.fuser(), experts, train, test, split.expert_train);
  } catch (...) {
    cluster.stop();
    throw;
  }
  cluster.stop();
  result.total_seconds = since(t_start);

  write_report(o, result);
  result.html_report = write_html_report(o.out);
  return result;
}

}  // namespace chorus::simulate
