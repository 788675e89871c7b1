// The coordinator's mTLS server: accept, handshake within a deadline,
// Hello, admission, Welcome or a refusal naming why.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <asio/co_spawn.hpp>
#include <asio/connect.hpp>
#include <asio/detached.hpp>
#include <asio/ip/v6_only.hpp>
#include <asio/post.hpp>
#include <asio/use_future.hpp>
#include <cerrno>

#include "chorus/core/log.hpp"
#include "chorus/protocol/channel.hpp"
#include "envelope_io.hpp"

namespace chorus::protocol {

using namespace envelope_io;
using namespace asio::experimental::awaitable_operators;

Server::Server(asio::io_context& io, asio::ip::tcp::endpoint endpoint,
               const TlsMaterial& tls, ChannelOptions options, Welcome welcome,
               AdmitHandler on_admit, ConnectHandler on_connect)
    : Server(io, std::vector<asio::ip::tcp::endpoint>{endpoint}, tls, options,
             std::move(welcome), std::move(on_admit), std::move(on_connect)) {}

Server::Server(asio::io_context& io,
               std::vector<asio::ip::tcp::endpoint> endpoints,
               const TlsMaterial& tls, ChannelOptions options, Welcome welcome,
               AdmitHandler on_admit, ConnectHandler on_connect)
    : io_(io),
      ssl_(std::make_shared<asio::ssl::context>(make_server_context(tls))),
      options_(options),
      welcome_(std::move(welcome)),
      on_admit_(std::move(on_admit)),
      on_connect_(std::move(on_connect)),
      log_(log::get("protocol")) {
  CHORUS_CHECK(!endpoints.empty(), "a server needs an address to listen on");
  port_ = endpoints.front().port();
  for (auto endpoint : endpoints) {
    endpoint.port(port_);
    auto acceptor = std::make_unique<asio::ip::tcp::acceptor>(io);
    std::error_code ec;
    acceptor->open(endpoint.protocol(), ec);
    if (!ec) acceptor->set_option(asio::socket_base::reuse_address(true), ec);
    // "::" beside "0.0.0.0" on one port: each family its own socket.
    if (!ec && endpoint.address().is_v6()) {
      acceptor->set_option(asio::ip::v6_only(true), ec);
    }
    if (!ec) acceptor->bind(endpoint, ec);
    if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
    CHORUS_CHECK_CODE(
        !ec, Code::kUnavailable, "cannot listen on {}: {}",
        endpoint.address().is_v6()
            ? fmt::format("[{}]:{}", endpoint.address().to_string(),
                          endpoint.port())
            : fmt::format("{}:{}", endpoint.address().to_string(),
                          endpoint.port()),
        ec.message());
    port_ = acceptor->local_endpoint().port();
    acceptors_.push_back(std::move(acceptor));
  }
  welcome_.protocol_major = kProtocolMajor;
  welcome_.protocol_minor = kProtocolMinor;
  welcome_.heartbeat_interval_ms =
      static_cast<std::uint32_t>(options_.heartbeat_interval.count());
  welcome_.idle_timeout_ms =
      static_cast<std::uint32_t>(options_.idle_timeout.count());
}

void Server::start() {
  for (auto& acceptor : acceptors_) {
    const auto at = acceptor->local_endpoint();
    log_->info("event=listening address={} port={}", at.address().to_string(),
               at.port());
    asio::co_spawn(io_, accept_loop(*acceptor), asio::detached);
  }
}

std::shared_ptr<asio::ssl::context> Server::context() const {
  std::lock_guard lock(ssl_mutex_);
  return ssl_;
}

void Server::reload_tls(const TlsMaterial& tls) {
  auto fresh = std::make_shared<asio::ssl::context>(make_server_context(tls));
  std::lock_guard lock(ssl_mutex_);
  ssl_ = std::move(fresh);
}

void Server::stop() {
  asio::post(io_, [this] {
    for (auto& acceptor : acceptors_) {
      std::error_code ignored;
      acceptor->close(ignored);
    }
  });
}

namespace {

// Counts a connection as unauthenticated for as long as it lives.
struct Pending {
  std::shared_ptr<std::atomic<std::size_t>> count;
  explicit Pending(std::shared_ptr<std::atomic<std::size_t>> c)
      : count(std::move(c)) {
    ++*count;
  }
  Pending(const Pending&) = delete;
  Pending& operator=(const Pending&) = delete;
  ~Pending() { --*count; }
};

// At most one log line per kind every `kEvery`, saying how many it stands
// for: a flood of failures must not become a flood of log lines.
class Throttled {
 public:
  static constexpr std::chrono::seconds kEvery{10};
  // Whether to log now; `*suppressed` is how many were not logged since.
  bool due(std::uint64_t* suppressed) {
    const auto now = std::chrono::steady_clock::now();
    ++count_;
    if (now - last_ < kEvery && last_.time_since_epoch().count() != 0) {
      return false;
    }
    last_ = now;
    *suppressed = count_ - 1;
    count_ = 0;
    return true;
  }

