// chorus node --config node.toml [--set key=value ...] [--print-config]
// chorus node train --config node.toml [--set key=value ...]
// chorus node audit --log FILE [--json] [--state DIR] [--verify --cert FILE]
// chorus node adapt --config node.toml [--shots FILE --shot-labels FILE]
//                   [--unlabelled FILE] [--eval FILE --eval-labels FILE]
//                   [--json]
#include "node_command.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "audit_command.hpp"
#include "chorus/core/config.hpp"
#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/node/adapt.hpp"
#include "chorus/node/config.hpp"
#include "chorus/node/run.hpp"
#include "chorus/protocol/audit.hpp"

namespace chorus::app {
namespace {

struct NodeArgs {
  std::string config;
  std::vector<std::string> sets;
  bool print_config = false;
  std::string audit_log;
  bool audit_json = false;
  std::string audit_state;  // The node's state directory (budget.json).
  bool audit_verify = false;
  std::string audit_cert;  // The node's certificate, for --verify.
  std::string shots, shot_labels, unlabelled, eval, eval_labels;
  bool adapt_json = false;
};

node::NodeConfig load(const NodeArgs& args) {
  Config config = args.config.empty() ? Config() : Config::load(args.config);
  for (const auto& s : args.sets) config.set(s);
  return node::read_node_config(config);
}

void add_config_options(CLI::App* sub, NodeArgs& args) {
  sub->add_option("--config", args.config,
                  "node.toml (every key has a default)")
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
    fmt::print("epoch {}/{}  loss {:.4f}  {:.1f} s\n", r.epoch, r.epochs,
               r.train_loss, r.seconds);
    std::fflush(stdout);
  });
  const auto& source = options.source();
  fmt::print(
      "training {} on [{}] from {} (shard {}/{}), {} epochs, {} thread(s)\n",
      options.arch(), fmt::join(config.expert.labels, ", "),
      source.dataset() == "files" ? source.data().path.string()
                                  : source.dataset(),
      options.shard(), options.shards(), options.epochs(), config.threads);
  auto result = node::train_builtin_expert(config.expert.labels, options,
                                           config.expert.path);
  fmt::print("architecture {}  inputs [{}]\n", result.arch,
             fmt::join(result.input_shape, ", "));
  fmt::print("examples {}  held out {}  held-out accuracy {:.4f}  {:.1f} s\n",
             result.examples, result.holdout, result.holdout_accuracy,
             result.seconds);
  if (result.teachers > 1) {
    fmt::print(
        "teachers {}  each on about {} examples  held-out accuracy: one "
        "teacher {:.4f} (mean), their votes' plurality {:.4f}\n",
        result.teachers, result.examples / result.teachers,
        result.teacher_accuracy, result.vote_accuracy);
  }
  if (const auto& g = result.privacy) {
    fmt::print(
        "DP-SGD: (epsilon {:.3g}, delta {:.3g}) over {} steps at sampling "
        "rate {:.4g}, noise multiplier {:.4g}, clip {:.3g} ({})\n",
        g->epsilon, g->delta, g->steps, g->sample_rate, g->noise_multiplier,
        g->max_grad_norm, g->accountant);
  }
  fmt::print("wrote {}\n", config.expert.path.string());
  return 0;
}

