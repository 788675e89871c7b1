#include "chorus/fusion/dro.hpp"

#include <fmt/ranges.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>

#include "chorus/core/error.hpp"
#include "chorus/fusion/random.hpp"
#include "chorus/fusion/train.hpp"

namespace chorus::fusion {
namespace {

// The tensors a model's flat vector holds: parameters, then float buffers
// (BatchNorm's running statistics), in registration order.
std::vector<torch::Tensor> flat_parts(ClassifierImpl& model) {
  std::vector<torch::Tensor> out;
  for (const auto& p : model.parameters()) out.push_back(p);
  for (const auto& b : model.buffers()) {
    if (b.is_floating_point()) out.push_back(b);
  }
  return out;
}

std::int64_t sample(const std::vector<std::int64_t>& from, at::Generator& gen) {
  const auto k = torch::randint(static_cast<std::int64_t>(from.size()), {1},
                                gen, torch::kLong)
                     .item<std::int64_t>();
  return from[static_cast<std::size_t>(k)];
}

void check_options(const DroOptions& o) {
  CHORUS_CHECK(o.embedding_dim() > 0, "dro: embedding_dim must be positive");
  CHORUS_CHECK(o.sigma() > 0, "dro: sigma must be positive, got {}", o.sigma());
  CHORUS_CHECK(o.inner_steps() >= 0 && o.dro_steps() >= 0,
               "dro: inner_steps and dro_steps must not be negative");
  CHORUS_CHECK(o.meta_steps() > 0 && o.online_steps() > 0,
               "dro: meta_steps and online_steps must be positive");
  CHORUS_CHECK(o.meta_lr() > 0 && o.inner_lr() >= 0,
               "dro: meta_lr must be positive and inner_lr not negative");
  CHORUS_CHECK(o.validation() > 0 && o.validation() < 1,
               "dro: validation must be in (0, 1), got {}", o.validation());
  CHORUS_CHECK(!o.gammas().empty(), "dro: the γ grid is empty");
  for (double g : o.gammas()) {
    CHORUS_CHECK(g >= 0 && std::isfinite(g),
                 "dro: every γ must be finite and not negative, got {}", g);
  }
}

// One run of meta-training with a fixed γ: φ, the embeddings, θ_init.
struct Trained {
  torch::Tensor init, embeddings;
};

// The hypernetwork is linear, so every gradient below is closed-form and
// rank one in W: the updates are applied in place, one pass over W each,
// with no autograd graph and no [P, D] temporaries (W holds P × D floats,
// 10 M for the default LeNet).
class MetaTrainer {
 public:
  MetaTrainer(const std::vector<torch::Tensor>& models,
              const std::vector<std::int64_t>& layers, const DroOptions& o,
              double gamma, at::Generator& gen)
      : models_(models),
        options_(o),
        gamma_(gamma),
        hyper_(layers, o.embedding_dim(), o.sigma(), gen) {
    const auto n = static_cast<std::int64_t>(models.size());
    embeddings_ = torch::randn({n, o.embedding_dim()}, gen) /
                  std::sqrt(static_cast<double>(o.embedding_dim()));
  }

  void start_from(const torch::Tensor& theta) {
    torch::NoGradGuard no_grad;
    hyper_.bias().copy_(theta);
  }

