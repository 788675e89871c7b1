#pragma once

#include <ATen/core/Generator.h>
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "chorus/fusion/models.hpp"
#include "chorus/fusion/train.hpp"

/// DP-SGD (Abadi et al. 2016) for zoo models: Poisson-sampled batches,
/// per-example gradients clipped to an L2 norm, Gaussian noise on their sum,
/// and the RDP accountant of the sampled Gaussian mechanism (core/privacy).
/// Per-example gradients come from the activations and output gradients
/// each Linear, Conv2d and GroupNorm layer records (as Opacus computes
/// them), not from batches of one. BatchNorm mixes the examples of a batch
/// and is refused: lenet trains with norm=group.
namespace chorus::fusion {

/// Options of `train_private`.
struct DpSgdOptions {
  /// The L2 norm each example's gradient is clipped to (C).
  TORCH_ARG(double, max_grad_norm) = 1.0;
  /// σ, the noise's standard deviation over C; 0: the smallest that keeps
  /// the whole training within (`epsilon`, `delta`).
  TORCH_ARG(double, noise_multiplier) = 0;
  /// The privacy budget of the whole training, when `noise_multiplier`
  /// is 0.
  TORCH_ARG(double, epsilon) = 0;
  TORCH_ARG(double, delta) = 1e-5;
};

/// What a privately trained model guarantees about its training data, as
/// its file and the node's Hello carry it.
struct DpGuarantee {
  std::string mechanism = "dp-sgd";
  double epsilon = 0;
  double delta = 0;
  double noise_multiplier = 0;
  double sample_rate = 0;  ///< q: each example's chance to be in a batch.
  std::int64_t steps = 0;
  double max_grad_norm = 0;
  std::string accountant = "rdp-sampled-gaussian";

  /// One JSON object with these fields.
  std::string to_json() const;
  /// Parses `to_json`'s form. Throws `chorus::Error` (DATA_LOSS) naming
  /// what is missing.
  static DpGuarantee from_json(const std::string& text);
};

/// Per-example gradients of the cross-entropy of `model` on `x` [B, ...]
/// with int64 labels `y` [B]: for each of `model.parameters()` in order,
/// a tensor [B, parameter shape...]. In the model's current mode (train or
/// eval). Throws `chorus::Error` (FAILED_PRECONDITION) naming a parameter
/// whose layer records no per-example gradient (BatchNorm's, say).
std::vector<torch::Tensor> per_example_gradients(ClassifierImpl& model,
                                                 const torch::Tensor& x,
                                                 const torch::Tensor& y);

/// One DP-SGD gradient: each example's gradient of the cross-entropy
/// clipped to `max_grad_norm`, summed, plus Gaussian noise of std
/// `noise_multiplier · max_grad_norm` (drawn from `gen`), divided by
/// `expected_batch` (q·N), stored as every parameter's `grad`. `x` may be
/// empty (a Poisson batch can be): the gradient is then the noise alone.
/// Returns the examples' gradient norms before clipping [B].
torch::Tensor private_gradient(ClassifierImpl& model, const torch::Tensor& x,
                               const torch::Tensor& y, double max_grad_norm,
                               double noise_multiplier, double expected_batch,
                               at::Generator& gen);

/// Trains `model` with DP-SGD on `x` and int64 labels `y`: `options`'
/// epochs, learning rate (Adam, cosine), seed, threads, device and progress;
/// batches are Poisson samples at rate batch_size / N, for epochs · N /
/// batch_size steps. Stores the guarantee it trained under in `*guarantee`.
/// Throws `chorus::Error`: INVALID_ARGUMENT for a budget no noise can meet,
/// FAILED_PRECONDITION for a model with BatchNorm.
TrainResult train_private(ClassifierImpl& model, const torch::Tensor& x,
                          const torch::Tensor& y, const TrainOptions& options,
                          const DpSgdOptions& dp, DpGuarantee* guarantee);

}  // namespace chorus::fusion
