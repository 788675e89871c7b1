// Tests of the test harness itself (tests/support). The two skipped cases are
// planted failures that ctest runs explicitly and expects to fail; see
// tests/CMakeLists.txt.
#include "support/doctest.hpp"

TEST_CASE("planted failure: a failing CHECK is recorded and the case goes on" *
          doctest::skip()) {
  CHECK(1 + 1 == 3);  // With glog's CHECK this would abort the process.
  CHECK(true);        // Reached only because the failure above was recorded.
}

TEST_CASE("planted empty: a test case that asserts nothing" * doctest::skip()) {
}

TEST_CASE("harness: a failing CHECK fails its test case without aborting" *
          doctest::should_fail()) {
  CHECK(torch::ones({2}).sum().item<float>() == 3.0f);
}

TEST_CASE("harness: doctest's CHECK_EQ is in effect after including torch") {
  int evaluated = 0;
  CHECK_EQ(++evaluated, 1);
  CHECK(evaluated == 1);
}
