#include "chorus/protocol/tls_stream.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <asio/experimental/as_tuple.hpp>
#include <asio/ssl/error.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <climits>
#include <cstring>
#include <utility>

namespace chorus::protocol {
namespace {

using asio::awaitable;
using asio::use_awaitable;
using asio::experimental::as_tuple;

int clamp_int(std::size_t n) {
  return static_cast<int>(std::min<std::size_t>(n, INT_MAX));
}

// The BIO between OpenSSL and TlsStream::Buffers: reads take received bytes
// from `in`, writes append records to `out`; empty `in` means "retry later".
int buffers_read(BIO* bio, char* data, std::size_t size, std::size_t* done) {
  auto* b = static_cast<TlsStream::Buffers*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  const std::size_t n = std::min(size, b->in_end - b->in_begin);
  if (n == 0) {
    BIO_set_retry_read(bio);
    *done = 0;
    return 0;
  }
  std::memcpy(data, b->in.data() + b->in_begin, n);
  b->in_begin += n;
  *done = n;
  return 1;
}

int buffers_write(BIO* bio, const char* data, std::size_t size,
                  std::size_t* done) {
  auto* b = static_cast<TlsStream::Buffers*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  b->out.append(data, size);
  *done = size;
  return 1;
}

long buffers_ctrl(BIO* bio, int cmd, long, void*) {
  auto* b = static_cast<TlsStream::Buffers*>(BIO_get_data(bio));
  switch (cmd) {
    case BIO_CTRL_FLUSH:
      return 1;
    case BIO_CTRL_PENDING:
      return static_cast<long>(b->in_end - b->in_begin);
    case BIO_CTRL_WPENDING:
      return static_cast<long>(b->out.size());
    default:
      return 0;
  }
}

int buffers_create(BIO* bio) {
  BIO_set_init(bio, 1);
  return 1;
}

const BIO_METHOD* buffers_method() {
  static const BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
                                 "chorus tls buffers");
    BIO_meth_set_read_ex(m, buffers_read);
    BIO_meth_set_write_ex(m, buffers_write);
    BIO_meth_set_ctrl(m, buffers_ctrl);
    BIO_meth_set_create(m, buffers_create);
    return m;
  }();
  return method;
}

}  // namespace

BIO* TlsStream::make_bio(Buffers* buffers) {
  BIO* bio = BIO_new(buffers_method());
  if (bio) BIO_set_data(bio, buffers);
  return bio;
}

TlsStream::TlsStream(asio::ip::tcp::socket socket, asio::ssl::context& context)
    : socket_(std::move(socket)), buffers_(std::make_unique<Buffers>()) {
  ssl_ = SSL_new(context.native_handle());
  BIO* bio = ssl_ ? make_bio(buffers_.get()) : nullptr;
  if (!bio) {
    if (ssl_) SSL_free(ssl_);
    ssl_ = nullptr;
    throw std::system_error(static_cast<int>(ERR_get_error()),
                            asio::error::get_ssl_category(),
                            "cannot create a TLS session");
  }
  SSL_set_bio(ssl_, bio, bio);  // One BIO both ways; the SSL owns it.
  // Tickets would be written after the handshake, outside any operation
  // that flushes; chorus does not resume sessions.
  SSL_set_num_tickets(ssl_, 0);
}

TlsStream::TlsStream(const executor_type& executor, asio::ssl::context& context)
    : TlsStream(asio::ip::tcp::socket(executor), context) {}

TlsStream::TlsStream(TlsStream&& other) noexcept
    : socket_(std::move(other.socket_)),
      ssl_(std::exchange(other.ssl_, nullptr)),
      buffers_(std::move(other.buffers_)),
      sending_(std::move(other.sending_)) {}

TlsStream& TlsStream::operator=(TlsStream&& other) noexcept {
  if (this != &other) {
    release();
    socket_ = std::move(other.socket_);
    ssl_ = std::exchange(other.ssl_, nullptr);
    buffers_ = std::move(other.buffers_);
    sending_ = std::move(other.sending_);
  }
  return *this;
}

TlsStream::~TlsStream() { release(); }

void TlsStream::release() {
  if (ssl_) SSL_free(ssl_);  // Frees the BIO.
  ssl_ = nullptr;
}

