#include "chorus/coordinator/run.hpp"

#include <fmt/ranges.h>
#include <torch/torch.h>

#include <asio/io_context.hpp>
#include <asio/signal_set.hpp>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <stop_token>

#include "chorus/coordinator/coordinator.hpp"
#include "chorus/coordinator/registry.hpp"
#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/log.hpp"
#include "chorus/core/metrics.hpp"
#include "chorus/core/progress.hpp"
#include "chorus/core/version.hpp"
#include "chorus/fusion/algorithms.hpp"
#include "chorus/fusion/data_files.hpp"
#include "chorus/fusion/datasets.hpp"
#include "chorus/fusion/device.hpp"
#include "chorus/fusion/models.hpp"
#include "chorus/fusion/partition.hpp"
#include "chorus/fusion/tae.hpp"
#include "chorus/fusion/train.hpp"
#include "chorus/protocol/certs.hpp"
#include "chorus/protocol/metrics_server.hpp"
#include "chorus/protocol/shutdown.hpp"
#include "run_log.hpp"

namespace chorus::coordinator {

CoordinatorConfig read_coordinator_config(Config& c) {
  CoordinatorConfig k;
  k.name = c.get_string("coordinator.name", k.name);
  k.listen = c.get_string_list("coordinator.listen", k.listen);
  CHORUS_CHECK(!k.listen.empty(),
               "coordinator.listen must name at least one address");
  const auto port = c.get_int("coordinator.port", k.port);
  CHORUS_CHECK(port >= 0 && port < 65536,
               "coordinator.port must be 0..65535, got {}", port);
  k.port = static_cast<std::uint16_t>(port);
  k.roster = c.get_string_array("coordinator.roster", {});
  CHORUS_CHECK(
      !k.roster.empty(),
      "coordinator.roster must list the node identities (certificate CNs) "
      "to admit");
  k.min_nodes = c.get_int("coordinator.min_nodes", 0);
  k.quorum_timeout_s =
      c.get_double("coordinator.quorum_timeout_s", k.quorum_timeout_s);
  k.settle_s = c.get_double("coordinator.settle_s", k.settle_s);
  k.request_deadline_s =
      c.get_double("coordinator.request_deadline_s", k.request_deadline_s);
  k.query_batch = c.get_int("coordinator.query_batch", k.query_batch);
  k.max_inflight_mb =
      c.get_int("coordinator.max_inflight_mb", k.max_inflight_mb);
  k.rounds = c.get_int("coordinator.rounds", k.rounds);
  k.run_dir =
      c.resolve(c.get_string("coordinator.run_dir", k.run_dir.string()));
  k.operators = c.get_string_array("coordinator.operators", {});
  k.serve = c.get_bool("coordinator.serve", k.serve);
  k.max_unauthenticated =
      c.get_int("coordinator.max_unauthenticated", k.max_unauthenticated);
  k.max_operator_sessions =
      c.get_int("coordinator.max_operator_sessions", k.max_operator_sessions);
  k.metrics_listen = c.get_string("metrics.listen", "");
  if (!k.metrics_listen.empty()) {
    metrics::check_address(k.metrics_listen, "metrics.listen");
  }
  k.ca = c.resolve(c.get_string("tls.ca", "pki/ca.crt"));
  k.cert = c.resolve(c.get_string("tls.cert", "pki/coordinator.crt"));
  k.key = c.resolve(c.get_string("tls.key", "pki/coordinator.key"));
  if (auto crl = c.get_optional_string("tls.crl"); crl && !crl->empty()) {
    k.crl = c.resolve(*crl);
  }
  k.algorithm = c.get_string("fusion.algorithm", k.algorithm);
  k.seed = c.get_int("fusion.seed", k.seed);
  k.threads = c.get_int("fusion.threads", k.threads);
  k.device = c.get_string("fusion.device", k.device);
  k.robust = c.get_bool("fusion.robust", k.robust);
  k.robust_fraction = c.get_double("fusion.robust_fraction", k.robust_fraction);
  CHORUS_CHECK(k.robust_fraction >= 0 && k.robust_fraction <= 1,
               "{}: fusion.robust_fraction must be in [0, 1], got {}",
               c.path().string(), k.robust_fraction);
  k.student = c.get_string("fusion.student", k.student);
  k.algorithms = read_algorithm_settings(c);
  for (const auto& [name, cost] : k.algorithms.frugal.costs) {
    CHORUS_CHECK(
        std::find(k.roster.begin(), k.roster.end(), name) != k.roster.end(),
        "{}: fusion.frugal.costs names '{}', which is not on "
        "coordinator.roster ({})",
        c.path().string(), name, fmt::join(k.roster, ", "));
  }
  k.dataset = c.get_string("data.dataset", k.dataset);
  const bool files = k.dataset == "files";
  CHORUS_CHECK(
      files || fusion::is_builtin_source(k.dataset),
      "data.dataset '{}' is neither \"files\" nor a built-in data set ({})",
      k.dataset, fmt::join(fusion::builtin_sources(), ", "));
  k.data_dir = c.resolve(c.get_string("data.data_dir", ""));
  k.transfer_size =
      c.get_int("data.transfer_size", files ? 0 : k.transfer_size);
  k.fusion_labels = c.get_int("data.fusion_labels", k.fusion_labels);
  k.pool_seed = c.get_int("data.pool_seed", k.pool_seed);
  const auto label_column = c.get_string("data.label_column", "label");
  auto data_ref = [&](const std::string& key) {
    fusion::DataRef r;
    r.label_column = label_column;
    if (auto p = c.get_optional_string("data." + key)) r.path = c.resolve(*p);
    if (auto p = c.get_optional_string("data." + key + "_label_file"))
      r.labels = c.resolve(*p);
    CHORUS_CHECK(r.labels.empty() || !r.path.empty(),
                 "{}: data.{}_label_file needs data.{}", c.path().string(), key,
                 key);
    CHORUS_CHECK(files || r.path.empty(),
                 "{}: data.{} reads files; set data.dataset = \"files\" to use "
                 "it (data.dataset "
                 "is '{}')",
                 c.path().string(), key, k.dataset);
    return r;
  };
  k.transfer = data_ref("transfer");
  k.fusion = data_ref("fusion");
  k.test = data_ref("test");
  CHORUS_CHECK(
      !files || !k.transfer.path.empty(),
      "{}: data.dataset = \"files\" needs data.transfer (the transfer pool U)",
      c.path().string());
  k.evaluate = c.get_bool("data.evaluate", k.evaluate);
  // A built-in source brings its task; files need the [task] table.
  TaskSpec fallback;
  fallback.name = "task";
  if (!files) fallback = fusion::builtin_task(k.dataset);
  k.task = read_task(c, fallback);
  c.finish();
  // An unknown algorithm is a config error, not a failure after listening.
  {
    const auto& names = fusion::algorithm_names();
    CHORUS_CHECK(
        std::find(names.begin(), names.end(), k.algorithm) != names.end(),
        "{}: fusion.algorithm '{}' is not one of: {}", c.path().string(),
        k.algorithm, fmt::join(names, ", "));
  }
  try {
    (void)fusion::parse_device(k.device);
  } catch (const Error& e) {
    fail(e.code(), "{}: fusion.device: {}", c.path().string(), e.what());
  }
  // Names an architecture that cannot take the task's inputs here, not
  // mid-round.
  try {
    (void)fusion::resolve_architecture(k.student, k.task.input_shape);
  } catch (const Error& e) {
    fail(e.code(), "{}: fusion.student: {}", c.path().string(), e.what());
  }
  CHORUS_CHECK(
      k.min_nodes >= 0 &&
          k.min_nodes <= static_cast<std::int64_t>(k.roster.size()),
      "coordinator.min_nodes must be 0..{} (the roster's size), got {}",
      k.roster.size(), k.min_nodes);
  for (const auto& o : k.operators) {
    CHORUS_CHECK(
        std::find(k.roster.begin(), k.roster.end(), o) == k.roster.end(),
        "'{}' is both on coordinator.roster and in coordinator.operators; an "
        "operator needs a certificate of its own",
        o);
  }
  CHORUS_CHECK(
      !k.serve || !k.operators.empty(),
      "coordinator.serve needs coordinator.operators (the identities that may "
      "ask for fused predictions)");
  CHORUS_CHECK(
      k.rounds >= 1 && k.query_batch >= 1 && k.threads >= 1 &&
          k.max_inflight_mb >= 1,
      "coordinator.rounds, coordinator.query_batch, "
      "coordinator.max_inflight_mb and fusion.threads must be at least 1");
  CHORUS_CHECK(
      k.quorum_timeout_s > 0 && k.request_deadline_s > 0 && k.settle_s >= 0,
      "timeouts must be positive");
  CHORUS_CHECK(k.max_unauthenticated >= 1,
               "coordinator.max_unauthenticated must be at least 1, got {}",
               k.max_unauthenticated);
  CHORUS_CHECK(k.max_operator_sessions >= 1,
               "coordinator.max_operator_sessions must be at least 1, got {}",
               k.max_operator_sessions);
  return k;
}

fusion::AlgorithmOptions algorithm_options(const CoordinatorConfig& k) {
  auto o = fusion::AlgorithmOptions()
               .seed(static_cast<std::uint64_t>(k.seed))
               .threads(static_cast<int>(k.threads))
               .device(fusion::parse_device(k.device))
               .robust(k.robust)
               .robust_fraction(k.robust_fraction);
  o.distill().arch(k.student);
  o.dro().imitator().arch(k.student);
  apply_algorithm_settings(k.algorithms, o);
  return o;
}

std::string to_toml(const CoordinatorConfig& k) {
  auto list = [](const std::vector<std::string>& v) {
    std::vector<std::string> q;
    for (const auto& s : v) q.push_back(toml_quoted(s));
    return fmt::format("[{}]", fmt::join(q, ", "));
  };
  std::string settings;
  for (const auto& table : settings_tables())
    settings += settings_toml(k.algorithms, table) + "\n";
  std::string data_files;
  for (const auto& [key, ref] :
       {std::pair{"transfer", &k.transfer}, std::pair{"fusion", &k.fusion},
        std::pair{"test", &k.test}}) {
    if (!ref->path.empty())
      data_files +=
          fmt::format("{} = {}\n", key, toml_quoted(ref->path.string()));
    if (!ref->labels.empty()) {
      data_files += fmt::format("{}_label_file = {}\n", key,
                                toml_quoted(ref->labels.string()));
    }
  }
  if (k.dataset == "files")
    data_files += fmt::format("label_column = {}\n",
                              toml_quoted(k.transfer.label_column));
  return fmt::format(
      "[coordinator]\nname = {}\nlisten = {}\nport = {}\nroster = "
      "{}\nmin_nodes = {}\n"
      "quorum_timeout_s = {}\nsettle_s = {}\nrequest_deadline_s = "
      "{}\nquery_batch = {}\nmax_inflight_mb = {}\n"
      "rounds = {}\nrun_dir = {}\noperators = {}\nserve = {}\n"
      "max_unauthenticated = {}\nmax_operator_sessions = {}\n\n"
      "[tls]\nca = {}\ncert = {}\nkey = {}\n{}\n"
      "[metrics]\nlisten = {}\n\n"
      "[fusion]\nalgorithm = {}\nseed = {}\nthreads = {}\ndevice = {}\n"
      "student = {}\nrobust = {}\nrobust_fraction = {}\n\n"
      "{}"
      "[data]\ndataset = {}\ndata_dir = {}\ntransfer_size = {}\nfusion_labels "
      "= {}\n"
      "pool_seed = {}\nevaluate = {}\n{}\n{}",
      toml_quoted(k.name), list(k.listen), k.port, list(k.roster), k.min_nodes,
      k.quorum_timeout_s, k.settle_s, k.request_deadline_s, k.query_batch,
      k.max_inflight_mb, k.rounds, toml_quoted(k.run_dir.string()),
      list(k.operators), k.serve, k.max_unauthenticated,
      k.max_operator_sessions, toml_quoted(k.ca.string()),
      toml_quoted(k.cert.string()), toml_quoted(k.key.string()),
      k.crl.empty() ? std::string("# crl = (none: no revocation list)\n")
                    : fmt::format("crl = {}\n", toml_quoted(k.crl.string())),
      toml_quoted(k.metrics_listen), toml_quoted(k.algorithm), k.seed,
      k.threads, toml_quoted(k.device), toml_quoted(k.student), k.robust,
      k.robust_fraction, settings, toml_quoted(k.dataset),
      toml_quoted(k.data_dir.string()), k.transfer_size, k.fusion_labels,
      k.pool_seed, k.evaluate, data_files, to_toml(k.task));
}

namespace {

// How long Ctrl-C may take: cancelling the round, then closing connections.
constexpr std::chrono::milliseconds kShutdownGrace{3000};

nlohmann::json round_json(const RoundReport& r) {
  return {{"round", r.round},
          {"resumed", r.resumed},
          {"experts", r.experts},
          {"left_out", r.failed},
          {"inputs_queried", r.inputs_queried},
          {"bytes_sent", r.bytes_sent},
          {"bytes_received", r.bytes_received},
          {"per_node", per_node_json(r)},
          {"pool_size", r.pool_size},
          {"fused_model", r.fused_model.string()},
          {"pushed_to", r.pushed_to},
          {"seconds", r.seconds},
          {"phases", phases_json(r)}};
}

// The public data of a run: the task as announced (normalisation statistics
// computed from U when the config leaves them out), the pool (U as models see
// it; V's rows and labels) and the test set (raw; empty when there is none).
struct PublicData {
  TaskSpec task;
  PoolData pool;
  fusion::Examples test;
};

PublicData load_public_data(const CoordinatorConfig& k) {
  PublicData out;
  out.task = k.task;
  auto& task = out.task;
  torch::Tensor raw_u, raw_v, labels_v;
  if (k.dataset != "files") {
    auto data = fusion::load_builtin(
        k.dataset,
        path_or_env(k.data_dir, fusion::data_dir_variable(k.dataset)));
    const auto c = task.labels.size();
    CHORUS_CHECK(
        k.transfer_size >= 1 && k.transfer_size < data.train.size(),
        "data.transfer_size must be 1..{} for '{}' (its training split has {} "
        "examples), got {}",
        data.train.size() - 1, k.dataset, data.train.size(), k.transfer_size);
    auto split = fusion::p1_split(
        data.train.labels, fusion::P1Options()
                               .num_classes(c)
                               .classes_per_expert(std::min<std::int64_t>(4, c))
                               .experts(1)
                               .transfer_size(k.transfer_size)
                               .fusion_labels(k.fusion_labels)
                               .seed(static_cast<std::uint64_t>(k.pool_seed)));
    raw_u = data.train.inputs.index_select(0, split.transfer);
    labels_v = data.train.labels.index_select(0, split.fusion);
    out.test = std::move(data.test);
  } else {
    auto u = fusion::read_examples(k.transfer, task, /*need_labels=*/false);
    raw_u = u.inputs;
    if (k.transfer_size > 0 && raw_u.size(0) > k.transfer_size) {
      raw_u = raw_u.slice(0, 0, k.transfer_size);
    }
    if (!k.fusion.path.empty()) {
      // V: its own labelled rows, placed first in U (as P1 places them).
      auto v = fusion::read_examples(k.fusion, task, /*need_labels=*/true);
      raw_u = torch::cat({v.inputs, raw_u});
      labels_v = v.labels;
    }
    if (!k.test.path.empty())
      out.test = fusion::read_examples(k.test, task, true);
  }
  fusion::fit_normalisation(task, raw_u);
  task.validate();
  out.pool.inputs = fusion::to_model_inputs(raw_u, task);
  out.pool.fusion_index = labels_v.defined()
                              ? torch::arange(labels_v.size(0), torch::kLong)
                              : torch::empty({0}, torch::kLong);
  out.pool.fusion_labels =
      labels_v.defined() ? labels_v : torch::empty({0}, torch::kLong);
  return out;
}

// The run directory must be a directory the coordinator can write to:
// checked before any data is loaded or port listened on, so that a path
// under a regular file or on a read-only mount is one clear error.
void check_run_dir(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  CHORUS_CHECK_CODE(!ec, Code::kFailedPrecondition,
                    "coordinator.run_dir '{}' cannot be created: {}",
                    dir.string(), ec.message());
  const auto probe = dir / ".chorus-write-test";
  try {
    write_file_atomic(probe, "ok\n");
  } catch (const Error& e) {
    fail(Code::kFailedPrecondition,
         "coordinator.run_dir '{}' is not writable: {}", dir.string(),
         e.what());
  }
  std::filesystem::remove(probe, ec);
}

// The keys whose values differ between two configurations rendered by
// to_toml ("section.key", in key order): what a reload could not apply.
std::vector<std::string> changed_keys(const std::string& before,
                                      const std::string& after) {
  auto parse = [](const std::string& toml) {
    std::map<std::string, std::string> out;
    std::string section, line;
    std::istringstream in(toml);
    while (std::getline(in, line)) {
      if (line.empty() || line[0] == '#') continue;
      if (line[0] == '[') {
        section = line.substr(1, line.find(']') - 1);
      } else if (const auto eq = line.find(" = "); eq != std::string::npos) {
        out[section + "." + line.substr(0, eq)] = line.substr(eq + 3);
      }
    }
    return out;
  };
  const auto a = parse(before), b = parse(after);
  std::set<std::string> keys;
  for (const auto& [key, value] : b) {
    if (auto it = a.find(key); it == a.end() || it->second != value)
      keys.insert(key);
  }
  for (const auto& [key, value] : a) {
    if (!b.count(key)) keys.insert(key);
  }
  return {keys.begin(), keys.end()};
}

// SIGHUP's work: reads the configuration again and hands the registry the
// new roster, operators and TLS files. A configuration that cannot be read
// or used changes nothing and is said; changes to other keys wait for a
// restart, and that is said too.
void reload_membership(NodeRegistry& registry, const CoordinatorConfig& k,
                       const ConfigReader& reread, spdlog::logger& log) {
  if (!reread) {
    log.warn("event=reload_skipped reason=\"no configuration file to read\"");
    return;
  }
  try {
    auto fresh = reread();
    auto others = fresh;
    others.roster = k.roster;
    others.operators = k.operators;
    others.ca = k.ca;
    others.cert = k.cert;
    others.key = k.key;
    others.crl = k.crl;
    const auto unapplied = changed_keys(to_toml(k), to_toml(others));
    const auto tls =
        protocol::TlsMaterial::load(fresh.ca, fresh.cert, fresh.key, fresh.crl);
    const auto summary =
        registry.reload(Roster(fresh.roster), fresh.operators, tls);
    auto list = [](const std::vector<std::string>& v) {
      return v.empty() ? std::string("none")
                       : fmt::format("{}", fmt::join(v, ", "));
    };
    log.info(
        "event=reloaded roster=[{}] nodes_added=[{}] nodes_removed=[{}] "
        "operators=[{}] crl_revoked={} dropped=[{}]",
        fmt::join(fresh.roster, ", "), fmt::join(summary.nodes_added, ", "),
        fmt::join(summary.nodes_removed, ", "),
        fmt::join(fresh.operators, ", "), summary.revoked_serials,
        fmt::join(summary.dropped, "; "));
    progress::println(
        "reloaded (SIGHUP): roster {} (added {}, removed {}); operators "
        "{}; {} certificate(s) revoked by the CRL; connections "
        "dropped: {}\n",
        list(fresh.roster), list(summary.nodes_added),
        list(summary.nodes_removed), list(fresh.operators),
        summary.revoked_serials, list(summary.dropped));
    if (!summary.revoked_members.empty()) {
      // min_nodes = 0 counts the whole roster: a member that cannot rejoin
      // would hold every round until quorum_timeout.
      log.warn(
          "event=roster_revoked nodes=[{}] reason=\"on coordinator.roster, "
          "certificate revoked: it rejoins only with a new certificate; if "
          "it is not coming back, take it off coordinator.roster or rounds "
          "that need the whole roster wait for it\"",
          fmt::join(summary.revoked_members, ", "));
      progress::println(
          "warning: {} on the roster, certificate revoked: it rejoins only "
          "with a new certificate (chorus certs sign --renew); if it is not "
          "coming back, take it off coordinator.roster, or rounds that need "
          "the whole roster (min_nodes = 0) wait for it until "
          "quorum_timeout_s\n",
          list(summary.revoked_members));
    }
    if (!unapplied.empty()) {
      log.warn(
          "event=reload_partial keys=[{}] reason=\"only coordinator.roster, "
          "coordinator.operators and [tls] are reloaded; the other keys "
          "changed take effect at the next start\"",
          fmt::join(unapplied, ", "));
      progress::println(
          "reload (SIGHUP): not applied until the next start: {} (only "
          "coordinator.roster, coordinator.operators and [tls] are "
          "reloaded)\n",
          list(unapplied));
    }
  } catch (const Error& e) {
    log.error(
        "event=reload_failed error=\"{}\" kept=\"the roster, operators "
        "and TLS material in use\"",
        e.what());
    progress::println("reload (SIGHUP) failed, nothing changed: {}\n",
                      describe(e));
  }
}

}  // namespace

int run_coordinator(const CoordinatorConfig& k, bool resume,
                    ConfigReader reread) {
  auto log = log::get("coordinator");
  check_run_dir(k.run_dir);
  fusion::ThreadGuard threads(static_cast<int>(k.threads));
  auto [task, pool, test] = load_public_data(k);
  if (task.normalisation != Normalisation::kNone) {
    log->info("event=normalisation kind={} mean=[{}] std=[{}]",
              normalisation_name(task.normalisation),
              fmt::join(task.mean, ", "), fmt::join(task.std, ", "));
  }
  fmt::print(
      stderr,
      "task '{}': {} labels, inputs {}, normalise {}; transfer pool {} inputs, "
      "{} labelled{}\n",
      task.name, task.labels.size(), task.describe_input(),
      normalisation_name(task.normalisation), pool.inputs.size(0),
      pool.fusion_index.numel(),
      test.size() ? fmt::format(", test set {}", test.size()) : std::string());

  asio::io_context io;
  RegistryOptions ro;
  ro.listen_hosts = k.listen;
  ro.port = k.port;
  ro.name = k.name;
  const auto cert =
      protocol::check_own_certificate(k.cert, "the coordinator's");
  if (cert.days_left < 14) {
    log->warn(
        "event=certificate_expiring file={} days_left={} not_after=\"{}\"",
        k.cert.string(), cert.days_left, cert.not_after);
  }
  ro.tls = protocol::TlsMaterial::load(k.ca, k.cert, k.key, k.crl);
  ro.task = task;
  ro.operators = k.operators;
  ro.max_operator_sessions = static_cast<std::size_t>(k.max_operator_sessions);
  // Every request sent to a node, sealed with the coordinator's key: the
  // other half of each node's audit log (`chorus audit reconcile`).
  ro.request_log = k.run_dir / "requests.jsonl";
  ro.request_log_signer = protocol::AuditSigner{
      .name = k.name, .key_pem = ro.tls.key_pem, .seal_every = 100};
  ro.channel.max_unauthenticated =
      static_cast<std::size_t>(k.max_unauthenticated);
  NodeRegistry registry(io, Roster(k.roster), ro);
  registry.start();
  // Ctrl-C (or SIGTERM) cancels the round in progress: no further request
  // is sent, the answers in flight are awaited and checkpointed, training
  // stops at its next batch, and `run` throws CANCELLED; then every node
  // gets Goodbye. Should that not finish within the grace period, or a
  // second signal arrive, the process ends by the signal.
  std::stop_source stop;
  std::mutex serving_mutex;
  std::condition_variable serving_done;
  bool stop_serving = false;
  protocol::ShutdownOnSignal shutdown(
      io,
      [&](int) {
        stop.request_stop();
        std::lock_guard lock(serving_mutex);
        stop_serving = true;
        serving_done.notify_all();
      },
      [&] {
        log->error("event=shutdown_forced grace_ms={}", kShutdownGrace.count());
        protocol::ShutdownOnSignal::end_by_signal();
      },
      kShutdownGrace);
  // SIGHUP: the roster, the operators and the TLS files (a new CRL, a
  // renewed certificate) again, without a restart.
  asio::signal_set hangup(io, SIGHUP);
  std::function<void()> on_hangup = [&] {
    hangup.async_wait([&](std::error_code ec, int) {
      if (ec) return;
      reload_membership(registry, k, reread, *log);
      on_hangup();
    });
  };
  on_hangup();
  protocol::IoThread io_thread(io);
  std::vector<std::string> addresses;
  for (const auto& host : k.listen) {
    addresses.push_back(host.find(':') != std::string::npos
                            ? fmt::format("[{}]:{}", host, registry.port())
                            : fmt::format("{}:{}", host, registry.port()));
  }
  progress::println("coordinator '{}' listening on {}; roster: {}\n", k.name,
                    fmt::join(addresses, ", "), fmt::join(k.roster, ", "));
  std::optional<protocol::MetricsServer> metrics_server;
  if (!k.metrics_listen.empty()) {
    metrics_server.emplace(k.metrics_listen, "metrics.listen");
    log->info("event=metrics_serving url=http://{}/metrics port={}",
              k.metrics_listen, metrics_server->port());
  }

  CoordinatorOptions co;
  co.task = task;
  co.algorithm = k.algorithm;
  co.algorithm_options = algorithm_options(k);
  co.rounds = static_cast<int>(k.rounds);
  // 0 stays 0: the whole roster as it stands at each round (SIGHUP moves
  // it).
  co.min_nodes = static_cast<std::size_t>(k.min_nodes);
  co.quorum_timeout = std::chrono::milliseconds(
      static_cast<std::int64_t>(k.quorum_timeout_s * 1000));
  co.settle =
      std::chrono::milliseconds(static_cast<std::int64_t>(k.settle_s * 1000));
  co.request_deadline = std::chrono::milliseconds(
      static_cast<std::int64_t>(k.request_deadline_s * 1000));
  co.query_batch = k.query_batch;
  co.max_inflight_bytes = k.max_inflight_mb << 20;
  co.run_dir = k.run_dir;
  co.resume = resume;
  co.stop = stop.get_token();
  co.status = std::make_shared<StatusBoard>(
      k.name, k.algorithm, static_cast<std::uint32_t>(k.rounds));
  registry.serve_status(co.status);
  co.on_round = [](const RoundReport& r) {
    if (r.resumed) {
      progress::println("round {}/{}: complete in a checkpoint, not repeated\n",
                        r.round, r.rounds);
      return;
    }
    fmt::print(
        stderr,
        "round {}/{}: {} nodes answered, {}, {} inputs queried, {:.1f} s "
        "({})\n",
        r.round, r.rounds, r.experts.size(), describe_left_out(r),
        r.inputs_queried, r.seconds, describe_phases(r));
  };
  int status = 0;
  try {
    std::filesystem::create_directories(k.run_dir);
    // The task as announced (with the statistics computed from U).
    auto resolved = k;
    resolved.task = task;
    write_file_atomic(
        k.run_dir / "config.toml",
        fmt::format(
            "# chorus coordinator, resolved configuration (chorus {})\n{}",
            kVersion, to_toml(resolved)));
    Coordinator coordinator(registry, pool, co);
    const auto t0 = std::chrono::steady_clock::now();
    auto reports = coordinator.run();
    auto& fuser = coordinator.fuser();
    nlohmann::json report{{"chorus", kVersion},
                          {"algorithm", k.algorithm},
                          {"rounds", nlohmann::json::array()},
                          {"test_accuracy", nullptr}};
    for (const auto& r : reports) report["rounds"].push_back(round_json(r));
    if (k.evaluate && test.size() > 0 && !fuser.needs_experts()) {
      auto probs = fuser.predict(coordinator.oracle(),
                                 fusion::to_model_inputs(test.inputs, task));
      const double acc = fusion::accuracy(probs, test.labels);
      report["test_accuracy"] = acc;
      metrics::set("chorus_coordinator_fused_accuracy",
                   "The fused model's accuracy on the test set, by algorithm",
                   {{"algorithm", k.algorithm}}, acc);
      fmt::print("fused model ({}): test accuracy {:.4f} on {} inputs; {}\n",
                 k.algorithm, acc, test.size(),
                 (k.run_dir / "fused.pt").string());
    } else {
      fmt::print("rounds done; run directory {}\n", k.run_dir.string());
    }
    report["seconds"] =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
            .count();
    write_file_atomic(k.run_dir / "report.json", report.dump(2) + "\n");
    std::fflush(stdout);
    co.status->phase(static_cast<std::uint32_t>(k.rounds),
                     k.serve ? "serving" : "done");
    if (k.serve) {
      registry.serve_operators(
          [&](const std::string&, const protocol::PredictCall& call) {
            return coordinator.answer(call);
          });
      progress::println(
          "serving fused predictions ({}, round {}) to {} on port {}; "
          "Ctrl-C stops\n",
          k.algorithm, k.rounds, fmt::join(k.operators, ", "), registry.port());
      std::unique_lock lock(serving_mutex);
      serving_done.wait(lock, [&] { return stop_serving; });
      registry.serve_operators(nullptr);
    }
  } catch (const Error& e) {
    if (stop.stop_requested()) {
      progress::println(
          "chorus coordinator: interrupted ({}); the answers received "
          "are checkpointed in {}: --resume continues from them\n",
          e.what(), k.run_dir.string());
      status = 130;
    } else {
      progress::println("chorus coordinator: {}\n", describe(e));
      status = 1;
    }
  }
  // Goodbye to every node; the event loop ends once the connections have
  // closed, or at the end of the grace period.
  asio::post(io, [&] {
    std::error_code ignored;
    hangup.cancel(ignored);
  });
  registry.stop("the coordinator's rounds are done");
  shutdown.disarm();
  if (!io_thread.join_within(kShutdownGrace)) {
    log->warn("event=connections_not_closed grace_ms={}",
              kShutdownGrace.count());
  }
  if (status == 130) log->info("event=interrupted exit=130");
  return status;
}

}  // namespace chorus::coordinator
