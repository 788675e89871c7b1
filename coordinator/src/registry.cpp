#include "chorus/coordinator/registry.hpp"

#include <fmt/ranges.h>

#include <algorithm>
#include <asio/this_coro.hpp>
#include <asio/thread_pool.hpp>
#include <condition_variable>

#include "chorus/core/error.hpp"
#include "chorus/core/log.hpp"
#include "chorus/protocol/offload.hpp"
#include "chorus/protocol/task_codec.hpp"

namespace chorus::coordinator {
namespace {

// The session decodes a Hello once; the rounds see values.
NodeAnnouncement announcement_of(const v1::Hello& hello) {
  NodeAnnouncement a;
  a.software = hello.software();
  const auto& e = hello.expert();
  a.input_shape.assign(e.input_shape().begin(), e.input_shape().end());
  a.labels.assign(e.labels().begin(), e.labels().end());
  a.metadata.insert(e.metadata().begin(), e.metadata().end());
  a.max_batch = std::max<std::uint64_t>(1, hello.policy().max_batch());
  if (hello.policy().has_total_remaining()) {
    a.total_remaining = hello.policy().total_remaining();
  }
  a.capabilities.assign(hello.capabilities().begin(),
                        hello.capabilities().end());
  return a;
}

}  // namespace

bool NodeAnnouncement::can(const std::string& capability) const {
  return std::find(capabilities.begin(), capabilities.end(), capability) !=
         capabilities.end();
}

struct NodeRegistry::Impl {
  asio::io_context& io;
  RegistryOptions options;
  std::unique_ptr<protocol::Server> server;
  std::shared_ptr<spdlog::logger> log = log::get("coordinator");

  mutable std::mutex mutex;
  std::condition_variable_any changed;  // Waits can be cancelled.
  struct Entry {
    NodeInfo info;
    std::shared_ptr<protocol::Connection> connection;
  };
  std::map<std::string, Entry> nodes;
  std::map<std::string, int> generations;
  std::map<std::string, std::string> refused;  // Identity → why, last refusal.
  std::atomic<bool> stopping{false};
  // Operators: their connections, the handler, and the one thread that
  // runs their predictions (a fused prediction blocks on the nodes, whose
  // replies arrive on the io thread).
  std::multimap<std::string, std::shared_ptr<protocol::Connection>> operators;
  OperatorHandler operator_handler;
  asio::thread_pool operator_pool{1};

  bool is_operator(const std::string& identity) const {
    const auto& o = options.operators;
    return std::find(o.begin(), o.end(), identity) != o.end();
  }
  void admit_operator(const std::shared_ptr<protocol::Connection>& connection);
  asio::awaitable<v1::Envelope> serve_operator(const std::string& identity,
                                               const v1::Envelope& request);

