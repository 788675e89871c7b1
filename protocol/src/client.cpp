// A node's dialler: connect, handshake, Hello and Welcome, serve the
// connection, reconnect with exponential backoff and jitter.
#include <spdlog/spdlog.h>

#include <asio/co_spawn.hpp>
#include <asio/connect.hpp>
#include <asio/detached.hpp>
#include <asio/post.hpp>
#include <asio/use_future.hpp>

#include "chorus/core/log.hpp"
#include "chorus/protocol/channel.hpp"
#include "envelope_io.hpp"

namespace chorus::protocol {

using namespace envelope_io;
using namespace asio::experimental::awaitable_operators;

std::chrono::milliseconds Backoff::delay(int attempt,
                                         std::mt19937_64& rng) const {
  double d = static_cast<double>(initial.count());
  for (int i = 0; i < attempt && d < max.count(); ++i) d *= multiplier;
  d = std::min(d, static_cast<double>(max.count()));
  std::uniform_real_distribution<double> u(1.0 - jitter, 1.0);
  return std::chrono::milliseconds(static_cast<std::int64_t>(d * u(rng)));
}

Client::Client(asio::io_context& io, std::string host, std::uint16_t port,
               const TlsMaterial& tls, ChannelOptions options, Backoff backoff,
               std::function<Hello()> make_hello,
               Connection::RequestHandler on_request, ConnectHandler on_connect)
    : io_(io),
      host_(std::move(host)),
      port_(port),
      server_name_(host_),
      material_(tls),
      ssl_(std::make_shared<asio::ssl::context>(
          make_client_context(tls, server_name_))),
      options_(options),
      backoff_(backoff),
      make_hello_(std::move(make_hello)),
      on_request_(std::move(on_request)),
      on_connect_(std::move(on_connect)),
      log_(log::get("protocol")),
      wait_(io) {}

void Client::set_server_name(std::string server_name) {
  if (server_name.empty() || server_name == server_name_) return;
  server_name_ = std::move(server_name);
  retired_.push_back(ssl_);
  ssl_ = std::make_shared<asio::ssl::context>(
      make_client_context(material_, server_name_));
}

void Client::set_tls_source(std::function<TlsMaterial()> source) {
  tls_source_ = std::move(source);
}

void Client::refresh_tls() {
  if (!tls_source_) return;
  try {
    TlsMaterial fresh = tls_source_();
    if (fresh == material_) return;
    auto context = std::make_shared<asio::ssl::context>(
        make_client_context(fresh, server_name_));
    retired_.push_back(std::move(ssl_));
    ssl_ = std::move(context);
    material_ = std::move(fresh);
    log_->info(
        "event=tls_reloaded reason=\"the certificate, key or CA "
        "files changed; used from this connection on\"");
  } catch (const Error& e) {
    log_->warn(
        "event=tls_reload_failed error=\"{}\" using=\"the material "
        "read before\"",
        e.what());
  }
}

void Client::start() { asio::co_spawn(io_, run(), asio::detached); }

void Client::stop() {
  stopped_ = true;
  asio::post(io_, [this] {
    wait_.cancel();
    if (auto c = connection()) c->close("node shutting down");
  });
}

std::shared_ptr<Connection> Client::connection() const {
  std::lock_guard lock(mutex_);
  return current_;
}

namespace {

// TCP connect, TLS handshake, Hello → Welcome. Throws chorus::Error.
awaitable<std::shared_ptr<Connection>> dial(
    asio::io_context& io, const std::string& host, std::uint16_t port,
    const std::string& server_name, asio::ssl::context& ssl,
    const ChannelOptions& options, const Hello& hello_body, Welcome* welcome) {
  // The caller keeps `hello_body` and `welcome` alive until dial completes.
  asio::ip::tcp::resolver resolver(io);
  auto [rec, endpoints] = co_await resolver.async_resolve(
      host, std::to_string(port), as_tuple(use_awaitable));
  CHORUS_CHECK_CODE(!rec, Code::kUnavailable, "cannot resolve '{}': {}", host,
                    rec.message());
  TlsStream stream(io.get_executor(), ssl);
  SSL_set_tlsext_host_name(stream.native_handle(), server_name.c_str());
  auto [cec, ep] = co_await asio::async_connect(
      stream.lowest_layer(), endpoints, as_tuple(use_awaitable));
  CHORUS_CHECK_CODE(!cec, Code::kUnavailable, "cannot connect to {}:{}: {}",
                    host, port, cec.message());
  auto handshake = co_await (stream.handshake(TlsStream::Role::kClient) ||
                             sleep_for(options.handshake_timeout));
  CHORUS_CHECK_CODE(handshake.index() == 0, Code::kDeadlineExceeded,
                    "TLS handshake with {}:{} timed out", host, port);
  if (auto hec = std::get<0>(handshake); hec) {
    const auto names = peer_certificate_names(stream.native_handle());
    fail(Code::kUnauthenticated, "TLS handshake with {}:{} failed: {}{}", host,
         port, hec.message(),
         names.empty()
             ? std::string()
             : fmt::format(" (dialled '{}'{}; the certificate "
                           "presented names {})",
                           host,
                           server_name == host
                               ? std::string()
                               : fmt::format(", expecting '{}'", server_name),
                           names));
  }
  v1::Envelope hello;
  *hello.mutable_hello() = encode_hello(hello_body);
  hello.mutable_hello()->set_protocol_major(kProtocolMajor);
  hello.mutable_hello()->set_protocol_minor(kProtocolMinor);
  auto wec = co_await write_envelope(stream, hello, options.max_frame_size);
  CHORUS_CHECK_CODE(!wec, Code::kUnavailable, "cannot send Hello: {}",
                    wec.message());
  auto reply = co_await (read_envelope_result(stream, options.max_frame_size) ||
                         sleep_for(options.handshake_timeout));
  CHORUS_CHECK_CODE(reply.index() == 0, Code::kDeadlineExceeded,
                    "no Welcome from {}:{} within the handshake timeout", host,
                    port);
  if (auto& error = std::get<0>(reply).error) throw *error;
  auto& first = std::get<0>(reply).envelope;
  CHORUS_CHECK_CODE(first.has_value(), Code::kUnavailable,
                    "{}:{} closed the connection after Hello", host, port);
  if (first->has_status()) {
    throw Error(static_cast<Code>(first->status().code()),
                fmt::format("the coordinator refused this client: {}",
                            first->status().message()));
  }
  CHORUS_CHECK_CODE(first->has_welcome(), Code::kFailedPrecondition,
                    "expected Welcome after Hello");
  // A task this build cannot read is refused here (INVALID_ARGUMENT).
  *welcome = decode_welcome(first->welcome());
  CHORUS_CHECK_CODE(
      welcome->protocol_major == kProtocolMajor, Code::kUnsupportedVersion,
      "the coordinator at {}:{} speaks protocol {}.{}; this build "
      "speaks {}.{} and cannot talk to another major version",
      host, port, welcome->protocol_major, welcome->protocol_minor,
      kProtocolMajor, kProtocolMinor);
  const std::string identity = peer_common_name(stream);
  std::string serial = peer_serial(stream);
  auto connection = std::make_shared<Connection>(std::move(stream), options,
                                                 identity, "protocol");
  connection->set_peer_serial(std::move(serial));
  co_return connection;
}

}  // namespace

awaitable<std::shared_ptr<Connection>> Client::connect_once() {
  Welcome welcome;
  const Hello hello = make_hello_();
  refresh_tls();
  auto ssl = ssl_;
  auto connection = co_await dial(io_, host_, port_, server_name_, *ssl,
                                  options_, hello, &welcome);
  if (on_connect_) on_connect_(connection, welcome);
  co_return connection;
}

std::shared_ptr<Connection> connect(asio::io_context& io,
                                    const std::string& host, std::uint16_t port,
                                    const TlsMaterial& tls,
                                    ChannelOptions options, Hello hello,
                                    Connection::RequestHandler on_request) {
  auto ssl =
      std::make_shared<asio::ssl::context>(make_client_context(tls, host));
  auto welcome = std::make_shared<Welcome>();
  auto future = asio::co_spawn(
      io, dial(io, host, port, host, *ssl, options, hello, welcome.get()),
      asio::use_future);
  auto connection =
      future.get();  // Throws what dial threw; `hello` outlives it.
  // The context must outlive the connection's SSL session: it is kept by
  // the close handler, which the connection holds until it closes.
  connection->start(std::move(on_request), [ssl](const std::string&) {});
  return connection;
}

awaitable<void> Client::run() {
  std::mt19937_64 rng(std::random_device{}());
  int attempt = 0;
  std::string last_refusal;  // Said once; the same again is debug.
  while (!stopped_) {
    bool refused = false;
    try {
      auto connection = co_await connect_once();
      attempt = 0;
      ++sessions_;
      {
        std::lock_guard lock(mutex_);
        current_ = connection;
      }
      log_->info("peer={} event=connected host={} port={}",
                 connection->peer_identity(), host_, port_);
      asio::steady_timer closed(io_, Clock::time_point::max());
      // Moving the expiry to the past wakes the wait below, and makes a wait
      // that has not started yet complete at once.
      connection->start(on_request_, [&closed, this](const std::string&) {
        asio::post(io_,
                   [&closed] { closed.expires_at(Clock::time_point::min()); });
      });
      co_await closed.async_wait(as_tuple(use_awaitable));
      std::lock_guard lock(mutex_);
      current_.reset();
    } catch (const Error& e) {
      // Retrying cannot help until someone changes the roster, the task or
      // a binary: keep trying, slowly, and say it once.
      // An unauthenticated handshake (a revoked or expired certificate, a
      // CA that does not match) needs new files: slow too.
      refused = e.code() == Code::kPermissionDenied ||
                e.code() == Code::kUnsupportedVersion ||
                e.code() == Code::kInvalidArgument ||
                e.code() == Code::kUnauthenticated;
      const bool again = refused && e.what() == last_refusal;
      log_->log(again ? spdlog::level::debug : spdlog::level::warn,
                "event=connect_failed host={} port={} attempt={} code={} "
                "error=\"{}\"",
                host_, port_, attempt + 1, code_name(e.code()), e.what());
      if (refused && !again) {
        log_->warn(
            "event=refused_waiting retry_every_s={} reason=\"refused by the "
            "coordinator; trying again every {} s until it admits this party "
            "(further identical refusals are not logged)\"",
            backoff_.refused.count() / 1000, backoff_.refused.count() / 1000);
      }
      last_refusal = refused ? e.what() : "";
    }
    if (stopped_) break;
    const auto delay =
        refused ? backoff_.refused : backoff_.delay(attempt++, rng);
    log_->log(refused ? spdlog::level::debug : spdlog::level::info,
              "event=reconnect_wait delay_ms={}", delay.count());
    wait_.expires_after(delay);
    co_await wait_.async_wait(as_tuple(use_awaitable));
  }
}

}  // namespace chorus::protocol
