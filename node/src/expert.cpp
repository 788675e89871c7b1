#include "chorus/node/expert.hpp"

#include <fmt/ostream.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <torch/script.h>
#include <torch/torch.h>

#include <chrono>

#include "chorus/core/error.hpp"
#include "chorus/core/log.hpp"
#include "chorus/fusion/datasets.hpp"
#include "chorus/fusion/fused_model.hpp"
#include "chorus/fusion/partition.hpp"

namespace chorus::node {
namespace {

constexpr const char* kExpertAlgorithm = "expert";

std::string shape_string(const std::vector<std::int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

class TorchScriptExpert : public Expert {
 public:
  explicit TorchScriptExpert(ExpertOptions options) : Expert(std::move(options)) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(options_.path, ec)) {
      fail(Code::kNotFound, "TorchScript expert '{}' does not exist",
           options_.path.string());
    }
    try {
      module_ = torch::jit::load(options_.path.string());
    } catch (const std::exception& e) {
      fail(Code::kDataLoss, "'{}' is not a TorchScript module: {}",
           options_.path.string(), e.what());
    }
    module_.eval();
  }

 protected:
  torch::Tensor forward(const torch::Tensor& inputs) override {
    torch::jit::IValue out;
    try {
      out = module_.forward({inputs});
    } catch (const std::exception& e) {
      fail(Code::kInternal, "the TorchScript expert failed on a batch of {}: {}",
           inputs.size(0), e.what());
    }
    CHORUS_CHECK_CODE(out.isTensor(), Code::kInternal,
                      "the TorchScript expert returned a {}, not a tensor",
                      out.tagKind());
    return out.toTensor();
  }

 private:
  torch::jit::Module module_;
};

class BuiltinExpert : public Expert {
 public:
  BuiltinExpert(std::shared_ptr<fusion::ClassifierImpl> model, ExpertOptions options)
      : Expert(std::move(options)), model_(std::move(model)) {
    model_->eval();
  }

 protected:
  torch::Tensor forward(const torch::Tensor& inputs) override {
    return model_->forward(inputs);
  }

 private:
  std::shared_ptr<fusion::ClassifierImpl> model_;
};

}  // namespace

const char* expert_kind_name(ExpertKind kind) {
  return kind == ExpertKind::kTorchScript ? "torchscript" : "builtin";
}

ExpertKind parse_expert_kind(const std::string& text) {
  if (text == "torchscript") return ExpertKind::kTorchScript;
  if (text == "builtin") return ExpertKind::kBuiltin;
  fail(Code::kInvalidArgument,
       "unknown expert kind '{}' (expected torchscript or builtin)", text);
}

Expert::Expert(ExpertOptions options) : options_(std::move(options)) {
  CHORUS_CHECK(!options_.input_shape.empty(), "an expert needs an input shape");
  for (auto d : options_.input_shape) {
    CHORUS_CHECK(d > 0, "input shape {} has a non-positive dimension",
                 shape_string(options_.input_shape));
  }
  CHORUS_CHECK(options_.normalize_std > 0, "normalize_std must be positive, got {}",
               options_.normalize_std);
}

torch::Tensor Expert::predict(const torch::Tensor& inputs) {
  const auto expected = options_.input_shape;
  std::vector<std::int64_t> got(inputs.sizes().begin(), inputs.sizes().end());
  const bool shape_ok =
      inputs.dim() == static_cast<std::int64_t>(expected.size()) + 1 &&
      std::equal(expected.begin(), expected.end(), got.begin() + 1);
  CHORUS_CHECK(shape_ok && inputs.size(0) > 0,
               "inputs of shape {} do not fit this expert: expected [N, {}]",
               shape_string(got), fmt::join(expected, ", "));
  torch::NoGradGuard no_grad;
  auto x = inputs.to(torch::kFloat32);
  if (options_.normalize_mean != 0.0 || options_.normalize_std != 1.0) {
    x = (x - options_.normalize_mean) / options_.normalize_std;
  }
  auto out = forward(x.contiguous());
  const auto width = static_cast<std::int64_t>(options_.labels.size());
  CHORUS_CHECK_CODE(out.dim() == 2 && out.size(0) == inputs.size(0) &&
                        out.size(1) == width,
                    Code::kInternal,
                    "the expert answered {} for {} inputs; its {} labels need [{}, {}]",
                    fmt::streamed(out.sizes()), inputs.size(0), width,
                    inputs.size(0), width);
  out = out.to(torch::kFloat32);
  if (options_.outputs_logits) {
    out = torch::softmax(out, 1);
  } else {
    out = out.clamp_min(0);
    out = out / out.sum(1, /*keepdim=*/true).clamp_min(1e-12);
  }
  CHORUS_CHECK_CODE(torch::isfinite(out).all().item<bool>(), Code::kInternal,
                    "the expert produced non-finite outputs");
  return out;
}

