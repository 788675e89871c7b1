#include "chorus/protocol/tensor_codec.hpp"

#include "chorus/core/error.hpp"
#include "support/doctest.hpp"
#include "support/errors.hpp"
#include "support/wire.hpp"

namespace pr = chorus::protocol;
using chorus::testing::code_of;

namespace {}  // namespace

TEST_CASE("codec: every wire dtype round-trips bit for bit") {
  for (auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16,
                     torch::kLong, torch::kByte}) {
    CAPTURE(c10::toString(dtype));
    auto t = (torch::rand({3, 1, 4, 5}) * 200).to(dtype);
    chorus::v1::Tensor wire;
    chorus::testing::encode_tensor(t, &wire);
    CHECK(wire.shape_size() == 4);
    CHECK(wire.data().size() ==
          static_cast<std::size_t>(t.numel() * t.element_size()));
    auto back = chorus::testing::decode_tensor(wire);
    CHECK(chorus::testing::dtype_name(back) == chorus::testing::dtype_name(t));
    CHECK(torch::equal(back, t));
  }
}

TEST_CASE(
    "codec: non-contiguous and rank-0 tensors are encoded as their values") {
  auto t = torch::arange(12, torch::kFloat).reshape({3, 4}).t();
  chorus::v1::Tensor wire;
  chorus::testing::encode_tensor(t, &wire);
  CHECK(torch::equal(chorus::testing::decode_tensor(wire), t));
  chorus::testing::encode_tensor(torch::tensor(7.5f), &wire);
  CHECK(wire.shape_size() == 0);
  CHECK(chorus::testing::decode_tensor(wire).item<float>() == 7.5f);
  CHECK(code_of([&] {
          chorus::testing::encode_tensor(torch::zeros({2}, torch::kDouble),
                                         &wire);
        }) == chorus::Code::kInvalidArgument);
}

TEST_CASE("codec: a tensor whose bytes do not match its shape is refused") {
  chorus::v1::Tensor wire;
  chorus::testing::encode_tensor(torch::zeros({2, 3}), &wire);
  wire.mutable_data()->pop_back();
  std::string msg;
  CHECK(code_of([&] { chorus::testing::decode_tensor(wire); }, &msg) ==
        chorus::Code::kInvalidArgument);
  CHECK(msg == "tensor of shape [2, 3] and dtype Float needs 24 bytes, got 23");
}

TEST_CASE("codec: hostile shapes are refused before allocating") {
  chorus::v1::Tensor wire;
  wire.set_dtype(chorus::v1::DTYPE_FLOAT32);
  std::string msg;
  for (auto d : {1'000'000'000'000ll, 1ll << 62, 1ll << 62}) wire.add_shape(d);
  CHECK(code_of([&] { chorus::testing::decode_tensor(wire); }, &msg) ==
        chorus::Code::kInvalidArgument);
  CHECK(msg.find("exceeds the maximum") != std::string::npos);

  wire.clear_shape();
  wire.add_shape(-4);
  CHECK(code_of([&] { chorus::testing::decode_tensor(wire); }, &msg) ==
        chorus::Code::kInvalidArgument);
  CHECK(msg.find("negative dimension") != std::string::npos);

  wire.clear_shape();
  for (int i = 0; i < 9; ++i) wire.add_shape(1);
  CHECK(code_of([&] { chorus::testing::decode_tensor(wire, {.max_rank = 8}); },
                &msg) == chorus::Code::kInvalidArgument);

  wire.clear_shape();
  wire.set_dtype(static_cast<chorus::v1::DType>(42));
  CHECK(code_of([&] { chorus::testing::decode_tensor(wire); }, &msg) ==
        chorus::Code::kInvalidArgument);
  CHECK(msg.find("unknown dtype 42") != std::string::npos);

  wire.set_dtype(chorus::v1::DTYPE_UNSPECIFIED);
  CHECK(code_of([&] { chorus::testing::decode_tensor(wire); }) ==
        chorus::Code::kInvalidArgument);
}

TEST_CASE("codec: NaN and infinity are detected for callers") {
  CHECK_FALSE(pr::has_non_finite(torch::rand({4, 4})));
  CHECK(pr::has_non_finite(torch::tensor({1.0f, NAN})));
  CHECK(pr::has_non_finite(torch::tensor({1.0f, INFINITY}).to(torch::kHalf)));
  CHECK_FALSE(pr::has_non_finite(torch::tensor({1, 2}, torch::kLong)));
}

TEST_CASE("codes: the wire Code enum mirrors chorus::Code value for value") {
  const auto* descriptor = chorus::v1::Code_descriptor();
  int mirrored = 0;
  for (int i = 0; i < descriptor->value_count(); ++i) {
    const auto* value = descriptor->value(i);
    auto code = static_cast<chorus::Code>(value->number());
    CAPTURE(value->name());
    CHECK(value->name() == "CODE_" + std::string(chorus::code_name(code)));
    ++mirrored;
  }
  CHECK(mirrored == 16);
}
