#pragma once

#include <spdlog/logger.h>

#include <asio/awaitable.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/ssl/context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/strand.hpp>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>

#include "chorus/core/error.hpp"
#include "chorus/protocol/framing.hpp"
#include "chorus/protocol/messages.hpp"
#include "chorus/protocol/tls_stream.hpp"

namespace chorus::v1 {
class Envelope;  // The generated message; codec.hpp brings its definition.
}  // namespace chorus::v1

/// The chorus.v1 transport: one mutually authenticated TLS connection per
/// node, multiplexed by request_id, on Asio coroutines. The coordinator runs
/// a `Server`, each node a `Client` that dials out and reconnects.
namespace chorus::protocol {

/// PEM material of one party: the deployment's CA, its certificate, its key.
struct TlsMaterial {
  std::string ca_pem;
  std::string cert_pem;
  std::string key_pem;
  /// The CA's certificate revocation list (PEM; a server checks every peer
  /// certificate against it). Empty: none is checked.
  std::string crl_pem;

  /// Reads the PEM files (`crl` optional: empty path, none). Throws
  /// `chorus::Error` (NOT_FOUND).
  static TlsMaterial load(const std::filesystem::path& ca,
                          const std::filesystem::path& cert,
                          const std::filesystem::path& key,
                          const std::filesystem::path& crl = {});

