#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

/// Evaluation of a saved fused model on a named data set. This header is
/// torch-free so the command line can use it cheaply.
namespace chorus::fusion {

/// What `evaluate_fused_model` measured.
struct EvalReport {
  std::string algorithm;  ///< From the model file.
  std::string spec;       ///< The model's architecture spec.
  /// tae: the task scored ("prior of all outputs" or the adapted file);
  /// empty for other models.
  std::string task;
  std::string dataset;  ///< As resolved, e.g. "fashion-mnist:test".
  std::int64_t examples = 0;
  double accuracy = 0;
  /// The classes scored (all of the data set's, or a tae task's) and the
  /// accuracy on each.
  std::vector<std::string> class_names;
  std::vector<double> class_accuracy;
  double seconds = 0;  ///< Wall time of the predictions.
};

/// The data sets `evaluate_fused_model` accepts: "fashion-mnist" (the test
/// split) and "fashion-mnist:train" / "fashion-mnist:test".
const std::vector<std::string>& evaluation_datasets();

/// Loads the fused model at `model_path` and measures its accuracy on
/// `dataset`. A tae global model is scored on a task: the one a node adapted
/// it to (`adapted`, the node's adapted.json; only the images of its
/// classes), else every output under the prior. Throws `chorus::Error`:
/// NOT_FOUND / DATA_LOSS for the model, the adapted task or the data,
/// INVALID_ARGUMENT for an unknown data set, a model whose input or classes
/// do not fit it, or `adapted` with a model that is not tae,
/// FAILED_PRECONDITION for a model that needs its experts at prediction time
/// (foe, frugal, ensembles).
EvalReport evaluate_fused_model(
    const std::filesystem::path& model_path, const std::string& dataset,
    const std::optional<std::filesystem::path>& data_dir = std::nullopt,
    int threads = 0,
    const std::optional<std::filesystem::path>& adapted = std::nullopt);

}  // namespace chorus::fusion
