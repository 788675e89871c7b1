#include "chorus/coordinator/registry.hpp"

#include <fmt/ranges.h>

#include <algorithm>
#include <asio/co_spawn.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/strand.hpp>
#include <asio/this_coro.hpp>
#include <asio/thread_pool.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/use_future.hpp>
#include <optional>
#include <set>

#include "chorus/coordinator/status.hpp"
#include "chorus/core/error.hpp"
#include "chorus/core/log.hpp"
#include "chorus/core/metrics.hpp"
#include "chorus/protocol/codec.hpp"
#include "chorus/protocol/identity.hpp"
#include "chorus/protocol/offload.hpp"

namespace chorus::coordinator {

namespace {
// Why a certificate the CRL revokes is shut out: the reason a dropped
// connection closes with, and the status of a roster member holding one.
std::string revoked_reason(const std::string& serial) {
  return fmt::format("its certificate (serial {}) is revoked", serial);
}
}  // namespace

struct NodeRegistry::Impl {
  asio::io_context& io;
  RegistryOptions options;  // options.operators: guarded by `mutex`.
  Roster roster;            // Guarded by `mutex`.
  std::unique_ptr<protocol::Server> server;
  std::shared_ptr<spdlog::logger> log = log::get("coordinator");

  mutable std::mutex mutex;
  // Quorum waits in progress, each a timer on `rounds` that a change cancels
  // (guarded by `mutex`).
  std::vector<std::weak_ptr<asio::steady_timer>> waiters;
  struct Entry {
    NodeInfo info;
    std::shared_ptr<protocol::Connection> connection;
  };
  std::map<std::string, Entry> nodes;
  std::map<std::string, int> generations;
  std::map<std::string, std::string> refused;  // Identity → why, last refusal.
  // Identity → the serial of the last certificate it joined with, kept
  // after it leaves, so that a reload can tell which roster members a CRL
  // shuts out (guarded by `mutex`).
  std::map<std::string, std::string> last_serial;
  // The serials the CRL in use revokes (guarded by `mutex`).
  std::set<std::string> revoked;
  std::atomic<bool> stopping{false};
  // Operators: their connections, the handler, and the one thread that
  // runs their predictions (a fused prediction blocks on the nodes, whose
  // replies arrive on the io thread).
  std::multimap<std::string, std::shared_ptr<protocol::Connection>> operators;
  OperatorHandler operator_handler;
  std::shared_ptr<const StatusBoard> status_board;
  asio::thread_pool operator_pool{1};
  // The request log (options.request_log), when kept.
  std::unique_ptr<protocol::AuditLog> requests;

  // The serial of the certificate `identity` last joined with, when the CRL
  // in use revokes it (the caller holds `mutex`).
  std::optional<std::string> revoked_serial(const std::string& identity) const {
    auto it = last_serial.find(identity);
    if (it == last_serial.end() || !revoked.count(it->second)) return {};
    return it->second;
  }

  bool is_operator(const std::string& identity) const {
    std::lock_guard lock(mutex);
    const auto& o = options.operators;
    return std::find(o.begin(), o.end(), identity) != o.end();
  }
  void admit_operator(const std::shared_ptr<protocol::Connection>& connection);
  asio::awaitable<v1::Envelope> serve_operator(std::string identity,
                                               v1::Envelope request);
  // The reply to an operator's StatusRequest (cheap: on the network thread).
  v1::Envelope status() const;
  // The rounds' fan-outs run here; connections keep their own strands.
  asio::strand<asio::io_context::executor_type> rounds;

  Impl(asio::io_context& i, Roster r, RegistryOptions o)
      : io(i),
        options(std::move(o)),
        roster(std::move(r)),
        rounds(asio::make_strand(i)) {}

