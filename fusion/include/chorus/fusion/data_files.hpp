#pragma once

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "chorus/core/task.hpp"
#include "chorus/fusion/formats.hpp"

/// Examples of a federation's task from files in the formats people have,
/// and the named built-in sources. One entry point, `read_examples`, picks
/// the reader by the path; every reader is strict and its errors name the
/// file and the position (`chorus::Error`: NOT_FOUND, DATA_LOSS for bytes
/// that are not the format, INVALID_ARGUMENT for values that disagree with
/// the task).
namespace chorus::fusion {

/// Examples as stored: inputs [N, input_shape...] in the task's dtype
/// (uint8 or float32, not normalised), labels int64 [N] indexing the task's
/// label space (undefined when the source has none).
struct Examples {
  torch::Tensor inputs;
  torch::Tensor labels;

  std::int64_t size() const { return inputs.defined() ? inputs.size(0) : 0; }
  bool labelled() const { return labels.defined(); }
};

/// Reads `ref` and checks it against `task`: each input's shape equals the
/// task's (an [N, H, W] array is read as [N, 1, H, W] for a task of
/// [1, H, W]); uint8 tasks take uint8 or integer data in 0..255; float32
/// tasks take any numbers, which must be finite; labels (names or indices)
/// must be in the label space. `need_labels`: a source without labels is an
/// error. Throws `chorus::Error` naming the file and what is wrong.
Examples read_examples(const DataRef& ref, const TaskSpec& task,
                       bool need_labels);

/// A `.npy` file as a tensor of its own dtype (bool as uint8).
torch::Tensor read_npy(const std::filesystem::path& path);
/// Every array of a `.npz` file (plain or compressed, as numpy's savez and
/// savez_compressed write), by name without the `.npy` suffix.
std::map<std::string, torch::Tensor> read_npz(
    const std::filesystem::path& path);
/// A parsed `.npy` array as a tensor (copied; bool as uint8).
torch::Tensor to_tensor(const NpyArray& array);

/// The float inputs models see: uint8 scaled to [0, 1], then the task's
/// normalisation. Throws `chorus::Error` (INVALID_ARGUMENT) when `raw` is not
/// [N, input_shape...] of the task's dtype.
torch::Tensor to_model_inputs(const torch::Tensor& raw, const TaskSpec& task);
/// The inverse of `to_model_inputs`, for the wire: the inputs in the task's
/// dtype (uint8 rounded and clamped).
torch::Tensor to_wire_inputs(const torch::Tensor& model_inputs,
                             const TaskSpec& task);
/// Fills `task.mean` and `task.std` from `raw` inputs (after uint8 scaling)
/// when the task asks for statistics it does not have; a constant feature
/// gets std 1.
void fit_normalisation(TaskSpec& task, const torch::Tensor& raw);

/// The named built-in sources: "fashion-mnist" (Debian's
/// dataset-fashion-mnist), "mnist" (scripts/fetch-mnist.sh) and the real
/// tabular sets that python3-sklearn ships: "breast-cancer", "wine",
/// "iris" and "digits" (8×8 digits as 64 features).
const std::vector<std::string>& builtin_sources();
/// Whether `name` is a built-in source.
bool is_builtin_source(const std::string& name);
/// A built-in source's task (its label space, input shape, dtype and a
/// normalisation that suits it).
TaskSpec builtin_task(const std::string& name);

/// A built-in source's examples: `train` and `test` splits. Fashion-MNIST
/// has official splits; the others are split here, deterministically (a
/// fixed permutation, test a sixth of the examples). `dir` overrides where
/// the files are read from. Throws `chorus::Error` (NOT_FOUND naming the
/// package or script that provides them).
struct BuiltinData {
  TaskSpec task;
  Examples train, test;
};
BuiltinData load_builtin(
    const std::string& name,
    const std::optional<std::filesystem::path>& dir = std::nullopt);

/// Where python3-sklearn ships its small data sets.
inline constexpr const char* kSklearnDataDir =
    "/usr/lib/python3/dist-packages/sklearn/datasets/data";

}  // namespace chorus::fusion
