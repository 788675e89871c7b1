#include "chorus/node/expert.hpp"

#include <fmt/ostream.h>
#include <fmt/ranges.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <charconv>
#include <chrono>
#include <nlohmann/json.hpp>

#include "chorus/core/error.hpp"
#include "chorus/core/log.hpp"
#include "chorus/fusion/data_files.hpp"
#include "chorus/fusion/ensemble.hpp"
#include "chorus/fusion/fused_model.hpp"
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
  BuiltinExpert(std::shared_ptr<fusion::ClassifierImpl> model,
                ExpertOptions options)
      : Expert(std::move(options)), model_(std::move(model)) {
    model_->eval();
  }

 protected:
  torch::Tensor forward(const torch::Tensor& inputs) override {
    return model_->forward(inputs);
  }
  std::shared_ptr<fusion::ClassifierImpl> builtin_model() const override {
    return model_;
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
  CHORUS_CHECK(options_.normalize_std > 0,
               "normalize_std must be positive, got {}",
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
  CHORUS_CHECK_CODE(
      out.dim() == 2 && out.size(0) == inputs.size(0) && out.size(1) == width,
      Code::kInternal,
      "the expert answered {} for {} inputs; its {} labels need [{}, {}]",
      fmt::streamed(out.sizes()), inputs.size(0), width, inputs.size(0), width);
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
  options.spec = fused.spec.to_string();
  return checked(make_builtin_expert(fused.model, std::move(options)), path);
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
  fusion::FusedModel file{
      .algorithm = kExpertAlgorithm,
      .spec = spec,
      .attributes = {{"labels", nlohmann::json(labels).dump()}},
      .model = model};
  fusion::save_fused_model(file, out);
}

LocalData load_local_data(const LocalDataOptions& o) {
  LocalData out;
  torch::Tensor raw_x, y;
  if (o.dataset() == "files") {
    CHORUS_CHECK(
        o.task().has_value(),
        "train.dataset = \"files\" needs the task its data is read against "
        "(the "
        "[task] table, or task.file: labels, input_shape, dtype, normalise)");
    CHORUS_CHECK(!o.data().path.empty(),
                 "train.dataset = \"files\" needs train.data (the labelled "
                 "file or image "
                 "folder)");
    out.task = *o.task();
    auto ex = fusion::read_examples(o.data(), out.task, /*need_labels=*/true);
    raw_x = ex.inputs;
    y = ex.labels;
  } else {
    std::optional<std::filesystem::path> dir;
    if (!o.data_dir().empty()) dir = o.data_dir();
    auto b = fusion::load_builtin(o.dataset(), dir);
    out.task = o.task().value_or(b.task);
    CHORUS_CHECK(out.task.labels == b.task.labels &&
                     out.task.input_shape == b.task.input_shape,
                 "the [task] table (labels [{}], inputs [{}]) does not "
                 "describe the built-in "
                 "data set '{}' (labels [{}], inputs [{}])",
                 fmt::join(out.task.labels.names(), ", "),
                 fmt::join(out.task.input_shape, ", "), o.dataset(),
                 fmt::join(b.task.labels.names(), ", "),
                 fmt::join(b.task.input_shape, ", "));
    raw_x = b.train.inputs;
    y = b.train.labels;
  }
  if (out.task.needs_statistics()) {
    fusion::fit_normalisation(out.task, raw_x);
    log::get("node")->warn(
        "event=normalisation_fitted_locally task={} reason=\"the task names {} "
        "normalisation "
        "without statistics; they were fitted on this node's data. Give the "
        "federation's "
        "mean and std in the task file so that every party normalises alike\"",
        out.task.name, normalisation_name(out.task.normalisation));
  }
  out.examples = fusion::Examples{fusion::to_model_inputs(raw_x, out.task), y};
  return out;
}

namespace {

std::vector<std::int64_t> class_indices(const std::vector<std::string>& labels,
                                        const TaskSpec& task) {
  std::vector<std::int64_t> classes;
  for (const auto& label : labels) {
    auto c = task.labels.find(label);
    CHORUS_CHECK(c.has_value(),
                 "label '{}' is not in the label space of '{}' (expected one "
                 "of: {})",
                 label, task.name, fmt::join(task.labels.names(), ", "));
    classes.push_back(*c);
  }
  return classes;
}

}  // namespace

LabelledShots draw_local_shots(const std::vector<std::string>& labels,
                               std::int64_t per_class, std::uint64_t seed,
                               const LocalDataOptions& source) {
  CHORUS_CHECK(per_class >= 1, "shots per class must be at least 1, got {}",
               per_class);
  auto data = load_local_data(source);
  const auto classes = class_indices(labels, data.task);
  auto gen = at::detail::createCPUGenerator(seed);
  std::vector<torch::Tensor> xs, ys;
  for (std::size_t j = 0; j < classes.size(); ++j) {
    auto rows = data.examples.labels.eq(classes[j]).nonzero().flatten();
    auto pick =
        rows.index_select(0, torch::randperm(rows.numel(), gen, torch::kLong)
                                 .slice(0, 0, per_class));
    xs.push_back(data.examples.inputs.index_select(0, pick));
    ys.push_back(torch::full({pick.numel()}, static_cast<std::int64_t>(j),
                             torch::kLong));
  }
  return {torch::cat(xs), torch::cat(ys)};
}

TrainExpertResult train_builtin_expert(const std::vector<std::string>& labels,
                                       const TrainExpertOptions& options,
                                       const std::filesystem::path& out) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  CHORUS_CHECK(labels.size() >= 2,
               "an expert needs at least two labels, got {}", labels.size());
  CHORUS_CHECK(options.shards() >= 1 && options.shard() >= 0 &&
                   options.shard() < options.shards(),
               "train.shard must be in 0..{}, got {}", options.shards() - 1,
               options.shard());
  CHORUS_CHECK(options.holdout() > 0 && options.holdout() < 0.5,
               "train.holdout must be in (0, 0.5), got {}", options.holdout());
  auto data = load_local_data(options.source());
  const auto& task = data.task;
  const auto classes = class_indices(labels, task);
  const auto arch =
      fusion::resolve_architecture(options.arch(), task.input_shape);
  if (out.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(out.parent_path(), ec);
    CHORUS_CHECK_CODE(!ec, Code::kInternal, "cannot create '{}': {}",
                      out.parent_path().string(), ec.message());
  }
  const auto& all = data.examples;
  auto shard =
      fusion::iid_partition(all.size(), options.shards(), options.seed())
          .at(static_cast<std::size_t>(options.shard()));
  shard = std::get<0>(shard.sort());
  auto shard_labels = all.labels.index_select(0, shard);
  auto keep = shard.index_select(
      0, fusion::class_subset_indices(shard_labels, classes));
  CHORUS_CHECK(keep.numel() >= 10,
               "only {} training examples of [{}] in shard {}/{}", keep.numel(),
               fmt::join(labels, ", "), options.shard(), options.shards());
  auto x = all.inputs.index_select(0, keep);
  auto y = fusion::to_local_labels(all.labels.index_select(0, keep), classes);
  fusion::SeedGuard seeded(options.seed());
  auto perm = torch::randperm(x.size(0), torch::kLong);
  const auto n_hold = std::max<std::int64_t>(
      1, static_cast<std::int64_t>(options.holdout() *
                                   static_cast<double>(x.size(0))));
  auto hold = perm.slice(0, 0, n_hold);
  auto rest = perm.slice(0, n_hold);

  fusion::ModelSpec spec{
      .arch = arch,
      .input_shape = task.input_shape,
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
  result.arch = arch;
  result.input_shape = task.input_shape;
  save_builtin_expert(model, spec, labels, out);
  result.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return result;
}

}  // namespace chorus::node
