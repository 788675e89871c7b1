// Fuzz entry point of the .npy parser (fusion/src/npy.cpp). Any bytes must
// either parse into an array whose payload is exactly its declared size, or
// be refused with chorus::Error; never crash, hang or read out of bounds.
// Built with libFuzzer by tests/fuzz/CMakeLists.txt (clang), and replayed
// over tests/fuzz/corpus/npy by ctest (g++).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "chorus/core/error.hpp"
#include "chorus/fusion/formats.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    auto a =
        chorus::fusion::parse_npy(bytes, "fuzz.npy", std::int64_t{1} << 24);
    // The payload lies inside the input and has exactly the declared size.
    if (a.data.data() < bytes.data() ||
        a.data.data() + a.data.size() > bytes.data() + bytes.size() ||
        static_cast<std::int64_t>(a.data.size()) !=
            a.elements() * a.item_size) {
      std::abort();
    }
  } catch (const chorus::Error&) {
    // Refused with a message: what bad input must get.
  }
  return 0;
}
