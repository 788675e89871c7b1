#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "chorus/fusion/fused_model.hpp"
#include "chorus/fusion/tae.hpp"
#include "chorus/node/config.hpp"
#include "chorus/node/expert.hpp"
#include "chorus/node/local_data.hpp"

/// Adaptation of a pushed global model at the node with its private
/// labelled shots, for its own task or a new one: tae's PAC-Bayes fit of
/// q_λ(w) (ALGORITHMS.md §4, step 5), of which only the embedding (mean and
/// log-variance of q_λ) ever leaves the node; or dro's S SGD steps from the
/// pushed initialisation (§5, step 5), whose adapted weights never leave
/// the node.
namespace chorus::node {

/// What one adaptation reached.
struct AdaptOutcome {
  /// "tae" or "dro": the global model's algorithm.
  std::string algorithm = "tae";
  fusion::TaeAdaptation adaptation;  ///< tae: q_λ, the bound and its terms.
  /// dro: the adapted model, over the task's classes in order.
  std::shared_ptr<fusion::ClassifierImpl> model;
  std::string spec;  ///< dro: the adapted model's architecture.
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
                       const LabelledShots& shots, torch::Tensor tau = {},
                       const torch::Tensor& unlabelled = {});

/// Adapts a dro initialisation to the task of `classes` (indices into the
/// federation's label space, named `class_names`) with `shots` (labels
/// index `classes`): `steps` SGD steps (0: the initialisation's own
/// adapt_steps attribute, else DroOptions' default). Throws
/// `chorus::Error` (INVALID_ARGUMENT for shots that do not fit).
AdaptOutcome adapt_dro(const fusion::FusedModel& init,
                       const std::vector<std::int64_t>& classes,
                       std::vector<std::string> class_names,
                       const LabelledShots& shots, std::int64_t steps = 0);

/// The positions of `labels` in the label space `init` records (0..k-1 when
/// it records none). Throws `chorus::Error` (FAILED_PRECONDITION) for a
/// label outside it.
std::vector<std::int64_t> classes_in_space(
    const fusion::FusedModel& init, const std::vector<std::string>& labels);

/// The federation's label names a dro initialisation records (its "labels"
/// attribute); empty when it records none.
std::vector<std::string> label_space_of(const fusion::FusedModel& init);

/// The outputs of `model` named `labels`, in that order. Throws
/// `chorus::Error` (FAILED_PRECONDITION) for a label the model lacks.
std::vector<std::int64_t> classes_of(const fusion::TaeModel& model,
                                     const std::vector<std::string>& labels);

/// Writes what the adaptation reached to `state_dir`/adapted.json — tae's
/// embedding; for dro, also the adapted model to `state_dir`/adapted.pt
/// (a fused model of algorithm "dro-adapted") — atomically; returns the
/// path of the JSON.
std::filesystem::path write_adapted(const std::filesystem::path& state_dir,
                                    const AdaptOutcome& outcome);

/// `chorus node adapt`: adapts the tae or dro model the node holds (its state
/// directory) with shots from files, or with the config's [adapt] shots of
/// its own task, and evaluates the adapted model on local test images.
struct LocalAdaptOptions {
  NodeConfig config;
  /// Shots: images (IDX or torch.save) and IDX labels, indices into the
  /// global model's label space; the task is the classes they hold. Empty:
  /// [adapt] shots_per_class of the expert's own labels.
  std::filesystem::path shots, shot_labels;
  /// Unlabelled images of the task (IDX or torch.save), e.g. the node's
  /// own data it wants to classify: tae's features readout refines its class
  /// means over them (`TaeAdaptationOptions::unlabelled_rounds`); a task
  /// read out by prototypes does not use them. Empty: none. A dro model
  /// refuses them.
  std::filesystem::path unlabelled;
  /// Test images and labels (same label space); only those of the task's
  /// classes are scored. Empty: no evaluation.
  std::filesystem::path eval, eval_labels;
};

struct LocalAdaptReport {
  AdaptOutcome outcome;
  std::filesystem::path model, written;
  /// On the test images of the task's classes: how many, and the accuracy
  /// of the prior p_γ(w|τ) (tae only) and of the adapted model.
  std::int64_t eval_images = 0;
  std::optional<double> prior_accuracy, adapted_accuracy;
};

/// Throws `chorus::Error`: FAILED_PRECONDITION when the node holds no tae
/// or dro model, INVALID_ARGUMENT / DATA_LOSS for unusable files.
LocalAdaptReport adapt_locally(const LocalAdaptOptions& options);

}  // namespace chorus::node
