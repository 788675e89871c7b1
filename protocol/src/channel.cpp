#include "chorus/protocol/channel.hpp"

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include <array>
#include <asio/co_spawn.hpp>
#include <asio/connect.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/post.hpp>
#include <asio/read.hpp>
#include <asio/ssl/host_name_verification.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/use_future.hpp>
#include <asio/write.hpp>
#include <iterator>

#include "chorus/core/fs.hpp"
#include "chorus/core/log.hpp"

namespace chorus::protocol {
namespace {

using asio::awaitable;
using asio::use_awaitable;
using asio::experimental::as_tuple;
using namespace asio::experimental::awaitable_operators;
using Clock = std::chrono::steady_clock;

template <typename S>
constexpr bool kIsTls = std::is_same_v<S, TlsStream>;

constexpr auto kGoodbyeGrace = std::chrono::milliseconds(1000);

awaitable<void> sleep_for(std::chrono::milliseconds d) {
  asio::steady_timer timer(co_await asio::this_coro::executor, d);
  co_await timer.async_wait(as_tuple(use_awaitable));
}

bool is_benign_close(const std::error_code& ec) {
  return ec == asio::error::eof || ec == asio::ssl::error::stream_truncated ||
         ec == asio::error::connection_reset ||
         ec == asio::error::operation_aborted || ec == asio::error::broken_pipe;
}

std::string frame_bytes(const v1::Envelope& envelope, std::uint32_t max) {
  const std::size_t size = envelope.ByteSizeLong();
  auto header = encode_frame_header(size, max);
  std::string out(kFrameHeaderSize + size, '\0');
  std::copy(header.begin(), header.end(), out.begin());
  envelope.SerializeToArray(out.data() + kFrameHeaderSize,
                            static_cast<int>(size));
  return out;
}

// One frame. Empty on a clean end of stream before a frame starts; throws
// chorus::Error for everything a peer can get wrong.
// Exact reads and whole writes, on TLS and (for benchmarks) plain TCP.
awaitable<std::tuple<std::error_code, std::size_t>> read_exact(
    asio::ip::tcp::socket& socket, asio::mutable_buffer buffer) {
  co_return co_await asio::async_read(socket, buffer, as_tuple(use_awaitable));
}
awaitable<std::tuple<std::error_code, std::size_t>> read_exact(
    TlsStream& stream, asio::mutable_buffer buffer) {
  co_return co_await stream.read_exact(buffer);
}
awaitable<std::tuple<std::error_code, std::size_t>> write_all(
    asio::ip::tcp::socket& socket, asio::const_buffer buffer) {
  co_return co_await asio::async_write(socket, buffer, as_tuple(use_awaitable));
}
awaitable<std::tuple<std::error_code, std::size_t>> write_all(
    TlsStream& stream, asio::const_buffer buffer) {
  co_return co_await stream.write_all(buffer);
}

template <typename Stream>
awaitable<std::optional<v1::Envelope>> read_envelope(Stream& stream,
                                                     std::uint32_t max) {
  std::array<std::uint8_t, kFrameHeaderSize> header{};
  auto [ec, n] = co_await read_exact(stream, asio::buffer(header));
  if (ec) {
    if (n == 0 && is_benign_close(ec)) co_return std::nullopt;
    fail(n == 0 ? Code::kUnavailable : Code::kDataLoss,
         "connection failed while reading a frame header: {}", ec.message());
  }
  const std::uint32_t size = decode_frame_header(header, max);
  std::string body(size, '\0');
  auto [ec2, n2] = co_await read_exact(stream, asio::buffer(body));
  if (ec2) {
    fail(Code::kDataLoss,
         "truncated frame: the connection ended after {} of {} bytes", n2,
         size);
  }
  v1::Envelope envelope;
  if (!envelope.ParseFromString(body)) {
    fail(Code::kInvalidArgument,
         "a frame of {} bytes is not a chorus.v1.Envelope", size);
  }
  if (envelope.body_case() == v1::Envelope::BODY_NOT_SET) {
    fail(Code::kInvalidArgument,
         "the envelope has no body this peer knows (request_id={})",
         envelope.request_id());
  }
  co_return envelope;
}

// `read_envelope` that reports errors as a value: `||` with a timer waits
// for the first *successful* operation, so a throwing read would otherwise
// look like a timeout.
struct ReadResult {
  std::optional<v1::Envelope> envelope;
  std::optional<Error> error;
};

awaitable<ReadResult> read_envelope_result(TlsStream& stream,
                                           std::uint32_t max) {
  ReadResult result;
  try {
    result.envelope = co_await read_envelope(stream, max);
  } catch (const Error& e) {
    result.error = e;
  }
  co_return result;
}

// Writes one envelope directly (before a Connection owns the stream).
awaitable<std::error_code> write_envelope(TlsStream& stream,
                                          const v1::Envelope& e,
                                          std::uint32_t max) {
  auto bytes = frame_bytes(e, max);
  auto [ec, n] = co_await stream.write_all(asio::buffer(bytes));
  co_return ec;
}

std::string peer_common_name(TlsStream& stream) {
  X509* cert = SSL_get1_peer_certificate(stream.native_handle());
  if (!cert) return {};
  std::string cn;
  X509_NAME* name = X509_get_subject_name(cert);
  int idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (idx >= 0) {
    ASN1_STRING* data =
        X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
    cn.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(data)),
              ASN1_STRING_length(data));
  }
  X509_free(cert);
  return cn;
}

