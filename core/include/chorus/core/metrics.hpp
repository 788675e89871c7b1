#pragma once
// The process's Prometheus metrics (the registry and text format of
// prometheus-cpp, Debian's prometheus-cpp-dev), kept behind this header so
// that no other file sees prometheus-cpp. Metrics are recorded whether or
// not they are served; `protocol::MetricsServer` (metrics_server.hpp) serves
// them over HTTP at /metrics ([metrics] listen, off by default).
// docs/observability.md lists every metric.
//
// Names follow Prometheus's conventions: chorus_<party>_<what>_<unit>, with
// _total for counters and base units (seconds, bytes). A name is one type
// for the life of the process: recording it as another type throws.

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace chorus::metrics {

using Labels = std::map<std::string, std::string>;

/// Adds `value` (>= 0) to the counter `name` with `labels`, creating it
/// (with `help`) on first use.
void count(std::string_view name, std::string_view help,
           const Labels& labels = {}, double value = 1);

/// Sets the gauge `name` with `labels` to `value`.
void set(std::string_view name, std::string_view help, const Labels& labels,
         double value);

/// Latency buckets, in seconds: 1 ms to 60 s.
std::span<const double> latency_buckets();

/// Observes `value` in the histogram `name` with `labels`; `buckets` (upper
/// bounds, increasing) are fixed when the name is first used.
void observe(std::string_view name, std::string_view help, const Labels& labels,
             double value, std::span<const double> buckets = latency_buckets());

/// The current value of a counter or gauge (0 when it was never recorded);
/// for tests and reports.
double value(std::string_view name, const Labels& labels = {});

/// Every metric in Prometheus's text exposition format, as served.
std::string text();

/// Throws `chorus::Error` (INVALID_ARGUMENT, naming `key`) unless `address`
/// is "host:port" or "[v6]:port" with a port of 0..65535.
void check_address(const std::string& address, std::string_view key);

}  // namespace chorus::metrics
