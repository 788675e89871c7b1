#pragma once
// Serves the process's metrics (chorus/core/metrics.hpp) over plain HTTP:
// GET /metrics answers Prometheus's text format; anything else is 404 (or
// 405 for another method). One thread of its own; each scrape is read with
// a 5-second deadline and at most 8 KiB of request, and at most 32 scrapes
// are served at once, so a slow or hostile client cannot hold it. No TLS:
// bind it to a loopback or monitoring address ([metrics] listen).

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace chorus::protocol {

class MetricsServer {
 public:
  /// Listens on `address` ("host:port" or "[v6]:port"; port 0 takes a free
  /// one). Throws `chorus::Error` naming `key`: INVALID_ARGUMENT for an
  /// address that is not host:port, UNAVAILABLE when it cannot listen
  /// there (the system's reason included).
  MetricsServer(const std::string& address, std::string_view key);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  /// The port it listens on.
  std::uint16_t port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::protocol
