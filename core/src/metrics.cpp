#include "chorus/core/metrics.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <array>
#include <mutex>
#include <variant>

#include "chorus/core/error.hpp"

namespace chorus::metrics {
namespace {

using CounterFamily = prometheus::Family<prometheus::Counter>;
using GaugeFamily = prometheus::Family<prometheus::Gauge>;
using HistogramFamily = prometheus::Family<prometheus::Histogram>;

struct Histograms {
  HistogramFamily* family;
  prometheus::Histogram::BucketBoundaries buckets;
};

struct State {
  std::shared_ptr<prometheus::Registry> registry =
      std::make_shared<prometheus::Registry>();
  std::mutex mutex;  // Guards `families`.
  std::map<std::string, std::variant<CounterFamily*, GaugeFamily*, Histograms>,
           std::less<>>
      families;
};

State& state() {
  static State s;
  return s;
}

const char* type_name(std::size_t index) {
  constexpr std::array<const char*, 3> kNames = {"counter", "gauge",
                                                 "histogram"};
  return kNames.at(index);
}

// The family `name` of type T, created with `make` on first use.
template <typename T, typename Make>
T& family(std::string_view name, std::size_t index, Make&& make) {
  auto& s = state();
  std::lock_guard lock(s.mutex);
  auto it = s.families.find(name);
  if (it == s.families.end()) {
    it = s.families.emplace(std::string(name), make(*s.registry)).first;
  }
  if (it->second.index() != index) {
    fail(Code::kInternal, "metric '{}' is a {}, not a {}", name,
         type_name(it->second.index()), type_name(index));
  }
  return std::get<T>(it->second);
}

}  // namespace

void count(std::string_view name, std::string_view help, const Labels& labels,
           double value) {
  auto* f = family<CounterFamily*>(name, 0, [&](prometheus::Registry& r) {
    return &prometheus::BuildCounter()
                .Name(std::string(name))
                .Help(std::string(help))
                .Register(r);
  });
  f->Add(labels).Increment(value);
}

void set(std::string_view name, std::string_view help, const Labels& labels,
         double value) {
  auto* f = family<GaugeFamily*>(name, 1, [&](prometheus::Registry& r) {
    return &prometheus::BuildGauge()
                .Name(std::string(name))
                .Help(std::string(help))
                .Register(r);
  });
  f->Add(labels).Set(value);
}

std::span<const double> latency_buckets() {
  static constexpr std::array<double, 14> kBuckets = {
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
      0.25,  0.5,    1,     2.5,  5,     15,   60};
  return kBuckets;
}

void observe(std::string_view name, std::string_view help, const Labels& labels,
             double value, std::span<const double> buckets) {
  auto& h = family<Histograms>(name, 2, [&](prometheus::Registry& r) {
    return Histograms{&prometheus::BuildHistogram()
                           .Name(std::string(name))
                           .Help(std::string(help))
                           .Register(r),
                      {buckets.begin(), buckets.end()}};
  });
  h.family->Add(labels, h.buckets).Observe(value);
}

double value(std::string_view name, const Labels& labels) {
  auto& s = state();
  std::lock_guard lock(s.mutex);
  auto it = s.families.find(name);
  if (it == s.families.end()) return 0;
  if (auto* c = std::get_if<CounterFamily*>(&it->second)) {
    return (*c)->Has(labels) ? (*c)->Add(labels).Value() : 0;
  }
  if (auto* g = std::get_if<GaugeFamily*>(&it->second)) {
    return (*g)->Has(labels) ? (*g)->Add(labels).Value() : 0;
  }
  return 0;
}

std::string text() {
  return prometheus::TextSerializer().Serialize(state().registry->Collect());
}

void check_address(const std::string& address, std::string_view key) {
  const auto colon = address.rfind(':');
  const bool v6 = !address.empty() && address.front() == '[';
  const bool ok =
      colon != std::string::npos && colon > 0 && colon + 1 < address.size() &&
      colon + 6 >= address.size() && (!v6 || address[colon - 1] == ']') &&
      address.find_first_not_of("0123456789", colon + 1) == std::string::npos &&
      std::stoul(address.substr(colon + 1)) <= 65535;
  if (!ok) {
    fail(Code::kInvalidArgument,
         "{} = \"{}\" is not host:port (e.g. \"127.0.0.1:9464\" or "
         "\"[::1]:9464\")",
         key, address);
  }
}

}  // namespace chorus::metrics
