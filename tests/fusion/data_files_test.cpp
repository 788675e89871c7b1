#include "chorus/fusion/data_files.hpp"

#include <turbojpeg.h>

#include <cstdlib>
#include <fstream>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/task.hpp"
#include "support/doctest.hpp"
#include "support/errors.hpp"
#include "support/temp_dir.hpp"

namespace fs = std::filesystem;
using chorus::Code;
using chorus::InputDType;
using chorus::LabelSpace;
using chorus::Normalisation;
using chorus::TaskSpec;
using chorus::fusion::DataRef;
using chorus::fusion::read_examples;
using chorus::testing::code_of;

namespace {

using chorus::testing::contains;

std::vector<std::int64_t> longs(const torch::Tensor& t) {
  auto c = t.to(torch::kLong).contiguous();
  return {c.data_ptr<std::int64_t>(), c.data_ptr<std::int64_t>() + c.numel()};
}

TaskSpec colour_task() {
  TaskSpec t;
  t.name = "pets";
  t.labels = LabelSpace({"cat", "dog", "bird", "fish", "horse"});
  t.input_shape = {3, 32, 32};
  t.dtype = InputDType::kUInt8;
  return t;
}

TaskSpec tabular_task(std::int64_t features) {
  TaskSpec t;
  t.name = "clinic";
  t.labels = LabelSpace({"healthy", "sick"});
  t.input_shape = {features};
  return t;
}

// The files of tests/support/write_data_files.py, written once per process.
const fs::path& numpy_files() {
  static chorus::testing::TempDir dir;
  static bool written = false;
  if (!written) {
    const auto cmd = "/usr/bin/python3 " CHORUS_SOURCE_DIR
                     "/tests/support/write_data_files.py " +
                     dir.path().string();
    REQUIRE_MESSAGE(std::system(cmd.c_str()) == 0,
                    "write_data_files.py failed (needs python3-numpy)");
    written = true;
  }
  return dir.path();
}

std::string error_of(const std::function<void()>& f, Code expected) {
  std::string message;
  CHECK(code_of(f, &message) == expected);
  return message;
}

}  // namespace

TEST_CASE(
    "npy: NumPy-written uint8 images and int64 labels read as the task's") {
  const auto& d = numpy_files();
  auto ex = read_examples(
      {.path = d / "colour.npy", .labels = d / "colour-labels.npy"},
      colour_task(), /*need_labels=*/true);
  REQUIRE(ex.inputs.sizes().vec() == std::vector<std::int64_t>{6, 3, 32, 32});
  CHECK((ex.inputs.scalar_type() == torch::kUInt8));
  // x[i].flatten()[j] = (7 i + j) % 256.
  CHECK(ex.inputs[2].flatten()[5].item<int>() == (14 + 5) % 256);
  CHECK(ex.inputs[5].flatten()[300].item<int>() == (35 + 300) % 256);
  CHECK(longs(ex.labels) == std::vector<std::int64_t>{0, 1, 2, 3, 4, 0});
}

TEST_CASE("npz: compressed and plain archives give the same examples") {
  const auto& d = numpy_files();
  auto a = read_examples({.path = d / "colour.npz"}, colour_task(), true);
  auto b = read_examples({.path = d / "colour-plain.npz"}, colour_task(), true);
  CHECK(torch::equal(a.inputs, b.inputs));
  CHECK(torch::equal(a.labels, b.labels));
  CHECK(a.labels[4].item<std::int64_t>() == 4);
  auto m = error_of(
      [&] { read_examples({.path = d / "no-x.npz"}, colour_task(), false); },
      Code::kInvalidArgument);
  CHECK(contains(m, "no array 'x'"));
  CHECK(contains(m, "inputs_wrong"));
}

TEST_CASE(
    "npy: Fortran order is transposed back, and [N, H, W] fits a 1xHxW task") {
  const auto& d = numpy_files();
  auto f = chorus::fusion::read_npy(d / "fortran.npy");
  REQUIRE(f.sizes().vec() == std::vector<std::int64_t>{4, 5});
  CHECK(f[3][2].item<double>() == doctest::Approx(((21 + 2) % 256) / 10.0));
  auto t = colour_task();
  t.input_shape = {1, 28, 28};
  auto ex = read_examples({.path = d / "grey.npy"}, t, false);
  CHECK(ex.inputs.sizes().vec() == std::vector<std::int64_t>{3, 1, 28, 28});
  CHECK_FALSE(ex.labelled());
}

