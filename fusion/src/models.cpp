#include "chorus/fusion/models.hpp"

#include <fmt/ranges.h>
#include <torch/torch.h>

#include <sstream>

#include "chorus/core/error.hpp"
#include "chorus/fusion/random.hpp"

namespace chorus::fusion {

namespace nn = torch::nn;
namespace F = torch::nn::functional;

void ClassifierImpl::use_channels_last() {
  torch::NoGradGuard no_grad;
  for (auto& p : parameters()) {
    if (p.dim() != 4) continue;
    // Restrided even where `contiguous` would keep the tensor as it is (a
    // first layer's [out, 1, k, k] passes for channels-last either way, but
    // only channels-last strides make the convolution choose that layout).
    p.set_data(
        torch::empty_like(p, torch::MemoryFormat::ChannelsLast).copy_(p));
  }
}

torch::Tensor ClassifierImpl::dropout(const torch::Tensor& x, double p) {
  // The generator is a CPU one: on another device, that device's default.
  if (!noise_ || !x.is_cpu()) return torch::dropout(x, p, is_training());
  auto gen = *noise_;
  return fusion::dropout(x, p, is_training(), gen);
}

torch::Tensor ClassifierImpl::linear(torch::nn::LinearImpl& layer,
                                     const torch::Tensor& x) {
  auto out = layer.forward(x);
  if (recorder_) {
    recorder_->layers.push_back({RecordedLayer::Kind::kLinear, &layer, x, out});
  }
  return out;
}

torch::Tensor ClassifierImpl::conv(torch::nn::Conv2dImpl& layer,
                                   const torch::Tensor& x) {
  auto out = layer.forward(x);
  if (recorder_) {
    recorder_->layers.push_back({RecordedLayer::Kind::kConv2d, &layer, x, out});
  }
  return out;
}

torch::Tensor ClassifierImpl::group_norm(torch::nn::GroupNormImpl& layer,
                                         const torch::Tensor& x) {
  if (!recorder_) return layer.forward(x);
  // The same as the module's forward, with the normalised input kept.
  const auto& o = layer.options;
  auto normalised = torch::group_norm(x, o.num_groups(), {}, {}, o.eps());
  std::vector<std::int64_t> shape(static_cast<std::size_t>(x.dim()), 1);
  shape[1] = x.size(1);
  auto out = normalised * layer.weight.view(shape) + layer.bias.view(shape);
  recorder_->layers.push_back(
      {RecordedLayer::Kind::kGroupNorm, &layer, normalised, out});
  return out;
}

MlpImpl::MlpImpl(MlpOptions options) : options_(std::move(options)) {
  CHORUS_CHECK(!options_.input_shape().empty(), "mlp: empty input shape");
  CHORUS_CHECK(options_.num_classes() > 0, "mlp: num_classes must be positive");
  std::int64_t in = 1;
  for (auto d : options_.input_shape()) {
    CHORUS_CHECK(d > 0, "mlp: input dimensions must be positive");
    in *= d;
  }
  layers_ = register_module("layers", nn::ModuleList());
  for (auto width : options_.hidden()) {
    CHORUS_CHECK(width > 0, "mlp: hidden widths must be positive");
    layers_->push_back(nn::Linear(in, width));
    in = width;
  }
  layers_->push_back(nn::Linear(in, options_.num_classes()));
  CHORUS_CHECK(options_.dropout() >= 0 && options_.dropout() < 1,
               "mlp: dropout must be in [0, 1), got {}", options_.dropout());
}

torch::Tensor MlpImpl::forward(torch::Tensor x) {
  x = x.flatten(/*start_dim=*/1);
  const auto n = layers_->size();
  for (std::size_t i = 0; i < n; ++i) {
    x = linear(*layers_[i]->as<nn::Linear>(), x);
    if (i + 1 < n) x = dropout(torch::relu(x), options_.dropout());
  }
  return x;
}

LeNetImpl::LeNetImpl(LeNetOptions options) : options_(std::move(options)) {
  const auto& o = options_;
  CHORUS_CHECK(
      o.image_height() >= 4 && o.image_width() >= 4,
      "lenet: images must be at least 4x4 (two 2x2 poolings), got {}x{}; use "
      "the mlp for smaller inputs",
      o.image_height(), o.image_width());
  conv1_ = register_module(
      "conv1", nn::Conv2d(nn::Conv2dOptions(o.in_channels(), o.channels1(), 3)
                              .padding(1)
                              .bias(false)));
  conv2_ = register_module(
      "conv2", nn::Conv2d(nn::Conv2dOptions(o.channels1(), o.channels2(), 3)
                              .padding(1)
                              .bias(false)));
  if (o.groups() > 0) {
    CHORUS_CHECK(
        o.channels1() % o.groups() == 0 && o.channels2() % o.groups() == 0,
        "lenet: {} groups do not divide {} and {} channels", o.groups(),
        o.channels1(), o.channels2());
    gn1_ = register_module(
        "gn1", nn::GroupNorm(nn::GroupNormOptions(o.groups(), o.channels1())));
    gn2_ = register_module(
        "gn2", nn::GroupNorm(nn::GroupNormOptions(o.groups(), o.channels2())));
  } else {
    bn1_ = register_module("bn1", nn::BatchNorm2d(o.channels1()));
    bn2_ = register_module("bn2", nn::BatchNorm2d(o.channels2()));
  }
  // Each 2x2 max-pool rounds down.
  const std::int64_t h = o.image_height() / 2 / 2, w = o.image_width() / 2 / 2;
  fc1_ = register_module("fc1", nn::Linear(o.channels2() * h * w, o.hidden()));
  fc2_ = register_module("fc2", nn::Linear(o.hidden(), o.num_classes()));
  CHORUS_CHECK(o.dropout() >= 0 && o.dropout() < 1,
               "lenet: dropout must be in [0, 1), got {}", o.dropout());
  use_channels_last();
}

torch::Tensor LeNetImpl::forward(torch::Tensor x) {
  x = x.contiguous(torch::MemoryFormat::ChannelsLast);
  const bool grouped = options_.groups() > 0;
  x = conv(*conv1_, x);
  x = grouped ? group_norm(*gn1_, x) : bn1_(x);
  x = F::max_pool2d(torch::relu(x), F::MaxPool2dFuncOptions(2));
  x = conv(*conv2_, x);
  x = grouped ? group_norm(*gn2_, x) : bn2_(x);
  x = F::max_pool2d(torch::relu(x), F::MaxPool2dFuncOptions(2));
  x = dropout(torch::relu(linear(*fc1_, x.flatten(/*start_dim=*/1))),
              options_.dropout());
  return linear(*fc2_, x);
}

namespace {

// conv3x3-BN-ReLU-conv3x3-BN plus a (projected) shortcut, then ReLU.
class BasicBlockImpl : public nn::Module {
 public:
  BasicBlockImpl(std::int64_t in, std::int64_t out, std::int64_t stride) {
    conv1_ = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(in, out, 3)
                                                     .stride(stride)
                                                     .padding(1)
                                                     .bias(false)));
    bn1_ = register_module("bn1", nn::BatchNorm2d(out));
    conv2_ = register_module(
        "conv2",
        nn::Conv2d(nn::Conv2dOptions(out, out, 3).padding(1).bias(false)));
    bn2_ = register_module("bn2", nn::BatchNorm2d(out));
    if (stride != 1 || in != out) {
      shortcut_ = register_module(
          "shortcut",
          nn::Sequential(
              nn::Conv2d(
                  nn::Conv2dOptions(in, out, 1).stride(stride).bias(false)),
              nn::BatchNorm2d(out)));
    }
  }
  torch::Tensor forward(torch::Tensor x) {
    auto y = torch::relu(bn1_(conv1_(x)));
    y = bn2_(conv2_(y));
    return torch::relu(y + (shortcut_ ? shortcut_->forward(x) : x));
  }

