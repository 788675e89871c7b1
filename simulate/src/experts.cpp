#include "experts.hpp"

#include <fmt/ranges.h>
#include <torch/torch.h>

#include <algorithm>

#include "chorus/core/error.hpp"
#include "chorus/core/log.hpp"
#include "chorus/core/progress.hpp"
#include "chorus/core/version.hpp"
#include "chorus/fusion/device.hpp"
#include "chorus/fusion/models.hpp"
#include "chorus/fusion/random.hpp"
#include "chorus/fusion/train.hpp"
#include "chorus/node/expert.hpp"
#include "chorus/protocol/certs.hpp"
#include "chorus/protocol/digest.hpp"

namespace chorus::simulate {
namespace {

namespace fs = std::filesystem;
namespace fu = chorus::fusion;

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

}  // namespace

std::string node_name(int i) {
  static const char* kNames[] = {"alpha",   "beta",  "gamma",  "delta",
                                 "epsilon", "zeta",  "eta",    "theta",
                                 "iota",    "kappa", "lambda", "mu"};
  if (i < 12) return kNames[i];
  return fmt::format("node{}", i + 1);
}

// Trains (or finds in the cache) each node's expert.
std::vector<SimExpert> prepare_experts(const SimulateOptions& o,
                                       const TaskSpec& task,
                                       const fu::Examples& train,
                                       const fu::P1Split& split, int epochs,
                                       const fs::path& dir,
                                       SimulateResult& result) {
  auto log = log::get("simulate");
  fs::create_directories(dir);
  std::vector<SimExpert> experts;
  std::vector<int> to_train;
  const auto& names = task.labels.names();
  for (int i = 0; i < o.experts; ++i) {
    SimExpert e{.name = node_name(i),
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
      to_train.push_back(i);
    }
    experts.push_back(std::move(e));
  }
  // The missing experts, --threads at a time on one torch thread each
  // (faster on a few cores than one at a time on all of them), cheapest
  // first: the ones that cannot keep every core busy that way, trained last
  // on all of them, are the most expensive.
  auto cost = [&](int i) {
    const auto& arch = experts[static_cast<std::size_t>(i)].arch;
    return arch == "resnet" ? 2 : arch == "lenet" ? 1 : 0;
  };
  std::stable_sort(to_train.begin(), to_train.end(),
                   [&](int a, int b) { return cost(a) < cost(b); });
  const auto device = fu::parse_device(o.device);
  const auto t_all = Clock::now();
  fu::run_jobs(
      static_cast<std::int64_t>(to_train.size()), o.threads,
      [&](std::int64_t j, int threads) {
        const int i = to_train[static_cast<std::size_t>(j)];
        const auto& e = experts[static_cast<std::size_t>(i)];
        const auto t0 = Clock::now();
        const auto& idx = split.expert_train[static_cast<std::size_t>(i)];
        auto x = train.inputs.index_select(0, idx);
        auto y = fu::to_local_labels(train.labels.index_select(0, idx), e.task);
        fu::ModelSpec spec{
            .arch = e.arch,
            .input_shape = task.input_shape,
            .num_classes = static_cast<std::int64_t>(e.task.size()),
            .hidden = e.hidden};
        const auto seed = o.seed * 100 + static_cast<std::uint64_t>(i);
        auto gen = fu::make_generator(seed);
        auto model = fu::make_classifier(spec, gen);
        fu::train(*model, x, y,
                  fu::TrainOptions()
                      .epochs(epochs)
                      .batch_size(64)
                      .lr(2e-3)
                      .seed(seed)
                      .threads(threads)
                      .device(device)
                      .progress(fmt::format("train {} {}", e.name, e.arch)));
        node::save_builtin_expert(model, spec, e.labels, e.file);
        progress::println(
            "trained {:<8} {:<6} on [{}]: {} examples, {} epochs, {:.1f} s\n",
            e.name, e.arch, fmt::join(e.labels, ", "), x.size(0), epochs,
            since(t0));
      });
  if (!to_train.empty()) result.expert_seconds += since(t_all);
  return experts;
}

void ensure_pki(const fs::path& pki, const std::vector<SimExpert>& experts) {
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

}  // namespace chorus::simulate