TEST_CASE("npy: bad files are refused with the file and the reason") {
  const auto& d = numpy_files();
  chorus::testing::TempDir tmp;
  // Wrong magic.
  chorus::write_file_atomic(tmp / "magic.npy", "PK\x03\x04 not numpy at all");
  auto m = error_of([&] { chorus::fusion::read_npy(tmp / "magic.npy"); },
                    Code::kDataLoss);
  CHECK(contains(m, "magic.npy"));
  CHECK(contains(m, "magic"));
  // Truncated: the last 100 bytes cut off.
  auto bytes = chorus::read_file(d / "colour.npy");
  chorus::write_file_atomic(tmp / "cut.npy",
                            bytes.substr(0, bytes.size() - 100));
  m = error_of([&] { chorus::fusion::read_npy(tmp / "cut.npy"); },
               Code::kDataLoss);
  CHECK(contains(m, "truncated"));
  // Truncated inside the header.
  chorus::write_file_atomic(tmp / "head.npy", bytes.substr(0, 30));
  CHECK(code_of([&] { chorus::fusion::read_npy(tmp / "head.npy"); }) ==
        Code::kDataLoss);
  // Big-endian and string arrays name their descr.
  m = error_of([&] { chorus::fusion::read_npy(d / "big-endian.npy"); },
               Code::kDataLoss);
  CHECK(contains(m, ">i4"));
  m = error_of([&] { chorus::fusion::read_npy(d / "strings.npy"); },
               Code::kDataLoss);
  CHECK(contains(m, "<U1"));
  // NaN in a float task.
  m = error_of(
      [&] { read_examples({.path = d / "nan.npy"}, tabular_task(5), false); },
      Code::kInvalidArgument);
  CHECK(contains(m, "example 2"));
  CHECK(contains(m, "NaN"));
  // A label outside the space.
  m = error_of(
      [&] {
        read_examples(
            {.path = d / "colour.npy", .labels = d / "labels-out-of-range.npy"},
            colour_task(), true);
      },
      Code::kInvalidArgument);
  CHECK(contains(m, "label 7 at position 2"));
  // A shape that disagrees with the task names both.
  auto grey = colour_task();
  grey.input_shape = {1, 28, 28};
  m = error_of([&] { read_examples({.path = d / "colour.npy"}, grey, false); },
               Code::kInvalidArgument);
  CHECK(contains(m, "[6, 3, 32, 32]"));
  CHECK(contains(m, "[1, 28, 28]"));
  // Unlabelled where labels are needed.
  m = error_of(
      [&] { read_examples({.path = d / "colour.npy"}, colour_task(), true); },
      Code::kInvalidArgument);
  CHECK(contains(m, "has no labels"));
  // A float array for a uint8 task.
  auto as_bytes = tabular_task(5);
  as_bytes.dtype = InputDType::kUInt8;
  m = error_of(
      [&] { read_examples({.path = d / "fortran.npy"}, as_bytes, false); },
      Code::kInvalidArgument);
  CHECK(contains(m, "uint8"));
}

TEST_CASE("csv: features and a label column given as names or indices") {
  chorus::testing::TempDir tmp;
  chorus::write_file_atomic(tmp / "ok.csv",
                            "age,\"blood, pressure\",label\r\n"
                            "61,1.5e2,sick\r\n"
                            "34,.5,healthy\r\n"
                            "\r\n"
                            "50,-3,1\r\n");
  auto ex = read_examples({.path = tmp / "ok.csv"}, tabular_task(2), true);
  REQUIRE(ex.inputs.sizes().vec() == std::vector<std::int64_t>{3, 2});
  CHECK(ex.inputs[0][1].item<float>() == doctest::Approx(150.f));
  CHECK(ex.inputs[1][1].item<float>() == doctest::Approx(0.5f));
  CHECK(longs(ex.labels) == std::vector<std::int64_t>{1, 0, 1});
  // Another label column name; an unlabelled pool reads every column.
  chorus::write_file_atomic(tmp / "diag.csv", "a,b,diagnosis\n1,2,healthy\n");
  auto d =
      read_examples({.path = tmp / "diag.csv", .label_column = "diagnosis"},
                    tabular_task(2), true);
  CHECK(d.labels[0].item<std::int64_t>() == 0);
  chorus::write_file_atomic(tmp / "pool.csv", "a,b\n1,2\n3,4\n");
  auto pool = read_examples({.path = tmp / "pool.csv", .label_column = ""},
                            tabular_task(2), false);
  CHECK(pool.size() == 2);
  CHECK_FALSE(pool.labelled());
}