 private:
  nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  nn::BatchNorm2d bn1_{nullptr}, bn2_{nullptr};
  nn::Sequential shortcut_{nullptr};
};
TORCH_MODULE(BasicBlock);

}  // namespace

ResNetImpl::ResNetImpl(ResNetOptions options) : options_(std::move(options)) {
  const auto& o = options_;
  CHORUS_CHECK(o.width() > 0 && o.stages() > 0 && o.blocks_per_stage() > 0,
               "resnet: width, stages and blocks_per_stage must be positive");
  stem_ = register_module(
      "stem",
      nn::Sequential(nn::Conv2d(nn::Conv2dOptions(o.in_channels(), o.width(), 3)
                                    .padding(1)
                                    .bias(false)),
                     nn::BatchNorm2d(o.width()), nn::ReLU()));
  body_ = register_module("body", nn::Sequential());
  std::int64_t in = o.width();
  for (std::int64_t s = 0; s < o.stages(); ++s) {
    const std::int64_t out = o.width() << s;
    for (std::int64_t b = 0; b < o.blocks_per_stage(); ++b) {
      body_->push_back(BasicBlock(in, out, (s > 0 && b == 0) ? 2 : 1));
      in = out;
    }
  }
  head_ = register_module("head", nn::Linear(in, o.num_classes()));
  use_channels_last();
}

