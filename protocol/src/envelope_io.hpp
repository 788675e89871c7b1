#pragma once
// Envelope I/O shared by the connection, the server and the client: framed
// reads and writes on TLS (and plain TCP for benchmarks), a timer to race
// them against, and what a TLS peer's certificate says. Private to
// chorus_protocol.
#include <openssl/ssl.h>

#include <array>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/read.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <chrono>
#include <optional>
#include <string>
#include <system_error>
#include <tuple>

#include "chorus/core/error.hpp"
#include "chorus/protocol/codec.hpp"
#include "chorus/protocol/framing.hpp"
#include "chorus/protocol/tls_stream.hpp"

namespace chorus::protocol::envelope_io {

using asio::awaitable;
using asio::use_awaitable;
using asio::experimental::as_tuple;
using Clock = std::chrono::steady_clock;

template <typename S>
constexpr bool kIsTls = std::is_same_v<S, TlsStream>;

/// How long a closing connection waits for its last frames and the TLS
/// close; twice that, the socket goes regardless.
inline constexpr auto kGoodbyeGrace = std::chrono::milliseconds(1000);

/// Completes after `d` (to race an operation with `||`).
awaitable<void> sleep_for(std::chrono::milliseconds d);

/// An error that ends a connection normally (the peer went away).
bool is_benign_close(const std::error_code& ec);

/// The frame (header and serialised envelope) of `envelope`.
std::string frame_bytes(const v1::Envelope& envelope, std::uint32_t max);

// Exact reads and whole writes, on TLS and (for benchmarks) plain TCP.
awaitable<std::tuple<std::error_code, std::size_t>> read_exact(
    asio::ip::tcp::socket& socket, asio::mutable_buffer buffer);
awaitable<std::tuple<std::error_code, std::size_t>> read_exact(
    TlsStream& stream, asio::mutable_buffer buffer);
awaitable<std::tuple<std::error_code, std::size_t>> write_all(
    asio::ip::tcp::socket& socket, asio::const_buffer buffer);
awaitable<std::tuple<std::error_code, std::size_t>> write_all(
    TlsStream& stream, asio::const_buffer buffer);

// Sends protobuf's own log lines (it writes "String field ... contains
// invalid UTF-8 data" to stderr when a peer's frame holds bad text) to the
// "protocol" logger at debug level: the parse fails and the peer gets a
// precise error anyway. Idempotent; every TLS context calls it.
void route_protobuf_logs();

// Whether `ec` is a TLS alert by which the peer refused our certificate
// (revoked, expired, unknown CA, bad or missing).
bool certificate_refused(const std::error_code& ec);

// One frame. Empty on a clean end of stream before a frame starts; throws
// chorus::Error for everything a peer can get wrong.
template <typename Stream>
awaitable<std::optional<v1::Envelope>> read_envelope(Stream& stream,
                                                     std::uint32_t max) {
  std::array<std::uint8_t, kFrameHeaderSize> header{};
  auto [ec, n] = co_await read_exact(stream, asio::buffer(header));
  if (ec) {
    if (n == 0 && is_benign_close(ec)) co_return std::nullopt;
    // TLS 1.3: a server that refuses the client's certificate says so
    // after the client's handshake has finished, at its first read.
    CHORUS_CHECK_CODE(!certificate_refused(ec), Code::kUnauthenticated,
                      "the peer refused this party's certificate: {} (is it "
                      "revoked, expired, or from another CA?)",
                      ec.message());
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
                                           std::uint32_t max);

/// Writes one envelope directly (before a Connection owns the stream).
awaitable<std::error_code> write_envelope(TlsStream& stream,
                                          const v1::Envelope& e,
                                          std::uint32_t max);

/// The common name of the TLS peer's certificate; empty without one.
std::string peer_common_name(TlsStream& stream);

/// The serial of the TLS peer's certificate (`serial_hex`); empty without
/// one.
std::string peer_serial(TlsStream& stream);

/// "address:port" of the socket's peer, or "?".
std::string endpoint_string(const asio::ip::tcp::socket& socket);

/// What the peer's leaf certificate names (CN and SANs), as seen while a
/// client verified it; empty when no certificate was seen
/// (tls_context.cpp).
std::string peer_certificate_names(SSL* ssl);

}  // namespace chorus::protocol::envelope_io