  bool operator==(const TlsMaterial&) const = default;
};

/// A TLS server context (coordinator): TLS 1.2 minimum, peer certificates
/// required and verified against the CA, and against its CRL when the
/// material holds one (a revoked certificate fails the handshake). Throws
/// `chorus::Error` (INVALID_ARGUMENT for material that does not fit: a CRL
/// not signed by the CA, or one past its next update).
asio::ssl::context make_server_context(const TlsMaterial& tls);

/// A TLS client context (node): TLS 1.2 minimum, the server verified
/// against the CA and `server_host` checked against its certificate's SANs.
asio::ssl::context make_client_context(const TlsMaterial& tls,
                                       const std::string& server_host);

/// Limits and timers of a connection.
struct ChannelOptions {
  /// Largest frame body accepted or sent.
  std::uint32_t max_frame_size = kDefaultMaxFrameSize;
  /// A Heartbeat is sent after this long without sending anything.
  std::chrono::milliseconds heartbeat_interval{5000};
  /// The connection is closed after this long without receiving anything,
  /// unless a request from the peer is being served.
  std::chrono::milliseconds idle_timeout{30000};
  /// TLS handshake plus Hello/Welcome must finish within this.
  std::chrono::milliseconds handshake_timeout{10000};
  /// Bytes queued for a peer that does not read before the connection is
  /// closed (bounds memory under backpressure).
  std::size_t max_queued_bytes = std::size_t{256} << 20;
  /// Server: connections still in their TLS handshake or before their Hello
  /// is admitted, at most; more are closed as they are accepted (and
  /// logged, rate-limited) so that unauthenticated peers cannot hold the
  /// process's descriptors and memory.
  std::size_t max_unauthenticated = 64;
  /// Called on the connection's strand with every envelope received, Hello
  /// included (for audits, metrics and tests that inspect the traffic).
  std::function<void(const v1::Envelope&)> on_receive;
  /// Called on the connection's strand when the transport itself refuses a
  /// request (a request_id of 0, a Hello or Welcome mid-connection), with
  /// the peer, the request and the refusal sent: a node audits it.
  std::function<void(const std::string& peer, const v1::Envelope& request,
                     Code code, const std::string& message)>
      on_refused;
  /// Called on the connection's strand when a request was served but its
  /// reply could not be sent (the connection closed first).
  std::function<void(const std::string& peer, const v1::Envelope& request)>
      on_undelivered;
};

/// One established connection. All of its state lives on its strand;
/// `request_async`, `send` and `close` may be called from any thread. Chorus
/// runs it over TLS (`Connection`); `PlainConnection` exists only so that
/// benchmarks can measure the same code over plain TCP.
template <typename StreamT>
class BasicConnection
    : public std::enable_shared_from_this<BasicConnection<StreamT>> {
 public:
  using Stream = StreamT;
  /// Answers an incoming request (handed over: the handler may move from
  /// it); its result (a reply body, or a Status) is sent back with the
  /// request's id. Throwing `chorus::Error` sends a Status with its code:
  /// every request gets exactly one reply.
  using RequestHandler =
      std::function<asio::awaitable<v1::Envelope>(v1::Envelope)>;
  /// Called once when the connection ends, with the reason.
  using CloseHandler = std::function<void(const std::string& reason)>;

  BasicConnection(Stream stream, ChannelOptions options,
                  std::string peer_identity, std::string log_name);
  ~BasicConnection();

  /// Starts the reader, writer and heartbeat coroutines.
  void start(RequestHandler on_request, CloseHandler on_close);

  /// Sends `request` (its body set; the id is assigned) and awaits the
  /// reply. Must run on this connection's strand. Throws `chorus::Error`:
  /// DEADLINE_EXCEEDED after `deadline`, UNAVAILABLE if the connection
  /// closes first, or the code of a Status reply. The id it was sent with
  /// is stored in `*sent_id` (when given) as soon as it is queued; one that
  /// was never sent leaves it alone.
  asio::awaitable<v1::Envelope> request(v1::Envelope request,
                                        std::chrono::milliseconds deadline,
                                        std::uint64_t* sent_id = nullptr);

  /// `request` from any thread.
  std::future<v1::Envelope> request_async(v1::Envelope request,
                                          std::chrono::milliseconds deadline);

  /// Queues `envelope` for sending (any thread).
  void send(v1::Envelope envelope);

  /// Sends Goodbye (best effort) and closes (any thread).
  void close(const std::string& reason);

  /// The peer's certificate CN.
  const std::string& peer_identity() const { return peer_identity_; }
  /// The peer's certificate serial (upper-case hex; empty over plain TCP).
  const std::string& peer_serial() const { return peer_serial_; }
  /// Sets `peer_serial` (the dialler or server does, before `start`).
  void set_peer_serial(std::string serial) { peer_serial_ = std::move(serial); }
  /// Whether the connection is still open.
  bool is_open() const { return open_.load(); }
  /// When the last frame from the peer arrived (any thread).
  std::chrono::steady_clock::time_point last_heard() const {
    return std::chrono::steady_clock::time_point(
        std::chrono::steady_clock::duration(last_heard_ns_.load()));
  }
  /// The strand all of this connection's work runs on.
  asio::strand<asio::any_io_executor> strand() const { return strand_; }

 private:
  struct Pending {
    asio::steady_timer* timer;
    std::optional<v1::Envelope>* reply;
  };

  asio::awaitable<void> reader();
  asio::awaitable<void> writer();
  asio::awaitable<void> heartbeat();
  asio::awaitable<void> serve(v1::Envelope request);
  void enqueue(const v1::Envelope& envelope);
  void shutdown(const std::string& reason);

  Stream stream_;
  asio::strand<asio::any_io_executor> strand_;
  ChannelOptions options_;
  std::string peer_identity_;
  std::string peer_serial_;
  std::shared_ptr<spdlog::logger> log_;
  RequestHandler on_request_;
  CloseHandler on_close_;
  std::atomic<bool> open_{false};
  bool closing_ = false;
  std::deque<std::string> queue_;
  /// The writer has queue_.front() in an async write: that string must live
  /// until the write returns (freeing it meanwhile was a use-after-free).
  bool writing_ = false;
  std::size_t queued_bytes_ = 0;
  asio::steady_timer write_signal_;
  // Closes the socket should the writer not have done so within the
  // goodbye grace (a peer that stops reading); cancelled when it has.
  asio::steady_timer close_deadline_;
  // The heartbeat's tick; cancelled on shutdown so the connection's work
  // ends with it.
  asio::steady_timer heartbeat_tick_;
  std::chrono::steady_clock::time_point last_sent_, last_received_;
  // last_received_ for other threads (`last_heard`).
  std::atomic<std::chrono::steady_clock::rep> last_heard_ns_{0};
  int serving_ = 0;  // Requests from the peer being served (strand only).
  std::uint64_t next_request_id_ = 1;
  std::map<std::uint64_t, Pending> pending_;
};

/// The connection chorus uses: mutually authenticated TLS.
using Connection = BasicConnection<TlsStream>;
/// The same code over plain TCP: for benchmarks and tests only.
using PlainConnection = BasicConnection<asio::ip::tcp::socket>;

/// What the server asks the application when a node says Hello.
struct Admission {
  /// Admit (send Welcome) or refuse (send Status and close).
  bool admit = true;
  Code code = Code::kOk;
  std::string message;
};

/// The coordinator's listener.
class Server {
 public:
  /// Decides on a node's Hello (its identity is already verified).
  using AdmitHandler =
      std::function<Admission(const std::string& identity, const Hello& hello)>;
  /// Receives each admitted connection, already started by the caller of
  /// this handler (the handler calls `Connection::start`).
  using ConnectHandler =
      std::function<void(std::shared_ptr<Connection>, const Hello& hello)>;

