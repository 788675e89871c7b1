#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "chorus/coordinator/run.hpp"

/// `chorus simulate`: a whole multi-party fusion on one machine — K nodes
/// with private shards and their own experts, a coordinator, certificates
/// made for the run, real mutual-TLS connections over loopback — with a
/// table of results. Protocol P1 of ALGORITHMS.md on its defaults.
namespace chorus::simulate {

/// What `chorus simulate` runs.
struct SimulateOptions {
  int experts = 5;
  /// Algorithms, comma-separated: the first is the one the coordinator runs
  /// and broadcasts; the others are fitted on the same answers for the table.
  std::string algorithm = "foe-distill,foe";
  /// The algorithms' settings (`--foe`, `--distill`, `--frugal`, `--tae`,
  /// `--dro` KEY=VALUE: the coordinator config's [fusion.<algorithm>] keys).
  coordinator::AlgorithmSettings algorithms;
  /// A built-in data set (`fusion::builtin_sources()`) or a directory with
  /// task.toml and train.* / test.* files (npz, csv, or image folders).
  std::string dataset = "fashion-mnist";
  int rounds = 1;
  std::uint64_t seed = 0;
  /// The run directory.
  std::filesystem::path out = "runs/simulate";
  /// At most this many (and no more than the label space has).
  int classes_per_expert = 4;
  /// 0: 10,000 (protocol P1), or half the training split when it is smaller.
  std::int64_t transfer_size = 0;
  /// -1: 500 (P1), or a fifth of U when that is smaller.
  std::int64_t fusion_labels = -1;
  /// Epochs of each expert's training; 0: 3 for Fashion-MNIST-sized shards,
  /// more for small ones (30,000 / shard size, at most 200).
  int expert_epochs = 0;
  /// Run each node as its own `chorus node` process.
  bool processes = false;
  /// Torch threads (training and fusion); nodes infer on one thread each.
  int threads = 2;
  /// Where experts train, nodes infer and fusion trains: "cpu", "cuda" or
  /// "cuda:N" (fusion/device.hpp).
  std::string device = "cpu";
  /// Data directory override (empty: the default search).
  std::filesystem::path data_dir;
  /// The chorus executable, for --processes.
  std::filesystem::path chorus_binary;
  /// Continue a run from its checkpoints.
  bool resume = false;
};

/// One row of the results table.
struct ResultRow {
  std::string method;
  double accuracy = 0;        ///< Over the whole label space, on the test set.
  double task_accuracy = -1;  ///< On its own classes (experts); -1: n/a.
  std::int64_t train_queries = 0;  ///< Inputs the round asked of the nodes.
  double queries_per_input = 0;    ///< Expert queries per test input.
  /// Their cost per test input: each query at its node's `--frugal costs`
  /// entry, 1 for a node not named (then equal to `queries_per_input`).
  double cost_per_input = 0;
  std::int64_t bytes_sent = 0, bytes_received = 0;
  double seconds = 0;
};

/// What a simulation produced.
struct SimulateResult {
  std::vector<ResultRow> rows;
  std::int64_t classes =
      0;  ///< The label space's size ("acc-10" on Fashion-MNIST).
  std::filesystem::path run_dir;
  double expert_seconds = 0;  ///< Training (0 when every expert was cached).
  int experts_cached = 0;
  double total_seconds = 0;
  /// Frugal's cost/accuracy curve when frugal was run: its test accuracy,
  /// expert queries and their cost (`--frugal costs=…`; 1 a query when
  /// not set) per test input at each λ of a sweep.
  struct FrugalPoint {
    double lambda = 0, accuracy = 0, queries_per_input = 0, cost_per_input = 0;
  };
  std::vector<FrugalPoint> frugal_curve;
  /// tae and dro: what the nodes reach from the broadcast model with k
  /// private labelled shots per class of their task (k = 0: tae's prior
  /// alone), as the mean test accuracy over the nodes on their classes.
  struct AdaptationPoint {
    std::int64_t shots = 0;
    double accuracy = 0;
    std::int64_t nodes = 0;
  };
  std::vector<AdaptationPoint> adaptation_by_shots;
  /// The broadcast model's confusion matrix on the test set: rows the true
  /// labels, columns the predictions, in the order of `label_names`.
  std::string confusion_method;
  std::vector<std::string> label_names;
  std::vector<std::vector<std::int64_t>> confusion;
  /// The page `chorus report` writes (RUN_DIR/report.html).
  std::filesystem::path html_report;
};

/// Runs it. Prints progress to stderr; throws `chorus::Error`.
/// Fashion-MNIST on the defaults is protocol P1 exactly.
SimulateResult run_simulation(const SimulateOptions& options);

/// The table as text.
std::string format_table(const SimulateResult& result);

}  // namespace chorus::simulate