std::error_code TlsStream::last_error(int ret) {
  const int kind = SSL_get_error(ssl_, ret);
  if (kind == SSL_ERROR_ZERO_RETURN) return asio::error::eof;
  if (const unsigned long e = ERR_get_error(); e != 0) {
    return {static_cast<int>(e), asio::error::get_ssl_category()};
  }
  if (kind == SSL_ERROR_SYSCALL) return asio::ssl::error::stream_truncated;
  return asio::ssl::error::unexpected_result;
}

awaitable<std::error_code> TlsStream::flush() {
  if (buffers_->out.empty()) co_return std::error_code{};
  // Records OpenSSL writes while this one is in flight (a read can answer
  // a key update) collect in `out` for the next flush.
  sending_.clear();
  std::swap(sending_, buffers_->out);
  auto [ec, n] = co_await asio::async_write(socket_, asio::buffer(sending_),
                                            as_tuple(use_awaitable));
  co_return ec;
}

awaitable<std::error_code> TlsStream::fill() {
  auto& b = *buffers_;
  if (b.in_begin == b.in_end) {
    b.in_begin = b.in_end = 0;
  } else if (b.in_begin > 0) {
    std::memmove(b.in.data(), b.in.data() + b.in_begin, b.in_end - b.in_begin);
    b.in_end -= b.in_begin;
    b.in_begin = 0;
  }
  if (b.in.size() < b.in_end + kChunk) b.in.resize(b.in_end + kChunk);
  auto [ec, n] = co_await socket_.async_read_some(
      asio::buffer(b.in.data() + b.in_end, kChunk), as_tuple(use_awaitable));
  b.in_end += n;
  if (ec == asio::error::eof &&
      !(SSL_get_shutdown(ssl_) & SSL_RECEIVED_SHUTDOWN)) {
    co_return asio::ssl::error::stream_truncated;
  }
  co_return ec;
}

awaitable<std::error_code> TlsStream::handshake(Role role) {
  if (role == Role::kClient) {
    SSL_set_connect_state(ssl_);
  } else {
    SSL_set_accept_state(ssl_);
  }
  while (true) {
    // OpenSSL's error queue is per thread, and other connections' coroutines
    // run on this thread between our steps: read it before any co_await.
    ERR_clear_error();
    const int ret = SSL_do_handshake(ssl_);
    const bool done = ret == 1;
    const bool want_read =
        !done && SSL_get_error(ssl_, ret) == SSL_ERROR_WANT_READ;
    const std::error_code error =
        done || want_read ? std::error_code{} : last_error(ret);
    // Send what the step produced (our flight, or the alert before failing).
    const std::error_code sent = co_await flush();
    if (error) co_return error;
    if (sent) co_return sent;
    if (done) co_return std::error_code{};
    if (auto ec = co_await fill(); ec) co_return ec;
  }
}

awaitable<std::tuple<std::error_code, std::size_t>> TlsStream::read_exact(
    asio::mutable_buffer buffer) {
  auto* data = static_cast<char*>(buffer.data());
  std::size_t done = 0;
  while (done < buffer.size()) {
    ERR_clear_error();
    const int ret =
        SSL_read(ssl_, data + done, clamp_int(buffer.size() - done));
    if (ret > 0) {
      done += static_cast<std::size_t>(ret);
      continue;
    }
    if (SSL_get_error(ssl_, ret) != SSL_ERROR_WANT_READ)
      co_return std::tuple{last_error(ret), done};
    if (auto ec = co_await fill(); ec) co_return std::tuple{ec, done};
  }
  co_return std::tuple{std::error_code{}, done};
}

awaitable<std::tuple<std::error_code, std::size_t>> TlsStream::write_all(
    asio::const_buffer buffer) {
  const auto* data = static_cast<const char*>(buffer.data());
  std::size_t done = 0;
  while (done < buffer.size()) {
    ERR_clear_error();
    const int ret = SSL_write(
        ssl_, data + done, clamp_int(std::min(buffer.size() - done, kChunk)));
    if (ret <= 0) co_return std::tuple{last_error(ret), done};
    if (auto ec = co_await flush(); ec) co_return std::tuple{ec, done};
    done += static_cast<std::size_t>(ret);
  }
  co_return std::tuple{std::error_code{}, done};
}

awaitable<std::error_code> TlsStream::shutdown() {
  ERR_clear_error();
  SSL_shutdown(ssl_);  // Queues close_notify; we do not wait for the peer's.
  co_return co_await flush();
}

}  // namespace chorus::protocol
