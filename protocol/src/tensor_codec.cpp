#include "chorus/protocol/tensor_codec.hpp"

#include <ATen/ATen.h>
#include <fmt/ranges.h>

#include <bit>
#include <cstring>
#include <limits>

#include "chorus/core/error.hpp"

namespace chorus::protocol {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the wire is little-endian; big-endian hosts need byte swaps");

struct DTypeInfo {
  DType wire;
  at::ScalarType torch;
  std::int64_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kFloat32, at::kFloat, 4},     {DType::kFloat16, at::kHalf, 2},
    {DType::kBFloat16, at::kBFloat16, 2}, {DType::kInt64, at::kLong, 8},
    {DType::kUInt8, at::kByte, 1},
};

}  // namespace

TensorBlob to_blob(const at::Tensor& tensor) {
  CHORUS_CHECK(tensor.defined(), "cannot encode an undefined tensor");
  const DTypeInfo* info = nullptr;
  for (const auto& d : kDTypes) {
    if (d.torch == tensor.scalar_type()) info = &d;
  }
  CHORUS_CHECK(info != nullptr,
               "tensors of dtype {} cannot go on the wire (float32, float16, "
               "bfloat16, int64 or uint8)",
               c10::toString(tensor.scalar_type()));
  auto t = tensor.device().is_cpu() ? tensor.contiguous()
                                    : tensor.to(at::kCPU).contiguous();
  TensorBlob out;
  out.dtype = info->wire;
  out.shape.assign(t.sizes().begin(), t.sizes().end());
  out.data.assign(static_cast<const char*>(t.data_ptr()),
                  static_cast<std::size_t>(t.numel() * info->size));
  return out;
}

at::Tensor to_tensor(const TensorBlob& wire, const TensorLimits& limits) {
  const auto elements = checked_elements(wire, limits);
  const DTypeInfo* info = nullptr;
  for (const auto& d : kDTypes) {
    if (d.wire == wire.dtype) info = &d;
  }
  CHORUS_CHECK(info != nullptr, "tensor has unknown dtype {}",
               dtype_name(wire.dtype));
  auto out = at::empty(wire.shape, at::TensorOptions().dtype(info->torch));
  if (elements > 0)
    std::memcpy(out.data_ptr(), wire.data.data(), wire.data.size());
  return out;
}

bool has_non_finite(const at::Tensor& tensor) {
  if (!tensor.is_floating_point() || tensor.numel() == 0) return false;
  return !at::isfinite(tensor).all().item<bool>();
}

std::optional<std::string> distribution_problem(const at::Tensor& answers) {
  constexpr double kTolerance = 0.01;
  if (answers.dim() != 2) {
    return fmt::format("answers of {} dimensions, not [inputs, labels]",
                       answers.dim());
  }
  if (answers.numel() == 0) return std::nullopt;
  if (!answers.is_floating_point()) {
    return "answers that are not floating-point probabilities";
  }
  if (has_non_finite(answers)) return "NaN or infinite values";
  auto p = answers.to(at::kDouble);
  const double lo = p.min().item<double>(), hi = p.max().item<double>();
  if (lo < -kTolerance || hi > 1 + kTolerance) {
    return fmt::format("values from {:g} to {:g}: probabilities lie in [0, 1]",
                       lo, hi);
  }
  auto sums = p.sum(1);
  const double smin = sums.min().item<double>();
  const double smax = sums.max().item<double>();
  if (smin <= 0 || smax > 1 + kTolerance) {
    return fmt::format(
        "rows that sum to {:g}..{:g}: each row must sum to 1 (or less, for "
        "a top-k answer)",
        smin, smax);
  }
  return std::nullopt;
}

}  // namespace chorus::protocol
