#include "chorus/node/budget.hpp"

#include "chorus/core/error.hpp"
#include "support/doctest.hpp"
#include "support/errors.hpp"

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
