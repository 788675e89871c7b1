// Fuzz entry point of the check every torch archive passes before torch
// reads it (fusion/src/archive.cpp): model files, fused models and
// checkpoints are zip archives, and `verify_archive` refuses one that is not
// whole or whose entries do not match their CRC-32. Any bytes must either
// pass — and then every entry reads to its end — or be refused with
// chorus::Error (DATA_LOSS); never crash or hang. Built with libFuzzer by
// tests/fuzz/CMakeLists.txt (clang), and replayed over
// tests/fuzz/corpus/archive by ctest (g++).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "chorus/core/error.hpp"
#include "chorus/fusion/archive.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    chorus::fusion::verify_archive(bytes, "fuzz.pt");
  } catch (const chorus::Error& e) {
    if (e.code() != chorus::Code::kDataLoss &&
        e.code() != chorus::Code::kInternal)
      std::abort();
  }
  return 0;
}