  // Wakes every quorum wait to look again; call with `mutex` held. The
  // cancel runs on `rounds`, after the waiter has suspended: none is lost.
  void changed() {
    publish();
    for (auto it = waiters.begin(); it != waiters.end();) {
      if (auto timer = it->lock()) {
        asio::post(rounds, [timer] { timer->cancel(); });
        ++it;
      } else {
        it = waiters.erase(it);
      }
    }
  }
  // The connection gauges; call with `mutex` held.
  void publish() const {
    std::size_t n = 0;
    for (const auto& [id, e] : nodes) n += e.connection->is_open();
    metrics::set("chorus_coordinator_nodes_connected",
                 "Rostered nodes connected to this coordinator", {},
                 static_cast<double>(n));
    metrics::set("chorus_coordinator_operators_connected",
                 "Operator sessions open at this coordinator", {},
                 static_cast<double>(operators.size()));
  }
  std::size_t connected_count() const {
    std::lock_guard lock(mutex);
    std::size_t n = 0;
    for (const auto& [id, e] : nodes) n += e.connection->is_open();
    return n;
  }

  // One request to the node `identity` over its current connection.
  asio::awaitable<protocol::Outcome<v1::Envelope>> call(
      std::string identity, v1::Envelope request,
      std::chrono::milliseconds deadline);
  // Writes a sent request's line to the request log, if one is kept.
  void log_request(protocol::AuditRecord record,
                   const protocol::Outcome<v1::Envelope>& outcome,
                   std::chrono::steady_clock::duration latency);
};

namespace {

using protocol::Outcome;

// Runs on the connection's strand, where its requests must start; the id
// it was sent with (0: never sent) goes to `*sent_id`.
asio::awaitable<Outcome<v1::Envelope>> request_caught(
    std::shared_ptr<protocol::Connection> connection, v1::Envelope request,
    std::chrono::milliseconds deadline, std::uint64_t* sent_id) {
  Outcome<v1::Envelope> out;
  try {
    out.reply =
        co_await connection->request(std::move(request), deadline, sent_id);
  } catch (const Error& e) {
    out.error = e;
  }
  co_return out;
}

// Decodes a reply of the kind expected, or passes its error on.
template <typename T, typename Decode>
CallResult<T> decoded(Outcome<v1::Envelope>&& reply, Decode decode) {
  CallResult<T> out;
  if (reply.error) {
    out.error = std::move(reply.error);
    return out;
  }
  try {
    out.reply = decode(std::move(reply.reply));
  } catch (const Error& e) {
    out.error = e;
  }
  return out;
}

// A node reached through the registry: its connection of the moment.
// (A template so that it may hold the registry's private Impl.)
template <typename Registry>
class ConnectionLink final : public NodeLink {
 public:
  ConnectionLink(Registry& registry, std::string identity)
      : registry_(registry),
        identity_(std::move(identity)),
        who_(fmt::format("node '{}'", identity_)) {}

  const std::string& identity() const override { return identity_; }

  asio::awaitable<CallResult<protocol::PredictAnswer>> predict(
      protocol::PredictCall call, std::chrono::milliseconds deadline) override {
    auto reply = co_await registry_.call(
        identity_, protocol::envelope_of(std::move(call)), deadline);
    co_return decoded<protocol::PredictAnswer>(
        std::move(reply), [this](v1::Envelope&& e) {
          return protocol::predict_answer_of(std::move(e), who_);
        });
  }

  asio::awaitable<CallResult<protocol::Ack>> push(
      protocol::ModelChunk chunk, std::chrono::milliseconds deadline) override {
    auto reply = co_await registry_.call(
        identity_, protocol::envelope_of(std::move(chunk)), deadline);
    co_return decoded<protocol::Ack>(
        std::move(reply),
        [this](v1::Envelope&& e) { return protocol::ack_of(e, who_); });
  }

  asio::awaitable<CallResult<protocol::AdaptAnswer>> adapt(
      protocol::AdaptCall call, std::chrono::milliseconds deadline) override {
    auto reply = co_await registry_.call(
        identity_, protocol::envelope_of(std::move(call)), deadline);
    co_return decoded<protocol::AdaptAnswer>(
        std::move(reply), [this](v1::Envelope&& e) {
          return protocol::adapt_answer_of(std::move(e), who_);
        });
  }

  asio::awaitable<CallResult<protocol::WeightsAnswer>> weights(
      protocol::WeightsCall call, std::chrono::milliseconds deadline) override {
    auto reply = co_await registry_.call(identity_, protocol::envelope_of(call),
                                         deadline);
    co_return decoded<protocol::WeightsAnswer>(
        std::move(reply), [this](v1::Envelope&& e) {
          return protocol::weights_answer_of(std::move(e), who_);
        });
  }

