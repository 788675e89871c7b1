#include "chorus/core/error.hpp"

#include "support/doctest.hpp"

using chorus::Code;
using chorus::Error;

TEST_CASE("error: codes have names and fall in the client or server range") {
  CHECK(chorus::code_name(Code::kOk) == "OK");
  CHECK(chorus::code_name(Code::kInvalidArgument) == "INVALID_ARGUMENT");
  CHECK(chorus::code_name(Code::kResourceExhausted) == "RESOURCE_EXHAUSTED");
  CHECK(chorus::code_name(Code::kDeadlineExceeded) == "DEADLINE_EXCEEDED");
  CHECK(chorus::code_name(static_cast<Code>(42)) == "UNKNOWN");

  CHECK(chorus::is_client_fault(Code::kInvalidArgument));
  CHECK(chorus::is_client_fault(Code::kUnsupportedVersion));
  CHECK_FALSE(chorus::is_client_fault(Code::kInternal));
  CHECK(chorus::is_server_fault(Code::kUnavailable));
  CHECK(chorus::is_server_fault(Code::kUnimplemented));
  CHECK_FALSE(chorus::is_server_fault(Code::kOk));
  CHECK_FALSE(chorus::is_client_fault(Code::kOk));
}

TEST_CASE("error: fail() throws an Error carrying code and formatted message") {
  try {
    chorus::fail(Code::kNotFound, "model '{}' not found after {} tries", "m.pt",
                 3);
    FAIL("fail() returned");
  } catch (const Error& e) {
    CHECK(e.code() == Code::kNotFound);
    CHECK(std::string(e.what()) == "model 'm.pt' not found after 3 tries");
    CHECK(chorus::describe(e) ==
          "NOT_FOUND: model 'm.pt' not found after 3 tries");
  }
}

TEST_CASE("error: CHORUS_CHECK throws INVALID_ARGUMENT only when false") {
  auto check_positive = [](int n) {
    CHORUS_CHECK(n > 0, "n must be positive, got {}", n);
    return n;
  };
  CHECK(check_positive(3) == 3);
  try {
    check_positive(-2);
    FAIL("CHORUS_CHECK did not throw");
  } catch (const Error& e) {
    CHECK(e.code() == Code::kInvalidArgument);
    CHECK(std::string(e.what()) == "n must be positive, got -2");
  }
  CHECK_THROWS_AS(
      [] { CHORUS_CHECK_CODE(false, Code::kDataLoss, "corrupt"); }(), Error);
  try {
    CHORUS_CHECK_CODE(1 > 2, Code::kDataLoss, "digest mismatch");
  } catch (const Error& e) {
    CHECK(e.code() == Code::kDataLoss);
  }
}

TEST_CASE("errors: what leaves the process carries no stack trace") {
  const std::string libtorch =
      "forward() is not defined on this module\n"
      "Exception raised from get_method at /build/torch/csrc/api/module.h:114 "
      "(most recent call first):\nframe #0: c10::Error::Error(...) + 0xb4 "
      "(0x7f3c2a1b0c44 in /usr/lib/libc10.so)\nframe #1: ...";
  CHECK(chorus::without_backtrace(libtorch) ==
        "forward() is not defined on this module");
  CHECK(chorus::without_backtrace("plain message") == "plain message");
  const std::string long_message(5000, 'x');
  const auto cut = chorus::without_backtrace(long_message, 100);
  CHECK(cut.size() == 100 + std::string(" [...]").size());
  CHECK(cut.rfind(" [...]") == 100);
}
