#include "chorus/node/expert.hpp"

#include <fmt/ostream.h>
#include <fmt/ranges.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <charconv>
#include <chrono>
#include <nlohmann/json.hpp>
#include <sstream>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/log.hpp"
#include "chorus/fusion/archive.hpp"
#include "chorus/fusion/data_files.hpp"
#include "chorus/fusion/datasets.hpp"
#include "chorus/fusion/ensemble.hpp"
#include "chorus/fusion/fused_model.hpp"
#include "chorus/fusion/gnmax.hpp"
#include "chorus/fusion/models.hpp"
#include "chorus/fusion/partition.hpp"

namespace chorus::node {
namespace {

constexpr const char* kExpertAlgorithm = "expert";

std::string shape_string(const std::vector<std::int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

class TorchScriptExpert : public Expert {
 public:
  explicit TorchScriptExpert(ExpertOptions options)
      : Expert(std::move(options)) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(options_.path, ec)) {
      fail(Code::kNotFound, "TorchScript expert '{}' does not exist",
           options_.path.string());
    }
    try {
      // The zip's checksums first: libtorch would read altered bytes.
      std::istringstream in(fusion::read_verified_archive(options_.path));
      module_ = torch::jit::load(in);
    } catch (const std::exception& e) {
      fail(Code::kDataLoss, "'{}' is not a TorchScript module: {}",
           options_.path.string(), e.what());
    }
    module_.to(options_.device);
    module_.eval();
  }

 protected:
  torch::Tensor forward(const torch::Tensor& inputs) override {
    torch::jit::IValue out;
    try {
      out = module_.forward({inputs});
    } catch (const std::exception& e) {
      fail(Code::kInternal,
           "the TorchScript expert failed on a batch of {}: {}", inputs.size(0),
           e.what());
    }
    const auto& key = options_.output_key;
    if (out.isTuple()) {
      const auto& items = out.toTupleRef().elements();
      CHORUS_CHECK(
          !key.empty(),
          "the TorchScript expert '{}' returns a tuple of {} elements; set "
          "expert.output_key to the index of the one that holds the class "
          "scores (e.g. \"0\")",
          options_.path.string(), items.size());
      std::size_t index = 0;
      const auto* end = key.data() + key.size();
      auto [ptr, ec] = std::from_chars(key.data(), end, index);
      CHORUS_CHECK(
          ec == std::errc() && ptr == end && index < items.size(),
          "expert.output_key '{}' is not an index of the {}-element tuple the "
          "TorchScript expert '{}' returns",
          key, items.size(), options_.path.string());
      out = items[index];
    } else if (out.isGenericDict()) {
      std::vector<std::string> keys;
      for (const auto& e : out.toGenericDict()) {
        keys.push_back(e.key().isString() ? e.key().toStringRef()
                                          : e.key().tagKind());
      }
      CHORUS_CHECK(
          !key.empty(),
          "the TorchScript expert '{}' returns a dict with keys [{}]; set "
          "expert.output_key to the one that holds the class scores",
          options_.path.string(), fmt::join(keys, ", "));
      auto dict = out.toGenericDict();
      auto it = dict.find(key);
      CHORUS_CHECK(it != dict.end(),
                   "expert.output_key '{}' is not a key of the dict the "
                   "TorchScript expert "
                   "'{}' returns (its keys: {})",
                   key, options_.path.string(), fmt::join(keys, ", "));
      out = it->value();
    } else {
      CHORUS_CHECK(key.empty(),
                   "expert.output_key is '{}', but the TorchScript expert '{}' "
                   "returns a "
                   "{}, not a tuple or dict",
                   key, options_.path.string(), out.tagKind());
    }
    CHORUS_CHECK(out.isTensor(),
                 "the TorchScript expert '{}' returned a {}, not a tensor",
                 options_.path.string(), out.tagKind());
    return out.toTensor();
  }

 private:
  torch::jit::Module module_;
};

class BuiltinExpert : public Expert {
 public:
  BuiltinExpert(std::vector<std::shared_ptr<fusion::ClassifierImpl>> models,
                ExpertOptions options)
      : Expert(std::move(options)), models_(std::move(models)) {
    for (auto& m : models_) {
      m->to(this->options().device);
      m->eval();
    }
  }
  std::int64_t teachers() const override {
    return static_cast<std::int64_t>(models_.size());
  }

