#include "chorus/node/run.hpp"

#include <ATen/Parallel.h>

#include <asio/io_context.hpp>
#include <asio/thread_pool.hpp>

#include "chorus/core/log.hpp"
#include "chorus/node/service.hpp"
#include "chorus/node/session.hpp"
#include "chorus/protocol/certs.hpp"
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
  if (cert.days_left < 14) {
    log->warn(
        "event=certificate_expiring file={} days_left={} not_after=\"{}\"",
        config.cert.string(), cert.days_left, cert.not_after);
  }
  set_torch_threads(config.threads);
  auto expert = load_expert(config.expert);
  NodeServiceOptions options;
  options.policy = config.policy;
  options.state_dir = config.state_dir;
  options.audit_log = config.audit_log;
  options.metadata = {{"name", config.name},
                      {"backend", expert_kind_name(config.expert.kind)}};
  if (config.adapt_shots_per_class > 0) {
    options.shots = std::make_shared<LabelledShots>(
        draw_local_shots(expert->labels(), config.adapt_shots_per_class,
                         config.adapt_seed, config.train.source()));
  }
  const auto labels = expert->labels().size();
  NodeService service(std::move(expert), options);

  SessionOptions session_options;
  session_options.host = config.host;
  session_options.port = config.port;
  session_options.tls =
      protocol::TlsMaterial::load(config.ca, config.cert, config.key);

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
