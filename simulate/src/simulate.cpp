#include "chorus/simulate/simulate.hpp"

#include <fmt/ranges.h>
#include <spawn.h>
#include <sys/wait.h>
#include <torch/torch.h>

#include <asio/io_context.hpp>
#include <asio/thread_pool.hpp>
#include <csignal>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "chorus/coordinator/coordinator.hpp"
#include "chorus/coordinator/registry.hpp"
#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/log.hpp"
#include "chorus/core/version.hpp"
#include "chorus/fusion/data_files.hpp"
#include "chorus/fusion/ensemble.hpp"
#include "chorus/fusion/models.hpp"
#include "chorus/fusion/partition.hpp"
#include "chorus/fusion/train.hpp"
#include "chorus/node/expert.hpp"
#include "chorus/node/service.hpp"
#include "chorus/node/session.hpp"
#include "chorus/protocol/certs.hpp"
#include "chorus/protocol/digest.hpp"
#include "chorus/protocol/shutdown.hpp"

extern char** environ;

namespace chorus::simulate {
namespace {

namespace fs = std::filesystem;
namespace fu = chorus::fusion;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

std::string node_name(int i) {
  static const char* kNames[] = {"alpha",   "beta",  "gamma",  "delta",
                                 "epsilon", "zeta",  "eta",    "theta",
                                 "iota",    "kappa", "lambda", "mu"};
  if (i < 12) return kNames[i];
  return fmt::format("node{}", i + 1);
}

// Each node a different architecture of the zoo that fits the inputs: MLPs
// of different widths for features, the three families for images.
std::string arch_of(int i, const std::vector<std::int64_t>& input_shape) {
  if (fu::default_architecture(input_shape) == "mlp") return "mlp";
  static const char* kArchs[] = {"lenet", "mlp", "resnet"};
  return kArchs[i % 3];
}

std::vector<std::int64_t> hidden_of(
    int i, const std::vector<std::int64_t>& input_shape) {
  if (input_shape.size() != 1) return fu::ModelSpec{}.hidden;
  static const std::vector<std::int64_t> kWidths[] = {
      {64, 32}, {128}, {32, 32}};
  return kWidths[i % 3];
}

// The data of a simulation: the task, and the training and test splits as
// models see them (uint8 scaled, normalised with statistics from U).
struct SimulationData {
  TaskSpec task;
  fu::Examples train, test;  // Model inputs, float32.
};

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

// Answers from a table collected over the network, charged as queries.
// Inputs are found by their bytes, so any subset or order of the test
// inputs can be asked for.
class ReplayOracle : public fu::QueryOracle {
 public:
  ReplayOracle(std::int64_t classes, std::vector<fu::ExpertInfo> experts,
               const torch::Tensor& inputs, std::vector<torch::Tensor> answers,
               std::int64_t wire_element_size)
      : classes_(classes),
        experts_(std::move(experts)),
        answers_(std::move(answers)),
        wire_element_size_(wire_element_size) {
    auto x = inputs.contiguous();
    for (std::int64_t i = 0; i < x.size(0); ++i) rows_.emplace(key(x[i]), i);
  }
  std::int64_t num_classes() const override { return classes_; }
  const std::vector<fu::ExpertInfo>& experts() const override {
    return experts_;
  }

 protected:
  torch::Tensor do_query(std::int64_t expert,
                         const torch::Tensor& inputs) override {
    auto x = inputs.contiguous();
    std::vector<std::int64_t> index;
    for (std::int64_t i = 0; i < x.size(0); ++i) {
      auto it = rows_.find(key(x[i]));
      CHORUS_CHECK_CODE(it != rows_.end(), Code::kInternal,
                        "replay: an input the experts were not asked about");
      index.push_back(it->second);
    }
    return answers_[static_cast<std::size_t>(expert)].index_select(
        0, torch::tensor(index, torch::kLong));
  }
  // Counted as the inputs would travel to a node: in the task's dtype.
  std::int64_t shipped_bytes(const torch::Tensor& inputs) const override {
    return inputs.numel() * wire_element_size_;
  }

