#pragma once
// A node's local labelled data: reading it (a built-in source or files),
// training a builtin expert on it (`chorus node train`), and drawing the
// private shots that adaptation uses.

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "chorus/core/task.hpp"
#include "chorus/fusion/data_files.hpp"
#include "chorus/fusion/dp_sgd.hpp"
#include "chorus/fusion/train.hpp"

namespace chorus::node {

/// Where a node's local labelled data comes from (`chorus node train`, and
/// the shots `adapt.shots_per_class` draws).
struct LocalDataOptions {
  /// A built-in source (`fusion::builtin_sources()`), or "files": `data`.
  TORCH_ARG(std::string, dataset) = "fashion-mnist";
  /// With "files": the labelled file or image folder.
  TORCH_ARG(fusion::DataRef, data);
  /// The task the data is read against (label names, input shape, dtype,
  /// normalisation); none: the built-in source's. Required for "files".
  TORCH_ARG(std::optional<TaskSpec>, task);
  /// A built-in source's directory (empty: the default search).
  TORCH_ARG(std::filesystem::path, data_dir);
};

/// The local data: its task (normalisation statistics fitted on it when the
/// task leaves them out) and its labelled examples as models see them
/// (float32, scaled and normalised), labels indexing the task's space.
struct LocalData {
  TaskSpec task;
  fusion::Examples examples;
};
/// Reads the training examples `options` name. Throws `chorus::Error`.
LocalData load_local_data(const LocalDataOptions& options);

/// How `chorus node train` trains a builtin expert on local labelled data.
struct TrainExpertOptions {
  /// Zoo architecture: "mlp", "lenet", "resnet", or "auto" (lenet for
  /// images, mlp for features).
  TORCH_ARG(std::string, arch) = "auto";
  TORCH_ARG(std::int64_t, epochs) = 3;
  TORCH_ARG(std::int64_t, batch_size) = 64;
  TORCH_ARG(double, lr) = 2e-3;
  TORCH_ARG(std::uint64_t, seed) = 0;
  /// Fraction of the examples held out to report accuracy.
  TORCH_ARG(double, holdout) = 0.1;
  /// Use IID shard `shard` of `shards` of the training data (the node's
  /// private share when several nodes start from one public data set).
  TORCH_ARG(std::int64_t, shard) = 0;
  TORCH_ARG(std::int64_t, shards) = 1;
  /// The data.
  TORCH_ARG(LocalDataOptions, source);
  /// Torch threads for training.
  TORCH_ARG(int, threads) = 0;
  /// Where training runs (`fusion::TrainOptions::device`).
  TORCH_ARG(c10::Device, device) = c10::Device(c10::kCPU);
  /// Train with DP-SGD ([train.privacy]); lenet then uses GroupNorm.
  TORCH_ARG(std::optional<fusion::DpSgdOptions>, privacy);
  /// Train this many teachers, each on its own disjoint part of the
  /// training examples, saved together as one expert: it answers with
  /// their mean probabilities, and a node with [policy.privacy] answers
  /// with GNMax over their votes (ALGORITHMS.md §6). 1: one model.
  TORCH_ARG(std::int64_t, teachers) = 1;
  /// Progress after each epoch.
  TORCH_ARG(std::function<void(const fusion::EpochReport&)>,
            on_epoch) = nullptr;
};

/// What `train_builtin_expert` did.
struct TrainExpertResult {
  std::int64_t examples = 0;    ///< Training examples used.
  std::int64_t holdout = 0;     ///< Held-out examples.
  double holdout_accuracy = 0;  ///< Accuracy on them, over the labels.
  std::int64_t teachers = 1;    ///< Models trained (the teacher ensemble).
  /// With teachers: the mean of each teacher's own held-out accuracy, and
  /// the accuracy of the plurality of their votes.
  double teacher_accuracy = 0;
  double vote_accuracy = 0;
  std::string arch;  ///< The architecture trained.
  std::vector<std::int64_t> input_shape;
  double seconds = 0;
  /// The DP-SGD guarantee it was trained under, when it was.
  std::optional<fusion::DpGuarantee> privacy;
};

/// Trains a builtin expert on the local data restricted to `labels` (names
/// in the data's label space), and saves it atomically to `out`. Throws
/// `chorus::Error` (INVALID_ARGUMENT for an unknown label, naming the
/// space).
TrainExpertResult train_builtin_expert(const std::vector<std::string>& labels,
                                       const TrainExpertOptions& options,
                                       const std::filesystem::path& out);

/// A node's private labelled examples for adapting the global model to its
/// task. They never leave the node.
struct LabelledShots {
  torch::Tensor inputs;  ///< [N, input_shape...]
  torch::Tensor labels;  ///< int64 [N], indices into the expert's labels.
};

/// `per_class` examples of each of `labels` from the local data, drawn with
/// `seed`. Throws `chorus::Error`.
LabelledShots draw_local_shots(const std::vector<std::string>& labels,
                               std::int64_t per_class, std::uint64_t seed,
                               const LocalDataOptions& source);

}  // namespace chorus::node
