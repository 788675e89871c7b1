#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

/// tae: task-agnostic embedding of black-box experts (Hoang, Lam, Low,
/// Jaillet, ICML 2020; ALGORITHMS.md §4). Each expert is a distribution over
/// a spectrum of predictive prototypes; a new task is a new distribution
/// over the same prototypes, fitted at a node with a few private examples by
/// minimising a PAC-Bayes bound.
namespace chorus::fusion {

/// The networks' sizes (saved with the model).
struct TaeNetworkOptions {
  /// |w|, the task-dependent style.
  TORCH_ARG(std::int64_t, w_dim) = 2;
  /// |z|, the concept that drives the prediction.
  TORCH_ARG(std::int64_t, z_dim) = 5;
  /// Width of every hidden layer.
  TORCH_ARG(std::int64_t, hidden) = 100;
  /// m, the cached prototypes z_1..z_m.
  TORCH_ARG(std::int64_t, prototypes) = 100;
  /// Adds q_φ(w,z|x), an inference network from the input alone, trained
  /// beside the ELBO of R to invert its decoder p_θ(x|w,z) on the pool (a
  /// variational auto-encoder's ELBO whose decoder R's ELBO alone trains;
  /// ours). Its hidden layer is the space of the `TaeReadout::kFeatures`
  /// readout (beside the answer encoder's, with `answer_encoder`). It
  /// initialises and draws from a stream of its own, so R's model trains as
  /// it would without it. bench_p2 (100 tasks): see the README's "what
  /// helped" table.
  TORCH_ARG(bool, input_encoder) = true;
  /// Adds a second encoder of the input like the first, trained with the
  /// same input ELBO and, with weight `TaeTrainingOptions::answer_weight`,
  /// to predict the experts' union answer from its hidden layer (ours). The
  /// features readout reads both hidden layers, each L2-normalised, side by
  /// side: what the pixels tell apart and what the experts do. It draws from
  /// a stream of its own, so that R's model and the first encoder train as
  /// they would without it. A model without the input encoder has none.
  /// bench_p2 (100 unseen tasks, seeds 0 and 1, with answer weight 1000):
  /// F-MNIST-3-U +3.2 / +1.2 and +2.9 / +1.2 points (1 / 5 shots), MNIST-2-U
  /// −0.8 / −0.3 and −1.7 / −0.5; see the README's "what helped" table.
  TORCH_ARG(bool, answer_encoder) = true;
  /// The inputs' shape [C, H, W] when they are images (the tae fuser sets
  /// it from the transfer pool's); empty: flat vectors. Its product must be
  /// the model's input size.
  TORCH_ARG(std::vector<std::int64_t>, image_shape) = {};
  /// For images of at least 4×4 (`image_shape`), the input and answer
  /// encoders start with two 5×5 convolutions of `conv_channels` and twice
  /// as many channels, each with BatchNorm, ReLU and 2×2 max-pooling, before
  /// their hidden layer (ours; a LeNet-like trunk). Such an encoder trains
  /// on one row in |R's tasks| of each batch, about each input once per
  /// epoch. 0, or inputs that are not images, keeps the one-layer trunk.
  /// bench_p2 (100 unseen tasks, seed 0): see the README's "what helped".
  TORCH_ARG(std::int64_t, conv_channels) = 8;
};

/// How the global model is trained on R (not saved: a trained model does
/// not need them).
struct TaeTrainingOptions {
  /// ζ_I, weight of the adversarial decoupling term (ours: 1).
  TORCH_ARG(double, zeta) = 1.0;
  /// Weight of log p_α(η|z) against the pixel likelihood (ours: the 784
  /// Bernoulli terms would otherwise drown the 1 label term).
  TORCH_ARG(double, label_weight) = 50.0;
  /// Weight of the Gibbs loss of each expert's own task under its prior
  /// p_γ(w|τ_i), trained with the ELBO (our reading of Algorithm 1's
  /// alternation). Off by default (ours): bench_p2 on MNIST-2, 20 tasks,
  /// with the union task: seen tasks 82.5/84.5 (1/5-shot) at 0 vs 67.7/66.9
  /// at 50; recomposition of the experts' own tasks stays ≥ 0.9.
  TORCH_ARG(double, gibbs_weight) = 0.0;
  /// Adds the union pseudo-task to R when there are two experts or more
  /// (ours): the experts' normalised summed answers (what B+ predicts) under
  /// the union of their task descriptors. Without it no row of R pairs an
  /// input with classes of two different experts, and tasks across experts'
  /// class sets ("0 vs 2") are recomposed from prototypes that vote for one
  /// expert's classes only. Meaningful when the answers are lifted into one
  /// shared label space (not for task-relative outputs).
  TORCH_ARG(bool, union_task) = true;
  /// Weight of the answer target (ours): the hidden layer of the answer
  /// encoder (`TaeNetworkOptions::answer_encoder`), or of the input encoder
  /// in a model without one, also learns to predict the experts' union
  /// answer (`union_answer`) of each input, through a linear head used only
  /// while training (not saved). The features then separate what the
  /// experts tell apart, as well as what the pixels' likelihood does. 0
  /// turns it off; so does a model without the input encoder. bench_p2 (100
  /// unseen tasks, with the answer encoder): 100, 300, 1000 and 3000 give
  /// F-MNIST-3-U 83.6, 84.4, 85.4 and 85.4 on 1 shot, MNIST-2-U 76.1, 75.8,
  /// 75.5 and 75.3 (from 82.2 and 76.3 without).
  TORCH_ARG(double, answer_weight) = 1000.0;
  /// K: after training, the features (`TaeModel::features`) of the pool
  /// are clustered by spherical k-means into K centres (at most one per
  /// input, 25 rounds), saved with the model: where the pool's kinds of
  /// inputs lie, a prior over a new task's class means
  /// (`TaeAdaptationOptions::centre_weight`; ours). 0: none. Needs the input
  /// encoder.
  TORCH_ARG(std::int64_t, pool_centres) = 200;
  /// On images, the convolutional encoders (`TaeNetworkOptions::
  /// conv_channels`) read each pool image moved by a random offset of at
  /// most this many pixels each way, and learn to find the unmoved image's
  /// code from it and the experts' answer on it (ours): features that a
  /// small shift does not change. 0: the images as they are.
  TORCH_ARG(std::int64_t, encoder_shift) = 0;
  TORCH_ARG(std::int64_t, epochs) = 20;
  TORCH_ARG(std::int64_t, batch_size) = 128;
  TORCH_ARG(double, lr) = 1e-3;
};

/// How an adapted task predicts.
enum class TaeReadout {
  /// The paper's recomposition B_τ*(x): votes of argmax_y G_w(y|x) over
  /// w ~ q_λ (with the prototypes relabelled when
  /// `TaeAdaptationOptions::relabel`).
  kPrototypes,
  /// Ours: a linear head over the input encoder's features of x
  /// (`TaeModel::features`), started at the shots' class means (nearest
  /// class mean; pulled toward the pool's centres, `centre_weight`) and
  /// trained on the shots for `head_steps` steps (none on one shot per
  /// class when pulled). A new task
  /// is read in the space the model learnt from every expert's answers and
  /// the whole pool, which holds the unseen classes too. Needs the input
  /// encoder (`TaeNetworkOptions::input_encoder`).
  kFeatures,
  /// Ours: features for a task with a class no expert answered for (p_α
  /// never saw its label), prototypes for a task of known classes (where the
  /// experts' knowledge is in the prototypes' votes).
  kAuto,
};

/// The readout's name in files and reports ("prototypes", "features",
/// "auto"), and back. `parse_tae_readout` throws `chorus::Error`
/// (INVALID_ARGUMENT) on another name.
std::string to_string(TaeReadout readout);
TaeReadout parse_tae_readout(const std::string& name);

/// How a task is recomposed from the prototypes, adapted and predicted
/// (saved with the model: a node adapts with them).
struct TaeAdaptationOptions {
  /// n, samples of w in recomposition and in the Gibbs loss.
  TORCH_ARG(std::int64_t, samples) = 10;
  /// δ of the PAC-Bayes bound.
  TORCH_ARG(double, delta) = 0.05;
  /// β in G_w(η|x) ∝ Σ_j p_θ(x|z_j,w)^β p_α(η|z_j) (ours; the paper has
  /// β = 1). With hundreds of pixels the likelihoods of two prototypes
  /// differ by hundreds of nats, G is the vote of one prototype, and the
  /// Gibbs loss has no gradient for adaptation to follow; a tempered
  /// likelihood keeps G a mixture. 0 means 1/sqrt(input pixels).
  TORCH_ARG(double, likelihood_scale) = 0.0;
  /// Adaptation of q_λ(w): Adam steps and learning rate (ours).
  TORCH_ARG(std::int64_t, steps) = 150;
  TORCH_ARG(double, lr) = 0.05;
  /// Prototype relabelling after adaptation (ours, not in the paper): each
  /// prototype's vote over the new task's classes becomes
  ///   votes_j(y) ∝ relabel_prior · p_α(y|z_j)|task + Σ_i r_ij [y_i = y],
  /// r_ij = softmax_j(β log p_θ(x_i|z_j, w̄)) the shot i's responsibility of
  /// prototype j under the adapted mean w̄. p_α only knows the experts'
  /// classes: on a task of unseen classes the prototypes' votes are noise and
  /// moving w alone cannot fix them. The shots stay at the node; so do the
  /// votes (they are never part of the embedding sent).
  TORCH_ARG(bool, relabel) = true;
  /// Weight of p_α in the relabelled votes, against one shot's unit mass
  /// (ours: 0.01; the Python prototype, MNIST-2, 20 tasks: 1 → U 5-shot 59,
  /// 0.1 → 78, 0.01 → 81, 0.001 → 82, with seen tasks best at 0.1–0.01).
  TORCH_ARG(double, relabel_prior) = 0.01;
  /// How the adapted task predicts (ours: auto; the paper: prototypes).
  /// Models without an input encoder always read out by prototypes.
  TORCH_ARG(TaeReadout, readout) = TaeReadout::kAuto;
  /// Steps of the features readout's head on the shots (Adam, lr 0.01,
  /// weight decay 1e-3, from the nearest-class-mean weights); 0 keeps the
  /// nearest class mean.
  TORCH_ARG(std::int64_t, head_steps) = 100;
  /// Unlabelled inputs of the task, when `adapt` is given some (ours): the
  /// features readout's class means are refined by soft k-means over them.
  /// Each of `unlabelled_rounds` rounds assigns every unlabelled input to
  /// the classes with shots, softmax_y(unlabelled_temperature · cos(f, c_y)),
  /// and recomputes each c_y from its shots (weight 1 each) and the
  /// unlabelled inputs (weight `unlabelled_weight` each, times their
  /// assignment), L2-normalised. The head is then the refined means' nearest
  /// class mean, without `head_steps`: trained on one shot per class they
  /// undo the refinement. bench_p2 `--unlabelled 1000`, 100 unseen tasks,
  /// seed 0: see the README's "What helped".
  TORCH_ARG(std::int64_t, unlabelled_rounds) = 2;
  TORCH_ARG(double, unlabelled_temperature) = 5.0;
  TORCH_ARG(double, unlabelled_weight) = 0.03;
  /// The pool's centres as a prior over the features readout's class means
  /// (ours; a model trained with `TaeTrainingOptions::pool_centres`), used
  /// when no unlabelled inputs are given: each class mean c_y of n_y shots
  /// (unit) becomes normalize(n_y·c_y + centre_weight·Σ_j
  /// softmax_j(centre_temperature·c_y·μ_j)·μ_j), the centres μ_j near it
  /// worth `centre_weight` shots. With one shot per class the head is then
  /// the nearest class mean, without `head_steps` (on two points they undo
  /// the prior); with more, the steps start from it. 0: no prior.
  /// bench_p2: see the README's "what helped".
  TORCH_ARG(double, centre_weight) = 2.0;
  TORCH_ARG(double, centre_temperature) = 30.0;
  /// With one shot per class and the pool's centres, the head is linear
  /// discriminant analysis on the pulled class means c_y with the pool's
  /// within-cluster covariance Σ (ours; `TaeModel::pool_covariance`):
  /// scores 2·c_y·S⁻¹f − c_y·S⁻¹c_y, S = (1 − s)·Σ/σ̄² + s·I, σ̄² Σ's mean
  /// variance and s this shrinkage. The pool tells which directions of the
  /// features vary within a kind of input and so say little about the
  /// class; one shot cannot. 1: the nearest pulled class mean (S = I).
  /// bench_p2: see the README's "what helped".
  TORCH_ARG(double, covariance_shrinkage) = 0.3;
};

/// Options of tae, by concern. The paper's defaults for 28×28 inputs; our
/// choices are marked.
struct TaeOptions {
  TORCH_ARG(TaeNetworkOptions, network) = {};
  TORCH_ARG(TaeTrainingOptions, training) = {};
  TORCH_ARG(TaeAdaptationOptions, adaptation) = {};
  TORCH_ARG(std::uint64_t, seed) = 0;
  /// Torch threads while training; 0 keeps the process's setting.
  TORCH_ARG(int, threads) = 0;
  /// Progress: epoch (1-based) and mean negative ELBO.
  TORCH_ARG(std::function<void(std::int64_t, double)>, on_epoch) = nullptr;
  /// Cancels training and adaptation (`TrainOptions::stop`).
  TORCH_ARG(std::stop_token, stop) = {};
};

/// A diagonal Gaussian over w: p_γ(w|τ), or an adapted q_λ(w) — a node's
/// prototype embedding.
struct WDistribution {
  torch::Tensor mean;    ///< [w_dim]
  torch::Tensor logvar;  ///< [w_dim]
};

/// τ of a task over the label space: the multi-hot [task_dim] of its
/// classes. Throws `chorus::Error` (INVALID_ARGUMENT) on a class outside it.
torch::Tensor task_descriptor(const std::vector<std::int64_t>& classes,
                              std::int64_t task_dim);

/// The experts' union answer [N, C]: each expert's answers [N, C] (lifted
/// into the output space) normalised, summed, and normalised again — what B+
/// predicts, as soft labels.
torch::Tensor union_answer(const std::vector<torch::Tensor>& answers);

/// A tensor's values as doubles (an embedding's mean or log-variance, for
/// JSON files and reports).
std::vector<double> to_doubles(const torch::Tensor& t);

/// What tae learns from: R = {(x, τ_i, η_i = B_i(x))}.
struct TaeData {
  /// Inputs [N, ...], pixels in [0, 1].
  torch::Tensor inputs;
  /// Expert i's answers on them, lifted into the output space [N, C].
  std::vector<torch::Tensor> answers;
  /// Expert i's task descriptor τ_i [T].
  std::vector<torch::Tensor> tasks;
};

/// The networks of the generative model and of inference.
class TaeNetImpl : public torch::nn::Module {
 public:
  TaeNetImpl(std::int64_t input_dim, std::int64_t outputs,
             std::int64_t task_dim, const TaeOptions& options);