  // One outer update: K inner SGD steps on φ for meta-train model i, the
  // worst-case embedding e* of validation model j under φ*, and an SGD step
  // on the likelihood of j at e* (first-order: the gradient at φ* is
  // applied to φ), with the fitting terms of e_i (and φ) and of e_j.
  void step(std::int64_t i, std::int64_t j) {
    torch::NoGradGuard no_grad;
    const auto& theta_i = models_[static_cast<std::size_t>(i)];
    const auto& theta_j = models_[static_cast<std::size_t>(j)];
    const double alpha = options_.inner_lr();
    const double lr = options_.meta_lr();
    auto& w = hyper_.weight();
    auto& b = hyper_.bias();
    auto ei = embeddings_[i].clone();
    auto ej = embeddings_[j].clone();
    // f_φ at e_i and e_j (matrix-vector products: BLAS packs a matrix
    // for a product with even two columns, which costs more than a pass).
    auto fi = torch::addmv(b, w, ei);
    auto fj = torch::addmv(b, w, ej);
    // K SGD steps on φ for model i change f_φ by −α R (e_i·e + 1).
    const double cii = ei.dot(ei).item<double>() + 1;
    auto correction = torch::zeros_like(fi);
    for (std::int64_t k = 0; k < options_.inner_steps(); ++k)
      correction += hyper_.nll_grad(theta_i, fi - alpha * cii * correction);
    auto adapted_at = [&](const torch::Tensor& e, const torch::Tensor& fe) {
      return fe - alpha * correction * (ei.dot(e) + 1);
    };
    // ∇_e nll(θ_j, f_φ*(e)) = Wᵀ r − α (R·r) e_i.
    auto grad_at = [&](const torch::Tensor& e) {
      auto fe = e.equal(ej) ? fj : torch::addmv(b, w, e);
      auto r = hyper_.nll_grad(theta_j, adapted_at(e, fe));
      return torch::mv(w.t(), r) - alpha * correction.dot(r) * ei;
    };
    auto e_star =
        Hypernetwork::worst_case(grad_at, ej, gamma_, options_.dro_steps());
    auto f_star = e_star.equal(ej) ? fj : torch::addmv(b, w, e_star);
    auto r1 = hyper_.nll_grad(theta_i, fi);                          // L_i
    auto r2 = hyper_.nll_grad(theta_j, adapted_at(e_star, f_star));  // L_j*
    auto r3 = hyper_.nll_grad(theta_j, fj);  // fits e_j only
    // Embedding gradients Wᵀ r1, Wᵀ r3, before W moves.
    auto gi = torch::mv(w.t(), r1);
    auto gj = torch::mv(w.t(), r3);
    // W −= lr (r1 e_iᵀ + r2 e*ᵀ) as two rank-one updates; b −= lr (r1 + r2).
    w.addr_(r1, ei, 1.0, -lr);
    w.addr_(r2, e_star, 1.0, -lr);
    b.sub_(lr * (r1 + r2));
    embeddings_[i].sub_(lr * gi);
    embeddings_[j].sub_(lr * gj);
  }

  // Fits one model alone (the online mode's first arrival).
  void fit(std::int64_t i) {
    torch::NoGradGuard no_grad;
    const auto& theta = models_[static_cast<std::size_t>(i)];
    auto& w = hyper_.weight();
    const double lr = options_.meta_lr();
    auto e = embeddings_[i].clone();
    auto r = hyper_.nll_grad(theta, torch::addmv(hyper_.bias(), w, e));
    auto ge = torch::mv(w.t(), r);
    w.addr_(r, e, 1.0, -lr);
    hyper_.bias().sub_(lr * r);
    embeddings_[i].sub_(lr * ge);
  }

  Trained result() {
    torch::NoGradGuard no_grad;
    auto e = embeddings_.clone();
    return {hyper_(e.mean(0)).clone(), e};
  }

