#pragma once

#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "chorus/coordinator/registry.hpp"
#include "chorus/coordinator/remote_oracle.hpp"
#include "chorus/coordinator/status.hpp"
#include "chorus/core/task.hpp"
#include "chorus/fusion/algorithms.hpp"

/// The coordinator's fusion rounds: a state machine over the nodes in a
/// `NodeRegistry` — quorum, query fan-out, fusion, checkpoint, broadcast.
namespace chorus::coordinator {

/// The coordinator's public data: the unlabelled transfer pool U and the
/// labelled fusion set V (rows of U with their labels).
struct PoolData {
  torch::Tensor inputs;  ///< U as models see it: float32 [N, input_shape...].
  torch::Tensor fusion_index;   ///< Rows of U that form V (int64).
  torch::Tensor fusion_labels;  ///< Their labels in the label space (int64).
};

/// Options of the rounds.
struct CoordinatorOptions {
  /// The federation's task: its label space (a node's labels must be names
  /// from it) and the form inputs travel in (`fusion::to_wire_inputs`).
  TaskSpec task;
  /// The fusion algorithm (`fusion::algorithm_names()`).
  std::string algorithm = "foe-distill";
  fusion::AlgorithmOptions algorithm_options;
  /// Rounds: U is split into this many slices; round r queries slice r and
  /// fuses on slices 1..r.
  int rounds = 1;
  /// Nodes needed to run a round (0: the whole roster as it stands when the
  /// round starts, SIGHUP's changes included), and how long to wait for
  /// them.
  std::size_t min_nodes = 1;
  std::chrono::milliseconds quorum_timeout{60000};
  /// After the quorum, how long to wait for the rest of the roster.
  std::chrono::milliseconds settle{1000};
  /// Deadline of one PredictRequest.
  std::chrono::milliseconds request_deadline{60000};
  /// Largest PredictRequest (further capped by each node's max_batch).
  std::int64_t query_batch = 512;
  /// Bytes of PredictRequests in flight across all the nodes of a round
  /// (`InflightBudget`): what keeps the coordinator's memory flat in the
  /// number of nodes.
  std::int64_t max_inflight_bytes = std::int64_t{64} << 20;
  /// The run directory (checkpoints, fused models, metrics.jsonl).
  std::filesystem::path run_dir;
  /// Continue from the checkpoints in `run_dir`, reusing every answer
  /// already collected.
  bool resume = false;
  /// Chunk size of a ModelPush.
  std::size_t push_chunk = std::size_t{1} << 20;
  /// Where the rounds say what they are doing (`chorus status`); none when
  /// null.
  std::shared_ptr<StatusBoard> status;
  /// Called after each round (progress output).
  std::function<void(const struct RoundReport&)> on_round;
  /// Cancels the rounds (Ctrl-C): the round in progress stops at its next
  /// cancellation point — waiting for the quorum, between requests, at the
  /// next training batch, before the push — and `run` throws
  /// `chorus::Error` (CANCELLED). Answers already received stay
  /// checkpointed; `resume` continues from them.
  std::stop_token stop;
};

/// What one round did.
struct RoundReport {
  int round = 0;
  int rounds = 0;
  std::vector<std::string> experts;           ///< Nodes fused this round.
  std::map<std::string, std::string> failed;  ///< Node → why it was left out.
  std::int64_t inputs_queried = 0;  ///< Inputs sent this round, all nodes.
  std::int64_t bytes_sent = 0, bytes_received = 0;
  /// The same, per node.
  std::map<std::string, fusion::QueryStats> per_node;
  std::int64_t pool_size = 0;         ///< |U| fused on.
  std::filesystem::path fused_model;  ///< Empty for ensembles.
  std::vector<std::string> pushed_to;
  /// The nodes that adapted the pushed model to their tasks: tae, node →
  /// the PAC-Bayes bound reached (their prototype embeddings refit p_γ and
  /// are saved with the round); dro, node → the adapted model's accuracy
  /// on its shots (the weights stay at the node).
  std::map<std::string, double> adapted;
  double seconds = 0;
  /// Where `seconds` went: waiting for the quorum, asking the nodes,
  /// fitting (with the algorithm's steps around the fit and saving the
  /// model), pushing the model, and the nodes adapting it (tae, dro).
  struct Phases {
    double quorum = 0, query = 0, fit = 0, push = 0, adapt = 0;
  } phases;
  bool resumed = false;  ///< Taken from a checkpoint, not run.
};

/// "quorum 5.0 s, query 2.1 s, fit 3.4 s, push 0.3 s" (adapt when there
/// was some): for progress lines.
std::string describe_phases(const RoundReport& report);

/// "0 left out", or "2 left out (beta: UNAVAILABLE: ...; gamma: ...)": for
/// progress lines.
std::string describe_left_out(const RoundReport& report);

/// A fused prediction served after the rounds.
struct FusedPrediction {
  torch::Tensor probabilities;  ///< float32 [N, C] over the label space.
  std::int64_t expert_queries =
      0;  ///< Expert answers consumed (inputs × experts).
  /// Their cost: each node's answers times its [fusion.frugal] cost (1
  /// when not priced).
  double expert_cost = 0;
  int round = 0;  ///< The round whose fused model answered.
  /// Experts the fuser needs that were not connected: it answered without
  /// them (their answers uninformative).
  std::vector<std::string> experts_away;
};

/// Runs fusion rounds over the registry's nodes. Use from one thread.
class Coordinator {
 public:
  Coordinator(NodeRegistry& registry, PoolData pool,
              CoordinatorOptions options);
  ~Coordinator();

  /// Runs the remaining rounds. Throws `chorus::Error` when no quorum forms
  /// or no node answers, and CANCELLED when `options.stop` is requested.
  std::vector<RoundReport> run();

  /// After `run`: the fitted algorithm, the experts it fused (in order), and
  /// an oracle that reaches them (for evaluation and fused prediction).
  fusion::Fuser& fuser();
  const std::vector<fusion::ExpertInfo>& experts() const;
  /// The answers the last round fused (to fit further algorithms on them).
  const fusion::FusionData& data() const;
  RemoteOracle& oracle();
  /// Totals over all rounds (queries and bytes of collecting answers).
  fusion::QueryStats collection_stats() const;

  /// After `run`: the fused prediction of `inputs` (float32 as models see
  /// them, shaped like the pool's rows, [N, ...]), asking the nodes as the
  /// algorithm needs (ensemble and foe ask every fused expert, frugal only
  /// those it chooses, distilled models none). Nodes account the queries to
  /// round `rounds + 1`. Throws `chorus::Error` (INVALID_ARGUMENT for a wrong
  /// shape, dtype or non-finite values; a node's error when it fails).
  FusedPrediction predict(const torch::Tensor& inputs);
  /// `predict` for an operator's PredictRequest, whose inputs are in the
  /// task's form (uint8 pixels, or float32 already scaled to [0, 1]; raw
  /// features before the normalisation): the fused answer (probabilities,
  /// label names, algorithm, round, expert queries).
  protocol::PredictAnswer answer(const protocol::PredictCall& call);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::coordinator
