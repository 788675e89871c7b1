#include "../../simulate/src/svg.hpp"

#include <string>

#include "support/doctest.hpp"

namespace svg = chorus::simulate::svg;

namespace {

int count(const std::string& s, const std::string& part) {
  int n = 0;
  for (auto at = s.find(part); at != std::string::npos;
       at = s.find(part, at + part.size()))
    ++n;
  return n;
}

}  // namespace

TEST_CASE("svg: text is escaped") {
  CHECK(svg::escape("a<b>&\"c'") == "a&lt;b&gt;&amp;&quot;c&#39;");
  const auto chart =
      svg::scatter({{.x = 1, .y = 0.5, .label = "<script>", .group = 1}},
                   "x & y", "acc", "T<i>tle");
  CHECK(chart.find("<script>") == std::string::npos);
  CHECK(chart.find("&lt;script&gt;") != std::string::npos);
  CHECK(chart.find("T&lt;i&gt;tle") != std::string::npos);
}

TEST_CASE("svg: ticks are round, increasing and cover the range") {
  for (auto [lo, hi] : std::initializer_list<std::pair<double, double>>{
           {0, 1}, {0.61, 0.83}, {3, 3}, {0, 0}, {-2, 7}, {1000, 98765}}) {
    CAPTURE(lo);
    CAPTURE(hi);
    const auto t = svg::ticks(lo, hi);
    REQUIRE(t.size() >= 2);
    CHECK(t.front() <= lo);
    CHECK(t.back() >= hi);
    for (std::size_t i = 1; i < t.size(); ++i) CHECK(t[i] > t[i - 1]);
    CHECK(t.size() <= 12);
  }
}

TEST_CASE("svg: a scatter has a point and a label per finite point") {
  const auto chart =
      svg::scatter({{.x = 1, .y = 0.8, .label = "a", .group = 0},
                    {.x = 5, .y = 0.9, .label = "b", .group = 1},
                    {.x = NAN, .y = 0.5, .label = "bad", .group = 1}},
                   "queries", "accuracy", "plane");
  CHECK(count(chart, "<circle") == 2);
  CHECK(chart.find(">bad<") == std::string::npos);
  CHECK(chart.find("nan") == std::string::npos);
  CHECK(chart.rfind("<svg", 0) == 0);
  CHECK(chart.find("</svg>") != std::string::npos);
}

TEST_CASE("svg: degenerate data draws an empty frame, never NaN") {
  CHECK(svg::scatter({}, "x", "y", "t").find("no data") != std::string::npos);
  CHECK(svg::stacked_bars({}, {}, "s", "t").find("no data") !=
        std::string::npos);
  CHECK(svg::heatmap({"a", "b"}, {{1}}, "t").find("no data") !=
        std::string::npos);
  const auto one =
      svg::scatter({{.x = 2, .y = 2, .label = "p"}}, "x", "y", "t");
  CHECK(one.find("nan") == std::string::npos);
  CHECK(one.find("inf") == std::string::npos);
  CHECK(count(one, "<circle") == 1);
}

TEST_CASE("svg: a confusion matrix has a cell per pair and counts in it") {
  const auto chart =
      svg::heatmap({"cat", "dog"}, {{8, 2}, {0, 10}}, "confusion");
  CHECK(count(chart, "<rect") == 4);
  CHECK(chart.find("true cat, predicted dog: 2") != std::string::npos);
  CHECK(chart.find(">10<") != std::string::npos);
  CHECK(chart.find(">0<") == std::string::npos);  // Empty cells unlabelled.
}

TEST_CASE("svg: stacked bars have a segment per positive part") {
  const auto chart =
      svg::stacked_bars({{.label = "round 1", .parts = {1, 2, 0}},
                         {.label = "round 2", .parts = {0.5, 0, 3}}},
                        {"quorum", "query", "fit"}, "seconds", "time");
  // 4 segments and 3 legend swatches.
  CHECK(count(chart, "<rect") == 7);
  CHECK(chart.find("round 2") != std::string::npos);
}
