#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <stop_token>
#include <string>
#include <vector>

#include "chorus/fusion/distill.hpp"
#include "chorus/fusion/fused_model.hpp"
#include "chorus/fusion/models.hpp"

/// Algorithm 5 of ALGORITHMS.md: data-free meta-learning of an
/// initialisation from trained models with Wasserstein distributionally
/// robust fusion (Wang et al., UAI 2022, "Meta-Learning without Data via
/// Wasserstein Distributionally-Robust Model Fusion").
///
/// N models of one architecture are flattened into parameter vectors θ_i.
/// Each gets a learnable embedding e_i; a hypernetwork f_φ (one linear map
/// per target tensor, stacked) maps an embedding to a whole parameter
/// vector, and log P(θ | f_φ(e)) = −‖f_φ(e) − θ‖² / σ².
/// Meta-training is bi-level and first-order over an 80/20 split into
/// meta-train S and meta-validation Q; its outer step fits the worst-case
/// embedding of a validation model within a squared-distance ball of
/// strength γ. The learned initialisation is θ_init = f_φ(mean e).
///
/// Choices that are ours, not the paper's (docs/algorithms.md says why):
/// the linearised step of the DRO inner maximisation (size 1/(2γ)), the
/// fitting terms of the embeddings in the outer loss, the online mode's
/// one-model buffer, the head of a different width initialised to its mean
/// row, and SGD with momentum for the meta-test adaptation.
namespace chorus::fusion {

/// Options of `meta_learn` and of the dro fuser.
struct DroOptions {
  /// Dimension of the task embeddings e_i (paper: 50).
  TORCH_ARG(std::int64_t, embedding_dim) = 50;
  /// σ of the likelihood.
  TORCH_ARG(double, sigma) = 1.0;
  /// K: inner SGD steps on φ for a meta-train model (paper: 1).
  TORCH_ARG(std::int64_t, inner_steps) = 1;
  /// Learning rate of the inner SGD steps (paper: 0.03).
  TORCH_ARG(double, inner_lr) = 0.03;
  /// Steps of the DRO inner maximisation over an embedding (paper: K = 1).
  TORCH_ARG(std::int64_t, dro_steps) = 1;
  /// The γ grid; the one whose θ_init gives the validation models the
  /// highest likelihood is kept. {0} (or a 0 in the grid) trains without
  /// the DRO step (the ablation).
  TORCH_ARG(std::vector<double>, gammas) = std::vector<double>{10, 2, 0.5};
  /// Outer updates (offline mode).
  TORCH_ARG(std::int64_t, meta_steps) = 600;
  /// Learning rate of the outer SGD update (paper: 0.03).
  TORCH_ARG(double, meta_lr) = 0.03;
  /// Fraction of the models held out as meta-validation Q.
  TORCH_ARG(double, validation) = 0.2;
  /// Online mode: the models arrive one at a time and are seen once
  /// (`online_steps` updates per arrival, a buffer of one earlier model);
  /// γ is the grid's first non-zero value (no validation split).
  TORCH_ARG(bool, online) = false;
  TORCH_ARG(std::int64_t, online_steps) = 8;
  /// Meta-test: S SGD steps (momentum 0.9) on the support set.
  TORCH_ARG(std::int64_t, adapt_steps) = 25;
  TORCH_ARG(double, adapt_lr) = 0.03;
  /// The imitators distilled from the black boxes (the dro fuser): every
  /// one starts from the same weights (seeded by `seed`).
  TORCH_ARG(DistillOptions,
            imitator) = DistillOptions().epochs(6).patience(2).lr(2e-3);
  TORCH_ARG(std::uint64_t, seed) = 0;
  TORCH_ARG(int, threads) = 0;
  /// Cancels meta-training and the imitators' distillation (CANCELLED).
  TORCH_ARG(std::stop_token, stop) = {};
};

/// The parameters and float buffers of `model`, flattened in registration
/// order (the order `unflatten_into` expects).
torch::Tensor flatten_model(ClassifierImpl& model);

/// Copies `flat` (as `flatten_model` made it) into `model`. Throws
/// `chorus::Error` (INVALID_ARGUMENT) when the sizes differ.
void unflatten_into(ClassifierImpl& model, const torch::Tensor& flat);

/// The sizes of `model`'s flattened tensors, one per parameter or float
/// buffer (the hypernetwork's target layers).
std::vector<std::int64_t> layer_sizes(ClassifierImpl& model);

/// f_φ: one linear map per target layer from an embedding to that layer's
/// parameters, stored stacked as W [P, D] and b [P] (layer l's rows are its
/// map).
class Hypernetwork {
 public:
  /// `layers`: the sizes of the target layers; `sigma`: the likelihood's σ;
  /// the maps' small random initial weights are drawn from `gen`.
  Hypernetwork(std::vector<std::int64_t> layers, std::int64_t embedding_dim,
               double sigma, at::Generator& gen);

