#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "chorus/fusion/tae.hpp"
#include "chorus/node/config.hpp"
#include "chorus/node/expert.hpp"

/// Adaptation of a pushed tae global model at the node (ALGORITHMS.md §4,
/// step 5): the PAC-Bayes fit of q_λ(w) with the node's private labelled
/// shots, for its own task or a new one. Only the embedding (mean and
/// log-variance of q_λ) ever leaves the node.
namespace chorus::node {

/// What one adaptation reached.
struct AdaptOutcome {
  fusion::TaeAdaptation adaptation;  ///< q_λ, the bound and its terms.
  /// The task: outputs of the global model (indices and names).
  std::vector<std::int64_t> classes;
  std::vector<std::string> class_names;
  std::int64_t shots = 0;
  /// Accuracy of the adapted model on the shots themselves.
  double shot_accuracy = 0;
  /// Round of the global model adapted.
  std::uint32_t round = 0;
};

/// Adapts `model` to the task of `classes` (outputs of the model) with
/// `shots` (labels index `classes`); `tau` is the task descriptor, or
/// undefined for the multi-hot of `classes`. Throws `chorus::Error`
/// (INVALID_ARGUMENT for shots that do not fit).
AdaptOutcome adapt_tae(fusion::TaeModel& model,
                       const std::vector<std::int64_t>& classes,
                       const LabelledShots& shots, torch::Tensor tau = {});

/// The outputs of `model` named `labels`, in that order. Throws
/// `chorus::Error` (FAILED_PRECONDITION) for a label the model lacks.
std::vector<std::int64_t> classes_of(const fusion::TaeModel& model,
                                     const std::vector<std::string>& labels);

/// Writes the adapted embedding and what it reached to
/// `state_dir`/adapted.json, atomically; returns the path.
std::filesystem::path write_adapted(const std::filesystem::path& state_dir,
                                    const AdaptOutcome& outcome);

/// `chorus node adapt`: adapts the tae model the node holds (its state
/// directory) with shots from files, or with the config's [adapt] shots of
/// its own task, and evaluates the adapted model on local test images.
struct LocalAdaptOptions {
  NodeConfig config;
  /// Shots: images (IDX or torch.save) and IDX labels, indices into the
  /// global model's label space; the task is the classes they hold. Empty:
  /// [adapt] shots_per_class of the expert's own labels.
  std::filesystem::path shots, shot_labels;
  /// Test images and labels (same label space); only those of the task's
  /// classes are scored. Empty: no evaluation.
  std::filesystem::path eval, eval_labels;
};

struct LocalAdaptReport {
  AdaptOutcome outcome;
  std::filesystem::path model, written;
  /// On the test images of the task's classes: how many, and the accuracy
  /// of the prior p_γ(w|τ) and of the adapted q_λ(w).
  std::int64_t eval_images = 0;
  std::optional<double> prior_accuracy, adapted_accuracy;
};

/// Throws `chorus::Error`: FAILED_PRECONDITION when the node holds no tae
/// model, INVALID_ARGUMENT / DATA_LOSS for unusable files.
LocalAdaptReport adapt_locally(const LocalAdaptOptions& options);

}  // namespace chorus::node
