#include "chorus/fusion/datasets.hpp"

#include <zlib.h>

#include <cstdlib>
#include <fstream>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "support/doctest.hpp"
#include "support/errors.hpp"
#include "support/temp_dir.hpp"

namespace fs = std::filesystem;
using chorus::Code;
using chorus::fusion::Split;
using chorus::testing::code_of;

namespace {

using chorus::testing::contains;

std::string be32(std::uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16),
          static_cast<char>(v >> 8), static_cast<char>(v)};
}

// Writes an IDX file: magic, dimensions, payload; gzip-compressed or raw.
void write_idx(const fs::path& path, std::uint32_t magic,
               const std::vector<std::uint32_t>& dims,
               const std::string& payload, bool gzip = true) {
  std::string bytes = be32(magic);
  for (auto d : dims) bytes += be32(d);
  bytes += payload;
  if (gzip) {
    gzFile f = gzopen(path.c_str(), "wb");
    REQUIRE(f != nullptr);
    REQUIRE(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())) ==
            static_cast<int>(bytes.size()));
    REQUIRE(gzclose(f) == Z_OK);
  } else {
    std::ofstream(path, std::ios::binary) << bytes;
  }
}

std::string pixels(std::uint32_t n) {
  std::string p(n, '\0');
  for (std::uint32_t i = 0; i < n; ++i) p[i] = static_cast<char>(i % 256);
  return p;
}

// A miniature Fashion-MNIST test split: 3 images of 2x2 and their labels.
void write_split(const fs::path& dir, std::uint32_t labels = 3,
                 std::string label_bytes = {0, 9, 4}) {
  write_idx(dir / "t10k-images-idx3-ubyte.gz", 0x803, {3, 2, 2}, pixels(12));
  write_idx(dir / "t10k-labels-idx1-ubyte.gz", 0x801, {labels}, label_bytes);
}

}  // namespace

TEST_CASE("idx: images and labels are read from gzip and from raw files") {
  chorus::testing::TempDir dir;
  for (bool gzip : {true, false}) {
    CAPTURE(gzip);
    write_idx(dir / "img", 0x803, {2, 3, 4}, pixels(24), gzip);
    write_idx(dir / "lbl", 0x801, {2}, std::string{7, 1}, gzip);
    auto images = chorus::fusion::read_idx_images(dir / "img");
    CHECK(images.sizes().vec() == std::vector<std::int64_t>{2, 3, 4});
    CHECK(chorus::testing::dtype_name(images) == "Byte");
    CHECK(images[1][2][3].item<int>() == 23);
    auto labels = chorus::fusion::read_idx_labels(dir / "lbl");
    CHECK(chorus::testing::dtype_name(labels) == "Long");
    CHECK(labels[0].item<std::int64_t>() == 7);
    CHECK(labels[1].item<std::int64_t>() == 1);
  }
}

TEST_CASE("idx: corrupt files are DATA_LOSS with a precise message") {
  chorus::testing::TempDir dir;
  std::string msg;

  write_idx(dir / "swapped", 0x801, {3}, "abc");
  CHECK(code_of([&] { chorus::fusion::read_idx_images(dir / "swapped"); },
                &msg) == Code::kDataLoss);
  CHECK(contains(msg, "bad magic number 0x00000801, expected 0x00000803"));

  write_idx(dir / "short", 0x803, {2, 28, 28}, pixels(784 + 100));
  CHECK(code_of([&] { chorus::fusion::read_idx_images(dir / "short"); },
                &msg) == Code::kDataLoss);
  CHECK(contains(msg, "truncated"));

  write_idx(dir / "long", 0x801, {2}, "abc");
  CHECK(code_of([&] { chorus::fusion::read_idx_labels(dir / "long"); }, &msg) ==
        Code::kDataLoss);
  CHECK(contains(msg, "trailing bytes"));

  write_idx(dir / "zero", 0x803, {0, 28, 28}, "");
  CHECK(code_of([&] { chorus::fusion::read_idx_images(dir / "zero"); }, &msg) ==
        Code::kDataLoss);
  CHECK(contains(msg, "image count 0"));

  write_idx(dir / "huge", 0x803, {4000000000u, 28, 28}, "");
  CHECK(code_of([&] { chorus::fusion::read_idx_images(dir / "huge"); }) ==
        Code::kDataLoss);

  // A header within every limit that claims 160 TiB: refused as truncated
  // once the bytes run out, not by allocating what it claims (the process
  // would be killed first).
  for (bool gzip : {true, false}) {
    write_idx(dir / "claims", 0x803, {10000000u, 4096, 4096}, pixels(5000),
              gzip);
    CHECK(code_of([&] { chorus::fusion::read_idx_images(dir / "claims"); },
                  &msg) == Code::kDataLoss);
    CHECK(contains(msg, "truncated"));
  }

  std::ofstream(dir / "header-only", std::ios::binary) << be32(0x803);
  CHECK(code_of([&] { chorus::fusion::read_idx_images(dir / "header-only"); },
                &msg) == Code::kDataLoss);
  CHECK(contains(msg, "image count"));

  CHECK(code_of([&] { chorus::fusion::read_idx_labels(dir / "absent"); }) ==
        Code::kNotFound);
}