  /// p_θ(x|w,z): logits of the pixels' Bernoulli [N, D].
  torch::Tensor decode_x(const torch::Tensor& w, const torch::Tensor& z);
  /// p_α(η|z): log-probabilities over the outputs [N, C].
  torch::Tensor decode_y(const torch::Tensor& z);
  /// p_γ(w|τ): mean and log-variance [N, w_dim].
  std::pair<torch::Tensor, torch::Tensor> prior_w(const torch::Tensor& tau);
  /// q_φ(z|x,η), q_φ(w|x,τ).
  std::pair<torch::Tensor, torch::Tensor> encode_z(const torch::Tensor& x,
                                                   const torch::Tensor& eta);
  std::pair<torch::Tensor, torch::Tensor> encode_w(const torch::Tensor& x,
                                                   const torch::Tensor& tau);
  /// The encoders of the input alone: the input encoder
  /// (`TaeNetworkOptions::input_encoder`) and the answer encoder
  /// (`TaeNetworkOptions::answer_encoder`), alike in shape.
  enum class Encoder { kInput, kAnswer };
  /// An encoder's hidden layer [N, hidden]: the features readout's space.
  /// Throws `chorus::Error` (FAILED_PRECONDITION) when the model has no
  /// such encoder.
  torch::Tensor input_features(const torch::Tensor& x,
                               Encoder encoder = Encoder::kInput);
  /// Whether the encoders of the input have the convolutional trunk
  /// (`TaeNetworkOptions::conv_channels`).
  bool conv_encoders() const { return conv_channels > 0; }
  /// Its q_φ(w,z|x) from that hidden layer: mean and log-variance
  /// [N, w_dim + z_dim], w first.
  std::pair<torch::Tensor, torch::Tensor> encode_features(
      const torch::Tensor& h, Encoder encoder = Encoder::kInput);
  /// q_ψ(η|w): log-probabilities [N, C].
  torch::Tensor adversary(const torch::Tensor& w);