std::string endpoint_string(const asio::ip::tcp::socket& socket) {
  std::error_code ec;
  auto ep = socket.remote_endpoint(ec);
  return ec ? std::string("?")
            : fmt::format("{}:{}", ep.address().to_string(), ep.port());
}

void configure_common(asio::ssl::context& ctx, const TlsMaterial& tls) {
  try {
    ctx.set_options(
        asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
        asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
        asio::ssl::context::no_tlsv1_1);
    SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_2_VERSION);
    ctx.add_certificate_authority(asio::buffer(tls.ca_pem));
    ctx.use_certificate_chain(asio::buffer(tls.cert_pem));
    ctx.use_private_key(asio::buffer(tls.key_pem), asio::ssl::context::pem);
  } catch (const std::system_error& e) {
    fail(Code::kInvalidArgument, "unusable TLS material: {}", e.what());
  }
  CHORUS_CHECK(SSL_CTX_check_private_key(ctx.native_handle()) == 1,
               "the private key does not match the certificate");
}

}  // namespace

v1::Envelope make_status(Code code, const std::string& message,
                         std::uint64_t request_id) {
  v1::Envelope e;
  e.set_request_id(request_id);
  e.mutable_status()->set_code(static_cast<v1::Code>(code));
  e.mutable_status()->set_message(message);
  return e;
}

TlsMaterial TlsMaterial::load(const std::filesystem::path& ca,
                              const std::filesystem::path& cert,
                              const std::filesystem::path& key) {
  return {read_file(ca), read_file(cert), read_file(key)};
}

asio::ssl::context make_server_context(const TlsMaterial& tls) {
  asio::ssl::context ctx(asio::ssl::context::tls_server);
  configure_common(ctx, tls);
  ctx.set_verify_mode(asio::ssl::verify_peer |
                      asio::ssl::verify_fail_if_no_peer_cert);
  return ctx;
}

asio::ssl::context make_client_context(const TlsMaterial& tls,
                                       const std::string& server_host) {
  asio::ssl::context ctx(asio::ssl::context::tls_client);
  configure_common(ctx, tls);
  ctx.set_verify_mode(asio::ssl::verify_peer);
  ctx.set_verify_callback(asio::ssl::host_name_verification(server_host));
  return ctx;
}

// --- Connection --------------------------------------------------------------

template <typename S>
BasicConnection<S>::BasicConnection(Stream stream, ChannelOptions options,
                                    std::string peer_identity,
                                    std::string log_name)
    : stream_(std::move(stream)),
      strand_(asio::make_strand(stream_.get_executor())),
      options_(options),
      peer_identity_(std::move(peer_identity)),
      log_(log::get(log_name)),
      write_signal_(strand_, Clock::time_point::max()),
      close_deadline_(strand_),
      heartbeat_tick_(strand_) {}

template <typename S>
BasicConnection<S>::~BasicConnection() = default;

template <typename S>
void BasicConnection<S>::start(RequestHandler on_request,
                               CloseHandler on_close) {
  on_request_ = std::move(on_request);
  on_close_ = std::move(on_close);
  open_ = true;
  last_sent_ = last_received_ = Clock::now();
  auto self = this->shared_from_this();
  auto report = [self](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      self->log_->error("peer={} event=coroutine_failed error={}",
                        self->peer_identity_, ex.what());
      asio::post(self->strand_, [self] { self->shutdown("internal error"); });
    }
  };
  asio::co_spawn(strand_, reader(), report);
  asio::co_spawn(strand_, writer(), report);
  asio::co_spawn(strand_, heartbeat(), report);
}

