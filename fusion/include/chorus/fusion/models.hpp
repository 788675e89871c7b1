#pragma once

#include <ATen/core/Generator.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

/// The model zoo: chorus's own classifier architectures. Every model maps a
/// float batch [N, C, H, W] (or [N, D] for the MLP) to logits [N, classes].
namespace chorus::fusion {

/// A layer whose parameters' per-example gradients can be computed from
/// what the forward pass records: its input and its output (dp_sgd.hpp).
struct RecordedLayer {
  enum class Kind { kLinear, kConv2d, kGroupNorm };
  Kind kind = Kind::kLinear;
  torch::nn::Module* module = nullptr;  ///< Its `weight` and `bias`.
  /// The layer's input; for GroupNorm the normalised input, before the
  /// per-channel scale and shift.
  torch::Tensor input;
  torch::Tensor output;
};

/// Where a forward pass records its layers while DP-SGD computes
/// per-example gradients.
struct LayerRecorder {
  std::vector<RecordedLayer> layers;
};

/// What every zoo model is: a module with a logits-returning `forward`.
class ClassifierImpl : public torch::nn::Module {
 public:
  /// While a recorder is set, the forward pass records every Linear,
  /// Conv2d and GroupNorm it runs (DP-SGD's per-example gradients); null
  /// stops recording.
  void set_recorder(LayerRecorder* recorder) { recorder_ = recorder; }

  /// Logits [N, num_classes] for inputs [N, ...].
  virtual torch::Tensor forward(torch::Tensor x) = 0;

  /// The generator dropout draws its masks from in training mode (on the
  /// CPU); without one, or on another device, it draws from torch's default
  /// generator. `train` sets its own for
  /// its duration.
  void set_noise(std::optional<at::Generator> gen) { noise_ = std::move(gen); }
  const std::optional<at::Generator>& noise() const { return noise_; }

 protected:
  /// Keeps the convolutions' weights channels-last: with inputs converted
  /// in `forward`, convolution, BatchNorm and pooling run in that layout,
  /// 1.2-4x faster on the CPU than the default one (bench_p1 --vs-pytorch).
  void use_channels_last();
  /// Dropout with probability `p` in training mode, from `noise()`.
  torch::Tensor dropout(const torch::Tensor& x, double p);
  /// The layers, run through these so that a recorder sees them.
  torch::Tensor linear(torch::nn::LinearImpl& layer, const torch::Tensor& x);
  torch::Tensor conv(torch::nn::Conv2dImpl& layer, const torch::Tensor& x);
  torch::Tensor group_norm(torch::nn::GroupNormImpl& layer,
                           const torch::Tensor& x);

 private:
  std::optional<at::Generator> noise_;
  LayerRecorder* recorder_ = nullptr;
};

/// Options of `Mlp`.
struct MlpOptions {
  /// Input shape of one example (flattened by the model), e.g. {1, 28, 28}.
  TORCH_ARG(std::vector<std::int64_t>, input_shape) = {1, 28, 28};
  /// Number of output classes.
  TORCH_ARG(std::int64_t, num_classes) = 10;
  /// Widths of the hidden layers (ReLU after each).
  TORCH_ARG(std::vector<std::int64_t>, hidden) = {256, 128};
  /// Dropout probability after each hidden layer.
  TORCH_ARG(double, dropout) = 0.1;
};

/// A multi-layer perceptron over the flattened input.
class MlpImpl : public ClassifierImpl {
 public:
  explicit MlpImpl(MlpOptions options = {});
  torch::Tensor forward(torch::Tensor x) override;
  /// The options this model was built with.
  const MlpOptions& options() const { return options_; }

 private:
  MlpOptions options_;
  torch::nn::ModuleList layers_{nullptr};
};
TORCH_MODULE(Mlp);

/// Options of `LeNet`.
struct LeNetOptions {
  /// Input channels.
  TORCH_ARG(std::int64_t, in_channels) = 1;
  /// Input height and width: any size of at least 4×4 (each 2×2 max-pool
  /// rounds down).
  TORCH_ARG(std::int64_t, image_height) = 28;
  TORCH_ARG(std::int64_t, image_width) = 28;
  /// Number of output classes.
  TORCH_ARG(std::int64_t, num_classes) = 10;
  /// Channels of the two convolution stages.
  TORCH_ARG(std::int64_t, channels1) = 16;
  TORCH_ARG(std::int64_t, channels2) = 32;
  /// Width of the fully connected layer.
  TORCH_ARG(std::int64_t, hidden) = 128;
  /// Dropout before the classifier.
  TORCH_ARG(double, dropout) = 0.25;
  /// 0: BatchNorm after each convolution; G > 0: GroupNorm with G groups
  /// (each example normalised on its own, as DP-SGD needs).
  TORCH_ARG(std::int64_t, groups) = 0;
};

/// A LeNet-style CNN: two 3×3 conv + BatchNorm (or GroupNorm) + ReLU + 2×2
/// max-pool stages, one hidden fully connected layer.
class LeNetImpl : public ClassifierImpl {
 public:
  explicit LeNetImpl(LeNetOptions options = {});
  torch::Tensor forward(torch::Tensor x) override;
  const LeNetOptions& options() const { return options_; }