  /// The parameters of the model and of q_φ (everything but ψ).
  std::vector<torch::Tensor> model_parameters();
  /// ψ's parameters.
  std::vector<torch::Tensor> adversary_parameters();
  /// p_θ(x|w,z)'s parameters.
  std::vector<torch::Tensor> decoder_parameters();
  /// Puts p_θ(x|w,z) alone in eval (true) or training mode.
  void decoder_eval(bool eval);

  std::int64_t input_dim, outputs, task_dim, w_dim, z_dim;
  bool input_encoder, answer_encoder;
  /// The convolutional trunk's image shape and first channels (0: none).
  std::vector<std::int64_t> image_shape;
  std::int64_t conv_channels = 0;

 private:
  torch::nn::Sequential dec_x_{nullptr}, dec_y_{nullptr}, adv_{nullptr};
  torch::nn::Sequential prior_trunk_{nullptr}, enc_z_trunk_{nullptr},
      enc_w_trunk_{nullptr};
  torch::nn::Linear prior_mean_{nullptr}, prior_logvar_{nullptr};
  torch::nn::Linear enc_z_mean_{nullptr}, enc_z_logvar_{nullptr};
  torch::nn::Linear enc_w_mean_{nullptr}, enc_w_logvar_{nullptr};
  /// An encoder of the input alone: trunk (the hidden layer), then the
  /// mean and log-variance of (w, z).
  struct EncoderModules {
    torch::nn::Sequential trunk{nullptr};
    torch::nn::Linear mean{nullptr}, logvar{nullptr};
  };
  /// Registers one as `<prefix>_trunk`, `<prefix>_mean`, `<prefix>_logvar`.
  EncoderModules register_encoder(const std::string& prefix,
                                  std::int64_t hidden);
  /// `encoder`'s modules (shared handles); throws when the model has none.
  EncoderModules encoder_modules(Encoder encoder) const;
  EncoderModules enc_x_, enc_a_;
};
TORCH_MODULE(TaeNet);

/// What adaptation reached.
struct TaeAdaptation {
  WDistribution posterior;  ///< q_λ(w): the prototype embedding.
  double bound = 0;         ///< F_R(λ), the PAC-Bayes objective.
  double gibbs_loss = 0;    ///< Ĝ(q_λ) on the shots.
  double kl = 0;            ///< KL(q_λ ‖ p_γ(·|τ*)).
  /// The prototypes' relabelled votes over the task's classes [m, |classes|]
  /// (rows sum to 1), when `TaeAdaptationOptions::relabel`; undefined
  /// otherwise. Derived from the private shots: kept at the node.
  torch::Tensor votes;
  /// The features readout's head over the task's classes: weight [width, F]
  /// and bias [width], when the task reads out by features
  /// (`TaeModel::reads_out_features`); undefined otherwise. Derived from the
  /// private shots: kept at the node.
  torch::Tensor head_weight, head_bias;
  /// How many unlabelled inputs refined the head's class means (0: none
  /// were given, or the task reads out by prototypes and did not use them).
  std::int64_t unlabelled = 0;
};

/// A task to predict with a tae model: its classes (indices of the model's
/// outputs; empty: all of them), q(w), and the prototypes' relabelled votes
/// when an adaptation made them.
struct TaeTask {
  std::vector<std::int64_t> classes;
  WDistribution q;
  torch::Tensor votes;
  /// The features readout's head (`TaeAdaptation::head_weight`), when
  /// defined: it decides, not the prototypes.
  torch::Tensor head_weight, head_bias;
  /// Where it comes from, for reports: "prior of all outputs" or a file.
  std::string source;
};

/// The tae global model: θ, α, γ and the cached prototypes (with φ and ψ
/// while training).
class TaeModel {
 public:
  /// A fresh model for inputs of `input_dim` values, `outputs` classes and
  /// task descriptors of `task_dim`.
  TaeModel(std::int64_t input_dim, std::int64_t outputs, std::int64_t task_dim,
           TaeOptions options = {});