template <typename S>
awaitable<void> BasicConnection<S>::reader() {
  auto self = this->shared_from_this();
  while (!closing_) {
    std::optional<v1::Envelope> envelope;
    try {
      envelope = co_await read_envelope(stream_, options_.max_frame_size);
    } catch (const Error& e) {
      if (closing_) break;
      log_->warn("peer={} event=bad_frame code={} error=\"{}\"", peer_identity_,
                 code_name(e.code()), e.what());
      if (e.code() != Code::kUnavailable && e.code() != Code::kDataLoss) {
        enqueue(make_status(e.code(), e.what()));
      }
      shutdown(e.what());
      break;
    }
    if (!envelope) {
      shutdown("the peer closed the connection");
      break;
    }
    last_received_ = Clock::now();
    if (options_.on_receive) options_.on_receive(*envelope);
    const auto id = envelope->request_id();
    switch (envelope->body_case()) {
      case v1::Envelope::kHeartbeat:
        break;
      case v1::Envelope::kGoodbye:
        shutdown(fmt::format("the peer said goodbye: {}",
                             envelope->goodbye().reason()));
        break;
      case v1::Envelope::kPredictRequest:
      case v1::Envelope::kModelPush:
      case v1::Envelope::kAdaptRequest:
        if (id == 0) {
          enqueue(make_status(Code::kInvalidArgument,
                              "a request needs a non-zero request_id"));
        } else {
          asio::co_spawn(strand_, serve(std::move(*envelope)), asio::detached);
        }
        break;
      case v1::Envelope::kStatus:
      case v1::Envelope::kPredictResponse:
      case v1::Envelope::kAdaptResponse: {
        auto it = pending_.find(id);
        if (it != pending_.end()) {
          *it->second.reply = std::move(*envelope);
          it->second.timer->cancel();
          pending_.erase(it);
        } else if (envelope->has_status() && id == 0) {
          log_->warn("peer={} event=peer_status code={} message=\"{}\"",
                     peer_identity_,
                     code_name(static_cast<Code>(envelope->status().code())),
                     envelope->status().message());
        } else {
          log_->debug("peer={} event=late_reply request_id={}", peer_identity_,
                      id);
        }
        break;
      }
      default:
        enqueue(
            make_status(Code::kFailedPrecondition,
                        "Hello and Welcome are only valid at the start of a "
                        "connection",
                        id));
        break;
    }
  }
}

template <typename S>
awaitable<void> BasicConnection<S>::serve(v1::Envelope request) {
  auto self = this->shared_from_this();
  v1::Envelope reply;
  try {
    reply = co_await on_request_(request);
  } catch (const Error& e) {
    reply = make_status(e.code(), e.what());
  } catch (const std::exception& e) {
    log_->error("peer={} request_id={} event=handler_failed error={}",
                peer_identity_, request.request_id(), e.what());
    reply = make_status(Code::kInternal, e.what());
  }
  reply.set_request_id(request.request_id());
  enqueue(reply);
}

template <typename S>
awaitable<void> BasicConnection<S>::writer() {
  auto self = this->shared_from_this();
  while (true) {
    if (queue_.empty()) {
      if (closing_) break;
      write_signal_.expires_at(Clock::time_point::max());
      co_await write_signal_.async_wait(as_tuple(use_awaitable));
      continue;
    }
    writing_ = true;
    auto [ec, n] = co_await write_all(stream_, asio::buffer(queue_.front()));
    writing_ = false;
    if (ec) {
      if (!closing_) {
        log_->warn("peer={} event=write_failed error=\"{}\"", peer_identity_,
                   ec.message());
      }
      queue_.clear();
      queued_bytes_ = 0;
      shutdown("write failed");
      break;
    }
    queued_bytes_ -= queue_.front().size();
    queue_.pop_front();
    last_sent_ = Clock::now();
  }
  if constexpr (kIsTls<S>) {
    // Graceful TLS close, bounded in time; then the socket goes.
    co_await (stream_.shutdown() || sleep_for(kGoodbyeGrace));
  }
  std::error_code ignored;
  stream_.lowest_layer().close(ignored);
  close_deadline_.cancel();
}

