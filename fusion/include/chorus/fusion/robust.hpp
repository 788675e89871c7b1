#pragma once

#include <ATen/core/Generator.h>
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "chorus/fusion/oracle.hpp"

/// Robust fusion: experts whose answers on the fusion set V disagree with
/// the truth (V's labels) or, without labels, with the other experts, are
/// left out of the fusion — answers that are valid distributions yet wrong
/// on purpose or by accident (a poisoned or broken node).
namespace chorus::fusion {

/// How far one expert's answers on V can be trusted.
struct ExpertTrust {
  std::string name;
  /// The share of V's inputs of the expert's own classes on which its top
  /// answer is right (against V's labels, or, with fewer than
  /// `kMinLabelledRows` of them, against the other experts' consensus).
  double agreement = 0;
  /// 1 / |its labels|: what answering at random would agree.
  double chance = 0;
  /// Rows of V the agreement was measured on.
  std::int64_t rows = 0;
  /// Whether `rows` reached `kMinLabelledRows`: an expert judged on fewer
  /// is trusted (no evidence either way) and left out of the median.
  bool judged = false;
  /// "labels" or "consensus".
  std::string against;
  /// Whether the expert is left out.
  bool trusted = true;
  /// Why it is left out, for logs and progress lines; empty when trusted.
  std::string reason;
};

/// Rows of an expert's classes in V needed to judge it against V's labels
/// (fewer: against the consensus), and rows needed to judge it at all.
inline constexpr std::int64_t kMinLabelledRows = 20;

/// Each expert's trust from its answers on V (`answers[i]`: [N, |labels_i|]
/// rows of V) and V's labels (int64 [N], or undefined/empty: judged against
/// the consensus). An expert is left out when its agreement is below
/// chance + `fraction` × (median − chance), the median over the judged
/// experts' agreements; `fraction` in [0, 1]. One at a time, the least
/// agreeing first, each time judging the rest again without it (its answers
/// no longer sway the consensus); at most half the experts are left out.
std::vector<ExpertTrust> judge_experts(
    const std::vector<torch::Tensor>& answers,
    const std::vector<ExpertInfo>& experts, std::int64_t num_classes,
    const torch::Tensor& labels, double fraction);

/// The answer standing in for a left-out expert: uniform over its labels,
/// [n, |labels|] float32. It carries no information, so a fuser trained on
/// it ignores it.
torch::Tensor uninformative_answer(std::int64_t n, std::int64_t num_labels);

/// An oracle that answers for left-out experts with
/// `uninformative_answer` without asking them, and passes every other
/// query to `inner`.
class MaskedOracle : public QueryOracle {
 public:
  MaskedOracle(QueryOracle& inner, std::vector<bool> left_out);
  std::int64_t num_classes() const override { return inner_.num_classes(); }
  const std::vector<ExpertInfo>& experts() const override {
    return inner_.experts();
  }
  /// The inner oracle's `query_all` (concurrent for remote oracles) when
  /// every expert is trusted; otherwise each trusted expert in turn.
  std::vector<torch::Tensor> query_all(const torch::Tensor& inputs) override;

 protected:
  torch::Tensor do_query(std::int64_t expert,
                         const torch::Tensor& inputs) override;

 private:
  QueryOracle& inner_;
  std::vector<bool> left_out_;
};

/// An adversary for measuring robust fusion: expert `poisoned` of `inner`
/// answers every input with certainty on one of its classes other than the
/// one its model picks (drawn from a generator seeded with `seed`) — valid
/// distributions, wrong on purpose; the other experts answer honestly.
/// (`bench_p1 --poison K`; the robust fusion tests.)
class PoisonedOracle : public QueryOracle {
 public:
  PoisonedOracle(QueryOracle& inner, std::int64_t poisoned, std::uint64_t seed);
  std::int64_t num_classes() const override { return inner_.num_classes(); }
  const std::vector<ExpertInfo>& experts() const override {
    return inner_.experts();
  }

 protected:
  torch::Tensor do_query(std::int64_t expert,
                         const torch::Tensor& inputs) override;

 private:
  QueryOracle& inner_;
  std::int64_t poisoned_;
  at::Generator gen_;
};

}  // namespace chorus::fusion
