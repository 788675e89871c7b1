#include "chorus/protocol/metrics_server.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "chorus/core/error.hpp"
#include "chorus/core/metrics.hpp"
#include "support/doctest.hpp"

namespace {

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

int dial(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  return fd;
}

// Sends `request` as it is and returns all that comes back until the
// server closes.
std::string http_exchange(std::uint16_t port, const std::string& request) {
  const int fd = dial(port);
  REQUIRE(::write(fd, request.data(), request.size()) ==
          static_cast<ssize_t>(request.size()));
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;)
    out.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return out;
}

std::string get(std::uint16_t port, const std::string& path,
                const std::string& method = "GET") {
  return http_exchange(
      port, method + " " + path + " HTTP/1.1\r\nHost: localhost\r\n\r\n");
}

}  // namespace

TEST_CASE("metrics server: GET /metrics answers the text format over HTTP") {
  chorus::metrics::count("chorus_test_served_total", "Served", {}, 42);
  chorus::protocol::MetricsServer server("127.0.0.1:0", "metrics.listen");
  REQUIRE(server.port() > 0);
  const auto reply = get(server.port(), "/metrics");
  CHECK(reply.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(contains(reply, "Content-Type: text/plain; version=0.0.4"));
  CHECK(contains(reply, "# TYPE chorus_test_served_total counter"));
  CHECK(contains(reply, "\nchorus_test_served_total 42\n"));
  const auto body = reply.substr(reply.find("\r\n\r\n") + 4);
  CHECK(contains(reply, "Content-Length: " + std::to_string(body.size())));
  // Scrapes see the counters as they move.
  chorus::metrics::count("chorus_test_served_total", "Served");
  CHECK(contains(get(server.port(), "/metrics?x=1"),
                 "\nchorus_test_served_total 43\n"));
  const auto head = get(server.port(), "/metrics", "HEAD");
  CHECK(head.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(head.substr(head.find("\r\n\r\n") + 4).empty());
}

TEST_CASE(
    "metrics server: other paths, methods and garbage get an HTTP error") {
  chorus::protocol::MetricsServer server("127.0.0.1:0", "metrics.listen");
  CHECK(get(server.port(), "/").rfind("HTTP/1.1 404", 0) == 0);
  CHECK(get(server.port(), "/metrics", "POST").rfind("HTTP/1.1 405", 0) == 0);
  CHECK(http_exchange(server.port(), "garbage\r\n\r\n")
            .rfind("HTTP/1.1 400", 0) == 0);
  // A request head over 8 KiB is refused, not buffered.
  CHECK(http_exchange(server.port(), "GET /metrics HTTP/1.1\r\nX: " +
                                         std::string(9000, 'a') + "\r\n\r\n")
            .rfind("HTTP/1.1 431", 0) == 0);
  // A client that says nothing does not stop the others.
  const int silent = dial(server.port());
  CHECK(get(server.port(), "/metrics").rfind("HTTP/1.1 200", 0) == 0);
  ::close(silent);
}

TEST_CASE("metrics server: an address it cannot listen on is refused by name") {
  chorus::protocol::MetricsServer first("127.0.0.1:0", "metrics.listen");
  const auto taken = "127.0.0.1:" + std::to_string(first.port());
  try {
    chorus::protocol::MetricsServer second(taken, "metrics.listen");
    FAIL("listened twice");
  } catch (const chorus::Error& e) {
    CHECK(e.code() == chorus::Code::kUnavailable);
    CHECK(
        contains(e.what(), "metrics.listen: cannot serve metrics on " + taken));
  }
  try {
    chorus::protocol::MetricsServer bad("localhost", "metrics.listen");
    FAIL("accepted an address without a port");
  } catch (const chorus::Error& e) {
    CHECK(e.code() == chorus::Code::kInvalidArgument);
  }
}
