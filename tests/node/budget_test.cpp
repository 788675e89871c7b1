#include "chorus/node/budget.hpp"

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/privacy.hpp"
#include "support/doctest.hpp"
#include "support/errors.hpp"
#include "support/temp_dir.hpp"

using chorus::Code;
using chorus::node::BudgetLedger;
using chorus::node::BudgetPolicy;

using chorus::testing::code_of;

TEST_CASE("budget: an unlimited policy only caps the batch") {
  BudgetLedger ledger(BudgetPolicy{.max_batch = 8});
  ledger.charge(8);
  ledger.charge(8);
  CHECK(ledger.spent() == 16);
  CHECK_FALSE(ledger.total_remaining().has_value());
  CHECK(code_of([&] { ledger.charge(9); }) == Code::kInvalidArgument);
  CHECK(code_of([&] { ledger.charge(0); }) == Code::kInvalidArgument);
  CHECK(ledger.spent() == 16);
}

TEST_CASE("budget: only a node with a budget and a state file keeps a ledger") {
  chorus::testing::TempDir dir;
  const auto state = dir / "budget.json";
  BudgetLedger unlimited(BudgetPolicy{.max_batch = 8}, state);
  unlimited.charge(8);
  CHECK_FALSE(unlimited.kept());
  CHECK_FALSE(std::filesystem::exists(state));
  BudgetLedger round(BudgetPolicy{.max_batch = 8, .round_budget = 100}, state);
  round.charge(8);
  CHECK(round.kept());
  CHECK(std::filesystem::exists(state));
  CHECK_FALSE(
      BudgetLedger(BudgetPolicy{.max_batch = 8, .total_budget = 100}).kept());
}

TEST_CASE(
    "budget: the total budget is exhausted and a refusal spends nothing") {
  BudgetLedger ledger(BudgetPolicy{.max_batch = 100, .total_budget = 250});
  ledger.charge(100);
  ledger.charge(100);
  try {
    ledger.charge(100);
    FAIL("no error");
  } catch (const chorus::Error& e) {
    CHECK(e.code() == Code::kResourceExhausted);
    CHECK(std::string(e.what()).find("50 of 250 remaining") !=
          std::string::npos);
  }
  CHECK(ledger.total_remaining() == 50);
  ledger.charge(50);
  CHECK(ledger.total_remaining() == 0);
  CHECK(code_of([&] { ledger.charge(1); }) == Code::kResourceExhausted);
}

TEST_CASE("budget: the round budget resets each round, the total does not") {
  BudgetLedger ledger(
      BudgetPolicy{.max_batch = 10, .total_budget = 25, .round_budget = 10});
  ledger.charge(10);
  CHECK(code_of([&] { ledger.charge(1); }) == Code::kResourceExhausted);
  ledger.start_round();
  CHECK(ledger.round_remaining() == 10);
  ledger.charge(10);
  ledger.start_round();
  CHECK(code_of([&] { ledger.charge(10); }) == Code::kResourceExhausted);
  ledger.charge(5);
  CHECK(ledger.total_remaining() == 0);
  CHECK(ledger.spent() == 25);
}

TEST_CASE("budget: invalid policies are refused naming the field") {
  try {
    BudgetLedger ledger(BudgetPolicy{.max_batch = 0});
    FAIL("no error");
  } catch (const chorus::Error& e) {
    CHECK(std::string(e.what()).find("max_batch") != std::string::npos);
  }
  CHECK(code_of([] { BudgetPolicy{.total_budget = -1}.validate(); }) ==
        Code::kInvalidArgument);
  CHECK(code_of([] { BudgetPolicy{.round_budget = -5}.validate(); }) ==
        Code::kInvalidArgument);
}

