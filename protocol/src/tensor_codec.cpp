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
  chorus::v1::DType wire;
  at::ScalarType torch;
  std::int64_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {chorus::v1::DTYPE_FLOAT32, at::kFloat, 4},
    {chorus::v1::DTYPE_FLOAT16, at::kHalf, 2},
    {chorus::v1::DTYPE_BFLOAT16, at::kBFloat16, 2},
    {chorus::v1::DTYPE_INT64, at::kLong, 8},
    {chorus::v1::DTYPE_UINT8, at::kByte, 1},
};

}  // namespace

void encode_tensor(const at::Tensor& tensor, chorus::v1::Tensor* out) {
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
  out->set_dtype(info->wire);
  out->clear_shape();
  for (auto d : t.sizes()) out->add_shape(d);
  out->set_data(static_cast<const char*>(t.data_ptr()),
                static_cast<std::size_t>(t.numel() * info->size));
}

at::Tensor decode_tensor(const chorus::v1::Tensor& wire,
                         const TensorLimits& limits) {
  const DTypeInfo* info = nullptr;
  for (const auto& d : kDTypes) {
    if (d.wire == wire.dtype()) info = &d;
  }
  CHORUS_CHECK(info != nullptr, "tensor has unknown dtype {}",
               static_cast<int>(wire.dtype()));
  CHORUS_CHECK(wire.shape_size() <= limits.max_rank,
               "tensor of rank {} exceeds the maximum rank {}",
               wire.shape_size(), limits.max_rank);
  std::vector<std::int64_t> shape(wire.shape().begin(), wire.shape().end());
  std::int64_t elements = 1;
  for (auto d : shape) {
    CHORUS_CHECK(d >= 0, "tensor has a negative dimension {}", d);
    // Checked before multiplying, so the product cannot overflow.
    CHORUS_CHECK(d == 0 || elements <= limits.max_elements / d,
                 "tensor of shape [{}] exceeds the maximum of {} elements",
                 fmt::join(shape, ", "), limits.max_elements);
    elements *= d;
  }
  const auto expected = static_cast<std::uint64_t>(elements * info->size);
  CHORUS_CHECK(wire.data().size() == expected,
               "tensor of shape [{}] and dtype {} needs {} bytes, got {}",
               fmt::join(shape, ", "), c10::toString(info->torch), expected,
               wire.data().size());
  auto out = at::empty(shape, at::TensorOptions().dtype(info->torch));
  if (expected > 0) std::memcpy(out.data_ptr(), wire.data().data(), expected);
  return out;
}

bool has_non_finite(const at::Tensor& tensor) {
  if (!tensor.is_floating_point() || tensor.numel() == 0) return false;
  return !at::isfinite(tensor).all().item<bool>();
}

}  // namespace chorus::protocol
