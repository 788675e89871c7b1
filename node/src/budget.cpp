#include "chorus/node/budget.hpp"

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/privacy.hpp"

namespace chorus::node {
namespace {

std::string describe_limit(const std::optional<std::int64_t>& remaining) {
  return remaining ? std::to_string(*remaining) : std::string("unlimited");
}

}  // namespace

void BudgetPolicy::validate() const {
  CHORUS_CHECK(max_batch > 0,
               "query policy: max_batch must be positive, got {}", max_batch);
  CHORUS_CHECK(!total_budget || *total_budget >= 0,
               "query policy: total_budget must not be negative, got {}",
               total_budget.value_or(0));
  CHORUS_CHECK(!round_budget || *round_budget >= 0,
               "query policy: round_budget must not be negative, got {}",
               round_budget.value_or(0));
  if (privacy) {
    CHORUS_CHECK(privacy->epsilon > 0 && std::isfinite(privacy->epsilon),
                 "query policy: privacy.epsilon must be positive, got {}",
                 privacy->epsilon);
    CHORUS_CHECK(privacy->delta > 0 && privacy->delta < 1,
                 "query policy: privacy.delta must be in (0, 1), got {}",
                 privacy->delta);
    CHORUS_CHECK(privacy->sigma > 0 && std::isfinite(privacy->sigma),
                 "query policy: privacy.sigma must be positive, got {}",
                 privacy->sigma);
    CHORUS_CHECK(
        privacy::gnmax_max_answers(privacy->sigma, privacy->epsilon,
                                   privacy->delta) > 0,
        "query policy: privacy.sigma = {} is too little noise for "
        "even one answer within epsilon = {} (one answer spends {:.3g})",
        privacy->sigma, privacy->epsilon,
        privacy::gnmax_epsilon(privacy->sigma, 1, privacy->delta));
  }
}

BudgetLedger::BudgetLedger(BudgetPolicy policy, std::filesystem::path state)
    : policy_(policy), state_(std::move(state)) {
  policy_.validate();
  if (policy_.privacy) {
    privacy_cap_ = privacy::gnmax_max_answers(policy_.privacy->sigma,
                                              policy_.privacy->epsilon,
                                              policy_.privacy->delta);
  }
  std::error_code ec;
  if (state_.empty() || !std::filesystem::exists(state_, ec)) return;
  try {
    auto j = nlohmann::json::parse(read_file(state_));
    spent_total_ = j.at("spent_total").get<std::int64_t>();
    spent_round_ = j.at("spent_round").get<std::int64_t>();
  } catch (const nlohmann::json::exception& e) {
    fail(Code::kDataLoss,
         "budget ledger '{}' is unreadable ({}); the node will not start "
         "with an unknown budget spent",
         state_.string(), e.what());
  }
  CHORUS_CHECK_CODE(
      spent_total_ >= 0 && spent_round_ >= 0 && spent_round_ <= spent_total_,
      Code::kDataLoss,
      "budget ledger '{}' records {} spent in all and {} this "
      "round: not a ledger",
      state_.string(), spent_total_, spent_round_);
}

bool BudgetLedger::kept() const {
  return !state_.empty() &&
         (policy_.total_budget || policy_.round_budget || policy_.privacy);
}

void BudgetLedger::persist() const {
  if (!kept()) return;  // Nothing to keep for a node without budgets.
  write_file_atomic(state_, nlohmann::json{{"spent_total", spent_total_},
                                           {"spent_round", spent_round_}}
                                    .dump() +
                                "\n");
}

void BudgetLedger::charge(std::int64_t n) {
  CHORUS_CHECK(n > 0, "a query must carry at least one input, got {}", n);
  CHORUS_CHECK(n <= policy_.max_batch,
               "batch of {} inputs exceeds this node's max_batch of {}", n,
               policy_.max_batch);
  std::lock_guard lock(mutex_);
  if (policy_.total_budget && spent_total_ + n > *policy_.total_budget) {
    fail(Code::kResourceExhausted,
         "query of {} inputs exceeds the total budget: {} of {} remaining", n,
         *policy_.total_budget - spent_total_, *policy_.total_budget);
  }
  if (policy_.privacy && spent_total_ + n > privacy_cap_) {
    const auto& p = *policy_.privacy;
    fail(Code::kResourceExhausted,
         "query of {} inputs exceeds the privacy budget: epsilon spent {:.4f} "
         "of {} allowed (delta {}, sigma {}); {} more answers fit",
         n, privacy::gnmax_epsilon(p.sigma, spent_total_, p.delta), p.epsilon,
         p.delta, p.sigma,
         std::max<std::int64_t>(0, privacy_cap_ - spent_total_));
  }
  if (policy_.round_budget && spent_round_ + n > *policy_.round_budget) {
    fail(
        Code::kResourceExhausted,
        "query of {} inputs exceeds the round budget: {} of {} remaining "
        "this round (total remaining: {})",
        n, *policy_.round_budget - spent_round_, *policy_.round_budget,
        describe_limit(policy_.total_budget
                           ? std::optional(*policy_.total_budget - spent_total_)
                           : std::nullopt));
  }
  spent_total_ += n;
  spent_round_ += n;
  try {
    persist();
  } catch (const Error& e) {
    // Not recorded, not answered.
    spent_total_ -= n;
    spent_round_ -= n;
    fail(Code::kInternal, "the budget ledger cannot be written: {}", e.what());
  }
}

void BudgetLedger::start_round() {
  std::lock_guard lock(mutex_);
  const auto before = spent_round_;
  spent_round_ = 0;
  try {
    persist();
  } catch (const Error& e) {
    spent_round_ = before;
    throw;
  }
}

std::optional<std::int64_t> BudgetLedger::total_remaining() const {
  std::lock_guard lock(mutex_);
  if (!policy_.total_budget) return std::nullopt;
  return *policy_.total_budget - spent_total_;
}

std::optional<std::int64_t> BudgetLedger::round_remaining() const {
  std::lock_guard lock(mutex_);
  if (!policy_.round_budget) return std::nullopt;
  return *policy_.round_budget - spent_round_;
}

std::int64_t BudgetLedger::spent() const {
  std::lock_guard lock(mutex_);
  return spent_total_;
}

std::optional<double> BudgetLedger::epsilon_spent() const {
  if (!policy_.privacy) return std::nullopt;
  std::lock_guard lock(mutex_);
  return privacy::gnmax_epsilon(policy_.privacy->sigma, spent_total_,
                                policy_.privacy->delta);
}

std::optional<double> BudgetLedger::epsilon_allowed() const {
  if (!policy_.privacy) return std::nullopt;
  return policy_.privacy->epsilon;
}

}  // namespace chorus::node
