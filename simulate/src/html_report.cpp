#include "chorus/simulate/html_report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/version.hpp"
#include "svg.hpp"

namespace chorus::simulate {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using svg::escape;

json read_json(const fs::path& path) {
  try {
    return json::parse(read_file(path));
  } catch (const json::exception& e) {
    fail(Code::kDataLoss, "'{}' is not valid JSON: {}", path.string(),
         e.what());
  }
}

std::vector<json> read_jsonl(const fs::path& path) {
  std::vector<json> out;
  std::istringstream in(read_file(path));
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty()) continue;
    try {
      out.push_back(json::parse(line));
    } catch (const json::exception& e) {
      fail(Code::kDataLoss, "'{}' line {} is not valid JSON: {}", path.string(),
           number, e.what());
    }
  }
  return out;
}

double num(const json& j, const char* key, double fallback = NAN) {
  const auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : fallback;
}

std::string str(const json& j, const char* key) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return "";
  return it->is_string() ? it->get<std::string>() : it->dump();
}

std::string fixed(double v, int digits) {
  return std::isfinite(v) ? fmt::format("{:.{}f}", v, digits) : "-";
}

std::string megabytes(double bytes) {
  return std::isfinite(bytes) ? fmt::format("{:.2f}", bytes / 1e6) : "-";
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(
      std::ceil(p / 100 * static_cast<double>(v.size())) - 1);
  return v[std::min(i, v.size() - 1)];
}

const char* kStyle = R"(
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #202020; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #d0d0d0; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e8e8e8; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
.note { color: #606060; font-size: 0.9em; }
svg { display: block; margin: 0.5em 0; max-width: 100%; height: auto; }
)";

// Where a point of report.json sits on the cost axis: its cost per test
// input; a report written before rows had costs gives queries only (its
// table cells say "-"), placed as if each cost 1.
double cost_of(const json& point) {
  return num(point, "cost_per_test_input",
             num(point, "queries_per_test_input"));
}

// The results table and the cost/accuracy plane (simulate's report.json).
std::string results(const json& report) {
  const auto& rows = report.at("rows");
  std::string out =
      "<h2>Results</h2>\n<table>\n<tr><th>method</th>"
      "<th>accuracy</th><th>accuracy on its task</th>"
      "<th>inputs queried (fusion)</th><th>queries per test "
      "input</th><th>their cost per test input</th><th>MB sent</th>"
      "<th>MB received</th><th>seconds</th></tr>\n";
  std::vector<svg::Point> points;
  for (const auto& r : rows) {
    const auto method = str(r, "method");
    const double task = num(r, "task_accuracy");
    out += fmt::format(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
        "<td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
        escape(method), fixed(num(r, "accuracy"), 4), fixed(task, 4),
        fixed(num(r, "train_queries"), 0),
        fixed(num(r, "queries_per_test_input"), 2),
        fixed(num(r, "cost_per_test_input"), 2),
        megabytes(num(r, "bytes_sent")), megabytes(num(r, "bytes_received")),
        fixed(num(r, "seconds"), 1));
    points.push_back(
        svg::Point{.x = cost_of(r),
                   .y = num(r, "accuracy"),
                   .label = method,
                   .group = method.rfind("expert ", 0) == 0 ? 0 : 1});
  }
  out += "</table>\n";
  // Frugal's λ sweep, when frugal ran: a point per λ on the same plane.
  std::string curve_rows;
  if (const auto curve = report.find("frugal_curve");
      curve != report.end() && curve->is_array()) {
    for (const auto& p : *curve) {
      const auto label = fmt::format("frugal λ={}", fixed(num(p, "lambda"), 2));
      points.push_back(svg::Point{.x = cost_of(p),
                                  .y = num(p, "accuracy"),
                                  .label = label,
                                  .group = 2});
      curve_rows +=
          fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                      fixed(num(p, "lambda"), 2), fixed(num(p, "accuracy"), 4),
                      fixed(num(p, "queries_per_test_input"), 2),
                      fixed(num(p, "cost_per_test_input"), 2));
    }
  }
  out +=
      "<h2>Cost and accuracy</h2>\n<p class=\"note\">Each method's test "
      "accuracy against what its expert queries cost per test input (each "
      "query at its node's <code>--frugal costs</code> entry, 1 for a node "
      "not named): a single expert asks one, the ensembles and foe ask "
      "every expert, frugal fewer (its λ curve, when frugal ran, in its own "
      "colour: a larger λ spends less). Grey: the experts alone.</p>\n";
  out += svg::scatter(points, "expert cost per test input", "test accuracy",
                      "Accuracy against expert cost");
  if (!curve_rows.empty()) {
    out +=
        "<table>\n<tr><th>frugal λ</th><th>accuracy</th><th>queries per "
        "test input</th><th>their cost per test input</th></tr>\n" +
        curve_rows + "</table>\n";
  }
  return out;
}