TEST_CASE(
    "budget: what was spent survives a restart, and a corrupt ledger "
    "is refused") {
  chorus::testing::TempDir dir;
  const auto file = dir / "budget.json";
  const BudgetPolicy policy{
      .max_batch = 500, .total_budget = 1000, .round_budget = 900};
  {
    BudgetLedger ledger(policy, file);
    ledger.charge(400);
    ledger.charge(400);
    CHECK(ledger.total_remaining() == 200);
  }
  // The node restarts: the same file, the same spent budget.
  BudgetLedger again(policy, file);
  CHECK(again.spent() == 800);
  CHECK(again.total_remaining() == 200);
  CHECK(again.round_remaining() == 100);
  std::string msg;
  CHECK(code_of([&] { again.charge(300); }, &msg) == Code::kResourceExhausted);
  CHECK(chorus::testing::contains(msg, "200 of 1000 remaining"));
  again.start_round();
  CHECK(BudgetLedger(policy, file).round_remaining() == 900);

  chorus::write_file_atomic(file, "{\"spent_total\": \"many\"}");
  CHECK(code_of([&] { BudgetLedger(policy, file); }, &msg) == Code::kDataLoss);
  CHECK(chorus::testing::contains(msg, "unknown budget spent"));
  chorus::write_file_atomic(file, "{\"spent_total\": 5, \"spent_round\": 9}");
  CHECK(code_of([&] { BudgetLedger(policy, file); }) == Code::kDataLoss);
  // Without budgets nothing is written.
  BudgetLedger unlimited(BudgetPolicy{}, dir / "none.json");
  unlimited.charge(10);
  CHECK_FALSE(std::filesystem::exists(dir / "none.json"));
}

TEST_CASE(
    "budget: a privacy budget refuses the first query past ε, naming ε "
    "spent and allowed, and keeps its spend across a restart") {
  chorus::testing::TempDir dir;
  const auto file = dir / "budget.json";
  BudgetPolicy policy{.max_batch = 1000};
  policy.privacy =
      chorus::node::PrivacyBudget{.epsilon = 2.0, .delta = 1e-5, .sigma = 20.0};
  const auto cap = chorus::privacy::gnmax_max_answers(20.0, 2.0, 1e-5);
  REQUIRE(cap > 10);
  {
    BudgetLedger ledger(policy, file);
    CHECK(ledger.epsilon_spent() == 0.0);
    CHECK(ledger.epsilon_allowed() == 2.0);
    ledger.charge(cap - 5);
    CHECK(*ledger.epsilon_spent() <= 2.0);
    CHECK(*ledger.epsilon_spent() ==
          doctest::Approx(chorus::privacy::gnmax_epsilon(20.0, cap - 5, 1e-5)));
  }
  BudgetLedger again(policy, file);  // Restarted: the same ε spent.
  CHECK(again.spent() == cap - 5);
  std::string msg;
  CHECK(code_of([&] { again.charge(6); }, &msg) == Code::kResourceExhausted);
  CHECK(chorus::testing::contains(msg, "exceeds the privacy budget"));
  CHECK(chorus::testing::contains(msg, "of 2 allowed"));
  CHECK(chorus::testing::contains(msg, "5 more answers fit"));
  again.charge(5);  // Exactly to the budget.
  CHECK(*again.epsilon_spent() <= 2.0);
  CHECK(code_of([&] { again.charge(1); }) == Code::kResourceExhausted);

  // Too little noise for one answer, and malformed budgets, are refused.
  policy.privacy->sigma = 0.1;
  CHECK(code_of([&] { policy.validate(); }, &msg) == Code::kInvalidArgument);
  CHECK(chorus::testing::contains(msg, "too little noise"));
  policy.privacy->sigma = 20;
  policy.privacy->delta = 1;
  CHECK(code_of([&] { policy.validate(); }, &msg) == Code::kInvalidArgument);
  CHECK(chorus::testing::contains(msg, "privacy.delta"));
  CHECK_FALSE(BudgetLedger(BudgetPolicy{}).epsilon_spent().has_value());
}