  /// Trains on R. Returns the mean negative ELBO of each epoch. Throws
  /// `chorus::Error` (INVALID_ARGUMENT) on inconsistent data.
  std::vector<double> train(const TaeData& data);

  /// The mean negative ELBO (without the adversary) on `data`, in eval mode.
  double negative_elbo(const TaeData& data);

  /// p_γ(w|τ) for a task descriptor [T].
  WDistribution prior(const torch::Tensor& tau);

  /// log G_w(y|x) for one w [w_dim]: [N, C] (or [N, |classes|] renormalised
  /// over `classes` when given). With `votes` [m, width] (an adaptation's
  /// relabelled votes), they replace p_α(y|z_j).
  torch::Tensor log_g(const torch::Tensor& x, const torch::Tensor& w,
                      const std::vector<std::int64_t>& classes = {},
                      const torch::Tensor& votes = {});

  /// B_τ*(x): votes of argmax_y G_{w_s}(y|x) over n samples w_s ~ `q`,
  /// [N, C] (or [N, |classes|]); rows sum to 1. `votes` as in `log_g`.
  torch::Tensor predict(const torch::Tensor& x, const WDistribution& q,
                        const std::vector<std::int64_t>& classes = {},
                        const torch::Tensor& votes = {});

  /// An adaptation's predictions: its head's when it has one (the features
  /// readout), else `predict` with its posterior and votes.
  torch::Tensor predict(const torch::Tensor& x, const TaeAdaptation& adapted,
                        const std::vector<std::int64_t>& classes = {});

