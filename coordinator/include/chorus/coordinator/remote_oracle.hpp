#pragma once

#include <asio/any_io_executor.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "chorus/coordinator/inflight.hpp"
#include "chorus/coordinator/node_link.hpp"
#include "chorus/core/task.hpp"
#include "chorus/fusion/oracle.hpp"

/// The fusion algorithms' `QueryOracle` over the network: each expert is a
/// node, each query a set of PredictRequests within the node's batch cap,
/// `window` of them in flight, all experts at once. The requests are
/// coroutines on one executor; the oracle's blocking calls are where the
/// fusion algorithms (threads) meet that event loop.
namespace chorus::coordinator {

/// A node as an expert.
struct RemoteExpert {
  fusion::ExpertInfo info;     ///< name = the node's identity.
  std::int64_t max_batch = 1;  ///< From its announced policy.
  std::shared_ptr<NodeLink> link;
};

/// Options of a `RemoteOracle`.
struct RemoteOracleOptions {
  /// The round the requests belong to (nodes budget per round).
  std::uint32_t round = 0;
  /// Deadline of one PredictRequest.
  std::chrono::milliseconds deadline{60000};
  /// Largest request sent, further capped by each node's max_batch.
  std::int64_t batch = 512;
  /// Requests in flight per node.
  std::int64_t window = 4;
  /// Bytes of requests in flight across every node asked at once (shared
  /// by the nodes of a round); null: only each node's window bounds them.
  std::shared_ptr<InflightBudget> inflight;
  /// The federation's task: the algorithms' float inputs travel in its form
  /// (`fusion::to_wire_inputs`: its dtype, unnormalised). None sends them
  /// as float32.
  std::optional<TaskSpec> task;
  /// Once requested, no further request is sent: the requests in flight are
  /// awaited (their answers still reach the sink, so they are checkpointed)
  /// and the query fails with CANCELLED.
  std::stop_token stop;
};

/// Experts reached through their nodes.
class RemoteOracle : public fusion::QueryOracle {
 public:
  /// The requests run on `executor` (a strand of the network's io_context).
  RemoteOracle(std::int64_t num_classes, std::vector<RemoteExpert> experts,
               asio::any_io_executor executor, RemoteOracleOptions options);

  std::int64_t num_classes() const override { return num_classes_; }
  const std::vector<fusion::ExpertInfo>& experts() const override {
    return infos_;
  }
  /// Every expert at once.
  std::vector<torch::Tensor> query_all(const torch::Tensor& inputs) override;
  /// Sets the round stamped on later requests.
  void set_round(std::uint32_t round) { options_.round = round; }

 protected:
  torch::Tensor do_query(std::int64_t expert,
                         const torch::Tensor& inputs) override;
  /// Inputs travel in the task's dtype.
  std::int64_t shipped_bytes(const torch::Tensor& inputs) const override;

 private:
  std::int64_t num_classes_;
  std::vector<RemoteExpert> remote_;
  std::vector<fusion::ExpertInfo> infos_;
  asio::any_io_executor executor_;
  RemoteOracleOptions options_;
};

}  // namespace chorus::coordinator
