#include "chorus/fusion/foe.hpp"

#include <torch/torch.h>

#include "chorus/core/error.hpp"
#include "chorus/fusion/random.hpp"

namespace chorus::fusion {
namespace {

constexpr double kLogEpsilon = 1e-6;

const char* feature_name(FoeFeatures f) {
  return f == FoeFeatures::kLogProbs ? "logprobs" : "probs";
}

}  // namespace

Foe::Foe(FoeOptions options) : options_(std::move(options)) {}

torch::Tensor Foe::features(const std::vector<torch::Tensor>& answers,
                            FoeFeatures form) {
  CHORUS_CHECK(!answers.empty(), "foe: no expert answers");
  auto f = torch::cat(answers, /*dim=*/1).to(torch::kFloat32);
  if (form == FoeFeatures::kLogProbs) f = torch::log(f + kLogEpsilon);
  return f;
}

TrainResult Foe::fit(const std::vector<torch::Tensor>& answers,
                     const torch::Tensor& labels, std::int64_t num_classes,
                     const std::vector<torch::Tensor>& unlabelled) {
  auto x = features(answers, options_.features());
  CHORUS_CHECK(x.size(0) == labels.size(0),
               "foe: {} feature rows but {} labels", x.size(0), labels.size(0));
  spec_ = ModelSpec{.arch = "mlp",
                    .input_shape = {x.size(1)},
                    .num_classes = num_classes,
                    .hidden = options_.hidden()};
  auto make_fuser = [&] {
    auto gen = make_generator(options_.seed());
    return make_classifier(spec_, gen);
  };
  auto train_options = TrainOptions()
                           .epochs(options_.epochs())
                           .batch_size(options_.batch_size())
                           .lr(options_.lr())
                           .weight_decay(options_.weight_decay())
                           .optimizer(Optimizer::kAdamW)
                           .seed(options_.seed())
                           .threads(options_.threads())
                           .device(options_.device())
                           .stop(options_.stop())
                           .progress("fit: FoE fuser")
                           .on_epoch(options_.on_epoch());
  fuser_ = make_fuser();
  TrainResult result = train(*fuser_, x, labels, train_options);
  if (options_.self_training_rounds() > 0 && !unlabelled.empty()) {
    auto u = features(unlabelled, options_.features());
    for (std::int64_t round = 0; round < options_.self_training_rounds();
         ++round) {
      auto probs = fusion::predict_proba(*fuser_, u);
      auto [confidence, pseudo] = probs.max(1);
      auto keep =
          confidence.ge(options_.pseudo_label_confidence()).nonzero().flatten();
      auto xs = torch::cat({x, u.index_select(0, keep)});
      auto ys = torch::cat({labels, pseudo.index_select(0, keep)});
      fuser_ = make_fuser();
      result = train(*fuser_, xs, ys, train_options);
    }
  }
  return result;
}

torch::Tensor Foe::predict_proba(
    const std::vector<torch::Tensor>& answers) const {
  CHORUS_CHECK_CODE(fuser_ != nullptr, Code::kFailedPrecondition,
                    "foe: predict before fit");
  auto x = features(answers, options_.features());
  CHORUS_CHECK(x.size(1) == spec_.input_shape.at(0),
               "foe: {} features, the fuser was trained on {}", x.size(1),
               spec_.input_shape.at(0));
  return fusion::predict_proba(*fuser_, x);
}

FusedModel Foe::to_fused_model() const {
  CHORUS_CHECK_CODE(fuser_ != nullptr, Code::kFailedPrecondition,
                    "foe: save before fit");
  return FusedModel{
      .algorithm = "foe",
      .spec = spec_,
      .attributes = {{"features", feature_name(options_.features())}},
      .model = fuser_};
}

Foe Foe::from_fused_model(const FusedModel& fused) {
  CHORUS_CHECK(fused.algorithm == "foe", "not a foe model: '{}'",
               fused.algorithm);
  FoeOptions options;
  auto it = fused.attributes.find("features");
  options.features(it != fused.attributes.end() && it->second == "logprobs"
                       ? FoeFeatures::kLogProbs
                       : FoeFeatures::kProbs);
  options.hidden(fused.spec.hidden);
  Foe foe(options);
  foe.spec_ = fused.spec;
  foe.fuser_ = fused.model;
  return foe;
}

}  // namespace chorus::fusion
