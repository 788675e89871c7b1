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
  CHECK(msg ==
        "tensor of shape [2, 3] and dtype float32 needs 24 bytes, got 23");
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

TEST_CASE("codec: answers that are not distributions are named") {
  auto p = torch::softmax(torch::randn({6, 4}), 1);
  CHECK_FALSE(pr::distribution_problem(p).has_value());
  CHECK_FALSE(pr::distribution_problem(p.to(torch::kHalf)).has_value());
  // Top-k and label-only answers: part of the mass, or a one-hot row.
  auto top2 = p.clone();
  top2.select(1, 0).zero_();
  top2.select(1, 1).zero_();
  CHECK_FALSE(pr::distribution_problem(top2).has_value());
  CHECK_FALSE(
      pr::distribution_problem(torch::eye(4).slice(0, 0, 3)).has_value());
  // One poisoned value, scaled rows, NaN, an empty row.
  auto poisoned = p.clone();
  poisoned[2][1] = -32427.0;
  auto why = pr::distribution_problem(poisoned);
  REQUIRE(why.has_value());
  CHECK(chorus::testing::contains(*why, "-32427"));
  why = pr::distribution_problem(p * 1e6);
  REQUIRE(why.has_value());
  CHECK(chorus::testing::contains(*why, "probabilities lie in [0, 1]"));
  why = pr::distribution_problem(p * 0.9 + 0.09);  // rows sum to 1.26
  REQUIRE(why.has_value());
  CHECK(chorus::testing::contains(*why, "each row must sum to 1"));
  auto nan = p.clone();
  nan[0][0] = std::nanf("");
  CHECK(pr::distribution_problem(nan) == std::string("NaN or infinite values"));
  auto empty_row = p.clone();
  empty_row[4].zero_();
  CHECK(pr::distribution_problem(empty_row).has_value());
  CHECK(pr::distribution_problem(torch::ones({3})).has_value());
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
