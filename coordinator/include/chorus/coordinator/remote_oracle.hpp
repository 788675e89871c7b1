#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "chorus/core/task.hpp"
#include "chorus/fusion/oracle.hpp"
#include "chorus/v1/chorus.pb.h"

/// The fusion algorithms' `QueryOracle` over the network: each expert is a
/// node, each query a set of PredictRequests within the node's batch cap,
/// sent concurrently. No Asio here: requests go through a `RequestFn`
/// (the `NodeRegistry` provides one).
namespace chorus::coordinator {

/// Sends `request` to the node `identity`; the future yields its reply or
/// throws `chorus::Error`.
using RequestFn = std::function<std::future<v1::Envelope>(
    const std::string& identity, v1::Envelope request,
    std::chrono::milliseconds deadline)>;

/// A node as an expert.
struct RemoteExpert {
  fusion::ExpertInfo info;     ///< name = the node's identity.
  std::int64_t max_batch = 1;  ///< From its announced policy.
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
  /// The federation's task: the algorithms' float inputs travel in its form
  /// (`fusion::to_wire_inputs`: its dtype, unnormalised). None sends them
  /// as float32.
  std::optional<TaskSpec> task;
  /// Once requested, no further request is sent: the requests in flight are
  /// awaited (their answers reach the batch hook, so they are checkpointed)
  /// and the query throws `chorus::Error` (CANCELLED).
  std::stop_token stop;
};

/// Experts reached through their nodes.
class RemoteOracle : public fusion::QueryOracle {
 public:
  RemoteOracle(std::int64_t num_classes, std::vector<RemoteExpert> experts,
               RequestFn request, RemoteOracleOptions options);

  std::int64_t num_classes() const override { return num_classes_; }
  const std::vector<fusion::ExpertInfo>& experts() const override {
    return infos_;
  }
  /// Every expert at once, each on its own thread.
  std::vector<torch::Tensor> query_all(const torch::Tensor& inputs) override;
  /// Sets the round stamped on later requests.
  void set_round(std::uint32_t round) { options_.round = round; }

  /// Receives each request's answers as they arrive, in order: the row of
  /// `inputs` they start at, and the answers (already checked: one row per
  /// input, one column per label, finite).
  using BatchHook =
      std::function<void(std::int64_t first_row, const torch::Tensor& answers)>;
  /// `query`, calling `on_batch` for every answered request (to checkpoint
  /// answers as they arrive: a crash then loses only the requests in
  /// flight). Not re-entrant on one thread.
  torch::Tensor query_each_batch(std::int64_t expert,
                                 const torch::Tensor& inputs,
                                 const BatchHook& on_batch);

 protected:
  torch::Tensor do_query(std::int64_t expert,
                         const torch::Tensor& inputs) override;
  /// Inputs travel in the task's dtype.
  std::int64_t shipped_bytes(const torch::Tensor& inputs) const override;

 private:
  std::int64_t num_classes_;
  std::vector<RemoteExpert> remote_;
  std::vector<fusion::ExpertInfo> infos_;
  RequestFn request_;
  RemoteOracleOptions options_;
};

/// Each expert's answers on `inputs`, asked concurrently; an expert that
/// fails (disconnects, misses its deadline, refuses) gets an error instead.
struct Gathered {
  std::vector<torch::Tensor> answers;  ///< Undefined where it failed.
  std::vector<std::string> errors;     ///< Empty where it answered.
};
Gathered gather(fusion::QueryOracle& oracle, const torch::Tensor& inputs,
                const std::vector<std::int64_t>& experts);

}  // namespace chorus::coordinator