int adapt(const NodeArgs& args) {
  node::LocalAdaptOptions o;
  o.config = load(args);
  o.shots = args.shots;
  o.shot_labels = args.shot_labels;
  o.unlabelled = args.unlabelled;
  o.eval = args.eval;
  o.eval_labels = args.eval_labels;
  auto r = node::adapt_locally(o);
  const auto& a = r.outcome.adaptation;
  auto optional = [](const std::optional<double>& v) {
    return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
  };
  if (args.adapt_json) {
    nlohmann::json out{{"model", r.model.string()},
                       {"algorithm", r.outcome.algorithm},
                       {"round", r.outcome.round},
                       {"classes", r.outcome.class_names},
                       {"shots", r.outcome.shots},
                       {"unlabelled", a.unlabelled},
                       {"shot_accuracy", r.outcome.shot_accuracy},
                       {"eval_images", r.eval_images},
                       {"prior_accuracy", optional(r.prior_accuracy)},
                       {"adapted_accuracy", optional(r.adapted_accuracy)},
                       {"written", r.written.string()}};
    if (r.outcome.algorithm == "tae") {
      out["bound"] = a.bound;
      out["gibbs_loss"] = a.gibbs_loss;
      out["kl"] = a.kl;
      out["embedding"] = {{"mean", fusion::to_doubles(a.posterior.mean)},
                          {"logvar", fusion::to_doubles(a.posterior.logvar)}};
    } else {
      out["spec"] = r.outcome.spec;
    }
    fmt::print("{}\n", out.dump(2));
    return 0;
  }
  if (r.outcome.algorithm == "dro") {
    fmt::print("model            {} (round {}, dro)\n", r.model.string(),
               r.outcome.round);
    fmt::print("task             {}\n", fmt::join(r.outcome.class_names, ", "));
    fmt::print("shots            {}\n", r.outcome.shots);
    fmt::print("shot accuracy    {:.4f}\n", r.outcome.shot_accuracy);
    if (r.adapted_accuracy) {
      fmt::print("test accuracy    {:.4f} adapted ({} images)\n",
                 *r.adapted_accuracy, r.eval_images);
    }
    fmt::print("wrote {} and the adapted model beside it (adapted.pt)\n",
               r.written.string());
    return 0;
  }
  fmt::print("model            {} (round {})\n", r.model.string(),
             r.outcome.round);
  fmt::print("task             {}\n", fmt::join(r.outcome.class_names, ", "));
  fmt::print("shots            {}\n", r.outcome.shots);
  if (a.unlabelled > 0) {
    fmt::print("unlabelled       {} (refined the features head)\n",
               a.unlabelled);
  } else if (!args.unlabelled.empty()) {
    fmt::print(
        "unlabelled       not used: the task reads out by the prototypes\n");
  }
  fmt::print("PAC-Bayes bound  {:.4f} (Gibbs loss {:.4f}, KL {:.4f})\n",
             a.bound, a.gibbs_loss, a.kl);
  fmt::print("shot accuracy    {:.4f}\n", r.outcome.shot_accuracy);
  fmt::print("embedding        mean [{:.4f}]  log-variance [{:.4f}]\n",
             fmt::join(fusion::to_doubles(a.posterior.mean), ", "),
             fmt::join(fusion::to_doubles(a.posterior.logvar), ", "));
  if (r.adapted_accuracy) {
    fmt::print(
        "test accuracy    {:.4f} adapted, {:.4f} with the prior ({} images)\n",
        *r.adapted_accuracy, *r.prior_accuracy, r.eval_images);
  }
  fmt::print("wrote {}\n", r.written.string());
  return 0;
}

