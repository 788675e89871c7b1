// The TLS channel over real loopback sockets with real certificates: a
// coordinator-side Server, node-side Clients, and raw clients that misbehave.
#include "chorus/protocol/channel.hpp"

#include <spdlog/sinks/base_sink.h>

#include <asio/connect.hpp>
#include <asio/read.hpp>
#include <asio/ssl/stream.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <mutex>
#include <sstream>
#include <thread>

#include "chorus/core/fs.hpp"
#include "chorus/core/log.hpp"
#include "chorus/protocol/certs.hpp"
#include "chorus/protocol/tensor_codec.hpp"
#include "support/doctest.hpp"
#include "support/temp_dir.hpp"
#include "support/wire.hpp"

namespace pr = chorus::protocol;
namespace v1 = chorus::v1;
using namespace std::chrono_literals;
using asio::ip::tcp;

namespace {

// Test PKI, made once per process.
struct Pki {
  pr::KeyPair ca = pr::make_ca("test-ca");
  pr::KeyPair other_ca = pr::make_ca("other-ca");
  pr::KeyPair coordinator =
      pr::issue_certificate(ca, "coordinator", pr::CertRole::kCoordinator,
                            {"localhost", "127.0.0.1"});
  pr::KeyPair localhost_only = pr::issue_certificate(
      ca, "coordinator", pr::CertRole::kCoordinator, {"localhost"});
  pr::KeyPair alpha =
      pr::issue_certificate(ca, "alpha", pr::CertRole::kNode, {});
  pr::KeyPair beta = pr::issue_certificate(ca, "beta", pr::CertRole::kNode, {});
  pr::KeyPair stranger =
      pr::issue_certificate(ca, "stranger", pr::CertRole::kNode, {});
  pr::KeyPair expired = pr::issue_certificate(
      ca, "alpha", pr::CertRole::kNode, {},
      pr::Validity{.not_before_offset = std::chrono::hours(-72), .days = 1});
  pr::KeyPair foreign =
      pr::issue_certificate(other_ca, "alpha", pr::CertRole::kNode, {});

  pr::TlsMaterial material(const pr::KeyPair& leaf) const {
    return {ca.cert_pem, leaf.cert_pem, leaf.key_pem};
  }
};

const Pki& pki() {
  static Pki p;
  return p;
}

// A sink that keeps what it is given; read under the sink's own lock (the
// server's threads write while the test reads: ThreadSanitizer).
class TextSink : public spdlog::sinks::base_sink<std::mutex> {
 public:
  std::string text() {
    std::lock_guard lock(mutex_);
    return text_;
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t line;
    formatter_->format(msg, line);
    text_.append(line.data(), line.size());
  }
  void flush_() override {}

 private:
  std::string text_;
};

// One sink on the "protocol" logger for the whole run, added once: a sink
// added and removed per test raced with the threads still logging.
std::shared_ptr<TextSink> protocol_log() {
  static const auto sink = [] {
    auto s = std::make_shared<TextSink>();
    s->set_pattern("%v");
    chorus::log::get("protocol")->sinks().push_back(s);
    return s;
  }();
  return sink;
}

// Captures what the "protocol" logger writes from now on.
class LogCapture {
 public:
  LogCapture() : sink_(protocol_log()), from_(sink_->text().size()) {
    chorus::log::get("protocol")->set_level(spdlog::level::debug);
  }
  bool contains(const std::string& text) const {
    return since().find(text) != std::string::npos;
  }
  std::size_t count(const std::string& text) const {
    const auto all = since();
    std::size_t n = 0;
    for (auto at = all.find(text); at != std::string::npos;
         at = all.find(text, at + 1))
      ++n;
    return n;
  }
  // Waits up to `timeout` for `text` to be logged.
  bool wait_for(const std::string& text,
                std::chrono::milliseconds timeout = 5s) const {
    auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (contains(text)) return true;
      std::this_thread::sleep_for(10ms);
    }
    MESSAGE("log so far:\n" << since());
    return false;
  }

 private:
  std::string since() const { return sink_->text().substr(from_); }
  std::shared_ptr<TextSink> sink_;
  std::size_t from_;
};

v1::Envelope predict_request(const torch::Tensor& inputs) {
  v1::Envelope e;
  chorus::testing::encode_tensor(inputs,
                                 e.mutable_predict_request()->mutable_inputs());
  return e;
}

