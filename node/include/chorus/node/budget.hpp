#pragma once

#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>

/// The part of a node's query policy that bounds how much the coordinator may
/// ask: a batch cap, a total budget and a per-round budget, all counted in
/// inputs. A node enforces these itself; the coordinator only reads them.
namespace chorus::node {

/// An (ε, δ) guarantee on a node's answers: each is a noisy argmax
/// (one-teacher GNMax, ALGORITHMS.md §6) with Gaussian noise of std `sigma`
/// on the expert's one-hot vote, accounted with RDP (privacy.hpp).
struct PrivacyBudget {
  double epsilon = 0;  ///< ε the node's answers may spend over its lifetime.
  double delta = 1e-5;
  double sigma = 0;  ///< The noise's std, in votes.
};

/// Limits on prediction queries, as configured by the data owner.
struct BudgetPolicy {
  /// Largest number of inputs in one `Predict`; larger requests are refused.
  std::int64_t max_batch = 1024;
  /// Inputs the node answers over its lifetime; unlimited when empty.
  std::optional<std::int64_t> total_budget;
  /// Inputs the node answers per fusion round; unlimited when empty.
  std::optional<std::int64_t> round_budget;
  /// Answers under an (ε, δ) guarantee: the lifetime total is also capped
  /// at the most GNMax answers within ε. None: no formal guarantee.
  std::optional<PrivacyBudget> privacy;

  /// Throws `chorus::Error` (INVALID_ARGUMENT) naming the offending field.
  void validate() const;
};

/// Thread-safe ledger of inputs answered against a `BudgetPolicy`.
class BudgetLedger {
 public:
  /// Validates `policy` and starts with nothing spent — or, with a `state`
  /// file (a node's state_dir/budget.json), with what it records: the
  /// budget spent survives restarts. Every charge and round start rewrites
  /// the file atomically before the request is answered. Throws
  /// `chorus::Error` (DATA_LOSS) for a corrupt file: a node does not start
  /// with an unknown amount spent.
  explicit BudgetLedger(BudgetPolicy policy, std::filesystem::path state = {});

  /// Accounts for a request of `n` inputs, or refuses all of it: throws
  /// `chorus::Error` with INVALID_ARGUMENT when `n` is not positive or exceeds
  /// the batch cap, and RESOURCE_EXHAUSTED (naming what remains) when it
  /// exceeds the total or round budget. A refused request spends nothing.
  void charge(std::int64_t n);

  /// Starts a new round: the round budget is available in full again.
  void start_round();

  /// Inputs left in the total budget; empty when unlimited.
  std::optional<std::int64_t> total_remaining() const;

  /// Inputs left in this round; empty when unlimited.
  std::optional<std::int64_t> round_remaining() const;

  /// Inputs answered so far, over all rounds.
  std::int64_t spent() const;
  /// Whether the count is kept in the state file across restarts (a node
  /// with a budget of any kind and a state file); else it starts at 0.
  bool kept() const;

  /// With a privacy budget: ε spent by the answers so far (every input
  /// answered counts, those before the budget was set included), and ε
  /// allowed. Empty without one.
  std::optional<double> epsilon_spent() const;
  std::optional<double> epsilon_allowed() const;

  /// The policy this ledger enforces.
  const BudgetPolicy& policy() const { return policy_; }

 private:
  void persist() const;  // Under mutex_.

  BudgetPolicy policy_;
  std::filesystem::path state_;
  mutable std::mutex mutex_;
  std::int64_t spent_total_ = 0;
  // The most answers within the privacy budget (privacy only).
  std::int64_t privacy_cap_ = 0;
  std::int64_t spent_round_ = 0;
};

}  // namespace chorus::node
