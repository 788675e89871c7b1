#pragma once
// The one way a chorus test includes doctest.
//
// Debian's libtorch is built with glog, whose CHECK/CHECK_EQ/... macros abort
// the process. If torch came after doctest they would silently replace
// doctest's assertions (a suite once reported "assertions: 0"). So torch comes
// first, its colliding macros are removed, and doctest defines its own.
#include <torch/torch.h>

#undef CHECK
#undef CHECK_EQ
#undef CHECK_NE
#undef CHECK_LT
#undef CHECK_LE
#undef CHECK_GT
#undef CHECK_GE

#include <doctest/doctest.h>

// If anything redefined CHECK as glog's after this point, the build breaks
// here rather than the suite turning assertion-free.
#ifndef DOCTEST_CHECK
#error "doctest's CHECK is not in effect"
#endif

namespace chorus::testing {

/// The dtype's name ("Float", "Byte", "Long"...). Compare names, not
/// `c10::ScalarType` values: doctest stringifies operands with an unqualified
/// `toString`, which ADL resolves to c10's `const char*` overload and breaks.
inline std::string dtype_name(const torch::Tensor& t) {
  return c10::toString(t.scalar_type());
}

/// Whether `text` contains `part` (error messages in assertions).
inline bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace chorus::testing