// A node's request handler: answers Predict with 2·inputs, validating the
// tensor; sleeps first when the input's first value v is negative, for
// 500 ms · |v| (at least 500 ms).
asio::awaitable<v1::Envelope> doubling_node(const v1::Envelope& request) {
  CHORUS_CHECK(request.has_predict_request(), "only Predict is served here");
  auto inputs =
      chorus::testing::decode_tensor(request.predict_request().inputs());
  if (inputs.numel() > 0 && inputs.flatten()[0].item<float>() < 0) {
    const auto factor = std::max(1.0f, -inputs.flatten()[0].item<float>());
    const auto wait =
        std::chrono::milliseconds(static_cast<std::int64_t>(500 * factor));
    asio::steady_timer t(co_await asio::this_coro::executor, wait);
    co_await t.async_wait(asio::use_awaitable);
  }
  v1::Envelope reply;
  chorus::testing::encode_tensor(
      inputs * 2, reply.mutable_predict_response()->mutable_outputs());
  co_return reply;
}

// A coordinator on loopback with roster {alpha, beta}, on its own thread.
class TestCoordinator {
 public:
  explicit TestCoordinator(pr::ChannelOptions options = fast_options(),
                           std::uint16_t port = 0) {
    pr::Welcome welcome;
    welcome.coordinator = "coordinator";
    server_ = std::make_unique<pr::Server>(
        io_, tcp::endpoint(asio::ip::address_v4::loopback(), port),
        pki().material(pki().coordinator), options, welcome,
        [](const std::string& identity, const pr::Hello&) {
          if (identity == "alpha" || identity == "beta") return pr::Admission{};
          return pr::Admission{false, chorus::Code::kPermissionDenied,
                               "'" + identity + "' is not on the roster"};
        },
        [this](std::shared_ptr<pr::Connection> c, const pr::Hello&) {
          c->start(
              [](const v1::Envelope&) -> asio::awaitable<v1::Envelope> {
                chorus::fail(chorus::Code::kUnimplemented,
                             "coordinator serves nothing");
              },
              [](const std::string&) {});
          std::lock_guard lock(mutex_);
          connections_[c->peer_identity()] = c;
        });
    server_->start();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~TestCoordinator() {
    {
      std::lock_guard lock(mutex_);
      for (auto& [id, c] : connections_) c->close("test over");
    }
    server_->stop();
    std::this_thread::sleep_for(50ms);
    io_.stop();
    thread_.join();
  }
  static pr::ChannelOptions fast_options() {
    pr::ChannelOptions o;
    o.heartbeat_interval = 200ms;
    o.idle_timeout = 3s;
    o.handshake_timeout = 2s;
    return o;
  }
  std::uint16_t port() const { return server_->port(); }
  // The connection of `identity`, waiting up to 5 s for it.
  std::shared_ptr<pr::Connection> wait_for(const std::string& identity) {
    for (int i = 0; i < 500; ++i) {
      {
        std::lock_guard lock(mutex_);
        auto it = connections_.find(identity);
        if (it != connections_.end() && it->second->is_open())
          return it->second;
      }
      std::this_thread::sleep_for(10ms);
    }
    return nullptr;
  }
  void forget(const std::string& identity) {
    std::lock_guard lock(mutex_);
    connections_.erase(identity);
  }

 private:
  asio::io_context io_;
  std::unique_ptr<pr::Server> server_;
  std::thread thread_;
  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<pr::Connection>> connections_;
};

// A node dialling the coordinator, on its own thread.
class TestNode {
 public:
  TestNode(const pr::KeyPair& leaf, std::uint16_t port,
           std::string host = "localhost",
           pr::ChannelOptions options = TestCoordinator::fast_options()) {
    client_ = std::make_unique<pr::Client>(
        io_, host, port, pki().material(leaf), options,
        pr::Backoff{.initial = 50ms, .max = 200ms},
        [] {
          pr::Hello hello;
          hello.software = "test-node";
          return hello;
        },
        doubling_node);
    client_->start();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~TestNode() {
    client_->stop();
    std::this_thread::sleep_for(50ms);
    io_.stop();
    thread_.join();
  }
  pr::Client& client() { return *client_; }

 private:
  asio::io_context io_;
  std::unique_ptr<pr::Client> client_;
  std::thread thread_;
};

// A hand-driven client for misbehaviour: optional certificate, raw bytes.
class RawClient {
 public:
  RawClient(std::uint16_t port, const pr::KeyPair* leaf)
      : ctx_(asio::ssl::context::tls_client) {
    ctx_.add_certificate_authority(asio::buffer(pki().ca.cert_pem));
    if (leaf) {
      ctx_.use_certificate_chain(asio::buffer(leaf->cert_pem));
      ctx_.use_private_key(asio::buffer(leaf->key_pem),
                           asio::ssl::context::pem);
    }
    // Made after the context holds the certificate (SSL_new copies it);
    // not move-assigned: asio's engine leaks the SSL it replaces.
    stream_ = std::make_unique<Stream>(io_, ctx_);
    stream_->lowest_layer().connect(
        tcp::endpoint(asio::ip::address_v4::loopback(), port));
  }
  bool handshake() {
    std::error_code ec;
    stream_->handshake(asio::ssl::stream_base::client, ec);
    return !ec;
  }
  void write_tls(const std::string& bytes) {
    std::error_code ec;
    asio::write(*stream_, asio::buffer(bytes), ec);
  }
  void write_plain(const std::string& bytes) {
    std::error_code ec;
    asio::write(stream_->next_layer(), asio::buffer(bytes), ec);
  }
  void send(const v1::Envelope& e) {
    std::string body = e.SerializeAsString();
    auto header = pr::encode_frame_header(body.size());
    write_tls(std::string(header.begin(), header.end()) + body);
  }
  // The next envelope, or empty when the server closed the connection.
  std::optional<v1::Envelope> receive() {
    std::array<std::uint8_t, 4> header{};
    std::error_code ec;
    asio::read(*stream_, asio::buffer(header), ec);
    if (ec) return std::nullopt;
    std::string body(pr::decode_frame_header(header), '\0');
    asio::read(*stream_, asio::buffer(body), ec);
    if (ec) return std::nullopt;
    v1::Envelope e;
    if (!e.ParseFromString(body)) return std::nullopt;
    return e;
  }
  // Skips heartbeats.
  std::optional<v1::Envelope> receive_non_heartbeat() {
    while (auto e = receive()) {
      if (!e->has_heartbeat()) return e;
    }
    return std::nullopt;
  }
  bool hello() {
    v1::Envelope e;
    e.mutable_hello()->set_protocol_major(pr::kProtocolMajor);
    send(e);
    auto reply = receive_non_heartbeat();
    return reply && reply->has_welcome();
  }
  void close() {
    std::error_code ec;
    stream_->lowest_layer().close(ec);
  }