TEST_CASE(
    "fashion-mnist: a split is loaded, scaled and checked for agreement") {
  chorus::testing::TempDir dir;
  write_split(dir.path());
  auto data = chorus::fusion::load_fashion_mnist(Split::kTest, dir.path());
  CHECK(data.size() == 3);
  CHECK(data.images.sizes().vec() == std::vector<std::int64_t>{3, 1, 2, 2});
  CHECK(chorus::testing::dtype_name(data.images) == "Float");
  CHECK(data.images[2][0][1][1].item<float>() == doctest::Approx(11.0 / 255));
  CHECK(data.labels[1].item<std::int64_t>() == 9);
  CHECK(data.class_names.at(9) == "Ankle boot");

  std::string msg;
  write_split(dir.path(), 2, std::string{1, 2});
  CHECK(
      code_of(
          [&] { chorus::fusion::load_fashion_mnist(Split::kTest, dir.path()); },
          &msg) == Code::kDataLoss);
  CHECK(contains(msg, "holds 3 images but"));

  write_split(dir.path(), 3, std::string{1, 10, 2});
  CHECK(
      code_of(
          [&] { chorus::fusion::load_fashion_mnist(Split::kTest, dir.path()); },
          &msg) == Code::kDataLoss);
  CHECK(contains(msg, "label 10 outside 0..9"));
}

TEST_CASE("fashion-mnist: missing files say how to install them") {
  chorus::testing::TempDir dir;
  std::string msg;
  CHECK(code_of(
            [&] {
              chorus::fusion::load_fashion_mnist(Split::kTrain, dir.path());
            },
            &msg) == Code::kNotFound);
  CHECK(contains(msg, "train-images-idx3-ubyte.gz"));
  CHECK(contains(msg, "dataset-fashion-mnist"));
  CHECK(contains(msg, "CHORUS_DATA_DIR"));
}

TEST_CASE(
    "fashion-mnist: the directory comes from flag, then env, then default") {
  namespace fu = chorus::fusion;
  const char* saved = std::getenv("CHORUS_DATA_DIR");
  std::optional<std::string> restore;
  if (saved) restore = saved;
  const char* variable = fu::data_dir_variable("fashion-mnist");
  REQUIRE(variable != nullptr);
  CHECK(std::string(variable) == "CHORUS_DATA_DIR");
  CHECK(std::string(fu::data_dir_variable("mnist")) == "CHORUS_MNIST_DIR");
  CHECK(fu::data_dir_variable("iris") == nullptr);
  // What the applications do: the flag, else the environment, else fusion's
  // default. Fusion itself reads no environment.
  auto resolve = [&](const fs::path& flag) {
    return fu::fashion_mnist_dir(chorus::path_or_env(flag, variable));
  };

  ::unsetenv("CHORUS_DATA_DIR");
  CHECK(resolve({}) == fs::path(fu::kDefaultFashionMnistDir));
  ::setenv("CHORUS_DATA_DIR", "/from/env", 1);
  CHECK(resolve({}) == fs::path("/from/env"));
  CHECK(fu::fashion_mnist_dir() == fs::path(fu::kDefaultFashionMnistDir));
  CHECK(resolve("/from/flag") == fs::path("/from/flag"));
  ::setenv("CHORUS_DATA_DIR", "", 1);
  CHECK(resolve({}) == fs::path(fu::kDefaultFashionMnistDir));
  CHECK_FALSE(chorus::path_or_env({}, nullptr).has_value());

  if (restore) {
    ::setenv("CHORUS_DATA_DIR", restore->c_str(), 1);
  } else {
    ::unsetenv("CHORUS_DATA_DIR");
  }
}

