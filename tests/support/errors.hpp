#pragma once

#include <functional>
#include <string>

#include "chorus/core/error.hpp"

namespace chorus::testing {

/// The code of the `chorus::Error` that `f` throws (kOk if none), and its
/// message in `*message` when given.
inline Code code_of(const std::function<void()>& f,
                    std::string* message = nullptr) {
  try {
    f();
  } catch (const Error& e) {
    if (message) *message = e.what();
    return e.code();
  }
  return Code::kOk;
}

}  // namespace chorus::testing