torch::Tensor ResNetImpl::forward(torch::Tensor x) {
  x = x.contiguous(torch::MemoryFormat::ChannelsLast);
  x = body_->forward(stem_->forward(x));
  return head_(x.mean({2, 3}));
}

std::string ModelSpec::to_string() const {
  std::string shape;
  for (std::size_t i = 0; i < input_shape.size(); ++i) {
    if (i) shape += 'x';
    shape += std::to_string(input_shape[i]);
  }
  std::string out =
      fmt::format("{} in={} classes={}", arch, shape, num_classes);
  if (!hidden.empty()) out += fmt::format(" hidden={}", fmt::join(hidden, ","));
  if (!norm.empty()) out += fmt::format(" norm={}", norm);
  return out;
}

ModelSpec ModelSpec::parse(const std::string& text) {
  std::istringstream in(text);
  ModelSpec spec;
  std::string token;
  CHORUS_CHECK(static_cast<bool>(in >> spec.arch), "empty model spec");
  bool have_in = false, have_classes = false;
  while (in >> token) {
    auto eq = token.find('=');
    CHORUS_CHECK(eq != std::string::npos,
                 "model spec '{}': expected key=value, got '{}'", text, token);
    const std::string key = token.substr(0, eq), value = token.substr(eq + 1);
    try {
      if (key == "in") {
        spec.input_shape.clear();
        std::istringstream dims(value);
        std::string d;
        while (std::getline(dims, d, 'x')) {
          spec.input_shape.push_back(std::stoll(d));
        }
        have_in = true;
      } else if (key == "hidden") {
        std::istringstream widths(value);
        std::string w;
        while (std::getline(widths, w, ','))
          spec.hidden.push_back(std::stoll(w));
      } else if (key == "norm") {
        CHORUS_CHECK(value == "group",
                     "model spec '{}': norm must be 'group' (BatchNorm is the "
                     "default and has no key), got '{}'",
                     text, value);
        spec.norm = value;
      } else if (key == "classes") {
        spec.num_classes = std::stoll(value);
        have_classes = true;
      } else {
        fail(Code::kInvalidArgument, "model spec '{}': unknown key '{}'", text,
             key);
      }
    } catch (const std::logic_error&) {
      fail(Code::kInvalidArgument, "model spec '{}': bad number in '{}'", text,
           token);
    }
  }
  CHORUS_CHECK(have_in && have_classes,
               "model spec '{}': needs in=... and classes=...", text);
  return spec;
}

