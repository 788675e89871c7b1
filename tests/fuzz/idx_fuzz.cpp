// Fuzz entry point of the IDX parser (fusion/src/idx.cpp): MNIST's format,
// raw or gzip-compressed. Any bytes must either parse into an array whose
// payload is exactly its declared shape, or be refused with chorus::Error;
// never crash, hang, or allocate what a header merely announces (the
// fuzzer's -rss_limit_mb catches that). The first byte chooses images or
// labels. Built with libFuzzer by tests/fuzz/CMakeLists.txt (clang), and
// replayed over tests/fuzz/corpus/idx by ctest (g++).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "chorus/core/error.hpp"
#include "chorus/fusion/formats.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  if (size == 0) return 0;
  const auto kind = (data[0] & 1) != 0 ? chorus::fusion::IdxKind::kImages
                                       : chorus::fusion::IdxKind::kLabels;
  const std::string_view bytes(reinterpret_cast<const char*>(data) + 1,
                               size - 1);
  try {
    auto a = chorus::fusion::parse_idx(bytes, kind, "fuzz-idx");
    std::int64_t n = 1;
    for (auto d : a.shape) {
      if (d < 1) std::abort();
      n *= d;
    }
    const std::size_t dims = kind == chorus::fusion::IdxKind::kImages ? 3 : 1;
    if (a.shape.size() != dims || static_cast<std::int64_t>(a.data.size()) != n)
      std::abort();
  } catch (const chorus::Error&) {
    // Refused with a message: what bad input must get.
  }
  return 0;
}
