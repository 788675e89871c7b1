#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "chorus/protocol/channel.hpp"

/// `chorus predict`: fused predictions for the images in a file, from a
/// saved fused model or from a running coordinator. Torch-free header.
namespace chorus::coordinator {

/// Where the predictions come from, and what to predict.
struct PredictOptions {
  /// Images: an IDX image file (`*-images-idx3-ubyte`, gzip or not; bytes
  /// scaled to [0, 1]) or a tensor saved by Python's `torch.save`
  /// ([N, 1, H, W] or [N, H, W]; uint8 is scaled to [0, 1]).
  std::filesystem::path input;
  /// Optional IDX label file: report the accuracy.
  std::filesystem::path labels;
  /// Predict the first `limit` images only (0: all).
  std::int64_t limit = 0;

  /// Either a saved fused model that needs no experts (or a tae global
  /// model, with the task a node adapted it to in `adapted`, else every
  /// output under its prior) ...
  std::filesystem::path model;
  std::filesystem::path adapted;
  int threads = 2;
  /// ... or a coordinator serving fused predictions (`coordinator.serve`),
  /// reached with an operator's certificate.
  std::string host;
  std::uint16_t port = 0;
  protocol::TlsMaterial tls;
  std::chrono::milliseconds deadline{120000};  ///< Per request.
  std::int64_t batch = 1000;                   ///< Images per request.
};

/// What `predict_from_file` produced.
struct PredictReport {
  std::string source;  ///< "model FILE" or "coordinator HOST:PORT".
  std::string algorithm;
  int round = 0;  ///< The coordinator's fused round (0 for a file).
  std::vector<std::string> class_names;
  /// The label each class (column) stands for: 0..C-1, or a tae task's
  /// classes among the model's outputs.
  std::vector<std::int64_t> class_labels;
  std::vector<std::int64_t> predicted;            ///< Arg-max column per image.
  std::vector<std::vector<float>> probabilities;  ///< [N][C].
  std::int64_t expert_queries = 0;  ///< Expert answers the coordinator used.
  /// Their cost under the coordinator's node costs (a coordinator before
  /// protocol 1.7 does not say: 0).
  double expert_cost = 0;
  /// Experts of the fused model the coordinator answered without (not
  /// connected), in the order it first named them.
  std::vector<std::string> experts_away;
  /// With `labels`: accuracy on the images whose label is one of
  /// `class_labels` (all of them but for a tae task), and how many those are.
  std::optional<double> accuracy;
  std::int64_t scored = 0;
  double seconds = 0;
};

/// Reads the images, predicts them, and reports. Throws `chorus::Error`:
/// NOT_FOUND / DATA_LOSS / INVALID_ARGUMENT for the files,
/// FAILED_PRECONDITION for a saved model that needs its experts (ask the
/// coordinator instead), INVALID_ARGUMENT for `adapted` without a tae model,
/// UNAUTHENTICATED / PERMISSION_DENIED / UNAVAILABLE from the coordinator.
PredictReport predict_from_file(const PredictOptions& options);

/// `chorus status`: asks the coordinator at `host`:`port` what it is doing
/// (StatusRequest, protocol 1.5), as the operator whose certificate is in
/// `tls`. Throws `chorus::Error`: UNAUTHENTICATED / PERMISSION_DENIED (not
/// an operator) / UNAVAILABLE (not running its rounds yet, or unreachable)
/// / DEADLINE_EXCEEDED after `deadline`.
protocol::CoordinatorStatus ask_status(const std::string& host,
                                       std::uint16_t port,
                                       const protocol::TlsMaterial& tls,
                                       std::chrono::milliseconds deadline);

}  // namespace chorus::coordinator
