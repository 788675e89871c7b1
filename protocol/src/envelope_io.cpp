#include "envelope_io.hpp"

#include <google/protobuf/stubs/logging.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <cstdio>
#include <mutex>

#include "chorus/core/log.hpp"
#include "chorus/protocol/identity.hpp"

namespace chorus::protocol::envelope_io {

awaitable<void> sleep_for(std::chrono::milliseconds d) {
  asio::steady_timer timer(co_await asio::this_coro::executor, d);
  co_await timer.async_wait(as_tuple(use_awaitable));
}

bool is_benign_close(const std::error_code& ec) {
  return ec == asio::error::eof || ec == asio::ssl::error::stream_truncated ||
         ec == asio::error::connection_reset ||
         ec == asio::error::operation_aborted || ec == asio::error::broken_pipe;
}

void route_protobuf_logs() {
  static std::once_flag once;
  std::call_once(once, [] {
    google::protobuf::SetLogHandler([](google::protobuf::LogLevel level,
                                       const char* file, int line,
                                       const std::string& message) {
      if (level == google::protobuf::LOGLEVEL_FATAL) {
        // Fatal is fatal: say it where it will be seen.
        std::fprintf(stderr, "protobuf fatal at %s:%d: %s\n", file, line,
                     message.c_str());
        return;
      }
      log::get("protocol")
          ->debug("event=protobuf_log file={}:{} message=\"{}\"", file, line,
                  message);
    });
  });
}

bool certificate_refused(const std::error_code& ec) {
  if (ec.category() != asio::error::get_ssl_category()) return false;
  switch (ERR_GET_REASON(static_cast<unsigned long>(ec.value()))) {
    case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
    case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
      return true;
    default:
      return false;
  }
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

awaitable<std::error_code> write_envelope(TlsStream& stream,
                                          const v1::Envelope& e,
                                          std::uint32_t max) {
  auto bytes = frame_bytes(e, max);
  auto [ec, n] = co_await stream.write_all(asio::buffer(bytes));
  co_return ec;
}

std::string peer_serial(TlsStream& stream) {
  const X509* cert = SSL_get0_peer_certificate(stream.native_handle());
  return cert ? serial_hex(cert) : std::string();
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

}  // namespace chorus::protocol::envelope_io