TEST_CASE(
    "csv: ragged rows, bad numbers, NaN and unknown labels name the line") {
  chorus::testing::TempDir tmp;
  auto fails = [&](const std::string& text, Code code,
                   const std::string& expect) {
    chorus::write_file_atomic(tmp / "t.csv", text);
    std::string m;
    CHECK(code_of(
              [&] {
                read_examples({.path = tmp / "t.csv"}, tabular_task(2), true);
              },
              &m) == code);
    CHECK_MESSAGE(contains(m, expect), m);
  };
  fails("a,b,label\n1,2,sick\n3,sick\n", Code::kDataLoss,
        "line 3 has 2 fields, the header has 3");
  fails("a,b,label\n1,x2,sick\n", Code::kInvalidArgument,
        "line 2, column 'b': 'x2' is not a number");
  fails("a,b,label\n1,nan,sick\n", Code::kInvalidArgument, "not a finite");
  fails("a,b,label\n1,inf,sick\n", Code::kInvalidArgument, "not a finite");
  fails("a,b,label\n1,2,dead\n", Code::kInvalidArgument, "label 'dead'");
  fails("a,b,label\n1,2,5\n", Code::kInvalidArgument, "index 0..1");
  fails("a,b,y\n1,2,sick\n", Code::kInvalidArgument,
        "no label column named 'label'");
  fails("a,b,label\n", Code::kDataLoss, "no data rows");
  fails("", Code::kDataLoss, "empty");
  fails("a,b,label\n1,\"2,sick\n", Code::kDataLoss, "not closed");
  fails("a,b,c,label\n1,2,3,sick\n", Code::kInvalidArgument,
        "3 feature columns");
}

namespace {

void write_jpeg(const fs::path& path, int w, int h) {
  std::vector<unsigned char> rgb(static_cast<std::size_t>(w * h * 3), 128);
  tjhandle tj = tjInitCompress();
  REQUIRE(tj != nullptr);
  unsigned char* out = nullptr;
  unsigned long size = 0;
  REQUIRE(tjCompress2(tj, rgb.data(), w, 0, h, TJPF_RGB, &out, &size,
                      TJSAMP_444, 95, 0) == 0);
  chorus::write_file_atomic(path,
                            std::string(reinterpret_cast<char*>(out), size));
  tjFree(out);
  tjDestroy(tj);
}

}  // namespace

TEST_CASE("image folder: PNG and JPEG files, one sub-folder per class name") {
  const auto& d = numpy_files();
  write_jpeg(d / "folder" / "dog" / "2.jpg", 32, 32);
  auto ex = read_examples({.path = d / "folder"}, colour_task(), true);
  REQUIRE(ex.inputs.sizes().vec() == std::vector<std::int64_t>{5, 3, 32, 32});
  CHECK(longs(ex.labels) == std::vector<std::int64_t>{0, 0, 1, 1, 1});
  // The marker pixel (0, 0) = [class, k, 9], channels first.
  CHECK(ex.inputs[3][0][0][0].item<int>() == 1);
  CHECK(ex.inputs[3][1][0][0].item<int>() == 1);
  CHECK(ex.inputs[3][2][0][0].item<int>() == 9);
  // The JPEG of flat grey decodes to about 128.
  CHECK(std::abs(ex.inputs[4].to(torch::kFloat).mean().item<float>() - 128.f) <
        2.f);
  // A grey folder for a 1x8x8 task.
  auto grey = colour_task();
  grey.input_shape = {1, 8, 8};
  auto g = read_examples({.path = d / "grey-folder"}, grey, true);
  CHECK(g.inputs.sizes().vec() == std::vector<std::int64_t>{1, 1, 8, 8});
  CHECK(g.inputs[0][0][0][3].item<int>() == 3);
  // Unknown class folder; wrong size; a corrupt image.
  auto m = error_of(
      [&] { read_examples({.path = d / "odd-folder"}, colour_task(), true); },
      Code::kInvalidArgument);
  CHECK(contains(m, "folder 'zebra' is not a class"));
  m = error_of(
      [&] { read_examples({.path = d / "small-folder"}, colour_task(), true); },
      Code::kInvalidArgument);
  CHECK(contains(m, "16x16"));
  CHECK(contains(m, "32x32"));
  chorus::testing::TempDir tmp;
  fs::create_directories(tmp / "cat");
  auto png = chorus::read_file(d / "folder" / "cat" / "0.png");
  png[png.size() / 2] ^= 0x5a;
  chorus::write_file_atomic(tmp / "cat" / "bad.png", png);
  m = error_of(
      [&] { read_examples({.path = tmp.path()}, colour_task(), true); },
      Code::kDataLoss);
  CHECK(contains(m, "bad.png"));
}

