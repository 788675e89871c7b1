#include "chorus/protocol/metrics_server.hpp"

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/read_until.hpp>
#include <asio/steady_timer.hpp>
#include <asio/streambuf.hpp>
#include <asio/write.hpp>
#include <atomic>
#include <thread>

#include "chorus/core/error.hpp"
#include "chorus/core/metrics.hpp"

namespace chorus::protocol {
namespace {

using asio::ip::tcp;

constexpr std::size_t kMaxRequest = 8 * 1024;
constexpr int kMaxScrapes = 32;
constexpr auto kDeadline = std::chrono::seconds(5);

std::string response(int status, std::string_view reason,
                     std::string_view content_type, const std::string& body) {
  return fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n"
      "Connection: close\r\n\r\n{}",
      status, reason, content_type, body.size(), body);
}

// The reply to a request whose head is `head` (up to the blank line).
std::string reply_to(std::string_view head) {
  const auto line = head.substr(0, head.find("\r\n"));
  const auto sp1 = line.find(' ');
  const auto sp2 = line.find(' ', sp1 == line.npos ? line.size() : sp1 + 1);
  if (sp1 == line.npos || sp2 == line.npos) {
    return response(400, "Bad Request", "text/plain", "not an HTTP request\n");
  }
  const auto method = line.substr(0, sp1);
  auto target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  target = target.substr(0, target.find('?'));
  if (target != "/metrics") {
    return response(404, "Not Found", "text/plain",
                    "the metrics are at /metrics\n");
  }
  if (method != "GET" && method != "HEAD") {
    return response(405, "Method Not Allowed", "text/plain",
                    "only GET /metrics\n");
  }
  auto out = response(200, "OK", "text/plain; version=0.0.4; charset=utf-8",
                      metrics::text());
  if (method == "HEAD") out.resize(out.find("\r\n\r\n") + 4);
  return out;
}

struct Scrape : std::enable_shared_from_this<Scrape> {
  Scrape(tcp::socket s, std::atomic<int>& open)
      : socket(std::move(s)),
        timer(socket.get_executor()),
        buffer(kMaxRequest),
        open(open) {}
  ~Scrape() { --open; }

  void start() {
    timer.expires_after(kDeadline);
    timer.async_wait([self = shared_from_this()](std::error_code ec) {
      if (!ec) self->socket.close();
    });
    asio::async_read_until(
        socket, buffer, "\r\n\r\n",
        [self = shared_from_this()](std::error_code ec, std::size_t n) {
          if (ec) {
            if (ec == asio::error::not_found) {  // Over kMaxRequest.
              self->send(response(431, "Request Header Fields Too Large",
                                  "text/plain", "request too large\n"));
            }
            return;
          }
          const std::string head(asio::buffers_begin(self->buffer.data()),
                                 asio::buffers_begin(self->buffer.data()) +
                                     static_cast<std::ptrdiff_t>(n));
          self->send(reply_to(head));
        });
  }

  void send(std::string text) {
    reply = std::move(text);
    asio::async_write(
        socket, asio::buffer(reply),
        [self = shared_from_this()](std::error_code, std::size_t) {
          std::error_code ignored;
          self->socket.shutdown(tcp::socket::shutdown_both, ignored);
          self->socket.close(ignored);
          self->timer.cancel();
        });
  }

  tcp::socket socket;
  asio::steady_timer timer;
  asio::streambuf buffer;
  std::string reply;
  std::atomic<int>& open;
};

}  // namespace

struct MetricsServer::Impl {
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::atomic<int> open{0};
  std::thread thread;

  void accept() {
    acceptor.async_accept([this](std::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted) return;
      if (!ec) {
        if (open.load() >= kMaxScrapes) {
          std::error_code ignored;
          socket.close(ignored);
        } else {
          ++open;
          std::make_shared<Scrape>(std::move(socket), open)->start();
        }
      }
      accept();
    });
  }
};

MetricsServer::MetricsServer(const std::string& address, std::string_view key)
    : impl_(std::make_unique<Impl>()) {
  metrics::check_address(address, key);
  const auto colon = address.rfind(':');
  auto host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[')
    host = host.substr(1, host.size() - 2);
  const auto port = address.substr(colon + 1);
  try {
    tcp::resolver resolver(impl_->io);
    const auto found = resolver.resolve(host, port);
    const tcp::endpoint endpoint = *found.begin();
    auto& a = impl_->acceptor;
    a.open(endpoint.protocol());
    a.set_option(tcp::acceptor::reuse_address(true));
    a.bind(endpoint);
    a.listen();
  } catch (const std::system_error& e) {
    fail(Code::kUnavailable, "{}: cannot serve metrics on {}: {}", key, address,
         e.code().message());
  }
  impl_->accept();
  impl_->thread = std::thread([impl = impl_.get()] { impl->io.run(); });
}

MetricsServer::~MetricsServer() {
  impl_->io.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

std::uint16_t MetricsServer::port() const {
  return impl_->acceptor.local_endpoint().port();
}

}  // namespace chorus::protocol