  /// f_φ(e) [P] for an embedding [D].
  torch::Tensor operator()(const torch::Tensor& e) const;
  /// f_φ(e) with φ held constant (gradients reach `e` only).
  torch::Tensor detached(const torch::Tensor& e) const;
  /// −log P(θ | f) up to a constant: ‖f − θ‖² / σ².
  torch::Tensor nll(const torch::Tensor& theta, const torch::Tensor& f) const;
  /// ∂nll/∂f at `f`.
  torch::Tensor nll_grad(const torch::Tensor& theta,
                         const torch::Tensor& f) const;
  /// ∇_e nll(θ, f_φ(e)) = Wᵀ ∂nll/∂f.
  torch::Tensor grad_embedding(const torch::Tensor& theta,
                               const torch::Tensor& e) const;
  /// The worst-case embedding near `e` under squared cost: `steps`
  /// linearised steps of max_e′ nll(e′) − γ‖e′ − e‖², each
  /// e′ ← e + ∇nll(e′) / (2γ), where `grad_of` is the gradient of the
  /// model's negative log-likelihood as a function of the embedding. γ = 0
  /// (or no steps) returns `e`.
  static torch::Tensor worst_case(
      const std::function<torch::Tensor(const torch::Tensor&)>& grad_of,
      const torch::Tensor& e, double gamma, std::int64_t steps);

  torch::Tensor& weight() { return weight_; }
  torch::Tensor& bias() { return bias_; }
  std::int64_t embedding_dim() const { return weight_.size(1); }
  std::int64_t parameters() const { return weight_.size(0); }

 private:
  torch::Tensor weight_, bias_;
  double inv_var_;  ///< 1 / σ².
};

/// What `meta_learn` produced.
struct DroFit {
  torch::Tensor init;        ///< θ_init = f_φ(mean e), flattened.
  double gamma = 0;          ///< The γ kept.
  torch::Tensor embeddings;  ///< [N, D], for the γ kept.
  /// Per γ of the grid: the validation models' mean nll at θ_init.
  std::vector<std::pair<double, double>> validation_nll;
  double seconds = 0;
};

/// Meta-learns an initialisation from `models` (flattened, one
/// architecture, at least 2; offline needs at least 2 for meta-train and 1
/// for validation, i.e. 3). `layers`: `layer_sizes` of the architecture.
/// Throws `chorus::Error` (INVALID_ARGUMENT) on too few models, sizes that
/// disagree, or options out of range; CANCELLED on `stop`.
DroFit meta_learn(const std::vector<torch::Tensor>& models,
                  const std::vector<std::int64_t>& layers,
                  const DroOptions& options);

/// A copy of `init` with `ways` outputs: tensors whose first dimension is
/// the model's output count (the head) start from their mean row when the
/// width differs.
std::shared_ptr<ClassifierImpl> resize_head(const FusedModel& init,
                                            std::int64_t ways);

/// Meta-test: adapts a copy of `init` to a task with `ways` outputs from
/// its support set `x` [N, ...], `y` (int64 in [0, ways)) with `steps` SGD
/// steps (momentum 0.9; full batch up to 256 examples, else batches of 256
/// drawn with `seed`), in eval mode (no dropout; BatchNorm keeps the
/// initialisation's statistics). `init` is left as it was; the process's
/// random stream is not used.
std::shared_ptr<ClassifierImpl> adapt_initialisation(
    const FusedModel& init, const torch::Tensor& x, const torch::Tensor& y,
    std::int64_t ways, std::int64_t steps, double lr, std::uint64_t seed = 0);

/// A storable dro initialisation (algorithm "dro") of `spec` holding
/// `fit.init`; its attributes record γ, the number of models and their
/// `source`, and the meta-test recipe of `options` (adapt_steps, adapt_lr)
/// that nodes adapt it with.
FusedModel dro_model(const ModelSpec& spec, const DroFit& fit,
                     const std::string& source, std::int64_t models,
                     const DroOptions& options = {});

}  // namespace chorus::fusion