TEST_CASE(
    "normalisation: statistics from raw inputs, and model and wire inputs "
    "round-trip") {
  auto task = colour_task();
  task.normalisation = Normalisation::kPerChannel;
  auto raw =
      torch::randint(0, 256, {20, 3, 32, 32}, torch::kLong).to(torch::kUInt8);
  chorus::fusion::fit_normalisation(task, raw);
  REQUIRE(task.mean.size() == 3);
  auto x = chorus::fusion::to_model_inputs(raw, task);
  CHECK(std::abs(x.select(1, 1).mean().item<float>()) < 1e-4);
  CHECK(std::abs(x.select(1, 2).std(false).item<float>() - 1.f) < 1e-3);
  auto back = chorus::fusion::to_wire_inputs(x, task);
  CHECK((back.scalar_type() == torch::kUInt8));
  CHECK(torch::equal(back, raw));
  // Without normalisation a uint8 task's model inputs are pixels in [0, 1].
  auto plain = colour_task();
  CHECK(chorus::fusion::to_model_inputs(raw, plain).max().item<float>() <= 1.f);
  CHECK(code_of([&] {
          chorus::fusion::to_model_inputs(raw.flatten(1), plain);
        }) == Code::kInvalidArgument);
}

TEST_CASE("built-in sources: the tabular sets of python3-sklearn") {
  if (!fs::exists(chorus::fusion::kSklearnDataDir)) {
    MESSAGE(
        "skipped: python3-sklearn is not installed (scripts/install-deps.sh)");
    return;
  }
  auto b = chorus::fusion::load_builtin("breast-cancer");
  CHECK(b.task.labels.names() ==
        std::vector<std::string>{"malignant", "benign"});
  CHECK(b.task.input_shape == std::vector<std::int64_t>{30});
  CHECK(b.train.size() + b.test.size() == 569);
  CHECK(b.test.size() == 569 / 6);
  auto digits = chorus::fusion::load_builtin("digits");
  CHECK(digits.train.size() + digits.test.size() == 1797);
  CHECK(digits.task.labels.size() == 10);
  CHECK(code_of([] { chorus::fusion::load_builtin("nope"); }) ==
        Code::kInvalidArgument);
  chorus::testing::TempDir empty;
  CHECK(code_of([&] { chorus::fusion::load_builtin("wine", empty.path()); }) ==
        Code::kNotFound);
}

TEST_CASE("task: [task] tables, task files, and mismatches naming both sides") {
  auto c = chorus::Config::parse(
      "[task]\nname = \"pets\"\nlabels = [\"cat\", \"dog\", \"bird\"]\n"
      "input_shape = [3, 32, 32]\ndtype = \"uint8\"\nnormalise = "
      "\"per-channel\"\n"
      "mean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\n",
      "test.toml");
  auto t = chorus::read_task(c, chorus::fashion_mnist_task());
  c.finish();
  CHECK(t.labels.size() == 3);
  CHECK(t.describe_input() == "uint8 [3, 32, 32]");
  // to_toml reads back to the same task.
  auto again = chorus::Config::parse(chorus::to_toml(t), "again");
  CHECK(chorus::read_task(again, chorus::fashion_mnist_task()) == t);
  // Defaults: the fallback task.
  chorus::Config empty;
  CHECK(chorus::read_task(empty, chorus::fashion_mnist_task()) ==
        chorus::fashion_mnist_task());
  // Inconsistent statistics, duplicated labels, a bad dtype.
  auto bad = [](const std::string& text) {
    auto k = chorus::Config::parse(text, "bad.toml");
    std::string m;
    CHECK(code_of([&] { chorus::read_task(k, chorus::fashion_mnist_task()); },
                  &m) == Code::kInvalidArgument);
    return m;
  };
  CHECK(contains(
      bad("[task]\nnormalise = \"per-channel\"\nmean = [1, 2]\nstd = [1, 2]\n"),
      "needs 1 means"));
  CHECK(contains(bad("[task]\nlabels = [\"a\", \"a\"]\n"), "'a' twice"));
  CHECK(contains(bad("[task]\ndtype = \"int8\"\n"), "int8"));
  CHECK(contains(bad("[task]\ninput_shape = [0, 3]\n"), "dimensions"));
  // Mismatches.
  auto m = chorus::task_mismatch(t, {1, 28, 28}, std::nullopt, {"cat"},
                                 "node 'lab'");
  REQUIRE(m.has_value());
  CHECK(contains(*m, "node 'lab' takes inputs of shape [1, 28, 28]"));
  CHECK(contains(*m, "[3, 32, 32]"));
  m = chorus::task_mismatch(t, {3, 32, 32}, std::nullopt, {"cat", "wolf"},
                            "node 'lab'");
  REQUIRE(m.has_value());
  CHECK(contains(*m, "'wolf'"));
  CHECK_FALSE(chorus::task_mismatch(t, {3, 32, 32}, InputDType::kFloat32,
                                    {"dog"}, "x"));
  auto grey = chorus::fashion_mnist_task();
  CHECK_FALSE(
      chorus::task_mismatch(grey, {28, 28}, std::nullopt, {"Bag"}, "x"));
}
