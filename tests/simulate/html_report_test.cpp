#include "chorus/simulate/html_report.hpp"

#include <fstream>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "support/doctest.hpp"
#include "support/temp_dir.hpp"

namespace {

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("report: a run directory becomes one self-contained page") {
  chorus::testing::TempDir dir;
  std::ofstream(dir / "report.json") << R"J({
    "dataset": "wine", "algorithm": "foe", "experts": 2, "rounds": 1,
    "rows": [
      {"method": "expert a (0,1)", "accuracy": 0.6, "task_accuracy": 0.9,
       "train_queries": 50, "queries_per_test_input": 1.0,
       "bytes_sent": 1000, "bytes_received": 200, "seconds": 0.1},
      {"method": "foe (broadcast)", "accuracy": 0.95, "task_accuracy": null,
       "train_queries": 100, "queries_per_test_input": 2.0,
       "cost_per_test_input": 3.5,
       "bytes_sent": 2000, "bytes_received": 400, "seconds": 0.5}],
    "adaptation_by_shots": [
      {"shots": 0, "accuracy": 0.55, "nodes": 2},
      {"shots": 5, "accuracy": 0.875, "nodes": 2}],
    "frugal_curve": [
      {"lambda": 0.0, "accuracy": 0.94, "queries_per_test_input": 1.9},
      {"lambda": 0.1, "accuracy": 0.81, "queries_per_test_input": 1.1,
       "cost_per_test_input": 2.35}],
    "confusion": {"method": "foe", "labels": ["class <0>", "class 1"],
                  "matrix": [[9, 1], [0, 10]]}})J";
  std::ofstream(dir / "metrics.jsonl")
      << R"J({"round":1,"algorithm":"foe","experts":["a"],"failed":{"b":"UNAVAILABLE: gone"},"inputs_queried":50,"bytes_sent":1000,"bytes_received":200,"seconds":2.5,"phases":{"quorum_seconds":1,"query_seconds":1,"fit_seconds":0.5,"push_seconds":0,"adapt_seconds":0},"per_node":{"a":{"inputs":50,"requests":1,"bytes_sent":1000,"bytes_received":200,"seconds":0.5}},"adapted":{}})J"
      << "\n";
  std::filesystem::create_directories(dir / "nodes" / "a");
  std::ofstream(dir / "nodes" / "a" / "audit.jsonl")
      << R"J({"kind":"predict","outcome":"OK","inputs":50,"latency_ms":4.0,"budget_left":950,"epsilon_spent":0.4321})J"
      << "\n"
      << R"J({"kind":"predict","outcome":"RESOURCE_EXHAUSTED","inputs":50,"latency_ms":0.1,"budget_left":950})J"
      << "\n";
  const auto path = chorus::simulate::write_html_report(dir.path());
  CHECK(path == dir / "report.html");
  const auto html = chorus::read_file(path);
  CHECK(html.rfind("<!DOCTYPE html>", 0) == 0);
  CHECK(contains(html, "<td>foe (broadcast)</td><td>0.9500</td>"));
  // The plane's x is what the queries cost (foe: 2 queries costing 3.5),
  // queries where a report predates costs (the expert row, λ = 0 below).
  CHECK(contains(html, "Accuracy against expert cost"));
  CHECK(contains(html, "<td>2.00</td><td>3.50</td>"));
  CHECK(contains(html, "<td>1.00</td><td>-</td>"));
  CHECK(contains(html, "<title>foe (broadcast): 3.5 , 0.95</title>"));
  CHECK(contains(html, "<title>expert a (0,1): 1 , 0.6</title>"));
  CHECK(contains(html, "<title>frugal λ=0.10: 2.35 , 0.81</title>"));
  CHECK(contains(html, "<title>frugal λ=0.00: 1.9 , 0.94</title>"));
  // tae/dro: accuracy by shots, drawn and tabled.
  CHECK(contains(html, "Accuracy after adaptation, by shots"));
  CHECK(contains(html, "<tr><td>5</td><td>0.8750</td><td>2</td></tr>"));
  // Frugal's λ curve: on the plane and in its table.
  CHECK(contains(html, "frugal λ=0.10"));
  CHECK(contains(
      html, "<tr><td>0.10</td><td>0.8100</td><td>1.10</td><td>2.35</td></tr>"));
  // A report from before costs were recorded: its cost cell is "-".
  CHECK(contains(
      html, "<tr><td>0.00</td><td>0.9400</td><td>1.90</td><td>-</td></tr>"));
  CHECK(contains(html, "class &lt;0&gt;"));  // Escaped label names.
  CHECK(contains(html, "true class 1, predicted class 1: 10"));
  CHECK(contains(html, "b: UNAVAILABLE: gone"));  // Left out, and why.
  CHECK(contains(html, "Where each round&#39;s time went"));
  CHECK(contains(html, "<td>4.0</td>"));    // a's p50 latency.
  CHECK(contains(html, "<td>950</td>"));    // a's budget left.
  CHECK(contains(html, "<td>0.432</td>"));  // a's ε spent.
  // Self-contained: no script, nothing fetched.
  CHECK_FALSE(contains(html, "<script"));
  CHECK_FALSE(contains(html, "src="));
  CHECK_FALSE(contains(html, "href="));
  CHECK_FALSE(contains(html, "url("));
  CHECK_FALSE(contains(html, "nan"));
}

TEST_CASE(
    "report: a directory that is not a run, or a corrupt file, is refused by "
    "name") {
  chorus::testing::TempDir dir;
  try {
    chorus::simulate::render_html_report(dir.path());
    FAIL("no error");
  } catch (const chorus::Error& e) {
    CHECK(e.code() == chorus::Code::kNotFound);
    CHECK(contains(e.what(), "neither report.json nor metrics.jsonl"));
  }
  std::ofstream(dir / "metrics.jsonl") << "{\"round\": 1}\n{oops\n";
  try {
    chorus::simulate::render_html_report(dir.path());
    FAIL("no error");
  } catch (const chorus::Error& e) {
    CHECK(e.code() == chorus::Code::kDataLoss);
    CHECK(contains(e.what(), "metrics.jsonl' line 2"));
  }
}
