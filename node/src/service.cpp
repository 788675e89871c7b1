#include "chorus/node/service.hpp"

#include <fmt/ranges.h>

#include "chorus/core/error.hpp"
#include "chorus/core/metrics.hpp"
#include "chorus/core/version.hpp"
#include "service_impl.hpp"

namespace chorus::node {

NodeService::NodeService(std::unique_ptr<Expert> expert,
                         NodeServiceOptions options)
    : impl_(std::make_unique<Impl>(std::move(expert), std::move(options))) {
  if (!impl_->options.state_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(impl_->options.state_dir, ec);
    CHORUS_CHECK_CODE(!ec, Code::kInternal,
                      "cannot create state directory '{}': {}",
                      impl_->options.state_dir.string(), ec.message());
    impl_->stored = read_stored_model(impl_->options.state_dir);
  }
}

NodeService::~NodeService() = default;

protocol::Hello NodeService::hello() const {
  const auto& e = *impl_->expert;
  const auto& pol = impl_->options.policy;
  protocol::Hello h;
  h.software = fmt::format("chorus {}", kVersion);
  h.expert.input_shape = e.input_shape();
  h.expert.input_dtype = protocol::DType::kFloat32;
  h.expert.labels = e.labels();
  h.expert.metadata = impl_->options.metadata;
  auto& p = h.policy;
  p.max_batch = static_cast<std::uint64_t>(pol.budget.max_batch);
  if (pol.budget.total_budget) {
    p.total_budget = static_cast<std::uint64_t>(*pol.budget.total_budget);
  }
  if (pol.budget.round_budget) {
    p.round_budget = static_cast<std::uint64_t>(*pol.budget.round_budget);
  }
  if (auto left = impl_->ledger.total_remaining()) {
    p.total_remaining = static_cast<std::uint64_t>(*left);
  }
  p.rate_limit = pol.rate_limit;
  p.output_form = pol.output_form;
  p.top_k = static_cast<std::uint32_t>(pol.top_k);
  p.temperature = pol.temperature;
  p.noise_std = pol.noise_std;
  if (const auto& g = e.options().training_privacy) {
    p.privacy.push_back(
        {.mechanism = g->mechanism,
         .epsilon = g->epsilon,
         .delta = g->delta,
         .accountant = g->accountant,
         .parameters = {
             {"noise_multiplier", fmt::format("{}", g->noise_multiplier)},
             {"sample_rate", fmt::format("{}", g->sample_rate)},
             {"steps", fmt::format("{}", g->steps)},
             {"max_grad_norm", fmt::format("{}", g->max_grad_norm)}}});
  }
  if (const auto& b = pol.budget.privacy) {
    p.privacy.push_back(
        {.mechanism = "gnmax",
         .epsilon = b->epsilon,
         .delta = b->delta,
         .epsilon_spent = impl_->ledger.epsilon_spent().value_or(0),
         .accountant = "rdp-gaussian",
         .parameters = {{"sigma", fmt::format("{}", b->sigma)},
                        {"teachers", fmt::format("{}", e.teachers())}}});
  }
  h.capabilities = {"predict", "model_push"};
  if (impl_->options.shots) h.capabilities.push_back("adapt");
  if (e.options().share_weights && e.builtin_model() &&
      !e.options().spec.empty()) {
    h.capabilities.push_back("weights");
  }
  return h;
}

std::optional<std::string> NodeService::accept_task(
    const std::optional<TaskSpec>& task) {
  if (task) {
    const auto& e = *impl_->expert;
    if (auto why = task_mismatch(*task, e.input_shape(), InputDType::kFloat32,
                                 e.labels(), "this node's expert")) {
      impl_->log->error("event=task_refused task={} reason=\"{}\"", task->name,
                        *why);
      return why;
    }
    impl_->log->info(
        "event=task_accepted task={} input=\"{}\" normalisation={} labels={}",
        task->name, task->describe_input(),
        normalisation_name(task->normalisation), task->labels.size());
  }
  std::lock_guard lock(impl_->mutex);
  impl_->task = task ? std::make_shared<const TaskSpec>(*task) : nullptr;
  return std::nullopt;
}

void NodeService::record(const protocol::AuditRecord& request, Code outcome,
                         const std::string& message,
                         std::chrono::steady_clock::duration latency) {
  // The metrics count what the audit log records, line for line.
  metrics::count(
      "chorus_node_requests_total",
      "Requests this node received, by kind and outcome code",
      {{"kind", request.kind}, {"code", std::string(code_name(outcome))}});
  if (outcome == Code::kOk && request.kind == "predict") {
    metrics::count("chorus_node_inputs_answered_total",
                   "Inputs this node's expert answered", {},
                   static_cast<double>(request.inputs));
  }
  if (latency.count() > 0) {
    metrics::observe("chorus_node_request_duration_seconds",
                     "Time from a request's arrival to its answer, by kind",
                     {{"kind", request.kind}},
                     std::chrono::duration<double>(latency).count());
  }
  publish_budget();
  if (!impl_->audit) return;
  protocol::AuditRecord r = request;
  r.outcome = std::string(code_name(outcome));
  r.message = message;
  r.budget_left = impl_->ledger.total_remaining();
  r.spent = impl_->ledger.spent();
  r.ledger = impl_->ledger.kept();
  r.epsilon_spent = impl_->ledger.epsilon_spent();
  r.latency_ms = std::chrono::duration<double, std::milli>(latency).count();
  impl_->audit->append(r);
}

void NodeService::publish_budget() const {
  const auto& ledger = impl_->ledger;
  metrics::set("chorus_node_budget_spent_inputs",
               "Inputs charged to this node's budget, over its lifetime "
               "(kept across restarts by a node with a budget; one without "
               "counts from its start)",
               {}, static_cast<double>(ledger.spent()));
  if (auto left = ledger.total_remaining()) {
    metrics::set("chorus_node_budget_remaining_inputs",
                 "Inputs this node will still answer, by scope (policy "
                 "total_budget and round_budget)",
                 {{"scope", "total"}}, static_cast<double>(*left));
  }
  if (auto spent = ledger.epsilon_spent()) {
    metrics::set("chorus_node_privacy_epsilon_spent",
                 "Epsilon spent by this node's noisy-argmax answers "
                 "([policy.privacy]; kept across restarts)",
                 {}, *spent);
    metrics::set("chorus_node_privacy_epsilon_remaining",
                 "Epsilon this node's answers may still spend "
                 "([policy.privacy] epsilon minus what is spent)",
                 {}, std::max(0.0, *ledger.epsilon_allowed() - *spent));
  }
  if (auto left = ledger.round_remaining()) {
    metrics::set("chorus_node_budget_remaining_inputs",
                 "Inputs this node will still answer, by scope (policy "
                 "total_budget and round_budget)",
                 {{"scope", "round"}}, static_cast<double>(*left));
  }
}

void NodeService::welcomed(std::uint32_t round) {
  std::lock_guard lock(impl_->mutex);
  impl_->coordinator_round = round;
}

std::optional<StoredModel> NodeService::stored_model() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->stored;
}

std::int64_t NodeService::inputs_answered() const {
  return impl_->ledger.spent();
}

}  // namespace chorus::node
