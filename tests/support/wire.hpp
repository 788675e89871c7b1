#pragma once
// Torch tensors straight to and from the wire's chorus.v1.Tensor, for tests
// that build envelopes by hand (the library goes through TensorBlob).
#include "chorus/protocol/codec.hpp"
#include "chorus/protocol/tensor_codec.hpp"

namespace chorus::testing {

inline void encode_tensor(const at::Tensor& tensor, v1::Tensor* out) {
  protocol::encode_blob(protocol::to_blob(tensor), out);
}

inline at::Tensor decode_tensor(const v1::Tensor& wire,
                                const protocol::TensorLimits& limits = {}) {
  return protocol::to_tensor(protocol::decode_blob(wire), limits);
}

}  // namespace chorus::testing
