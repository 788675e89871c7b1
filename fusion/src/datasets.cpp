#include "chorus/fusion/datasets.hpp"

#include <fmt/ostream.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/log.hpp"
#include "chorus/fusion/formats.hpp"

namespace chorus::fusion {
namespace {

namespace fs = std::filesystem;

// `<dir>/<stem>.gz`, or `<dir>/<stem>` when only the uncompressed file exists.
fs::path locate(const fs::path& dir, const std::string& stem) {
  std::error_code ec;
  fs::path gz = dir / (stem + ".gz");
  if (fs::is_regular_file(gz, ec)) return gz;
  fs::path raw = dir / stem;
  if (fs::is_regular_file(raw, ec)) return raw;
  fail(Code::kNotFound,
       "Fashion-MNIST not found: '{}' is missing; install the Debian package "
       "dataset-fashion-mnist (scripts/install-deps.sh) or set "
       "CHORUS_DATA_DIR to a directory holding the IDX files",
       gz.string());
}

}  // namespace

fs::path fashion_mnist_dir(const std::optional<fs::path>& override_dir) {
  if (override_dir && !override_dir->empty()) return *override_dir;
  return fs::path(kDefaultFashionMnistDir);
}

const std::vector<std::string>& fashion_mnist_class_names() {
  static const std::vector<std::string> kNames = {
      "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
      "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return kNames;
}

namespace {

IdxArray read_idx(const fs::path& path, IdxKind kind) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    fail(Code::kNotFound, "IDX file '{}' does not exist", path.string());
  }
  return parse_idx(read_file(path), kind, path.string());
}

// The array's bytes as a tensor that owns them (no copy).
torch::Tensor idx_tensor(IdxArray&& a) {
  auto* owned = new std::vector<std::uint8_t>(std::move(a.data));
  return torch::from_blob(
      owned->data(), a.shape, [owned](void*) { delete owned; }, torch::kUInt8);
}

}  // namespace

torch::Tensor read_idx_images(const fs::path& path) {
  return idx_tensor(read_idx(path, IdxKind::kImages));
}

torch::Tensor read_idx_labels(const fs::path& path) {
  return idx_tensor(read_idx(path, IdxKind::kLabels)).to(torch::kInt64);
}

Dataset load_fashion_mnist(Split split,
                           const std::optional<fs::path>& override_dir) {
  const fs::path dir = fashion_mnist_dir(override_dir);
  const std::string prefix = split == Split::kTrain ? "train" : "t10k";
  const fs::path images_path = locate(dir, prefix + "-images-idx3-ubyte");
  const fs::path labels_path = locate(dir, prefix + "-labels-idx1-ubyte");

  torch::Tensor images = read_idx_images(images_path);
  torch::Tensor labels = read_idx_labels(labels_path);
  if (images.size(0) != labels.size(0)) {
    fail(Code::kDataLoss, "'{}' holds {} images but '{}' holds {} labels",
         images_path.string(), images.size(0), labels_path.string(),
         labels.size(0));
  }
  const auto& names = fashion_mnist_class_names();
  const auto num_classes = static_cast<std::int64_t>(names.size());
  if (labels.numel() > 0) {
    std::int64_t max_label = labels.max().item<std::int64_t>();
    if (max_label >= num_classes) {
      fail(Code::kDataLoss, "'{}': label {} outside 0..{}",
           labels_path.string(), max_label, num_classes - 1);
    }
  }
  Dataset data;
  data.images = images.unsqueeze(1).to(torch::kFloat32).div_(255.0);
  data.labels = std::move(labels);
  data.class_names = names;
  log::get("fusion")->debug(
      "event=load dataset=fashion-mnist split={} n={} dir={}", prefix,
      data.size(), dir.string());
  return data;
}

fs::path mnist_digits_dir(const std::optional<fs::path>& override_dir) {
  if (override_dir && !override_dir->empty()) return *override_dir;
  return fs::path(kDefaultMnistDigitsDir);
}

const char* data_dir_variable(std::string_view dataset) {
  if (dataset == "fashion-mnist") return "CHORUS_DATA_DIR";
  if (dataset == "mnist") return "CHORUS_MNIST_DIR";
  return nullptr;
}

