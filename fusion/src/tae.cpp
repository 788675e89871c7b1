#include "chorus/fusion/tae.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/ostream.h>
#include <torch/torch.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/fusion/ensemble.hpp"
#include "chorus/fusion/train.hpp"

namespace chorus::fusion {
namespace {

namespace nn = torch::nn;
constexpr const char* kTaeFormat = "chorus.tae.v1";
constexpr double kLogvarMin = -8.0, kLogvarMax = 6.0;

nn::Sequential mlp2(std::int64_t in, std::int64_t hidden, std::int64_t out,
                    bool batch_norm) {
  nn::Sequential s;
  s->push_back(nn::Linear(in, hidden));
  if (batch_norm) s->push_back(nn::BatchNorm1d(hidden));
  s->push_back(nn::ReLU());
  s->push_back(nn::Linear(hidden, hidden));
  s->push_back(nn::ReLU());
  s->push_back(nn::Linear(hidden, out));
  return s;
}

nn::Sequential trunk(std::int64_t in, std::int64_t hidden) {
  return nn::Sequential(nn::Linear(in, hidden), nn::BatchNorm1d(hidden),
                        nn::ReLU());
}

torch::Tensor clamp_logvar(const torch::Tensor& v) {
  return v.clamp(kLogvarMin, kLogvarMax);
}

torch::Tensor sample(const torch::Tensor& mean, const torch::Tensor& logvar) {
  return mean + torch::exp(0.5 * logvar) * torch::randn_like(mean);
}

// KL(N(m1, v1) ‖ N(m2, v2)) summed over the last dimension.
torch::Tensor kl_gauss(const torch::Tensor& m1, const torch::Tensor& lv1,
                       const torch::Tensor& m2, const torch::Tensor& lv2) {
  return 0.5 * (lv2 - lv1 +
                (torch::exp(lv1) + (m1 - m2).pow(2)) / torch::exp(lv2) - 1)
                   .sum(-1);
}

// Restricts log-scores [N, C] to `classes` and renormalises.
torch::Tensor restrict(const torch::Tensor& log_scores,
                       const std::vector<std::int64_t>& classes) {
  if (classes.empty()) return torch::log_softmax(log_scores, 1);
  auto idx = torch::tensor(classes, torch::kLong);
  return torch::log_softmax(log_scores.index_select(1, idx), 1);
}

}  // namespace

TaeNetImpl::TaeNetImpl(std::int64_t d, std::int64_t c, std::int64_t t,
                       const TaeOptions& o)
    : input_dim(d),
      outputs(c),
      task_dim(t),
      w_dim(o.w_dim()),
      z_dim(o.z_dim()) {
  const auto h = o.hidden();
  dec_x_ =
      register_module("dec_x", mlp2(w_dim + z_dim, h, d, /*batch_norm=*/true));
  dec_y_ = register_module("dec_y", mlp2(z_dim, h, c, /*batch_norm=*/false));
  adv_ = register_module("adv", mlp2(w_dim, h, c, /*batch_norm=*/false));
  prior_trunk_ = register_module("prior_trunk", trunk(t, h));
  prior_mean_ = register_module("prior_mean", nn::Linear(h, w_dim));
  prior_logvar_ = register_module("prior_logvar", nn::Linear(h, w_dim));
  enc_z_trunk_ = register_module("enc_z_trunk", trunk(d + c, h));
  enc_z_mean_ = register_module("enc_z_mean", nn::Linear(h, z_dim));
  enc_z_logvar_ = register_module("enc_z_logvar", nn::Linear(h, z_dim));
  enc_w_trunk_ = register_module("enc_w_trunk", trunk(d + t, h));
  enc_w_mean_ = register_module("enc_w_mean", nn::Linear(h, w_dim));
  enc_w_logvar_ = register_module("enc_w_logvar", nn::Linear(h, w_dim));
}

torch::Tensor TaeNetImpl::decode_x(const torch::Tensor& w,
                                   const torch::Tensor& z) {
  return dec_x_->forward(torch::cat({w, z}, 1));
}

torch::Tensor TaeNetImpl::decode_y(const torch::Tensor& z) {
  return torch::log_softmax(dec_y_->forward(z), 1);
}

std::pair<torch::Tensor, torch::Tensor> TaeNetImpl::prior_w(
    const torch::Tensor& tau) {
  auto h = prior_trunk_->forward(tau);
  return {prior_mean_->forward(h), clamp_logvar(prior_logvar_->forward(h))};
}

std::pair<torch::Tensor, torch::Tensor> TaeNetImpl::encode_z(
    const torch::Tensor& x, const torch::Tensor& eta) {
  auto h = enc_z_trunk_->forward(torch::cat({x, eta}, 1));
  return {enc_z_mean_->forward(h), clamp_logvar(enc_z_logvar_->forward(h))};
}

std::pair<torch::Tensor, torch::Tensor> TaeNetImpl::encode_w(
    const torch::Tensor& x, const torch::Tensor& tau) {
  auto h = enc_w_trunk_->forward(torch::cat({x, tau}, 1));
  return {enc_w_mean_->forward(h), clamp_logvar(enc_w_logvar_->forward(h))};
}

torch::Tensor TaeNetImpl::adversary(const torch::Tensor& w) {
  return torch::log_softmax(adv_->forward(w), 1);
}

std::vector<torch::Tensor> TaeNetImpl::model_parameters() {
  std::vector<torch::Tensor> out;
  for (const auto& item : named_parameters()) {
    if (item.key().rfind("adv.", 0) != 0) out.push_back(item.value());
  }
  return out;
}

std::vector<torch::Tensor> TaeNetImpl::adversary_parameters() {
  return adv_->parameters();
}

TaeModel::TaeModel(std::int64_t input_dim, std::int64_t outputs,
                   std::int64_t task_dim, TaeOptions options)
    : options_(std::move(options)), net_(nullptr) {
  CHORUS_CHECK(
      input_dim > 0 && outputs >= 2 && task_dim > 0,
      "tae: input_dim {}, outputs {} and task_dim {} must be positive (outputs "
      ">= 2)",
      input_dim, outputs, task_dim);
  CHORUS_CHECK(options_.w_dim() > 0 && options_.z_dim() > 0 &&
                   options_.prototypes() > 0 && options_.samples() > 0,
               "tae: w_dim, z_dim, prototypes and samples must be positive");
  CHORUS_CHECK(options_.delta() > 0 && options_.delta() < 1,
               "tae: delta must be in (0, 1), got {}", options_.delta());
  SeedGuard seeded(options_.seed());
  net_ = TaeNet(input_dim, outputs, task_dim, options_);
  prototypes_ = torch::randn({options_.prototypes(), options_.z_dim()});
}

std::vector<double> TaeModel::train(const TaeData& data) {
  ThreadGuard threads(options_.threads());
  const auto k = static_cast<std::int64_t>(data.answers.size());
  CHORUS_CHECK(k >= 1 && data.tasks.size() == data.answers.size(),
               "tae: {} answer sets for {} task descriptors",
               data.answers.size(), data.tasks.size());
  CHORUS_CHECK(data.inputs.defined() && data.inputs.size(0) > 1,
               "tae: no inputs");
  const auto n = data.inputs.size(0);
  auto x = data.inputs.reshape({n, -1}).to(torch::kFloat32).clamp(0, 1);
  CHORUS_CHECK(x.size(1) == net_->input_dim,
               "tae: inputs of {} values, the model takes {}", x.size(1),
               net_->input_dim);
  for (std::int64_t i = 0; i < k; ++i) {
    const auto& a = data.answers[static_cast<std::size_t>(i)];
    CHORUS_CHECK(a.dim() == 2 && a.size(0) == n && a.size(1) == net_->outputs,
                 "tae: expert {} answered {} for {} inputs over {} outputs", i,
                 fmt::streamed(a.sizes()), n, net_->outputs);
    CHORUS_CHECK(
        data.tasks[static_cast<std::size_t>(i)].numel() == net_->task_dim,
        "tae: task {} has {} entries, the model takes {}", i,
        data.tasks[static_cast<std::size_t>(i)].numel(), net_->task_dim);
  }
  // R's experts, plus (ours) the union pseudo-task: the experts' normalised
  // sum (B+) under the union of their task descriptors.
  std::vector<torch::Tensor> answers;
  std::vector<torch::Tensor> task_list;
  for (std::int64_t i = 0; i < k; ++i) {
    auto a = data.answers[static_cast<std::size_t>(i)].to(torch::kFloat32);
    answers.push_back(normalise_rows(a));
    task_list.push_back(data.tasks[static_cast<std::size_t>(i)]
                            .to(torch::kFloat32)
                            .reshape(-1));
  }
  if (options_.union_task() && k >= 2) {
    answers.push_back(union_answer(answers));
    task_list.push_back(torch::stack(task_list).sum(0).clamp_max(1));
  }
  const auto tasks_in_r = static_cast<std::int64_t>(answers.size());
  // Every (input, task) pair is a row of R.
  auto rows_x = x.repeat({tasks_in_r, 1});
  auto rows_eta = torch::cat(answers);
  auto taus = torch::stack(task_list);
  auto rows_tau = taus.repeat_interleave(n, 0);
  const auto rows = rows_x.size(0);

  SeedGuard seeded(options_.seed());
  torch::optim::Adam main(net_->model_parameters(),
                          torch::optim::AdamOptions(options_.lr()));
  torch::optim::Adam adv(net_->adversary_parameters(),
                         torch::optim::AdamOptions(options_.lr()));
  const auto bs = std::min(options_.batch_size(), rows);
  std::vector<double> history;
  std::int64_t step = 0;
  for (std::int64_t epoch = 1; epoch <= options_.epochs(); ++epoch) {
    net_->train();
    auto perm = torch::randperm(rows, torch::kLong);
    double total = 0;
    std::int64_t batches = 0;
    for (std::int64_t b = 0; b + bs <= rows; b += bs, ++step) {
      throw_if_stopped(options_.stop(), "tae training");
      auto idx = perm.slice(0, b, b + bs);
      auto bx = rows_x.index_select(0, idx);
      auto beta = rows_eta.index_select(0, idx);
      auto btau = rows_tau.index_select(0, idx);

      // The ELBO with the adversarial decoupling term.
      auto [mz, lvz] = net_->encode_z(bx, beta);
      auto [mw, lvw] = net_->encode_w(bx, btau);
      auto z = sample(mz, lvz);
      auto w = sample(mw, lvw);
      auto rec = -torch::binary_cross_entropy_with_logits(
                      net_->decode_x(w, z), bx, {}, {}, at::Reduction::None)
                      .sum(1);
      auto pred = (beta * net_->decode_y(z)).sum(1);
      auto kl_z =
          kl_gauss(mz, lvz, torch::zeros_like(mz), torch::zeros_like(lvz));
      auto [mp, lvp] = net_->prior_w(btau);
      auto kl_w = kl_gauss(mw, lvw, mp, lvp);
      auto elbo = rec + options_.label_weight() * pred - kl_z - kl_w;
      auto mi = (beta * net_->adversary(w)).sum(1);  // log q_ψ(η|w)
      auto loss = -elbo.mean() + options_.zeta() * mi.mean();

      // Gibbs loss of one expert's own task under its prior, through the
      // prototypes: trains θ, α, γ so that G_w agrees with the experts.
      if (options_.gibbs_weight() > 0) {
        const auto e = step % tasks_in_r;
        auto eta_rows = torch::randint(n, {bs}, torch::kLong);
        auto ex2 = x.index_select(0, eta_rows);
        auto eeta =
            answers[static_cast<std::size_t>(e)].index_select(0, eta_rows);
        // One task descriptor: BatchNorm uses its running statistics.
        net_->eval();
        auto [pm, plv] = net_->prior_w(taus.slice(0, e, e + 1));
        net_->train();
        auto ws = sample(pm.squeeze(0), plv.squeeze(0));
        auto logg = log_g(ex2, ws);
        auto gibbs = 1 - (eeta * logg.exp()).sum(1);
        loss = loss + options_.gibbs_weight() * gibbs.mean();
      }
      main.zero_grad();
      loss.backward();
      main.step();

      // ψ maximises log q_ψ(η|w) on w it cannot move.
      auto adv_loss = -(beta * net_->adversary(w.detach())).sum(1).mean();
      adv.zero_grad();
      adv_loss.backward();
      adv.step();

      total += -elbo.mean().item<double>();
      ++batches;
    }
    history.push_back(total / std::max<std::int64_t>(1, batches));
    if (options_.on_epoch()) options_.on_epoch()(epoch, history.back());
  }
  net_->eval();
  return history;
}

double TaeModel::negative_elbo(const TaeData& data) {
  torch::NoGradGuard no_grad;
  net_->eval();
  const auto n = data.inputs.size(0);
  auto x = data.inputs.reshape({n, -1}).to(torch::kFloat32).clamp(0, 1);
  double total = 0;
  for (std::size_t i = 0; i < data.answers.size(); ++i) {
    auto eta = data.answers[i].to(torch::kFloat32);
    auto tau =
        data.tasks[i].to(torch::kFloat32).reshape({1, -1}).expand({n, -1});
    auto [mz, lvz] = net_->encode_z(x, eta);
    auto [mw, lvw] = net_->encode_w(x, tau);
    auto rec = -torch::binary_cross_entropy_with_logits(
                    net_->decode_x(mw, mz), x, {}, {}, at::Reduction::None)
                    .sum(1);
    auto pred = (eta * net_->decode_y(mz)).sum(1);
    auto [mp, lvp] = net_->prior_w(tau);
    auto elbo =
        rec + options_.label_weight() * pred -
        kl_gauss(mz, lvz, torch::zeros_like(mz), torch::zeros_like(lvz)) -
        kl_gauss(mw, lvw, mp, lvp);
    total += -elbo.mean().item<double>();
  }
  return total /
         static_cast<double>(std::max<std::size_t>(1, data.answers.size()));
}

torch::Tensor task_descriptor(const std::vector<std::int64_t>& classes,
                              std::int64_t task_dim) {
  auto tau = torch::zeros({task_dim});
  for (auto c : classes) {
    CHORUS_CHECK(c >= 0 && c < task_dim,
                 "class {} is outside the {} entries of a task descriptor", c,
                 task_dim);
    tau[c] = 1;
  }
  return tau;
}

torch::Tensor union_answer(const std::vector<torch::Tensor>& answers) {
  CHORUS_CHECK(!answers.empty(), "tae: the union answer of no expert");
  auto sum = torch::zeros_like(answers.front(), torch::kFloat32);
  for (const auto& a : answers) {
    auto f = a.to(torch::kFloat32);
    sum += normalise_rows(f);
  }
  return normalise_rows(sum);
}

std::vector<double> to_doubles(const torch::Tensor& t) {
  auto d = t.to(torch::kDouble).contiguous();
  return {d.data_ptr<double>(), d.data_ptr<double>() + d.numel()};
}

WDistribution TaeModel::prior(const torch::Tensor& tau) {
  torch::NoGradGuard no_grad;
  net_->eval();
  auto [m, lv] = net_->prior_w(tau.to(torch::kFloat32).reshape({1, -1}));
  return {m.squeeze(0), lv.squeeze(0)};
}

torch::Tensor TaeModel::log_px(const torch::Tensor& x, const torch::Tensor& w) {
  // The decoder sees the m prototypes with one w: its batch statistics
  // would be the prototypes', so it runs in eval mode (running statistics)
  // here, gradients still flowing.
  const bool was_training = net_->is_training();
  net_->eval();
  const auto m = prototypes_.size(0);
  auto flat = x.reshape({x.size(0), -1}).to(torch::kFloat32).clamp(0, 1);
  auto logits = net_->decode_x(w.reshape({1, -1}).expand({m, -1}),
                               prototypes_);  // [m, D]
  auto log_px = torch::matmul(flat, torch::log_sigmoid(logits).t()) +
                torch::matmul(1 - flat, torch::log_sigmoid(-logits).t());
  if (was_training) net_->train();
  const double beta =
      options_.likelihood_scale() > 0
          ? options_.likelihood_scale()
          : 1.0 / std::sqrt(static_cast<double>(net_->input_dim));
  return beta * log_px;
}

torch::Tensor TaeModel::log_g(const torch::Tensor& x, const torch::Tensor& w,
                              const std::vector<std::int64_t>& classes,
                              const torch::Tensor& votes) {
  auto lpx = log_px(x, w);  // [N, m]
  if (votes.defined()) {
    const auto width = classes.empty()
                           ? net_->outputs
                           : static_cast<std::int64_t>(classes.size());
    CHORUS_CHECK(votes.dim() == 2 && votes.size(0) == prototypes_.size(0) &&
                     votes.size(1) == width,
                 "tae: votes must be [{}, {}], got a {}-d tensor of {} values",
                 prototypes_.size(0), width, votes.dim(), votes.numel());
    // log Σ_j p_θ(x|z_j,w) votes_j(y), normalised over y.
    auto joint = torch::logsumexp(
        lpx.unsqueeze(2) +
            torch::log(votes.to(torch::kFloat32).clamp_min(1e-12)).unsqueeze(0),
        1);
    return torch::log_softmax(joint, 1);
  }
  const bool was_training = net_->is_training();
  net_->eval();
  auto log_py = net_->decode_y(prototypes_);  // [m, C]
  if (was_training) net_->train();
  // log Σ_j p_θ(x|z_j,w) p_α(y|z_j), normalised over y.
  auto joint =
      torch::logsumexp(lpx.unsqueeze(2) + log_py.unsqueeze(0), 1);  // [N, C]
  return restrict(joint, classes);
}

torch::Tensor TaeModel::predict(const torch::Tensor& x, const WDistribution& q,
                                const std::vector<std::int64_t>& classes,
                                const torch::Tensor& votes) {
  torch::NoGradGuard no_grad;
  net_->eval();
  const auto width = classes.empty()
                         ? net_->outputs
                         : static_cast<std::int64_t>(classes.size());
  auto counts = torch::zeros({x.size(0), width});
  auto soft = torch::zeros({x.size(0), width});
  for (std::int64_t s = 0; s < options_.samples(); ++s) {
    auto w = sample(q.mean, q.logvar);
    auto lg = log_g(x, w, classes, votes);
    counts.scatter_add_(1, lg.argmax(1, true), torch::ones({x.size(0), 1}));
    soft += lg.exp();
  }
  // Votes decide; the mean of G breaks ties.
  auto out = counts + 1e-3 * soft / static_cast<double>(options_.samples());
  return normalise_rows(out);
}

torch::Tensor TaeModel::predict(const torch::Tensor& x,
                                const TaeAdaptation& adapted,
                                const std::vector<std::int64_t>& classes) {
  return predict(x, adapted.posterior, classes, adapted.votes);
}

torch::Tensor TaeModel::relabel(const torch::Tensor& x,
                                const torch::Tensor& labels,
                                const WDistribution& q,
                                const std::vector<std::int64_t>& classes) {
  torch::NoGradGuard no_grad;
  net_->eval();
  const auto d = x.size(0);
  const auto width = classes.empty()
                         ? net_->outputs
                         : static_cast<std::int64_t>(classes.size());
  torch::Tensor targets;  // [d, width]
  if (labels.dim() == 2) {
    CHORUS_CHECK(labels.size(0) == d && labels.size(1) == width,
                 "tae relabel: soft labels must be [{}, {}]", d, width);
    targets = labels.to(torch::kFloat32);
    CHORUS_CHECK(torch::isfinite(targets).all().item<bool>() &&
                     targets.min().item<float>() >= 0,
                 "tae relabel: soft labels must be finite and non-negative");
    targets = normalise_rows(targets);
  } else {
    CHORUS_CHECK(d >= 1 && labels.numel() == d,
                 "tae relabel: {} shots with {} labels", d, labels.numel());
    auto y = labels.to(torch::kLong).reshape({d});
    CHORUS_CHECK(y.min().item<std::int64_t>() >= 0 &&
                     y.max().item<std::int64_t>() < width,
                 "tae relabel: labels must index the task's {} classes", width);
    targets = torch::one_hot(y, width).to(torch::kFloat32);
  }
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
  auto votes = options_.relabel_prior() * prior_votes + counts + 1e-3;
  return normalise_rows(votes);
}

TaeAdaptation TaeModel::adapt(const torch::Tensor& tau, const torch::Tensor& x,
                              const torch::Tensor& labels,
                              const std::vector<std::int64_t>& classes) {
  const auto d = x.size(0);
  CHORUS_CHECK(d >= 1 && labels.numel() == d,
               "tae adapt: {} shots with {} labels", d, labels.numel());
  const auto width = classes.empty()
                         ? net_->outputs
                         : static_cast<std::int64_t>(classes.size());
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
                         torch::optim::AdamOptions(options_.adapt_lr()));
  const double log_term = std::log(static_cast<double>(d) / options_.delta());
  const double denom = std::max(1.0, 2.0 * static_cast<double>(d) - 1.0);
  auto y = labels.to(torch::kLong).reshape({d, 1});
  auto objective = [&] {
    auto lv = clamp_logvar(logvar);
    torch::Tensor gibbs = torch::zeros({});
    for (std::int64_t s = 0; s < options_.samples(); ++s) {
      auto g =
          log_g(x, sample(mean, lv), classes).exp().gather(1, y).squeeze(1);
      gibbs = gibbs + (1 - g).mean();
    }
    gibbs = gibbs / static_cast<double>(options_.samples());
    auto kl = kl_gauss(mean, lv, prior_q.mean, prior_q.logvar);
    auto bound = gibbs + torch::sqrt((kl + log_term) / denom);
    return std::make_tuple(bound, gibbs, kl);
  };
  for (std::int64_t step = 0; step < options_.adapt_steps(); ++step) {
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
  if (options_.relabel())
    out.votes = relabel(x, labels, out.posterior, classes);
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
  auto gen = at::make_generator<at::CPUGeneratorImpl>(options_.seed() + 7919);
  const auto draws = 4 * options_.samples();
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
      out.gibbs_loss +
      std::sqrt((out.kl + std::log(static_cast<double>(d) / options_.delta())) /
                std::max(1.0, 2.0 * static_cast<double>(d) - 1.0));
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

TaeTask TaeModel::task_of_all_outputs() {
  CHORUS_CHECK(
      net_->task_dim == net_->outputs,
      "tae: task descriptors of {} values do not name the model's {} outputs",
      net_->task_dim, net_->outputs);
  std::vector<std::int64_t> all(static_cast<std::size_t>(net_->outputs));
  for (std::int64_t c = 0; c < net_->outputs; ++c)
    all[static_cast<std::size_t>(c)] = c;
  TaeTask task;
  task.q = prior(task_descriptor(all, net_->task_dim));
  task.source = "prior of all outputs";
  return task;
}

TaeTask TaeModel::read_adapted_task(const std::filesystem::path& path) const {
  const auto text = read_file(path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(Code::kDataLoss, "'{}' is not JSON: {}", path.string(), e.what());
  }
  TaeTask task;
  task.source = path.string();
  std::vector<double> mean, logvar;
  try {
    CHORUS_CHECK_CODE(
        j.is_object() && j.value("algorithm", "") == "tae", Code::kDataLoss,
        "'{}' is not a tae adaptation (adapted.json of chorus node adapt)",
        path.string());
    task.classes = j.at("outputs").get<std::vector<std::int64_t>>();
    mean = j.at("mean").get<std::vector<double>>();
    logvar = j.at("logvar").get<std::vector<double>>();
    if (j.contains("votes")) {
      auto rows = j.at("votes").get<std::vector<std::vector<double>>>();
      const auto width = task.classes.size();
      std::vector<float> flat;
      for (const auto& r : rows) {
        CHORUS_CHECK_CODE(r.size() == width, Code::kDataLoss,
                          "'{}': a row of votes has {} values for {} classes",
                          path.string(), r.size(), width);
        flat.insert(flat.end(), r.begin(), r.end());
      }
      task.votes =
          torch::tensor(flat).reshape({static_cast<std::int64_t>(rows.size()),
                                       static_cast<std::int64_t>(width)});
    }
  } catch (const nlohmann::json::exception& e) {
    fail(Code::kDataLoss, "'{}': {}", path.string(), e.what());
  }
  const auto w_dim = net_->w_dim;
  CHORUS_CHECK(static_cast<std::int64_t>(mean.size()) == w_dim &&
                   static_cast<std::int64_t>(logvar.size()) == w_dim,
               "'{}': the embedding has {} values, this model's w has {}",
               path.string(), mean.size(), w_dim);
  CHORUS_CHECK(task.classes.size() >= 2,
               "'{}': a task needs at least 2 classes, got {}", path.string(),
               task.classes.size());
  for (auto c : task.classes) {
    CHORUS_CHECK(c >= 0 && c < net_->outputs,
                 "'{}': class {} is not one of this model's {} outputs",
                 path.string(), c, net_->outputs);
  }
  task.q.mean = torch::tensor(std::vector<float>(mean.begin(), mean.end()));
  task.q.logvar = clamp_logvar(
      torch::tensor(std::vector<float>(logvar.begin(), logvar.end())));
  CHORUS_CHECK(torch::isfinite(task.q.mean).all().item<bool>() &&
                   torch::isfinite(task.q.logvar).all().item<bool>(),
               "'{}': the embedding holds NaN or Inf", path.string());
  if (task.votes.defined()) {
    CHORUS_CHECK(task.votes.size(0) == prototypes_.size(0),
                 "'{}': votes for {} prototypes, this model has {} (adapted "
                 "from another "
                 "global model?)",
                 path.string(), task.votes.size(0), prototypes_.size(0));
    CHORUS_CHECK(torch::isfinite(task.votes).all().item<bool>() &&
                     task.votes.min().item<float>() >= 0,
                 "'{}': votes must be finite and non-negative", path.string());
    task.votes = normalise_rows(task.votes);
  }
  return task;
}

torch::Tensor TaeModel::predict(const torch::Tensor& x, const TaeTask& task) {
  // In chunks: a whole test split at once would hold [N, m, C] log-joints.
  constexpr std::int64_t kChunk = 2000;
  std::vector<torch::Tensor> parts;
  for (std::int64_t b = 0; b < x.size(0); b += kChunk) {
    parts.push_back(
        predict(x.slice(0, b, b + kChunk), task.q, task.classes, task.votes));
  }
  return parts.empty() ? predict(x, task.q, task.classes, task.votes)
                       : torch::cat(parts);
}

bool TaeModel::is_model_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return false;
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path.string());
    c10::IValue format;
    if (!archive.try_read("format", format)) return false;
    return format.isString() && format.toStringRef() == kTaeFormat;
  } catch (const std::exception&) {
    return false;
  }
}

