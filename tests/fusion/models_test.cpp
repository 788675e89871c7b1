#include "chorus/fusion/models.hpp"

#include <fstream>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/fusion/archive.hpp"
#include "chorus/fusion/fused_model.hpp"
#include "chorus/fusion/train.hpp"
#include "support/corrupt.hpp"
#include "support/doctest.hpp"
#include "support/errors.hpp"
#include "support/temp_dir.hpp"

namespace fu = chorus::fusion;

TEST_CASE("models: every architecture maps [N,1,28,28] to [N, classes]") {
  auto x = torch::rand({3, 1, 28, 28});
  for (const auto& arch : fu::architectures()) {
    CAPTURE(arch);
    auto model =
        fu::make_classifier(fu::ModelSpec{.arch = arch, .num_classes = 7});
    model->eval();
    auto out = model->forward(x);
    CHECK(out.sizes().vec() == std::vector<std::int64_t>{3, 7});
    CHECK(torch::isfinite(out).all().item<bool>());
  }
}

TEST_CASE("models: a spec string round-trips and bad specs are refused") {
  fu::ModelSpec spec{.arch = "mlp",
                     .input_shape = {20},
                     .num_classes = 10,
                     .hidden = {512, 512}};
  CHECK(spec.to_string() == "mlp in=20 classes=10 hidden=512,512");
  CHECK(fu::ModelSpec::parse(spec.to_string()) == spec);
  fu::ModelSpec lenet{.arch = "lenet"};
  CHECK(fu::ModelSpec::parse(lenet.to_string()) == lenet);

  for (const char* bad :
       {"", "lenet", "lenet in=1x28x28", "lenet classes=x in=1",
        "lenet in=1x28x28 classes=10 depth=3",
        "lenet in=1x28x28 classes=10 junk"}) {
    CAPTURE(bad);
    CHECK_THROWS_AS(fu::ModelSpec::parse(bad), chorus::Error);
  }
  CHECK_THROWS_AS(fu::make_classifier(fu::ModelSpec{.arch = "vgg"}),
                  chorus::Error);
  CHECK_THROWS_AS(fu::make_classifier(
                      fu::ModelSpec{.arch = "lenet", .input_shape = {1, 3, 3}}),
                  chorus::Error);
  CHECK_THROWS_AS(
      fu::make_classifier(fu::ModelSpec{.arch = "resnet", .input_shape = {30}}),
      chorus::Error);
  CHECK_THROWS_AS(
      fu::make_classifier(fu::ModelSpec{.arch = "mlp", .num_classes = 0}),
      chorus::Error);
}

TEST_CASE("models: every image architecture takes any channel count and size") {
  for (const auto& arch : {"lenet", "resnet", "mlp"}) {
    for (auto shape : std::vector<std::vector<std::int64_t>>{
             {3, 32, 32}, {1, 28, 14}, {3, 30, 17}, {5, 8, 8}, {1, 5, 4}}) {
      CAPTURE(arch);
      CAPTURE(shape.size());
      auto model = fu::make_classifier(
          fu::ModelSpec{.arch = arch, .input_shape = shape, .num_classes = 7});
      std::vector<std::int64_t> batch{2};
      batch.insert(batch.end(), shape.begin(), shape.end());
      model->eval();
      CHECK(model->forward(torch::rand(batch)).sizes().vec() ==
            std::vector<std::int64_t>{2, 7});
    }
  }
  CHECK(fu::default_architecture({30}) == "mlp");
  CHECK(fu::default_architecture({3, 32, 32}) == "lenet");
  CHECK(fu::default_architecture({1, 2, 2}) == "mlp");
  CHECK(fu::resolve_architecture("auto", {64}) == "mlp");
  CHECK_THROWS_AS(fu::resolve_architecture("lenet", {64}), chorus::Error);
  CHECK_THROWS_AS(fu::resolve_architecture("vgg", {1, 28, 28}), chorus::Error);
}

TEST_CASE("fused model: save and load reproduce the predictions exactly") {
  chorus::testing::TempDir dir;
  auto x = torch::rand({4, 1, 28, 28});
  for (const auto& arch : fu::architectures()) {
    CAPTURE(arch);
    torch::manual_seed(1);
    fu::FusedModel fused{.algorithm = "distill",
                         .spec = fu::ModelSpec{.arch = arch, .num_classes = 10},
                         .attributes = {{"teacher", "B+"}},
                         .model = nullptr};
    fused.model = fu::make_classifier(fused.spec);
    // Move BatchNorm statistics away from their defaults.
    fused.model->train();
    fused.model->forward(torch::rand({8, 1, 28, 28}) * 3);
    fu::save_fused_model(fused, dir / (arch + ".pt"));
    auto loaded = fu::load_fused_model(dir / (arch + ".pt"));
    CHECK(loaded.algorithm == "distill");
    CHECK(loaded.spec == fused.spec);
    CHECK(loaded.attributes.at("teacher") == "B+");
    CHECK(torch::equal(fu::predict_proba(*loaded.model, x),
                       fu::predict_proba(*fused.model, x)));
  }
}

TEST_CASE("fused model: missing and corrupt files are refused precisely") {
  chorus::testing::TempDir dir;
  try {
    fu::load_fused_model(dir / "absent.pt");
    FAIL("no error");
  } catch (const chorus::Error& e) {
    CHECK(e.code() == chorus::Code::kNotFound);
  }
  std::ofstream(dir / "garbage.pt") << "not a zip archive";
  try {
    fu::load_fused_model(dir / "garbage.pt");
    FAIL("no error");
  } catch (const chorus::Error& e) {
    CHECK(e.code() == chorus::Code::kDataLoss);
    CHECK(std::string(e.what()).find("garbage.pt") != std::string::npos);
  }
  // A valid archive that is not a fused model.
  torch::serialize::OutputArchive other;
  other.write("weights", torch::ones({2}));
  other.save_to((dir / "other.pt").string());
  try {
    fu::load_fused_model(dir / "other.pt");
    FAIL("no error");
  } catch (const chorus::Error& e) {
    CHECK(e.code() == chorus::Code::kDataLoss);
  }
}

TEST_CASE(
    "fused model: a file altered after it was written is refused, naming the "
    "file and the entry") {
  chorus::testing::TempDir dir;
  torch::manual_seed(2);
  fu::FusedModel fused{.algorithm = "distill",
                       .spec = fu::ModelSpec{.arch = "mlp", .num_classes = 10},
                       .attributes = {},
                       .model = nullptr};
  fused.model = fu::make_classifier(fused.spec);
  const auto file = dir / "fused.pt";
  fu::save_fused_model(fused, file);
  CHECK_NOTHROW(fu::verify_archive(chorus::read_file(file), file));
  // 8 bytes flipped inside the first layer's weights.
  REQUIRE(chorus::testing::flip_payload(
      file, fused.model->parameters().front().detach()));
  std::string msg;
  CHECK(chorus::testing::code_of([&] { fu::load_fused_model(file); }, &msg) ==
        chorus::Code::kDataLoss);
  CHECK(msg.find("fused.pt") != std::string::npos);
  CHECK(msg.find("checksum") != std::string::npos);
  CHECK(msg.find("entry '") != std::string::npos);

  // Truncated: not a whole archive.
  fu::save_fused_model(fused, file);
  auto bytes = chorus::read_file(file);
  chorus::write_file_atomic(file, bytes.substr(0, bytes.size() - 100));
  CHECK(chorus::testing::code_of([&] { fu::load_fused_model(file); }, &msg) ==
        chorus::Code::kDataLoss);
  CHECK(msg.find("not a whole zip archive") != std::string::npos);
}