 private:
  Registry& registry_;
  std::string identity_;
  std::string who_;
};

}  // namespace

asio::awaitable<protocol::Outcome<v1::Envelope>> NodeRegistry::Impl::call(
    std::string identity, v1::Envelope request,
    std::chrono::milliseconds deadline) {
  std::shared_ptr<protocol::Connection> c;
  {
    std::lock_guard lock(mutex);
    auto it = nodes.find(identity);
    if (it != nodes.end()) c = it->second.connection;
  }
  if (!c || !c->is_open()) {
    Outcome<v1::Envelope> out;
    out.error = Error(Code::kUnavailable,
                      fmt::format("node '{}' is not connected", identity));
    co_return out;
  }
  auto strand = c->strand();
  if (!requests) {
    co_return co_await asio::co_spawn(
        strand,
        request_caught(std::move(c), std::move(request), deadline, nullptr),
        asio::use_awaitable);
  }
  auto record = protocol::audit_record_of(request, identity);
  record.request_id = 0;
  const auto t0 = std::chrono::steady_clock::now();
  auto out =
      co_await asio::co_spawn(strand,
                              request_caught(std::move(c), std::move(request),
                                             deadline, &record.request_id),
                              asio::use_awaitable);
  log_request(std::move(record), out, std::chrono::steady_clock::now() - t0);
  co_return out;
}

void NodeRegistry::Impl::log_request(
    protocol::AuditRecord record, const protocol::Outcome<v1::Envelope>& out,
    std::chrono::steady_clock::duration latency) {
  if (record.request_id == 0) return;  // Never sent: not a request.
  record.outcome =
      std::string(code_name(out.error ? out.error->code() : Code::kOk));
  if (out.error) record.message = out.error->what();
  record.latency_ms =
      std::chrono::duration<double, std::milli>(latency).count();
  try {
    requests->append(record);
  } catch (const Error& e) {
    static std::atomic<int> warned{0};
    if (warned++ < 5) {
      log->error("event=request_log_failed node={} request_id={} error=\"{}\"",
                 record.peer, record.request_id, e.what());
    }
  }
}

NodeRegistry::NodeRegistry(asio::io_context& io, Roster roster,
                           RegistryOptions options)
    : impl_(std::make_unique<Impl>(io, std::move(roster), std::move(options))) {
  auto* impl = impl_.get();
  if (!impl->options.request_log.empty()) {
    impl->requests = std::make_unique<protocol::AuditLog>(
        impl->options.request_log, impl->options.request_log_signer);
  }
  protocol::Welcome welcome;
  welcome.coordinator = impl->options.name;
  if (impl->options.task) {
    impl->options.task->validate();
    welcome.task = impl->options.task;
  }
  std::vector<asio::ip::tcp::endpoint> endpoints;
  for (const auto& host : impl->options.listen_hosts) {
    std::error_code ec;
    const auto address = asio::ip::make_address(host, ec);
    CHORUS_CHECK(!ec,
                 "cannot listen on '{}': not an IPv4 or IPv6 address (give "
                 "addresses, e.g. \"0.0.0.0\" or \"::\")",
                 host);
    endpoints.emplace_back(address, impl->options.port);
  }
  CHORUS_CHECK(!endpoints.empty(), "name at least one address to listen on");
  if (!impl->options.tls.crl_pem.empty())
    impl->revoked = protocol::crl_revoked_serials(impl->options.tls.crl_pem);
  impl->server = std::make_unique<protocol::Server>(
      io, endpoints, impl->options.tls, impl->options.channel, welcome,
      [this, impl](const std::string& identity, const protocol::Hello& hello) {
        const bool says_operator = hello.can("operator");
        if (impl->is_operator(identity)) {
          if (says_operator) {
            std::size_t open = 0;
            {
              std::lock_guard lock(impl->mutex);
              for (const auto& [id, c] : impl->operators) open += c->is_open();
            }
            if (open >= impl->options.max_operator_sessions) {
              return protocol::Admission{
                  .admit = false,
                  .code = Code::kResourceExhausted,
                  .message = fmt::format(
                      "{} operator sessions are open, the most this "
                      "coordinator serves at once "
                      "(coordinator.max_operator_sessions); try again later",
                      open)};
            }
            return protocol::Admission{};
          }
          return protocol::Admission{
              .admit = false,
              .code = Code::kPermissionDenied,
              .message =
                  fmt::format("'{}' is an operator of this coordinator, not a "
                              "node; a node needs its own certificate",
                              identity)};
        }
        if (says_operator) {
          return protocol::Admission{
              .admit = false,
              .code = Code::kPermissionDenied,
              .message =
                  fmt::format("'{}' is not an operator of this coordinator "
                              "(coordinator.operators)",
                              identity)};
        }
        bool rostered = false;
        {
          std::lock_guard lock(impl->mutex);
          rostered = impl->roster.admits(identity);
        }
        if (!rostered) {
          return protocol::Admission{
              .admit = false,
              .code = Code::kPermissionDenied,
              .message = fmt::format(
                  "node '{}' is not on this coordinator's roster", identity)};
        }
        if (impl->options.task) {
          if (auto why = protocol::descriptor_mismatch(
                  *impl->options.task, hello.expert,
                  fmt::format("node '{}'", identity))) {
            {
              std::lock_guard lock(impl->mutex);
              impl->refused[identity] = *why;
            }
            impl->log->warn("node={} event=refused reason=\"{}\"", identity,
                            *why);
            return protocol::Admission{.admit = false,
                                       .code = Code::kInvalidArgument,
                                       .message = *why};
          }
        }
        return protocol::Admission{};
      },
      [impl](std::shared_ptr<protocol::Connection> connection,
             const protocol::Hello& hello) {
        const auto identity = connection->peer_identity();
        if (impl->is_operator(identity)) {
          impl->admit_operator(connection);
          return;
        }
        std::weak_ptr<protocol::Connection> weak = connection;
        connection->start(
            [identity](v1::Envelope request) -> asio::awaitable<v1::Envelope> {
              CHORUS_CHECK_CODE(!request.has_status_request(),
                                Code::kPermissionDenied,
                                "status is for operators "
                                "(coordinator.operators); node '{}' may not "
                                "ask",
                                identity);
              fail(Code::kUnimplemented, "the coordinator answers no requests");
            },
            [impl, identity, weak](const std::string& reason) {
              std::lock_guard lock(impl->mutex);
              auto it = impl->nodes.find(identity);
              // Only the connection being closed leaves; a newer one stays.
              if (it != impl->nodes.end() &&
                  it->second.connection == weak.lock()) {
                impl->nodes.erase(it);
                // Expected when this coordinator is the one closing.
                impl->log->log(
                    impl->stopping ? spdlog::level::info : spdlog::level::warn,
                    "node={} event=disconnected reason=\"{}\"", identity,
                    reason);
              }
              impl->changed();
            });
        std::shared_ptr<protocol::Connection> replaced;
        {
          std::lock_guard lock(impl->mutex);
          impl->refused.erase(identity);
          impl->last_serial[identity] = connection->peer_serial();
          auto& entry = impl->nodes[identity];
          replaced = entry.connection;
          entry.connection = connection;
          entry.info = NodeInfo{.identity = identity,
                                .announced = hello,
                                .generation = ++impl->generations[identity]};
          impl->changed();
        }
        if (replaced)
          replaced->close("replaced by a newer connection of the same node");
        std::vector<std::string> privacy;
        for (const auto& g : hello.policy.privacy) {
          privacy.push_back(fmt::format("{}(epsilon={:.3g},delta={:.3g})",
                                        g.mechanism, g.epsilon, g.delta));
        }
        impl->log->info(
            "node={} event=joined labels=[{}] max_batch={} generation={}{}",
            identity, fmt::join(hello.expert.labels, ", "),
            hello.policy.max_batch, impl->generations[identity],
            privacy.empty()
                ? std::string()
                : fmt::format(" privacy={}", fmt::join(privacy, ",")));
      });
}

void NodeRegistry::Impl::admit_operator(
    const std::shared_ptr<protocol::Connection>& connection) {
  const auto identity = connection->peer_identity();
  std::weak_ptr<protocol::Connection> weak = connection;
  connection->start(
      [this, identity](v1::Envelope request) -> asio::awaitable<v1::Envelope> {
        v1::Envelope reply =
            co_await serve_operator(identity, std::move(request));
        co_return reply;
      },
      [this, identity, weak](const std::string& reason) {
        std::lock_guard lock(mutex);
        auto range = operators.equal_range(identity);
        for (auto it = range.first; it != range.second; ++it) {
          if (it->second == weak.lock()) {
            operators.erase(it);
            break;
          }
        }
        publish();
        log->info("operator={} event=disconnected reason=\"{}\"", identity,
                  reason);
      });
  {
    std::lock_guard lock(mutex);
    operators.emplace(identity, connection);
    publish();
  }
  log->info("operator={} event=joined", identity);
}

v1::Envelope NodeRegistry::Impl::status() const {
  std::map<std::string, std::chrono::steady_clock::time_point> heard;
  std::shared_ptr<const StatusBoard> board;
  std::vector<std::string> names;
  std::map<std::string, std::string> why_refused;
  {
    std::lock_guard lock(mutex);
    board = status_board;
    names = roster.identities();
    for (const auto& [id, e] : nodes) {
      if (e.connection->is_open()) heard[id] = e.connection->last_heard();
    }
    for (const auto& id : names) {
      if (auto it = refused.find(id); it != refused.end())
        why_refused[id] = it->second;
      if (auto serial = revoked_serial(id))
        why_refused[id] = revoked_reason(*serial);
    }
  }
  CHORUS_CHECK_CODE(board != nullptr, Code::kUnavailable,
                    "this coordinator has not started its rounds yet");
  return protocol::envelope_of(board->snapshot(names, heard, why_refused));
}

asio::awaitable<v1::Envelope> NodeRegistry::Impl::serve_operator(
    std::string identity, v1::Envelope request) {
  const auto request_id = request.request_id();
  if (request.has_status_request()) {
    v1::Envelope reply;
    try {
      reply = status();
    } catch (const Error& e) {
      reply = protocol::make_status(e.code(), e.what());
    }
    log->debug("operator={} request_id={} event=status", identity, request_id);
    co_return reply;
  }
  const auto inputs =
      request.has_predict_request() &&
              request.predict_request().inputs().shape_size() > 0
          ? request.predict_request().inputs().shape(0)
          : 0;
  using Call = protocol::PoolCall<v1::Envelope>;
  auto call = std::make_shared<Call>(co_await asio::this_coro::executor);
  call->work = [this, identity, request = std::move(request)]() mutable {
    CHORUS_CHECK_CODE(request.has_predict_request(), Code::kUnimplemented,
                      "an operator may send PredictRequest only");
    auto predict = protocol::predict_call_of(std::move(request));
    OperatorHandler handler;
    {
      std::lock_guard lock(mutex);
      handler = operator_handler;
    }
    CHORUS_CHECK_CODE(
        handler != nullptr, Code::kUnavailable,
        "this coordinator is not serving fused predictions (its rounds "
        "are not done, or coordinator.serve is off)");
    return protocol::envelope_of(handler(identity, predict));
  };
  auto finished = protocol::start_on_pool(operator_pool, call);
  co_await std::move(finished);
  const auto& error = call->result.error;
  log->log(error ? spdlog::level::warn : spdlog::level::info,
           "operator={} request_id={} event=predict inputs={} code={}{}",
           identity, request_id, inputs,
           code_name(error ? error->code() : Code::kOk),
           error ? fmt::format(" error=\"{}\"", error->what()) : std::string());
  if (error) co_return protocol::make_status(error->code(), error->what());
  co_return std::move(call->result.reply);
}

NodeRegistry::~NodeRegistry() {
  serve_operators(nullptr);
  impl_->operator_pool.join();
}

void NodeRegistry::serve_status(std::shared_ptr<const StatusBoard> board) {
  std::lock_guard lock(impl_->mutex);
  impl_->status_board = std::move(board);
}

void NodeRegistry::serve_operators(OperatorHandler handler) {
  std::lock_guard lock(impl_->mutex);
  impl_->operator_handler = std::move(handler);
}

std::vector<std::string> NodeRegistry::operators_connected() const {
  std::lock_guard lock(impl_->mutex);
  std::vector<std::string> out;
  for (const auto& [id, c] : impl_->operators) {
    if (c->is_open()) out.push_back(id);
  }
  return out;
}

void NodeRegistry::start() { impl_->server->start(); }

void NodeRegistry::stop(const std::string& reason) {
  {
    std::lock_guard lock(impl_->mutex);
    impl_->stopping = true;
    impl_->changed();
  }
  impl_->server->stop();
  std::vector<std::shared_ptr<protocol::Connection>> all;
  {
    std::lock_guard lock(impl_->mutex);
    for (auto& [id, e] : impl_->nodes) all.push_back(e.connection);
    for (auto& [id, c] : impl_->operators) all.push_back(c);
  }
  for (auto& c : all) c->close(reason);
}

std::uint16_t NodeRegistry::port() const { return impl_->server->port(); }

Roster NodeRegistry::roster() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->roster;
}

