#include "chorus/node/config.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <limits>

#include "chorus/core/error.hpp"
#include "chorus/core/metrics.hpp"
#include "chorus/core/task.hpp"
#include "chorus/fusion/device.hpp"

namespace chorus::node {
namespace {

std::optional<std::int64_t> budget(Config& c, const std::string& key) {
  auto v = c.get_optional_int(key);
  CHORUS_CHECK(!v || *v >= 0,
               "{}: {} must be >= 0 (omit it for no limit), got {}",
               c.path().string(), key, v.value_or(0));
  return v;
}

}  // namespace

NodeConfig read_node_config(Config& c) {
  NodeConfig n;
  n.name = c.get_string("node.name", n.name);
  n.state_dir = c.resolve(c.get_string("node.state_dir", n.state_dir.string()));
  n.threads = static_cast<int>(c.get_int("node.threads", n.threads));
  n.workers = static_cast<int>(c.get_int("node.workers", n.workers));
  CHORUS_CHECK(n.threads >= 1 && n.workers >= 1,
               "node.threads and node.workers must be at least 1");
  n.device = c.get_string("node.device", n.device);
  c10::Device device(c10::kCPU);
  try {
    device = fusion::parse_device(n.device);
  } catch (const Error& e) {
    fail(e.code(), "{}: node.device: {}", c.path().string(), e.what());
  }

  n.host = c.get_string("coordinator.host", n.host);
  const auto port = c.get_int("coordinator.port", n.port);
  CHORUS_CHECK(port > 0 && port < 65536,
               "coordinator.port must be 1..65535, got {}", port);
  n.port = static_cast<std::uint16_t>(port);
  n.server_name = c.get_string("coordinator.server_name", n.server_name);
  n.retry_max_s = c.get_double("coordinator.retry_max_s", n.retry_max_s);
  n.refused_retry_s =
      c.get_double("coordinator.refused_retry_s", n.refused_retry_s);
  CHORUS_CHECK(n.retry_max_s >= 0.2 && n.retry_max_s <= 3600 &&
                   n.refused_retry_s >= 0.2 && n.refused_retry_s <= 86400,
               "coordinator.retry_max_s must be 0.2..3600 and "
               "coordinator.refused_retry_s 0.2..86400 seconds, got {} and {}",
               n.retry_max_s, n.refused_retry_s);
  n.ca = c.resolve(c.get_string("tls.ca", "pki/ca.crt"));
  n.cert =
      c.resolve(c.get_string("tls.cert", fmt::format("pki/{}.crt", n.name)));
  n.key = c.resolve(c.get_string("tls.key", fmt::format("pki/{}.key", n.name)));

  auto& e = n.expert;
  e.kind = parse_expert_kind(c.get_string("expert.kind", "builtin"));
  e.path = c.resolve(c.get_string("expert.path", "expert.pt"));
  e.input_shape = c.get_int_array("expert.input_shape", e.input_shape);
  e.labels = c.get_string_array("expert.labels", e.labels);
  const auto output = c.get_string("expert.output", "logits");
  CHORUS_CHECK(
      output == "logits" || output == "probabilities",
      "expert.output must be \"logits\" or \"probabilities\", got '{}'",
      output);
  e.outputs_logits = output == "logits";
  e.output_key = c.get_string("expert.output_key", e.output_key);
  e.normalize_mean = c.get_double("expert.normalize_mean", e.normalize_mean);
  e.normalize_std = c.get_double("expert.normalize_std", e.normalize_std);
  e.share_weights = c.get_bool("expert.share_weights", e.share_weights);
  e.device = device;

  auto& p = n.policy;
  p.budget.max_batch = c.get_int("policy.max_batch", p.budget.max_batch);
  p.budget.total_budget = budget(c, "policy.total_budget");
  p.budget.round_budget = budget(c, "policy.round_budget");
  p.rate_limit = c.get_double("policy.rate_limit", p.rate_limit);
  p.output_form =
      parse_output_form(c.get_string("policy.output_form", "probabilities"));
  p.top_k = c.get_int("policy.top_k", p.top_k);
  p.temperature = c.get_double("policy.temperature", p.temperature);
  p.noise_std = c.get_double("policy.noise_std", p.noise_std);
  p.noise_seed = static_cast<std::uint64_t>(c.get_int("policy.noise_seed", 0));
  if (c.has("policy.privacy.epsilon")) {
    PrivacyBudget privacy;
    privacy.epsilon = c.get_double("policy.privacy.epsilon", 0);
    privacy.delta = c.get_double("policy.privacy.delta", privacy.delta);
    privacy.sigma = c.get_double("policy.privacy.sigma", privacy.sigma);
    p.budget.privacy = privacy;
  } else {
    CHORUS_CHECK(
        !c.has("policy.privacy.delta") && !c.has("policy.privacy.sigma"),
        "[policy.privacy] needs epsilon (the budget) besides delta "
        "and sigma");
  }
  p.validate();

  n.audit_log = c.resolve(c.get_string("audit.log", ""));
  if (n.audit_log.empty()) n.audit_log = n.state_dir / "audit.jsonl";
  n.audit_seal_every = c.get_int("audit.seal_every", n.audit_seal_every);
  n.metrics_listen = c.get_string("metrics.listen", "");
  if (!n.metrics_listen.empty()) {
    metrics::check_address(n.metrics_listen, "metrics.listen");
  }
  CHORUS_CHECK(n.audit_seal_every >= 1 && n.audit_seal_every <= 1000000,
               "audit.seal_every must be 1..1000000 lines, got {}",
               n.audit_seal_every);

  n.adapt_shots_per_class = c.get_int("adapt.shots_per_class", 0);
  CHORUS_CHECK(n.adapt_shots_per_class >= 0,
               "adapt.shots_per_class must be >= 0");
  n.adapt_seed = static_cast<std::uint64_t>(c.get_int("adapt.seed", 0));
  auto& t = n.train;
  t.arch(c.get_string("train.arch", t.arch()));
  t.epochs(c.get_int("train.epochs", t.epochs()));
  t.batch_size(c.get_int("train.batch_size", t.batch_size()));
  t.lr(c.get_double("train.lr", t.lr()));
  t.seed(static_cast<std::uint64_t>(c.get_int("train.seed", 0)));
  t.holdout(c.get_double("train.holdout", t.holdout()));
  t.shard(c.get_int("train.shard", t.shard()));
  t.shards(c.get_int("train.shards", t.shards()));
  t.teachers(c.get_int("train.teachers", t.teachers()));
  CHORUS_CHECK(t.teachers() >= 1 && t.teachers() <= 10000,
               "{}: train.teachers must be in 1..10000, got {}",
               c.path().string(), t.teachers());
  LocalDataOptions source;
  source.dataset(c.get_string("train.dataset", source.dataset()));
  CHORUS_CHECK(source.dataset() == "files" ||
                   fusion::is_builtin_source(source.dataset()),
               "{}: train.dataset '{}' is neither \"files\" nor a built-in "
               "data set ({})",
               c.path().string(), source.dataset(),
               fmt::join(fusion::builtin_sources(), ", "));
  source.data_dir(c.resolve(c.get_string("train.data_dir", "")));
  fusion::DataRef data;
  if (auto p = c.get_optional_string("train.data")) data.path = c.resolve(*p);
  if (auto p = c.get_optional_string("train.label_file"))
    data.labels = c.resolve(*p);
  data.label_column = c.get_string("train.label_column", data.label_column);
  CHORUS_CHECK(
      data.path.empty() || source.dataset() == "files",
      "{}: train.data reads files; set train.dataset = \"files\" to use it",
      c.path().string());
  source.data(data);
  // The local data's task: the [task] table (or task.file), as the
  // federation's coordinator declares it.
  if (has_task(c)) {
    TaskSpec fallback;
    fallback.name = "task";
    if (source.dataset() != "files")
      fallback = fusion::builtin_task(source.dataset());
    source.task(read_task(c, fallback));
  }
  // [train.privacy]: DP-SGD, to a budget or with a given noise multiplier.
  if (c.has("train.privacy.epsilon") ||
      c.has("train.privacy.noise_multiplier")) {
    fusion::DpSgdOptions dp;
    dp.epsilon(c.get_double("train.privacy.epsilon", 0));
    dp.noise_multiplier(c.get_double("train.privacy.noise_multiplier", 0));
    dp.delta(c.get_double("train.privacy.delta", dp.delta()));
    dp.max_grad_norm(
        c.get_double("train.privacy.max_grad_norm", dp.max_grad_norm()));
    CHORUS_CHECK((dp.epsilon() > 0) != (dp.noise_multiplier() > 0),
                 "{}: [train.privacy] needs exactly one of epsilon (a budget "
                 "the noise is chosen for) and noise_multiplier (a given "
                 "noise, whose epsilon is then computed), each > 0",
                 c.path().string());
    CHORUS_CHECK(dp.delta() > 0 && dp.delta() < 1 && dp.max_grad_norm() > 0,
                 "{}: train.privacy.delta must be in (0, 1) and "
                 "max_grad_norm > 0, got {} and {}",
                 c.path().string(), dp.delta(), dp.max_grad_norm());
    t.privacy(dp);
  } else {
    CHORUS_CHECK(
        !c.has("train.privacy.delta") && !c.has("train.privacy.max_grad_norm"),
        "{}: [train.privacy] needs epsilon or noise_multiplier "
        "besides delta and max_grad_norm",
        c.path().string());
  }
  t.source(source);
  t.threads(n.threads);
  t.device(device);
  CHORUS_CHECK(t.epochs() >= 1 && t.batch_size() >= 1,
               "train.epochs and train.batch_size must be at least 1");
  c.finish();
  return n;
}

std::string to_toml(const NodeConfig& n) {
  std::string train_files;
  const auto& data = n.train.source().data();
  if (!data.path.empty()) {
    train_files += fmt::format("data = {}\n", toml_quoted(data.path.string()));
    if (!data.labels.empty()) {
      train_files +=
          fmt::format("label_file = {}\n", toml_quoted(data.labels.string()));
    }
    train_files +=
        fmt::format("label_column = {}\n", toml_quoted(data.label_column));
  }
  std::vector<std::string> labels;
  for (const auto& l : n.expert.labels) labels.push_back(toml_quoted(l));
  auto opt = [](const std::optional<std::int64_t>& v, const char* key) {
    return v ? fmt::format("{} = {}\n", key, *v)
             : fmt::format("# {} = (unlimited)\n", key);
  };
  return fmt::format(
      "[node]\nname = {}\nstate_dir = {}\nthreads = {}\nworkers = {}\n"
      "device = {}\n\n"
      "[coordinator]\nhost = {}\nport = {}\n{}retry_max_s = {}\n"
      "refused_retry_s = {}\n\n"
      "[tls]\nca = {}\ncert = {}\nkey = {}\n\n"
      "[expert]\nkind = \"{}\"\npath = {}\ninput_shape = [{}]\nlabels = [{}]\n"
      "output = \"{}\"\noutput_key = {}\nnormalize_mean = {}\nnormalize_std = "
      "{}\nshare_weights = {}\n\n"
      "[policy]\nmax_batch = {}\n{}{}rate_limit = {}\noutput_form = \"{}\"\n"
      "top_k = {}\ntemperature = {}\nnoise_std = {}\nnoise_seed = {}\n\n"
      "[policy.privacy]\n{}\n"
      "[audit]\nlog = {}\nseal_every = {}\n\n[metrics]\nlisten = {}\n\n"
      "[adapt]\nshots_per_class = "
      "{}\nseed = {}\n\n"
      "[train]\narch = {}\nepochs = {}\nbatch_size = {}\nlr = {}\nseed = {}\n"
      "holdout = {}\nshard = {}\nshards = {}\nteachers = {}\ndataset = {}\n"
      "data_dir = "
      "{}\n{}\n[train.privacy]\n{}{}",
      toml_quoted(n.name), toml_quoted(n.state_dir.string()), n.threads,
      n.workers, toml_quoted(n.device), toml_quoted(n.host), n.port,
      n.server_name.empty()
          ? std::string("# server_name = (the host)\n")
          : fmt::format("server_name = {}\n", toml_quoted(n.server_name)),
      n.retry_max_s, n.refused_retry_s, toml_quoted(n.ca.string()),
      toml_quoted(n.cert.string()), toml_quoted(n.key.string()),
      expert_kind_name(n.expert.kind), toml_quoted(n.expert.path.string()),
      fmt::join(n.expert.input_shape, ", "), fmt::join(labels, ", "),
      n.expert.outputs_logits ? "logits" : "probabilities",
      toml_quoted(n.expert.output_key), n.expert.normalize_mean,
      n.expert.normalize_std, n.expert.share_weights, n.policy.budget.max_batch,
      opt(n.policy.budget.total_budget, "total_budget"),
      opt(n.policy.budget.round_budget, "round_budget"), n.policy.rate_limit,
      output_form_name(n.policy.output_form), n.policy.top_k,
      n.policy.temperature, n.policy.noise_std, n.policy.noise_seed,
      n.policy.budget.privacy
          ? fmt::format("epsilon = {}\ndelta = {}\nsigma = {}\n",
                        n.policy.budget.privacy->epsilon,
                        n.policy.budget.privacy->delta,
                        n.policy.budget.privacy->sigma)
          : std::string("# epsilon = (none: no formal guarantee)\n"
                        "# delta = 1e-05\n# sigma = (the noise's std, in "
                        "votes)\n"),
      toml_quoted(n.audit_log.string()), n.audit_seal_every,
      toml_quoted(n.metrics_listen), n.adapt_shots_per_class, n.adapt_seed,
      toml_quoted(n.train.arch()), n.train.epochs(), n.train.batch_size(),
      n.train.lr(), n.train.seed(), n.train.holdout(), n.train.shard(),
      n.train.shards(), n.train.teachers(),
      toml_quoted(n.train.source().dataset()),
      toml_quoted(n.train.source().data_dir().string()), train_files,
      n.train.privacy()
          ? fmt::format("epsilon = {}\nnoise_multiplier = {}\ndelta = {}\n"
                        "max_grad_norm = {}\n",
                        n.train.privacy()->epsilon(),
                        n.train.privacy()->noise_multiplier(),
                        n.train.privacy()->delta(),
                        n.train.privacy()->max_grad_norm())
          : std::string("# epsilon = (none: trained without DP-SGD)\n"
                        "# noise_multiplier = (chosen for epsilon)\n"
                        "# delta = 1e-05\n# max_grad_norm = 1\n"),
      n.train.source().task() ? "\n" + to_toml(*n.train.source().task()) : "");
}

}  // namespace chorus::node