 private:
  const std::vector<torch::Tensor>& models_;
  const DroOptions& options_;
  double gamma_;
  Hypernetwork hyper_;
  torch::Tensor embeddings_;
};

Trained train_offline(const std::vector<torch::Tensor>& models,
                      const std::vector<std::int64_t>& layers,
                      const DroOptions& o, double gamma,
                      const std::vector<std::int64_t>& meta_train,
                      const std::vector<std::int64_t>& meta_val) {
  auto gen = make_generator(o.seed());
  MetaTrainer trainer(models, layers, o, gamma, gen);
  auto mean = torch::zeros_like(models.front());
  for (auto i : meta_train) mean += models[static_cast<std::size_t>(i)];
  trainer.start_from(mean / static_cast<double>(meta_train.size()));
  for (std::int64_t s = 0; s < o.meta_steps(); ++s) {
    throw_if_stopped(o.stop(), "dro meta-training");
    trainer.step(sample(meta_train, gen), sample(meta_val, gen));
  }
  return trainer.result();
}

Trained train_online(const std::vector<torch::Tensor>& models,
                     const std::vector<std::int64_t>& layers,
                     const DroOptions& o, double gamma) {
  auto gen = make_generator(o.seed());
  MetaTrainer trainer(models, layers, o, gamma, gen);
  trainer.start_from(models.front());
  for (std::int64_t s = 0; s < o.online_steps(); ++s) trainer.fit(0);
  for (std::size_t t = 1; t < models.size(); ++t) {
    throw_if_stopped(o.stop(), "dro meta-training");
    // The arrival is the validation model; the one before it, kept in a
    // buffer of one, the meta-train model.
    for (std::int64_t s = 0; s < o.online_steps(); ++s) {
      trainer.step(static_cast<std::int64_t>(t) - 1,
                   static_cast<std::int64_t>(t));
    }
  }
  return trainer.result();
}

}  // namespace

torch::Tensor flatten_model(ClassifierImpl& model) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> flat;
  for (const auto& t : flat_parts(model))
    flat.push_back(t.detach().to(torch::kCPU, torch::kFloat32).flatten());
  return torch::cat(flat);
}

void unflatten_into(ClassifierImpl& model, const torch::Tensor& flat) {
  torch::NoGradGuard no_grad;
  auto parts = flat_parts(model);
  std::int64_t total = 0;
  for (const auto& t : parts) total += t.numel();
  CHORUS_CHECK(flat.dim() == 1 && flat.numel() == total,
               "dro: a parameter vector of {} values for a model of {}",
               flat.numel(), total);
  std::int64_t at = 0;
  for (auto& t : parts) {
    t.copy_(flat.slice(0, at, at + t.numel()).view_as(t));
    at += t.numel();
  }
}

std::vector<std::int64_t> layer_sizes(ClassifierImpl& model) {
  std::vector<std::int64_t> out;
  for (const auto& t : flat_parts(model)) out.push_back(t.numel());
  return out;
}

Hypernetwork::Hypernetwork(std::vector<std::int64_t> layers,
                           std::int64_t embedding_dim, double sigma,
                           at::Generator& gen)
    : inv_var_(1.0 / (sigma * sigma)) {
  CHORUS_CHECK(!layers.empty(), "dro: a hypernetwork needs target layers");
  // One linear map per target layer, stacked: layer l's rows of W and b
  // are that layer's map.
  std::vector<torch::Tensor> maps;
  for (auto n : layers) {
    CHORUS_CHECK(n > 0, "dro: a target layer of {} values", n);
    maps.push_back(torch::randn({n, embedding_dim}, gen) * 1e-3);
  }
  weight_ = torch::cat(maps).requires_grad_(true);
  bias_ = torch::zeros({weight_.size(0)}).requires_grad_(true);
}

torch::Tensor Hypernetwork::operator()(const torch::Tensor& e) const {
  return torch::addmv(bias_, weight_, e);
}

torch::Tensor Hypernetwork::detached(const torch::Tensor& e) const {
  return torch::addmv(bias_.detach(), weight_.detach(), e);
}

torch::Tensor Hypernetwork::nll(const torch::Tensor& theta,
                                const torch::Tensor& f) const {
  return (f - theta).square().sum() * inv_var_;
}

torch::Tensor Hypernetwork::nll_grad(const torch::Tensor& theta,
                                     const torch::Tensor& f) const {
  return 2 * inv_var_ * (f - theta);
}

torch::Tensor Hypernetwork::grad_embedding(const torch::Tensor& theta,
                                           const torch::Tensor& e) const {
  torch::NoGradGuard no_grad;
  return torch::mv(weight_.t(),
                   nll_grad(theta, torch::addmv(bias_, weight_, e)));
}

