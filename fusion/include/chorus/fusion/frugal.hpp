#pragma once

#include <torch/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "chorus/fusion/foe.hpp"
#include "chorus/fusion/oracle.hpp"

/// Frugal FoE (ALGORITHMS.md §3, Wang et al. ICLR 2024): per test input,
/// query experts one at a time, and stop as soon as the estimated gain of
/// another expert is not worth its cost. In Chorus every expert query is a
/// round trip to an institution, and spends its budget.
namespace chorus::fusion {

/// Query costs by expert name.
using ExpertCosts = std::map<std::string, double>;

/// The cost of one query to the expert `name`: its entry in `costs`, 1 when
/// it has none.
double expert_cost(const ExpertCosts& costs, const std::string& name);

/// Options of `FrugalFoe`.
struct FrugalOptions {
  /// Options of every subset's fuser (an MLP per subset, trained on V).
  TORCH_ARG(FoeOptions, fuser) = FoeOptions().features(FoeFeatures::kLogProbs);
  /// Neighbours of a test point in V used to estimate errors.
  TORCH_ARG(std::int64_t, neighbours) = 10;
  /// k of the leave-one-out kNN estimate of how well each subset separates
  /// V: a point's score is the share of its k nearest other points of V
  /// (in the subset's output space) that carry its label. Ours: an
  /// out-of-sample estimate, since the MLP fusers fit V almost perfectly.
  TORCH_ARG(std::int64_t, knn_k) = 9;
  /// λ·cost: query another expert only if the estimated error drops by more
  /// than this (a fraction; 0.02 = 2 percentage points) times its cost.
  TORCH_ARG(double, lambda) = 0.02;
  /// Cost of querying each expert, in the oracle's expert order; empty
  /// means `costs_by_name`.
  TORCH_ARG(std::vector<double>, costs) = {};
  /// Cost of querying each expert by its name (`ExpertInfo::name`: a node's
  /// identity), read from the oracle at `predict`; an expert not named costs
  /// 1, a name that no expert of the oracle has is ignored (a node absent
  /// this round). Used when `costs` is empty. Costs must be finite and > 0.
  TORCH_ARG(ExpertCosts, costs_by_name) = {};
  /// Ours: with the experts' answers on the transfer pool U (see `fit`),
  /// the error estimates use U, labelled by the full fuser (every expert,
  /// trained on V), instead of V's 500 labels: an estimate of how far a
  /// subset is from what the full fusion would answer, on 20× the points.
  TORCH_ARG(bool, estimate_on_transfer) = true;
};

/// What `FrugalFoe::predict` returns.
struct FrugalPrediction {
  torch::Tensor probs;    ///< float32 [N, C].
  torch::Tensor queried;  ///< bool [N, K]: which experts answered each input.
  std::vector<double> costs;  ///< The cost of each of the K experts.
  /// Mean number of experts queried per input.
  double mean_experts() const;
  /// Mean cost of the queries per input (`mean_experts` when every cost
  /// is 1).
  double mean_cost() const;
};

/// Cost-aware sequential Fusion of Experts.
class FrugalFoe {
 public:
  explicit FrugalFoe(FrugalOptions options = {});

  /// Keeps the experts' answers on V and V's labels; subset fusers are
  /// trained lazily, when the search first reaches a subset.
  /// `transfer`: the experts' answers on U (optional; see
  /// `estimate_on_transfer`).
  void fit(const std::vector<torch::Tensor>& answers,
           const torch::Tensor& labels, std::int64_t num_classes,
           const std::vector<torch::Tensor>& transfer = {});

  /// Fused predictions for `inputs`, querying `oracle` only for the experts
  /// the search chooses (the oracle's counters record what was spent).
  /// `lambda` overrides the options' λ when given. Throws `chorus::Error`
  /// (INVALID_ARGUMENT) for a cost that is not finite and positive.
  FrugalPrediction predict(QueryOracle& oracle, const torch::Tensor& inputs,
                           std::optional<double> lambda = std::nullopt);

  /// Number of subset fusers trained so far.
  std::size_t fusers_trained() const { return fusers_.size(); }

 private:
  using Mask = std::uint32_t;
  torch::Tensor subset_features(const std::vector<torch::Tensor>& answers,
                                Mask mask) const;
  Foe& fuser(Mask mask);
  const torch::Tensor& loo_correct(Mask mask);
  // Trains the fusers of the subsets not trained yet, two side by side on
  // one thread each (fusion::run_jobs): 1.5x faster than one at a time on
  // two threads for these small MLPs.
  void prepare_fusers(const std::vector<Mask>& masks);
  std::unique_ptr<Foe> train_fuser(Mask mask, int threads) const;
  torch::Tensor estimate_correct(Mask mask) const;
  std::vector<double> resolve_costs(const QueryOracle& oracle) const;

  FrugalOptions options_;
  std::int64_t num_classes_ = 0;
  std::vector<torch::Tensor> v_answers_;
  torch::Tensor v_labels_;
  // Where errors are estimated: V with its labels, or U with the full
  // fuser's labels.
  std::vector<torch::Tensor> est_answers_;
  torch::Tensor est_labels_;
  std::map<Mask, std::unique_ptr<Foe>> fusers_;
  std::map<Mask, torch::Tensor> correct_;
};

}  // namespace chorus::fusion
