#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <stop_token>
#include <vector>

#include "chorus/fusion/fused_model.hpp"
#include "chorus/fusion/train.hpp"

/// Algorithm 3 of ALGORITHMS.md: Fusion of Experts (Wang et al., ICLR 2024).
/// A fuser MLP learns the label from the concatenated expert outputs on a
/// small labelled fusion set V.
namespace chorus::fusion {

/// How expert outputs become the fuser's input features.
enum class FoeFeatures {
  kProbs,     ///< concat_i η_i(x), the paper's form.
  kLogProbs,  ///< concat_i log(η_i(x) + ε): ours; spreads confident outputs.
};

/// Options of `Foe`. Defaults are the paper's recipe (ALGORITHMS.md §3)
/// except where marked ours.
struct FoeOptions {
  TORCH_ARG(std::vector<std::int64_t>, hidden) = {512, 512};
  TORCH_ARG(std::int64_t, epochs) = 50;
  TORCH_ARG(std::int64_t, batch_size) = 128;
  TORCH_ARG(double, lr) = 1e-3;
  TORCH_ARG(double, weight_decay) = 1e-4;
  /// Ours: the feature form (the paper uses kProbs).
  TORCH_ARG(FoeFeatures, features) = FoeFeatures::kProbs;
  /// Ours: rounds of self-training on the unlabelled transfer pool (pseudo
  /// labels from the fuser where it is confident); 0 is the paper's recipe.
  TORCH_ARG(std::int64_t, self_training_rounds) = 0;
  /// Ours: minimum fuser confidence for a pseudo label.
  TORCH_ARG(double, pseudo_label_confidence) = 0.9;
  TORCH_ARG(std::uint64_t, seed) = 0;
  TORCH_ARG(int, threads) = 0;
  /// Where the model trains (`TrainOptions::device`).
  TORCH_ARG(c10::Device, device) = c10::Device(c10::kCPU);
  /// Cancels training (`TrainOptions::stop`).
  TORCH_ARG(std::stop_token, stop) = {};
  /// Called after each epoch of the fuser's training (progress).
  TORCH_ARG(std::function<void(const EpochReport&)>, on_epoch) = nullptr;
};

/// The FoE fuser.
class Foe {
 public:
  explicit Foe(FoeOptions options = {});

  /// The feature matrix [N, Σ|L_i|] from the experts' answers (in expert
  /// order), per `form`.
  static torch::Tensor features(const std::vector<torch::Tensor>& answers,
                                FoeFeatures form);

  /// Trains the fuser on the experts' answers on V and V's labels (int64
  /// [N] in 0..num_classes-1). `unlabelled` (answers on the transfer pool)
  /// is used only when self-training is enabled.
  TrainResult fit(const std::vector<torch::Tensor>& answers,
                  const torch::Tensor& labels, std::int64_t num_classes,
                  const std::vector<torch::Tensor>& unlabelled = {});

  /// Fused probabilities [N, C] from the experts' answers.
  torch::Tensor predict_proba(const std::vector<torch::Tensor>& answers) const;

  /// The fuser as a storable fused model (algorithm "foe").
  FusedModel to_fused_model() const;
  /// A fuser from a stored fused model of algorithm "foe".
  static Foe from_fused_model(const FusedModel& fused);

  const FoeOptions& options() const { return options_; }

 private:
  FoeOptions options_;
  ModelSpec spec_;
  std::shared_ptr<ClassifierImpl> fuser_;
};

}  // namespace chorus::fusion