const std::vector<std::string>& architectures() {
  static const std::vector<std::string> kArchs = {"mlp", "lenet", "resnet"};
  return kArchs;
}

std::string default_architecture(const std::vector<std::int64_t>& input_shape) {
  if (input_shape.size() == 3 && input_shape[1] >= 4 && input_shape[2] >= 4) {
    return "lenet";
  }
  return "mlp";
}

std::string resolve_architecture(const std::string& arch,
                                 const std::vector<std::int64_t>& input_shape) {
  if (arch == "auto") return default_architecture(input_shape);
  const auto& all = architectures();
  CHORUS_CHECK(
      std::find(all.begin(), all.end(), arch) != all.end(),
      "unknown architecture '{}' (expected auto, mlp, lenet or resnet)", arch);
  if (arch == "mlp") return arch;
  CHORUS_CHECK(
      input_shape.size() == 3,
      "architecture '{}' takes images [C, H, W], but the inputs are [{}]; use "
      "mlp or auto",
      arch, fmt::join(input_shape, ", "));
  CHORUS_CHECK(
      arch != "lenet" || (input_shape[1] >= 4 && input_shape[2] >= 4),
      "lenet needs images of at least 4x4, but the inputs are [{}]; use mlp, "
      "resnet or auto",
      fmt::join(input_shape, ", "));
  return arch;
}

namespace {
// GroupNorm's groups in lenet norm=group: 4 groups of the 16 and 32
// channels (Wu and He 2018 find 8–32 channels per group work well).
constexpr std::int64_t kLeNetGroups = 4;
}  // namespace

std::shared_ptr<ClassifierImpl> make_classifier(const ModelSpec& spec) {
  CHORUS_CHECK(spec.num_classes > 0,
               "model spec '{}': classes must be positive", spec.to_string());
  CHORUS_CHECK(spec.norm.empty() || spec.arch == "lenet",
               "model spec '{}': norm=group is for lenet ({} has no "
               "per-convolution normalisation to choose)",
               spec.to_string(), spec.arch);
  if (spec.arch == "mlp") {
    auto options = MlpOptions()
                       .input_shape(spec.input_shape)
                       .num_classes(spec.num_classes);
    if (!spec.hidden.empty()) options.hidden(spec.hidden);
    return Mlp(options).ptr();
  }
  if (spec.arch != "lenet" && spec.arch != "resnet") {
    fail(Code::kInvalidArgument,
         "unknown architecture '{}' (expected mlp, lenet or resnet)",
         spec.arch);
  }
  CHORUS_CHECK(
      spec.input_shape.size() == 3,
      "model spec '{}': {} takes images [C, H, W]; inputs of shape [{}] need "
      "the mlp",
      spec.to_string(), spec.arch, fmt::join(spec.input_shape, ", "));
  for (auto d : spec.input_shape) {
    CHORUS_CHECK(d > 0, "model spec '{}': dimensions must be positive",
                 spec.to_string());
  }
  if (spec.arch == "lenet") {
    return LeNet(LeNetOptions()
                     .in_channels(spec.input_shape[0])
                     .image_height(spec.input_shape[1])
                     .image_width(spec.input_shape[2])
                     .num_classes(spec.num_classes)
                     .groups(spec.norm == "group" ? kLeNetGroups : 0))
        .ptr();
  }
  if (spec.arch == "resnet") {
    return ResNet(ResNetOptions()
                      .in_channels(spec.input_shape[0])
                      .num_classes(spec.num_classes))
        .ptr();
  }
  fail(Code::kInvalidArgument,
       "unknown architecture '{}' (expected mlp, lenet or resnet)", spec.arch);
}

std::shared_ptr<ClassifierImpl> make_classifier(const ModelSpec& spec,
                                                at::Generator& gen) {
  auto model = make_classifier(spec);
  initialise(*model, gen);
  return model;
}

}  // namespace chorus::fusion