  /// Listens on `endpoint` (port 0: any free port).
  Server(asio::io_context& io, asio::ip::tcp::endpoint endpoint,
         const TlsMaterial& tls, ChannelOptions options, Welcome welcome,
         AdmitHandler on_admit, ConnectHandler on_connect);
  /// Listens on each of `endpoints` (IPv4 and IPv6; an IPv6 one listens on
  /// IPv6 only). All share one port: a port of 0 is the free port the first
  /// one gets. Throws `chorus::Error` (UNAVAILABLE naming the address that
  /// cannot be listened on).
  Server(asio::io_context& io, std::vector<asio::ip::tcp::endpoint> endpoints,
         const TlsMaterial& tls, ChannelOptions options, Welcome welcome,
         AdmitHandler on_admit, ConnectHandler on_connect);

  /// Starts accepting.
  void start();
  /// Replaces the TLS material (a new CRL, a renewed certificate) for the
  /// handshakes that start from now on; connections made stay up. Throws
  /// `chorus::Error` and keeps the old material when the new is unusable.
  /// Any thread.
  void reload_tls(const TlsMaterial& tls);
  /// Stops accepting (connections already made stay up).
  void stop();
  /// The bound port.
  std::uint16_t port() const { return port_; }
  /// Connections not yet admitted (in their handshake, or before a Hello).
  std::size_t unauthenticated() const { return pending_->load(); }

 private:
  asio::awaitable<void> accept_loop(asio::ip::tcp::acceptor& acceptor);
  asio::awaitable<void> admit(asio::ip::tcp::socket socket);

  std::shared_ptr<asio::ssl::context> context() const;

  asio::io_context& io_;
  mutable std::mutex ssl_mutex_;
  // Each handshake keeps the context it started with.
  std::shared_ptr<asio::ssl::context> ssl_;
  std::vector<std::unique_ptr<asio::ip::tcp::acceptor>> acceptors_;
  std::uint16_t port_ = 0;
  ChannelOptions options_;
  Welcome welcome_;
  AdmitHandler on_admit_;
  ConnectHandler on_connect_;
  std::shared_ptr<spdlog::logger> log_;
  std::shared_ptr<std::atomic<std::size_t>> pending_ =
      std::make_shared<std::atomic<std::size_t>>(0);
};

/// Reconnection policy of a `Client`.
struct Backoff {
  std::chrono::milliseconds initial{200};
  std::chrono::milliseconds max{10000};
  double multiplier = 2.0;
  /// Each delay is drawn uniformly from [delay·(1−jitter), delay].
  double jitter = 0.5;
  /// After a refusal that retrying cannot fix by itself (not on the roster,
  /// another protocol major, a task the expert does not fit), the wait
  /// before trying again; the refusal is logged once, not at every try.
  std::chrono::milliseconds refused{60000};