template <typename S>
awaitable<void> BasicConnection<S>::heartbeat() {
  auto self = this->shared_from_this();
  auto& timer = heartbeat_tick_;
  const auto tick = std::max(
      std::chrono::milliseconds(10),
      std::min(options_.heartbeat_interval, options_.idle_timeout) / 4);
  while (!closing_) {
    timer.expires_after(tick);
    co_await timer.async_wait(as_tuple(use_awaitable));
    if (closing_) break;
    const auto now = Clock::now();
    if (now - last_received_ > options_.idle_timeout) {
      log_->warn("peer={} event=idle_timeout idle_ms={}", peer_identity_,
                 std::chrono::duration_cast<std::chrono::milliseconds>(
                     now - last_received_)
                     .count());
      shutdown("idle timeout");
      break;
    }
    if (now - last_sent_ >= options_.heartbeat_interval && queue_.empty()) {
      v1::Envelope beat;
      beat.mutable_heartbeat()->set_sent_unix_ms(static_cast<std::uint64_t>(
          std::chrono::duration_cast<std::chrono::milliseconds>(
              std::chrono::system_clock::now().time_since_epoch())
              .count()));
      enqueue(beat);
      last_sent_ = now;  // Do not queue another before this one is out.
    }
  }
}

template <typename S>
void BasicConnection<S>::enqueue(const v1::Envelope& envelope) {
  if (closing_ && !envelope.has_status() && !envelope.has_goodbye()) return;
  std::string bytes;
  try {
    bytes = frame_bytes(envelope, options_.max_frame_size);
  } catch (const Error& e) {
    log_->error("peer={} event=frame_too_large error=\"{}\"", peer_identity_,
                e.what());
    if (envelope.request_id() != 0 && !envelope.has_status()) {
      enqueue(make_status(e.code(), e.what(), envelope.request_id()));
    }
    return;
  }
  if (queued_bytes_ + bytes.size() > options_.max_queued_bytes) {
    log_->warn(
        "peer={} event=backpressure queued_bytes={} limit={} action=close",
        peer_identity_, queued_bytes_, options_.max_queued_bytes);
    // Drop what is queued, but not the frame being written: the async write
    // still reads it (cancelled below, the writer then drops it).
    if (writing_ && !queue_.empty()) {
      queue_.erase(std::next(queue_.begin()), queue_.end());
      queued_bytes_ = queue_.front().size();
    } else {
      queue_.clear();
      queued_bytes_ = 0;
    }
    shutdown("the peer does not read its messages");
    std::error_code ignored;
    stream_.lowest_layer().cancel(ignored);  // Abort the blocked write.
    return;
  }
  queued_bytes_ += bytes.size();
  queue_.push_back(std::move(bytes));
  write_signal_.cancel();
}

template <typename S>
std::future<v1::Envelope> BasicConnection<S>::request_async(
    v1::Envelope request, std::chrono::milliseconds deadline) {
  auto self = this->shared_from_this();
  return asio::co_spawn(
      strand_,
      [self, request = std::move(request),
       deadline]() mutable -> awaitable<v1::Envelope> {
        co_return co_await self->request(std::move(request), deadline);
      },
      asio::use_future);
}

template <typename S>
awaitable<v1::Envelope> BasicConnection<S>::request(
    v1::Envelope request, std::chrono::milliseconds deadline) {
  auto self = this->shared_from_this();
  if (!open_ || closing_) {
    fail(Code::kUnavailable, "the connection to '{}' is closed",
         peer_identity_);
  }
  const std::uint64_t id = next_request_id_++;
  request.set_request_id(id);
  asio::steady_timer timer(strand_, deadline);
  std::optional<v1::Envelope> reply;
  pending_[id] = Pending{&timer, &reply};
  enqueue(request);
  // The frame is queued; do not hold the message's payload (a batch of
  // inputs) while waiting for the reply. (Move-assignment frees it; Clear()
  // would keep the string capacity.)
  request = v1::Envelope();
  co_await timer.async_wait(as_tuple(use_awaitable));
  pending_.erase(id);
  if (!reply) {
    if (!open_) {
      fail(Code::kUnavailable,
           "the connection to '{}' closed before request {} was answered",
           peer_identity_, id);
    }
    fail(Code::kDeadlineExceeded, "'{}' did not answer request {} within {} ms",
         peer_identity_, id, deadline.count());
  }
  if (reply->has_status() && reply->status().code() != v1::CODE_OK) {
    throw Error(static_cast<Code>(reply->status().code()),
                reply->status().message());
  }
  co_return std::move(*reply);
}