 private:
  using Stream = asio::ssl::stream<tcp::socket>;
  asio::io_context io_;
  asio::ssl::context ctx_;
  std::unique_ptr<Stream> stream_;
};

// The server still admits and serves a well-behaved node.
void check_still_serving(TestCoordinator& coordinator) {
  TestNode beta(pki().beta, coordinator.port());
  auto conn = coordinator.wait_for("beta");
  REQUIRE(conn != nullptr);
  auto reply =
      conn->request_async(predict_request(torch::ones({1, 3})), 2s).get();
  CHECK(torch::equal(
      chorus::testing::decode_tensor(reply.predict_response().outputs()),
      torch::full({1, 3}, 2.0f)));
  coordinator.forget("beta");
}

chorus::Code code_of(std::future<v1::Envelope>&& f) {
  try {
    f.get();
  } catch (const chorus::Error& e) {
    return e.code();
  }
  return chorus::Code::kOk;
}

}  // namespace

TEST_CASE("channel: a node answers the coordinator over mutual TLS") {
  TestCoordinator coordinator;
  TestNode alpha(pki().alpha, coordinator.port());
  auto conn = coordinator.wait_for("alpha");
  REQUIRE(conn != nullptr);
  CHECK(conn->peer_identity() == "alpha");
  auto image = torch::rand({1, 1, 28, 28});
  auto reply = conn->request_async(predict_request(image), 2s).get();
  CHECK(torch::equal(
      chorus::testing::decode_tensor(reply.predict_response().outputs()),
      image * 2));
  REQUIRE(alpha.client().connection() != nullptr);
  CHECK(alpha.client().connection()->peer_identity() == "coordinator");

  // Concurrent requests on one connection each get their own reply.
  std::vector<std::future<v1::Envelope>> futures;
  for (int i = 0; i < 20; ++i) {
    futures.push_back(conn->request_async(
        predict_request(torch::full({2, 2}, float(i))), 2s));
  }
  for (int i = 0; i < 20; ++i) {
    auto out = chorus::testing::decode_tensor(
        futures[i].get().predict_response().outputs());
    CHECK(out[0][0].item<float>() == 2.0f * i);
  }
}

TEST_CASE(
    "channel: frames larger than a TLS chunk arrive intact, interleaved with "
    "small ones") {
  TestCoordinator coordinator;
  TestNode alpha(pki().alpha, coordinator.port());
  auto conn = coordinator.wait_for("alpha");
  REQUIRE(conn != nullptr);
  // 3 MiB + 7 floats: many 16 KiB records, several 256 KiB chunks, a ragged
  // end.
  torch::manual_seed(5);
  auto big = torch::rand({(3 << 20) / 4 + 7});
  std::vector<std::future<v1::Envelope>> futures;
  for (int i = 0; i < 3; ++i) {
    futures.push_back(conn->request_async(predict_request(big + i), 10s));
    futures.push_back(
        conn->request_async(predict_request(torch::full({1}, float(i))), 10s));
  }
  for (int i = 0; i < 3; ++i) {
    auto large = chorus::testing::decode_tensor(
        futures[2 * i].get().predict_response().outputs());
    CHECK(torch::equal(large, (big + i) * 2));
    auto small = chorus::testing::decode_tensor(
        futures[2 * i + 1].get().predict_response().outputs());
    CHECK(small.item<float>() == 2.0f * i);
  }
}

TEST_CASE(
    "channel: a bad tensor gets INVALID_ARGUMENT and the connection stays") {
  TestCoordinator coordinator;
  TestNode alpha(pki().alpha, coordinator.port());
  auto conn = coordinator.wait_for("alpha");
  REQUIRE(conn != nullptr);
  auto bad = predict_request(torch::zeros({2, 3}));
  bad.mutable_predict_request()->mutable_inputs()->mutable_data()->append("xx");
  try {
    conn->request_async(bad, 2s).get();
    FAIL("no error");
  } catch (const chorus::Error& e) {
    CHECK(e.code() == chorus::Code::kInvalidArgument);
    CHECK(std::string(e.what()).find("needs 24 bytes, got 26") !=
          std::string::npos);
  }
  CHECK(conn->is_open());
  auto reply = conn->request_async(predict_request(torch::ones({1})), 2s).get();
  CHECK(reply.has_predict_response());
}

TEST_CASE(
    "channel: a slow answer misses its deadline while heartbeats keep the "
    "link") {
  TestCoordinator coordinator;
  TestNode alpha(pki().alpha, coordinator.port());
  auto conn = coordinator.wait_for("alpha");
  REQUIRE(conn != nullptr);
  CHECK(code_of(conn->request_async(predict_request(torch::full({1}, -1.0f)),
                                    100ms)) == chorus::Code::kDeadlineExceeded);
  std::this_thread::sleep_for(700ms);  // Idle longer than a heartbeat interval.
  CHECK(conn->is_open());
  CHECK(conn->request_async(predict_request(torch::ones({1})), 2s)
            .get()
            .has_predict_response());
}

TEST_CASE(
    "channel: TLS refusals — no certificate, another CA, expired, plaintext") {
  TestCoordinator coordinator;
  LogCapture log;
  {
    RawClient anonymous(coordinator.port(), nullptr);
    anonymous.handshake();
    CHECK_FALSE(anonymous.hello());
  }
  CHECK(log.wait_for(
      "event=tls_refused error=\"peer did not return a certificate"));
  {
    RawClient foreign(coordinator.port(), &pki().foreign);
    foreign.handshake();
    CHECK_FALSE(foreign.hello());
  }
  CHECK(log.wait_for("certificate verify failed"));
  {
    RawClient expired(coordinator.port(), &pki().expired);
    expired.handshake();
    CHECK_FALSE(expired.hello());
  }
  CHECK(log.wait_for("event=tls_refused"));
  {
    RawClient plaintext(coordinator.port(), nullptr);
    plaintext.write_plain("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK_FALSE(plaintext.receive().has_value());
  }
  CHECK(log.wait_for("http request"));
  check_still_serving(coordinator);
}

TEST_CASE(
    "channel: a node refused by the coordinator waits long and says so once") {
  TestCoordinator coordinator;
  LogCapture log;
  // Off the roster; its backoff would otherwise retry every 50-200 ms.
  TestNode stranger(pki().stranger, coordinator.port());
  CHECK(log.wait_for("event=refused_waiting retry_every_s=60"));
  std::this_thread::sleep_for(1s);
  CHECK(log.count("event=connect_failed") == 1);
  CHECK(log.count("event=refused_waiting") == 1);
  CHECK(log.contains("is not on the roster"));
  CHECK(stranger.client().sessions() == 0);
}

TEST_CASE("channel: a valid certificate off the roster is PERMISSION_DENIED") {
  TestCoordinator coordinator;
  LogCapture log;
  RawClient stranger(coordinator.port(), &pki().stranger);
  REQUIRE(stranger.handshake());
  v1::Envelope hello;
  hello.mutable_hello()->set_protocol_major(pr::kProtocolMajor);
  stranger.send(hello);
  auto reply = stranger.receive();
  REQUIRE(reply.has_value());
  REQUIRE(reply->has_status());
  CHECK(reply->status().code() == v1::CODE_PERMISSION_DENIED);
  CHECK(reply->status().message() == "'stranger' is not on the roster");
  CHECK_FALSE(stranger.receive().has_value());
  CHECK(log.wait_for("peer=stranger event=refused code=PERMISSION_DENIED"));
  check_still_serving(coordinator);
}

TEST_CASE(
    "channel: an unsupported protocol major is refused with its own code") {
  TestCoordinator coordinator;
  RawClient future(coordinator.port(), &pki().alpha);
  REQUIRE(future.handshake());
  v1::Envelope hello;
  hello.mutable_hello()->set_protocol_major(pr::kProtocolMajor + 1);
  future.send(hello);
  auto reply = future.receive();
  REQUIRE((reply && reply->has_status()));
  CHECK(reply->status().code() == v1::CODE_UNSUPPORTED_VERSION);
  CHECK_FALSE(future.receive().has_value());
}

TEST_CASE("channel: malformed frames close that connection only") {
  TestCoordinator coordinator;
  LogCapture log;
  SUBCASE("an oversized length prefix") {
    RawClient c(coordinator.port(), &pki().alpha);
    REQUIRE(c.handshake());
    REQUIRE(c.hello());
    c.write_tls(std::string("\xff\xff\xff\xf0", 4));
    auto reply = c.receive_non_heartbeat();
    REQUIRE((reply && reply->has_status()));
    CHECK(reply->status().code() == v1::CODE_RESOURCE_EXHAUSTED);
    CHECK(log.wait_for("event=bad_frame code=RESOURCE_EXHAUSTED"));
  }
  SUBCASE("an oversized prefix before Hello") {
    RawClient c(coordinator.port(), &pki().alpha);
    REQUIRE(c.handshake());
    c.write_tls(std::string("\x7f\xff\xff\xff", 4));
    auto reply = c.receive();
    REQUIRE((reply && reply->has_status()));
    CHECK(reply->status().code() == v1::CODE_RESOURCE_EXHAUSTED);
  }
  SUBCASE("a truncated frame") {
    RawClient c(coordinator.port(), &pki().alpha);
    REQUIRE(c.handshake());
    REQUIRE(c.hello());
    c.write_tls(std::string("\x00\x00\x00\x64", 4) + "only ten b");
    c.close();
    CHECK(log.wait_for("truncated frame: the connection ended after"));
  }
  SUBCASE("garbage after a valid handshake") {
    RawClient c(coordinator.port(), &pki().alpha);
    REQUIRE(c.handshake());
    REQUIRE(c.hello());
    c.write_tls(std::string("\x00\x00\x00\x08", 4) + std::string(8, '\xff'));
    auto reply = c.receive_non_heartbeat();
    REQUIRE((reply && reply->has_status()));
    CHECK(reply->status().code() == v1::CODE_INVALID_ARGUMENT);
    CHECK(reply->status().message() ==
          "a frame of 8 bytes is not a chorus.v1.Envelope");
  }
  SUBCASE("a string field that is not UTF-8") {
    RawClient c(coordinator.port(), &pki().alpha);
    REQUIRE(c.handshake());
    REQUIRE(c.hello());
    // Field 1 of a Status (code 3), then field 2 (message) with the bytes
    // 0xff 0xfe: protobuf refuses the text and says so in its own log,
    // which goes to ours (debug), not to stderr.
    v1::Envelope status;
    status.mutable_status()->set_code(v1::CODE_INVALID_ARGUMENT);
    std::string body = status.SerializeAsString();
    body += std::string("\x12\x02\xff\xfe", 4);  // status.message (field 2)
    // Patch the outer length of the status submessage.
    REQUIRE(static_cast<unsigned char>(body[1]) + 4 < 128);
    body[1] = static_cast<char>(body[1] + 4);
    auto header = pr::encode_frame_header(body.size());
    c.write_tls(std::string(header.begin(), header.end()) + body);
    auto reply = c.receive_non_heartbeat();
    REQUIRE((reply && reply->has_status()));
    CHECK(reply->status().code() == v1::CODE_INVALID_ARGUMENT);
    CHECK(log.wait_for("event=protobuf_log"));
    CHECK(log.contains("UTF-8"));
  }
  SUBCASE("an envelope with an unknown body") {
    RawClient c(coordinator.port(), &pki().alpha);
    REQUIRE(c.handshake());
    REQUIRE(c.hello());
    // request_id = 5, then field 99 (length-delimited "x"): a newer peer's
    // body.
    const std::string body("\x08\x05\x9a\x06\x01x", 6);
    c.write_tls(std::string("\x00\x00\x00\x06", 4) + body);
    auto reply = c.receive_non_heartbeat();
    REQUIRE((reply && reply->has_status()));
    CHECK(reply->status().code() == v1::CODE_INVALID_ARGUMENT);
    CHECK(reply->status().message().find(
              "no body this peer knows (request_id=5)") != std::string::npos);
  }
  check_still_serving(coordinator);
}

TEST_CASE("channel: a peer that stops reading is cut off at the queue limit") {
  auto options = TestCoordinator::fast_options();
  options.max_queued_bytes = 4u << 20;
  TestCoordinator coordinator(options);
  LogCapture log;
  RawClient lazy(coordinator.port(), &pki().alpha);
  REQUIRE(lazy.handshake());
  REQUIRE(lazy.hello());  // Then never reads again.
  auto conn = coordinator.wait_for("alpha");
  REQUIRE(conn != nullptr);
  auto big = predict_request(torch::zeros({256, 1024}));  // 1 MiB each.
  std::vector<std::future<v1::Envelope>> futures;
  for (int i = 0; i < 64 && conn->is_open(); ++i) {
    futures.push_back(conn->request_async(big, 5s));
    std::this_thread::sleep_for(5ms);
  }
  CHECK(log.wait_for("event=backpressure"));
  CHECK_FALSE(conn->is_open());
  for (auto& f : futures)
    CHECK(code_of(std::move(f)) == chorus::Code::kUnavailable);
  coordinator.forget("alpha");
  check_still_serving(coordinator);
}

TEST_CASE(
    "channel: the idle timeout does not close a connection while it serves "
    "a request from the peer") {
  // The requester sends nothing while it waits (no heartbeats for 60 s);
  // the node's idle timeout is 400 ms and its answer takes 1.5 s.
  auto quiet = TestCoordinator::fast_options();
  quiet.heartbeat_interval = 60s;
  quiet.idle_timeout = 60s;
  TestCoordinator coordinator(quiet);
  auto impatient = TestCoordinator::fast_options();
  impatient.heartbeat_interval = 100ms;
  impatient.idle_timeout = 400ms;
  TestNode alpha(pki().alpha, coordinator.port(), "localhost", impatient);
  auto conn = coordinator.wait_for("alpha");
  REQUIRE(conn != nullptr);
  auto reply =
      conn->request_async(predict_request(torch::full({1, 3}, -3.0f)), 5s)
          .get();
  CHECK(torch::equal(
      chorus::testing::decode_tensor(reply.predict_response().outputs()),
      torch::full({1, 3}, -6.0f)));
  // Once served, silence is idle again: the node closes the connection.
  for (int i = 0; i < 300 && conn->is_open(); ++i)
    std::this_thread::sleep_for(10ms);
  CHECK_FALSE(conn->is_open());
  coordinator.forget("alpha");
}

TEST_CASE("channel: the node checks the coordinator's host name") {
  pr::Welcome welcome;
  asio::io_context io;
  pr::Server server(
      io, tcp::endpoint(asio::ip::address_v4::loopback(), 0),
      pki().material(pki().localhost_only), TestCoordinator::fast_options(),
      welcome, [](auto&&...) { return pr::Admission{}; },
      [](std::shared_ptr<pr::Connection> c, const pr::Hello&) {
        c->start(
            [](const v1::Envelope&) -> asio::awaitable<v1::Envelope> {
              co_return v1::Envelope{};
            },
            {});
      });
  server.start();
  std::thread t([&] { io.run_for(3s); });
  LogCapture log;
  {
    // Dialling 127.0.0.1, which the certificate does not name.
    TestNode by_ip(pki().alpha, server.port(), "127.0.0.1");
    CHECK(log.wait_for("event=connect_failed"));
    CHECK(log.contains("UNAUTHENTICATED"));
    // The error names the name dialled and the names the certificate holds.
    CHECK(
        log.contains("dialled '127.0.0.1'; the certificate presented names "
                     "CN=coordinator"));
    CHECK(log.contains("DNS:localhost"));
    CHECK(by_ip.client().sessions() == 0);
  }
  {
    TestNode by_name(pki().alpha, server.port(), "localhost");
    for (int i = 0; i < 200 && by_name.client().sessions() == 0; ++i) {
      std::this_thread::sleep_for(10ms);
    }
    CHECK(by_name.client().sessions() == 1);
  }
  server.stop();
  t.join();
}

TEST_CASE(
    "channel: a node reconnects with backoff after the coordinator restarts") {
  std::uint16_t port = 0;
  auto first = std::make_unique<TestCoordinator>();
  port = first->port();
  TestNode alpha(pki().alpha, port);
  REQUIRE(first->wait_for("alpha") != nullptr);
  first.reset();  // The coordinator goes away...
  std::this_thread::sleep_for(300ms);
  TestCoordinator second(TestCoordinator::fast_options(),
                         port);  // ...and returns.
  auto conn = second.wait_for("alpha");
  REQUIRE(conn != nullptr);
  // The coordinator admits alpha when it sends Welcome; alpha counts the
  // session when it has read it, a moment later on its own thread.
  const auto until = std::chrono::steady_clock::now() + 2s;
  while (alpha.client().sessions() < 2 &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(10ms);
  }
  CHECK(alpha.client().sessions() >= 2);
  CHECK(conn->request_async(predict_request(torch::ones({1})), 2s)
            .get()
            .has_predict_response());
}

TEST_CASE("channel: backoff grows exponentially with jitter, capped") {
  pr::Backoff b{
      .initial = 100ms, .max = 1000ms, .multiplier = 2.0, .jitter = 0.5};
  std::mt19937_64 rng(1);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double nominal = std::min(1000.0, 100.0 * std::pow(2.0, attempt));
    for (int i = 0; i < 20; ++i) {
      auto d = b.delay(attempt, rng).count();
      CHECK(d >= nominal * 0.5 - 1);
      CHECK(d <= nominal);
    }
  }
}

TEST_CASE("channel: a silent peer is closed after the idle timeout") {
  auto options = TestCoordinator::fast_options();
  options.heartbeat_interval = 100ms;
  options.idle_timeout = 400ms;
  TestCoordinator coordinator(options);
  LogCapture log;
  RawClient silent(coordinator.port(), &pki().alpha);
  REQUIRE(silent.handshake());
  REQUIRE(silent.hello());
  // The coordinator keeps sending heartbeats; this client never answers.
  int heartbeats = 0;
  while (auto e = silent.receive()) {
    if (e->has_heartbeat()) ++heartbeats;
  }
  CHECK(heartbeats >= 2);
  CHECK(log.wait_for("peer=alpha event=idle_timeout"));
  coordinator.forget("alpha");
  check_still_serving(coordinator);
}

namespace {

// A deployment on disk (chorus certs init), for the CRL tests.
struct DiskPki {
  chorus::testing::TempDir dir;
  DiskPki() {
    pr::init_deployment(dir.path(), {"localhost", "127.0.0.1"},
                        {"alpha", "beta"});
  }
  pr::TlsMaterial material(const std::string& name, bool with_crl) const {
    return pr::TlsMaterial::load(dir / "ca.crt", dir / (name + ".crt"),
                                 dir / (name + ".key"),
                                 with_crl ? dir / "crl.pem" : fs_path());
  }
  static std::filesystem::path fs_path() { return {}; }
};

// A server on `endpoints` that admits everyone and remembers the serials of
// the certificates it admitted.
struct OpenServer {
  asio::io_context io;
  std::unique_ptr<pr::Server> server;
  std::mutex mutex;
  std::vector<std::shared_ptr<pr::Connection>> admitted;
  std::thread thread;

