#pragma once
// The run directory's record of the rounds: metrics.jsonl (one line per
// round, appended) and checkpoints/round-R.json, the manifest that marks
// round R complete (written last, atomically). `--resume` starts after the
// last manifest.

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "chorus/coordinator/coordinator.hpp"

namespace chorus::coordinator {

/// A round's queries per node (requests, inputs, bytes, answering time and
/// rate), for metrics.jsonl and report.json.
nlohmann::json per_node_json(const RoundReport& report);
/// Where a round's seconds went (`RoundReport::phases`).
nlohmann::json phases_json(const RoundReport& report);

class RunLog {
 public:
  RunLog(std::filesystem::path run_dir, int rounds);

  /// The last complete round (0: none).
  int last_complete_round() const;
  /// A fresh run: the metrics of an earlier one are removed.
  void start_fresh() const;
  /// Appends `report` (of a run of `algorithm`) to metrics.jsonl, then
  /// writes its manifest. Blocking file work; throws `chorus::Error`.
  void record(const RoundReport& report, const std::string& algorithm) const;

 private:
  std::filesystem::path manifest(int round) const;
  std::filesystem::path run_dir_;
  int rounds_;
};

}  // namespace chorus::coordinator