TEST_CASE("fashion-mnist: the installed package has the official splits") {
  // The Debian package dataset-fashion-mnist is a declared dependency
  // (scripts/install-deps.sh), so this reads the real data.
  auto train = chorus::fusion::load_fashion_mnist(
      Split::kTrain, fs::path(chorus::fusion::kDefaultFashionMnistDir));
  auto test = chorus::fusion::load_fashion_mnist(
      Split::kTest, fs::path(chorus::fusion::kDefaultFashionMnistDir));
  CHECK(train.images.sizes().vec() ==
        std::vector<std::int64_t>{60000, 1, 28, 28});
  CHECK(test.images.sizes().vec() ==
        std::vector<std::int64_t>{10000, 1, 28, 28});
  CHECK(train.images.min().item<float>() == 0.0f);
  CHECK(train.images.max().item<float>() == 1.0f);
  auto train_counts = torch::bincount(train.labels);
  auto test_counts = torch::bincount(test.labels);
  CHECK(torch::equal(train_counts, torch::full({10}, 6000, torch::kInt64)));
  CHECK(torch::equal(test_counts, torch::full({10}, 1000, torch::kInt64)));
  // Mean intensity of Fashion-MNIST's training images is about 0.286.
  CHECK(train.images.mean().item<double>() ==
        doctest::Approx(0.286).epsilon(0.01));
}

TEST_CASE("mnist digits: JSON files are read, ordered by digit, validated") {
  chorus::testing::TempDir dir;
  auto write_digit = [&](int d, int images, float value) {
    std::string body = "{\"data\": [";
    for (int i = 0; i < images * 784; ++i) {
      body += (i ? "," : "") + fmt::format("{}", value);
    }
    std::ofstream(dir / fmt::format("{}.json", d)) << body << "]}";
  };
  for (int d = 0; d < 10; ++d) write_digit(d, d == 3 ? 2 : 1, 0.5f);
  auto data = chorus::fusion::load_mnist_digits(dir.path());
  CHECK(data.size() == 11);
  CHECK(data.images.sizes().vec() == std::vector<std::int64_t>{11, 1, 28, 28});
  CHECK(data.labels[4].item<std::int64_t>() == 3);
  CHECK(data.labels[5].item<std::int64_t>() == 4);
  CHECK(data.class_names.at(7) == "7");

  std::string msg;
  std::ofstream(dir / "5.json") << "{\"data\": [0.5, 0.5]}";
  CHECK(code_of([&] { chorus::fusion::load_mnist_digits(dir.path()); }, &msg) ==
        Code::kDataLoss);
  CHECK(contains(msg, "whole number of 28x28 images"));
  write_digit(5, 1, 2.0f);
  CHECK(code_of([&] { chorus::fusion::load_mnist_digits(dir.path()); }, &msg) ==
        Code::kDataLoss);
  CHECK(contains(msg, "outside [0, 1]"));
  std::ofstream(dir / "5.json") << "[1, 2";
  CHECK(code_of([&] { chorus::fusion::load_mnist_digits(dir.path()); }) ==
        Code::kDataLoss);
  fs::remove(dir / "5.json");
  CHECK(code_of([&] { chorus::fusion::load_mnist_digits(dir.path()); }, &msg) ==
        Code::kNotFound);
  CHECK(contains(msg, "scripts/fetch-mnist.sh"));
}