  /// The delay before attempt `attempt` (0-based), drawn with `rng`.
  std::chrono::milliseconds delay(int attempt, std::mt19937_64& rng) const;
};

/// A node's dialler: connects, says Hello, serves requests, and reconnects
/// with exponential backoff and jitter whenever the connection ends.
class Client {
 public:
  /// Called with each new connection after Welcome (the client starts it).
  using ConnectHandler =
      std::function<void(std::shared_ptr<Connection>, const Welcome&)>;

  Client(asio::io_context& io, std::string host, std::uint16_t port,
         const TlsMaterial& tls, ChannelOptions options, Backoff backoff,
         std::function<Hello()> make_hello,
         Connection::RequestHandler on_request, ConnectHandler on_connect = {});

  /// Before `start`: check the coordinator's certificate against
  /// `server_name` (and send it as SNI) instead of the host dialled — for a
  /// coordinator reached by an address or name its certificate does not
  /// hold.
  void set_server_name(std::string server_name);
  /// Before `start`: read the TLS material again before every connection
  /// with `source` (for example from its files), so that a renewed
  /// certificate or a new CA file is used at the next reconnect without a
  /// restart. A source that throws is logged and the material in use kept.
  void set_tls_source(std::function<TlsMaterial()> source);

  /// Starts dialling.
  void start();
  /// Stops reconnecting and closes the current connection.
  void stop();
  /// The current connection, if any.
  std::shared_ptr<Connection> connection() const;
  /// Number of sessions that reached Welcome so far.
  int sessions() const { return sessions_.load(); }

 private:
  asio::awaitable<void> run();
  asio::awaitable<std::shared_ptr<Connection>> connect_once();

  // Reads the material again (when a source is set) and rebuilds the
  // context when it changed.
  void refresh_tls();

  asio::io_context& io_;
  std::string host_;
  std::uint16_t port_;
  std::string server_name_;
  TlsMaterial material_;
  std::function<TlsMaterial()> tls_source_;
  // Contexts replaced by a reload stay alive with the connections made on
  // them (few: one per renewal).
  std::vector<std::shared_ptr<asio::ssl::context>> retired_;
  std::shared_ptr<asio::ssl::context> ssl_;
  ChannelOptions options_;
  Backoff backoff_;
  std::function<Hello()> make_hello_;
  Connection::RequestHandler on_request_;
  ConnectHandler on_connect_;
  std::shared_ptr<spdlog::logger> log_;
  std::atomic<bool> stopped_{false};
  std::atomic<int> sessions_{0};
  mutable std::mutex mutex_;
  std::shared_ptr<Connection> current_;
  asio::steady_timer wait_;
};

/// Connects once, without reconnecting (an operator's one-shot command):
/// TLS handshake, Hello, Welcome, then starts the connection with
/// `on_request`. `io` must be running on another thread. Throws
/// `chorus::Error` (UNAUTHENTICATED for a failed handshake, the code of the
/// coordinator's Status when it refuses).
std::shared_ptr<Connection> connect(asio::io_context& io,
                                    const std::string& host, std::uint16_t port,
                                    const TlsMaterial& tls,
                                    ChannelOptions options, Hello hello,
                                    Connection::RequestHandler on_request);

/// Builds a Status envelope; the message loses any library stack trace and
/// is cut to 1,000 characters (`chorus::without_backtrace`).
v1::Envelope make_status(Code code, const std::string& message,
                         std::uint64_t request_id = 0);

}  // namespace chorus::protocol
