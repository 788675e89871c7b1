// PNG through libspng, JPEG through libjpeg-turbo's TurboJPEG API: both are
// maintained, fuzzed upstream, and packaged by Debian (libspng-dev,
// libturbojpeg0-dev).
#include <spng.h>
#include <turbojpeg.h>

#include <memory>

#include "chorus/core/error.hpp"
#include "chorus/fusion/formats.hpp"

namespace chorus::fusion {
namespace {

constexpr std::string_view kPngSignature = "\x89PNG\r\n\x1a\n";

struct SpngFree {
  void operator()(spng_ctx* c) const { spng_ctx_free(c); }
};
struct TjFree {
  void operator()(void* h) const { tjDestroy(h); }
};

// RGBA8 to `channels` channels (grey by ITU-R BT.601 luma).
Image from_rgba(const std::vector<std::uint8_t>& rgba, std::int64_t h,
                std::int64_t w, std::int64_t channels) {
  Image img{.height = h, .width = w, .channels = channels, .pixels = {}};
  const auto n = static_cast<std::size_t>(h * w);
  img.pixels.resize(n * static_cast<std::size_t>(channels));
  for (std::size_t i = 0; i < n; ++i) {
    const auto* p = &rgba[4 * i];
    if (channels == 1) {
      img.pixels[i] = static_cast<std::uint8_t>(
          (299 * p[0] + 587 * p[1] + 114 * p[2] + 500) / 1000);
    } else {
      for (std::size_t c = 0; c < 3; ++c) img.pixels[3 * i + c] = p[c];
    }
  }
  return img;
}

Image decode_png(std::string_view bytes, std::int64_t channels,
                 std::string_view origin, std::int64_t max_pixels) {
  std::unique_ptr<spng_ctx, SpngFree> ctx(spng_ctx_new(0));
  if (!ctx)
    fail(Code::kInternal, "'{}': libspng could not allocate a context", origin);
  spng_set_crc_action(ctx.get(), SPNG_CRC_ERROR, SPNG_CRC_DISCARD);
  spng_set_image_limits(ctx.get(), 1u << 16, 1u << 16);
  spng_set_chunk_limits(ctx.get(), 1u << 24, 1u << 26);
  spng_set_png_buffer(ctx.get(), bytes.data(), bytes.size());
  spng_ihdr ihdr{};
  if (int err = spng_get_ihdr(ctx.get(), &ihdr)) {
    fail(Code::kDataLoss, "'{}': not a readable PNG: {}", origin,
         spng_strerror(err));
  }
  const auto h = static_cast<std::int64_t>(ihdr.height);
  const auto w = static_cast<std::int64_t>(ihdr.width);
  if (h * w > max_pixels) {
    fail(Code::kDataLoss, "'{}': PNG of {}x{} pixels is over the limit of {}",
         origin, w, h, max_pixels);
  }
  std::size_t size = 0;
  if (int err = spng_decoded_image_size(ctx.get(), SPNG_FMT_RGBA8, &size)) {
    fail(Code::kDataLoss, "'{}': not a readable PNG: {}", origin,
         spng_strerror(err));
  }
  std::vector<std::uint8_t> rgba(size);
  if (int err = spng_decode_image(ctx.get(), rgba.data(), rgba.size(),
                                  SPNG_FMT_RGBA8, 0)) {
    fail(Code::kDataLoss, "'{}': corrupt PNG: {}", origin, spng_strerror(err));
  }
  return from_rgba(rgba, h, w, channels);
}

Image decode_jpeg(std::string_view bytes, std::int64_t channels,
                  std::string_view origin, std::int64_t max_pixels) {
  std::unique_ptr<void, TjFree> tj(tjInitDecompress());
  if (!tj) fail(Code::kInternal, "'{}': libjpeg-turbo could not start", origin);
  auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  int w = 0, h = 0, subsampling = 0, colorspace = 0;
  if (tjDecompressHeader3(tj.get(), data,
                          static_cast<unsigned long>(bytes.size()), &w, &h,
                          &subsampling, &colorspace) != 0) {
    fail(Code::kDataLoss, "'{}': not a readable JPEG: {}", origin,
         tjGetErrorStr2(tj.get()));
  }
  if (w <= 0 || h <= 0 || static_cast<std::int64_t>(w) * h > max_pixels) {
    fail(Code::kDataLoss,
         "'{}': JPEG of {}x{} pixels is outside the limit of {}", origin, w, h,
         max_pixels);
  }
  Image img{.height = h, .width = w, .channels = channels, .pixels = {}};
  img.pixels.resize(static_cast<std::size_t>(w) * static_cast<std::size_t>(h) *
                    static_cast<std::size_t>(channels));
  const int format = channels == 1 ? TJPF_GRAY : TJPF_RGB;
  if (tjDecompress2(tj.get(), data, static_cast<unsigned long>(bytes.size()),
                    img.pixels.data(), w, 0, h, format,
                    TJFLAG_ACCURATEDCT) != 0 &&
      tjGetErrorCode(tj.get()) == TJERR_FATAL) {
    fail(Code::kDataLoss, "'{}': corrupt JPEG: {}", origin,
         tjGetErrorStr2(tj.get()));
  }
  return img;
}

}  // namespace

Image decode_image(std::string_view bytes, std::int64_t channels,
                   std::string_view origin, std::int64_t max_pixels) {
  CHORUS_CHECK(
      channels == 1 || channels == 3,
      "'{}': images are read with 1 (grey) or 3 (RGB) channels, not {}", origin,
      channels);
  if (bytes.substr(0, kPngSignature.size()) == kPngSignature) {
    return decode_png(bytes, channels, origin, max_pixels);
  }
  if (bytes.size() >= 3 && bytes.substr(0, 3) == "\xFF\xD8\xFF") {
    return decode_jpeg(bytes, channels, origin, max_pixels);
  }
  fail(Code::kDataLoss,
       "'{}' is neither a PNG nor a JPEG image (unknown signature)", origin);
}

}  // namespace chorus::fusion
