#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "chorus/core/config.hpp"

/// The task a federation is about: the shared label space, the shape and
/// element type of one input, and the input normalisation. Declared once by
/// the coordinator (`[task]`), announced to every node in `Welcome`, and
/// checked wherever an expert, a data file or a model meets it. Plain values:
/// no torch, no protobuf.
namespace chorus {

/// Element type of the inputs as they are stored and sent on the wire.
enum class InputDType {
  kFloat32,  ///< Any real values (tabular features, preprocessed inputs).
  kUInt8,    ///< Pixel intensities 0..255; models see them scaled to [0, 1].
};

/// "float32" or "uint8".
std::string_view dtype_name(InputDType dtype) noexcept;
/// Parses `dtype_name`'s form. Throws `chorus::Error` (INVALID_ARGUMENT).
InputDType parse_input_dtype(std::string_view text);

/// How inputs are normalised before a model sees them: x' = (x - mean) / std,
/// after uint8 inputs are scaled to [0, 1].
enum class Normalisation {
  kNone,        ///< x' = x (uint8 still scaled to [0, 1]).
  kPerChannel,  ///< One mean and std per channel (the first input dimension).
  kPerFeature,  ///< One mean and std per element of an input.
};

/// "none", "per-channel" or "per-feature".
std::string_view normalisation_name(Normalisation n) noexcept;
/// Parses `normalisation_name`'s form. Throws `chorus::Error`.
Normalisation parse_normalisation(std::string_view text);

/// The label space of a federation: names, in order. A label's index is its
/// class index everywhere (answers, data files, fused models).
class LabelSpace {
 public:
  LabelSpace() = default;
  /// Throws `chorus::Error` (INVALID_ARGUMENT) for an empty or duplicated
  /// name.
  explicit LabelSpace(std::vector<std::string> names);

  const std::vector<std::string>& names() const { return names_; }
  std::int64_t size() const { return static_cast<std::int64_t>(names_.size()); }
  bool empty() const { return names_.empty(); }
  /// The index of `name`, if it is in the space.
  std::optional<std::int64_t> find(std::string_view name) const;
  /// The index of `name`; throws `chorus::Error` (INVALID_ARGUMENT) naming
  /// the space when it is not in it. `what` says whose label it is.
  std::int64_t index(std::string_view name, std::string_view what) const;
  bool operator==(const LabelSpace&) const = default;

 private:
  std::vector<std::string> names_;
};

/// The task of a federation.
struct TaskSpec {
  /// A short name for logs and reports, e.g. "fashion-mnist".
  std::string name;
  /// The shared label space.
  LabelSpace labels;
  /// Shape of one input: [C, H, W] for images, [D] for tabular features.
  std::vector<std::int64_t> input_shape;
  /// Element type of stored and transmitted inputs.
  InputDType dtype = InputDType::kFloat32;
  /// The input normalisation.
  Normalisation normalisation = Normalisation::kNone;
  /// Its means and standard deviations: one per channel or per feature.
  /// Empty with a normalisation other than none: computed from the
  /// coordinator's transfer pool when it starts (and then announced).
  std::vector<double> mean, std;

  /// Elements in one input.
  std::int64_t input_elements() const;
  /// How many mean/std values the normalisation needs (0 for none).
  std::int64_t normalisation_size() const;
  /// Whether the normalisation statistics are still to be computed.
  bool needs_statistics() const;
  /// Throws `chorus::Error` (INVALID_ARGUMENT) naming what is inconsistent:
  /// no labels, a non-positive dimension, statistics of the wrong count, a
  /// non-positive std.
  void validate() const;
  /// "uint8 [1, 28, 28]".
  std::string describe_input() const;
  bool operator==(const TaskSpec&) const = default;
};

/// The embedded default task: Fashion-MNIST's ten classes, uint8 1×28×28,
/// no normalisation (models see pixels in [0, 1]).
TaskSpec fashion_mnist_task();

/// Reads a `[task]` table under `prefix` ("task"): `name`, `labels`,
/// `input_shape`, `dtype`, `normalise`, `mean`, `std`, or `file` naming a
/// TOML file that holds the table instead (relative to the config). Keys
/// absent take `fallback`'s values. Validates the result.
TaskSpec read_task(Config& config, const TaskSpec& fallback,
                   const std::string& prefix = "task");
/// Whether `config` sets any task key under `prefix` (`file` included).
bool has_task(const Config& config, const std::string& prefix = "task");
/// Reads the `[task]` table of the TOML file `path` (all of its keys must be
/// task keys). Throws `chorus::Error` naming the file.
TaskSpec read_task_file(const std::filesystem::path& path,
                        const TaskSpec& fallback);
/// The task as a `[task]` TOML table (for resolved configs and task.toml).
std::string to_toml(const TaskSpec& task);

/// Why an expert with this interface does not fit `task`, naming both
/// sides' values; nullopt when it fits. `who` names the expert in the
/// message (e.g. "node 'alpha'"). An input shape of [H, W] fits a task of
/// [1, H, W]. Labels must be names in the task's label space.
std::optional<std::string> task_mismatch(
    const TaskSpec& task, const std::vector<std::int64_t>& input_shape,
    std::optional<InputDType> input_dtype,
    const std::vector<std::string>& labels, std::string_view who);

}  // namespace chorus