  /// The prototypes' votes relabelled by the labelled shots under `q`'s mean
  /// (see `TaeAdaptationOptions::relabel`): [m, width], rows sum to 1. `labels`
  /// are indices [d] into the task's classes, or soft labels [d, width].
  torch::Tensor relabel(const torch::Tensor& x, const torch::Tensor& labels,
                        const WDistribution& q,
                        const std::vector<std::int64_t>& classes = {});

  /// The features readout's features of `x`: the input encoder's hidden
  /// layer, L2-normalised, [N, hidden] — beside the answer encoder's, when
  /// the model has one, [N, 2·hidden], each half scaled to norm 1/√2.
  /// Throws `chorus::Error` (FAILED_PRECONDITION) for a model without an
  /// input encoder.
  torch::Tensor features(const torch::Tensor& x);
  /// The width of `features` (0 without an input encoder).
  std::int64_t feature_dim() const;

  /// The features readout's head for a task from labelled shots (`labels`
  /// as in `relabel`: indices into the task's classes, or soft labels
  /// [d, width]): the class means of the shots' features as a linear head
  /// (weight 2·c_y, bias −‖c_y‖², the nearest class mean), then
  /// `head_steps` steps of cross-entropy on the shots. A model with the
  /// pool's centres pulls the class means toward them first
  /// (`TaeAdaptationOptions::centre_weight`), and takes no steps when a
  /// class has a single shot: then, with the pool's covariance, the head is
  /// LDA on the pulled means (`TaeAdaptationOptions::covariance_shrinkage`).
  /// With `unlabelled`
  /// inputs of the task [u, input] (u ≥ 1), the class means are refined over
  /// them instead of the steps (`TaeAdaptationOptions::unlabelled_rounds`).
  /// Returns {weight [width, F], bias [width]}. Throws `chorus::Error`
  /// (INVALID_ARGUMENT) for unlabelled inputs of the wrong size or with NaN
  /// or Inf.
  std::pair<torch::Tensor, torch::Tensor> fit_head(
      const torch::Tensor& x, const torch::Tensor& labels,
      const std::vector<std::int64_t>& classes = {},
      const torch::Tensor& unlabelled = {});