Dataset load_mnist_digits(const std::optional<fs::path>& override_dir) {
  constexpr std::int64_t kPixels = 28 * 28;
  const fs::path dir = mnist_digits_dir(override_dir);
  std::vector<torch::Tensor> images, labels;
  Dataset data;
  for (int digit = 0; digit < 10; ++digit) {
    const fs::path path = dir / fmt::format("{}.json", digit);
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) {
      fail(
          Code::kNotFound,
          "MNIST digits not found: '{}' is missing; run scripts/fetch-mnist.sh "
          "(or set CHORUS_MNIST_DIR to where the digits are)",
          path.string());
    }
    std::vector<float> pixels;
    try {
      auto json = nlohmann::json::parse(read_file(path));
      pixels = json.at("data").get<std::vector<float>>();
    } catch (const nlohmann::json::exception& e) {
      fail(Code::kDataLoss, "'{}': not an mnist digits file: {}", path.string(),
           e.what());
    }
    const auto n = static_cast<std::int64_t>(pixels.size()) / kPixels;
    if (pixels.empty() || static_cast<std::int64_t>(pixels.size()) % kPixels) {
      fail(Code::kDataLoss,
           "'{}': {} values is not a whole number of 28x28 images",
           path.string(), pixels.size());
    }
    auto t = torch::from_blob(pixels.data(), {n, 1, 28, 28}, torch::kFloat32)
                 .clone();
    if (!torch::isfinite(t).all().item<bool>() || t.min().item<float>() < 0 ||
        t.max().item<float>() > 1) {
      fail(Code::kDataLoss, "'{}': pixel values outside [0, 1]", path.string());
    }
    images.push_back(t);
    labels.push_back(torch::full({n}, digit, torch::kLong));
    data.class_names.push_back(std::to_string(digit));
  }
  data.images = torch::cat(images);
  data.labels = torch::cat(labels);
  log::get("fusion")->debug("event=load dataset=mnist-digits n={} dir={}",
                            data.size(), dir.string());
  return data;
}

namespace {

bool is_torch_save(const std::filesystem::path& path) {
  const auto name = path.filename().string();
  return name.ends_with(".pt") || name.ends_with(".pth");
}

torch::Tensor load_saved_tensor(const std::filesystem::path& path) {
  const auto bytes = read_file(path);
  torch::IValue value;
  try {
    value = torch::pickle_load(std::vector<char>(bytes.begin(), bytes.end()));
  } catch (const c10::Error& e) {
    fail(Code::kDataLoss, "'{}' is not a tensor saved by torch.save: {}",
         path.string(), e.what_without_backtrace());
  }
  CHORUS_CHECK(value.isTensor(), "'{}' holds a {}, not a tensor", path.string(),
               value.tagKind());
  return value.toTensor();
}

}  // namespace

torch::Tensor read_label_file(const std::filesystem::path& path) {
  if (!is_torch_save(path)) return read_idx_labels(path);
  auto labels = load_saved_tensor(path);
  CHORUS_CHECK(
      !labels.is_floating_point() && !labels.is_complex() && labels.dim() == 1,
      "'{}': labels must be a 1-d integer tensor, got {} of {}", path.string(),
      fmt::format("{}", fmt::streamed(labels.sizes())),
      c10::toString(labels.scalar_type()));
  return labels.to(torch::kLong).contiguous();
}

torch::Tensor read_image_file(const std::filesystem::path& path) {
  torch::Tensor images;
  if (is_torch_save(path)) {
    images = load_saved_tensor(path);
  } else {
    images = fusion::read_idx_images(path);  // uint8 [N, H, W].
  }
  if (images.scalar_type() == torch::kUInt8) {
    images = images.to(torch::kFloat32).div_(255.0);
  }
  CHORUS_CHECK(images.is_floating_point(),
               "'{}': images must be float or uint8, got {}", path.string(),
               c10::toString(images.scalar_type()));
  if (images.dim() == 3) images = images.unsqueeze(1);
  CHORUS_CHECK(
      images.dim() == 4 && images.size(0) >= 1,
      "'{}': images must be [N, 1, H, W] or [N, H, W] with N >= 1, got {}",
      path.string(), fmt::format("{}", fmt::streamed(images.sizes())));
  images = images.to(torch::kFloat32).contiguous();
  CHORUS_CHECK(torch::isfinite(images).all().item<bool>(),
               "'{}' holds NaN or infinite values", path.string());
  return images;
}

}  // namespace chorus::fusion