ReloadSummary NodeRegistry::reload(Roster roster,
                                   std::vector<std::string> operators,
                                   const protocol::TlsMaterial& tls) {
  // The one step that can fail goes first: nothing changes if it does.
  const auto revoked = tls.crl_pem.empty()
                           ? std::set<std::string>()
                           : protocol::crl_revoked_serials(tls.crl_pem);
  impl_->server->reload_tls(tls);
  ReloadSummary summary;
  summary.revoked_serials = revoked.size();
  auto diff = [](const std::vector<std::string>& a,
                 const std::vector<std::string>& b) {
    std::vector<std::string> out;  // In a, not in b.
    for (const auto& x : a) {
      if (std::find(b.begin(), b.end(), x) == b.end()) out.push_back(x);
    }
    return out;
  };
  std::vector<std::pair<std::shared_ptr<protocol::Connection>, std::string>>
      drop;
  {
    std::lock_guard lock(impl_->mutex);
    impl_->revoked = revoked;
    summary.nodes_added = diff(roster.identities(), impl_->roster.identities());
    summary.nodes_removed =
        diff(impl_->roster.identities(), roster.identities());
    summary.operators_added = diff(operators, impl_->options.operators);
    summary.operators_removed = diff(impl_->options.operators, operators);
    impl_->roster = std::move(roster);
    impl_->options.operators = std::move(operators);
    auto why = [&](const std::shared_ptr<protocol::Connection>& c,
                   bool listed) -> std::string {
      if (revoked.count(c->peer_serial())) {
        return revoked_reason(c->peer_serial());
      }
      if (!listed) return "removed from the coordinator's configuration";
      return {};
    };
    for (auto& [id, e] : impl_->nodes) {
      auto reason = why(e.connection, impl_->roster.admits(id));
      if (!reason.empty()) drop.emplace_back(e.connection, reason);
    }
    for (const auto& id : impl_->roster.identities()) {
      if (auto serial = impl_->revoked_serial(id)) {
        summary.revoked_members.push_back(
            fmt::format("{} (serial {})", id, *serial));
      }
    }
    const auto& ops = impl_->options.operators;
    for (auto& [id, c] : impl_->operators) {
      const bool listed = std::find(ops.begin(), ops.end(), id) != ops.end();
      auto reason = why(c, listed);
      if (!reason.empty()) drop.emplace_back(c, reason);
    }
    impl_->changed();
  }
  for (auto& [c, reason] : drop) {
    if (!c->is_open()) continue;
    impl_->log->warn("peer={} event=dropped reason=\"{}\"", c->peer_identity(),
                     reason);
    summary.dropped.push_back(
        fmt::format("{} ({})", c->peer_identity(), reason));
    c->close(reason);
  }
  return summary;
}