  /// Whether adaptation to a task of `classes` (empty: every output) reads
  /// out by features: the model has an input encoder and the readout is
  /// features, or auto with a class the experts never answered for.
  bool reads_out_features(const std::vector<std::int64_t>& classes) const;

  /// Which outputs some expert's task covered in training (all of them for
  /// task descriptors that do not name outputs, and for files written before
  /// this was saved): [outputs] bool.
  const torch::Tensor& known_outputs() const { return known_; }

  /// PAC-Bayes adaptation of q_λ(w) to the task τ* from the labelled shots
  /// (`labels` index `classes`, or the outputs when `classes` is empty).
  /// With the features readout, also the head (`fit_head`, refined over
  /// the task's `unlabelled` inputs when given; other readouts do not use
  /// them).
  TaeAdaptation adapt(const torch::Tensor& tau, const torch::Tensor& x,
                      const torch::Tensor& labels,
                      const std::vector<std::int64_t>& classes = {},
                      const torch::Tensor& unlabelled = {});

  /// The PAC-Bayes objective of `q` on the shots (what `adapt` minimises),
  /// e.g. at the prior.
  TaeAdaptation bound(const torch::Tensor& tau, const torch::Tensor& x,
                      const torch::Tensor& labels, const WDistribution& q,
                      const std::vector<std::int64_t>& classes = {});