 protected:
  torch::Tensor forward(const torch::Tensor& inputs) override {
    if (models_.size() == 1) return models_.front()->forward(inputs);
    // The mean of the teachers' probabilities, as logits (its log).
    torch::Tensor sum;
    for (const auto& t : forward_teachers(inputs)) {
      auto p = torch::softmax(t, 1);
      sum = sum.defined() ? sum + p : p;
    }
    return (sum / static_cast<double>(models_.size())).clamp_min(1e-30).log();
  }
  std::vector<torch::Tensor> forward_teachers(
      const torch::Tensor& inputs) override {
    std::vector<torch::Tensor> out;
    for (const auto& m : models_) out.push_back(m->forward(inputs));
    return out;
  }
  std::shared_ptr<fusion::ClassifierImpl> builtin_model() const override {
    // Weights to share exist for an expert of one model only.
    return models_.size() == 1 ? models_.front() : nullptr;
  }

 private:
  std::vector<std::shared_ptr<fusion::ClassifierImpl>> models_;
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
  CHORUS_CHECK(options_.normalize_std > 0,
               "normalize_std must be positive, got {}",
               options_.normalize_std);
}

torch::Tensor Expert::prepare(const torch::Tensor& inputs) const {
  const auto expected = options_.input_shape;
  std::vector<std::int64_t> got(inputs.sizes().begin(), inputs.sizes().end());
  const bool shape_ok =
      inputs.dim() == static_cast<std::int64_t>(expected.size()) + 1 &&
      std::equal(expected.begin(), expected.end(), got.begin() + 1);
  CHORUS_CHECK(shape_ok && inputs.size(0) > 0,
               "inputs of shape {} do not fit this expert: expected [N, {}]",
               shape_string(got), fmt::join(expected, ", "));
  auto x = inputs.to(torch::kFloat32);
  if (options_.normalize_mean != 0.0 || options_.normalize_std != 1.0) {
    x = (x - options_.normalize_mean) / options_.normalize_std;
  }
  return x.contiguous().to(options_.device);
}

torch::Tensor Expert::probabilities(torch::Tensor out, std::int64_t n) const {
  out = out.cpu();
  const auto width = static_cast<std::int64_t>(options_.labels.size());
  CHORUS_CHECK_CODE(out.dim() == 2 && out.size(0) == n && out.size(1) == width,
                    Code::kInternal,
                    "the expert answered {} for {} inputs; its {} labels need "
                    "[{}, {}]",
                    fmt::streamed(out.sizes()), n, width, n, width);
  out = out.to(torch::kFloat32);
  if (options_.outputs_logits) {
    out = torch::softmax(out, 1);
  } else {
    out = out.clamp_min(0);
    out = fusion::normalise_rows(out);
  }
  CHORUS_CHECK_CODE(torch::isfinite(out).all().item<bool>(), Code::kInternal,
                    "the expert produced non-finite outputs");
  return out;
}

torch::Tensor Expert::predict(const torch::Tensor& inputs) {
  torch::NoGradGuard no_grad;
  return probabilities(forward(prepare(inputs)), inputs.size(0));
}

torch::Tensor Expert::votes(const torch::Tensor& inputs) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> teachers;
  for (auto& out : forward_teachers(prepare(inputs)))
    teachers.push_back(probabilities(std::move(out), inputs.size(0)));
  return fusion::vote_histogram(teachers);
}

namespace {

// One prediction on a zero input: a module that returns what the node cannot
// read fails here, at start-up, not in the middle of a round.
std::unique_ptr<Expert> checked(std::unique_ptr<Expert> expert,
                                const std::string& path) {
  std::vector<std::int64_t> shape{1};
  shape.insert(shape.end(), expert->input_shape().begin(),
               expert->input_shape().end());
  try {
    (void)expert->predict(torch::zeros(shape));
  } catch (const Error& e) {
    fail(Code::kInvalidArgument,
         "expert '{}' failed its start-up check (one prediction on "
         "a zero input of [{}]): {}",
         path, fmt::join(expert->input_shape(), ", "), e.what());
  }
  return expert;
}

}  // namespace

