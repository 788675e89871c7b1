#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "chorus/fusion/models.hpp"

/// The black-box view of the experts every fusion algorithm works through:
/// give inputs, get each expert's probabilities over its own labels. The
/// same algorithms run against in-process experts (tests, benchmarks) and
/// remote nodes (the coordinator implements this interface over the wire).
namespace chorus::fusion {

/// What the fusion side knows of an expert.
struct ExpertInfo {
  /// The expert's identity (a node's certificate CN, or a local name).
  std::string name;
  /// Its task: the classes it outputs, as indices into the shared label
  /// space, in the order of its output columns.
  std::vector<std::int64_t> labels;
};

/// Query accounting of one expert.
struct QueryStats {
  std::int64_t requests = 0;        ///< Calls to `query`.
  std::int64_t inputs = 0;          ///< Inputs answered (the query budget).
  std::int64_t bytes_sent = 0;      ///< Input bytes shipped to the expert.
  std::int64_t bytes_received = 0;  ///< Output bytes received.
  /// Wall time from the first request sent to the last answer received
  /// (a remote expert's answering time, its link included); 0 in process.
  double seconds = 0;

  QueryStats& operator+=(const QueryStats& other);
};

/// Access to K black-box experts over a shared label space of C classes.
class QueryOracle {
 public:
  virtual ~QueryOracle() = default;

  /// C, the size of the shared label space.
  virtual std::int64_t num_classes() const = 0;
  /// The experts, in a fixed order.
  virtual const std::vector<ExpertInfo>& experts() const = 0;
  /// K.
  std::int64_t num_experts() const {
    return static_cast<std::int64_t>(experts().size());
  }

  /// Expert `expert`'s probabilities, float32 [N, |labels|], for `inputs`
  /// [N, ...]. Counts the query. Throws `chorus::Error`: INVALID_ARGUMENT for
  /// a bad expert index or an empty batch, DATA_LOSS when the expert answers
  /// with the wrong shape or non-finite values.
  torch::Tensor query(std::int64_t expert, const torch::Tensor& inputs);

  /// `query` on every expert, in order. Remote oracles override it to ask
  /// the experts concurrently.
  virtual std::vector<torch::Tensor> query_all(const torch::Tensor& inputs);

  /// Accounting of one expert since construction or `reset_stats`.
  QueryStats stats(std::int64_t expert) const;
  /// Accounting summed over all experts.
  QueryStats total_stats() const;
  /// Zeroes the accounting.
  void reset_stats();

 protected:
  /// Answers a validated query; implementations need not count.
  virtual torch::Tensor do_query(std::int64_t expert,
                                 const torch::Tensor& inputs) = 0;
  /// What `query` does with `do_query`'s answers: checks them (DATA_LOSS
  /// for a wrong shape or non-finite values), counts the query, returns
  /// them as float32. For oracles that ask several experts at once.
  torch::Tensor accept(std::int64_t expert, const torch::Tensor& inputs,
                       torch::Tensor answers);
  /// Bytes of `inputs` as they are shipped (counted in `bytes_sent`); by
  /// default their own size.
  virtual std::int64_t shipped_bytes(const torch::Tensor& inputs) const;

 private:
  mutable std::mutex mutex_;
  std::vector<QueryStats> stats_;
};

/// Experts that are zoo models in this process.
class LocalOracle : public QueryOracle {
 public:
  /// `num_classes` is C; `batch_size` bounds one forward pass; `query_all`
  /// asks `workers` experts at a time, each on one torch thread.
  explicit LocalOracle(std::int64_t num_classes, std::int64_t batch_size = 256,
                       int workers = 1);

  /// Adds an expert whose `model` outputs logits over `info.labels`.
  void add_expert(ExpertInfo info, std::shared_ptr<ClassifierImpl> model);

  std::int64_t num_classes() const override { return num_classes_; }
  const std::vector<ExpertInfo>& experts() const override { return infos_; }
  std::vector<torch::Tensor> query_all(const torch::Tensor& inputs) override;

 protected:
  torch::Tensor do_query(std::int64_t expert,
                         const torch::Tensor& inputs) override;

 private:
  std::int64_t num_classes_;
  std::int64_t batch_size_;
  int workers_;
  std::vector<ExpertInfo> infos_;
  std::vector<std::shared_ptr<ClassifierImpl>> models_;
};

}  // namespace chorus::fusion
