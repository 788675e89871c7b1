#include "chorus/fusion/tae.hpp"

#include <fmt/ostream.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "chorus/core/error.hpp"
#include "chorus/fusion/ensemble.hpp"
#include "chorus/fusion/random.hpp"
#include "chorus/fusion/train.hpp"
#include "tae_internal.hpp"

namespace chorus::fusion {

using namespace tae_internal;  // NOLINT: the shared helpers of tae

namespace {

/// Throws `chorus::Error` (INVALID_ARGUMENT) naming the first adaptation
/// option out of its range.
void check_adaptation(const TaeAdaptationOptions& a) {
  CHORUS_CHECK(a.samples() > 0, "tae: samples must be positive, got {}",
               a.samples());
  CHORUS_CHECK(a.delta() > 0 && a.delta() < 1,
               "tae: delta must be in (0, 1), got {}", a.delta());
  CHORUS_CHECK(
      a.unlabelled_rounds() >= 0 && std::isfinite(a.unlabelled_temperature()) &&
          a.unlabelled_temperature() >= 0 &&
          std::isfinite(a.unlabelled_weight()) && a.unlabelled_weight() >= 0,
      "tae: unlabelled_rounds, unlabelled_temperature and "
      "unlabelled_weight must be finite and non-negative, got {}, "
      "{}, {}",
      a.unlabelled_rounds(), a.unlabelled_temperature(), a.unlabelled_weight());
  CHORUS_CHECK(a.centre_weight() >= 0 && std::isfinite(a.centre_weight()) &&
                   a.centre_temperature() >= 0 &&
                   std::isfinite(a.centre_temperature()),
               "tae: centre_weight and centre_temperature must be finite "
               "and non-negative, got {}, {}",
               a.centre_weight(), a.centre_temperature());
  CHORUS_CHECK(std::isfinite(a.covariance_shrinkage()) &&
                   a.covariance_shrinkage() >= 0 &&
                   a.covariance_shrinkage() <= 1,
               "tae: covariance_shrinkage must be in [0, 1], got {}",
               a.covariance_shrinkage());
}

}  // namespace

TaeModel::TaeModel(std::int64_t input_dim, std::int64_t outputs,
                   std::int64_t task_dim, TaeOptions options)
    : options_(std::move(options)), net_(nullptr) {
  CHORUS_CHECK(
      input_dim > 0 && outputs >= 2 && task_dim > 0,
      "tae: input_dim {}, outputs {} and task_dim {} must be positive (outputs "
      ">= 2)",
      input_dim, outputs, task_dim);
  CHORUS_CHECK(options_.network().w_dim() > 0 &&
                   options_.network().z_dim() > 0 &&
                   options_.network().prototypes() > 0,
               "tae: w_dim, z_dim and prototypes must be positive");
  check_adaptation(options_.adaptation());
  const auto& shape = options_.network().image_shape();
  if (!shape.empty()) {
    std::int64_t size = 1;
    for (auto d : shape) size *= d;
    CHORUS_CHECK(shape.size() == 3 &&
                     std::ranges::all_of(shape, [](auto d) { return d > 0; }) &&
                     size == input_dim,
                 "tae: image_shape [{}] must be [C, H, W] of positive sizes "
                 "whose product is the input size {}",
                 fmt::join(shape, ", "), input_dim);
  }
  CHORUS_CHECK(options_.training().pool_centres() >= 0,
               "tae: pool_centres must be non-negative, got {}",
               options_.training().pool_centres());
  CHORUS_CHECK(options_.network().conv_channels() >= 0,
               "tae: conv_channels must be non-negative, got {}",
               options_.network().conv_channels());
  CHORUS_CHECK(options_.training().encoder_shift() >= 0,
               "tae: encoder_shift must be non-negative, got {}",
               options_.training().encoder_shift());
  // The convolutional trunk is for images of at least 4×4: none otherwise
  // (the options say what the model has).
  if (!takes_conv_trunk(options_.network()))
    options_.network().conv_channels(0);
  // The answer encoder sits beside the input encoder: none without it.
  if (!options_.network().input_encoder())
    options_.network().answer_encoder(false);
  auto gen = make_generator(options_.seed());
  net_ = TaeNet(input_dim, outputs, task_dim, options_);
  // The input and answer encoders draw from streams of their own, so that
  // the rest of the model (and the prototypes after it) start as they would
  // without them.
  auto encoder_gen =
      make_generator(options_.seed() + tae_internal::kInputEncoderStream);
  auto answer_gen =
      make_generator(options_.seed() + tae_internal::kAnswerEncoderStream);
  for (const auto& child : net_->named_children()) {
    const auto& key = child.key();
    initialise(*child.value(), key.rfind("enc_x", 0) == 0   ? encoder_gen
                               : key.rfind("enc_a", 0) == 0 ? answer_gen
                                                            : gen);
  }
  prototypes_ = torch::randn(
      {options_.network().prototypes(), options_.network().z_dim()}, gen);
  known_ = torch::ones({outputs}, torch::kBool);
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
  // How many experts' tasks hold each entry: the outputs some expert
  // answered for (when descriptors name outputs), and the union task's.
  const auto covered = torch::stack(task_list).sum(0);
  if (net_->task_dim == net_->outputs) known_ = covered.gt(0);
  CHORUS_CHECK(options_.training().answer_weight() >= 0 &&
                   std::isfinite(options_.training().answer_weight()),
               "tae: answer_weight must be finite and non-negative, got {}",
               options_.training().answer_weight());
  // The answer target (ours): what B+ answers on each input.
  const auto experts_union = union_answer(answers);  // [n, C]
  if (options_.training().union_task() && k >= 2) {
    answers.push_back(experts_union);
    task_list.push_back(covered.clamp_max(1));
  }
  const auto tasks_in_r = static_cast<std::int64_t>(answers.size());
  // Every (input, task) pair is a row of R.
  auto rows_x = x.repeat({tasks_in_r, 1});
  auto rows_eta = torch::cat(answers);
  auto taus = torch::stack(task_list);
  auto rows_tau = taus.repeat_interleave(n, 0);
  const auto rows = rows_x.size(0);

  auto gen = make_generator(options_.seed());
  auto encoder_gen =
      make_generator(options_.seed() + tae_internal::kInputEncoderStream);
  auto answer_gen =
      make_generator(options_.seed() + tae_internal::kAnswerEncoderStream);
  auto shift_gen = make_generator(options_.seed() + tae_internal::kShiftStream);
  // Shifted views for the convolutional encoders (images only).
  const auto shift =
      net_->conv_encoders() ? options_.training().encoder_shift() : 0;
  // The answer target's head: hidden layer -> outputs, trained with the
  // encoder it reads and dropped after training (only the features it
  // shaped stay).
  const double answer_weight =
      net_->input_encoder ? options_.training().answer_weight() : 0.0;
  torch::nn::Linear answer_head{nullptr};
  auto model_parameters = net_->model_parameters();
  if (answer_weight > 0) {
    answer_head = torch::nn::Linear(options_.network().hidden(), net_->outputs);
    initialise(*answer_head, net_->answer_encoder ? answer_gen : encoder_gen);
    for (const auto& p : answer_head->parameters())
      model_parameters.push_back(p);
  }
  torch::optim::Adam main(model_parameters,
                          torch::optim::AdamOptions(options_.training().lr()));
  torch::optim::Adam adv(net_->adversary_parameters(),
                         torch::optim::AdamOptions(options_.training().lr()));
  const auto bs = std::min(options_.training().batch_size(), rows);
  std::vector<double> history;
  std::int64_t step = 0;
  for (std::int64_t epoch = 1; epoch <= options_.training().epochs(); ++epoch) {
    net_->train();
    auto perm = torch::randperm(rows, gen, torch::kLong);
    double total = 0;
    std::int64_t batches = 0;
    for (std::int64_t b = 0; b + bs <= rows; b += bs, ++step) {
      throw_if_stopped(options_.stop(), "tae training");
      auto idx = perm.slice(0, b, b + bs);
      auto bx = rows_x.index_select(0, idx);
      auto beta = rows_eta.index_select(0, idx);
      auto btau = rows_tau.index_select(0, idx);

      // The ELBO with the adversarial decoupling term.
      auto [elbo_rows, w] =
          elbo(*net_, bx, beta, btau, options_.training().label_weight(),
               /*draw=*/&gen);
      auto mi = (beta * net_->adversary(w)).sum(1);  // log q_ψ(η|w)
      auto loss = -elbo_rows.mean() + options_.training().zeta() * mi.mean();
      // The input encoder learns with the same decoder, from x alone.
      // Its draws come from a stream of their own: R's model trains exactly
      // as it would without it.
      if (net_->input_encoder) {
        // A convolutional encoder sees 1 row in |R's tasks| of the batch
        // (rows are in random order): each input about once per epoch, at a
        // convolution's cost. At least 2 rows, for its BatchNorm.
        auto ex = bx, eidx = idx;
        if (net_->conv_encoders()) {
          const auto m = std::min(
              bs,
              std::max<std::int64_t>(2, (bs + tasks_in_r - 1) / tasks_in_r));
          ex = bx.slice(0, 0, m);
          eidx = idx.slice(0, 0, m);
        }
        torch::Tensor seen;
        if (shift > 0)
          seen = random_shifts(ex, net_->image_shape, shift, shift_gen);
        auto [input_rows, features] = input_elbo(
            *net_, ex, encoder_gen, TaeNetImpl::Encoder::kInput, seen);
        loss = loss - input_rows.mean();
        if (net_->answer_encoder) {
          auto answer = input_elbo(*net_, ex, answer_gen,
                                   TaeNetImpl::Encoder::kAnswer, seen);
          loss = loss - answer.value.mean();
          features = answer.features;
        }
        if (answer_weight > 0) {
          // Row r of R holds input r mod n.
          auto target = experts_union.index_select(0, eidx.remainder(n));
          auto log_p = torch::log_softmax(answer_head->forward(features), 1);
          loss = loss - answer_weight * (target * log_p).sum(1).mean();
        }
      }

      // Gibbs loss of one expert's own task under its prior, through the
      // prototypes: trains θ, α, γ so that G_w agrees with the experts.
      if (options_.training().gibbs_weight() > 0) {
        const auto e = step % tasks_in_r;
        auto eta_rows = torch::randint(n, {bs}, gen, torch::kLong);
        auto ex2 = x.index_select(0, eta_rows);
        auto eeta =
            answers[static_cast<std::size_t>(e)].index_select(0, eta_rows);
        // One task descriptor: BatchNorm uses its running statistics.
        net_->eval();
        auto [pm, plv] = net_->prior_w(taus.slice(0, e, e + 1));
        net_->train();
        auto ws = sample(pm.squeeze(0), plv.squeeze(0), gen);
        auto logg = log_g(ex2, ws);
        auto gibbs = 1 - (eeta * logg.exp()).sum(1);
        loss = loss + options_.training().gibbs_weight() * gibbs.mean();
      }
      main.zero_grad();
      loss.backward();
      main.step();

      // ψ maximises log q_ψ(η|w) on w it cannot move.
      auto adv_loss = -(beta * net_->adversary(w.detach())).sum(1).mean();
      adv.zero_grad();
      adv_loss.backward();
      adv.step();

      total += -elbo_rows.mean().item<double>();
      ++batches;
    }
    history.push_back(total / std::max<std::int64_t>(1, batches));
    if (options_.on_epoch()) options_.on_epoch()(epoch, history.back());
  }
  net_->eval();
  cluster_pool(x);
  return history;
}

void TaeModel::set_adaptation(TaeAdaptationOptions adaptation) {
  check_adaptation(adaptation);
  options_.adaptation(std::move(adaptation));
}

void TaeModel::cluster_pool(const torch::Tensor& x) {
  centres_ = torch::Tensor();
  covariance_ = torch::Tensor();
  const auto k = std::min(options_.training().pool_centres(), x.size(0));
  if (!net_->input_encoder || k <= 0) return;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> parts;
  for (std::int64_t b = 0; b < x.size(0); b += 4096)
    parts.push_back(features(x.slice(0, b, b + 4096)));
  const auto f = torch::cat(parts);  // [n, F], unit rows
  auto gen = make_generator(options_.seed() + kCentreStream);
  auto mu =
      f.index_select(
           0, torch::randperm(f.size(0), gen, torch::kLong).slice(0, 0, k))
          .clone();
  namespace F = torch::nn::functional;
  const auto unit = F::NormalizeFuncOptions().dim(1);
  for (int round = 0; round < 25; ++round) {
    throw_if_stopped(options_.stop(), "tae pool centres");
    auto nearest = torch::matmul(f, mu.t()).argmax(1);
    // A centre that wins no input stays where it is.
    mu = F::normalize(
        torch::zeros_like(mu).index_add_(0, nearest, f) + 1e-6 * mu, unit);
  }
  centres_ = mu;
  // Within-cluster covariance: each feature about its cluster's mean.
  const auto nearest = torch::matmul(f, mu.t()).argmax(1);
  auto sums = torch::zeros_like(mu).index_add_(0, nearest, f);
  auto counts = torch::bincount(nearest, {}, mu.size(0)).clamp_min(1);
  auto d = (f - (sums / counts.unsqueeze(1).to(f.scalar_type()))
                    .index_select(0, nearest))
               .to(torch::kFloat64);
  covariance_ = (torch::matmul(d.t(), d) / static_cast<double>(f.size(0)))
                    .to(torch::kFloat32);
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
    auto e = elbo(*net_, x, eta, tau, options_.training().label_weight(),
                  /*draw=*/nullptr);
    total += -e.value.mean().item<double>();
  }
  return total /
         static_cast<double>(std::max<std::size_t>(1, data.answers.size()));
}