std::unique_ptr<Expert> load_expert(ExpertOptions options) {
  if (options.kind == ExpertKind::kTorchScript) {
    CHORUS_CHECK(!options.labels.empty(),
                 "a TorchScript expert needs its output labels in the config "
                 "(expert.labels)");
    return std::make_unique<TorchScriptExpert>(std::move(options));
  }
  auto fused = fusion::load_fused_model(options.path);
  CHORUS_CHECK_CODE(fused.algorithm == kExpertAlgorithm, Code::kDataLoss,
                    "'{}' is a fused '{}' model, not a builtin expert (train one "
                    "with 'chorus node train')",
                    options.path.string(), fused.algorithm);
  std::vector<std::string> stored;
  try {
    stored = nlohmann::json::parse(fused.attributes.at("labels"))
                 .get<std::vector<std::string>>();
  } catch (const std::exception& e) {
    fail(Code::kDataLoss, "'{}' has no readable label list: {}",
         options.path.string(), e.what());
  }
  if (options.labels.empty()) options.labels = stored;
  CHORUS_CHECK(options.labels == stored,
               "expert.labels [{}] differ from the labels the model in '{}' was "
               "trained on: [{}]",
               fmt::join(options.labels, ", "), options.path.string(),
               fmt::join(stored, ", "));
  options.input_shape = fused.spec.input_shape;
  options.outputs_logits = true;
  return make_builtin_expert(fused.model, std::move(options));
}

std::unique_ptr<Expert> make_builtin_expert(
    std::shared_ptr<fusion::ClassifierImpl> model, ExpertOptions options) {
  CHORUS_CHECK(model != nullptr, "a builtin expert needs a model");
  CHORUS_CHECK(!options.labels.empty(), "a builtin expert needs its labels");
  options.kind = ExpertKind::kBuiltin;
  return std::make_unique<BuiltinExpert>(std::move(model), std::move(options));
}

void save_builtin_expert(const std::shared_ptr<fusion::ClassifierImpl>& model,
                         const fusion::ModelSpec& spec,
                         const std::vector<std::string>& labels,
                         const std::filesystem::path& out) {
  fusion::FusedModel file{.algorithm = kExpertAlgorithm,
                          .spec = spec,
                          .attributes = {{"labels", nlohmann::json(labels).dump()}},
                          .model = model};
  fusion::save_fused_model(file, out);
}

LabelledShots draw_fashion_mnist_shots(const std::vector<std::string>& labels,
                                       std::int64_t per_class, std::uint64_t seed,
                                       const std::filesystem::path& data_dir) {
  CHORUS_CHECK(per_class >= 1, "shots per class must be at least 1, got {}", per_class);
  const auto& names = fusion::fashion_mnist_class_names();
  std::optional<std::filesystem::path> dir;
  if (!data_dir.empty()) dir = data_dir;
  auto data = fusion::load_fashion_mnist(fusion::Split::kTrain, dir);
  auto gen = at::detail::createCPUGenerator(seed);
  std::vector<torch::Tensor> xs, ys;
  for (std::size_t j = 0; j < labels.size(); ++j) {
    auto it = std::find(names.begin(), names.end(), labels[j]);
    CHORUS_CHECK(it != names.end(), "label '{}' is not a Fashion-MNIST class", labels[j]);
    auto rows = data.labels.eq(it - names.begin()).nonzero().flatten();
    auto pick = rows.index_select(0, torch::randperm(rows.numel(), gen, torch::kLong)
                                         .slice(0, 0, per_class));
    xs.push_back(data.images.index_select(0, pick));
    ys.push_back(torch::full({pick.numel()}, static_cast<std::int64_t>(j), torch::kLong));
  }
  return {torch::cat(xs), torch::cat(ys)};
}

