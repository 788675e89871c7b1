#pragma once

#include <asio/awaitable.hpp>
#include <chrono>
#include <string>

#include "chorus/protocol/messages.hpp"
#include "chorus/protocol/offload.hpp"

/// How the coordinator's rounds reach one node: awaitable calls on values.
/// The registry implements it over the node's mTLS connection; the rounds,
/// the remote oracle and the broadcaster only see this. No protobuf, no
/// torch.
namespace chorus::coordinator {

/// A call's result: the node's answer, or the `chorus::Error` it failed with
/// (UNAVAILABLE when the node is not connected or goes away,
/// DEADLINE_EXCEEDED, the code of the node's refusal, DATA_LOSS for an
/// answer of the wrong kind). Errors travel as values between coroutines.
template <typename T>
using CallResult = protocol::Outcome<T>;

/// One node, by identity: each call goes over its current connection (a
/// node that reconnected is reached on its new one). Calls may run
/// concurrently; the node's own caps (batch, rate, budget) are its to
/// enforce.
class NodeLink {
 public:
  virtual ~NodeLink() = default;
  /// The node's certificate CN.
  virtual const std::string& identity() const = 0;
  /// Answers to `call.inputs`.
  virtual asio::awaitable<CallResult<protocol::PredictAnswer>> predict(
      protocol::PredictCall call, std::chrono::milliseconds deadline) = 0;
  /// One chunk of a fused model.
  virtual asio::awaitable<CallResult<protocol::Ack>> push(
      protocol::ModelChunk chunk, std::chrono::milliseconds deadline) = 0;
  /// Adapts the pushed tae or dro model; only the prototype embedding
  /// (tae) or counts (dro) come back.
  virtual asio::awaitable<CallResult<protocol::AdaptAnswer>> adapt(
      protocol::AdaptCall call, std::chrono::milliseconds deadline) = 0;
  /// The node's own expert weights, when it opted in to sharing them.
  virtual asio::awaitable<CallResult<protocol::WeightsAnswer>> weights(
      protocol::WeightsCall call, std::chrono::milliseconds deadline) = 0;
};

}  // namespace chorus::coordinator
