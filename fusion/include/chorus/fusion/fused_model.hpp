#pragma once

#include <torch/types.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "chorus/fusion/models.hpp"

/// A fused model on disk: a zoo architecture (its spec string) plus named
/// tensors, written with `torch::serialize::OutputArchive` so Python's
/// `torch.jit.load` can open it too, and written atomically.
namespace chorus::fusion {

/// A fused model and what is needed to use it.
struct FusedModel {
  /// The algorithm that produced it: "distill", "foe", "foe-distill", ...
  std::string algorithm;
  /// The architecture.
  ModelSpec spec;
  /// Free-form attributes (e.g. the FoE feature form, the expert order).
  std::map<std::string, std::string> attributes;
  /// The weights, in a model built from `spec`.
  std::shared_ptr<ClassifierImpl> model;
  /// Further models of the same spec saved beside `model` (a node's teacher
  /// ensemble: `model` is the first teacher, these the others); usually
  /// none.
  std::vector<std::shared_ptr<ClassifierImpl>> members;
};

/// Writes `fused` to `path` atomically. Throws `chorus::Error`.
void save_fused_model(const FusedModel& fused,
                      const std::filesystem::path& path);

/// Reads a file written by `save_fused_model`. Throws `chorus::Error`:
/// NOT_FOUND for a missing file, DATA_LOSS for a corrupt one or one whose
/// tensors do not fit its spec.
FusedModel load_fused_model(const std::filesystem::path& path);

/// The task a model was adapted to (a node's "dro-adapted" model): its
/// classes as indices into the federation's label space and their names, in
/// output order; both empty for a model over the whole label space. Throws
/// `chorus::Error` (DATA_LOSS) for unreadable attributes.
struct TaskOutputs {
  std::vector<std::int64_t> classes;
  std::vector<std::string> names;
};
TaskOutputs task_outputs(const FusedModel& fused);

/// Throws `chorus::Error` (FAILED_PRECONDITION) naming `file` when `fused`
/// cannot predict by itself: a fuser that needs the experts, or a dro
/// initialisation that has not been adapted to a task yet.
void check_predicts_alone(const FusedModel& fused,
                          const std::filesystem::path& file);

/// Whether a fused model of `algorithm` combines the experts' answers at
/// prediction time (foe, foe-select, frugal), so that its file alone cannot
/// predict.
bool needs_experts_at_prediction(const std::string& algorithm);

}  // namespace chorus::fusion