 private:
  static std::string key(const torch::Tensor& row) {
    auto r = row.contiguous();
    return std::string(static_cast<const char*>(r.data_ptr()),
                       static_cast<std::size_t>(r.numel() * r.element_size()));
  }
  std::int64_t classes_;
  std::vector<fu::ExpertInfo> experts_;
  std::vector<torch::Tensor> answers_;
  std::unordered_map<std::string, std::int64_t> rows_;
  std::int64_t wire_element_size_;
};

// Child processes (one per node with --processes), ended with the run.
class Children {
 public:
  void spawn(const std::vector<std::string>& argv, const fs::path& log) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_t pid = 0;
    const int rc =
        posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    CHORUS_CHECK_CODE(rc == 0, Code::kInternal, "cannot start {}: {}", argv[0],
                      std::strerror(rc));
    pids_.push_back(pid);
  }
  ~Children() {
    for (auto pid : pids_) kill(pid, SIGTERM);
    for (auto pid : pids_) waitpid(pid, nullptr, 0);
  }

 private:
  std::vector<pid_t> pids_;
};

struct Expert {
  std::string name;
  std::vector<std::int64_t> hidden;
  std::vector<std::int64_t> task;
  std::vector<std::string> labels;
  std::string arch;
  fs::path file;
};

void write_config(const SimulateOptions& o, const fs::path& run_dir) {
  auto text = fmt::format(
      "# chorus simulate, resolved options (chorus {})\n"
      "experts = {}\nalgorithm = \"{}\"\ndataset = \"{}\"\nrounds = {}\nseed = "
      "{}\n"
      "classes_per_expert = {}\ntransfer_size = {}\nfusion_labels = {}\n"
      "expert_epochs = {}\nprocesses = {}\nthreads = {}\n",
      kVersion, o.experts, o.algorithm, o.dataset, o.rounds, o.seed,
      o.classes_per_expert, o.transfer_size, o.fusion_labels, o.expert_epochs,
      o.processes, o.threads);
  write_file_atomic(run_dir / "config.toml", text);
}

// Trains (or finds in the cache) each node's expert.
std::vector<Expert> prepare_experts(const SimulateOptions& o,
                                    const TaskSpec& task,
                                    const fu::Examples& train,
                                    const fu::P1Split& split, int epochs,
                                    const fs::path& dir,
                                    SimulateResult& result) {
  auto log = log::get("simulate");
  fs::create_directories(dir);
  std::vector<Expert> experts;
  const auto& names = task.labels.names();
  for (int i = 0; i < o.experts; ++i) {
    Expert e{.name = node_name(i),
             .hidden = hidden_of(i, task.input_shape),
             .task = split.tasks[static_cast<std::size_t>(i)],
             .labels = {},
             .arch = arch_of(i, task.input_shape),
             .file = {}};
    for (auto c : e.task)
      e.labels.push_back(names[static_cast<std::size_t>(c)]);
    const auto& idx = split.expert_train[static_cast<std::size_t>(i)];
    // The cache key: everything the trained weights depend on.
    auto idx_bytes = std::string(static_cast<const char*>(idx.data_ptr()),
                                 static_cast<std::size_t>(idx.numel() * 8));
    auto key = protocol::to_hex(
                   protocol::sha256(fmt::format(
                       "chorus-expert-v2|{}|{}|{}|{}|{}|{}|{}|{}|{}", kVersion,
                       e.arch, epochs, o.seed, i, fmt::join(e.task, ","),
                       protocol::to_hex(protocol::sha256(idx_bytes)),
                       to_toml(task), fmt::join(e.hidden, ","))))
                   .substr(0, 16);
    e.file = dir / fmt::format("{}-{}-{}.pt", e.name, e.arch, key);
    if (fs::exists(e.file)) {
      ++result.experts_cached;
      log->info("node={} event=expert_cached file={}", e.name, e.file.string());
    } else {
      const auto t0 = Clock::now();
      auto x = train.inputs.index_select(0, idx);
      auto y = fu::to_local_labels(train.labels.index_select(0, idx), e.task);
      fu::ModelSpec spec{
          .arch = e.arch,
          .input_shape = task.input_shape,
          .num_classes = static_cast<std::int64_t>(e.task.size()),
          .hidden = e.hidden};
      fu::SeedGuard seeded(o.seed * 100 + static_cast<std::uint64_t>(i));
      auto model = fu::make_classifier(spec);
      fu::train(*model, x, y,
                fu::TrainOptions()
                    .epochs(epochs)
                    .batch_size(64)
                    .lr(2e-3)
                    .seed(o.seed * 100 + static_cast<std::uint64_t>(i))
                    .threads(o.threads));
      node::save_builtin_expert(model, spec, e.labels, e.file);
      const double s = since(t0);
      result.expert_seconds += s;
      fmt::print(
          stderr,
          "trained {:<8} {:<6} on [{}]: {} examples, {} epochs, {:.1f} s\n",
          e.name, e.arch, fmt::join(e.labels, ", "), x.size(0), epochs, s);
    }
    experts.push_back(std::move(e));
  }
  return experts;
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

void ensure_pki(const fs::path& pki, const std::vector<Expert>& experts) {
  std::vector<std::string> names;
  for (const auto& e : experts) names.push_back(e.name);
  if (!fs::exists(pki / "ca.crt")) {
    protocol::init_deployment(pki, {"localhost", "127.0.0.1"}, names, 30);
    return;
  }
  for (const auto& n : names) {
    if (!fs::exists(pki / (n + ".crt"))) protocol::add_node(pki, n, 30);
  }
}

}  // namespace

SimulateResult run_simulation(const SimulateOptions& o) {
  const auto t_start = Clock::now();
  auto log = log::get("simulate");
  CHORUS_CHECK(o.experts >= 1 && o.experts <= 64,
               "--experts must be 1..64, got {}", o.experts);
  CHORUS_CHECK(o.rounds >= 1, "--rounds must be at least 1, got {}", o.rounds);
  CHORUS_CHECK(o.threads >= 1, "--threads must be at least 1");
  auto algorithms = split_list(o.algorithm);
  CHORUS_CHECK(!algorithms.empty(), "--algorithm names no algorithm");
  for (const auto& a : algorithms)
    (void)fu::make_fuser(a);  // Unknown names fail here.
  fu::ThreadGuard threads(o.threads);

  SimulateResult result;
  result.run_dir = o.out;
  fs::create_directories(o.out);
  write_config(o, o.out);

  std::optional<fs::path> data_dir;
  if (!o.data_dir.empty()) data_dir = o.data_dir;
  auto raw = load_simulation_data(o.dataset, data_dir);
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
  fmt::print(stderr,
             "data set {}: {} labels, inputs {}, normalise {}; {} training and "
             "{} test "
             "examples; U {} (V {}), {} classes per expert\n",
             task.name, classes, task.describe_input(),
             normalisation_name(task.normalisation), train.size(), test.size(),
             sizes.transfer_size, sizes.fusion_labels,
             sizes.classes_per_expert);
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

  // The coordinator: its own io_context and thread.
  std::vector<std::string> roster;
  for (const auto& e : experts) roster.push_back(e.name);
  asio::io_context coordinator_io;
  coordinator::RegistryOptions ro;
  ro.port = 0;
  ro.tls = protocol::TlsMaterial::load(pki / "ca.crt", pki / "coordinator.crt",
                                       pki / "coordinator.key");
  ro.task = task;
  coordinator::NodeRegistry registry(coordinator_io,
                                     coordinator::Roster(roster), ro);
  registry.start();
  protocol::IoThread coordinator_thread(coordinator_io);

  // The nodes: in this process on one io_context sharing one inference
  // thread, or one `chorus node` process each.
  asio::io_context node_io;
  asio::thread_pool inference(1);
  std::vector<std::unique_ptr<node::NodeService>> services;
  std::vector<std::unique_ptr<node::NodeSession>> sessions;
  std::optional<Children> children;
  if (o.processes) {
    CHORUS_CHECK(!o.chorus_binary.empty(),
                 "--processes needs the chorus executable");
    children.emplace();
    for (const auto& e : experts) {
      const auto dir = fs::absolute(o.out / "nodes" / e.name);
      fs::create_directories(dir);
      write_file_atomic(
          dir / "node.toml",
          fmt::format(
              "# written by chorus simulate --processes\n"
              "[node]\nname = \"{0}\"\nstate_dir = \"{1}\"\nthreads = 1\n"
              "[coordinator]\nhost = \"127.0.0.1\"\nport = {2}\n"
              "[tls]\nca = \"{3}/ca.crt\"\ncert = \"{3}/{0}.crt\"\n"
              "key = \"{3}/{0}.key\"\n"
              "[expert]\nkind = \"builtin\"\npath = \"{4}\"\n{5}",
              e.name, dir.string(), registry.port(), fs::absolute(pki).string(),
              fs::absolute(e.file).string(),
              // Adaptation shots are drawn from Fashion-MNIST only.
              o.dataset == "fashion-mnist"
                  ? fmt::format("[adapt]\nshots_per_class = 5\nseed = {}\n",
                                o.seed)
                  : std::string()));
      children->spawn({o.chorus_binary.string(), "node", "--config",
                       (dir / "node.toml").string()},
                      dir / "node.log");
    }
  } else {
    for (const auto& e : experts) {
      node::ExpertOptions eo;
      eo.kind = node::ExpertKind::kBuiltin;
      eo.path = e.file;
      node::NodeServiceOptions so;
      // Five private labelled examples per class of its task, from its own
      // shard: what the node adapts a pushed tae model with.
      {
        const auto& idx =
            split.expert_train[static_cast<std::size_t>(&e - experts.data())];
        auto y = train.labels.index_select(0, idx);
        std::vector<std::int64_t> rows, local;
        for (std::size_t j = 0; j < e.task.size(); ++j) {
          auto r = idx.index_select(0, y.eq(e.task[j]).nonzero().flatten())
                       .slice(0, 0, 5);
          for (std::int64_t k = 0; k < r.numel(); ++k) {
            rows.push_back(r[k].item<std::int64_t>());
            local.push_back(static_cast<std::int64_t>(j));
          }
        }
        so.shots = std::make_shared<node::LabelledShots>(node::LabelledShots{
            train.inputs.index_select(0, torch::tensor(rows, torch::kLong)),
            torch::tensor(local, torch::kLong)});
      }
      so.state_dir = o.out / "nodes" / e.name;
      so.audit_log = so.state_dir / "audit.jsonl";
      so.metadata = {{"name", e.name}, {"arch", e.arch}};
      services.push_back(
          std::make_unique<node::NodeService>(node::load_expert(eo), so));
      node::SessionOptions s;
      s.host = "127.0.0.1";
      s.port = registry.port();
      s.tls = protocol::TlsMaterial::load(
          pki / "ca.crt", pki / (e.name + ".crt"), pki / (e.name + ".key"));
      sessions.push_back(std::make_unique<node::NodeSession>(
          node_io, inference, *services.back(), s));
      sessions.back()->start();
    }
  }
  protocol::IoThread node_thread(node_io);
  auto stop_all = [&] {
    // Goodbye both ways; each loop ends once its connections have closed.
    registry.stop("the simulation is over");
    for (auto& s : sessions) s->stop();
    constexpr std::chrono::milliseconds kGrace{3000};
    node_thread.join_within(kGrace);
    coordinator_thread.join_within(kGrace);
    inference.join();
    children.reset();
  };

  try {
    coordinator::CoordinatorOptions co;
    co.task = task;
    co.algorithm = algorithms.front();
    co.algorithm_options =
        fu::AlgorithmOptions().seed(o.seed).threads(o.threads);
    co.rounds = o.rounds;
    co.min_nodes = static_cast<std::size_t>(o.experts);
    co.quorum_timeout = std::chrono::seconds(o.processes ? 120 : 30);
    co.run_dir = o.out;
    co.resume = o.resume;
    co.on_round = [tae = co.algorithm ==
                         "tae"](const coordinator::RoundReport& r) {
      if (r.resumed) {
        fmt::print(stderr,
                   "round {}/{}: complete in a checkpoint, not repeated\n",
                   r.round, r.rounds);
        return;
      }
      fmt::print(
          stderr,
          "round {}/{}: {} nodes answered, {}, {} inputs queried, "
          "{:.1f} MB sent, {:.1f} MB received, pushed to {}{}, {:.1f} s\n",
          r.round, r.rounds, r.experts.size(),
          coordinator::describe_left_out(r), r.inputs_queried,
          static_cast<double>(r.bytes_sent) / 1e6,
          static_cast<double>(r.bytes_received) / 1e6, r.pushed_to.size(),
          r.adapted.empty()
              ? std::string()
              : fmt::format(", {} adapted it{}", r.adapted.size(),
                            tae ? " and sent their embedding" : ""),
          r.seconds);
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
          .bytes_sent = stats.bytes_sent,
          .bytes_received = stats.bytes_received,
          .seconds = 0});
    }
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
      result.rows.push_back(ResultRow{
          .method = name == algorithms.front() ? name + " (broadcast)" : name,
          .accuracy = fu::accuracy(probs, test.labels),
          .task_accuracy = -1,
          .train_queries =
              name == "bplus" || name == "bmax" ? 0 : train_queries,
          .queries_per_input =
              static_cast<double>(s.inputs) / static_cast<double>(test.size()),
          .bytes_sent = s.bytes_sent,
          .bytes_received = s.bytes_received,
          .seconds =
              since(t0) + (name == algorithms.front() ? round_seconds : 0.0)});
    }
  } catch (...) {
    stop_all();
    throw;
  }
  stop_all();
  result.total_seconds = since(t_start);

  nlohmann::json rows = nlohmann::json::array();
  for (const auto& r : result.rows) {
    rows.push_back({{"method", r.method},
                    {"accuracy", r.accuracy},
                    {"task_accuracy", r.task_accuracy < 0
                                          ? nlohmann::json(nullptr)
                                          : nlohmann::json(r.task_accuracy)},
                    {"train_queries", r.train_queries},
                    {"queries_per_test_input", r.queries_per_input},
                    {"bytes_sent", r.bytes_sent},
                    {"bytes_received", r.bytes_received},
                    {"seconds", r.seconds}});
  }
  nlohmann::json report{{"chorus", kVersion},
                        {"experts", o.experts},
                        {"algorithm", o.algorithm},
                        {"dataset", o.dataset},
                        {"rounds", o.rounds},
                        {"seed", o.seed},
                        {"processes", o.processes},
                        {"threads", o.threads},
                        {"expert_training_seconds", result.expert_seconds},
                        {"experts_cached", result.experts_cached},
                        {"total_seconds", result.total_seconds},
                        {"rows", rows}};
  write_file_atomic(o.out / "report.json", report.dump(2) + "\n");
  return result;
}

std::string format_table(const SimulateResult& r) {
  std::string out =
      fmt::format("{:<44} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
                  "method", fmt::format("acc-{}", r.classes), "acc-task",
                  "queries", "q/test", "MB sent", "MB recv", "seconds");
  for (const auto& row : r.rows) {
    out += fmt::format(
        "{:<44} {:>8.4f} {:>8} {:>9} {:>9.2f} {:>9.2f} {:>9.2f} {:>7.1f}\n",
        row.method, row.accuracy,
        row.task_accuracy < 0 ? std::string("-")
                              : fmt::format("{:.4f}", row.task_accuracy),
        row.train_queries, row.queries_per_input,
        static_cast<double>(row.bytes_sent) / 1e6,
        static_cast<double>(row.bytes_received) / 1e6, row.seconds);
  }
  return out;
}

}  // namespace chorus::simulate
