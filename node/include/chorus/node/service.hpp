#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "chorus/core/error.hpp"
#include "chorus/core/task.hpp"
#include "chorus/node/policy.hpp"
#include "chorus/protocol/audit.hpp"
#include "chorus/protocol/messages.hpp"

/// What a node does with each request, independent of the network: the
/// session (session.hpp) moves envelopes and turns them into values
/// (protocol/messages.hpp), this decides what to answer and throws
/// `chorus::Error` to refuse. No torch or protobuf in this header, no Asio
/// in its implementation.
namespace chorus::node {

class Expert;
struct LabelledShots;

/// Options of a `NodeService`.
struct NodeServiceOptions {
  QueryPolicy policy;
  /// Where pushed global models are stored (created when missing).
  std::filesystem::path state_dir;
  /// The audit log; none when empty.
  std::filesystem::path audit_log;
  /// Seals the audit log's hash chain with this PEM private key (the
  /// node's own) every `audit_seal_every` lines and at shutdown, in the
  /// name `audit_signer`; none when empty.
  std::string audit_key_pem;
  std::string audit_signer;
  std::int64_t audit_seal_every = 100;
  /// Free-form descriptor metadata (shown to the coordinator's operator).
  std::map<std::string, std::string> metadata;
  /// Inference runs over at most this many inputs at once.
  std::int64_t inference_batch = 256;
  /// Private labelled examples for adapting a pushed tae model; without
  /// them the node refuses AdaptRequests (FAILED_PRECONDITION).
  std::shared_ptr<const LabelledShots> shots;
  /// Largest model a coordinator may push.
  std::uint64_t max_model_bytes = std::uint64_t{1} << 30;
};

/// The global model the node holds, as its manifest records it.
struct StoredModel {
  std::uint32_t round = 0;
  std::string algorithm;
  std::string spec;
  std::string sha256_hex;
  std::filesystem::path file;
};

/// A predict request that passed admission, waiting for a worker.
struct PredictJob;

/// The node's request handling. Thread-safe.
class NodeService {
 public:
  NodeService(std::unique_ptr<Expert> expert, NodeServiceOptions options);
  ~NodeService();

  /// The Hello this node sends: its expert descriptor and policy.
  protocol::Hello hello() const;

  /// Takes the task a coordinator announced in its Welcome (none from a 1.1
  /// coordinator): later PredictRequests must bring inputs in its dtype and
  /// shape, which the node scales and normalises before its expert sees
  /// them. Returns why the expert does not fit the task (naming both sides'
  /// shapes, or the label outside the space) and keeps the previous task
  /// then; nullopt when it fits.
  std::optional<std::string> accept_task(const std::optional<TaskSpec>& task);

  /// A coordinator's Welcome said it is at `round` (0 before any): from now
  /// on a ModelPush of an older round — a delayed or replayed push — is
  /// refused (FAILED_PRECONDITION) and the stored model kept. So is a push
  /// older than one this coordinator already pushed since. A new
  /// coordinator run (a new connection, its Welcome at round 0) may push
  /// round 1 again.
  void welcomed(std::uint32_t round);

  /// Admission of a PredictRequest (cheap; runs on the network thread):
  /// decodes and validates the inputs, charges the budget, reserves rate
  /// capacity. Throws `chorus::Error`: INVALID_ARGUMENT naming the expected
  /// shape and dtype, or for NaN/Inf inputs (refused, never answered);
  /// RESOURCE_EXHAUSTED naming what remains. Nothing is spent on a refusal.
  /// Inputs are float32 as the expert takes them, or — with a task — in the
  /// task's dtype (uint8 pixels), scaled and normalised here.
  std::shared_ptr<PredictJob> admit_predict(const protocol::PredictCall& call);
  /// How long the job must wait for the rate limit.
  static std::chrono::milliseconds wait_of(const PredictJob& job);
  /// Runs the expert and shapes its answer per the policy (a worker thread).
  protocol::PredictAnswer run_predict(PredictJob& job);

  /// One ModelPush chunk; the ack says what was done. Throws
  /// `chorus::Error` (DATA_LOSS for a digest or size mismatch,
  /// FAILED_PRECONDITION for a chunk out of order); the previously stored
  /// model is kept on any error.
  protocol::Ack receive_model_chunk(const protocol::ModelChunk& chunk);

  /// An AdaptRequest: adapts the pushed tae global model to the task (the
  /// request's τ*, or the node's own) with the node's private shots and
  /// returns only the prototype embedding (mean, log-variance of q_λ) and
  /// the bound. Throws `chorus::Error`: FAILED_PRECONDITION without a tae
  /// model or without shots.
  protocol::AdaptAnswer adapt(const protocol::AdaptCall& call);
  /// A WeightsRequest: the builtin expert's spec and flattened weights,
  /// only when the operator opted in ([expert] share_weights; else
  /// PERMISSION_DENIED); FAILED_PRECONDITION for an expert that is not a
  /// builtin model.
  protocol::WeightsAnswer weights(const protocol::WeightsCall& call);

  /// Writes the audit record of a finished request (its peer, kind, id,
  /// round and inputs as `protocol::audit_record_of` reads them).
  void record(const protocol::AuditRecord& request, Code outcome,
              const std::string& message,
              std::chrono::steady_clock::duration latency);

  /// The latest stored global model, if any.
  std::optional<StoredModel> stored_model() const;
  /// Inputs answered so far.
  std::int64_t inputs_answered() const;

  /// Sets the budget gauges (chorus_node_budget_*) to the ledger's state:
  /// at start and after every request.
  void publish_budget() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Reads the manifest of the global model stored in `state_dir`, if any.
/// Throws `chorus::Error` (DATA_LOSS) for a corrupt manifest.
std::optional<StoredModel> read_stored_model(
    const std::filesystem::path& state_dir);

/// Stores a global model's bytes in `state_dir` (global-round-R.pt and the
/// manifest, each written atomically), as a push does.
StoredModel store_global_model(const std::filesystem::path& state_dir,
                               std::uint32_t round,
                               const std::string& algorithm,
                               const std::string& spec,
                               const std::string& bytes);

}  // namespace chorus::node