  /// Refits p_γ on task embeddings (one per task), so later tasks start from
  /// a better prior: a few steps of maximum likelihood of each embedding's
  /// mean under p_γ(w|τ).
  void refit_prior(const std::vector<torch::Tensor>& tasks,
                   const std::vector<WDistribution>& embeddings,
                   std::int64_t steps = 100);

  /// The task of every output under its prior p_γ(w|τ_all): what the global
  /// model predicts before any node adapted it.
  TaeTask task_of_all_outputs();

  /// The task the model predicts with when no adapted task is given: the
  /// one `set_default_task` stored (the coordinator's adaptation of every
  /// output on its labelled set V, saved in the model's file), else
  /// `task_of_all_outputs()`. The coordinator's printed accuracy, `chorus
  /// eval --model` and `chorus predict --model` all predict with it.
  TaeTask default_task();
  /// Stores `task` (over every output: `classes` empty) as the default, to
  /// be saved with the model. Throws `chorus::Error` for a task that does
  /// not fit the model.
  void set_default_task(TaeTask task);

  /// The adapted task a node wrote (`chorus node adapt`: the state
  /// directory's adapted.json — its "outputs", "mean", "logvar" and
  /// optional "votes"). Throws `chorus::Error`: NOT_FOUND, DATA_LOSS for a
  /// malformed file, INVALID_ARGUMENT when it does not fit this model.
  TaeTask read_adapted_task(const std::filesystem::path& path) const;