std::string confusion(const json& report) {
  const auto it = report.find("confusion");
  if (it == report.end() || !it->is_object()) return "";
  const auto& c = *it;
  std::vector<std::string> labels;
  std::vector<std::vector<std::int64_t>> counts;
  try {
    labels = c.at("labels").get<std::vector<std::string>>();
    counts = c.at("matrix").get<std::vector<std::vector<std::int64_t>>>();
  } catch (const json::exception& e) {
    fail(Code::kDataLoss, "report.json: 'confusion' is malformed: {}",
         e.what());
  }
  return fmt::format(
      "<h2>Confusion matrix of {}</h2>\n{}", escape(str(c, "method")),
      svg::heatmap(labels, counts,
                   fmt::format("{} on the test set", str(c, "method"))));
}

// Per round, from metrics.jsonl (simulate and coordinator alike).
std::string rounds(const std::vector<json>& metrics) {
  if (metrics.empty()) return "";
  std::string out =
      "<h2>Rounds</h2>\n<table>\n<tr><th>round</th><th>algorithm</th>"
      "<th>experts fused</th><th>left out</th><th>inputs queried</th>"
      "<th>MB sent</th><th>MB received</th><th>seconds</th></tr>\n";
  std::vector<svg::Bar> bars;
  const std::vector<std::string> phases = {"quorum", "query", "fit", "push",
                                           "adapt"};
  std::vector<double> x, inputs;
  for (const auto& m : metrics) {
    const auto round = num(m, "round");
    std::vector<std::string> left;
    if (auto f = m.find("failed"); f != m.end() && f->is_object()) {
      for (const auto& [node, why] : f->items())
        left.push_back(node + ": " +
                       (why.is_string() ? why.get<std::string>() : why.dump()));
    }
    std::string left_text;
    for (const auto& l : left) left_text += escape(l) + "<br>";
    out += fmt::format(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td style=\"text-align:left\">"
        "{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
        fixed(round, 0), escape(str(m, "algorithm")),
        m.contains("experts") && m["experts"].is_array() ? m["experts"].size()
                                                         : 0,
        left_text.empty() ? "-" : left_text, fixed(num(m, "inputs_queried"), 0),
        megabytes(num(m, "bytes_sent")), megabytes(num(m, "bytes_received")),
        fixed(num(m, "seconds"), 1));
    svg::Bar bar{.label = fmt::format("round {}", fixed(round, 0)),
                 .parts = {}};
    const auto p = m.find("phases");
    for (const auto& phase : phases) {
      bar.parts.push_back(
          p != m.end() ? num(*p, (phase + "_seconds").c_str(), 0) : 0);
    }
    bars.push_back(std::move(bar));
    x.push_back(round);
    inputs.push_back(num(m, "inputs_queried"));
  }
  out += "</table>\n";
  out += svg::stacked_bars(bars, phases, "seconds",
                           "Where each round's time went");
  if (x.size() > 1) {
    out += svg::lines(x, {{.name = "inputs queried", .y = inputs}}, "round",
                      "inputs", "Inputs queried per round");
  }
  return out;
}

struct NodeTotals {
  double inputs = 0, bytes_sent = 0, bytes_received = 0, seconds = 0;
  double requests = 0;
  int left_out = 0;
};

