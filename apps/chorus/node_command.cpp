// chorus node --config node.toml [--set key=value ...] [--print-config]
// chorus node train --config node.toml [--set key=value ...]
// chorus node audit --log FILE [--json]
#include "node_command.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "chorus/core/config.hpp"
#include "chorus/core/error.hpp"
#include "chorus/node/audit.hpp"
#include "chorus/node/config.hpp"
#include "chorus/node/run.hpp"

namespace chorus::app {
namespace {

struct NodeArgs {
  std::string config;
  std::vector<std::string> sets;
  bool print_config = false;
  std::string audit_log;
  bool audit_json = false;
};

node::NodeConfig load(const NodeArgs& args) {
  Config config = args.config.empty() ? Config() : Config::load(args.config);
  for (const auto& s : args.sets) config.set(s);
  return node::read_node_config(config);
}

void add_config_options(CLI::App* sub, NodeArgs& args) {
  sub->add_option("--config", args.config, "node.toml (every key has a default)")
      ->check(CLI::ExistingFile);
  sub->add_option("--set", args.sets,
                  "Override one config key, e.g. --set policy.max_batch=256 "
                  "(repeatable)");
}

int run(const NodeArgs& args) {
  auto config = load(args);
  if (args.print_config) {
    fmt::print("{}", node::to_toml(config));
    return 0;
  }
  node::run_node(config);
  return 0;
}

int train(const NodeArgs& args) {
  auto config = load(args);
  CHORUS_CHECK(config.expert.kind == node::ExpertKind::kBuiltin,
               "chorus node train trains builtin experts; expert.kind is '{}'",
               node::expert_kind_name(config.expert.kind));
  CHORUS_CHECK(!config.expert.labels.empty(),
               "set expert.labels: the classes this node's expert learns");
  node::set_torch_threads(config.threads);
  auto options = config.train;
  options.on_epoch([](const fusion::EpochReport& r) {
    fmt::print("epoch {}/{}  loss {:.4f}  {:.1f} s\n", r.epoch, r.epochs, r.train_loss,
               r.seconds);
    std::fflush(stdout);
  });
  fmt::print("training {} on [{}] (shard {}/{}), {} epochs, {} thread(s)\n",
             options.arch(), fmt::join(config.expert.labels, ", "), options.shard(),
             options.shards(), options.epochs(), config.threads);
  auto result = node::train_builtin_expert(config.expert.labels, options,
                                           config.expert.path);
  fmt::print("examples {}  held out {}  held-out accuracy {:.4f}  {:.1f} s\n",
             result.examples, result.holdout, result.holdout_accuracy, result.seconds);
  fmt::print("wrote {}\n", config.expert.path.string());
  return 0;
}

int audit(const NodeArgs& args) {
  auto s = node::summarise_audit(args.audit_log);
  if (args.audit_json) {
    nlohmann::json out{{"log", args.audit_log},
                       {"requests", s.requests},
                       {"inputs_answered", s.inputs_answered},
                       {"by_kind", s.by_kind},
                       {"by_outcome", s.by_outcome},
                       {"by_peer", s.by_peer},
                       {"first", s.first_time},
                       {"last", s.last_time},
                       {"budget_left", s.budget_left ? nlohmann::json(*s.budget_left)
                                                     : nlohmann::json(nullptr)},
                       {"malformed_lines", s.malformed_lines}};
    fmt::print("{}\n", out.dump(2));
    return 0;
  }
  auto rows = [](const std::map<std::string, std::int64_t>& m) {
    std::vector<std::string> out;
    for (const auto& [k, v] : m) out.push_back(fmt::format("{} {}", k, v));
    return fmt::format("{}", fmt::join(out, ", "));
  };
  fmt::print("log              {}\n", args.audit_log);
  fmt::print("requests         {}\n", s.requests);
  fmt::print("inputs answered  {}\n", s.inputs_answered);
  fmt::print("by kind          {}\n", rows(s.by_kind));
  fmt::print("by outcome       {}\n", rows(s.by_outcome));
  fmt::print("by peer          {}\n", rows(s.by_peer));
  fmt::print("period           {} .. {}\n", s.first_time, s.last_time);
  fmt::print("budget left      {}\n",
             s.budget_left ? std::to_string(*s.budget_left) : std::string("unlimited"));
  if (s.malformed_lines > 0) {
    fmt::print("malformed lines  {} (not audit records; a torn last line after a "
               "crash, or an edited file)\n",
               s.malformed_lines);
  }
  return 0;
}

}  // namespace

std::vector<std::pair<CLI::App*, std::function<int()>>> add_node_commands(
    CLI::App& app) {
  auto args = std::make_shared<NodeArgs>();
  auto* node = app.add_subcommand(
      "node",
      "Run a node serving a private black-box expert to a coordinator "
      "(--config node.toml); 'node train' trains a builtin expert, 'node audit' "
      "summarises the audit log");
  add_config_options(node, *args);
  node->add_flag("--print-config", args->print_config,
                 "Print the resolved configuration and exit");
  node->require_subcommand(0, 1);

  auto* train_cmd = node->add_subcommand(
      "train", "Train the builtin expert named by expert.path on local data "
               "(Fashion-MNIST restricted to expert.labels)");
  add_config_options(train_cmd, *args);

  auto* audit_cmd = node->add_subcommand("audit", "Summarise a node's audit log");
  audit_cmd->add_option("--log", args->audit_log, "The audit log (JSONL)")->required();
  audit_cmd->add_flag("--json", args->audit_json, "Print JSON");

  return {{train_cmd, [args] { return train(*args); }},
          {audit_cmd, [args] { return audit(*args); }},
          {node, [args] { return run(*args); }}};
}

}  // namespace chorus::app
