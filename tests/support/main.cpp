// The doctest main shared by every chorus suite: a run that executed test
// cases but no assertion fails, because a test that cannot fail is a defect.
#define DOCTEST_CONFIG_IMPLEMENT
#include "support/doctest.hpp"
// Should doctest.h have been included before the define above (interface
// only), including it again compiles the implementation, which doctest
// guards separately.
#include <doctest/doctest.h>

#include <atomic>
#include <cstdio>

namespace {

std::atomic<int> g_test_cases_run{0};
std::atomic<int> g_assertions{0};

// Listens to the run and remembers how many test cases and assertions ran.
struct AssertionCounter : doctest::IReporter {
  explicit AssertionCounter(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats& stats) override {
    g_test_cases_run = static_cast<int>(stats.numTestCasesPassingFilters);
    g_assertions = stats.numAsserts;
  }
  void test_case_start(const doctest::TestCaseData&) override {}
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

REGISTER_LISTENER("chorus_assertion_counter", 1, AssertionCounter);

}  // namespace

int main(int argc, char** argv) {
  // Keep test runs predictable on a 2-core machine; suites that measure
  // threading set their own counts.
  torch::set_num_threads(1);

  doctest::Context context;
  context.applyCommandLine(argc, argv);
  int result = context.run();
  if (context.shouldExit()) return result;  // --help, --list-test-cases, ...
  if (result == 0 && g_assertions == 0) {
    std::fprintf(stderr,
                 "chorus test main: %d test case(s) ran but no assertion was "
                 "evaluated; failing the run (a test that cannot fail is a "
                 "defect)\n",
                 g_test_cases_run.load());
    return 1;
  }
  return result;
}
