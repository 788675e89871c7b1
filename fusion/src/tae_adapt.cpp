#include <fmt/ostream.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "chorus/core/error.hpp"
#include "chorus/fusion/ensemble.hpp"
#include "chorus/fusion/random.hpp"
#include "chorus/fusion/tae.hpp"
#include "chorus/fusion/train.hpp"
#include "tae_internal.hpp"

namespace chorus::fusion {

using namespace tae_internal;  // NOLINT: the shared helpers of tae

namespace {

// A task's labelled shots as rows of class weights [d, width]: one-hot rows
// for indices into the task's classes, normalised rows for soft labels.
// `what` names the caller in errors.
torch::Tensor targets_of(const torch::Tensor& labels, std::int64_t d,
                         std::int64_t width, const char* what) {
  if (labels.dim() == 2) {
    CHORUS_CHECK(labels.size(0) == d && labels.size(1) == width,
                 "{}: soft labels must be [{}, {}]", what, d, width);
    auto targets = labels.to(torch::kFloat32);
    CHORUS_CHECK(torch::isfinite(targets).all().item<bool>() &&
                     targets.min().item<float>() >= 0,
                 "{}: soft labels must be finite and non-negative", what);
    return normalise_rows(targets);
  }
  CHORUS_CHECK(d >= 1 && labels.numel() == d, "{}: {} shots with {} labels",
               what, d, labels.numel());
  auto y = labels.to(torch::kLong).reshape({d});
  CHORUS_CHECK(
      y.min().item<std::int64_t>() >= 0 && y.max().item<std::int64_t>() < width,
      "{}: labels must index the task's {} classes", what, width);
  return torch::one_hot(y, width).to(torch::kFloat32);
}

}  // namespace

torch::Tensor TaeModel::relabel(const torch::Tensor& x,
                                const torch::Tensor& labels,
                                const WDistribution& q,
                                const std::vector<std::int64_t>& classes) {
  torch::NoGradGuard no_grad;
  net_->eval();
  const auto d = x.size(0);
  const auto width = task_width(classes, net_->outputs);
  auto targets = targets_of(labels, d, width, "tae relabel");  // [d, width]
  // r_ij: how much prototype j explains example i under the adapted mean
  // (in chunks: the pool can be large).
  auto counts = torch::zeros({prototypes_.size(0), width});
  for (std::int64_t b = 0; b < d; b += 4096) {
    auto resp = torch::softmax(log_px(x.slice(0, b, b + 4096), q.mean),
                               1);  // [≤4096, m]
    counts += torch::matmul(resp.t(), targets.slice(0, b, b + 4096));
  }
  auto prior_votes =
      restrict(net_->decode_y(prototypes_), classes).exp();  // [m, width]
  auto votes =
      options_.adaptation().relabel_prior() * prior_votes + counts + 1e-3;
  return normalise_rows(votes);
}

bool TaeModel::reads_out_features(
    const std::vector<std::int64_t>& classes) const {
  if (!net_->input_encoder) return false;
  switch (options_.adaptation().readout()) {
    case TaeReadout::kFeatures:
      return true;
    case TaeReadout::kPrototypes:
      return false;
    case TaeReadout::kAuto:
      break;
  }
  if (classes.empty()) return !known_.all().item<bool>();
  for (auto c : classes) {
    if (c >= 0 && c < known_.numel() && !known_[c].item<bool>()) return true;
  }
  return false;
}

torch::Tensor TaeModel::features(const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  net_->eval();
  auto flat = x.reshape({x.size(0), -1}).to(torch::kFloat32).clamp(0, 1);
  CHORUS_CHECK(flat.size(1) == net_->input_dim,
               "tae: inputs of {} values, the model takes {}", flat.size(1),
               net_->input_dim);
  namespace F = torch::nn::functional;
  const auto unit = F::NormalizeFuncOptions().dim(1);
  auto f = F::normalize(net_->input_features(flat), unit);
  if (!net_->answer_encoder) return f;
  // Side by side, each half of norm 1/√2: the whole has norm 1.
  auto answer = net_->input_features(flat, TaeNetImpl::Encoder::kAnswer);
  return torch::cat({f, F::normalize(answer, unit)}, 1) / std::sqrt(2.0);
}

std::int64_t TaeModel::feature_dim() const {
  if (!net_->input_encoder) return 0;
  return options_.network().hidden() * (net_->answer_encoder ? 2 : 1);
}

std::pair<torch::Tensor, torch::Tensor> TaeModel::fit_head(
    const torch::Tensor& x, const torch::Tensor& labels,
    const std::vector<std::int64_t>& classes, const torch::Tensor& unlabelled) {
  torch::AutoGradMode grad(true);  // the head learns, whatever the caller
  const auto d = x.size(0);
  const auto width = task_width(classes, net_->outputs);
  auto targets = targets_of(labels, d, width, "tae head");  // [d, width]
  auto f = features(x);                                     // [d, F]
  // The nearest class mean as a linear head: ‖f − c‖² = ‖f‖² − 2 f·c + ‖c‖²,
  // and ‖f‖ = 1 for every input. A class without a shot keeps c = 0.
  auto mass = targets.sum(0);  // [width]
  auto centres = torch::matmul(targets.t(), f) /
                 mass.clamp_min(1e-12).unsqueeze(1);  // [width, F]
  if (unlabelled.defined() && unlabelled.numel() > 0) {
    centres = refine_centres(f, targets, unlabelled);
    return {(2 * centres).detach(), (-centres.pow(2).sum(1)).detach()};
  }
  const auto& a = options_.adaptation();
  auto steps = a.head_steps();
  if (centres_.defined() && a.centre_weight() > 0) {
    // The pool's centres near each class mean, worth centre_weight shots.
    torch::NoGradGuard no_grad;
    namespace F = torch::nn::functional;
    const auto unit = F::NormalizeFuncOptions().dim(1);
    auto c = F::normalize(centres, unit);
    auto near = torch::softmax(
        a.centre_temperature() * torch::matmul(c, centres_.t()), 1);
    auto pulled =
        F::normalize(mass.unsqueeze(1) * c +
                         a.centre_weight() * torch::matmul(near, centres_),
                     unit);
    // A class without a shot keeps c = 0.
    centres = torch::where(mass.gt(0).unsqueeze(1), pulled,
                           torch::zeros_like(pulled));
    // One shot per class: steps on the two points would undo the prior.
    auto held = mass.masked_select(mass.gt(0));
    if (held.numel() > 0 && held.min().item<double>() < 2) {
      steps = 0;
      if (covariance_.defined() && a.covariance_shrinkage() < 1)
        return covariance_head(centres);
    }
  }
  auto weight = (2 * centres).set_requires_grad(true);
  auto bias = (-centres.pow(2).sum(1)).set_requires_grad(true);
  if (steps > 0) {
    torch::optim::Adam opt({weight, bias},
                           torch::optim::AdamOptions(1e-2).weight_decay(1e-3));
    for (std::int64_t s = 0; s < steps; ++s) {
      throw_if_stopped(options_.stop(), "tae head");
      auto logits = torch::matmul(f, weight.t()) + bias;
      auto loss = -(targets * torch::log_softmax(logits, 1)).sum(1).mean();
      opt.zero_grad();
      loss.backward();
      opt.step();
    }
  }
  return {weight.detach(), bias.detach()};
}

std::pair<torch::Tensor, torch::Tensor> TaeModel::covariance_head(
    const torch::Tensor& centres) const {
  torch::NoGradGuard no_grad;
  const auto s = options_.adaptation().covariance_shrinkage();
  auto cov = covariance_.to(torch::kFloat64);
  const auto dim = cov.size(0);
  // Scaled to mean variance 1, so that s = 1 is the nearest class mean.
  const auto mean_var = cov.diagonal().mean().clamp_min(1e-12);
  auto shrunk = (1 - s) * cov / mean_var + s * torch::eye(dim, cov.options());
  auto c = centres.to(torch::kFloat64);             // [width, F]
  auto p = torch::linalg_solve(shrunk, c.t()).t();  // rows S⁻¹c_y
  // A class without a shot keeps c = 0: weight and bias 0.
  return {(2 * p).to(centres.scalar_type()),
          (-(p * c).sum(1)).to(centres.scalar_type())};
}

torch::Tensor TaeModel::refine_centres(const torch::Tensor& f,
                                       const torch::Tensor& targets,
                                       const torch::Tensor& unlabelled) {
  torch::NoGradGuard no_grad;
  CHORUS_CHECK(unlabelled.dim() >= 2,
               "tae head: unlabelled inputs must be [u, {}]", net_->input_dim);
  CHORUS_CHECK(torch::isfinite(unlabelled).all().item<bool>(),
               "tae head: the unlabelled inputs hold NaN or Inf");
  const auto& a = options_.adaptation();
  namespace F = torch::nn::functional;
  const auto unit = F::NormalizeFuncOptions().dim(1);
  auto fu = features(unlabelled);                  // [u, F], unit rows
  auto mass = targets.sum(0);                      // [width]
  auto shot_sums = torch::matmul(targets.t(), f);  // [width, F]
  // Classes without a shot take no unlabelled input: nothing anchors them.
  auto closed = mass.le(0);
  auto c = F::normalize(shot_sums / mass.clamp_min(1e-12).unsqueeze(1), unit);
  for (std::int64_t r = 0; r < a.unlabelled_rounds(); ++r) {
    auto logits = a.unlabelled_temperature() * torch::matmul(fu, c.t());
    auto p = torch::softmax(
        logits.masked_fill(closed.unsqueeze(0),
                           -std::numeric_limits<float>::infinity()),
        1);  // [u, width]
    auto num = shot_sums + a.unlabelled_weight() * torch::matmul(p.t(), fu);
    auto den = mass + a.unlabelled_weight() * p.sum(0);
    c = F::normalize(num / den.clamp_min(1e-12).unsqueeze(1), unit);
  }
  return c;
}

TaeAdaptation TaeModel::adapt(const torch::Tensor& tau, const torch::Tensor& x,
                              const torch::Tensor& labels,
                              const std::vector<std::int64_t>& classes,
                              const torch::Tensor& unlabelled) {
  const auto d = x.size(0);
  CHORUS_CHECK(d >= 1 && labels.numel() == d,
               "tae adapt: {} shots with {} labels", d, labels.numel());
  const auto width = task_width(classes, net_->outputs);
  CHORUS_CHECK(labels.min().item<std::int64_t>() >= 0 &&
                   labels.max().item<std::int64_t>() < width,
               "tae adapt: labels must index the task's {} classes", width);
  CHORUS_CHECK(torch::isfinite(x).all().item<bool>(),
               "tae adapt: shots hold NaN or Inf");
  net_->eval();
  // Only λ moves: the global model is frozen for the duration.
  struct Freeze {
    TaeNet& net;
    explicit Freeze(TaeNet& n) : net(n) {
      for (auto& p : net->parameters()) p.set_requires_grad(false);
    }
    ~Freeze() {
      for (auto& p : net->parameters()) p.set_requires_grad(true);
    }
  } freeze(net_);
  auto prior_q = prior(tau);
  auto mean = prior_q.mean.clone().set_requires_grad(true);
  auto logvar = prior_q.logvar.clone().set_requires_grad(true);
  torch::optim::Adam opt({mean, logvar},
                         torch::optim::AdamOptions(options_.adaptation().lr()));
  auto y = labels.to(torch::kLong).reshape({d, 1});
  auto gen = make_generator(options_.seed() + tae_internal::kAdaptStream);
  auto objective = [&] {
    auto lv = clamp_logvar(logvar);
    torch::Tensor gibbs = torch::zeros({});
    for (std::int64_t s = 0; s < options_.adaptation().samples(); ++s) {
      auto g = log_g(x, sample(mean, lv, gen), classes)
                   .exp()
                   .gather(1, y)
                   .squeeze(1);
      gibbs = gibbs + (1 - g).mean();
    }
    gibbs = gibbs / static_cast<double>(options_.adaptation().samples());
    auto kl = kl_gauss(mean, lv, prior_q.mean, prior_q.logvar);
    auto bound = pac_bayes_bound(gibbs, kl, d, options_.adaptation().delta());
    return std::make_tuple(bound, gibbs, kl);
  };
  for (std::int64_t step = 0; step < options_.adaptation().steps(); ++step) {
    throw_if_stopped(options_.stop(), "tae adaptation");
    auto [bound, gibbs, kl] = objective();
    opt.zero_grad();
    bound.backward();
    opt.step();
  }
  // Adaptation never ends worse than it started, by its own measure.
  auto start = bound(tau, x, labels, prior_q, classes);
  auto out = bound(tau, x, labels,
                   WDistribution{mean.detach().clone(),
                                 clamp_logvar(logvar.detach()).clone()},
                   classes);
  if (!(out.bound <= start.bound)) out = start;
  CHORUS_CHECK_CODE(std::isfinite(out.bound), Code::kInternal,
                    "tae adapt: the bound is not finite");
  if (options_.adaptation().relabel())
    out.votes = relabel(x, labels, out.posterior, classes);
  if (reads_out_features(classes)) {
    std::tie(out.head_weight, out.head_bias) =
        fit_head(x, labels, classes, unlabelled);
    if (unlabelled.defined()) out.unlabelled = unlabelled.size(0);
  }
  return out;
}

TaeAdaptation TaeModel::bound(const torch::Tensor& tau, const torch::Tensor& x,
                              const torch::Tensor& labels,
                              const WDistribution& q,
                              const std::vector<std::int64_t>& classes) {
  torch::NoGradGuard no_grad;
  net_->eval();
  const auto d = x.size(0);
  CHORUS_CHECK(d >= 1 && labels.numel() == d,
               "tae bound: {} shots with {} labels", d, labels.numel());
  auto p = prior(tau);
  auto y = labels.to(torch::kLong).reshape({d, 1});
  // Fixed draws (4n of them): the same q always gets the same value, so
  // bounds can be compared.
  auto gen = make_generator(options_.seed() + tae_internal::kBoundStream);
  const auto draws = 4 * options_.adaptation().samples();
  double gibbs = 0;
  for (std::int64_t s = 0; s < draws; ++s) {
    auto eps = at::randn(q.mean.sizes(), gen);
    auto w = q.mean + torch::exp(0.5 * q.logvar) * eps;
    auto g = log_g(x, w, classes).exp().gather(1, y);
    gibbs += (1 - g).mean().item<double>();
  }
  TaeAdaptation out;
  out.posterior = q;
  out.gibbs_loss = gibbs / static_cast<double>(draws);
  out.kl = kl_gauss(q.mean, q.logvar, p.mean, p.logvar).item<double>();
  out.bound =
      pac_bayes_bound(out.gibbs_loss, out.kl, d, options_.adaptation().delta());
  return out;
}

void TaeModel::refit_prior(const std::vector<torch::Tensor>& tasks,
                           const std::vector<WDistribution>& embeddings,
                           std::int64_t steps) {
  CHORUS_CHECK(tasks.size() == embeddings.size() && !tasks.empty(),
               "tae: {} tasks for {} embeddings", tasks.size(),
               embeddings.size());
  auto tau = torch::stack(tasks)
                 .to(torch::kFloat32)
                 .reshape({static_cast<long>(tasks.size()), -1});
  std::vector<torch::Tensor> means, logvars;
  for (const auto& e : embeddings) {
    means.push_back(e.mean);
    logvars.push_back(e.logvar);
  }
  auto target_m = torch::stack(means), target_lv = torch::stack(logvars);
  net_->eval();  // BatchNorm keeps its statistics; one embedding per task is
                 // few.
  std::vector<torch::Tensor> params;
  for (const auto& item : net_->named_parameters()) {
    if (item.key().rfind("prior_", 0) == 0) params.push_back(item.value());
  }
  torch::optim::Adam opt(params, torch::optim::AdamOptions(1e-3));
  for (std::int64_t s = 0; s < steps; ++s) {
    auto [m, lv] = net_->prior_w(tau);
    // KL(q_task ‖ p_γ(·|τ)): the prior moves to cover each task's embedding.
    auto loss = kl_gauss(target_m, target_lv, m, lv).mean();
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
}

}  // namespace chorus::fusion