void TaeModel::save(const std::filesystem::path& path) const {
  torch::serialize::OutputArchive archive;
  archive.write("format", c10::IValue(std::string(kTaeFormat)));
  archive.write(
      "dims",
      torch::tensor({net_->input_dim, net_->outputs, net_->task_dim,
                     options_.w_dim(), options_.z_dim(), options_.hidden(),
                     options_.prototypes(), options_.samples()},
                    torch::kLong),
      /*is_buffer=*/true);
  archive.write(
      "scalars",
      torch::tensor({options_.delta(), options_.adapt_lr(),
                     static_cast<double>(options_.adapt_steps()),
                     options_.likelihood_scale(),
                     options_.relabel() ? 1.0 : 0.0, options_.relabel_prior()},
                    torch::kDouble),
      /*is_buffer=*/true);
  archive.write("prototypes", prototypes_, /*is_buffer=*/true);
  std::string names;
  for (const auto& l : labels_) names += l + "\n";
  archive.write("labels", c10::IValue(names));
  torch::serialize::OutputArchive tensors;
  for (const auto& item : net_->named_parameters()) {
    tensors.write("param." + item.key(), item.value().detach(), true);
  }
  for (const auto& item : net_->named_buffers()) {
    tensors.write("buffer." + item.key(), item.value(), true);
  }
  archive.write("tensors", tensors);
  std::ostringstream bytes;
  archive.save_to(bytes);
  write_file_atomic(path, std::move(bytes).str());
}