std::unique_ptr<Expert> load_expert(ExpertOptions options) {
  const auto path = options.path.string();
  if (options.kind == ExpertKind::kTorchScript) {
    CHORUS_CHECK(!options.labels.empty(),
                 "a TorchScript expert needs its output labels in the config "
                 "(expert.labels)");
    CHORUS_CHECK(
        !options.input_shape.empty(),
        "a TorchScript expert needs the shape of one input in the config "
        "(expert.input_shape, e.g. [1, 28, 28] or [30])");
    return checked(std::make_unique<TorchScriptExpert>(std::move(options)),
                   path);
  }
  CHORUS_CHECK(
      options.output_key.empty(),
      "expert.output_key is for TorchScript experts; '{}' is a builtin expert",
      path);
  auto fused = fusion::load_fused_model(options.path);
  CHORUS_CHECK_CODE(
      fused.algorithm == kExpertAlgorithm, Code::kDataLoss,
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
  CHORUS_CHECK(
      options.labels == stored,
      "expert.labels [{}] differ from the labels the model in '{}' was "
      "trained on: [{}]",
      fmt::join(options.labels, ", "), options.path.string(),
      fmt::join(stored, ", "));
  CHORUS_CHECK(
      options.input_shape.empty() ||
          options.input_shape == fused.spec.input_shape,
      "expert.input_shape is [{}], but the builtin expert '{}' was trained on "
      "inputs of [{}]; remove the key or retrain (chorus node train)",
      fmt::join(options.input_shape, ", "), path,
      fmt::join(fused.spec.input_shape, ", "));
  options.input_shape = fused.spec.input_shape;
  options.outputs_logits = true;
  if (auto it = fused.attributes.find("privacy");
      it != fused.attributes.end()) {
    try {
      options.training_privacy = fusion::DpGuarantee::from_json(it->second);
    } catch (const Error& e) {
      fail(Code::kDataLoss, "'{}': its DP-SGD guarantee is unreadable: {}",
           path, e.what());
    }
  }
  options.spec = fused.spec.to_string();
  std::vector<std::shared_ptr<fusion::ClassifierImpl>> models{fused.model};
  models.insert(models.end(), fused.members.begin(), fused.members.end());
  return checked(make_builtin_expert(std::move(models), std::move(options)),
                 path);
}

std::unique_ptr<Expert> make_builtin_expert(
    std::shared_ptr<fusion::ClassifierImpl> model, ExpertOptions options) {
  return make_builtin_expert(
      std::vector<std::shared_ptr<fusion::ClassifierImpl>>{std::move(model)},
      std::move(options));
}

std::unique_ptr<Expert> make_builtin_expert(
    std::vector<std::shared_ptr<fusion::ClassifierImpl>> models,
    ExpertOptions options) {
  CHORUS_CHECK(!models.empty(), "a builtin expert needs a model");
  for (const auto& m : models)
    CHORUS_CHECK(m != nullptr, "a builtin expert needs a model");
  CHORUS_CHECK(!options.labels.empty(), "a builtin expert needs its labels");
  options.kind = ExpertKind::kBuiltin;
  return std::make_unique<BuiltinExpert>(std::move(models), std::move(options));
}

void save_builtin_expert(
    const std::vector<std::shared_ptr<fusion::ClassifierImpl>>& models,
    const fusion::ModelSpec& spec, const std::vector<std::string>& labels,
    const std::filesystem::path& out,
    const std::optional<fusion::DpGuarantee>& privacy) {
  CHORUS_CHECK(!models.empty(), "a builtin expert file needs a model");
  fusion::FusedModel file{
      .algorithm = kExpertAlgorithm,
      .spec = spec,
      .attributes = {{"labels", nlohmann::json(labels).dump()}},
      .model = models.front(),
      .members = {models.begin() + 1, models.end()}};
  if (models.size() > 1)
    file.attributes["teachers"] = std::to_string(models.size());
  if (privacy) file.attributes["privacy"] = privacy->to_json();
  fusion::save_fused_model(file, out);
}

}  // namespace chorus::node