TrainExpertResult train_builtin_expert(const std::vector<std::string>& labels,
                                       const TrainExpertOptions& options,
                                       const std::filesystem::path& out) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  CHORUS_CHECK(labels.size() >= 2, "an expert needs at least two labels, got {}",
               labels.size());
  CHORUS_CHECK(options.shards() >= 1 && options.shard() >= 0 &&
                   options.shard() < options.shards(),
               "train.shard must be in 0..{}, got {}", options.shards() - 1,
               options.shard());
  CHORUS_CHECK(options.holdout() > 0 && options.holdout() < 0.5,
               "train.holdout must be in (0, 0.5), got {}", options.holdout());
  const auto& names = fusion::fashion_mnist_class_names();
  std::vector<std::int64_t> classes;
  for (const auto& label : labels) {
    auto it = std::find(names.begin(), names.end(), label);
    CHORUS_CHECK(it != names.end(),
                 "label '{}' is not a Fashion-MNIST class (expected one of: {})",
                 label, fmt::join(names, ", "));
    classes.push_back(it - names.begin());
  }
  if (out.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(out.parent_path(), ec);
    CHORUS_CHECK_CODE(!ec, Code::kInternal, "cannot create '{}': {}",
                      out.parent_path().string(), ec.message());
  }
  std::optional<std::filesystem::path> dir;
  if (!options.data_dir().empty()) dir = options.data_dir();
  auto data = fusion::load_fashion_mnist(fusion::Split::kTrain, dir);

  auto shard = fusion::iid_partition(data.size(), options.shards(), options.seed())
                   .at(static_cast<std::size_t>(options.shard()));
  shard = std::get<0>(shard.sort());
  auto shard_labels = data.labels.index_select(0, shard);
  auto keep = shard.index_select(
      0, fusion::class_subset_indices(shard_labels, classes));
  CHORUS_CHECK(keep.numel() >= 10, "only {} training examples of [{}] in shard {}/{}",
               keep.numel(), fmt::join(labels, ", "), options.shard(),
               options.shards());
  auto x = data.images.index_select(0, keep);
  auto y = fusion::to_local_labels(data.labels.index_select(0, keep), classes);
  torch::manual_seed(options.seed());
  auto perm = torch::randperm(x.size(0), torch::kLong);
  const auto n_hold = std::max<std::int64_t>(
      1, static_cast<std::int64_t>(options.holdout() * static_cast<double>(x.size(0))));
  auto hold = perm.slice(0, 0, n_hold);
  auto rest = perm.slice(0, n_hold);

  fusion::ModelSpec spec{.arch = options.arch(),
                         .input_shape = {1, 28, 28},
                         .num_classes = static_cast<std::int64_t>(labels.size())};
  auto model = fusion::make_classifier(spec);
  fusion::train(*model, x.index_select(0, rest), y.index_select(0, rest),
                fusion::TrainOptions()
                    .epochs(options.epochs())
                    .batch_size(options.batch_size())
                    .lr(options.lr())
                    .seed(options.seed())
                    .threads(options.threads())
                    .on_epoch(options.on_epoch()));
  TrainExpertResult result;
  result.examples = rest.numel();
  result.holdout = hold.numel();
  result.holdout_accuracy =
      fusion::accuracy(fusion::predict_proba(*model, x.index_select(0, hold)),
                       y.index_select(0, hold));
  save_builtin_expert(model, spec, labels, out);
  result.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return result;
}

}  // namespace chorus::node
