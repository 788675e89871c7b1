#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "chorus/protocol/messages.hpp"

/// Conversion between torch tensors and `TensorBlob`, the form a tensor
/// travels in (dtype + shape + little-endian contiguous bytes; codec.hpp puts
/// it on the wire). Pure computation: no Asio, no sockets, no protobuf, so it
/// can be fuzzed on its own.
namespace chorus::protocol {

/// `tensor` (float32, float16, bfloat16, int64 or uint8; any layout, on the
/// CPU) as a blob. Throws `chorus::Error` (INVALID_ARGUMENT) for another
/// dtype.
TensorBlob to_blob(const at::Tensor& tensor);

/// A CPU tensor with the blob's dtype, shape and bytes (a copy: it does not
/// alias the blob), allocated only once `checked_elements` (messages.hpp)
/// accepts the blob; its `chorus::Error` otherwise.
at::Tensor to_tensor(const TensorBlob& blob, const TensorLimits& limits = {});

/// Whether a floating-point tensor holds a NaN or an infinity (false for
/// integer tensors).
bool has_non_finite(const at::Tensor& tensor);

/// Why `answers` [N, C] are not an expert's answers — rows of values in
/// [0, 1] that sum to 1, or to less for a top-k answer (the rest of the mass
/// withheld) — naming the offending values; nullopt when they are. A
/// tolerance of 0.01 allows for float16 on the wire.
std::optional<std::string> distribution_problem(const at::Tensor& answers);

}  // namespace chorus::protocol
