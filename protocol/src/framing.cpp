#include "chorus/protocol/framing.hpp"

#include "chorus/core/error.hpp"

namespace chorus::protocol {

std::array<std::uint8_t, kFrameHeaderSize> encode_frame_header(
    std::size_t body_size, std::uint32_t max_frame_size) {
  CHORUS_CHECK_CODE(body_size <= max_frame_size, Code::kResourceExhausted,
                    "frame body of {} bytes exceeds the maximum of {} bytes",
                    body_size, max_frame_size);
  auto n = static_cast<std::uint32_t>(body_size);
  return {static_cast<std::uint8_t>(n >> 24),
          static_cast<std::uint8_t>(n >> 16), static_cast<std::uint8_t>(n >> 8),
          static_cast<std::uint8_t>(n)};
}

std::uint32_t decode_frame_header(
    std::span<const std::uint8_t, kFrameHeaderSize> header,
    std::uint32_t max_frame_size) {
  std::uint32_t n = (std::uint32_t{header[0]} << 24) |
                    (std::uint32_t{header[1]} << 16) |
                    (std::uint32_t{header[2]} << 8) | std::uint32_t{header[3]};
  CHORUS_CHECK(n > 0, "frame announces an empty body");
  CHORUS_CHECK_CODE(n <= max_frame_size, Code::kResourceExhausted,
                    "frame announces {} bytes, above the maximum of {} bytes",
                    n, max_frame_size);
  return n;
}

}  // namespace chorus::protocol
