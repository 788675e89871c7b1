#pragma once
// What a simulation reports: the test set's answers replayed to every
// method (each charged as the queries it would have sent), report.json and
// the table. Private to simulate/src.

#include <torch/torch.h>

#include <string>
#include <unordered_map>
#include <vector>

#include "chorus/core/error.hpp"
#include "chorus/fusion/oracle.hpp"
#include "chorus/simulate/simulate.hpp"

namespace chorus::simulate {

// Answers from a table collected over the network, charged as queries.
// Inputs are found by their bytes, so any subset or order of the test
// inputs can be asked for.
class ReplayOracle : public fusion::QueryOracle {
 public:
  ReplayOracle(std::int64_t classes, std::vector<fusion::ExpertInfo> experts,
               const torch::Tensor& inputs, std::vector<torch::Tensor> answers,
               std::int64_t wire_element_size)
      : classes_(classes),
        experts_(std::move(experts)),
        answers_(std::move(answers)),
        wire_element_size_(wire_element_size) {
    auto x = inputs.contiguous();
    for (std::int64_t i = 0; i < x.size(0); ++i) rows_.emplace(key(x[i]), i);
  }
  std::int64_t num_classes() const override { return classes_; }
  const std::vector<fusion::ExpertInfo>& experts() const override {
    return experts_;
  }

 protected:
  torch::Tensor do_query(std::int64_t expert,
                         const torch::Tensor& inputs) override {
    auto x = inputs.contiguous();
    std::vector<std::int64_t> index;
    for (std::int64_t i = 0; i < x.size(0); ++i) {
      auto it = rows_.find(key(x[i]));
      CHORUS_CHECK_CODE(it != rows_.end(), Code::kInternal,
                        "replay: an input the experts were not asked about");
      index.push_back(it->second);
    }
    return answers_[static_cast<std::size_t>(expert)].index_select(
        0, torch::tensor(index, torch::kLong));
  }
  // Counted as the inputs would travel to a node: in the task's dtype.
  std::int64_t shipped_bytes(const torch::Tensor& inputs) const override {
    return inputs.numel() * wire_element_size_;
  }

 private:
  static std::string key(const torch::Tensor& row) {
    auto r = row.contiguous();
    return std::string(static_cast<const char*>(r.data_ptr()),
                       static_cast<std::size_t>(r.numel() * r.element_size()));
  }
  std::int64_t classes_;
  std::vector<fusion::ExpertInfo> experts_;
  std::vector<torch::Tensor> answers_;
  std::unordered_map<std::string, std::int64_t> rows_;
  std::int64_t wire_element_size_;
};

/// Writes `result` as report.json in the run directory, atomically.
void write_report(const SimulateOptions& o, const SimulateResult& result);

}  // namespace chorus::simulate