template <typename S>
void BasicConnection<S>::send(v1::Envelope envelope) {
  auto self = this->shared_from_this();
  asio::post(strand_, [self, envelope = std::move(envelope)] {
    self->enqueue(envelope);
  });
}

template <typename S>
void BasicConnection<S>::close(const std::string& reason) {
  auto self = this->shared_from_this();
  asio::post(strand_, [self, reason] {
    if (self->closing_) return;
    v1::Envelope bye;
    bye.mutable_goodbye()->set_reason(reason);
    self->enqueue(bye);
    self->shutdown(reason);
  });
}

template <typename S>
void BasicConnection<S>::shutdown(const std::string& reason) {
  if (closing_) return;
  closing_ = true;
  open_ = false;
  log_->info("peer={} event=closed reason=\"{}\"", peer_identity_, reason);
  for (auto& [id, pending] : pending_) pending.timer->cancel();
  write_signal_.cancel();
  heartbeat_tick_.cancel();
  // Whatever is still queued gets a grace period (the writer flushes it and
  // closes the socket); then the socket goes regardless.
  auto self = this->shared_from_this();
  close_deadline_.expires_after(kGoodbyeGrace * 2);
  close_deadline_.async_wait([self](const std::error_code& ec) {
    if (ec) return;  // The writer closed the socket in time.
    std::error_code ignored;
    self->stream_.lowest_layer().close(ignored);
  });
  if (on_close_) {
    auto handler = std::move(on_close_);
    on_close_ = nullptr;
    handler(reason);
  }
}

template class BasicConnection<TlsStream>;
template class BasicConnection<asio::ip::tcp::socket>;

// --- Server ------------------------------------------------------------------

Server::Server(asio::io_context& io, asio::ip::tcp::endpoint endpoint,
               const TlsMaterial& tls, ChannelOptions options,
               v1::Welcome welcome, AdmitHandler on_admit,
               ConnectHandler on_connect)
    : io_(io),
      ssl_(make_server_context(tls)),
      acceptor_(io),
      options_(options),
      welcome_(std::move(welcome)),
      on_admit_(std::move(on_admit)),
      on_connect_(std::move(on_connect)),
      log_(log::get("protocol")) {
  std::error_code ec;
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  CHORUS_CHECK_CODE(!ec, Code::kUnavailable, "cannot listen on {}:{}: {}",
                    endpoint.address().to_string(), endpoint.port(),
                    ec.message());
  port_ = acceptor_.local_endpoint().port();
  welcome_.set_protocol_major(kProtocolMajor);
  welcome_.set_protocol_minor(kProtocolMinor);
  welcome_.set_heartbeat_interval_ms(
      static_cast<std::uint32_t>(options_.heartbeat_interval.count()));
  welcome_.set_idle_timeout_ms(
      static_cast<std::uint32_t>(options_.idle_timeout.count()));
}

void Server::start() {
  log_->info("event=listening port={}", port_);
  asio::co_spawn(io_, accept_loop(), asio::detached);
}

void Server::stop() {
  asio::post(io_, [this] {
    std::error_code ignored;
    acceptor_.close(ignored);
  });
}