 private:
  LeNetOptions options_;
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  torch::nn::BatchNorm2d bn1_{nullptr}, bn2_{nullptr};
  torch::nn::GroupNorm gn1_{nullptr}, gn2_{nullptr};
  torch::nn::Linear fc1_{nullptr}, fc2_{nullptr};
};
TORCH_MODULE(LeNet);

/// Options of `ResNet`.
struct ResNetOptions {
  /// Input channels.
  TORCH_ARG(std::int64_t, in_channels) = 1;
  /// Number of output classes.
  TORCH_ARG(std::int64_t, num_classes) = 10;
  /// Channels of the first stage; each later stage doubles them.
  TORCH_ARG(std::int64_t, width) = 16;
  /// Number of stages (each after the first halves the resolution).
  TORCH_ARG(std::int64_t, stages) = 3;
  /// Residual blocks per stage.
  TORCH_ARG(std::int64_t, blocks_per_stage) = 1;
};

/// A small pre-activation-free ResNet: a 3×3 stem, `stages` stages of
/// `blocks_per_stage` basic blocks, global average pooling, a linear head.
class ResNetImpl : public ClassifierImpl {
 public:
  explicit ResNetImpl(ResNetOptions options = {});
  torch::Tensor forward(torch::Tensor x) override;
  const ResNetOptions& options() const { return options_; }

 private:
  ResNetOptions options_;
  torch::nn::Sequential stem_{nullptr};
  torch::nn::Sequential body_{nullptr};
  torch::nn::Linear head_{nullptr};
};
TORCH_MODULE(ResNet);

/// A model's architecture as a string, e.g. "lenet in=1x28x28 classes=10".
/// Fused models travel and are stored as this spec plus named tensors.
struct ModelSpec {
  /// "mlp", "lenet" or "resnet".
  std::string arch = "lenet";
  /// Shape of one input example.
  std::vector<std::int64_t> input_shape = {1, 28, 28};
  /// Number of output classes.
  std::int64_t num_classes = 10;
  /// Hidden widths (mlp only; empty means the MlpOptions default).
  std::vector<std::int64_t> hidden;
  /// Normalisation after each convolution (lenet only): "" (BatchNorm) or
  /// "group" (GroupNorm, for DP-SGD).
  std::string norm;

  /// "arch in=AxBxC classes=N [hidden=W1,W2] [norm=group]".
  std::string to_string() const;
  /// Parses `to_string`'s form. Throws `chorus::Error` (INVALID_ARGUMENT)
  /// naming what is wrong.
  static ModelSpec parse(const std::string& text);
  bool operator==(const ModelSpec&) const = default;
};

/// The names of the zoo's architectures, in a fixed order.
const std::vector<std::string>& architectures();

/// The architecture that suits inputs of `input_shape`: "lenet" for images
/// [C, H, W] of at least 4×4, "mlp" otherwise (tabular features [D], or
/// images too small to pool).
std::string default_architecture(const std::vector<std::int64_t>& input_shape);

/// `arch`, or `default_architecture(input_shape)` when `arch` is "auto".
/// Throws `chorus::Error` (INVALID_ARGUMENT) when the named architecture
/// cannot take inputs of that shape, naming both.
std::string resolve_architecture(const std::string& arch,
                                 const std::vector<std::int64_t>& input_shape);

/// Builds a model for `spec` whose weights are about to be overwritten (a
/// model being loaded): its initial weights are LibTorch's, drawn from the
/// default generator. Throws `chorus::Error` (INVALID_ARGUMENT) for an
/// unknown architecture or a shape it cannot take.
std::shared_ptr<ClassifierImpl> make_classifier(const ModelSpec& spec);

/// Builds a freshly initialised model for `spec`, every initial weight drawn
/// from `gen` (see `initialise`). Throws as the overload above.
std::shared_ptr<ClassifierImpl> make_classifier(const ModelSpec& spec,
                                                at::Generator& gen);

}  // namespace chorus::fusion
