#include "chorus/fusion/random.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <mutex>

#include "chorus/core/error.hpp"
#include "kernels.hpp"

namespace chorus::fusion {
namespace {

// LibTorch's reset_parameters of Linear and ConvNd (torch/nn/modules):
// kaiming_uniform_(weight, a = √5), then the bias uniform in ±1/√fan_in.
void reset_from(torch::Tensor& weight, torch::Tensor& bias,
                at::Generator& gen) {
  namespace init = torch::nn::init;
  const auto [fan_in, fan_out] = init::_calculate_fan_in_and_fan_out(weight);
  (void)fan_out;
  const double gain = init::calculate_gain(torch::kLeakyReLU, std::sqrt(5));
  const double std = gain / std::sqrt(fan_in);
  const double bound = std::sqrt(3.0) * std;
  // Drawn in logical order whatever the tensor's memory format (the zoo's
  // convolutions keep their weights channels-last).
  auto draw = [&](torch::Tensor& t, double b) {
    t.copy_(torch::empty(t.sizes(), t.options()).uniform_(-b, b, gen));
  };
  draw(weight, bound);
  if (bias.defined()) draw(bias, 1 / std::sqrt(fan_in));
}

}  // namespace

at::Generator make_generator(std::uint64_t seed) {
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

void initialise(torch::nn::Module& module, at::Generator& gen) {
  torch::NoGradGuard no_grad;
  for (const auto& m : module.modules(/*include_self=*/true)) {
    if (auto* linear = m->as<torch::nn::Linear>()) {
      reset_from(linear->weight, linear->bias, gen);
    } else if (auto* conv1 = m->as<torch::nn::Conv1d>()) {
      reset_from(conv1->weight, conv1->bias, gen);
    } else if (auto* conv2 = m->as<torch::nn::Conv2d>()) {
      reset_from(conv2->weight, conv2->bias, gen);
    } else if (auto* conv3 = m->as<torch::nn::Conv3d>()) {
      reset_from(conv3->weight, conv3->bias, gen);
    }
  }
}

torch::Tensor dropout(const torch::Tensor& x, double p, bool training,
                      at::Generator& gen) {
  CHORUS_CHECK(p >= 0 && p <= 1, "dropout probability {} is not in [0, 1]", p);
  if (!training || p == 0 || x.numel() == 0) return x;
  if (p == 1) return x * torch::zeros({}, x.options());
  constexpr auto kMaxElements =
      static_cast<std::int64_t>(std::numeric_limits<std::uint32_t>::max());
  if (!x.is_cpu() || x.scalar_type() != torch::kFloat32 ||
      x.numel() > kMaxElements) {
    // at::dropout's way: a Bernoulli(1 − p) mask scaled by 1 / (1 − p).
    auto noise = torch::empty_like(x).bernoulli_(1 - p, gen);
    noise.div_(1 - p);
    return x * noise;
  }
  // The same distribution, drawn by hashing a 64-bit key from `gen` with
  // each element's index: one pass instead of a Mersenne-Twister draw per
  // element (bernoulli_ was a fifth of a small MLP's training step).
  std::uint64_t key = 0;
  {
    std::lock_guard lock(gen.mutex());
    key = gen.get<at::CPUGeneratorImpl>()->random64();
  }
  const double keep = 1 - p;
  const auto keep_below = static_cast<std::uint32_t>(
      std::min(std::ldexp(keep, 32),
               static_cast<double>(std::numeric_limits<std::uint32_t>::max())));
  const auto scale = static_cast<float>(1 / keep);
  auto mask = torch::empty(x.sizes(), x.options());
  float* out = mask.data_ptr<float>();
  at::parallel_for(
      0, mask.numel(), 1 << 15, [&](std::int64_t begin, std::int64_t end) {
        kernels::dropout_mask(out, begin, end, key, keep_below, scale);
      });
  return x * mask;
}

}  // namespace chorus::fusion
