#include "chorus/fusion/evaluate.hpp"

#include <fmt/ranges.h>
#include <torch/torch.h>

#include <chrono>

#include "chorus/core/error.hpp"
#include "chorus/fusion/datasets.hpp"
#include "chorus/fusion/fused_model.hpp"
#include "chorus/fusion/tae.hpp"
#include "chorus/fusion/train.hpp"

namespace chorus::fusion {

const std::vector<std::string>& evaluation_datasets() {
  static const std::vector<std::string> kNames = {
      "fashion-mnist", "fashion-mnist:test", "fashion-mnist:train"};
  return kNames;
}

namespace {

// Accuracy overall and per class of `predicted` against `labels`, both
// indices into `classes`' positions.
void score(const torch::Tensor& predicted, const torch::Tensor& labels,
           std::int64_t classes, EvalReport& report) {
  auto correct = predicted.eq(labels);
  report.accuracy = correct.to(torch::kDouble).mean().item<double>();
  for (std::int64_t c = 0; c < classes; ++c) {
    auto mask = labels.eq(c);
    auto n = mask.sum().item<std::int64_t>();
    report.class_accuracy.push_back(
        n ? correct.logical_and(mask).sum().item<double>() /
                static_cast<double>(n)
          : 0.0);
  }
}

EvalReport evaluate_tae(const std::filesystem::path& model_path, Split split,
                        const std::optional<std::filesystem::path>& data_dir,
                        int threads,
                        const std::optional<std::filesystem::path>& adapted) {
  auto model = TaeModel::load(model_path);
  auto data = load_fashion_mnist(split, data_dir);
  const auto pixels = data.images[0].numel();
  CHORUS_CHECK(model.input_dim() == pixels,
               "tae model '{}' takes inputs of {} values, the images have {}",
               model_path.string(), model.input_dim(), pixels);
  const auto num_classes = static_cast<std::int64_t>(data.class_names.size());
  CHORUS_CHECK(model.outputs() == num_classes,
               "tae model '{}' has {} outputs, {} has {} classes",
               model_path.string(), model.outputs(),
               split == Split::kTrain ? "the train split" : "the test split",
               num_classes);
  auto task =
      adapted ? model.read_adapted_task(*adapted) : model.default_task();
  std::vector<std::int64_t> classes = task.classes;
  if (classes.empty()) {
    for (std::int64_t c = 0; c < num_classes; ++c) classes.push_back(c);
  }
  // The images of the task's classes, labelled by their position in it.
  auto local = torch::full_like(data.labels, -1);
  for (std::size_t i = 0; i < classes.size(); ++i) {
    local.masked_fill_(data.labels.eq(classes[i]),
                       static_cast<std::int64_t>(i));
  }
  auto rows = local.ge(0).nonzero().flatten();
  auto x = data.images.index_select(0, rows);
  auto y = local.index_select(0, rows);

  ThreadGuard guard(threads);
  EvalReport report;
  const auto start = std::chrono::steady_clock::now();
  auto predicted = model.predict(x, task).argmax(1);
  report.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  report.algorithm = "tae";
  report.spec = fmt::format(
      "tae: {} inputs, {} outputs, {} prototypes, |w| {}, |z| {}",
      model.input_dim(), model.outputs(), model.prototypes().size(0),
      model.options().network().w_dim(), model.options().network().z_dim());
  report.task = task.source;
  report.examples = x.size(0);
  for (auto c : classes)
    report.class_names.push_back(data.class_names[static_cast<std::size_t>(c)]);
  score(predicted, y, static_cast<std::int64_t>(classes.size()), report);
  return report;
}

}  // namespace

EvalReport evaluate_fused_model(
    const std::filesystem::path& model_path, const std::string& dataset,
    const std::optional<std::filesystem::path>& data_dir, int threads,
    const std::optional<std::filesystem::path>& adapted) {
  const auto& names = evaluation_datasets();
  CHORUS_CHECK(std::find(names.begin(), names.end(), dataset) != names.end(),
               "unknown data set '{}' (expected one of: {})", dataset,
               fmt::join(names, ", "));
  const Split split =
      dataset == "fashion-mnist:train" ? Split::kTrain : Split::kTest;
  if (TaeModel::is_model_file(model_path)) {
    auto report = evaluate_tae(model_path, split, data_dir, threads, adapted);
    report.dataset =
        split == Split::kTrain ? "fashion-mnist:train" : "fashion-mnist:test";
    return report;
  }
  CHORUS_CHECK(!adapted,
               "--adapted '{}' goes with a tae model; '{}' is not one",
               adapted->string(), model_path.string());
  auto fused = load_fused_model(model_path);
  check_predicts_alone(fused, model_path);

  auto data = load_fashion_mnist(split, data_dir);
  const auto example_shape = data.images.sizes().slice(1).vec();
  CHORUS_CHECK(fused.spec.input_shape == example_shape,
               "model '{}' takes inputs of shape [{}], {} has [{}]",
               model_path.string(), fmt::join(fused.spec.input_shape, ", "),
               dataset, fmt::join(example_shape, ", "));
  const auto num_classes = static_cast<std::int64_t>(data.class_names.size());
  std::string task;
  if (auto outputs = task_outputs(fused); !outputs.classes.empty()) {
    // A model adapted to a task (dro-adapted): the images of its classes,
    // labelled by their output.
    auto local = torch::full_like(data.labels, -1);
    for (std::size_t i = 0; i < outputs.classes.size(); ++i) {
      CHORUS_CHECK(outputs.classes[i] >= 0 && outputs.classes[i] < num_classes,
                   "model '{}' names class {}, {} has {}", model_path.string(),
                   outputs.classes[i], dataset, num_classes);
      local.masked_fill_(data.labels.eq(outputs.classes[i]),
                         static_cast<std::int64_t>(i));
    }
    auto rows = local.ge(0).nonzero().flatten();
    data.images = data.images.index_select(0, rows);
    data.labels = local.index_select(0, rows);
    data.class_names = outputs.names;
    task = fmt::format("adapted: {}", fmt::join(outputs.names, ", "));
  } else {
    CHORUS_CHECK(fused.spec.num_classes == num_classes,
                 "model '{}' predicts {} classes, {} has {}",
                 model_path.string(), fused.spec.num_classes, dataset,
                 num_classes);
  }

  ThreadGuard guard(threads);
  const auto start = std::chrono::steady_clock::now();
  auto predictions = predict_proba(*fused.model, data.images).argmax(1);
  EvalReport report;
  report.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  report.algorithm = fused.algorithm;
  report.spec = fused.spec.to_string();
  report.dataset =
      split == Split::kTrain ? "fashion-mnist:train" : "fashion-mnist:test";
  report.examples = data.images.size(0);
  report.class_names = data.class_names;
  report.task = task;
  score(predictions, data.labels,
        static_cast<std::int64_t>(data.class_names.size()), report);
  return report;
}

}  // namespace chorus::fusion
