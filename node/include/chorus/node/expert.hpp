#pragma once

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "chorus/core/task.hpp"
#include "chorus/fusion/data_files.hpp"
#include "chorus/fusion/dp_sgd.hpp"
#include "chorus/fusion/train.hpp"

/// A node's expert: the private model it serves as a black box. Whatever the
/// backend, the node discloses only its input shape and its output labels.
namespace chorus::node {

/// Where an expert comes from.
enum class ExpertKind {
  kTorchScript,  ///< A module saved from Python with `torch.jit.save`.
  kBuiltin,      ///< A chorus zoo model trained by `chorus node train`.
};

/// "torchscript" or "builtin".
const char* expert_kind_name(ExpertKind kind);
/// Parses `expert_kind_name`'s form. Throws `chorus::Error`.
ExpertKind parse_expert_kind(const std::string& text);

/// How to load and call an expert.
struct ExpertOptions {
  ExpertKind kind = ExpertKind::kBuiltin;
  /// The model file.
  std::filesystem::path path;
  /// Shape of one input, e.g. {1, 28, 28} or {30}. Required for a
  /// TorchScript expert; a builtin expert takes its model file's, and a
  /// shape given here must equal it.
  std::vector<std::int64_t> input_shape;
  /// The expert's task: its output labels, as names in the deployment's
  /// shared label space, in the order of its output columns. For a builtin
  /// expert, empty means "as stored in the model file".
  std::vector<std::string> labels;
  /// Whether the module returns logits (softmax is applied) or
  /// probabilities (used as they are).
  bool outputs_logits = true;
  /// A TorchScript module that returns a tuple or a dict: which element
  /// holds the class scores (a tuple index, e.g. "0", or a dict key, e.g.
  /// "logits"). Empty: the module must return a tensor.
  std::string output_key;
  /// Inputs are normalised as (x − mean) / std before the model sees them
  /// (after the task's own normalisation, which the node applies first).
  double normalize_mean = 0.0;
  double normalize_std = 1.0;
  /// [expert] share_weights: the node's operator lets a coordinator that
  /// runs dro read this (builtin) expert's weights — off by default; the
  /// node then announces the capability "weights" and logs every read in
  /// its audit log.
  bool share_weights = false;
  /// A builtin expert's architecture (a `fusion::ModelSpec` string), from
  /// its model file; empty when unknown.
  std::string spec;
  /// Where the model runs ([node] device): it moves there once, each batch
  /// moves there and the answers come back to the CPU.
  c10::Device device = c10::Device(c10::kCPU);
  /// The DP-SGD guarantee a builtin expert was trained under, from its
  /// model file; none for an expert trained without one.
  std::optional<fusion::DpGuarantee> training_privacy;
};

/// A loaded expert. `predict` may be called from several threads.
class Expert {
 public:
  virtual ~Expert() = default;
  /// Probabilities float32 [N, labels().size()] for inputs [N, input_shape].
  /// Throws `chorus::Error`: INVALID_ARGUMENT for inputs of the wrong shape,
  /// INTERNAL when the model answers with the wrong shape or non-finite
  /// values.
  torch::Tensor predict(const torch::Tensor& inputs);
  /// The teachers' vote histogram float32 [N, labels().size()] for the same
  /// inputs: how many teachers rank each label first (GNMax's input). An
  /// expert of one model is one teacher: its argmax, one-hot. Throws as
  /// `predict` does.
  torch::Tensor votes(const torch::Tensor& inputs);
  /// How many models vote: 1, or the size of a builtin teacher ensemble
  /// (`chorus node train` with [train] teachers), whose `predict` is the
  /// mean of its teachers' probabilities.
  virtual std::int64_t teachers() const { return 1; }
  /// The shape of one input.
  const std::vector<std::int64_t>& input_shape() const {
    return options_.input_shape;
  }
  /// The output labels.
  const std::vector<std::string>& labels() const { return options_.labels; }
  /// The backend.
  ExpertKind kind() const { return options_.kind; }
  /// The options it was loaded with.
  const ExpertOptions& options() const { return options_; }
  /// A builtin expert's model (its weights), or null.
  virtual std::shared_ptr<fusion::ClassifierImpl> builtin_model() const {
    return nullptr;
  }

 protected:
  explicit Expert(ExpertOptions options);
  /// The model's raw output (logits or probabilities) for normalised inputs.
  virtual torch::Tensor forward(const torch::Tensor& inputs) = 0;
  /// Each teacher's raw output for normalised inputs; `{forward(inputs)}`
  /// for an expert of one model.
  virtual std::vector<torch::Tensor> forward_teachers(
      const torch::Tensor& inputs) {
    return {forward(inputs)};
  }
  ExpertOptions options_;

 private:
  // The inputs checked against the shape, as float32, normalised, on the
  // expert's device.
  torch::Tensor prepare(const torch::Tensor& inputs) const;
  // A raw output for `n` inputs checked and made probabilities on the CPU.
  torch::Tensor probabilities(torch::Tensor out, std::int64_t n) const;
};

/// Loads the expert `options` describe and runs one dummy prediction on a
/// zero input, so that a module that returns a tuple or dict it was not told
/// how to read, or a number of columns other than its labels', is refused
/// at start-up. Throws `chorus::Error`: NOT_FOUND for a missing file,
/// DATA_LOSS for a file that is not a model of that kind, INVALID_ARGUMENT
/// when the labels, shapes or outputs disagree with the config.
std::unique_ptr<Expert> load_expert(ExpertOptions options);

/// A builtin expert held in memory (what `chorus simulate` serves).
std::unique_ptr<Expert> make_builtin_expert(
    std::shared_ptr<fusion::ClassifierImpl> model, ExpertOptions options);

/// A builtin teacher ensemble held in memory: `models` (at least one, all
/// of one architecture) answer with the mean of their probabilities and
/// vote one each.
std::unique_ptr<Expert> make_builtin_expert(
    std::vector<std::shared_ptr<fusion::ClassifierImpl>> models,
    ExpertOptions options);

/// Saves `models` (one expert, or the teachers of an ensemble) as a builtin
/// expert file over `labels`, with the DP-SGD guarantee they were trained
/// under when there is one.
void save_builtin_expert(
    const std::vector<std::shared_ptr<fusion::ClassifierImpl>>& models,
    const fusion::ModelSpec& spec, const std::vector<std::string>& labels,
    const std::filesystem::path& out,
    const std::optional<fusion::DpGuarantee>& privacy = std::nullopt);
inline void save_builtin_expert(
    const std::shared_ptr<fusion::ClassifierImpl>& model,
    const fusion::ModelSpec& spec, const std::vector<std::string>& labels,
    const std::filesystem::path& out,
    const std::optional<fusion::DpGuarantee>& privacy = std::nullopt) {
  save_builtin_expert(
      std::vector<std::shared_ptr<fusion::ClassifierImpl>>{model}, spec, labels,
      out, privacy);
}

}  // namespace chorus::node