torch::Tensor Hypernetwork::worst_case(
    const std::function<torch::Tensor(const torch::Tensor&)>& grad_of,
    const torch::Tensor& e, double gamma, std::int64_t steps) {
  auto start = e.detach();
  if (gamma <= 0 || steps <= 0) return start.clone();
  torch::NoGradGuard no_grad;
  auto current = start.clone();
  for (std::int64_t k = 0; k < steps; ++k) {
    // The maximiser of the linearised objective g·(e′ − e) − γ‖e′ − e‖².
    current = start + grad_of(current) / (2 * gamma);
  }
  return current;
}

DroFit meta_learn(const std::vector<torch::Tensor>& models,
                  const std::vector<std::int64_t>& layers,
                  const DroOptions& options) {
  check_options(options);
  const auto n = static_cast<std::int64_t>(models.size());
  CHORUS_CHECK(n >= 2, "dro: meta-learning needs at least 2 models, got {}", n);
  std::int64_t total = 0;
  for (auto l : layers) total += l;
  for (std::size_t i = 0; i < models.size(); ++i) {
    CHORUS_CHECK(models[i].dim() == 1 && models[i].numel() == total,
                 "dro: model {} has {} parameters, the architecture {}", i,
                 models[i].numel(), total);
    CHORUS_CHECK(torch::isfinite(models[i]).all().item<bool>(),
                 "dro: model {} has parameters that are not finite", i);
  }
  ThreadGuard threads(options.threads());
  torch::AutoGradMode grad_mode(true);  // a caller's NoGradGuard aside
  const auto start = std::chrono::steady_clock::now();
  DroFit fit;
  if (options.online()) {
    double gamma = 0;
    for (double g : options.gammas()) {
      if (g > 0) {
        gamma = g;
        break;
      }
    }
    auto trained = train_online(models, layers, options, gamma);
    fit.init = trained.init;
    fit.embeddings = trained.embeddings;
    fit.gamma = gamma;
  } else {
    // The 80/20 split into meta-train S and meta-validation Q.
    std::vector<std::int64_t> meta_train, meta_val;
    {
      auto split = make_generator(options.seed() + 7919);
      auto order = torch::randperm(n, split, torch::kLong);
      const auto n_val = std::clamp<std::int64_t>(
          std::llround(static_cast<double>(n) * options.validation()), 1,
          n - 1);
      for (std::int64_t k = 0; k < n; ++k) {
        auto m = order[k].item<std::int64_t>();
        (k < n_val ? meta_val : meta_train).push_back(m);
      }
    }
    double best = std::numeric_limits<double>::infinity();
    for (double gamma : options.gammas()) {
      auto trained =
          train_offline(models, layers, options, gamma, meta_train, meta_val);
      // γ is chosen by the validation models' likelihood at θ_init.
      // Only its likelihood is used: its weights do not matter.
      auto unused = make_generator(0);
      Hypernetwork scorer(layers, 1, options.sigma(), unused);
      double score = 0;
      {
        torch::NoGradGuard no_grad;
        for (auto j : meta_val) {
          score += scorer.nll(models[static_cast<std::size_t>(j)], trained.init)
                       .item<double>();
        }
      }
      score /= static_cast<double>(meta_val.size());
      fit.validation_nll.emplace_back(gamma, score);
      if (score < best) {
        best = score;
        fit.init = trained.init;
        fit.embeddings = trained.embeddings;
        fit.gamma = gamma;
      }
    }
  }
  fit.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  return fit;
}