std::string to_string(TaeReadout readout) {
  switch (readout) {
    case TaeReadout::kFeatures:
      return "features";
    case TaeReadout::kAuto:
      return "auto";
    case TaeReadout::kPrototypes:
      break;
  }
  return "prototypes";
}

TaeReadout parse_tae_readout(const std::string& name) {
  if (name == "features") return TaeReadout::kFeatures;
  if (name == "prototypes") return TaeReadout::kPrototypes;
  if (name == "auto") return TaeReadout::kAuto;
  fail(Code::kInvalidArgument,
       "unknown tae readout '{}' (expected auto, features or prototypes)",
       name);
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
      options_.adaptation().likelihood_scale() > 0
          ? options_.adaptation().likelihood_scale()
          : 1.0 / std::sqrt(static_cast<double>(net_->input_dim));
  return beta * log_px;
}

torch::Tensor TaeModel::log_g(const torch::Tensor& x, const torch::Tensor& w,
                              const std::vector<std::int64_t>& classes,
                              const torch::Tensor& votes) {
  auto lpx = log_px(x, w);  // [N, m]
  if (votes.defined()) {
    const auto width = task_width(classes, net_->outputs);
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
  const auto width = task_width(classes, net_->outputs);
  auto counts = torch::zeros({x.size(0), width});
  auto soft = torch::zeros({x.size(0), width});
  // Draws of its own: the same q always predicts the same.
  auto gen = make_generator(options_.seed() + tae_internal::kPredictStream);
  for (std::int64_t s = 0; s < options_.adaptation().samples(); ++s) {
    auto w = sample(q.mean, q.logvar, gen);
    auto lg = log_g(x, w, classes, votes);
    counts.scatter_add_(1, lg.argmax(1, true), torch::ones({x.size(0), 1}));
    soft += lg.exp();
  }
  // Votes decide; the mean of G breaks ties.
  auto out = counts +
             1e-3 * soft / static_cast<double>(options_.adaptation().samples());
  return normalise_rows(out);
}

torch::Tensor TaeModel::predict(const torch::Tensor& x,
                                const TaeAdaptation& adapted,
                                const std::vector<std::int64_t>& classes) {
  return predict(x, TaeTask{.classes = classes,
                            .q = adapted.posterior,
                            .votes = adapted.votes,
                            .head_weight = adapted.head_weight,
                            .head_bias = adapted.head_bias});
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

TaeTask TaeModel::default_task() {
  return default_task_ ? *default_task_ : task_of_all_outputs();
}

void TaeModel::check_head(const TaeTask& task, const std::string& what) const {
  if (!task.head_weight.defined() && !task.head_bias.defined()) return;
  const auto width = task_width(task.classes, net_->outputs);
  const auto hidden = feature_dim();
  CHORUS_CHECK(net_->input_encoder,
               "tae: {} has a features head, but this model has no input "
               "encoder to read features with",
               what);
  CHORUS_CHECK(
      task.head_weight.defined() && task.head_weight.dim() == 2 &&
          task.head_weight.size(0) == width &&
          task.head_weight.size(1) == hidden && task.head_bias.defined() &&
          task.head_bias.numel() == width,
      "tae: {}'s head must be a [{}, {}] weight and {} biases (adapted "
      "with another global model?)",
      what, width, hidden, width);
  CHORUS_CHECK(torch::isfinite(task.head_weight).all().item<bool>() &&
                   torch::isfinite(task.head_bias).all().item<bool>(),
               "tae: {}'s head holds NaN or Inf", what);
}

void TaeModel::set_default_task(TaeTask task) {
  const auto w_dim = net_->w_dim;
  CHORUS_CHECK(task.classes.empty(),
               "tae: the default task is over every output");
  CHORUS_CHECK(task.q.mean.defined() && task.q.mean.numel() == w_dim &&
                   task.q.logvar.defined() && task.q.logvar.numel() == w_dim,
               "tae: the default task's embedding must have {} values", w_dim);
  CHORUS_CHECK(
      !task.votes.defined() ||
          (task.votes.dim() == 2 && task.votes.size(0) == prototypes_.size(0) &&
           task.votes.size(1) == net_->outputs),
      "tae: the default task's votes must be [{}, {}]", prototypes_.size(0),
      net_->outputs);
  task.q.mean = task.q.mean.detach().to(torch::kFloat32).reshape({w_dim});
  task.q.logvar = task.q.logvar.detach().to(torch::kFloat32).reshape({w_dim});
  if (task.votes.defined())
    task.votes = task.votes.detach().to(torch::kFloat32).contiguous();
  check_head(task, "the default task");
  if (task.head_weight.defined()) {
    task.head_weight = task.head_weight.detach().to(torch::kFloat32).clone();
    task.head_bias =
        task.head_bias.detach().to(torch::kFloat32).reshape({-1}).clone();
  }
  default_task_ = std::move(task);
}

torch::Tensor TaeModel::predict(const torch::Tensor& x, const TaeTask& task) {
  if (task.head_weight.defined()) {
    // The features readout: the task's head over the input encoder's
    // features.
    check_head(task, "the task");
    const auto width = task_width(task.classes, net_->outputs);
    const auto weight_t = task.head_weight.to(torch::kFloat32).t();
    const auto bias = task.head_bias.to(torch::kFloat32).reshape({1, width});
    std::vector<torch::Tensor> parts;
    for (std::int64_t b = 0; b < x.size(0); b += 4096) {
      auto f = features(x.slice(0, b, b + 4096));
      parts.push_back(torch::softmax(torch::matmul(f, weight_t) + bias, 1));
    }
    return parts.empty() ? torch::zeros({0, width}) : torch::cat(parts);
  }
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

}  // namespace chorus::fusion
