#include "chorus/fusion/dp_sgd.hpp"

#include <fmt/format.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <numbers>
#include <optional>

#include "chorus/core/error.hpp"
#include "chorus/core/privacy.hpp"
#include "chorus/core/progress.hpp"
#include "chorus/fusion/optim.hpp"
#include "chorus/fusion/random.hpp"

namespace chorus::fusion {
namespace {

namespace F = torch::nn::functional;

// One parameter's per-example gradients: materialised [B, shape...], or for
// a Linear weight on [B, in] inputs the rank-one factors g_i a_iᵀ, whose
// norms and clipped sum need no [B, out, in] tensor.
struct Contribution {
  torch::Tensor per_example;
  torch::Tensor g, a;

  torch::Tensor squared_norms() const {
    if (per_example.defined()) return per_example.flatten(1).pow(2).sum(1);
    return g.pow(2).sum(1) * a.pow(2).sum(1);
  }
  // Σ_i c_i · grad_i.
  torch::Tensor weighted_sum(const torch::Tensor& c) const {
    if (!per_example.defined()) return (g * c.unsqueeze(1)).t().mm(a);
    std::vector<std::int64_t> shape(static_cast<std::size_t>(per_example.dim()),
                                    1);
    shape[0] = c.size(0);
    return (per_example * c.view(shape)).sum(0);
  }
  torch::Tensor materialised() const {
    if (per_example.defined()) return per_example;
    return g.unsqueeze(2) * a.unsqueeze(1);
  }
};

std::int64_t single(const torch::ExpandingArray<2>& a, const char* what) {
  CHORUS_CHECK_CODE((*a)[0] == (*a)[1], Code::kFailedPrecondition,
                    "DP-SGD: non-square convolution {} {}x{}", what, (*a)[0],
                    (*a)[1]);
  return (*a)[0];
}

// The per-example gradients of one recorded layer's parameters, from its
// input and the gradient of the summed loss at its output.
void contributions_of(const RecordedLayer& layer, const torch::Tensor& grad,
                      std::map<const void*, Contribution>& out) {
  auto put = [&](const torch::Tensor& param, Contribution c) {
    if (!param.defined()) return;
    CHORUS_CHECK_CODE(!out.count(param.unsafeGetTensorImpl()),
                      Code::kFailedPrecondition,
                      "DP-SGD: a parameter is used twice in one forward pass; "
                      "its per-example gradients are not computed");
    out.emplace(param.unsafeGetTensorImpl(), std::move(c));
  };
  const auto b = grad.size(0);
  switch (layer.kind) {
    case RecordedLayer::Kind::kLinear: {
      auto* m = layer.module->as<torch::nn::Linear>();
      if (layer.input.dim() == 2) {
        put(m->weight, {.g = grad, .a = layer.input});
      } else {
        auto a = layer.input.reshape({b, -1, layer.input.size(-1)});
        auto g = grad.reshape({b, -1, grad.size(-1)});
        put(m->weight, {.per_example = torch::bmm(g.transpose(1, 2), a)});
      }
      put(m->bias,
          {.per_example = grad.reshape({b, -1, grad.size(-1)}).sum(1)});
      break;
    }
    case RecordedLayer::Kind::kConv2d: {
      auto* m = layer.module->as<torch::nn::Conv2d>();
      const auto& o = m->options;
      CHORUS_CHECK_CODE(o.groups() == 1, Code::kFailedPrecondition,
                        "DP-SGD: grouped convolutions are not supported");
      const auto* padding = c10::get_if<torch::ExpandingArray<2>>(&o.padding());
      CHORUS_CHECK_CODE(padding != nullptr, Code::kFailedPrecondition,
                        "DP-SGD: convolutions need a numeric padding");
      auto unfolded = F::unfold(
          layer.input, F::UnfoldFuncOptions({single(o.kernel_size(), "kernel"),
                                             single(o.kernel_size(), "kernel")})
                           .dilation(single(o.dilation(), "dilation"))
                           .padding(single(*padding, "padding"))
                           .stride(single(o.stride(), "stride")));
      auto g = grad.reshape({b, grad.size(1), -1});
      auto shape = m->weight.sizes().vec();
      shape.insert(shape.begin(), b);
      put(m->weight,
          {.per_example =
               torch::bmm(g, unfolded.transpose(1, 2)).reshape(shape)});
      put(m->bias, {.per_example = g.sum(2)});
      break;
    }
    case RecordedLayer::Kind::kGroupNorm: {
      auto* m = layer.module->as<torch::nn::GroupNorm>();
      auto g = grad.reshape({b, grad.size(1), -1});
      auto a = layer.input.reshape({b, grad.size(1), -1});
      put(m->weight, {.per_example = (g * a).sum(2)});
      put(m->bias, {.per_example = g.sum(2)});
      break;
    }
  }
}

// Every trainable parameter's contribution, in `parameters()` order, and
// the summed loss.
struct PerExample {
  std::vector<Contribution> params;
  double loss = 0;
};

PerExample per_example(ClassifierImpl& model, const torch::Tensor& x,
                       const torch::Tensor& y) {
  CHORUS_CHECK(x.size(0) == y.size(0) && y.scalar_type() == torch::kLong,
               "DP-SGD: needs int64 labels, one per input ({} inputs, {} "
               "labels)",
               x.size(0), y.size(0));
  LayerRecorder recorder;
  model.set_recorder(&recorder);
  torch::Tensor loss;
  try {
    loss =
        F::cross_entropy(model.forward(x), y,
                         F::CrossEntropyFuncOptions().reduction(torch::kSum));
  } catch (...) {
    model.set_recorder(nullptr);
    throw;
  }
  model.set_recorder(nullptr);
  std::vector<torch::Tensor> outputs;
  for (const auto& l : recorder.layers) outputs.push_back(l.output);
  const auto grads = torch::autograd::grad({loss}, outputs);
  std::map<const void*, Contribution> by_param;
  for (std::size_t i = 0; i < recorder.layers.size(); ++i)
    contributions_of(recorder.layers[i], grads[i], by_param);
  PerExample out;
  out.loss = loss.item<double>();
  for (const auto& item : model.named_parameters()) {
    const auto& name = item.key();
    const auto& p = item.value();
    if (!p.requires_grad()) continue;
    auto it = by_param.find(p.unsafeGetTensorImpl());
    CHORUS_CHECK_CODE(
        it != by_param.end(), Code::kFailedPrecondition,
        "DP-SGD cannot compute per-example gradients of '{}': only Linear, "
        "Conv2d and GroupNorm layers record them (BatchNorm mixes the "
        "examples of a batch; train lenet with norm=group, or the mlp)",
        name);
    out.params.push_back(std::move(it->second));
  }
  return out;
}

struct Step {
  torch::Tensor norms;
  double loss = 0;
};

Step dp_gradient(ClassifierImpl& model, const torch::Tensor& x,
                 const torch::Tensor& y, double max_grad_norm,
                 double noise_multiplier, double expected_batch,
                 at::Generator& gen) {
  CHORUS_CHECK(max_grad_norm > 0 && noise_multiplier >= 0 && expected_batch > 0,
               "DP-SGD: need max_grad_norm > 0, noise_multiplier >= 0 and an "
               "expected batch > 0, got {}, {} and {}",
               max_grad_norm, noise_multiplier, expected_batch);
  Step step;
  std::vector<torch::Tensor> sums;
  if (x.size(0) > 0) {
    auto pe = per_example(model, x, y);
    step.loss = pe.loss;
    auto sq = torch::zeros({x.size(0)}, x.options().dtype(torch::kFloat32));
    for (const auto& c : pe.params) sq = sq + c.squared_norms();
    step.norms = sq.sqrt();
    auto scale = (max_grad_norm / (step.norms + 1e-6)).clamp_max(1.0);
    for (const auto& c : pe.params) sums.push_back(c.weighted_sum(scale));
  } else {
    step.norms = torch::zeros({0});
  }
  torch::NoGradGuard no_grad;
  std::size_t k = 0;
  for (auto& p : model.parameters()) {
    if (!p.requires_grad()) continue;
    auto total = sums.empty() ? torch::zeros(p.sizes(), p.options())
                              : sums[k].reshape(p.sizes());
    ++k;
    if (noise_multiplier > 0) {
      total = total + (torch::randn(p.sizes(), gen) *
                       (noise_multiplier * max_grad_norm))
                          .to(p.device());
    }
    auto grad = torch::empty_like(p);  // The parameter's own layout.
    grad.copy_(total / expected_batch);
    p.mutable_grad() = grad;
  }
  return step;
}

}  // namespace

std::string DpGuarantee::to_json() const {
  return nlohmann::json{{"mechanism", mechanism},
                        {"epsilon", epsilon},
                        {"delta", delta},
                        {"noise_multiplier", noise_multiplier},
                        {"sample_rate", sample_rate},
                        {"steps", steps},
                        {"max_grad_norm", max_grad_norm},
                        {"accountant", accountant}}
      .dump();
}

DpGuarantee DpGuarantee::from_json(const std::string& text) {
  DpGuarantee g;
  try {
    const auto j = nlohmann::json::parse(text);
    g.mechanism = j.at("mechanism").get<std::string>();
    g.epsilon = j.at("epsilon").get<double>();
    g.delta = j.at("delta").get<double>();
    g.noise_multiplier = j.at("noise_multiplier").get<double>();
    g.sample_rate = j.at("sample_rate").get<double>();
    g.steps = j.at("steps").get<std::int64_t>();
    g.max_grad_norm = j.at("max_grad_norm").get<double>();
    g.accountant = j.at("accountant").get<std::string>();
  } catch (const std::exception& e) {
    fail(Code::kDataLoss, "a privacy guarantee that does not parse: {}",
         e.what());
  }
  return g;
}

std::vector<torch::Tensor> per_example_gradients(ClassifierImpl& model,
                                                 const torch::Tensor& x,
                                                 const torch::Tensor& y) {
  auto pe = per_example(model, x, y);
  std::vector<torch::Tensor> out;
  for (const auto& c : pe.params) out.push_back(c.materialised());
  return out;
}

torch::Tensor private_gradient(ClassifierImpl& model, const torch::Tensor& x,
                               const torch::Tensor& y, double max_grad_norm,
                               double noise_multiplier, double expected_batch,
                               at::Generator& gen) {
  return dp_gradient(model, x, y, max_grad_norm, noise_multiplier,
                     expected_batch, gen)
      .norms;
}

TrainResult train_private(ClassifierImpl& model, const torch::Tensor& x,
                          const torch::Tensor& y, const TrainOptions& options,
                          const DpSgdOptions& dp, DpGuarantee* guarantee) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  CHORUS_CHECK(
      x.defined() && y.defined() && x.size(0) == y.size(0) && x.size(0) > 0,
      "DP-SGD: {} inputs but {} labels", x.defined() ? x.size(0) : 0,
      y.defined() ? y.size(0) : 0);
  CHORUS_CHECK(y.scalar_type() == torch::kLong,
               "DP-SGD trains on int64 labels, not soft targets");
  CHORUS_CHECK(options.epochs() > 0 && options.batch_size() > 0,
               "DP-SGD: epochs and batch_size must be positive");
  CHORUS_CHECK(dp.max_grad_norm() > 0,
               "DP-SGD: max_grad_norm must be positive, got {}",
               dp.max_grad_norm());
  CHORUS_CHECK(dp.delta() > 0 && dp.delta() < 1,
               "DP-SGD: delta must be in (0, 1), got {}", dp.delta());
  const std::int64_t n = x.size(0);
  const double q = std::min(
      1.0, static_cast<double>(options.batch_size()) / static_cast<double>(n));
  const std::int64_t steps_per_epoch =
      (n + options.batch_size() - 1) / options.batch_size();
  const std::int64_t steps = steps_per_epoch * options.epochs();
  double sigma = dp.noise_multiplier();
  if (sigma <= 0) {
    CHORUS_CHECK(dp.epsilon() > 0,
                 "DP-SGD needs a privacy budget (epsilon > 0) or a noise "
                 "multiplier");
    sigma =
        privacy::dp_sgd_noise_multiplier(dp.epsilon(), q, steps, dp.delta());
  }
  DpGuarantee g;
  g.epsilon = privacy::dp_sgd_epsilon(q, sigma, steps, dp.delta());
  g.delta = dp.delta();
  g.noise_multiplier = sigma;
  g.sample_rate = q;
  g.steps = steps;
  g.max_grad_norm = dp.max_grad_norm();