std::vector<NodeInfo> NodeRegistry::connected() const {
  std::lock_guard lock(impl_->mutex);
  std::vector<NodeInfo> out;
  for (const auto& id : impl_->roster.identities()) {
    auto it = impl_->nodes.find(id);
    if (it != impl_->nodes.end() && it->second.connection->is_open()) {
      out.push_back(it->second.info);
    }
  }
  return out;
}

std::map<std::string, std::string> NodeRegistry::refusals() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->refused;
}

bool NodeRegistry::is_connected(const std::string& identity) const {
  std::lock_guard lock(impl_->mutex);
  auto it = impl_->nodes.find(identity);
  return it != impl_->nodes.end() && it->second.connection->is_open();
}

std::size_t quorum_needed(std::size_t min_nodes, std::size_t roster) {
  return min_nodes > 0 ? min_nodes : std::max<std::size_t>(1, roster);
}

asio::awaitable<protocol::Outcome<std::vector<NodeInfo>>> NodeRegistry::quorum(
    std::size_t min_nodes, std::chrono::milliseconds timeout,
    std::chrono::milliseconds settle, std::stop_token cancel) {
  using Clock = std::chrono::steady_clock;
  protocol::Outcome<std::vector<NodeInfo>> out;
  auto timer = std::make_shared<asio::steady_timer>(impl_->rounds);
  {
    std::lock_guard lock(impl_->mutex);
    impl_->waiters.push_back(timer);
  }
  auto* impl = impl_.get();
  std::stop_callback on_cancel(cancel, [impl, timer] {
    asio::post(impl->rounds, [timer] { timer->cancel(); });
  });
  const auto deadline = Clock::now() + timeout;
  auto until = deadline;
  bool settling = false;
  for (;;) {
    if (impl_->stopping || cancel.stop_requested()) {
      out.error =
          Error(Code::kCancelled, "cancelled while waiting for the quorum");
      break;
    }
    const auto n = impl_->connected_count();
    const auto all = [&] {
      std::lock_guard lock(impl_->mutex);
      return impl_->roster.size();
    }();
    if (settling && n >= all) break;
    if (!settling && n >= quorum_needed(min_nodes, all)) {
      // With a quorum, give the rest of the roster a moment to arrive too.
      if (settle.count() <= 0 || n >= all) break;
      settling = true;
      until = std::min(deadline, Clock::now() + settle);
    }
    if (Clock::now() >= until) break;
    timer->expires_at(until);
    std::error_code ec;
    co_await timer->async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
  {
    std::lock_guard lock(impl_->mutex);
    std::erase_if(impl_->waiters,
                  [&](const auto& w) { return w.lock() == timer; });
  }
  if (out.error) co_return out;
  auto present = connected();
  const auto need = quorum_needed(min_nodes, roster().size());
  if (present.size() < need) {
    std::vector<std::string> names;
    for (const auto& n : present) names.push_back(n.identity);
    std::string why;
    std::vector<std::string> missing;
    {
      std::lock_guard lock(impl_->mutex);
      missing = impl_->roster.missing(names);
      for (const auto& m : missing) {
        auto it = impl_->refused.find(m);
        if (it != impl_->refused.end())
          why += fmt::format("; '{}' was refused: {}", m, it->second);
        if (auto serial = impl_->revoked_serial(m)) {
          why += fmt::format(
              "; '{}' cannot rejoin: {} (take it off coordinator.roster if it "
              "is not coming back)",
              m, revoked_reason(*serial));
        }
      }
    }
    out.error = Error(
        Code::kDeadlineExceeded,
        fmt::format("no quorum after {} ms: {} of the {} required nodes are "
                    "connected; missing: {}{}",
                    timeout.count(), present.size(), need,
                    fmt::join(missing, ", "), why));
    co_return out;
  }
  out.reply = std::move(present);
  co_return out;
}

std::vector<NodeInfo> NodeRegistry::wait_for_quorum(
    std::size_t min_nodes, std::chrono::milliseconds timeout,
    std::chrono::milliseconds settle, std::stop_token cancel) {
  auto out =
      asio::co_spawn(impl_->rounds,
                     quorum(min_nodes, timeout, settle, std::move(cancel)),
                     asio::use_future)
          .get();
  if (out.error) throw *out.error;
  return std::move(out.reply);
}

std::shared_ptr<NodeLink> NodeRegistry::link(const std::string& identity) {
  return std::make_shared<ConnectionLink<Impl>>(*impl_, identity);
}

asio::any_io_executor NodeRegistry::executor() const { return impl_->rounds; }

}  // namespace chorus::coordinator