TaeModel TaeModel::load(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    fail(Code::kNotFound, "tae model '{}' does not exist", path.string());
  }
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path.string());
    c10::IValue format;
    archive.read("format", format);
    CHORUS_CHECK_CODE(format.isString() && format.toStringRef() == kTaeFormat,
                      Code::kDataLoss, "'{}' is not a chorus tae model",
                      path.string());
    torch::Tensor dims, scalars, prototypes;
    archive.read("dims", dims, true);
    archive.read("scalars", scalars, true);
    archive.read("prototypes", prototypes, true);
    auto d = dims.accessor<std::int64_t, 1>();
    auto sc = scalars.accessor<double, 1>();
    TaeOptions o;
    o.w_dim(d[3]).z_dim(d[4]).hidden(d[5]).prototypes(d[6]).samples(d[7]);
    // 4 scalars in files written before prototype relabelling (which then
    // takes its defaults), 6 since.
    CHORUS_CHECK_CODE(scalars.numel() == 4 || scalars.numel() == 6,
                      Code::kDataLoss, "'{}': bad scalars", path.string());
    o.delta(sc[0]).adapt_lr(sc[1]).adapt_steps(
        static_cast<std::int64_t>(sc[2]));
    o.likelihood_scale(sc[3]);
    if (scalars.numel() == 6) o.relabel(sc[4] != 0).relabel_prior(sc[5]);
    TaeModel model(d[0], d[1], d[2], o);
    torch::serialize::InputArchive tensors;
    archive.read("tensors", tensors);
    torch::NoGradGuard no_grad;
    for (auto& item : model.net_->named_parameters()) {
      torch::Tensor t;
      tensors.read("param." + item.key(), t, true);
      CHORUS_CHECK_CODE(t.sizes() == item.value().sizes(), Code::kDataLoss,
                        "'{}': {} has the wrong shape", path.string(),
                        item.key());
      item.value().copy_(t);
    }
    for (auto& item : model.net_->named_buffers()) {
      torch::Tensor t;
      tensors.read("buffer." + item.key(), t, true);
      item.value().copy_(t);
    }
    CHORUS_CHECK_CODE(prototypes.sizes() == model.prototypes_.sizes(),
                      Code::kDataLoss, "'{}': prototypes have the wrong shape",
                      path.string());
    model.prototypes_ = prototypes.clone();
    c10::IValue names;
    archive.read("labels", names);
    std::istringstream lines(names.toStringRef());
    for (std::string l; std::getline(lines, l);) model.labels_.push_back(l);
    model.net_->eval();
    return model;
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail(Code::kDataLoss, "cannot read tae model '{}': {}", path.string(),
         e.what());
  }
}

}  // namespace chorus::fusion