awaitable<void> Server::accept_loop() {
  while (acceptor_.is_open()) {
    auto [ec, socket] =
        co_await acceptor_.async_accept(as_tuple(use_awaitable));
    if (ec) {
      if (ec == asio::error::operation_aborted) break;
      log_->warn("event=accept_failed error=\"{}\"", ec.message());
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
  const std::string from = endpoint_string(socket);
  auto stream = std::make_unique<TlsStream>(std::move(socket), ssl_);
  auto handshake = co_await (stream->handshake(TlsStream::Role::kServer) ||
                             sleep_for(options_.handshake_timeout));
  if (handshake.index() == 1) {
    log_->warn("from={} event=tls_refused error=\"handshake timed out\"", from);
    co_return;
  }
  if (auto ec = std::get<0>(handshake); ec) {
    log_->warn("from={} event=tls_refused error=\"{}\"", from, ec.message());
    co_return;
  }
  const std::string identity = peer_common_name(*stream);

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
  Admission admission = on_admit_(identity, hello->hello());
  if (!admission.admit) {
    co_await refuse(admission.code, admission.message);
    co_return;
  }
  log_->info("from={} peer={} event=admitted", from, identity);
  auto connection = std::make_shared<Connection>(std::move(*stream), options_,
                                                 identity, "protocol");
  v1::Envelope welcome;
  *welcome.mutable_welcome() = welcome_;
  connection->send(welcome);
  on_connect_(connection, hello->hello());
}

// --- Client ------------------------------------------------------------------

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
               std::function<v1::Hello()> make_hello,
               Connection::RequestHandler on_request, ConnectHandler on_connect)
    : io_(io),
      host_(std::move(host)),
      port_(port),
      ssl_(make_client_context(tls, host_)),
      options_(options),
      backoff_(backoff),
      make_hello_(std::move(make_hello)),
      on_request_(std::move(on_request)),
      on_connect_(std::move(on_connect)),
      log_(log::get("protocol")),
      wait_(io) {}

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
    asio::ssl::context& ssl, const ChannelOptions& options,
    const v1::Hello& hello_body, v1::Welcome* welcome) {
  // The caller keeps `hello_body` and `welcome` alive until dial completes.
  asio::ip::tcp::resolver resolver(io);
  auto [rec, endpoints] = co_await resolver.async_resolve(
      host, std::to_string(port), as_tuple(use_awaitable));
  CHORUS_CHECK_CODE(!rec, Code::kUnavailable, "cannot resolve '{}': {}", host,
                    rec.message());
  TlsStream stream(io.get_executor(), ssl);
  SSL_set_tlsext_host_name(stream.native_handle(), host.c_str());
  auto [cec, ep] = co_await asio::async_connect(
      stream.lowest_layer(), endpoints, as_tuple(use_awaitable));
  CHORUS_CHECK_CODE(!cec, Code::kUnavailable, "cannot connect to {}:{}: {}",
                    host, port, cec.message());
  auto handshake = co_await (stream.handshake(TlsStream::Role::kClient) ||
                             sleep_for(options.handshake_timeout));
  CHORUS_CHECK_CODE(handshake.index() == 0, Code::kDeadlineExceeded,
                    "TLS handshake with {}:{} timed out", host, port);
  if (auto hec = std::get<0>(handshake); hec) {
    fail(Code::kUnauthenticated, "TLS handshake with {}:{} failed: {}", host,
         port, hec.message());
  }
  v1::Envelope hello;
  *hello.mutable_hello() = hello_body;
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
  *welcome = first->welcome();
  const std::string identity = peer_common_name(stream);
  co_return std::make_shared<Connection>(std::move(stream), options, identity,
                                         "protocol");
}

}  // namespace

awaitable<std::shared_ptr<Connection>> Client::connect_once() {
  v1::Welcome welcome;
  const v1::Hello hello = make_hello_();
  auto connection =
      co_await dial(io_, host_, port_, ssl_, options_, hello, &welcome);
  if (on_connect_) on_connect_(connection, welcome);
  co_return connection;
}

std::shared_ptr<Connection> connect(asio::io_context& io,
                                    const std::string& host, std::uint16_t port,
                                    const TlsMaterial& tls,
                                    ChannelOptions options, v1::Hello hello,
                                    Connection::RequestHandler on_request) {
  auto ssl =
      std::make_shared<asio::ssl::context>(make_client_context(tls, host));
  auto welcome = std::make_shared<v1::Welcome>();
  auto future = asio::co_spawn(
      io, dial(io, host, port, *ssl, options, hello, welcome.get()),
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
  while (!stopped_) {
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
      log_->warn(
          "event=connect_failed host={} port={} attempt={} code={} "
          "error=\"{}\"",
          host_, port_, attempt + 1, code_name(e.code()), e.what());
      if (e.code() == Code::kPermissionDenied ||
          e.code() == Code::kUnsupportedVersion ||
          e.code() == Code::kInvalidArgument) {
        // Retrying cannot help until someone changes the roster, the task or
        // a binary; keep trying, slowly.
        attempt = std::max(attempt, 20);
      }
    }
    if (stopped_) break;
    const auto delay = backoff_.delay(attempt++, rng);
    log_->info("event=reconnect_wait delay_ms={}", delay.count());
    wait_.expires_after(delay);
    co_await wait_.async_wait(as_tuple(use_awaitable));
  }
}

}  // namespace chorus::protocol