  OpenServer(std::vector<tcp::endpoint> endpoints, const pr::TlsMaterial& tls) {
    server = std::make_unique<pr::Server>(
        io, std::move(endpoints), tls, TestCoordinator::fast_options(),
        pr::Welcome{}, [](auto&&...) { return pr::Admission{}; },
        [this](std::shared_ptr<pr::Connection> c, const pr::Hello&) {
          c->start(
              [](const v1::Envelope&) -> asio::awaitable<v1::Envelope> {
                co_return v1::Envelope{};
              },
              {});
          std::lock_guard lock(mutex);
          admitted.push_back(c);
        });
    server->start();
    thread = std::thread([this] { io.run_for(20s); });
  }
  ~OpenServer() {
    {
      std::lock_guard lock(mutex);
      for (auto& c : admitted) c->close("test over");
    }
    server->stop();
    std::this_thread::sleep_for(50ms);
    io.stop();
    thread.join();
  }
  std::vector<std::string> serials() {
    std::lock_guard lock(mutex);
    std::vector<std::string> out;
    for (auto& c : admitted) out.push_back(c->peer_serial());
    return out;
  }
};

// A node dialling with the given material, on its own thread.
struct MaterialNode {
  asio::io_context io;
  pr::Client client;
  std::thread thread;
  MaterialNode(const pr::TlsMaterial& tls, std::uint16_t port,
               const std::string& host = "localhost",
               const std::string& server_name = {})
      : client(
            io, host, port, tls, TestCoordinator::fast_options(),
            pr::Backoff{.initial = 50ms, .max = 200ms},
            [] { return pr::Hello{}; }, doubling_node) {
    client.set_server_name(server_name);
    client.start();
    thread = std::thread([this] { io.run_for(10s); });
  }
  ~MaterialNode() {
    client.stop();
    std::this_thread::sleep_for(50ms);
    io.stop();
    thread.join();
  }
};

bool wait_sessions(pr::Client& client, int n) {
  for (int i = 0; i < 300 && client.sessions() < n; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  return client.sessions() >= n;
}

}  // namespace

TEST_CASE(
    "channel: a revoked certificate fails the handshake, and a reloaded CRL "
    "applies to the next one") {
  DiskPki disk;
  pr::revoke_certificate(disk.dir.path(), "alpha");
  OpenServer open({tcp::endpoint(asio::ip::address_v4::loopback(), 0)},
                  disk.material("coordinator", true));
  LogCapture log;
  {
    MaterialNode alpha(disk.material("alpha", false), open.server->port());
    CHECK(log.wait_for("certificate revoked"));
    // The coordinator's line names the certificate and why.
    CHECK(log.wait_for("event=tls_refused"));
    CHECK(log.contains("CN=alpha"));
    // The node hears it as a refusal of its certificate.
    CHECK(log.wait_for("code=UNAUTHENTICATED"));
    CHECK(alpha.client.sessions() == 0);
  }
  {
    MaterialNode beta(disk.material("beta", false), open.server->port());
    REQUIRE(wait_sessions(beta.client, 1));
    CHECK(open.serials() ==
          std::vector<std::string>{
              pr::inspect_certificate(disk.dir / "beta.crt").serial});
  }
  // Without the CRL (a reload), alpha is admitted again.
  open.server->reload_tls(disk.material("coordinator", false));
  MaterialNode alpha(disk.material("alpha", false), open.server->port());
  CHECK(wait_sessions(alpha.client, 1));
  // A CRL from another CA is refused, and the material in use is kept.
  DiskPki other;
  auto foreign = disk.material("coordinator", false);
  foreign.crl_pem = chorus::read_file(other.dir / "crl.pem");
  std::string msg;
  try {
    open.server->reload_tls(foreign);
  } catch (const chorus::Error& e) {
    msg = e.what();
  }
  CHECK(msg.find("not signed by the federation's CA") != std::string::npos);
}

TEST_CASE(
    "channel: one server listens on IPv4 and IPv6, and a node checks the name "
    "it is told") {
  DiskPki disk;
  OpenServer open({tcp::endpoint(asio::ip::address_v4::loopback(), 0),
                   tcp::endpoint(asio::ip::address_v6::loopback(), 0)},
                  disk.material("coordinator", false));
  const auto port = open.server->port();
  {
    MaterialNode v4(disk.material("alpha", false), port, "127.0.0.1");
    CHECK(wait_sessions(v4.client, 1));
  }
  // ::1 is not in the coordinator's certificate: with server_name
  // "localhost" the node checks the name the certificate does hold...
  {
    MaterialNode v6(disk.material("beta", false), port, "::1", "localhost");
    CHECK(wait_sessions(v6.client, 1));
  }
  // ...and without it, the handshake fails naming both.
  LogCapture log;
  MaterialNode v6(disk.material("beta", false), port, "::1");
  CHECK(log.wait_for("dialled '::1'"));
  CHECK(v6.client.sessions() == 0);
}

TEST_CASE("channel: a node reads renewed TLS files at its next reconnect") {
  DiskPki disk;
  OpenServer open({tcp::endpoint(asio::ip::address_v4::loopback(), 0)},
                  disk.material("coordinator", false));
  LogCapture log;
  asio::io_context io;
  // The node's files, which the test replaces in place.
  chorus::testing::TempDir files;
  chorus::write_file_atomic(files / "n.crt",
                            chorus::read_file(disk.dir / "alpha.crt"));
  chorus::write_file_atomic(files / "n.key",
                            chorus::read_file(disk.dir / "alpha.key"));
  auto source = [&] {
    return pr::TlsMaterial::load(disk.dir / "ca.crt", files / "n.crt",
                                 files / "n.key");
  };
  pr::Client client(
      io, "localhost", open.server->port(), source(),
      TestCoordinator::fast_options(),
      pr::Backoff{.initial = 50ms, .max = 100ms}, [] { return pr::Hello{}; },
      doubling_node);
  client.set_tls_source(source);
  client.start();
  std::thread t([&] { io.run_for(8s); });
  REQUIRE(wait_sessions(client, 1));
  // Renewed: a new key and certificate for the same name.
  pr::request_certificate(files / "renew", "alpha");
  pr::sign_request(disk.dir.path(), files / "renew" / "alpha.csr",
                   pr::SignOptions{.renew = true});
  chorus::write_file_atomic(files / "n.key",
                            chorus::read_file(files / "renew" / "alpha.key"));
  chorus::write_file_atomic(files / "n.crt",
                            chorus::read_file(files / "renew" / "alpha.crt"));
  client.connection()->close("test: reconnect");
  REQUIRE(wait_sessions(client, 2));
  CHECK(log.contains("event=tls_reloaded"));
  const auto renewed = pr::inspect_certificate(files / "n.crt").serial;
  const auto serials = open.serials();
  REQUIRE(serials.size() == 2);
  CHECK(serials[0] != renewed);
  CHECK(serials[1] == renewed);
  client.stop();
  t.join();
}
