#include "chorus/fusion/distill.hpp"

#include <fmt/ranges.h>
#include <torch/torch.h>

#include "chorus/core/error.hpp"
#include "chorus/fusion/ensemble.hpp"
#include "chorus/fusion/random.hpp"

namespace chorus::fusion {

torch::Tensor sharpen(const torch::Tensor& probs, double temperature) {
  CHORUS_CHECK(temperature > 0, "temperature must be positive, got {}",
               temperature);
  if (temperature == 1.0) return probs;
  auto p = probs.clamp_min(1e-12).pow(1.0 / temperature);
  return normalise_rows(p);
}

DistillResult distill(const torch::Tensor& inputs, const torch::Tensor& teacher,
                      const DistillOptions& options, std::string algorithm,
                      const torch::Tensor& labelled_inputs,
                      const torch::Tensor& labels) {
  CHORUS_CHECK(inputs.size(0) == teacher.size(0) && teacher.dim() == 2,
               "distill: {} inputs but teacher targets of shape [{}]",
               inputs.size(0), fmt::join(teacher.sizes(), ", "));
  CHORUS_CHECK(options.holdout() >= 0 && options.holdout() < 1,
               "distill: holdout must be in [0, 1), got {}", options.holdout());
  const std::int64_t n = inputs.size(0);
  const std::int64_t classes = teacher.size(1);
  auto targets = sharpen(teacher.to(torch::kFloat32), options.temperature());

  // Deterministic hold-out split of the transfer inputs.
  auto split = make_generator(options.seed());
  auto order = torch::randperm(n, split, torch::kLong);
  const auto n_val = static_cast<std::int64_t>(n * options.holdout());
  auto val_idx = order.slice(0, 0, n_val);
  auto train_idx = order.slice(0, n_val, n);
  auto x = inputs.index_select(0, train_idx);
  auto y = targets.index_select(0, train_idx);
  if (labelled_inputs.defined() && labelled_inputs.size(0) > 0) {
    CHORUS_CHECK(labels.defined() && labels.size(0) == labelled_inputs.size(0),
                 "distill: {} labelled inputs but {} labels",
                 labelled_inputs.size(0),
                 labels.defined() ? labels.size(0) : 0);
    x = torch::cat({x, labelled_inputs});
    y = torch::cat({y, torch::one_hot(labels, classes).to(torch::kFloat32)});
  }

  ModelSpec spec;
  spec.input_shape = inputs.sizes().slice(1).vec();
  spec.arch = resolve_architecture(options.arch(), spec.input_shape);
  spec.num_classes = classes;
  if (spec.arch == "mlp") spec.hidden = options.hidden();
  auto init = make_generator(options.init_seed().value_or(options.seed()));
  auto student = make_classifier(spec, init);
  auto train_options = TrainOptions()
                           .epochs(options.epochs())
                           .batch_size(options.batch_size())
                           .lr(options.lr())
                           .patience(n_val > 0 ? options.patience() : 0)
                           .seed(options.seed())
                           .threads(options.threads())
                           .device(options.device())
                           .stop(options.stop())
                           .progress("fit: distilled student")
                           .on_epoch(options.on_epoch());
  DistillResult result;
  result.train = n_val > 0 ? train(*student, x, y, train_options,
                                   inputs.index_select(0, val_idx),
                                   targets.index_select(0, val_idx))
                           : train(*student, x, y, train_options);
  result.model = FusedModel{.algorithm = std::move(algorithm),
                            .spec = spec,
                            .attributes = {},
                            .model = student};
  return result;
}

std::vector<DistillResult> distill_imitators(
    const torch::Tensor& inputs, const std::vector<torch::Tensor>& answers,
    const QueryOracle& oracle, const DistillOptions& options) {
  CHORUS_CHECK(
      static_cast<std::int64_t>(answers.size()) == oracle.num_experts(),
      "imitators: {} answers for {} experts", answers.size(),
      oracle.num_experts());
  std::vector<DistillResult> out;
  for (std::size_t i = 0; i < answers.size(); ++i) {
    auto options_i = options;
    options_i.seed(options.seed() + i);
    auto result = distill(inputs, answers[i], options_i, "imitator");
    const auto& info = oracle.experts()[i];
    result.model.attributes["expert"] = info.name;
    result.model.attributes["labels"] =
        fmt::format("{}", fmt::join(info.labels, ","));
    out.push_back(std::move(result));
  }
  return out;
}

}  // namespace chorus::fusion
