#include "chorus/coordinator/registry.hpp"

#include <fmt/ranges.h>

#include "chorus/core/error.hpp"
#include "chorus/core/log.hpp"

namespace chorus::coordinator {

struct NodeRegistry::Impl {
  asio::io_context& io;
  RegistryOptions options;
  std::unique_ptr<protocol::Server> server;
  std::shared_ptr<spdlog::logger> log = log::get("coordinator");

  mutable std::mutex mutex;
  std::condition_variable changed;
  struct Entry {
    NodeInfo info;
    std::shared_ptr<protocol::Connection> connection;
  };
  std::map<std::string, Entry> nodes;
  std::map<std::string, int> generations;
  std::atomic<bool> stopping{false};

  Impl(asio::io_context& i, RegistryOptions o) : io(i), options(std::move(o)) {}
};

NodeRegistry::NodeRegistry(asio::io_context& io, Roster roster, RegistryOptions options)
    : impl_(std::make_unique<Impl>(io, std::move(options))), roster_(std::move(roster)) {
  auto* impl = impl_.get();
  v1::Welcome welcome;
  welcome.set_coordinator(impl->options.name);
  impl->server = std::make_unique<protocol::Server>(
      io,
      asio::ip::tcp::endpoint(asio::ip::make_address(impl->options.listen_host),
                              impl->options.port),
      impl->options.tls, impl->options.channel, welcome,
      [this, impl](const std::string& identity, const v1::Hello& hello) {
        if (!roster_.admits(identity)) {
          return protocol::Admission{
              .admit = false,
              .code = Code::kPermissionDenied,
              .message = fmt::format("node '{}' is not on this coordinator's roster",
                                     identity)};
        }
        const auto& space = impl->options.label_space;
        for (const auto& l : hello.expert().labels()) {
          if (!space.empty() && std::find(space.begin(), space.end(), l) == space.end()) {
            return protocol::Admission{
                .admit = false,
                .code = Code::kInvalidArgument,
                .message = fmt::format(
                    "label '{}' is not in the coordinator's label space ({})", l,
                    fmt::join(space, ", "))};
          }
        }
        return protocol::Admission{};
      },
      [impl](std::shared_ptr<protocol::Connection> connection, const v1::Hello& hello) {
        const auto identity = connection->peer_identity();
        std::weak_ptr<protocol::Connection> weak = connection;
        connection->start(
            [](const v1::Envelope& e) -> asio::awaitable<v1::Envelope> {
              fail(Code::kUnimplemented, "the coordinator answers no requests");
            },
            [impl, identity, weak](const std::string& reason) {
              std::lock_guard lock(impl->mutex);
              auto it = impl->nodes.find(identity);
              // Only the connection being closed leaves; a newer one stays.
              if (it != impl->nodes.end() && it->second.connection == weak.lock()) {
                impl->nodes.erase(it);
                // Expected when this coordinator is the one closing.
                impl->log->log(impl->stopping ? spdlog::level::info : spdlog::level::warn,
                               "node={} event=disconnected reason=\"{}\"", identity,
                               reason);
              }
              impl->changed.notify_all();
            });
        std::shared_ptr<protocol::Connection> replaced;
        {
          std::lock_guard lock(impl->mutex);
          auto& entry = impl->nodes[identity];
          replaced = entry.connection;
          entry.connection = connection;
          entry.info = NodeInfo{.identity = identity,
                                .hello = hello,
                                .generation = ++impl->generations[identity]};
          impl->changed.notify_all();
        }
        if (replaced) replaced->close("replaced by a newer connection of the same node");
        impl->log->info("node={} event=joined labels=[{}] max_batch={} generation={}",
                        identity, fmt::join(hello.expert().labels(), ", "),
                        hello.policy().max_batch(), impl->generations[identity]);
      });
}

NodeRegistry::~NodeRegistry() = default;

void NodeRegistry::start() { impl_->server->start(); }

void NodeRegistry::stop(const std::string& reason) {
  impl_->stopping = true;
  impl_->server->stop();
  std::vector<std::shared_ptr<protocol::Connection>> all;
  {
    std::lock_guard lock(impl_->mutex);
    for (auto& [id, e] : impl_->nodes) all.push_back(e.connection);
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

bool NodeRegistry::is_connected(const std::string& identity) const {
  std::lock_guard lock(impl_->mutex);
  auto it = impl_->nodes.find(identity);
  return it != impl_->nodes.end() && it->second.connection->is_open();
}

std::vector<NodeInfo> NodeRegistry::wait_for_quorum(std::size_t min_nodes,
                                                    std::chrono::milliseconds timeout,
                                                    std::chrono::milliseconds settle) {
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + timeout;
  auto count = [&] {
    std::size_t n = 0;
    for (auto& [id, e] : impl_->nodes) n += e.connection->is_open();
    return n;
  };
  {
    std::unique_lock lock(impl_->mutex);
    impl_->changed.wait_until(lock, deadline, [&] { return count() >= min_nodes; });
    // With a quorum, give the rest of the roster a moment to arrive too.
    if (count() >= min_nodes && settle.count() > 0) {
      impl_->changed.wait_until(lock, std::min(deadline, std::chrono::steady_clock::now() + settle),
                                [&] { return count() >= roster_.size(); });
    }
  }
  auto present = connected();
  if (present.size() < min_nodes) {
    std::vector<std::string> names;
    for (const auto& n : present) names.push_back(n.identity);
    fail(Code::kDeadlineExceeded,
         "no quorum after {} ms: {} of the {} required nodes are connected; "
         "missing: {}",
         timeout.count(), present.size(), min_nodes,
         fmt::join(roster_.missing(names), ", "));
  }
  return present;
}

std::future<v1::Envelope> NodeRegistry::request(const std::string& identity,
                                                v1::Envelope request,
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
        Error(Code::kUnavailable, fmt::format("node '{}' is not connected", identity))));
    return p.get_future();
  }
  return c->request_async(std::move(request), deadline);
}

}  // namespace chorus::coordinator
