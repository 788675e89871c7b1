// The node's answers: admission (shape, dtype, budget, rate), inference in
// batches, and the policy's shaping of what leaves.
#include <fmt/ranges.h>
#include <torch/torch.h>

#include "chorus/core/error.hpp"
#include "chorus/fusion/data_files.hpp"
#include "chorus/fusion/gnmax.hpp"
#include "chorus/protocol/tensor_codec.hpp"
#include "service_impl.hpp"

namespace chorus::node {

std::shared_ptr<PredictJob> NodeService::admit_predict(
    const protocol::PredictCall& req) {
  std::shared_ptr<const TaskSpec> task;
  {
    std::lock_guard lock(impl_->mutex);
    task = impl_->task;
  }
  // With a task, inputs come in its dtype and shape ([H, W] experts take
  // [1, H, W] tasks); float32 is always accepted.
  const auto shape = task ? task->input_shape : impl_->expert->input_shape();
  const bool uint8_ok = task && task->dtype == InputDType::kUInt8;
  std::int64_t per_input = 1;
  for (auto d : shape) per_input *= d;
  const auto expected = fmt::format("{} [N, {}] with 1 <= N <= {}",
                                    uint8_ok ? "uint8 (or float32)" : "float32",
                                    fmt::join(shape, ", "),
                                    impl_->options.policy.budget.max_batch);
  // Cheap checks on the header before decoding any bytes.
  using protocol::DType;
  CHORUS_CHECK(req.inputs.dtype == DType::kFloat32 ||
                   (uint8_ok && req.inputs.dtype == DType::kUInt8),
               "inputs must be {}; got dtype {}", expected,
               protocol::wire_dtype_name(req.inputs.dtype));
  protocol::TensorLimits limits;
  limits.max_elements = std::max<std::int64_t>(
      per_input, per_input * impl_->options.policy.budget.max_batch);
  CHORUS_CHECK(!req.inputs.shape.empty() &&
                   req.inputs.rows() <= impl_->options.policy.budget.max_batch,
               "inputs must be {}; got a batch of {}", expected,
               req.inputs.rows());
  auto inputs = protocol::to_tensor(req.inputs, limits);
  std::vector<std::int64_t> got(inputs.sizes().begin(), inputs.sizes().end());
  const bool shape_ok =
      inputs.dim() == static_cast<std::int64_t>(shape.size()) + 1 &&
      std::equal(shape.begin(), shape.end(), got.begin() + 1) &&
      inputs.size(0) > 0;
  CHORUS_CHECK(shape_ok, "inputs must be {}; got [{}]", expected,
               fmt::join(got, ", "));
  CHORUS_CHECK(!protocol::has_non_finite(inputs),
               "inputs hold NaN or infinite values; this node refuses them");
  {
    // The round budget follows the rounds this node has seen end — a model
    // pushed for round R opens round R + 1 — not the request's round field,
    // which the requester chooses: a round beyond that is charged to the
    // current one.
    std::lock_guard lock(impl_->mutex);
    const std::uint32_t seen = impl_->stored ? impl_->stored->round : 0;
    if (req.round > impl_->round) {
      if (req.round <= seen + 1) {
        impl_->round = req.round;
        impl_->ledger.start_round();
      } else if (req.round != impl_->claimed_round) {
        impl_->claimed_round = req.round;
        impl_->log->warn(
            "event=round_not_started claimed={} current={} last_model={} "
            "reason=\"no model of round {} was pushed; the round budget is "
            "not renewed\"",
            req.round, impl_->round, seen, req.round - 1);
      }
    }
  }
  const auto n = inputs.size(0);
  const auto deadline =
      std::chrono::milliseconds(req.deadline_ms ? req.deadline_ms : 60000);
  // Rate first: a request refused for the rate spends no budget.
  auto wait = impl_->rate.reserve(n, deadline / 2);
  impl_->ledger.charge(n);
  auto job = std::make_shared<PredictJob>();
  job->round = req.round;
  job->inputs = std::move(inputs);
  job->task = std::move(task);
  job->wait = wait;
  return job;
}

std::chrono::milliseconds NodeService::wait_of(const PredictJob& job) {
  return job.wait;
}

protocol::PredictAnswer NodeService::run_predict(PredictJob& job) {
  if (job.task) {
    // Scaled and normalised as the task says, in the shape the expert takes
    // ([H, W] experts fit [1, H, W] tasks).
    auto x = fusion::to_model_inputs(job.inputs, *job.task);
    std::vector<std::int64_t> shape{x.size(0)};
    const auto& own = impl_->expert->input_shape();
    shape.insert(shape.end(), own.begin(), own.end());
    job.inputs = x.reshape(shape);
  }
  std::vector<torch::Tensor> parts;
  const auto step = std::max<std::int64_t>(1, impl_->options.inference_batch);
  // Under [policy.privacy] the answer is GNMax over the teachers' votes;
  // otherwise the expert's probabilities, shaped by the policy.
  const bool gnmax = impl_->options.policy.budget.privacy.has_value();
  for (std::int64_t i = 0; i < job.inputs.size(0); i += step) {
    auto batch = job.inputs.slice(0, i, i + step);
    parts.push_back(gnmax ? impl_->expert->votes(batch)
                          : impl_->expert->predict(batch));
  }
  auto probs = impl_->shape_output(torch::cat(parts));
  protocol::PredictAnswer reply;
  reply.outputs = protocol::to_blob(probs);
  reply.form = impl_->options.policy.output_form;
  if (auto left = impl_->ledger.total_remaining()) {
    reply.budget_remaining = static_cast<std::uint64_t>(*left);
  }
  reply.noise_std = impl_->options.policy.noise_std;
  job.inputs = torch::Tensor();
  return reply;
}

// `p`: the expert's probabilities, or under [policy.privacy] its teachers'
// votes.
torch::Tensor NodeService::Impl::shape_output(torch::Tensor p) {
  const auto& pol = options.policy;
  if (const auto& privacy = pol.budget.privacy) {
    // GNMax: `p` is the teachers' vote histogram; the answer is the argmax
    // of it plus N(0, σ²) per class (label-only, enforced by the policy).
    // The ledger charged ε before this ran.
    std::lock_guard lock(mutex);
    return fusion::noisy_argmax(p, privacy->sigma, noise);
  }
  if (pol.temperature != 1.0) {
    p = (p.clamp_min(1e-12).log() / pol.temperature).softmax(1);
  }
  if (pol.noise_std > 0) {
    torch::Tensor eps;
    {
      std::lock_guard lock(mutex);
      eps = at::normal(0.0, pol.noise_std, p.sizes(), noise);
    }
    p = (p + eps).clamp_min(0);
    auto sums = p.sum(1, /*keepdim=*/true);
    // A row the noise zeroed entirely becomes uniform.
    p = torch::where(sums > 0, p / sums.clamp_min(1e-12),
                     torch::full_like(p, 1.0 / static_cast<double>(p.size(1))));
  }
  switch (pol.output_form) {
    case OutputForm::kTopK: {
      const auto k = std::min<std::int64_t>(pol.top_k, p.size(1));
      auto [values, index] = p.topk(k, 1);
      p = torch::zeros_like(p).scatter_(1, index, values);
      break;
    }
    case OutputForm::kLabelOnly:
      p = torch::zeros_like(p).scatter_(1, p.argmax(1, /*keepdim=*/true), 1.0);
      break;
    case OutputForm::kProbabilities:
      break;
  }
  return p.contiguous();
}

}  // namespace chorus::node