  ThreadGuard threads(options.threads());
  const auto device = options.device();
  struct OnDevice {
    ClassifierImpl& model;
    std::optional<at::Generator> noise;
    OnDevice(ClassifierImpl& m, c10::Device d) : model(m), noise(m.noise()) {
      model.to(d);
    }
    ~OnDevice() {
      model.set_noise(noise);
      model.to(c10::Device(c10::kCPU));
    }
  } on_device(model, device);
  auto gen = make_generator(options.seed());
  model.set_noise(gen);
  FusedAdam optimizer(model.parameters(),
                      torch::optim::AdamOptions(options.lr()));
  std::optional<progress::Bar> bar;
  if (!options.progress().empty() && progress::enabled()) {
    bar.emplace(options.progress(), static_cast<double>(steps), "steps");
  }
  TrainResult result;
  std::int64_t step = 0;
  for (std::int64_t epoch = 1; epoch <= options.epochs(); ++epoch) {
    const auto epoch_start = Clock::now();
    model.train();
    double loss_sum = 0;
    std::int64_t seen = 0;
    for (std::int64_t s = 0; s < steps_per_epoch; ++s, ++step) {
      throw_if_stopped(options.stop(), "training");
      if (options.cosine()) {
        const double lr =
            options.lr() * 0.5 *
            (1.0 + std::cos(std::numbers::pi * static_cast<double>(step) /
                            static_cast<double>(steps)));
        for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
      }
      // Poisson sampling: each example in with probability q, as the
      // accountant assumes.
      auto idx = (torch::rand({n}, gen) < q).nonzero().squeeze(1);
      auto xb = x.index_select(0, idx).to(device);
      auto yb = y.index_select(0, idx).to(device);
      auto r = dp_gradient(model, xb, yb, dp.max_grad_norm(), sigma,
                           q * static_cast<double>(n), gen);
      optimizer.step();
      loss_sum += r.loss;
      seen += idx.numel();
      if (bar) {
        bar->update(
            static_cast<double>(step + 1),
            fmt::format("epoch {}/{} loss {:.4f} sigma {:.2f}", epoch,
                        options.epochs(),
                        loss_sum / std::max<std::int64_t>(1, seen), sigma));
      }
    }
    EpochReport report{
        .epoch = epoch,
        .epochs = options.epochs(),
        .train_loss =
            loss_sum / static_cast<double>(std::max<std::int64_t>(1, seen)),
        .seconds =
            std::chrono::duration<double>(Clock::now() - epoch_start).count()};
    result.epochs_run = epoch;
    result.best_epoch = epoch;
    result.final_train_loss = report.train_loss;
    if (options.on_epoch()) options.on_epoch()(report);
  }
  model.eval();
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (guarantee) *guarantee = g;
  return result;
}

}  // namespace chorus::fusion
