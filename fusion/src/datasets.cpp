#include "chorus/fusion/datasets.hpp"

#include <fmt/ostream.h>
#include <torch/serialize.h>
#include <torch/torch.h>
#include <zlib.h>

#include <array>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/log.hpp"

namespace chorus::fusion {
namespace {

namespace fs = std::filesystem;

constexpr std::uint32_t kImagesMagic = 0x00000803;  // ubyte, 3 dimensions
constexpr std::uint32_t kLabelsMagic = 0x00000801;  // ubyte, 1 dimension
constexpr std::uint32_t kMaxItems = 10'000'000;
constexpr std::uint32_t kMaxSide = 4096;

struct GzCloser {
  void operator()(gzFile f) const { gzclose(f); }
};
using GzFile = std::unique_ptr<gzFile_s, GzCloser>;

// Reads IDX files through zlib, which passes uncompressed files through.
class IdxReader {
 public:
  explicit IdxReader(const fs::path& path) : path_(path) {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) {
      fail(Code::kNotFound, "IDX file '{}' does not exist", path.string());
    }
    file_.reset(gzopen(path.c_str(), "rb"));
    if (!file_) fail(Code::kInternal, "cannot open '{}'", path.string());
    gzbuffer(file_.get(), 1 << 17);
  }

  std::uint32_t read_u32(const char* what) {
    std::array<unsigned char, 4> b{};
    read_exact(b.data(), b.size(), what);
    return (std::uint32_t{b[0]} << 24) | (std::uint32_t{b[1]} << 16) |
           (std::uint32_t{b[2]} << 8) | std::uint32_t{b[3]};
  }

  void read_exact(void* out, std::size_t n, const char* what) {
    auto* p = static_cast<unsigned char*>(out);
    while (n > 0) {
      unsigned chunk =
          static_cast<unsigned>(std::min<std::size_t>(n, 1u << 30));
      int got = gzread(file_.get(), p, chunk);
      if (got < 0) {
        int err = 0;
        const char* msg = gzerror(file_.get(), &err);
        fail(Code::kDataLoss,
             "'{}': corrupt compressed data while reading {}: {}",
             path_.string(), what, msg);
      }
      if (got == 0) {
        fail(Code::kDataLoss, "'{}': truncated: file ends while reading {}",
             path_.string(), what);
      }
      p += got;
      n -= static_cast<std::size_t>(got);
    }
  }

  void expect_end() {
    unsigned char extra = 0;
    if (gzread(file_.get(), &extra, 1) != 0) {
      fail(Code::kDataLoss, "'{}': trailing bytes after the declared payload",
           path_.string());
    }
  }

  void expect_magic(std::uint32_t expected, const char* kind) {
    std::uint32_t magic = read_u32("the magic number");
    if (magic != expected) {
      fail(Code::kDataLoss,
           "'{}': bad magic number 0x{:08x}, expected 0x{:08x} ({})",
           path_.string(), magic, expected, kind);
    }
  }

  std::uint32_t read_dim(const char* what, std::uint32_t max) {
    std::uint32_t v = read_u32(what);
    if (v == 0 || v > max) {
      fail(Code::kDataLoss, "'{}': implausible {} {} (accepted 1..{})",
           path_.string(), what, v, max);
    }
    return v;
  }

 private:
  fs::path path_;
  GzFile file_;
};

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

torch::Tensor read_idx_images(const fs::path& path) {
  IdxReader in(path);
  in.expect_magic(kImagesMagic, "IDX images: unsigned bytes, 3 dimensions");
  std::uint32_t n = in.read_dim("image count", kMaxItems);
  std::uint32_t rows = in.read_dim("row count", kMaxSide);
  std::uint32_t cols = in.read_dim("column count", kMaxSide);
  auto images = torch::empty({n, rows, cols}, torch::kUInt8);
  in.read_exact(images.data_ptr<std::uint8_t>(), std::size_t{n} * rows * cols,
                "the image payload");
  in.expect_end();
  return images;
}

torch::Tensor read_idx_labels(const fs::path& path) {
  IdxReader in(path);
  in.expect_magic(kLabelsMagic, "IDX labels: unsigned bytes, 1 dimension");
  std::uint32_t n = in.read_dim("label count", kMaxItems);
  auto labels = torch::empty({n}, torch::kUInt8);
  in.read_exact(labels.data_ptr<std::uint8_t>(), n, "the label payload");
  in.expect_end();
  return labels.to(torch::kInt64);
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
