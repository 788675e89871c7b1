// Fuzz entry point of the image decoder (fusion/src/images.cpp): PNG through
// libspng, JPEG through libjpeg-turbo, chosen by signature. Any bytes must
// either decode to exactly height × width × channels samples within the
// pixel limit, or be refused with chorus::Error; never crash or hang. The
// first byte chooses grey or RGB. Built with libFuzzer by
// tests/fuzz/CMakeLists.txt (clang), and replayed over tests/fuzz/corpus/image
// by ctest (g++).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "chorus/core/error.hpp"
#include "chorus/fusion/formats.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  if (size == 0) return 0;
  const std::int64_t channels = (data[0] & 1) != 0 ? 3 : 1;
  const std::string_view bytes(reinterpret_cast<const char*>(data) + 1,
                               size - 1);
  constexpr std::int64_t kMaxPixels = std::int64_t{1} << 20;
  try {
    auto img =
        chorus::fusion::decode_image(bytes, channels, "fuzz-image", kMaxPixels);
    if (img.height < 1 || img.width < 1 || img.channels != channels ||
        img.height * img.width > kMaxPixels ||
        static_cast<std::int64_t>(img.pixels.size()) !=
            img.height * img.width * channels) {
      std::abort();
    }
  } catch (const chorus::Error&) {
    // Refused with a message: what bad input must get.
  }
  return 0;
}
