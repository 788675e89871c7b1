#pragma once

#include <ATen/core/Generator.h>
#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstdint>

/// Randomness passed by the caller: every draw of chorus's training,
/// fusion and adaptation comes from a generator the caller seeds, never
/// from torch's process-wide default generator. Nothing here reseeds the
/// process, and two models trained at once on two threads do not share a
/// random stream.
namespace chorus::fusion {

/// A CPU generator of its own, seeded with `seed`. It produces the stream
/// torch's default generator would after `torch::manual_seed(seed)`.
at::Generator make_generator(std::uint64_t seed);

/// Draws the weights and biases of every Linear and convolution layer of
/// `module` (and its descendants, in registration order) afresh from `gen`,
/// exactly as LibTorch initialises them: kaiming-uniform with a = √5 for
/// weights, uniform in ±1/√fan_in for biases. Other layers (BatchNorm's ones
/// and zeros) are left as built.
void initialise(torch::nn::Module& module, at::Generator& gen);

/// Inverted dropout of `x` with probability `p`, its mask drawn from `gen`:
/// each element kept with probability 1 − p and scaled by 1 / (1 − p), as
/// torch::dropout does. On the CPU the mask is a hash of one 64-bit draw
/// from `gen` and the element's index, so it is the same whatever the
/// number of threads. The identity when not `training` or `p` is 0.
torch::Tensor dropout(const torch::Tensor& x, double p, bool training,
                      at::Generator& gen);

}  // namespace chorus::fusion
