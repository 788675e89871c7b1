// Fuzz entry point of the CSV parser (fusion/src/csv.cpp). Any text must
// either parse into a rectangular table of finite features, or be refused
// with chorus::Error; never crash, hang or read out of bounds. Built with
// libFuzzer by tests/fuzz/CMakeLists.txt (clang), and replayed over
// tests/fuzz/corpus/csv by ctest (g++).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "chorus/core/error.hpp"
#include "chorus/fusion/formats.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (const char* label : {"label", ""}) {
    chorus::fusion::CsvOptions options;
    options.label_column = label;
    options.max_rows = 1 << 16;
    try {
      auto t = chorus::fusion::parse_csv(text, options, "fuzz.csv");
      if (static_cast<std::int64_t>(t.features.size()) != t.rows * t.cols)
        std::abort();
      if (static_cast<std::int64_t>(t.feature_names.size()) != t.cols)
        std::abort();
      if (!t.labels.empty() &&
          static_cast<std::int64_t>(t.labels.size()) != t.rows) {
        std::abort();
      }
      for (float f : t.features) {
        if (!std::isfinite(f)) std::abort();
      }
    } catch (const chorus::Error&) {
      // Refused with a message: what bad input must get.
    }
  }
  return 0;
}