 private:
  std::chrono::steady_clock::time_point last_{};
  std::uint64_t count_ = 0;
};

// Errors that mean a resource ran out (descriptors, buffers, memory): the
// listener backs off instead of spinning on them.
bool exhausted(const std::error_code& ec) {
  return ec == asio::error::no_descriptors || ec.value() == ENFILE ||
         ec == asio::error::no_buffer_space || ec == asio::error::no_memory;
}

}  // namespace

awaitable<void> Server::accept_loop(asio::ip::tcp::acceptor& acceptor) {
  constexpr std::chrono::milliseconds kFirstBackoff{10}, kMaxBackoff{1000};
  std::chrono::milliseconds backoff{0};
  Throttled failed_log, full_log;
  while (acceptor.is_open()) {
    auto [ec, socket] = co_await acceptor.async_accept(as_tuple(use_awaitable));
    if (ec) {
      if (ec == asio::error::operation_aborted) break;
      // Out of descriptors the listener would be woken again at once: wait,
      // longer each time, and say so once in a while.
      backoff = exhausted(ec)
                    ? std::clamp(backoff * 2, kFirstBackoff, kMaxBackoff)
                    : kFirstBackoff;
      std::uint64_t suppressed = 0;
      if (failed_log.due(&suppressed)) {
        log_->warn(
            "event=accept_failed error=\"{}\" backoff_ms={} "
            "not_logged_since_last={}",
            ec.message(), backoff.count(), suppressed);
      }
      co_await sleep_for(backoff);
      continue;
    }
    backoff = std::chrono::milliseconds{0};
    if (pending_->load() >= options_.max_unauthenticated) {
      std::uint64_t suppressed = 0;
      if (full_log.due(&suppressed)) {
        log_->warn(
            "from={} event=connection_refused reason=\"{} connections are "
            "already unauthenticated (limit)\" not_logged_since_last={}",
            endpoint_string(socket), pending_->load(), suppressed);
      }
      std::error_code ignored;
      socket.close(ignored);
      continue;
    }
    asio::co_spawn(
        io_, admit(std::move(socket)), [log = log_](std::exception_ptr e) {
          if (!e) return;
          try {
            std::rethrow_exception(e);
          } catch (const std::exception& ex) {
            log->error("event=admission_failed error=\"{}\"", ex.what());
          }
        });
  }
}

awaitable<void> Server::admit(asio::ip::tcp::socket socket) {
  Pending pending(pending_);
  const std::string from = endpoint_string(socket);
  // This handshake's context: a reload meanwhile does not free it.
  const auto ssl = context();
  auto stream = std::make_unique<TlsStream>(std::move(socket), *ssl);
  auto handshake = co_await (stream->handshake(TlsStream::Role::kServer) ||
                             sleep_for(options_.handshake_timeout));
  if (handshake.index() == 1) {
    log_->warn("from={} event=tls_refused error=\"handshake timed out\"", from);
    co_return;
  }
  if (auto ec = std::get<0>(handshake); ec) {
    const auto peer = peer_certificate_names(stream->native_handle());
    log_->warn("from={} event=tls_refused error=\"{}\"{}", from, ec.message(),
               peer.empty() ? std::string()
                            : fmt::format(" certificate=\"{}\"", peer));
    co_return;
  }
  const std::string identity = peer_common_name(*stream);
  std::string serial = peer_serial(*stream);

  auto refuse = [&](Code code, const std::string& message) -> awaitable<void> {
    log_->warn("from={} peer={} event=refused code={} reason=\"{}\"", from,
               identity, code_name(code), message);
    co_await write_envelope(*stream, make_status(code, message),
                            options_.max_frame_size);
    co_await (stream->shutdown() || sleep_for(kGoodbyeGrace));
  };

  auto first =
      co_await (read_envelope_result(*stream, options_.max_frame_size) ||
                sleep_for(options_.handshake_timeout));
  if (first.index() == 1) {
    co_await refuse(Code::kDeadlineExceeded,
                    "no Hello within the handshake timeout");
    co_return;
  }
  auto& [hello, bad_hello] = std::get<0>(first);
  if (bad_hello) {
    co_await refuse(bad_hello->code(), bad_hello->what());
    co_return;
  }
  if (!hello) {
    log_->warn("from={} peer={} event=closed_before_hello", from, identity);
    co_return;
  }
  if (options_.on_receive) options_.on_receive(*hello);
  if (!hello->has_hello()) {
    co_await refuse(Code::kFailedPrecondition,
                    "the first frame must be a Hello");
    co_return;
  }
  if (hello->hello().protocol_major() != kProtocolMajor) {
    co_await refuse(
        Code::kUnsupportedVersion,
        fmt::format("protocol major version {} is not supported (this "
                    "coordinator speaks {}.{})",
                    hello->hello().protocol_major(), kProtocolMajor,
                    kProtocolMinor));
    co_return;
  }
  const Hello said = decode_hello(hello->hello());
  Admission admission = on_admit_(identity, said);
  if (!admission.admit) {
    co_await refuse(admission.code, admission.message);
    co_return;
  }
  log_->info("from={} peer={} event=admitted", from, identity);
  auto connection = std::make_shared<Connection>(std::move(*stream), options_,
                                                 identity, "protocol");
  connection->set_peer_serial(std::move(serial));
  v1::Envelope welcome;
  *welcome.mutable_welcome() = encode_welcome(welcome_);
  connection->send(welcome);
  on_connect_(connection, said);
}

}  // namespace chorus::protocol