// Per node: the coordinator's view (metrics.jsonl) and, where the run
// directory holds them (simulate), the nodes' own audit logs.
std::string nodes(const fs::path& run_dir, const std::vector<json>& metrics) {
  std::map<std::string, NodeTotals> totals;
  for (const auto& m : metrics) {
    if (auto p = m.find("per_node"); p != m.end() && p->is_object()) {
      for (const auto& [node, s] : p->items()) {
        auto& t = totals[node];
        t.inputs += num(s, "inputs", 0);
        t.bytes_sent += num(s, "bytes_sent", 0);
        t.bytes_received += num(s, "bytes_received", 0);
        t.seconds += num(s, "seconds", 0);
        t.requests += num(s, "requests", 0);
      }
    }
    if (auto f = m.find("failed"); f != m.end() && f->is_object()) {
      for (const auto& [node, why] : f->items()) ++totals[node].left_out;
    }
  }
  std::error_code ec;
  const auto node_dir = run_dir / "nodes";
  std::map<std::string, std::vector<json>> audits;
  if (fs::is_directory(node_dir, ec)) {
    for (const auto& e : fs::directory_iterator(node_dir, ec)) {
      const auto log = e.path() / "audit.jsonl";
      if (fs::is_regular_file(log, ec)) {
        audits[e.path().filename().string()] = read_jsonl(log);
        totals[e.path().filename().string()];
      }
    }
  }
  if (totals.empty()) return "";
  std::string out =
      "<h2>Nodes</h2>\n<table>\n<tr><th>node</th><th>inputs answered</th>"
      "<th>requests</th><th>MB sent to it</th><th>MB received</th>"
      "<th>inputs/s</th><th>rounds left out</th>";
  if (!audits.empty()) {
    out +=
        "<th>latency p50 ms</th><th>p90 ms</th><th>p99 ms</th>"
        "<th>refused</th><th>budget left</th><th>ε spent</th>";
  }
  out += "</tr>\n";
  std::vector<svg::Bar> bars;
  for (const auto& [node, t] : totals) {
    out += fmt::format(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}"
        "</td><td>{}</td>",
        escape(node), fixed(t.inputs, 0), fixed(t.requests, 0),
        megabytes(t.bytes_sent), megabytes(t.bytes_received),
        t.seconds > 0 ? fixed(t.inputs / t.seconds, 0) : "-", t.left_out);
    if (!audits.empty()) {
      std::vector<double> latency;
      int refused = 0;
      std::string budget = "-", epsilon = "-";
      if (auto a = audits.find(node); a != audits.end()) {
        for (const auto& line : a->second) {
          if (str(line, "kind") == "seal") continue;
          if (str(line, "outcome") != "OK") ++refused;
          if (str(line, "kind") == "predict" && str(line, "outcome") == "OK")
            latency.push_back(num(line, "latency_ms", NAN));
          if (auto b = line.find("budget_left"); b != line.end()) {
            budget = b->is_number() ? fmt::format("{}", b->get<std::int64_t>())
                                    : "unlimited";
          }
          if (auto e = line.find("epsilon_spent");
              e != line.end() && e->is_number()) {
            epsilon = fixed(e->get<double>(), 3);
          }
        }
      }
      std::erase_if(latency, [](double v) { return !std::isfinite(v); });
      out += fmt::format(
          "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}"
          "</td><td>{}</td>",
          fixed(percentile(latency, 50), 1), fixed(percentile(latency, 90), 1),
          fixed(percentile(latency, 99), 1), refused, budget, epsilon);
    }
    out += "</tr>\n";
    bars.push_back({.label = node, .parts = {t.inputs}});
  }
  out += "</table>\n";
  out += svg::stacked_bars(bars, {"inputs answered"}, "inputs",
                           "Inputs each node answered");
  return out;
}