int audit(const NodeArgs& args) {
  if (args.audit_verify) {
    CHORUS_CHECK(!args.audit_cert.empty(),
                 "--verify needs --cert: the node's certificate, whose key "
                 "sealed the log");
    return verify_request_log(args.audit_log, args.audit_cert, args.audit_json);
  }
  auto s = protocol::summarise_audit(args.audit_log);
  // The ledger the budget is enforced from, when asked to reconcile.
  std::optional<std::int64_t> ledger;
  std::string ledger_file;
  if (!args.audit_state.empty()) {
    ledger_file =
        (std::filesystem::path(args.audit_state) / "budget.json").string();
    if (std::filesystem::exists(ledger_file)) {
      try {
        ledger = nlohmann::json::parse(read_file(ledger_file))
                     .at("spent_total")
                     .get<std::int64_t>();
      } catch (const nlohmann::json::exception& e) {
        fail(Code::kDataLoss, "budget ledger '{}' is unreadable: {}",
             ledger_file, e.what());
      }
    }
  }
  const bool agree = !ledger || !s.spent || *ledger == *s.spent;
  if (args.audit_json) {
    nlohmann::json out{
        {"log", args.audit_log},
        {"requests", s.requests},
        {"inputs_answered", s.inputs_answered},
        {"by_kind", s.by_kind},
        {"by_outcome", s.by_outcome},
        {"by_peer", s.by_peer},
        {"first", s.first_time},
        {"last", s.last_time},
        {"budget_left", s.budget_left ? nlohmann::json(*s.budget_left)
                                      : nlohmann::json(nullptr)},
        {"inputs_charged",
         s.spent ? nlohmann::json(*s.spent) : nlohmann::json(nullptr)},
        {"inputs_charged_since",
         s.spent ? nlohmann::json(s.ledger ? "ledger" : "start")
                 : nlohmann::json(nullptr)},
        {"ledger_spent", ledger ? nlohmann::json(*ledger) : nullptr},
        {"ledger_agrees", agree},
        {"malformed_lines", s.malformed_lines}};
    fmt::print("{}\n", out.dump(2));
    return agree ? 0 : 1;
  }
  auto rows = [](const std::map<std::string, std::int64_t>& m) {
    std::vector<std::string> out;
    for (const auto& [k, v] : m) out.push_back(fmt::format("{} {}", k, v));
    return fmt::format("{}", fmt::join(out, ", "));
  };
  fmt::print("log              {}\n", args.audit_log);
  fmt::print("requests         {}\n", s.requests);
  fmt::print("inputs answered  {}\n", s.inputs_answered);
  if (s.spent) {
    // Charged before the expert ran: also answers withheld (no audit
    // record could be written) or undelivered (the connection closed).
    fmt::print("inputs charged   {} ({})\n", *s.spent,
               s.ledger ? "since the budget ledger began"
                        : "since the node last started: without a budget "
                          "it keeps no ledger");
  }
  fmt::print("by kind          {}\n", rows(s.by_kind));
  fmt::print("by outcome       {}\n", rows(s.by_outcome));
  fmt::print("by peer          {}\n", rows(s.by_peer));
  fmt::print("period           {} .. {}\n", s.first_time, s.last_time);
  fmt::print("budget left      {}\n", s.budget_left
                                          ? std::to_string(*s.budget_left)
                                          : std::string("unlimited"));
  if (s.malformed_lines > 0) {
    fmt::print(
        "malformed lines  {} (not audit records; a torn last line after a "
        "crash, or an edited file)\n",
        s.malformed_lines);
  }
  if (!args.audit_state.empty()) {
    if (!ledger) {
      fmt::print(
          "budget ledger    none at {} (a node without budgets keeps "
          "none)\n",
          ledger_file);
    } else if (!s.spent) {
      fmt::print(
          "budget ledger    {} spent ({}); this log predates the "
          "'spent' field and cannot be checked against it\n",
          *ledger, ledger_file);
    } else if (agree) {
      fmt::print("budget ledger    {} spent ({}): agrees with the log\n",
                 *ledger, ledger_file);
    } else {
      fmt::print(stderr,
                 "chorus node audit: the budget ledger {} records {} inputs "
                 "spent but the audit log's last record says {}: the log is "
                 "incomplete or the files are not the same node's\n",
                 ledger_file, *ledger, *s.spent);
      return 1;
    }
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
      "(--config node.toml); 'node train' trains a builtin expert, 'node "
      "adapt' "
      "adapts a pushed tae or dro model with private shots, 'node audit' "
      "summarises "
      "the "
      "audit log");
  add_config_options(node, *args);
  node->add_flag("--print-config", args->print_config,
                 "Print the resolved configuration and exit");
  node->require_subcommand(0, 1);

  auto* train_cmd = node->add_subcommand(
      "train",
      "Train the builtin expert named by expert.path on local data "
      "restricted to expert.labels: train.dataset, a built-in source "
      "(fashion-mnist by default) or \"files\" with train.data read "
      "against the [task] table");
  add_config_options(train_cmd, *args);

  auto* audit_cmd =
      node->add_subcommand("audit", "Summarise a node's audit log");
  audit_cmd->add_option("--log", args->audit_log, "The audit log (JSONL)")
      ->required();
  audit_cmd->add_flag("--json", args->audit_json, "Print JSON");
  audit_cmd->add_option("--state", args->audit_state,
                        "The node's state directory: reconcile the log with "
                        "its budget ledger (budget.json); exit 1 when they "
                        "disagree");
  audit_cmd->add_flag("--verify", args->audit_verify,
                      "Check the log's hash chain and the seals signed with "
                      "the node's key (--cert): print 'intact' or the first "
                      "edited, deleted or reordered line (exit 1)");
  audit_cmd->add_option("--cert", args->audit_cert,
                        "The node's certificate (for --verify)");

  auto* adapt_cmd =
      node->add_subcommand("adapt",
                           "Adapt the tae or dro global model this node holds "
                           "to its task, or to a new one, with private "
                           "labelled shots (tae: PAC-Bayes; dro: SGD steps "
                           "from the initialisation); writes adapted.json "
                           "(and, for dro, the adapted model adapted.pt) to "
                           "the state directory and scores the adapted model "
                           "on local test images");
  add_config_options(adapt_cmd, *args);
  adapt_cmd
      ->add_option(
          "--shots", args->shots,
          "Shot images (IDX or a torch.save tensor); the task is the classes "
          "their labels hold (default: adapt.shots_per_class of the "
          "expert's own labels from the local data of [train])")
      ->check(CLI::ExistingFile);
  adapt_cmd
      ->add_option(
          "--shot-labels", args->shot_labels,
          "Labels of the shots (IDX or a torch.save int tensor): indices into "
          "the global model's label space")
      ->check(CLI::ExistingFile);
  adapt_cmd
      ->add_option(
          "--unlabelled", args->unlabelled,
          "Unlabelled images of the task (IDX or a torch.save tensor), e.g. "
          "the data the node means to classify: tae's features readout "
          "refines its class means over them (a new task's classes; dro "
          "refuses them)")
      ->check(CLI::ExistingFile);
  adapt_cmd
      ->add_option("--eval", args->eval,
                   "Test images; those of the task's classes are scored")
      ->check(CLI::ExistingFile);
  adapt_cmd
      ->add_option("--eval-labels", args->eval_labels,
                   "Labels of --eval (IDX or torch.save)")
      ->check(CLI::ExistingFile);
  adapt_cmd->add_flag("--json", args->adapt_json, "Print JSON");

  return {{train_cmd, [args] { return train(*args); }},
          {adapt_cmd, [args] { return adapt(*args); }},
          {audit_cmd, [args] { return audit(*args); }},
          {node, [args] { return run(*args); }}};
}

}  // namespace chorus::app
