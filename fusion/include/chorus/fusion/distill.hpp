#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "chorus/fusion/fused_model.hpp"
#include "chorus/fusion/oracle.hpp"
#include "chorus/fusion/train.hpp"

/// Algorithm 2 of ALGORITHMS.md: knowledge distillation of black boxes into
/// a student of chorus's own architecture — from the B+ ensemble (FedDF,
/// Lin et al. 2020), from one expert (an imitator, Hoang et al. 2019), or
/// from the FoE fuser ("foe-distill": a fused model that needs no expert at
/// prediction time).
namespace chorus::fusion {

/// Options of `distill`.
struct DistillOptions {
  /// The student's architecture ("mlp", "lenet", "resnet"), or "auto":
  /// chosen from the input shape (`default_architecture`: lenet for images,
  /// mlp for features).
  TORCH_ARG(std::string, arch) = "auto";
  /// Hidden widths of an "mlp" student; empty: MlpOptions' default.
  TORCH_ARG(std::vector<std::int64_t>, hidden) = {};
  /// 10: at P1's sizes (10,000 transfer images) the student is as good as
  /// after 20 (bench_p1 --student-epochs, 3 seeds: foe-distill 0.844 vs
  /// 0.843, distill 0.523 vs 0.517) in half the time.
  TORCH_ARG(std::int64_t, epochs) = 10;
  TORCH_ARG(std::int64_t, batch_size) = 128;
  TORCH_ARG(double, lr) = 1e-3;
  /// Sharpening of the teacher: t ∝ t^{1/T}; 1 leaves it unchanged.
  TORCH_ARG(double, temperature) = 1.0;
  /// Fraction of the inputs held out to early-stop on agreement with the
  /// teacher.
  TORCH_ARG(double, holdout) = 0.1;
  /// Epochs without better agreement before stopping.
  TORCH_ARG(std::int64_t, patience) = 4;
  TORCH_ARG(std::uint64_t, seed) = 0;
  /// Seeds the student's initial weights; unset, `seed` does. Students
  /// with one init seed start from the same weights (dro's imitators).
  TORCH_ARG(std::optional<std::uint64_t>, init_seed) = std::nullopt;
  TORCH_ARG(int, threads) = 0;
  /// Where the model trains (`TrainOptions::device`).
  TORCH_ARG(c10::Device, device) = c10::Device(c10::kCPU);

  /// Cancels training (`TrainOptions::stop`).
  TORCH_ARG(std::stop_token, stop) = {};
  TORCH_ARG(std::function<void(const EpochReport&)>, on_epoch) = nullptr;
};

/// What `distill` produced.
struct DistillResult {
  FusedModel model;   ///< The student, as a storable fused model.
  TrainResult train;  ///< best_val_accuracy is the held-out agreement.
};

/// Sharpens probabilities [N, C]: rows ∝ p^{1/temperature}.
torch::Tensor sharpen(const torch::Tensor& probs, double temperature);

/// Trains a student on `inputs` [N, ...] to match `teacher` probabilities
/// [N, C] (soft cross-entropy, i.e. KL(teacher ‖ student) up to a constant).
/// `algorithm` names the result ("distill", "imitator", "foe-distill").
/// Optional `labelled_inputs`/`labels` (int64) are added to the training set
/// as one-hot targets (e.g. FoE's fusion set V).
DistillResult distill(const torch::Tensor& inputs, const torch::Tensor& teacher,
                      const DistillOptions& options, std::string algorithm,
                      const torch::Tensor& labelled_inputs = {},
                      const torch::Tensor& labels = {});

/// One imitator per expert: a student trained on `inputs` to reproduce
/// expert i's `answers[i]` over its own labels (white-box surrogates of the
/// black boxes).
std::vector<DistillResult> distill_imitators(
    const torch::Tensor& inputs, const std::vector<torch::Tensor>& answers,
    const QueryOracle& oracle, const DistillOptions& options);

}  // namespace chorus::fusion
