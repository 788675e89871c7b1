#include <torch/torch.h>

#include "chorus/core/error.hpp"
#include "chorus/fusion/tae.hpp"
#include "tae_internal.hpp"

namespace chorus::fusion {
namespace {

namespace nn = torch::nn;
using tae_internal::clamp_logvar;

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

// A LeNet-like trunk for images [C, H, W] given flat: two 5×5
// convolutions (c and 2c channels), each with BatchNorm, ReLU and 2×2
// max-pooling, then the hidden layer.
nn::Sequential conv_trunk(const std::vector<std::int64_t>& shape,
                          std::int64_t c, std::int64_t hidden) {
  const auto h = shape[1] / 2 / 2, w = shape[2] / 2 / 2;
  auto conv = [](std::int64_t in, std::int64_t out) {
    return nn::Conv2d(nn::Conv2dOptions(in, out, 5).padding(2));
  };
  return nn::Sequential(
      nn::Unflatten(nn::UnflattenOptions(1, shape)), conv(shape[0], c),
      nn::BatchNorm2d(c), nn::ReLU(), nn::MaxPool2d(nn::MaxPool2dOptions(2)),
      conv(c, 2 * c), nn::BatchNorm2d(2 * c), nn::ReLU(),
      nn::MaxPool2d(nn::MaxPool2dOptions(2)), nn::Flatten(),
      nn::Linear(2 * c * h * w, hidden), nn::BatchNorm1d(hidden), nn::ReLU());
}

}  // namespace

TaeNetImpl::TaeNetImpl(std::int64_t d, std::int64_t c, std::int64_t t,
                       const TaeOptions& o)
    : input_dim(d),
      outputs(c),
      task_dim(t),
      w_dim(o.network().w_dim()),
      z_dim(o.network().z_dim()),
      input_encoder(o.network().input_encoder()),
      answer_encoder(o.network().input_encoder() &&
                     o.network().answer_encoder()) {
  if (tae_internal::takes_conv_trunk(o.network())) {
    image_shape = o.network().image_shape();
    conv_channels = o.network().conv_channels();
  }
  const auto h = o.network().hidden();
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
  if (input_encoder) enc_x_ = register_encoder("enc_x", h);
  if (answer_encoder) enc_a_ = register_encoder("enc_a", h);
}

TaeNetImpl::EncoderModules TaeNetImpl::register_encoder(
    const std::string& prefix, std::int64_t hidden) {
  // In this order: initialisation draws follow registration.
  EncoderModules e;
  e.trunk = register_module(prefix + "_trunk",
                            conv_encoders()
                                ? conv_trunk(image_shape, conv_channels, hidden)
                                : trunk(input_dim, hidden));
  e.mean = register_module(prefix + "_mean", nn::Linear(hidden, w_dim + z_dim));
  e.logvar =
      register_module(prefix + "_logvar", nn::Linear(hidden, w_dim + z_dim));
  return e;
}

TaeNetImpl::EncoderModules TaeNetImpl::encoder_modules(Encoder encoder) const {
  if (encoder == Encoder::kAnswer) {
    CHORUS_CHECK_CODE(answer_encoder, Code::kFailedPrecondition,
                      "tae: this model has no answer encoder (trained "
                      "without TaeNetworkOptions::answer_encoder)");
    return enc_a_;
  }
  CHORUS_CHECK_CODE(input_encoder, Code::kFailedPrecondition,
                    "tae: this model has no input encoder (trained without "
                    "TaeNetworkOptions::input_encoder)");
  return enc_x_;
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

std::pair<torch::Tensor, torch::Tensor> TaeNetImpl::encode_features(
    const torch::Tensor& h, Encoder encoder) {
  auto e = encoder_modules(encoder);
  return {e.mean->forward(h), clamp_logvar(e.logvar->forward(h))};
}

torch::Tensor TaeNetImpl::input_features(const torch::Tensor& x,
                                         Encoder encoder) {
  return encoder_modules(encoder).trunk->forward(x);
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

std::vector<torch::Tensor> TaeNetImpl::decoder_parameters() {
  return dec_x_->parameters();
}

void TaeNetImpl::decoder_eval(bool eval) { dec_x_->train(!eval); }

std::vector<torch::Tensor> TaeNetImpl::adversary_parameters() {
  return adv_->parameters();
}

namespace tae_internal {

Elbo elbo(TaeNetImpl& net, const torch::Tensor& x, const torch::Tensor& eta,
          const torch::Tensor& tau, double label_weight, at::Generator* draw) {
  auto [mz, lvz] = net.encode_z(x, eta);
  auto [mw, lvw] = net.encode_w(x, tau);
  auto z = draw ? sample(mz, lvz, *draw) : mz;
  auto w = draw ? sample(mw, lvw, *draw) : mw;
  auto rec = bernoulli_log_likelihood(net.decode_x(w, z), x);
  auto pred = (eta * net.decode_y(z)).sum(1);
  auto kl_z = kl_gauss(mz, lvz, torch::zeros_like(mz), torch::zeros_like(lvz));
  auto [mp, lvp] = net.prior_w(tau);
  auto kl_w = kl_gauss(mw, lvw, mp, lvp);
  return {rec + label_weight * pred - kl_z - kl_w, w};
}

InputElbo input_elbo(TaeNetImpl& net, const torch::Tensor& x,
                     at::Generator& draw, TaeNetImpl::Encoder encoder,
                     const torch::Tensor& seen) {
  auto features = net.input_features(seen.defined() ? seen : x, encoder);
  auto [m, lv] = net.encode_features(features, encoder);
  auto h = sample(m, lv, draw);
  auto w = h.slice(1, 0, net.w_dim), z = h.slice(1, net.w_dim);
  // The decoder is R's: this term teaches the encoder to invert it and
  // leaves it (and so the prototypes' likelihoods) as the ELBO of R makes
  // it — no gradient to its parameters, and its BatchNorm in eval mode so
  // that these batches do not move its running statistics.
  auto decoder = net.decoder_parameters();
  for (auto& p : decoder) p.set_requires_grad(false);
  const bool was_training = net.is_training();
  net.decoder_eval(true);
  auto logits = net.decode_x(w, z);
  net.decoder_eval(!was_training);
  for (auto& p : decoder) p.set_requires_grad(true);
  return {bernoulli_log_likelihood(logits, x) -
              kl_gauss(m, lv, torch::zeros_like(m), torch::zeros_like(lv)),
          features};
}

torch::Tensor random_shifts(const torch::Tensor& x,
                            const std::vector<std::int64_t>& shape,
                            std::int64_t r, at::Generator& gen) {
  const auto n = x.size(0), h = shape[1], w = shape[2];
  namespace F = torch::nn::functional;
  auto padded =
      F::pad(x.reshape({n, shape[0], h, w}), F::PadFuncOptions({r, r, r, r}));
  auto offsets = torch::randint(2 * r + 1, {n, 2}, gen, torch::kLong);
  auto o = offsets.accessor<std::int64_t, 2>();
  std::vector<torch::Tensor> rows;
  rows.reserve(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    rows.push_back(padded[i]
                       .slice(1, o[i][0], o[i][0] + h)
                       .slice(2, o[i][1], o[i][1] + w));
  }
  return torch::stack(rows).reshape({n, -1});
}

}  // namespace tae_internal
}  // namespace chorus::fusion
