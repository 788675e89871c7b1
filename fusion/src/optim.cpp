#include "chorus/fusion/optim.hpp"

#include <ATen/Parallel.h>
#include <c10/util/string_utils.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>

#include "kernels.hpp"

namespace chorus::fusion {
namespace {

// Whether p, its gradient and its moments can be walked as one flat array.
bool flat(const torch::Tensor& p, const torch::Tensor& g) {
  return p.is_cpu() && p.scalar_type() == torch::kFloat32 &&
         g.scalar_type() == torch::kFloat32 && !g.is_sparse() &&
         p.is_non_overlapping_and_dense() && g.strides() == p.strides();
}

template <typename Options, typename State>
void fused_step(std::vector<torch::optim::OptimizerParamGroup>& groups,
                auto& states, bool decoupled) {
  torch::NoGradGuard no_grad;
  for (auto& group : groups) {
    const auto& options = static_cast<const Options&>(group.options());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      const auto& grad = p.grad();
      auto key = c10::guts::to_string(p.unsafeGetTensorImpl());
      auto it = states.find(key);
      if (it == states.end()) {
        auto state = std::make_unique<State>();
        state->step(0);
        state->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        state->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        it = states.emplace(std::move(key), std::move(state)).first;
      }
      auto& state = static_cast<State&>(*it->second);
      state.step(state.step() + 1);
      const auto [beta1, beta2] = options.betas();
      const double bc1 = 1 - std::pow(beta1, state.step());
      const double bc2 = 1 - std::pow(beta2, state.step());
      const kernels::AdamStep s{
          .lr = static_cast<float>(options.lr()),
          .beta1 = static_cast<float>(beta1),
          .beta2 = static_cast<float>(beta2),
          .eps = static_cast<float>(options.eps()),
          .weight_decay = static_cast<float>(options.weight_decay()),
          .decoupled = decoupled,
          .bias_correction1 = static_cast<float>(bc1),
          .bias_correction2_sqrt = static_cast<float>(std::sqrt(bc2))};
      torch::Tensor& m = state.exp_avg();
      torch::Tensor& v = state.exp_avg_sq();
      float* pp = p.data_ptr<float>();
      const float* gp = grad.data_ptr<float>();
      float* mp = m.data_ptr<float>();
      float* vp = v.data_ptr<float>();
      at::parallel_for(0, p.numel(), 1 << 14,
                       [&](std::int64_t begin, std::int64_t end) {
                         kernels::adam(pp, gp, mp, vp, begin, end, s);
                       });
    }
  }
}

// Whether every parameter with a gradient can take the fused step: no
// amsgrad, float32 tensors walkable as one flat array.
template <typename Options>
bool fusable(const std::vector<torch::optim::OptimizerParamGroup>& groups) {
  for (const auto& group : groups) {
    if (static_cast<const Options&>(group.options()).amsgrad()) return false;
    for (const auto& p : group.params()) {
      if (p.grad().defined() && !flat(p, p.grad())) return false;
    }
  }
  return true;
}

// The closure first (it computes the gradients), then the fused step, or
// LibTorch's own when some parameter cannot take it.
template <typename Options, typename State>
torch::Tensor fused_or_libtorch(
    std::vector<torch::optim::OptimizerParamGroup>& groups, auto& states,
    const torch::optim::Optimizer::LossClosure& closure, bool decoupled,
    const std::function<void()>& libtorch_step) {
  torch::Tensor loss;
  if (closure) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  if (fusable<Options>(groups)) {
    fused_step<Options, State>(groups, states, decoupled);
  } else {
    libtorch_step();
  }
  return loss;
}

}  // namespace

torch::Tensor FusedAdam::step(LossClosure closure) {
  return fused_or_libtorch<torch::optim::AdamOptions,
                           torch::optim::AdamParamState>(
      param_groups_, state_, closure, /*decoupled=*/false,
      [this] { torch::optim::Adam::step(); });
}

torch::Tensor FusedAdamW::step(LossClosure closure) {
  return fused_or_libtorch<torch::optim::AdamWOptions,
                           torch::optim::AdamWParamState>(
      param_groups_, state_, closure, /*decoupled=*/true,
      [this] { torch::optim::AdamW::step(); });
}

}  // namespace chorus::fusion
