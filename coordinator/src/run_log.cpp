#include "run_log.hpp"

#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"

namespace chorus::coordinator {

namespace fs = std::filesystem;

RunLog::RunLog(fs::path run_dir, int rounds)
    : run_dir_(std::move(run_dir)), rounds_(rounds) {}

fs::path RunLog::manifest(int round) const {
  return run_dir_ / "checkpoints" / fmt::format("round-{}.json", round);
}

int RunLog::last_complete_round() const {
  int last = 0;
  std::error_code ec;
  for (int r = 1; r <= rounds_; ++r) {
    if (fs::exists(manifest(r), ec)) last = r;
  }
  return last;
}

void RunLog::start_fresh() const {
  std::error_code ec;
  fs::remove(run_dir_ / "metrics.jsonl", ec);
}

nlohmann::json phases_json(const RoundReport& report) {
  const auto& p = report.phases;
  return {{"quorum_seconds", p.quorum},
          {"query_seconds", p.query},
          {"fit_seconds", p.fit},
          {"push_seconds", p.push},
          {"adapt_seconds", p.adapt}};
}

nlohmann::json per_node_json(const RoundReport& report) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [name, q] : report.per_node) {
    out[name] = {
        {"requests", q.requests},
        {"inputs", q.inputs},
        {"bytes_sent", q.bytes_sent},
        {"bytes_received", q.bytes_received},
        {"seconds", q.seconds},
        {"inputs_per_second",
         q.seconds > 0 ? static_cast<double>(q.inputs) / q.seconds : 0.0}};
  }
  return out;
}

void RunLog::record(const RoundReport& report,
                    const std::string& algorithm) const {
  nlohmann::json line{{"round", report.round},
                      {"rounds", report.rounds},
                      {"algorithm", algorithm},
                      {"experts", report.experts},
                      {"failed", report.failed},
                      {"pool_size", report.pool_size},
                      {"inputs_queried", report.inputs_queried},
                      {"bytes_sent", report.bytes_sent},
                      {"bytes_received", report.bytes_received},
                      {"per_node", per_node_json(report)},
                      {"fused_model", report.fused_model.filename().string()},
                      {"pushed_to", report.pushed_to},
                      {"adapted", report.adapted},
                      {"seconds", report.seconds},
                      {"phases", phases_json(report)}};
  const auto metrics_file = run_dir_ / "metrics.jsonl";
  {
    std::ofstream metrics(metrics_file, std::ios::app);
    metrics << line.dump() << "\n";
    metrics.flush();
    CHORUS_CHECK_CODE(metrics.good(), Code::kInternal, "cannot append to {}",
                      metrics_file.string());
  }
  // The manifest marks the round complete; it is written last.
  write_file_atomic(manifest(report.round), line.dump(2) + "\n");
}

}  // namespace chorus::coordinator
