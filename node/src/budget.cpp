#include "chorus/node/budget.hpp"

#include <string>

#include "chorus/core/error.hpp"

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
}

BudgetLedger::BudgetLedger(BudgetPolicy policy) : policy_(policy) {
  policy_.validate();
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
}

void BudgetLedger::start_round() {
  std::lock_guard lock(mutex_);
  spent_round_ = 0;
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

}  // namespace chorus::node
