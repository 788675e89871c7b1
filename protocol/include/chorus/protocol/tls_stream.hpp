#pragma once

#include <asio/awaitable.hpp>
#include <asio/buffer.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/ssl/context.hpp>
#include <cstddef>
#include <memory>
#include <string>
#include <system_error>
#include <tuple>
#include <vector>

struct ssl_st;
struct bio_st;

namespace chorus::protocol {

/// A TLS connection over a TCP socket, driven by OpenSSL through a BIO over our
/// own large buffers.
///
/// Why not `asio::ssl::stream`: it moves at most one 16 KiB TLS record per
/// socket operation (its BIO pair and buffers are fixed at 17 KiB) and copies
/// each record twice between them, so a 4 MiB frame costs some 500 system
/// calls and handler dispatches on the two sides. Here a frame is encrypted
/// in chunks of `kChunk` bytes, each chunk leaves in one write, reads take
/// whatever the socket holds (up to `kChunk`), and OpenSSL reads and writes
/// our buffers directly. Same OpenSSL, same context and verification
/// (`asio::ssl::context`, including its verify callback).
///
/// Concurrency: at most one read and one write operation at a time, on one
/// strand (like `asio::ssl::stream`). Session tickets are not used.
class TlsStream {
 public:
  using executor_type = asio::ip::tcp::socket::executor_type;
  enum class Role { kClient, kServer };
  /// Plaintext bytes encrypted per socket write, and the read buffer size.
  static constexpr std::size_t kChunk = 256 * 1024;

  TlsStream(asio::ip::tcp::socket socket, asio::ssl::context& context);
  TlsStream(const executor_type& executor, asio::ssl::context& context);
  TlsStream(TlsStream&&) noexcept;
  TlsStream& operator=(TlsStream&&) noexcept;
  ~TlsStream();

  executor_type get_executor() { return socket_.get_executor(); }
  asio::ip::tcp::socket& lowest_layer() { return socket_; }
  /// The OpenSSL connection (peer certificate, SNI, ...).
  ssl_st* native_handle() const { return ssl_; }

  /// Runs the TLS handshake. A failed handshake reports OpenSSL's reason
  /// (e.g. "certificate verify failed") in the SSL error category.
  asio::awaitable<std::error_code> handshake(Role role);

  /// Reads exactly `buffer.size()` plaintext bytes. Returns the error and
  /// the bytes read: `asio::error::eof` after the peer's close_notify,
  /// `asio::ssl::error::stream_truncated` when the socket ends without one.
  asio::awaitable<std::tuple<std::error_code, std::size_t>> read_exact(
      asio::mutable_buffer buffer);

  /// Writes all of `buffer`.
  asio::awaitable<std::tuple<std::error_code, std::size_t>> write_all(
      asio::const_buffer buffer);

  /// Sends close_notify (does not wait for the peer's).
  asio::awaitable<std::error_code> shutdown();

  /// (Internal.) What OpenSSL reads from and writes to (through a BIO of our
  /// own, so records move between the socket and OpenSSL without another copy).
  struct Buffers {
    std::vector<char> in;  // Received bytes, [in_begin, in_end) not yet read.
    std::size_t in_begin = 0, in_end = 0;
    std::string out;  // Records OpenSSL wrote, not yet sent.
  };

 private:
  void release();
  /// Sends whatever OpenSSL has written into the outgoing BIO.
  asio::awaitable<std::error_code> flush();
  /// Reads once from the socket into the incoming BIO.
  asio::awaitable<std::error_code> fill();
  std::error_code last_error(int ret);

  static bio_st* make_bio(Buffers* buffers);

  asio::ip::tcp::socket socket_;
  ssl_st* ssl_ = nullptr;
  std::unique_ptr<Buffers> buffers_;  // Stable address: the BIO points at it.
  std::string sending_;               // The bytes of the write in flight.
};

}  // namespace chorus::protocol
