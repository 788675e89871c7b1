#include "chorus/protocol/framing.hpp"

#include "chorus/core/error.hpp"
#include "support/doctest.hpp"

using namespace chorus::protocol;

TEST_CASE("framing: the length prefix is 4 bytes big-endian and round-trips") {
  auto h = encode_frame_header(0x01020304, 0x7fffffff);
  CHECK(h[0] == 0x01);
  CHECK(h[1] == 0x02);
  CHECK(h[2] == 0x03);
  CHECK(h[3] == 0x04);
  CHECK(decode_frame_header(h, 0x7fffffff) == 0x01020304u);

  for (std::uint32_t n : {1u, 255u, 256u, 65536u, kDefaultMaxFrameSize}) {
    CHECK(decode_frame_header(encode_frame_header(n)) == n);
  }
}

TEST_CASE("framing: an oversized prefix is refused before any allocation") {
  const std::array<std::uint8_t, 4> huge = {0xff, 0xff, 0xff, 0xff};
  try {
    decode_frame_header(huge);
    FAIL("no error");
  } catch (const chorus::Error& e) {
    CHECK(e.code() == chorus::Code::kResourceExhausted);
    CHECK(std::string(e.what()).find("4294967295") != std::string::npos);
  }
  auto just_over = encode_frame_header(1025, 2048);
  CHECK_THROWS_AS(decode_frame_header(just_over, 1024), chorus::Error);
  CHECK(decode_frame_header(just_over, 1025) == 1025u);
}

TEST_CASE("framing: an empty body is refused on both sides of the wire") {
  const std::array<std::uint8_t, 4> zero = {0, 0, 0, 0};
  try {
    decode_frame_header(zero);
    FAIL("no error");
  } catch (const chorus::Error& e) {
    CHECK(e.code() == chorus::Code::kInvalidArgument);
  }
  CHECK_THROWS_AS(encode_frame_header(kDefaultMaxFrameSize + 1ull),
                  chorus::Error);
}
