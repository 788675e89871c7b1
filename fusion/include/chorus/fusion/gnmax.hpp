#pragma once

#include <ATen/core/Generator.h>
#include <torch/types.h>

#include <vector>

/// GNMax (Papernot et al., ICLR 2018; ALGORITHMS.md §6): answers as the
/// argmax of the teachers' vote histogram plus Gaussian noise. Any change of
/// one teacher's training data moves at most one vote (L2 sensitivity √2),
/// so each answer is a Gaussian mechanism whose cost `privacy::gnmax_epsilon`
/// accounts, whatever the number of teachers: with one teacher the noise
/// drowns its single vote, with many it mostly does not.
namespace chorus::fusion {

/// The vote histogram float32 [N, C]: for each input, how many of
/// `teachers` (each [N, C] scores or probabilities, at least one) rank each
/// class first. Throws `chorus::Error` for teachers of different shapes.
torch::Tensor vote_histogram(const std::vector<torch::Tensor>& teachers);

/// One-hot float32 [N, C]: argmax(votes + N(0, sigma²)) per row, the noise
/// drawn from `gen` (not locked here: callers that share `gen` between
/// threads hold their own lock around the call). Throws `chorus::Error` for
/// a sigma that is not positive and finite.
torch::Tensor noisy_argmax(const torch::Tensor& votes, double sigma,
                           at::Generator& gen);

}  // namespace chorus::fusion
