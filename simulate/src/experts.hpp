#pragma once
// The simulated nodes' experts: names, architectures, training on each
// node's private shard, and the cache that keeps trained experts between
// runs (keyed by everything their weights depend on). Private to
// simulate/src.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "chorus/core/task.hpp"
#include "chorus/fusion/data_files.hpp"
#include "chorus/fusion/partition.hpp"
#include "chorus/simulate/simulate.hpp"

namespace chorus::simulate {

using Clock = std::chrono::steady_clock;

/// Seconds since `t`.
inline double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

/// The name of node `i` (0-based): alpha, beta, … mu, then node13, ….
std::string node_name(int i);

/// One simulated node's expert.
struct SimExpert {
  std::string name;
  std::vector<std::int64_t> hidden;
  std::vector<std::int64_t> task;  ///< Its classes, in the task's space.
  std::vector<std::string> labels;
  std::string arch;
  std::filesystem::path file;  ///< The builtin expert file.
};

/// Trains (or finds in the cache under `dir`) each node's expert on its
/// share of `train`; adds the training time and cache hits to `result`.
std::vector<SimExpert> prepare_experts(const SimulateOptions& o,
                                       const TaskSpec& task,
                                       const fusion::Examples& train,
                                       const fusion::P1Split& split, int epochs,
                                       const std::filesystem::path& dir,
                                       SimulateResult& result);

/// A CA, the coordinator's certificate and one per expert under `pki`
/// (certificates already there are kept).
void ensure_pki(const std::filesystem::path& pki,
                const std::vector<SimExpert>& experts);

}  // namespace chorus::simulate
