#pragma once

#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>

/// Adam and AdamW as LibTorch defines them, each parameter updated in one
/// vectorised pass over its memory instead of about ten tensor operations
/// (the optimizer step was a quarter of a small MLP's training step).
/// Options, state and serialisation are torch::optim::Adam's and AdamW's;
/// amsgrad, sparse or non-float parameters take LibTorch's own step.
namespace chorus::fusion {

class FusedAdam final : public torch::optim::Adam {
 public:
  using torch::optim::Adam::Adam;
  torch::Tensor step(LossClosure closure = nullptr) override;
};

class FusedAdamW final : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  torch::Tensor step(LossClosure closure = nullptr) override;
};

}  // namespace chorus::fusion
