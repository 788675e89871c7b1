#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

/// Framing of the chorus.v1 wire: every message is a 4-byte big-endian length
/// followed by that many bytes of a serialized `Envelope`. The length is
/// checked against a maximum before anything is allocated for the body.
namespace chorus::protocol {

/// Size of the length prefix in bytes.
inline constexpr std::size_t kFrameHeaderSize = 4;

/// Default maximum body size: 64 MiB.
inline constexpr std::uint32_t kDefaultMaxFrameSize = 64u << 20;

/// The 4-byte big-endian prefix announcing a body of `body_size` bytes.
/// Throws `chorus::Error` (RESOURCE_EXHAUSTED) when `body_size` exceeds
/// `max_frame_size`, so a sender never emits a frame its peer must refuse.
std::array<std::uint8_t, kFrameHeaderSize> encode_frame_header(
    std::size_t body_size, std::uint32_t max_frame_size = kDefaultMaxFrameSize);

/// Decodes a length prefix. Throws `chorus::Error` with RESOURCE_EXHAUSTED
/// when the announced size exceeds `max_frame_size` and INVALID_ARGUMENT when
/// it is zero (an `Envelope` always carries a body).
std::uint32_t decode_frame_header(
    std::span<const std::uint8_t, kFrameHeaderSize> header,
    std::uint32_t max_frame_size = kDefaultMaxFrameSize);

}  // namespace chorus::protocol