std::shared_ptr<ClassifierImpl> resize_head(const FusedModel& init,
                                            std::int64_t ways) {
  CHORUS_CHECK(ways >= 2, "dro: a task needs at least 2 classes, got {}", ways);
  auto spec = init.spec;
  spec.num_classes = ways;
  auto model = make_classifier(spec);  // every weight is overwritten below
  torch::NoGradGuard no_grad;
  auto from = flat_parts(*init.model);
  auto to = flat_parts(*model);
  CHORUS_CHECK(from.size() == to.size(),
               "dro: the initialisation has {} tensors, its architecture {}",
               from.size(), to.size());
  for (std::size_t k = 0; k < to.size(); ++k) {
    if (from[k].sizes() == to[k].sizes()) {
      to[k].copy_(from[k]);
    } else {
      CHORUS_CHECK(
          from[k].dim() >= 1 && from[k].size(0) == init.spec.num_classes &&
              from[k].sizes().slice(1) == to[k].sizes().slice(1),
          "dro: tensor {} of shape [{}] does not fit [{}]", k,
          fmt::join(from[k].sizes(), ", "), fmt::join(to[k].sizes(), ", "));
      to[k].copy_(from[k].mean(0, /*keepdim=*/true).expand_as(to[k]));
    }
  }
  return model;
}

std::shared_ptr<ClassifierImpl> adapt_initialisation(
    const FusedModel& init, const torch::Tensor& x, const torch::Tensor& y,
    std::int64_t ways, std::int64_t steps, double lr, std::uint64_t seed) {
  CHORUS_CHECK(
      x.defined() && y.defined() && x.size(0) == y.size(0) && x.size(0) > 0,
      "dro: adaptation needs labelled examples ({} inputs, {} "
      "labels)",
      x.defined() ? x.size(0) : 0, y.defined() ? y.size(0) : 0);
  CHORUS_CHECK(
      y.min().item<std::int64_t>() >= 0 && y.max().item<std::int64_t>() < ways,
      "dro: labels must be in [0, {}), got {}..{}", ways,
      y.min().item<std::int64_t>(), y.max().item<std::int64_t>());
  CHORUS_CHECK(steps >= 0 && lr > 0, "dro: {} steps at lr {}", steps, lr);
  auto model = resize_head(init, ways);
  // In eval mode: no dropout, and BatchNorm keeps the initialisation's
  // statistics (a few shots estimate them badly); deterministic for a
  // full batch, and batches beyond 256 drawn from a generator of its own.
  torch::AutoGradMode grad_mode(true);
  model->eval();
  auto gen = make_generator(seed);
  torch::optim::SGD sgd(model->parameters(),
                        torch::optim::SGDOptions(lr).momentum(0.9));
  constexpr std::int64_t kBatch = 256;
  const auto n = x.size(0);
  auto inputs = x.to(torch::kFloat32);
  for (std::int64_t s = 0; s < steps; ++s) {
    torch::Tensor bx = inputs, by = y;
    if (n > kBatch) {
      auto rows = torch::randperm(n, gen, torch::kLong).slice(0, 0, kBatch);
      bx = inputs.index_select(0, rows);
      by = y.index_select(0, rows);
    }
    auto loss = torch::nn::functional::cross_entropy(model->forward(bx), by);
    sgd.zero_grad();
    loss.backward();
    sgd.step();
  }
  model->eval();
  return model;
}

FusedModel dro_model(const ModelSpec& spec, const DroFit& fit,
                     const std::string& source, std::int64_t models,
                     const DroOptions& options) {
  auto model = make_classifier(spec);  // every weight is overwritten below
  unflatten_into(*model, fit.init);
  FusedModel out{
      .algorithm = "dro",
      .spec = spec,
      .attributes = {{"gamma", fmt::format("{}", fit.gamma)},
                     {"models", std::to_string(models)},
                     {"source", source},
                     {"adapt_steps", std::to_string(options.adapt_steps())},
                     {"adapt_lr", fmt::format("{}", options.adapt_lr())},
                     {"embedding_dim",
                      std::to_string(fit.embeddings.defined()
                                         ? fit.embeddings.size(1)
                                         : 0)}},
      .model = model};
  return out;
}

}  // namespace chorus::fusion
