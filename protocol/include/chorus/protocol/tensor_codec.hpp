#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "chorus/v1/chorus.pb.h"

/// Conversion between torch tensors and the wire `chorus.v1.Tensor`
/// (dtype + shape + little-endian contiguous bytes). Pure computation: no
/// Asio, no sockets, so it can be fuzzed on its own.
namespace chorus::protocol {

/// Bounds a decoder enforces before allocating.
struct TensorLimits {
  std::int64_t max_rank = 8;
  std::int64_t max_elements = std::int64_t{1} << 28;  // 1 GiB of float32.
};

/// Writes `tensor` (float32, float16, bfloat16, int64 or uint8; any layout,
/// on the CPU) into `out`. Throws `chorus::Error` (INVALID_ARGUMENT) for
/// another dtype.
void encode_tensor(const at::Tensor& tensor, chorus::v1::Tensor* out);

/// A CPU tensor with the wire tensor's dtype, shape and bytes (a copy: it
/// does not alias the message). Throws `chorus::Error` (INVALID_ARGUMENT)
/// naming the fault: an unknown dtype, a negative dimension, rank or element
/// count above `limits`, or a byte length that is not shape × element size.
at::Tensor decode_tensor(const chorus::v1::Tensor& wire,
                         const TensorLimits& limits = {});

/// Whether a floating-point tensor holds a NaN or an infinity (false for
/// integer tensors).
bool has_non_finite(const at::Tensor& tensor);

}  // namespace chorus::protocol
