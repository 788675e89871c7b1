// Adaptation of a pushed global model with the node's own shots (tae, dro),
// and the opt-in sharing of a built-in expert's weights.
#include <torch/torch.h>

#include "chorus/core/error.hpp"
#include "chorus/fusion/dro.hpp"
#include "chorus/node/adapt.hpp"
#include "chorus/protocol/tensor_codec.hpp"
#include "service_impl.hpp"

namespace chorus::node {

protocol::AdaptAnswer NodeService::adapt(const protocol::AdaptCall& req) {
  CHORUS_CHECK_CODE(
      impl_->options.shots != nullptr, Code::kFailedPrecondition,
      "this node has no labelled shots to adapt with (node config: "
      "[adapt] shots_per_class)");
  std::optional<StoredModel> stored;
  {
    std::lock_guard lock(impl_->mutex);
    stored = impl_->stored;
  }
  CHORUS_CHECK_CODE(
      stored && (stored->algorithm == "tae" || stored->algorithm == "dro"),
      Code::kFailedPrecondition,
      "no tae or dro global model has been pushed to this node (it holds {})",
      stored ? "a '" + stored->algorithm + "' model" : std::string("none"));
  std::lock_guard tae_lock(impl_->tae_mutex);
  if (stored->algorithm == "dro") {
    if (!impl_->dro || impl_->dro_round != stored->round) {
      impl_->dro.emplace(fusion::load_fused_model(stored->file));
      impl_->dro_round = stored->round;
    }
    const auto& labels = impl_->expert->labels();
    const auto classes = classes_in_space(*impl_->dro, labels);
    auto outcome = adapt_dro(*impl_->dro, classes, labels,
                             *impl_->options.shots, req.max_steps);
    outcome.round = stored->round;
    // The adapted weights stay here (adapted.pt); only counts leave.
    const auto written = write_adapted(impl_->options.state_dir, outcome);
    impl_->log->info(
        "event=adapted algorithm=dro round={} shots={} shot_accuracy={:.3f} "
        "written={}",
        req.round, outcome.shots, outcome.shot_accuracy, written.string());
    return protocol::AdaptAnswer{
        .shots = static_cast<std::uint32_t>(outcome.shots),
        .shot_accuracy = outcome.shot_accuracy};
  }
  if (!impl_->tae || impl_->tae_round != stored->round) {
    impl_->tae.emplace(fusion::TaeModel::load(stored->file));
    impl_->tae_round = stored->round;
  }
  auto& model = *impl_->tae;
  const auto classes = classes_of(model, impl_->expert->labels());
  torch::Tensor tau;
  if (!req.task_descriptor.empty()) {
    CHORUS_CHECK(
        static_cast<std::int64_t>(req.task_descriptor.size()) ==
            model.task_dim(),
        "the task descriptor has {} entries, the global model takes {}",
        req.task_descriptor.size(), model.task_dim());
    tau = torch::tensor(req.task_descriptor);
  }
  auto outcome = adapt_tae(model, classes, *impl_->options.shots, tau);
  outcome.round = stored->round;
  // The adapted model stays here: `chorus node adapt` and local use read it.
  const auto written = write_adapted(impl_->options.state_dir, outcome);
  const auto& result = outcome.adaptation;
  impl_->log->info(
      "event=adapted round={} shots={} bound={:.4f} gibbs={:.4f} kl={:.4f} "
      "shot_accuracy={:.3f} written={}",
      req.round, outcome.shots, result.bound, result.gibbs_loss, result.kl,
      outcome.shot_accuracy, written.string());
  return protocol::AdaptAnswer{
      .embedding_mean = protocol::to_blob(result.posterior.mean),
      .embedding_logvar = protocol::to_blob(result.posterior.logvar),
      .shots = static_cast<std::uint32_t>(outcome.shots),
      .bound = result.bound,
      .shot_accuracy = outcome.shot_accuracy};
}

protocol::WeightsAnswer NodeService::weights(const protocol::WeightsCall& req) {
  const auto& e = *impl_->expert;
  CHORUS_CHECK_CODE(e.options().share_weights, Code::kPermissionDenied,
                    "this node does not share its weights (node config: "
                    "[expert] share_weights = false)");
  auto model = e.builtin_model();
  CHORUS_CHECK_CODE(e.teachers() == 1, Code::kFailedPrecondition,
                    "this node's expert is an ensemble of {} teachers: it has "
                    "no one model's weights to share",
                    e.teachers());
  CHORUS_CHECK_CODE(model != nullptr && !e.options().spec.empty(),
                    Code::kFailedPrecondition,
                    "this node's expert is not a builtin model of a known "
                    "architecture: it has no weights to share");
  auto flat = fusion::flatten_model(*model);
  impl_->log->info("event=weights_shared round={} spec=\"{}\" parameters={}",
                   req.round, e.options().spec, flat.numel());
  return protocol::WeightsAnswer{.spec = e.options().spec,
                                 .parameters = protocol::to_blob(flat)};
}

}  // namespace chorus::node
