#include "report.hpp"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "chorus/core/fs.hpp"
#include "chorus/core/version.hpp"

namespace chorus::simulate {

void write_report(const SimulateOptions& o, const SimulateResult& result) {
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& r : result.rows) {
    rows.push_back({{"method", r.method},
                    {"accuracy", r.accuracy},
                    {"task_accuracy", r.task_accuracy < 0
                                          ? nlohmann::json(nullptr)
                                          : nlohmann::json(r.task_accuracy)},
                    {"train_queries", r.train_queries},
                    {"queries_per_test_input", r.queries_per_input},
                    {"cost_per_test_input", r.cost_per_input},
                    {"bytes_sent", r.bytes_sent},
                    {"bytes_received", r.bytes_received},
                    {"seconds", r.seconds}});
  }
  nlohmann::json report{{"chorus", kVersion},
                        {"experts", o.experts},
                        {"algorithm", o.algorithm},
                        {"dataset", o.dataset},
                        {"rounds", o.rounds},
                        {"seed", o.seed},
                        {"processes", o.processes},
                        {"threads", o.threads},
                        {"expert_training_seconds", result.expert_seconds},
                        {"experts_cached", result.experts_cached},
                        {"total_seconds", result.total_seconds},
                        {"rows", rows}};
  if (!result.adaptation_by_shots.empty()) {
    auto points = nlohmann::json::array();
    for (const auto& p : result.adaptation_by_shots) {
      points.push_back(
          {{"shots", p.shots}, {"accuracy", p.accuracy}, {"nodes", p.nodes}});
    }
    report["adaptation_by_shots"] = std::move(points);
  }
  if (!result.frugal_curve.empty()) {
    auto curve = nlohmann::json::array();
    for (const auto& p : result.frugal_curve) {
      curve.push_back({{"lambda", p.lambda},
                       {"accuracy", p.accuracy},
                       {"queries_per_test_input", p.queries_per_input},
                       {"cost_per_test_input", p.cost_per_input}});
    }
    report["frugal_curve"] = std::move(curve);
  }
  if (!result.confusion.empty()) {
    report["confusion"] = {{"method", result.confusion_method},
                           {"labels", result.label_names},
                           {"matrix", result.confusion}};
  }
  write_file_atomic(o.out / "report.json", report.dump(2) + "\n");
}

std::string format_table(const SimulateResult& r) {
  std::string out =
      fmt::format("{:<44} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
                  "method", fmt::format("acc-{}", r.classes), "acc-task",
                  "queries", "q/test", "MB sent", "MB recv", "seconds");
  for (const auto& row : r.rows) {
    out += fmt::format(
        "{:<44} {:>8.4f} {:>8} {:>9} {:>9.2f} {:>9.2f} {:>9.2f} {:>7.1f}\n",
        row.method, row.accuracy,
        row.task_accuracy < 0 ? std::string("-")
                              : fmt::format("{:.4f}", row.task_accuracy),
        row.train_queries, row.queries_per_input,
        static_cast<double>(row.bytes_sent) / 1e6,
        static_cast<double>(row.bytes_received) / 1e6, row.seconds);
  }
  return out;
}

}  // namespace chorus::simulate