// Nodes' adaptations (tae: the bound reached; dro: accuracy on the shots).
std::string adaptations(const std::vector<json>& metrics) {
  std::string rows;
  for (const auto& m : metrics) {
    if (auto a = m.find("adapted"); a != m.end() && a->is_object()) {
      for (const auto& [node, v] : a->items()) {
        rows += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                            fixed(num(m, "round"), 0), escape(node),
                            v.is_number() ? fixed(v.get<double>(), 4) : "-");
      }
    }
  }
  if (rows.empty()) return "";
  return "<h2>Adaptation at the nodes</h2>\n<p class=\"note\">tae: the "
         "PAC-Bayes bound each node's adaptation reached; dro: the adapted "
         "model's accuracy on the node's own shots.</p>\n<table>\n<tr><th>"
         "round</th><th>node</th><th>value</th></tr>\n" +
         rows + "</table>\n";
}

// tae and dro: the nodes' mean test accuracy after adapting the broadcast
// model with k shots per class (simulate's report.json).
std::string adaptation_by_shots(const json& report) {
  const auto it = report.find("adaptation_by_shots");
  if (it == report.end() || !it->is_array() || it->empty()) return "";
  std::vector<double> shots, accuracy;
  std::string rows;
  for (const auto& p : *it) {
    shots.push_back(num(p, "shots"));
    accuracy.push_back(num(p, "accuracy"));
    rows += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                        fixed(num(p, "shots"), 0), fixed(num(p, "accuracy"), 4),
                        fixed(num(p, "nodes"), 0));
  }
  return "<h2>Adaptation by shots</h2>\n<p class=\"note\">Each node adapts "
         "the broadcast model with k of its own labelled examples per class "
         "of its task (0: tae's prior for the task alone) and is scored on "
         "the test examples of its classes; the mean over the nodes.</p>\n" +
         svg::lines(shots,
                    {svg::Series{.name = "mean accuracy", .y = accuracy}},
                    "labelled shots per class", "test accuracy",
                    "Accuracy after adaptation, by shots") +
         "<table>\n<tr><th>shots per class</th><th>mean accuracy</th>"
         "<th>nodes</th></tr>\n" +
         rows + "</table>\n";
}

}  // namespace

std::string render_html_report(const fs::path& run_dir) {
  std::error_code ec;
  const auto report_file = run_dir / "report.json";
  const auto metrics_file = run_dir / "metrics.jsonl";
  const bool has_report = fs::is_regular_file(report_file, ec);
  const bool has_metrics = fs::is_regular_file(metrics_file, ec);
  CHORUS_CHECK_CODE(has_report || has_metrics, Code::kNotFound,
                    "'{}' holds neither report.json nor metrics.jsonl: not a "
                    "run directory of chorus simulate or chorus coordinator",
                    run_dir.string());
  const json report = has_report ? read_json(report_file) : json::object();
  const auto metrics =
      has_metrics ? read_jsonl(metrics_file) : std::vector<json>{};

  std::string summary;
  for (const char* key : {"dataset", "algorithm", "experts", "rounds", "seed",
                          "total_seconds", "test_accuracy", "seconds"}) {
    if (auto it = report.find(key);
        it != report.end() && !it->is_null() && !it->is_array()) {
      summary +=
          fmt::format("<tr><td>{}</td><td>{}</td></tr>\n", key,
                      escape(it->is_number_float()
                                 ? fmt::format("{:.4g}", it->get<double>())
                             : it->is_string() ? it->get<std::string>()
                                               : it->dump()));
    }
  }
  std::string body;
  if (report.contains("rows")) body += results(report);
  body += confusion(report);
  body += rounds(metrics);
  body += adaptation_by_shots(report);
  body += adaptations(metrics);
  body += nodes(run_dir, metrics);
  return fmt::format(
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
      "<title>Chorus run {}</title>\n<style>{}</style>\n</head>\n<body>\n"
      "<h1>Chorus run: {}</h1>\n<table>\n{}</table>\n{}"
      "<p class=\"note\">Written by chorus {} (chorus report) from {}.</p>\n"
      "</body>\n</html>\n",
      escape(run_dir.filename().string()), kStyle, escape(run_dir.string()),
      summary, body, kVersion, escape(run_dir.string()));
}

fs::path write_html_report(const fs::path& run_dir, const fs::path& out) {
  const auto path = out.empty() ? run_dir / "report.html" : out;
  write_file_atomic(path, render_html_report(run_dir));
  return path;
}

}  // namespace chorus::simulate