  /// Predictions for `task`: [N, |classes|] (all outputs when empty).
  torch::Tensor predict(const torch::Tensor& x, const TaeTask& task);

  /// Whether `path` holds a tae global model (by its format tag). False for
  /// any file that is not one, including unreadable ones.
  static bool is_model_file(const std::filesystem::path& path);

  /// Writes the global model atomically (format "chorus.tae", version 2:
  /// named fields; version-1 files are still read).
  void save(const std::filesystem::path& path) const;
  /// Reads `save`'s file. Throws `chorus::Error` (NOT_FOUND, DATA_LOSS).
  static TaeModel load(const std::filesystem::path& path);

  const TaeOptions& options() const { return options_; }
  /// Replaces the adaptation options (how later `adapt` and `fit_head`
  /// calls read a task; the trained model is unchanged). Throws
  /// `chorus::Error` (INVALID_ARGUMENT) on an option out of its range.
  void set_adaptation(TaeAdaptationOptions adaptation);
  /// Names of the outputs (the deployment's label space), saved with the
  /// model so that a node can map its own labels onto them.
  const std::vector<std::string>& labels() const { return labels_; }
  void set_labels(std::vector<std::string> labels) {
    labels_ = std::move(labels);
  }
  std::int64_t input_dim() const { return net_->input_dim; }
  std::int64_t outputs() const { return net_->outputs; }
  std::int64_t task_dim() const { return net_->task_dim; }
  /// The cached prototypes [m, z_dim].
  const torch::Tensor& prototypes() const { return prototypes_; }
  /// The pool's feature centres [K, feature_dim()], unit rows
  /// (`TaeTrainingOptions::pool_centres`); undefined when the model has
  /// none.
  const torch::Tensor& pool_centres() const { return centres_; }
  /// The pool's within-cluster covariance of the features [F, F] about the
  /// centres (`TaeAdaptationOptions::covariance_shrinkage`); undefined when
  /// the model has no centres (or was saved before it).
  const torch::Tensor& pool_covariance() const { return covariance_; }

 private:
  /// Throws `chorus::Error` (INVALID_ARGUMENT, naming `what`) when the
  /// task's head does not fit this model: weight [width, feature_dim()], bias
  /// [width], finite, and an input encoder to read features with.
  void check_head(const TaeTask& task, const std::string& what) const;
  /// `fit_head`'s class means [width, F], unit rows: the shots' (features
  /// `f` [d, F], class weights `targets` [d, width]) refined over the task's
  /// unlabelled inputs.
  torch::Tensor refine_centres(const torch::Tensor& f,
                               const torch::Tensor& targets,
                               const torch::Tensor& unlabelled);
  /// The one-shot head over the pulled class means `centres` [width, F]
  /// with the pool's covariance (`covariance_shrinkage`): weight 2·S⁻¹c_y,
  /// bias −c_y·S⁻¹c_y.
  std::pair<torch::Tensor, torch::Tensor> covariance_head(
      const torch::Tensor& centres) const;
  /// The pool's feature centres by spherical k-means (`pool_centres`) and
  /// the features' covariance about them (`pool_covariance`).
  void cluster_pool(const torch::Tensor& x);
  /// β log p_θ(x|z_j, w) for every input and prototype: [N, m].
  torch::Tensor log_px(const torch::Tensor& x, const torch::Tensor& w);

  TaeOptions options_;
  TaeNet net_;
  torch::Tensor prototypes_;
  std::vector<std::string> labels_;
  std::optional<TaeTask> default_task_;
  torch::Tensor known_;
  torch::Tensor centres_;
  torch::Tensor covariance_;
};

}  // namespace chorus::fusion
