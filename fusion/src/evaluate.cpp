#include "chorus/fusion/evaluate.hpp"

#include <fmt/ranges.h>
#include <torch/torch.h>

#include <chrono>

#include "chorus/core/error.hpp"
#include "chorus/fusion/datasets.hpp"
#include "chorus/fusion/fused_model.hpp"
#include "chorus/fusion/train.hpp"

namespace chorus::fusion {

const std::vector<std::string>& evaluation_datasets() {
  static const std::vector<std::string> kNames = {
      "fashion-mnist", "fashion-mnist:test", "fashion-mnist:train"};
  return kNames;
}

EvalReport evaluate_fused_model(const std::filesystem::path& model_path,
                                const std::string& dataset,
                                const std::optional<std::filesystem::path>& data_dir,
                                int threads) {
  const auto& names = evaluation_datasets();
  CHORUS_CHECK(std::find(names.begin(), names.end(), dataset) != names.end(),
               "unknown data set '{}' (expected one of: {})", dataset,
               fmt::join(names, ", "));
  auto fused = load_fused_model(model_path);
  CHORUS_CHECK_CODE(
      !needs_experts_at_prediction(fused.algorithm),
      Code::kFailedPrecondition,
      "'{}' is a {} fuser: it combines the experts' answers and needs them at "
      "prediction time; evaluate it through a coordinator (chorus predict), "
      "or distil it first (algorithm foe-distill)",
      model_path.string(), fused.algorithm);

  const Split split = dataset == "fashion-mnist:train" ? Split::kTrain : Split::kTest;
  auto data = load_fashion_mnist(split, data_dir);
  const auto example_shape = data.images.sizes().slice(1).vec();
  CHORUS_CHECK(fused.spec.input_shape == example_shape,
               "model '{}' takes inputs of shape [{}], {} has [{}]",
               model_path.string(), fmt::join(fused.spec.input_shape, ", "),
               dataset, fmt::join(example_shape, ", "));
  const auto num_classes = static_cast<std::int64_t>(data.class_names.size());
  CHORUS_CHECK(fused.spec.num_classes == num_classes,
               "model '{}' predicts {} classes, {} has {}", model_path.string(),
               fused.spec.num_classes, dataset, num_classes);

  ThreadGuard guard(threads);
  const auto start = std::chrono::steady_clock::now();
  auto predictions = predict_proba(*fused.model, data.images).argmax(1);
  EvalReport report;
  report.seconds = std::chrono::duration<double>(
                       std::chrono::steady_clock::now() - start)
                       .count();
  report.algorithm = fused.algorithm;
  report.spec = fused.spec.to_string();
  report.dataset = split == Split::kTrain ? "fashion-mnist:train"
                                          : "fashion-mnist:test";
  report.examples = data.size();
  auto correct = predictions.eq(data.labels);
  report.accuracy = correct.to(torch::kDouble).mean().item<double>();
  report.class_names = data.class_names;
  for (std::int64_t c = 0; c < num_classes; ++c) {
    auto mask = data.labels.eq(c);
    auto n = mask.sum().item<std::int64_t>();
    report.class_accuracy.push_back(
        n ? correct.logical_and(mask).sum().item<double>() / n : 0.0);
  }
  return report;
}

}  // namespace chorus::fusion
