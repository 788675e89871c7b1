#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "chorus/core/task.hpp"

/// The chorus.v1 messages as plain C++ values. Nodes, the coordinator and
/// the runners speak these; only the codec (codec.hpp) and the sessions that
/// move envelopes see the protobuf types. No protobuf, torch or Asio here.
namespace chorus::protocol {

/// The protocol version this build speaks.
inline constexpr std::uint32_t kProtocolMajor = 1;
/// 1.1: operators. 1.2: the task in Welcome; inputs in the task's dtype.
inline constexpr std::uint32_t kProtocolMinor = 7;

/// Element types a tensor may travel in.
enum class DType {
  kUnspecified,  ///< Unknown or missing on the wire: refused when decoded.
  kFloat32,
  kFloat16,
  kBFloat16,
  kInt64,
  kUInt8,
};

/// "float32", "float16", "bfloat16", "int64", "uint8" or "unspecified".
const char* dtype_name(DType dtype);
/// The name the wire's enum gives it ("DTYPE_UINT8"), for messages about
/// what a peer sent.
std::string wire_dtype_name(DType dtype);

/// A tensor as it travels: dtype, shape and little-endian contiguous bytes.
/// `tensor_codec.hpp` turns it into a torch tensor, checking the three
/// agree.
struct TensorBlob {
  DType dtype = DType::kUnspecified;
  std::vector<std::int64_t> shape;
  std::string data;

  /// The leading dimension (0 for a scalar).
  std::int64_t rows() const { return shape.empty() ? 0 : shape.front(); }
};

/// Bounds a decoder enforces before allocating.
struct TensorLimits {
  std::int64_t max_rank = 8;
  std::int64_t max_elements = std::int64_t{1} << 28;  // 1 GiB of float32.
};

/// Bytes of one element of `dtype`; 0 for kUnspecified.
std::int64_t dtype_size(DType dtype);

/// The number of elements of `blob` once its dtype, shape and bytes are
/// checked to agree within `limits`. Throws `chorus::Error`
/// (INVALID_ARGUMENT) naming the fault: an unspecified dtype, a negative
/// dimension, rank or element count above `limits`, or a byte length that
/// is not shape × element size. No torch: what `to_tensor` checks before it
/// allocates, and what the fuzzers reach.
std::int64_t checked_elements(const TensorBlob& blob,
                              const TensorLimits& limits = {});

/// The form of a node's answers.
enum class OutputForm {
  kProbabilities,  ///< The full distribution over the expert's labels.
  kTopK,           ///< The k largest probabilities, the rest zero.
  kLabelOnly,      ///< One-hot of the arg-max.
};

/// What a node's expert takes and answers.
struct ExpertDescriptor {
  std::vector<std::int64_t> input_shape;  ///< One input, e.g. [1, 28, 28].
  DType input_dtype = DType::kFloat32;
  std::vector<std::string> labels;
  std::map<std::string, std::string> metadata;  ///< For humans and reports.
  std::vector<float> task_descriptor;
};

/// The query policy a node announces (it enforces its own copy).
/// One (ε, δ) differential-privacy guarantee a node announces (1.6).
struct PrivacyGuarantee {
  /// "dp-sgd": its expert was trained with DP-SGD, every answer is
  /// post-processing; "gnmax": every answer is a noisy argmax, accounted.
  std::string mechanism;
  double epsilon = 0;  ///< The guarantee (gnmax: the lifetime budget).
  double delta = 0;
  double epsilon_spent = 0;  ///< gnmax: spent when it said Hello.
  std::string accountant;
  std::map<std::string, std::string> parameters;
};

struct PolicyAnnouncement {
  std::uint64_t max_batch = 1;  ///< Largest number of inputs per Predict.
  std::optional<std::uint64_t> total_budget;  ///< Inputs over its lifetime.
  std::optional<std::uint64_t> round_budget;  ///< Inputs per round.
  double rate_limit = 0;                      ///< Inputs per second; 0: none.
  OutputForm output_form = OutputForm::kProbabilities;
  std::uint32_t top_k = 0;
  double temperature = 1;
  double noise_std = 0;
  /// Its lifetime budget left when it said Hello, when it has one.
  std::optional<std::uint64_t> total_remaining;
  /// Its formal privacy guarantees; none from a node before 1.6 or one
  /// without any.
  std::vector<PrivacyGuarantee> privacy;
};

/// A client's first message: its expert and policy (a node's), or the
/// capability "operator".
struct Hello {
  std::uint32_t protocol_major = kProtocolMajor;
  std::uint32_t protocol_minor = kProtocolMinor;
  std::string software;  ///< e.g. "chorus 0.1.0".
  ExpertDescriptor expert;
  PolicyAnnouncement policy;
  std::vector<std::string> capabilities;  ///< e.g. "predict", "adapt".

