#include "chorus/core/metrics.hpp"

#include <string>

#include "chorus/core/error.hpp"
#include "support/doctest.hpp"

namespace {

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("metrics: counters, gauges and histograms in the text format") {
  namespace m = chorus::metrics;
  m::count("chorus_test_things_total", "Things counted", {{"kind", "a"}});
  m::count("chorus_test_things_total", "Things counted", {{"kind", "a"}}, 2);
  m::count("chorus_test_things_total", "Things counted", {{"kind", "b"}});
  CHECK(m::value("chorus_test_things_total", {{"kind", "a"}}) == 3);
  CHECK(m::value("chorus_test_things_total", {{"kind", "b"}}) == 1);
  CHECK(m::value("chorus_test_things_total", {{"kind", "c"}}) == 0);
  CHECK(m::value("chorus_test_never_recorded") == 0);
  m::set("chorus_test_level", "A level", {}, 7.5);
  m::set("chorus_test_level", "A level", {}, 2);
  CHECK(m::value("chorus_test_level") == 2);
  m::observe("chorus_test_duration_seconds", "A duration", {{"kind", "a"}},
             0.003);
  m::observe("chorus_test_duration_seconds", "A duration", {{"kind", "a"}}, 2);
  const auto text = m::text();
  CHECK(contains(text, "# HELP chorus_test_things_total Things counted"));
  CHECK(contains(text, "# TYPE chorus_test_things_total counter"));
  CHECK(contains(text, "chorus_test_things_total{kind=\"a\"} 3"));
  CHECK(contains(text, "# TYPE chorus_test_level gauge"));
  CHECK(contains(text, "chorus_test_level 2"));
  CHECK(contains(text, "# TYPE chorus_test_duration_seconds histogram"));
  CHECK(contains(
      text, "chorus_test_duration_seconds_bucket{kind=\"a\",le=\"0.005\"} 1"));
  CHECK(contains(
      text, "chorus_test_duration_seconds_bucket{kind=\"a\",le=\"+Inf\"} 2"));
  CHECK(contains(text, "chorus_test_duration_seconds_count{kind=\"a\"} 2"));
}

TEST_CASE("metrics: a name keeps its type") {
  chorus::metrics::count("chorus_test_typed_total", "Typed");
  try {
    chorus::metrics::set("chorus_test_typed_total", "Typed", {}, 1);
    FAIL("no error");
  } catch (const chorus::Error& e) {
    CHECK(contains(e.what(), "'chorus_test_typed_total' is a counter"));
  }
}

TEST_CASE("metrics: an address that is not host:port is refused") {
  for (const char* bad :
       {"9464", "localhost", "127.0.0.1:", ":9464", "127.0.0.1:99999",
        "127.0.0.1:94a", "::1:9464x", "[::1:9464"}) {
    CAPTURE(bad);
    try {
      chorus::metrics::check_address(bad, "metrics.listen");
      FAIL("accepted");
    } catch (const chorus::Error& e) {
      CHECK(e.code() == chorus::Code::kInvalidArgument);
      CHECK(contains(e.what(), "metrics.listen"));
    }
  }
  chorus::metrics::check_address("[::1]:9464", "metrics.listen");
  chorus::metrics::check_address("0.0.0.0:0", "metrics.listen");
}
