#include "chorus/node/run.hpp"

#include <ATen/Parallel.h>

#include <asio/io_context.hpp>
#include <asio/thread_pool.hpp>
#include <memory>
#include <optional>

#include "chorus/core/log.hpp"
#include "chorus/core/metrics.hpp"
#include "chorus/node/service.hpp"
#include "chorus/node/session.hpp"
#include "chorus/protocol/certs.hpp"
#include "chorus/protocol/metrics_server.hpp"
#include "chorus/protocol/shutdown.hpp"

namespace chorus::node {

void set_torch_threads(int threads) {
  if (threads > 0) at::set_num_threads(threads);
}

void run_node(const NodeConfig& config) {
  auto log = log::get("node");
  // A certificate that cannot work, or is another party's, is said now, not
  // as a refusal from the coordinator later.
  const auto cert = protocol::check_own_certificate(
      config.cert, fmt::format("node '{}''s", config.name), config.name);
  // Said at start, and again at a reconnect when a day less is left.
  auto warned_days = std::make_shared<std::optional<int>>();
  auto warn_if_expiring = [config, log,
                           warned_days](const protocol::CertInfo& info) {
    if (info.days_left >= 14 || *warned_days == info.days_left) return;
    *warned_days = info.days_left;
    log->warn(
        "event=certificate_expiring file={} days_left={} not_after=\"{}\"",
        config.cert.string(), info.days_left, info.not_after);
  };
  warn_if_expiring(cert);
  const auto tls =
      protocol::TlsMaterial::load(config.ca, config.cert, config.key);
  set_torch_threads(config.threads);
  auto expert = load_expert(config.expert);
  NodeServiceOptions options;
  options.policy = config.policy;
  options.state_dir = config.state_dir;
  options.audit_log = config.audit_log;
  // The log's chain is sealed with the node's own key.
  options.audit_key_pem = tls.key_pem;
  options.audit_signer = config.name;
  options.audit_seal_every = config.audit_seal_every;
  options.metadata = {{"name", config.name},
                      {"backend", expert_kind_name(config.expert.kind)}};
  if (config.adapt_shots_per_class > 0) {
    options.shots = std::make_shared<LabelledShots>(
        draw_local_shots(expert->labels(), config.adapt_shots_per_class,
                         config.adapt_seed, config.train.source()));
  }
  const auto labels = expert->labels().size();
  NodeService service(std::move(expert), options);
  service.publish_budget();
  std::optional<protocol::MetricsServer> metrics_server;
  if (!config.metrics_listen.empty()) {
    metrics_server.emplace(config.metrics_listen, "metrics.listen");
    log->info("event=metrics_serving url=http://{}/metrics port={}",
              config.metrics_listen, metrics_server->port());
  }

  SessionOptions session_options;
  session_options.host = config.host;
  session_options.port = config.port;
  session_options.tls = tls;
  session_options.server_name = config.server_name;
  session_options.backoff.max = std::chrono::milliseconds(
      static_cast<std::int64_t>(config.retry_max_s * 1000));
  session_options.backoff.refused = std::chrono::milliseconds(
      static_cast<std::int64_t>(config.refused_retry_s * 1000));
  // A renewed certificate (or CA file) is picked up at the next reconnect.
  session_options.tls_source = [config, warn_if_expiring] {
    auto material =
        protocol::TlsMaterial::load(config.ca, config.cert, config.key);
    warn_if_expiring(protocol::inspect_certificate_pem(material.cert_pem));
    return material;
  };

  asio::io_context io;
  asio::thread_pool pool(static_cast<std::size_t>(config.workers));
  NodeSession session(io, pool, service, session_options);
  protocol::ShutdownOnSignal shutdown(
      io, [&](int) { session.stop(); }, [&] { io.stop(); },
      std::chrono::milliseconds(2000));
  log->info(
      "event=starting name={} coordinator={}:{} expert={} labels={} "
      "max_batch={} audit={}",
      config.name, config.host, config.port, config.expert.path.string(),
      labels, config.policy.budget.max_batch, config.audit_log.string());
  session.start();
  io.run();
  pool.join();
  log->info("event=stopped inputs_answered={}", service.inputs_answered());
}

}  // namespace chorus::node