  /// Whether it announced `capability`.
  bool can(std::string_view capability) const;
};

/// The coordinator's answer to an admitted Hello.
struct Welcome {
  std::uint32_t protocol_major = kProtocolMajor;
  std::uint32_t protocol_minor = kProtocolMinor;
  std::string coordinator;  ///< Its name (certificate CN).
  std::uint32_t round = 0;  ///< The round in progress, 0 before any.
  std::uint32_t heartbeat_interval_ms = 0;
  std::uint32_t idle_timeout_ms = 0;
  /// The federation's task; none from a 1.1 coordinator.
  std::optional<TaskSpec> task;
};

/// Answers to inputs, please.
struct PredictCall {
  std::uint32_t round = 0;
  TensorBlob inputs;              ///< [N, input_shape...] in the task's dtype.
  std::uint32_t deadline_ms = 0;  ///< The caller gives up after this long.
};

/// A node's (or the coordinator's fused) answers.
struct PredictAnswer {
  TensorBlob outputs;  ///< float32 [N, labels], per the policy.
  OutputForm form = OutputForm::kProbabilities;
  std::optional<std::uint64_t> budget_remaining;
  double noise_std = 0;
  /// The coordinator's fused answers only: the label names (the columns),
  /// the algorithm, its round, and the expert answers consumed.
  std::vector<std::string> labels;
  std::string algorithm;
  std::uint32_t fused_round = 0;
  std::uint64_t expert_queries = 0;
  /// Their cost under the coordinator's node costs (1 an answer unpriced).
  double expert_cost = 0;
  /// Experts of the fused model that were away (answered without them).
  std::vector<std::string> experts_away;
};

/// One chunk of a fused model being pushed to a node.
struct ModelChunk {
  std::uint32_t round = 0;
  std::string algorithm;  ///< e.g. "foe-distill", "tae".
  std::string spec;       ///< The fused model's architecture spec.
  std::uint32_t chunk_index = 0;
  std::uint32_t chunk_count = 0;
  std::uint64_t total_bytes = 0;  ///< The whole file.
  std::string sha256;             ///< 32 bytes, of the whole file.
  std::string data;               ///< This chunk's bytes.
};

/// An OK Status: a request done, with what was done.
struct Ack {
  std::string message;
};

/// Adapt the pushed tae model to a task and report the prototype embedding.
struct AdaptCall {
  std::uint32_t round = 0;
  std::vector<float> task_descriptor;  ///< τ*; empty: the node's own task.
  std::uint32_t max_steps = 0;         ///< 0: the node's default.
};

/// What an adaptation produced (never the node's data or weights).
struct AdaptAnswer {
  TensorBlob embedding_mean;
  TensorBlob embedding_logvar;
  std::uint32_t shots = 0;   ///< Private examples used.
  double bound = 0;          ///< The PAC-Bayes objective reached (tae).
  double shot_accuracy = 0;  ///< The adapted model's accuracy on its shots.
};

/// A request for a node's own expert weights (dro; the node must opt in).
struct WeightsCall {
  std::uint32_t round = 0;
};

/// A built-in expert's architecture and flattened parameters.
struct WeightsAnswer {
  std::string spec;
  TensorBlob parameters;
};

/// One rostered node in a coordinator's status (chorus.proto NodeStatus).
struct NodeStatus {
  std::string name;
  std::string state;  ///< answering, connected, left_out, disconnected.
  std::string reason;
  std::int64_t last_heard_ms = -1;
  std::int64_t round_asked = 0, round_answered = 0;
  std::int64_t inputs = 0, bytes_sent = 0, bytes_received = 0;
};

/// What a coordinator is doing (chorus.proto StatusResponse).
struct CoordinatorStatus {
  std::string coordinator, algorithm;
  std::uint32_t round = 0, rounds = 0, rounds_done = 0;
  std::string phase;
  double phase_seconds = 0;
  std::vector<NodeStatus> nodes;
  std::int64_t inputs = 0, bytes_sent = 0, bytes_received = 0;
};

/// Why the expert `descriptor` announces does not fit `task` (naming both
/// sides' values), or nullopt. `who` names the expert ("node 'alpha'").
std::optional<std::string> descriptor_mismatch(
    const TaskSpec& task, const ExpertDescriptor& descriptor,
    std::string_view who);

/// A request a node serves.
using NodeRequest =
    std::variant<PredictCall, ModelChunk, AdaptCall, WeightsCall>;

/// "predict", "model_push", "adapt" or "weights" (audit records, logs).
const char* kind_of(const NodeRequest& request);
/// The round a request belongs to.
std::uint32_t round_of(const NodeRequest& request);

}  // namespace chorus::protocol