  Impl(asio::io_context& i, RegistryOptions o) : io(i), options(std::move(o)) {}
};

NodeRegistry::NodeRegistry(asio::io_context& io, Roster roster,
                           RegistryOptions options)
    : impl_(std::make_unique<Impl>(io, std::move(options))),
      roster_(std::move(roster)) {
  auto* impl = impl_.get();
  v1::Welcome welcome;
  welcome.set_coordinator(impl->options.name);
  if (impl->options.task) {
    impl->options.task->validate();
    protocol::encode_task(*impl->options.task, welcome.mutable_task());
  }
  impl->server = std::make_unique<protocol::Server>(
      io,
      asio::ip::tcp::endpoint(asio::ip::make_address(impl->options.listen_host),
                              impl->options.port),
      impl->options.tls, impl->options.channel, welcome,
      [this, impl](const std::string& identity, const v1::Hello& hello) {
        const auto& caps = hello.capabilities();
        const bool says_operator =
            std::find(caps.begin(), caps.end(), "operator") != caps.end();
        if (impl->is_operator(identity)) {
          if (says_operator) return protocol::Admission{};
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
        if (!roster_.admits(identity)) {
          return protocol::Admission{
              .admit = false,
              .code = Code::kPermissionDenied,
              .message = fmt::format(
                  "node '{}' is not on this coordinator's roster", identity)};
        }
        if (impl->options.task) {
          if (auto why = protocol::descriptor_mismatch(
                  *impl->options.task, hello.expert(),
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
             const v1::Hello& hello) {
        const auto identity = connection->peer_identity();
        if (impl->is_operator(identity)) {
          impl->admit_operator(connection);
          return;
        }
        std::weak_ptr<protocol::Connection> weak = connection;
        connection->start(
            [](const v1::Envelope& e) -> asio::awaitable<v1::Envelope> {
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
              impl->changed.notify_all();
            });
        std::shared_ptr<protocol::Connection> replaced;
        {
          std::lock_guard lock(impl->mutex);
          impl->refused.erase(identity);
          auto& entry = impl->nodes[identity];
          replaced = entry.connection;
          entry.connection = connection;
          entry.info = NodeInfo{.identity = identity,
                                .announced = announcement_of(hello),
                                .generation = ++impl->generations[identity]};
          impl->changed.notify_all();
        }
        if (replaced)
          replaced->close("replaced by a newer connection of the same node");
        impl->log->info(
            "node={} event=joined labels=[{}] max_batch={} generation={}",
            identity, fmt::join(hello.expert().labels(), ", "),
            hello.policy().max_batch(), impl->generations[identity]);
      });
}

void NodeRegistry::Impl::admit_operator(
    const std::shared_ptr<protocol::Connection>& connection) {
  const auto identity = connection->peer_identity();
  std::weak_ptr<protocol::Connection> weak = connection;
  connection->start(
      [this,
       identity](const v1::Envelope& request) -> asio::awaitable<v1::Envelope> {
        v1::Envelope reply = co_await serve_operator(identity, request);
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
        log->info("operator={} event=disconnected reason=\"{}\"", identity,
                  reason);
      });
  {
    std::lock_guard lock(mutex);
    operators.emplace(identity, connection);
  }
  log->info("operator={} event=joined", identity);
}

asio::awaitable<v1::Envelope> NodeRegistry::Impl::serve_operator(
    const std::string& identity, const v1::Envelope& request) {
  auto call =
      std::make_shared<protocol::PoolCall>(co_await asio::this_coro::executor);
  call->work = [this, identity, request] {
    CHORUS_CHECK_CODE(request.has_predict_request(), Code::kUnimplemented,
                      "an operator may send PredictRequest only");
    OperatorHandler handler;
    {
      std::lock_guard lock(mutex);
      handler = operator_handler;
    }
    CHORUS_CHECK_CODE(
        handler != nullptr, Code::kUnavailable,
        "this coordinator is not serving fused predictions (its rounds "
        "are not done, or coordinator.serve is off)");
    return handler(identity, request);
  };
  auto finished = protocol::start_on_pool(operator_pool, call);
  co_await std::move(finished);
  const auto& error = call->result.error;
  log->log(error ? spdlog::level::warn : spdlog::level::info,
           "operator={} request_id={} event=predict inputs={} code={}{}",
           identity, request.request_id(),
           request.predict_request().inputs().shape_size() > 0
               ? request.predict_request().inputs().shape(0)
               : 0,
           code_name(error ? error->code() : Code::kOk),
           error ? fmt::format(" error=\"{}\"", error->what()) : std::string());
  if (error) co_return protocol::make_status(error->code(), error->what());
  co_return std::move(call->result.reply);
}

NodeRegistry::~NodeRegistry() {
  serve_operators(nullptr);
  impl_->operator_pool.join();
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
  }
  impl_->changed.notify_all();
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

std::vector<NodeInfo> NodeRegistry::connected() const {
  std::lock_guard lock(impl_->mutex);
  std::vector<NodeInfo> out;
  for (const auto& id : roster_.identities()) {
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

std::vector<NodeInfo> NodeRegistry::wait_for_quorum(
    std::size_t min_nodes, std::chrono::milliseconds timeout,
    std::chrono::milliseconds settle, std::stop_token cancel) {
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + timeout;
  auto count = [&] {
    std::size_t n = 0;
    for (auto& [id, e] : impl_->nodes) n += e.connection->is_open();
    return n;
  };
  {
    std::unique_lock lock(impl_->mutex);
    impl_->changed.wait_until(lock, cancel, deadline, [&] {
      return impl_->stopping || count() >= min_nodes;
    });
    // With a quorum, give the rest of the roster a moment to arrive too.
    if (!impl_->stopping && count() >= min_nodes && settle.count() > 0) {
      impl_->changed.wait_until(
          lock, cancel,
          std::min(deadline, std::chrono::steady_clock::now() + settle),
          [&] { return impl_->stopping || count() >= roster_.size(); });
    }
    CHORUS_CHECK_CODE(!impl_->stopping && !cancel.stop_requested(),
                      Code::kCancelled,
                      "cancelled while waiting for the quorum");
  }
  auto present = connected();
  if (present.size() < min_nodes) {
    std::vector<std::string> names;
    for (const auto& n : present) names.push_back(n.identity);
    std::string why;
    {
      std::lock_guard lock(impl_->mutex);
      for (const auto& m : roster_.missing(names)) {
        auto it = impl_->refused.find(m);
        if (it != impl_->refused.end())
          why += fmt::format("; '{}' was refused: {}", m, it->second);
      }
    }
    fail(Code::kDeadlineExceeded,
         "no quorum after {} ms: {} of the {} required nodes are connected; "
         "missing: {}{}",
         timeout.count(), present.size(), min_nodes,
         fmt::join(roster_.missing(names), ", "), why);
  }
  return present;
}

std::future<v1::Envelope> NodeRegistry::request(
    const std::string& identity, v1::Envelope request,
    std::chrono::milliseconds deadline) {
  std::shared_ptr<protocol::Connection> c;
  {
    std::lock_guard lock(impl_->mutex);
    auto it = impl_->nodes.find(identity);
    if (it != impl_->nodes.end()) c = it->second.connection;
  }
  if (!c || !c->is_open()) {
    std::promise<v1::Envelope> p;
    p.set_exception(std::make_exception_ptr(
        Error(Code::kUnavailable,
              fmt::format("node '{}' is not connected", identity))));
    return p.get_future();
  }
  return c->request_async(std::move(request), deadline);
}

}  // namespace chorus::coordinator
